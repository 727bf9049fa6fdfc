"""watch() is correct everywhere users train (issue 2, item 4), shown on real tiny training.

Every test trains a real model on CPU for a few steps with ``every=1`` and reads what was
stored back through ``monitor.load_run``. Nothing is mocked; files live under ``tmp_path``.
"""
from __future__ import annotations

import copy
import math
import os
import site
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
from torch import nn

import monitor
from trainer_hooks import watch
from trainer_hooks.handle import BabysitWarning

MICRO_BATCHES = 3  # backward passes per optimizer step in the accumulation test


# ---------------------------------------------------------------------- helpers

def convnet(seed: int = 0) -> nn.Sequential:
    """Standard layers only, so that ``weights_only=True`` can load it."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(n: int, shape: tuple[int, ...] = (8,), size: int = 16, seed: int = 1):
    """Fixed (x, y) batches drawn from their own generator (the global RNG is left alone)."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, *shape, generator=gen), torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


def train(model, opt, data, mon=None):
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if mon is not None:
            mon.log(loss=loss)


def activations(frames):
    stats = frames.layer_stats
    return stats[stats["signal"] == "activation"]


def no_module_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               and not getattr(m, "_backward_pre_hooks", None) for m in model.modules())


@pytest.fixture
def process_group(tmp_path):
    """A real gloo process group of world size 1 (rank 0), destroyed afterwards."""
    dist.init_process_group("gloo", init_method=(tmp_path / "pg").as_uri(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# A fresh interpreter that has torch but not babysit: -I ignores the environment and the
# current directory, -S skips site (so the editable install's .pth finder never runs),
# and only the site-packages directories are put back on the path.
LOADER = textwrap.dedent("""
    import sys
    sys.path[:0] = {paths!r}
    import importlib.util
    for name in ("trainer_hooks", "monitor", "web"):
        assert importlib.util.find_spec(name) is None, f"{{name}} is importable here"
    try:
        import trainer_hooks
    except ImportError:
        pass
    else:
        raise AssertionError("babysit is importable in the loader")
    import torch
    from torch import nn
    from torch.nn.modules import module as hooks
    weights_only = sys.argv[2] == "weights_only"
    if weights_only:
        with torch.serialization.safe_globals([nn.Sequential, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Linear]):
            model = torch.load(sys.argv[1], weights_only=True)
    else:
        model = torch.load(sys.argv[1], weights_only=False)
    probe = torch.load(sys.argv[3], weights_only=True)
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules()), "the loaded model carries hooks"
    assert not hooks._global_forward_hooks and not hooks._global_forward_pre_hooks
    with torch.no_grad():
        out = model(probe["x"])
    assert torch.equal(out, probe["out"]), (out - probe["out"]).abs().max()
    assert not {{"trainer_hooks", "monitor", "web"}} & {{m.split(".")[0] for m in sys.modules}}
    print("loaded", type(model).__name__)
""")


def load_without_babysit(tmp_path, model_file, probe_file, mode: str) -> subprocess.CompletedProcess:
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    script = tmp_path / "load.py"
    script.write_text(LOADER.format(paths=paths))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-I", "-S", str(script), str(model_file), mode, str(probe_file)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def saved_while_watched(tmp_path):
    """Train a watched ConvNet a few steps, save the whole model while watched; return paths."""
    model = convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    with watch(model, opt, run="save", every=1, logdir=tmp_path / "runs") as mon:
        train(model, opt, batches(3, (1, 8, 8)), mon)
        model_file = tmp_path / "model.pt"
        torch.save(model, model_file)
        with torch.no_grad():
            out = model(x)
    probe_file = tmp_path / "probe.pt"
    torch.save({"x": x, "out": out}, probe_file)
    return model_file, probe_file


# ---------------------------------------------------------------------- 1. saving

@pytest.mark.parametrize("mode", ["full_pickle", "weights_only"])
def test_a_model_saved_while_watched_loads_without_babysit_and_computes_the_same(tmp_path, mode):
    model_file, probe_file = saved_while_watched(tmp_path)
    done = load_without_babysit(tmp_path, model_file, probe_file, mode)
    assert done.returncode == 0, done.stderr
    assert "loaded Sequential" in done.stdout


def test_the_loader_subprocess_really_cannot_import_babysit(tmp_path):
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    code = f"import sys; sys.path[:0] = {paths!r}; import torch; import trainer_hooks"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path,
                          env={"PATH": os.environ.get("PATH", "")}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "No module named 'trainer_hooks'" in done.stderr


def test_a_model_saved_while_watched_names_no_babysit_module_in_its_pickle(tmp_path):
    model_file, _ = saved_while_watched(tmp_path)
    raw = model_file.read_bytes()
    assert b"trainer_hooks" not in raw
    assert b"babysit" not in raw
    assert b"monitor" not in raw


def test_a_deep_copy_of_a_watched_model_has_no_hooks_and_computes_the_same(tmp_path):
    model = convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 1, 8, 8)
    with watch(model, opt, run="deepcopy", every=1, logdir=tmp_path) as mon:
        train(model, opt, batches(2, (1, 8, 8)), mon)
        twin = copy.deepcopy(model)
        with torch.no_grad():
            assert torch.equal(twin(x), model(x))
    assert no_module_hooks(twin)
    assert twin is not model and all(a is not b for a, b in zip(twin.parameters(), model.parameters()))


def test_a_deep_copy_of_a_watched_model_can_be_watched_on_its_own(tmp_path):
    model = convnet()
    with watch(model, run="original", every=1, logdir=tmp_path) as first:
        twin = copy.deepcopy(model)
        opt = torch.optim.SGD(twin.parameters(), lr=0.1)
        with watch(twin, opt, run="twin", every=1, logdir=tmp_path) as second:
            train(twin, opt, batches(2, (1, 8, 8)), second)
    assert set(activations(monitor.load_run(second.run_id, tmp_path))["step"]) == {0, 1}
    assert activations(monitor.load_run(first.run_id, tmp_path)).empty  # the original never ran


# ---------------------------------------------------------------------- 2. accumulation

def test_gradient_accumulation_records_one_set_of_stats_per_optimizer_step(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 4
    data = batches(steps * MICRO_BATCHES)
    grad_norms = []  # per step: parameter name -> ||p.grad|| just before opt.step(), in plain torch
    with watch(model, opt, run="accumulate", every=1, logdir=tmp_path) as mon:
        for step in range(steps):
            for x, y in data[step * MICRO_BATCHES:(step + 1) * MICRO_BATCHES]:
                loss = nn.functional.cross_entropy(model(x), y) / MICRO_BATCHES
                loss.backward()
                mon.log(loss=loss)
            grad_norms.append({n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()})
            opt.step()
            opt.zero_grad()
        assert mon.step == steps
    frames = monitor.load_run(mon.run_id, tmp_path)
    stats = frames.layer_stats

    act = activations(frames)
    layers = {"0", "1", "2", "3", "4"}
    assert sorted(act["step"].unique()) == list(range(steps))
    for step, rows in act.groupby("step"):
        assert sorted(rows["layer"]) == sorted(layers), f"step {step}: {sorted(rows['layer'])}"
    grads = stats[stats["signal"] == "output_grad"]  # taken at the parametrised layers
    for step, rows in grads.groupby("step"):
        assert sorted(rows["layer"]) == ["0", "2", "4"], f"step {step}: {sorted(rows['layer'])}"
    assert sorted(grads["step"].unique()) == list(range(steps))

    params = stats[stats["signal"] == "param_grad"]
    assert params.groupby("step").size().to_dict() == {s: 6 for s in range(steps)}
    for row in params.itertuples():
        assert row.norm == pytest.approx(grad_norms[row.step][row.layer], rel=1e-5), (row.step, row.layer)


# ---------------------------------------------------------------------- 3. validation

def run_with_optional_validation(tmp_path, name: str, validate: bool):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    val_x, val_y = batches(1, seed=99)[0]
    val_losses = []
    with watch(model, opt, run=name, every=1, logdir=tmp_path) as mon:
        for x, y in batches(4):
            train(model, opt, [(x, y)], mon)
            if validate:
                with torch.no_grad():
                    val_loss = nn.functional.cross_entropy(model(val_x), val_y)
                val_losses.append(val_loss.item())
                mon.log(val_loss=val_loss)
    return monitor.load_run(mon.run_id, tmp_path), val_losses


def test_no_grad_validation_passes_add_no_layer_stats(tmp_path):
    plain, _ = run_with_optional_validation(tmp_path, "plain", validate=False)
    validated, _ = run_with_optional_validation(tmp_path, "validated", validate=True)
    columns = ["step", "layer", "signal", "module", "numel", "nan", "inf", "mean", "std", "min", "max", "norm"]
    a = plain.layer_stats[columns].reset_index(drop=True)
    b = validated.layer_stats[columns].reset_index(drop=True)
    assert len(a) == len(b) > 0
    assert a.equals(b)  # bit for bit, the activation means included


def test_validation_scalars_logged_between_steps_are_recorded(tmp_path):
    frames, val_losses = run_with_optional_validation(tmp_path, "validated", validate=True)
    assert frames.series("val_loss").tolist() == pytest.approx(val_losses, rel=1e-6)
    assert len(frames.series("loss")) == 4


# ---------------------------------------------------------------------- 4. autocast

def test_training_under_cpu_bfloat16_autocast_records_finite_activation_summaries(tmp_path):
    model = convnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run="bf16", every=1, logdir=tmp_path) as mon:
        for x, y in batches(3, (1, 8, 8)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                assert out.dtype == torch.bfloat16
                loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            mon.log(loss=loss)
    frames = monitor.load_run(mon.run_id, tmp_path)
    act = activations(frames)
    assert act.groupby("step")["layer"].apply(sorted).to_dict() == {s: ["0", "1", "3"] for s in range(3)}
    assert act[["mean", "std", "min", "max"]].map(math.isfinite).all().all()
    assert (act["std"] > 0).all()
    assert frames.series("loss").map(math.isfinite).all()


# ---------------------------------------------------------------------- 5. DDP

def test_a_ddp_wrapped_model_is_named_by_its_inner_modules_and_tagged_with_rank_and_world(
        tmp_path, process_group):
    inner = mlp()
    ddp = nn.parallel.DistributedDataParallel(inner)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    with watch(ddp, opt, run="ddp", every=1, logdir=tmp_path) as mon:
        train(ddp, opt, batches(2), mon)
        assert mon.step == 2
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert set(activations(frames)["layer"]) == {"0", "1", "2", "3", "4"}
    assert not frames.layer_stats["layer"].str.startswith("module").any()
    params = frames.layer_stats[frames.layer_stats["signal"] == "param_grad"]
    assert set(params["layer"]) == {n for n, _ in inner.named_parameters()}
    assert (frames.info["rank"], frames.info["world"]) == (0, 1)


# ---------------------------------------------------------------------- 6. reuse

class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(torch.relu(self.fc(x)))))


def test_a_module_reused_in_one_forward_gets_one_summary_per_call(tmp_path):
    torch.manual_seed(0)
    model = Twice()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run="reuse", every=1, logdir=tmp_path) as mon:
        train(model, opt, batches(3), mon)
    frames = monitor.load_run(mon.run_id, tmp_path)
    for signal in ("activation", "output_grad"):
        rows = frames.layer_stats[frames.layer_stats["signal"] == signal]
        for step, group in rows.groupby("step"):
            assert sorted(group["layer"]) == ["fc", "fc#2", "head"], (signal, step)
    act = activations(frames)
    first = act[(act["step"] == 0) & (act["layer"] == "fc")].iloc[0]
    second = act[(act["step"] == 0) & (act["layer"] == "fc#2")].iloc[0]
    assert first["mean"] != second["mean"]  # two different calls, not one recorded twice


# ---------------------------------------------------------------------- 7. nesting

HOSTILE = ("<script>alert(1)</script>", "ünï cödé", "quote\"'; DROP TABLE events;--")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(8, 8), nn.GELU())

    def forward(self, x):
        return self.seq(x)


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({key: Block() for key in HOSTILE})
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        for block in self.blocks.values():
            x = block(x)
        return self.out(x)


def test_nested_modules_with_hostile_names_are_stored_by_their_dotted_paths(tmp_path):
    torch.manual_seed(0)
    model = Nested()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run="nested", every=1, logdir=tmp_path) as mon:
        train(model, opt, batches(2), mon)
    frames = monitor.load_run(mon.run_id, tmp_path)
    expected = {f"blocks.{key}.seq.{i}" for key in HOSTILE for i in (0, 1)} | {"out"}
    assert set(activations(frames)["layer"]) == expected
    params = frames.layer_stats[frames.layer_stats["signal"] == "param_grad"]
    assert set(params["layer"]) == {n for n, _ in model.named_parameters()}
    modules = dict(zip(activations(frames)["layer"], activations(frames)["module"]))
    assert modules[f"blocks.{HOSTILE[0]}.seq.1"] == "GELU"
    assert {m["name"] for m in frames.info["model"]} >= {f"blocks.{key}.seq.0" for key in HOSTILE}


# ---------------------------------------------------------------------- 8. in-place

def inplace_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


# A conv output of 4 x 4 x 6 x 6 = 576 values is small enough to travel whole to the host;
# one of 16 x 4 x 6 x 6 = 2304 is reduced on the device and sampled. Both must be right.
@pytest.mark.parametrize("batch", [4, 16], ids=["small-output-travels-whole", "large-output-is-sampled"])
def test_an_inplace_relu_leaves_the_preceding_layer_its_own_pre_activation_values(tmp_path, batch):
    model = inplace_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run="inplace", every=1, logdir=tmp_path) as mon:
        train(model, opt, batches(3, (1, 8, 8), size=batch), mon)
    act = activations(monitor.load_run(mon.run_id, tmp_path))
    conv, relu = act[act["layer"] == "0"], act[act["layer"] == "1"]
    assert len(conv) == len(relu) == 3
    assert (conv["min"] < 0).all()
    assert (relu["min"] == 0).all()
    # The conv's distribution (quantile bands, zero fraction) is of the same pre-ReLU values
    # as its min: its lowest band is negative and almost none of a conv output is exactly 0.
    assert (conv["q0668"] < 0).all(), conv[["step", "min", "q0668", "zero_frac"]]
    assert (conv["zero_frac"] < 0.05).all(), conv[["step", "min", "q0668", "zero_frac"]]


def test_an_inplace_relu_network_trains_bit_identically_while_watched(tmp_path):
    watched, bare = inplace_net(), inplace_net()
    opt_w = torch.optim.SGD(watched.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9)
    with watch(watched, opt_w, run="inplace-same", every=1, logdir=tmp_path) as mon:
        for x, y in batches(4, (1, 8, 8)):
            outs, grads = [], []
            for model, opt in ((watched, opt_w), (bare, opt_b)):
                out = model(x.clone())
                loss = nn.functional.cross_entropy(out, y)
                loss.backward()
                outs.append(out.detach())
                grads.append([p.grad.clone() for p in model.parameters()])
                opt.step()
                opt.zero_grad()
            mon.log(loss=loss)
            assert torch.equal(outs[0], outs[1])
            assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert all(torch.equal(a, b) for a, b in zip(watched.parameters(), bare.parameters()))


# ---------------------------------------------------------------------- 9. errors

def test_a_second_watch_on_the_same_model_closes_the_forgotten_first_with_a_message(tmp_path):
    # a notebook cell run again: the first handle was never closed
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = watch(model, opt, run="first", every=1, logdir=tmp_path)
    train(model, opt, batches(2), first)
    with pytest.warns(BabysitWarning, match=f"still watched by run {first.run_id}, never closed; closing it now"):
        second = watch(model, opt, run="second", every=1, logdir=tmp_path)
    with second:
        train(model, opt, batches(3), second)
    old, new = monitor.load_run(first.run_id, tmp_path), monitor.load_run(second.run_id, tmp_path)
    assert old.info["status"] == "finished" and "closed by a new watch()" in old.status["reason"].iloc[-1]
    assert set(activations(old)["step"]) == {0, 1} and set(activations(new)["step"]) == {0, 1, 2}


def test_a_model_can_be_watched_again_after_close(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch(model, opt, run="first", every=1, logdir=tmp_path).close()
    with watch(model, opt, run="again", every=1, logdir=tmp_path) as mon:
        train(model, opt, batches(2), mon)
    assert set(activations(monitor.load_run(mon.run_id, tmp_path))["step"]) == {0, 1}


@pytest.mark.parametrize("thing, name", [(lambda x: x, "function"), ({"w": torch.ones(2)}, "dict"),
                                         (torch.ones(2), "Tensor")])
def test_watching_something_that_is_not_a_module_names_what_was_received(tmp_path, thing, name):
    with pytest.raises(TypeError, match=rf"nn\.Module.*got {name}"):
        watch(thing, logdir=tmp_path)


def test_an_unknown_option_is_a_type_error_listing_the_known_ones(tmp_path):
    with pytest.raises(TypeError) as raised:
        watch(mlp(), every=1, logdir=tmp_path, evry=5)
    message = str(raised.value)
    assert "evry" in message
    for known in ("every", "logdir", "run", "config"):
        assert repr(known) in message


class ScaledLinear(nn.Module):
    """A model that owns a parameter itself beside its one child (a learned output scale)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.fc(x) * self.scale


def train_few(model: nn.Module, tmp_path, run: str, steps: int = 5) -> monitor.frames.RunFrames:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, optimizer, logdir=tmp_path, every=1, run=run):
        for _ in range(steps):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return monitor.load_run(run, tmp_path)


def test_a_model_that_is_one_linear_layer_gets_every_statistic_under_its_class_name(tmp_path):
    torch.manual_seed(0)
    run = train_few(nn.Linear(4, 1), tmp_path, "one-layer")
    stats = run.layer_stats
    assert set(zip(stats["layer"], stats["signal"])) == {
        ("Linear", "activation"), ("Linear", "output_grad"), ("Linear.weight", "param_grad"),
        ("Linear.bias", "param_grad")}
    assert stats[stats["signal"] == "activation"]["step"].tolist() == [0, 1, 2, 3, 4]
    assert (stats[stats["signal"] == "param_grad"]["update_ratio"] > 0).all()
    assert set(run.vitals["layer"]) == {"(global)", "Linear"}
    assert [m["name"] for m in run.info["model"]] == ["Linear", "(total)"]


def test_parameters_a_model_owns_itself_count_as_a_layer_of_their_own(tmp_path):
    torch.manual_seed(0)
    run = train_few(ScaledLinear(), tmp_path, "own-parameter")
    assert [m["name"] for m in run.info["model"]] == ["ScaledLinear", "fc", "(total)"]
    vitals = run.vitals[run.vitals["step"] == 0].set_index("layer")["grad_norm"]
    assert set(vitals.index) == {"(global)", "ScaledLinear", "fc"}
    assert math.isclose(vitals["(global)"] ** 2, vitals["ScaledLinear"] ** 2 + vitals["fc"] ** 2, rel_tol=1e-5)
    assert "ScaledLinear" not in set(run.layer_stats["layer"])  # not a leaf: its output is fc's, scaled


@pytest.mark.parametrize("clear", ["none", "zero"])
def test_a_model_updated_by_hand_gets_gradient_norms_and_update_ratios_equal_to_plain_torch(tmp_path, clear):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 2))  # every tensor travels whole: exact
    x, y = torch.randn(64, 6), torch.randn(64, 2)
    expected = []  # per step: name -> (||grad||, ||w_after - w_before|| / ||w_before||), in plain torch
    with watch(model, logdir=tmp_path, run="by-hand", every=1, sample_size=4096) as mon:
        for _ in range(6):
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            grads = {n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()}
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-0.3)  # the update babysit does not see happen
                if clear == "zero":
                    p.grad.zero_()
                else:
                    p.grad = None
            mon.log(loss=loss)  # after the gradients are gone: they were read as they arrived
            expected.append({n: (grads[n], (torch.linalg.vector_norm(p.detach() - before[n])
                                            / torch.linalg.vector_norm(before[n])).item())
                             for n, p in model.named_parameters()})
    run = monitor.load_run(mon.run_id, logdir=tmp_path)
    params = run.layer_stats[run.layer_stats["signal"] == "param_grad"]
    assert sorted(set(params["step"])) == list(range(6))
    for row in params.itertuples():
        norm, ratio = expected[row.step][row.layer]
        assert row.norm == pytest.approx(norm, rel=1e-5), (row.step, row.layer)
        assert row.update_ratio == pytest.approx(ratio, rel=1e-4), (row.step, row.layer)
    vitals = run.vitals[run.vitals["layer"] == "(global)"].set_index("step")["grad_norm"]
    for step, grads in enumerate(expected):
        assert vitals[step] == pytest.approx(math.sqrt(sum(g * g for g, _ in grads.values())), rel=1e-5)
