"""watch() end to end on tiny real trainings: what is recorded, and what is left alone."""
import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_hooks

import monitor
from monitor import codec
from monitor.store import RunStore
from monitor.events import RunState
from trainer_hooks import BabysitWarning, watch
from trainer_hooks.schedule import MAX_VITALS_EVERY, VITALS_START_STEPS
from trainer_hooks import handle as handle_module
from trainer_hooks import writer as writer_module


def tiny_cnn(bias: float | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.3), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    if bias is not None:
        nn.init.constant_(model[0].bias, bias)
    return model


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g)


def train_step(model, opt, x, y, mon=None):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    if mon is not None:
        mon.log(loss=loss)
    return loss


def aten_ops(fn) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # newer torch: "Profiler clears events at the end of each cycle"
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}


#: What an unsampled step adds to a bare one: the vital signs, the gradients' norms by one
#: multi-tensor kernel stacked into one vector (detach and its views are not kernels).
VITALS_OPS = {"aten::_foreach_norm", "aten::stack", "aten::cat", "aten::unsqueeze", "aten::detach",
              "aten::as_strided", "aten::empty", "aten::resize_", "aten::to", "aten::_to_copy",
              "aten::empty_strided", "aten::copy_", "aten::linalg_vector_norm", "aten::dot", "aten::view",
              "aten::fill_", "aten::square", "aten::pow", "aten::item", "aten::_local_scalar_dense"}
#: The op that takes the gradients' norms on the CPU (one dot product per gradient).
VITALS_OP = "aten::dot"


def test_a_step_that_is_not_sampled_runs_the_ops_of_a_bare_step_and_the_vital_signs_only(tmp_path):
    bare, watched = tiny_cnn(), tiny_cnn()
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.1)
    opt = torch.optim.SGD(watched.parameters(), lr=0.1)
    x, y = batch()
    with watch(watched, opt, every=1000, logdir=tmp_path) as mon:
        train_step(watched, opt, x, y)  # step 0 is sampled
        train_step(bare, bare_opt, x, y)
        watched_ops = aten_ops(lambda: train_step(watched, opt, x, y))
        bare_ops = aten_ops(lambda: train_step(bare, bare_opt, x, y))
        assert mon.step == 2
    extra = {op for op in watched_ops if watched_ops[op] != bare_ops.get(op)}
    assert VITALS_OP in extra and extra <= VITALS_OPS, extra
    assert all(watched_ops.get(op, 0) >= n for op, n in bare_ops.items())  # nothing of the bare step is skipped
    # Nothing read back to the host but the gradients' squared norms, one per parameter
    # (on the CPU a read is no sync; on an accelerator they stay there, a vector per step).
    with_grad = sum(p.grad is not None for p in watched.parameters())
    assert watched_ops.get("aten::_local_scalar_dense", 0) == watched_ops[VITALS_OP] == with_grad


def test_close_removes_every_hook(tmp_path):
    before = (len(module_hooks._global_forward_hooks), len(module_hooks._global_forward_pre_hooks))
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(model, opt, every=1, logdir=tmp_path)
    mon.close()
    assert (len(module_hooks._global_forward_hooks), len(module_hooks._global_forward_pre_hooks)) == before
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def test_outputs_and_gradients_are_bit_identical_with_and_without_watch_and_after_close(tmp_path):
    bare, watched = tiny_cnn(), tiny_cnn()
    bare_opt = torch.optim.SGD(bare.parameters(), lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(watched.parameters(), lr=0.1, momentum=0.9)
    mon = watch(watched, opt, every=1, logdir=tmp_path)  # every step sampled: the most intrusive
    for step in range(6):
        if step == 4:
            mon.close()
        x, y = batch(step)
        torch.manual_seed(100 + step)  # the same dropout masks for both
        bare_loss = train_step(bare, bare_opt, x, y)
        torch.manual_seed(100 + step)
        loss = train_step(watched, opt, x, y, None if step >= 4 else mon)
        assert torch.equal(loss, bare_loss)
        for p, q in zip(watched.parameters(), bare.parameters()):
            assert torch.equal(p.grad, q.grad) and torch.equal(p, q)


def test_every_step_loss_is_recorded_while_statistics_follow_the_interval(tmp_path):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with watch(model, opt, every=3, logdir=tmp_path) as mon:
        for step in range(7):
            train_step(model, opt, *batch(step), mon)
        with torch.no_grad():
            mon.log(val_loss=nn.functional.cross_entropy(model(batch(9)[0]), batch(9)[1]), epoch=0)
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert frames.series("loss").index.tolist() == list(range(7))
    assert frames.series("val_loss").index.tolist() == [6]
    assert sorted(frames.layer_stats.step.unique()) == [0, 3, 6]
    layers = set(frames.layer_stats[frames.layer_stats.signal == "activation"].layer)
    assert layers == {"0", "1", "5"}  # conv, relu, linear; dropout/pool/flatten are not watched
    grads = set(frames.layer_stats[frames.layer_stats.signal == "output_grad"].layer)
    assert grads == {"0", "5"}  # parametrised layers
    params = set(frames.layer_stats[frames.layer_stats.signal == "param_grad"].layer)
    assert params == {"0.weight", "0.bias", "5.weight", "5.bias"}
    assert len(frames.input_stats) == 3
    assert frames.input_stats.channel_mean.iloc[0] == pytest.approx(batch(0)[0].mean(dim=(0, 2, 3)).tolist())


def test_without_an_optimizer_the_step_advances_on_each_training_log(tmp_path):
    model = tiny_cnn()
    with watch(model, every=2, logdir=tmp_path) as mon:
        for step in range(4):
            x, y = batch(step)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            mon.log(loss=loss)
            mon.log(val_acc=0.5, epoch=1)  # validation and position do not advance it
        assert mon.step == 4
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert sorted(frames.layer_stats.step.unique()) == [0, 2]
    assert frames.series("loss").index.tolist() == [0, 1, 2, 3]


def test_a_nan_loss_and_nan_activations_are_recorded_and_training_goes_on(tmp_path):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = batch()
    x[0, 0, 0, 0] = float("nan")
    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        train_step(model, opt, x, y, mon)
        train_step(model, opt, x, y, mon)
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert frames.series("loss").isna().all()
    conv = frames.layer_stats[(frames.layer_stats.layer == "0") & (frames.layer_stats.signal == "activation")]
    assert conv.nan.iloc[0] > 0
    assert frames.input_stats.nan.iloc[0] == 1


def test_dead_relus_are_counted_per_channel(tmp_path):
    model = tiny_cnn(bias=-50.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        for step in range(3):
            train_step(model, opt, *batch(step), mon)
    stats = monitor.load_run(mon.run_id, tmp_path).layer_stats
    relu = stats[(stats.layer == "1") & (stats.signal == "activation")]
    assert relu.units.tolist() == [4, 4, 4] and relu.dead_units.tolist() == [4, 4, 4]
    assert relu.window.tolist() == [1, 2, 3]
    assert relu.zero_frac.tolist() == [1.0, 1.0, 1.0]


def test_the_first_layer_filters_are_stored_as_an_image_grid(tmp_path):
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, every=1, filters_every=2, logdir=tmp_path) as mon:
        for step in range(3):
            train_step(model, opt, *batch(step), mon)
    filters = monitor.load_run(mon.run_id, tmp_path).filters
    assert filters.step.tolist() == [0, 2] and set(filters.layer) == {"0"}
    image = filters.image.iloc[0]
    assert image.shape == (2 * 4 + 1, 2 * 4 + 1, 3)  # 4 RGB filters of 3x3 in a 2x2 grid
    assert image.max() == 255 and image[0].max() == 0  # each filter spans 0..255; gutters black


def test_a_dense_first_layer_reading_images_shows_its_rows_as_images(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1 * 8 * 8, 9), nn.ReLU(), nn.Linear(9, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        train_step(model, opt, torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1]), mon)
    image = monitor.load_run(mon.run_id, tmp_path).filters.image.iloc[0]
    assert image.shape == (3 * 9 + 1, 3 * 9 + 1, 1)


def test_bad_scalars_are_skipped_with_a_warning_and_training_goes_on(tmp_path):
    model = tiny_cnn()
    with watch(model, every=1, logdir=tmp_path) as mon:
        with pytest.warns(BabysitWarning, match="not recording scalar 'bad name'"):
            mon.log(**{"bad name": 1.0, "loss": 2.0})
        with pytest.warns(BabysitWarning, match="expected one number"):
            mon.log(acc=torch.ones(3))
        with pytest.warns(BabysitWarning, match="got str"):
            mon.log(lr="fast")
    assert monitor.load_run(mon.run_id, tmp_path).scalars.name.tolist() == ["loss"]


def test_a_hostile_run_name_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="run name '../../etc/passwd' is not usable"):
        watch(tiny_cnn(), run="../../etc/passwd", logdir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_stop_sets_should_stop_and_the_run_ends_stopped_with_its_reason(tmp_path):
    model = tiny_cnn()
    with watch(model, logdir=tmp_path) as mon:
        assert not mon.should_stop
        mon.stop("enough", by="test")
        assert mon.should_stop
    status = monitor.load_run(mon.run_id, tmp_path).status
    assert status.state.tolist() == ["running", "stopping", "stopped"]
    assert status.reason.iloc[-1] == "enough" and status.by.iloc[-1] == "test"


def test_an_exception_in_the_training_loop_marks_the_run_crashed(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with watch(tiny_cnn(), logdir=tmp_path) as mon:
            raise ZeroDivisionError("division by zero")
    status = monitor.load_run(mon.run_id, tmp_path).status
    assert status.state.iloc[-1] == "crashed" and "ZeroDivisionError" in status.reason.iloc[-1]


def test_records_beyond_a_full_queue_are_dropped_counted_and_never_block(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "QUEUE_LIMIT", 1)
    monkeypatch.setattr(writer_module, "FLUSH_SECONDS", 5.0)
    model = tiny_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BabysitWarning)
        mon = watch(model, logdir=tmp_path)
        for value in range(200):
            mon.log(val_loss=float(value))
    dropped = mon._writer.dropped
    mon.close()
    assert dropped > 0
    events = monitor.load_run(mon.run_id, tmp_path)
    assert events.info["status"] == RunState.FINISHED.value
    from monitor.store import RunStore
    with RunStore(tmp_path) as store:
        end = store.events(mon.run_id, kinds=["run_end"])[0]
    assert end.data.dropped == dropped
    assert not math.isnan(end.data.duration)


def test_a_deep_copy_of_a_watched_model_is_not_watched(tmp_path):
    model = tiny_cnn()
    with watch(model, every=1, logdir=tmp_path) as mon:
        clone = copy.deepcopy(model)
        with watch(clone, every=1, logdir=tmp_path) as other:
            assert other.run_id != mon.run_id


def test_sampling_backs_off_while_the_writer_is_behind_so_memory_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "FLUSH_SECONDS", 60.0)  # the writer sleeps through the loop
    monkeypatch.setattr(handle_module, "CAPTURE_BACKLOG_LIMIT", 2)
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        for step in range(6):
            train_step(model, opt, *batch(step), mon)
        assert mon._writer.capture_backlog == 2 and mon.skipped_samples == 4
        mon.flush()  # the writer catches up, and sampling resumes
        train_step(model, opt, *batch(6), mon)
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert sorted(frames.layer_stats.step.unique()) == [0, 1, 6]
    assert frames.series("loss").index.tolist() == list(range(7))  # the loss is never skipped
    from monitor.store import RunStore
    with RunStore(tmp_path) as store:
        assert store.events(mon.run_id, kinds=["run_end"])[0].data.skipped == 4


def test_the_learning_rate_is_recorded_whenever_it_changes_without_being_logged(tmp_path):
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    with watch(model, optimizer, run="lr", logdir=tmp_path, every=100) as mon:
        for _ in range(7):
            model(torch.randn(4, 3)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
            mon.log(loss=1.0)
    lr = monitor.load_run(mon.run_id, tmp_path).series("lr")
    assert list(lr.index) == [0, 3, 6] and list(lr) == [0.1, 0.05, 0.025]


def test_a_learning_rate_the_user_logs_replaces_the_recorded_one(tmp_path):
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, optimizer, run="lr-user", logdir=tmp_path, every=100) as mon:
        for _ in range(3):
            model(torch.randn(4, 3)).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
            mon.log(loss=1.0, lr=0.2)
    lr = monitor.load_run(mon.run_id, tmp_path).series("lr")
    assert list(lr.index) == [0, 1, 2] and list(lr) == [0.2, 0.2, 0.2]


def test_ctrl_c_in_a_watched_training_ends_its_run_interrupted_not_stopped(tmp_path):
    from monitor.store import RunStore

    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(KeyboardInterrupt):
        with watch(model, opt, logdir=tmp_path, every=1) as mon:
            train_step(model, opt, *batch(), mon)
            raise KeyboardInterrupt
    with RunStore(tmp_path) as store:
        status, end = store.latest(mon.run_id, "status").data, store.latest(mon.run_id, "run_end").data
        assert store.run_info(mon.run_id).status == "interrupted"
    assert (status.state, status.reason, end.state) == (RunState.INTERRUPTED, "interrupted (Ctrl-C)",
                                                        RunState.INTERRUPTED)


def test_every_step_keeps_its_vital_signs_across_blocks_when_a_layer_is_frozen_midway(tmp_path):
    """The signs travel in blocks of a few steps; a layer that stops getting gradients
    (frozen at step 11) starts a new block without its row, and no step is lost."""
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = next(name for name, m in model.named_modules() if name and list(m.parameters(recurse=False)))
    with watch(model, opt, every=1000, logdir=tmp_path) as mon:
        for step in range(21):
            if step == 11:
                model.get_submodule(first).requires_grad_(False)
            x, y = batch(step)
            train_step(model, opt, x, y, mon)
    vitals = monitor.load_run(mon.run_id, tmp_path).vitals
    assert sorted(vitals.step.unique()) == list(range(21))
    layers = vitals[vitals.layer != "(global)"].groupby("step").layer.apply(set)
    assert all(first in layers[s] for s in range(11)) and not any(first in layers[s] for s in range(11, 21))
    assert all(len(layers[s]) == len(layers[0]) - 1 for s in range(11, 21))


def test_vital_signs_dear_for_their_step_are_thinned_and_still_exact(tmp_path):
    """A model whose gradients are large for its compute (wide layers, a batch of 2: a pass
    over the gradients costs a fair share of the step) has its vital signs read on every
    step of the start, then on fewer steps, never further apart than the cap, and each
    reading is the norm torch computes for that step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps, expected = 150, {}
    with watch(model, opt, every=10**6, logdir=tmp_path) as mon:
        for step in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(2, 512)), torch.tensor([0, 1]))
            loss.backward()
            grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            expected[step] = torch.linalg.vector_norm(grads).item()
            opt.step()
            mon.log(loss=loss)
    vitals = monitor.load_run(mon.run_id, tmp_path).vitals
    read = sorted(int(s) for s in vitals.step.unique())
    assert read[:VITALS_START_STEPS] == list(range(VITALS_START_STEPS))
    assert len(read) < steps - 20  # thinned
    assert max(b - a for a, b in zip(read, read[1:])) <= MAX_VITALS_EVERY
    assert read[-1] > steps - 1 - MAX_VITALS_EVERY
    totals = vitals[vitals.layer == "(global)"].set_index("step").grad_norm
    assert {s: totals[s] for s in read} == pytest.approx({s: expected[s] for s in read}, rel=1e-4)


def test_every_step_carries_the_global_and_per_layer_gradient_norms_torch_computes(tmp_path):
    """The vital signs are taken on every step of the start, sampled or not, and are the norms that
    clip_grad_norm_ would read: global over every gradient, and per layer over its own."""
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = []
    with watch(model, opt, every=4, logdir=tmp_path) as mon:
        for step in range(6):
            x, y = batch(step)
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            layers = {name: torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()])).item()
                      for name, m in model.named_modules() if name and list(m.parameters(recurse=False))}
            total = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()])).item()
            expected.append((total, layers))
            opt.step()
            mon.log(loss=loss)
    vitals = monitor.load_run(mon.run_id, tmp_path).vitals
    assert sorted(vitals.step.unique()) == list(range(6))
    for step, (total, layers) in enumerate(expected):
        rows = vitals[vitals.step == step].set_index("layer").grad_norm
        assert rows["(global)"] == pytest.approx(total, rel=1e-5)
        assert rows.drop("(global)").to_dict() == pytest.approx(layers, rel=1e-5)


def test_every_payload_a_watched_run_stores_is_encoded_as_its_dict_would_be(tmp_path):
    """The writer encodes payloads from their fields (codec.encode_payload), never through
    to_dict: the text must be the one to_dict gives, for every kind a run stores (nested
    layer summaries, the filters' bytes, enums, non-finite floats)."""
    model = tiny_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(model, opt, logdir=tmp_path, every=1, filters_every=1)
    x, y = batch()
    for _ in range(3):
        train_step(model, opt, x, y, mon)
    mon.log(val_loss=math.nan)
    mon.close()
    with RunStore(tmp_path) as store:
        events = store.events(mon.run_id)
    kinds = {e.kind.value for e in events}
    assert {"run_start", "status", "scalars", "vitals", "layer_stats", "input_stats", "filters", "run_end"} <= kinds
    for event in events:
        assert codec.encode_payload(event.data) == codec.dumps(event.data.to_dict()), event.kind
