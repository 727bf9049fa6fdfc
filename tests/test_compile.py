"""watch() on a model under torch.compile (issue 15, item 4), on real tiny CPU training.

What a user of ``torch.compile`` needs: statistics on the sampled steps, and on the
other steps the compiled graph untouched (no graph break babysit adds, no recompilation).
Dynamo's own counters (``torch._dynamo.utils.counters``) say how many graphs were
compiled and where it broke them. Most tests compile with the ``aot_eager`` backend: the
graph capture, its guards and the autograd split are dynamo's and AOT autograd's, the
same as with inductor, without the C++ build; one test runs inductor end to end.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

import monitor
from trainer_hooks import watch
from trainer_hooks.handle import BabysitWarning

pytestmark = pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"),
                                reason="torch.compiler.set_stance: torch >= 2.6")

STEPS = 12
EVERY = 4  # steps 0, 4, 8 sampled


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))


def batches(n: int = STEPS):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)) for _ in range(n)]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def train(call, opt, data, mon):
    for x, y in data:
        loss = nn.functional.cross_entropy(call(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        mon.log(loss=loss)


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def activation_steps(frames) -> set[int]:
    stats = frames.layer_stats
    return set(stats[stats["signal"] == "activation"]["step"])


def test_a_compiled_model_is_sampled_on_its_due_steps_with_one_graph_and_no_break(tmp_path):
    model = mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither torch's global-hook warning nor one of ours
        mon = watch(compiled, opt, every=EVERY, logdir=tmp_path)
        train(compiled, opt, batches(), mon)
        mon.close()
    assert graph_breaks() == 0, dict(counters["graph_break"])
    assert compiled_graphs() == 1  # sampled steps ran eagerly and compiled nothing new
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert activation_steps(frames) == {0, 4, 8}
    layers = set(frames.layer_stats["layer"])
    assert {"0", "1", "2", "3", "4"} <= layers and not any(name.startswith("_orig_mod") for name in layers)
    assert frames.series("loss").index.tolist() == list(range(STEPS))  # each loss at its own step


def test_the_unsampled_steps_of_a_compiled_model_recompile_nothing(tmp_path):
    model = mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(compiled, opt, every=EVERY, logdir=tmp_path)
    data = batches(3 * STEPS)
    train(compiled, opt, data[:EVERY + 1], mon)  # the first graph, a sampled step, and back
    frames_before = counters["stats"]["unique_graphs"], sum(counters["recompiles"].values())
    train(compiled, opt, data[EVERY + 1:], mon)
    mon.close()
    assert (counters["stats"]["unique_graphs"], sum(counters["recompiles"].values())) == frames_before
    assert len(activation_steps(monitor.load_run(mon.run_id, tmp_path))) == len(range(0, 3 * STEPS, EVERY))


def test_statistics_of_a_compiled_model_are_those_of_the_same_model_run_eagerly(tmp_path):
    """The sampled forward runs eagerly: the same modules, so the same numbers (up to the
    compiled steps' own rounding in the weights between samples)."""
    results = []
    for compile_it in (False, True):
        model = mlp()
        call = torch.compile(model, backend="aot_eager") if compile_it else model
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = watch(call, opt, every=EVERY, logdir=tmp_path / str(compile_it))
        train(call, opt, batches(), mon)
        mon.close()
        stats = monitor.load_run(mon.run_id, tmp_path / str(compile_it)).layer_stats
        results.append(stats.set_index(["step", "layer", "signal"]).sort_index()[["mean", "std", "max"]])
    eager, compiled = results
    assert list(eager.index) == list(compiled.index)
    assert compiled.to_numpy() == pytest.approx(eager.to_numpy(), rel=1e-4, abs=1e-6)


def test_a_model_compiled_in_place_is_sampled_eagerly_and_the_user_is_told_how_to_get_exact_steps(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(model, opt, every=EVERY, logdir=tmp_path)
    compiled = torch.compile(model, backend="aot_eager")  # compiled after watch: its hooks are traced
    with pytest.warns(BabysitWarning, match="watch what torch.compile returned"):
        train(compiled, opt, batches(), mon)
    mon.close()
    assert graph_breaks() == 0, dict(counters["graph_break"])
    assert compiled_graphs() == 1
    # step 0's forward ran traced before babysit knew; every due step after it is sampled
    assert activation_steps(monitor.load_run(mon.run_id, tmp_path)) == {4, 8}


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")  # dynamo's tracing
def test_watching_an_eager_model_leaves_the_process_compiled_code_compiled(tmp_path):
    """The compiler's stance is process-wide: taken for an eager model's sampled steps, it
    ran every compiled function of the process eagerly meanwhile (one this model calls,
    another thread's compiled training: seen as a test of compiled models whose graphs were
    never built while a leftover training thread ran)."""
    affine = torch.compile(lambda x: x * 2 + 1, backend="aot_eager")

    class Calls(nn.Module):
        def forward(self, x):
            return affine(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), Calls(), nn.ReLU(), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(model, opt, every=1, logdir=tmp_path)  # every step sampled
    train(model, opt, batches(), mon)
    mon.close()
    assert compiled_graphs() == 1
    assert activation_steps(monitor.load_run(mon.run_id, tmp_path)) == set(range(STEPS))


def test_validation_between_steps_of_a_compiled_model_stays_compiled_and_out_of_the_statistics(tmp_path):
    model = mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(compiled, opt, every=EVERY, logdir=tmp_path)
    for x, y in batches():
        train(compiled, opt, [(x, y)], mon)
        with torch.no_grad():
            compiled(x)
    mon.close()
    assert graph_breaks() == 0
    assert activation_steps(monitor.load_run(mon.run_id, tmp_path)) == {0, 4, 8}


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own import
def test_a_model_compiled_by_inductor_is_sampled_with_no_graph_break(tmp_path):
    model = mlp()
    compiled = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(compiled, opt, every=EVERY, logdir=tmp_path)
    train(compiled, opt, batches(), mon)
    mon.close()
    assert graph_breaks() == 0
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert activation_steps(frames) == {0, 4, 8}
    assert frames.series("loss").notna().all()


def test_without_compiler_stances_a_compiled_model_keeps_its_graph_and_still_records_its_parameters(
        tmp_path, monkeypatch):
    """torch < 2.6 has no ``set_stance``: shown here by taking it away. The graph is left
    alone (no break), the activations go unrecorded, the parameters are still read."""
    from trainer_hooks import compiled as compiled_module

    monkeypatch.setattr(compiled_module, "_set_stance", None)
    model = mlp()
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(compiled, opt, every=EVERY, logdir=tmp_path)
    train(compiled, opt, batches(), mon)
    mon.close()
    assert graph_breaks() == 0, dict(counters["graph_break"])
    assert compiled_graphs() == 1
    stats = monitor.load_run(mon.run_id, tmp_path).layer_stats
    assert activation_steps(monitor.load_run(mon.run_id, tmp_path)) == set()
    assert set(stats[stats["signal"] == "param_grad"]["step"]) == {0, 4, 8}
