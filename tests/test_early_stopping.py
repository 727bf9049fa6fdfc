"""Early stopping: the policy on scripted values (Keras/Lightning semantics), then real
trainings: patience, restore of the best weights, a stop on divergence within one sampled step."""
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import monitor
from monitor.early_stopping import EarlyStopping, StopCause
from monitor.events import Event, Flag, Kind, RunState, Scalars
from monitor.store import RunStore
from trainer_hooks import watch

from trainings import blobs, make_mlp


def evaluations(policy, values):
    """The index of the evaluation that stops the run (None: it runs on)."""
    for i, value in enumerate(values):
        if policy.update_metric(i, value) is not None:
            return i
    return None


@pytest.mark.parametrize("patience, stops_at", [(0, 2), (1, 2), (3, 4)])
def test_patience_counts_evaluations_without_improvement_as_keras_and_lightning_do(patience, stops_at):
    # best at index 1, then none better: the patience-th evaluation without improvement stops
    assert evaluations(EarlyStopping(patience=patience), [1.0, 0.5, 0.6, 0.7, 0.55, 0.9, 0.8]) == stops_at


def test_an_improvement_resets_the_wait():
    policy = EarlyStopping(patience=2)
    assert evaluations(policy, [1.0, 1.1, 0.9, 1.0, 0.8, 0.85, 0.7]) is None
    assert policy.best == 0.7 and policy.best_step == 6 and policy.wait == 0


def test_min_delta_makes_small_improvements_count_as_none():
    values = [1.0, 0.998, 0.996, 0.994, 0.992]
    assert evaluations(EarlyStopping(patience=2), values) is None
    policy = EarlyStopping(patience=3, min_delta=0.01)
    assert evaluations(policy, values) == 3 and policy.best == 1.0
    assert EarlyStopping(min_delta=-0.01).min_delta == 0.01  # the sign comes from the mode


def test_mode_max_follows_an_accuracy():
    policy = EarlyStopping(monitor="val_acc", mode="max", patience=2)
    assert evaluations(policy, [0.5, 0.7, 0.9, 0.85, 0.88, 0.95]) == 4
    assert policy.best == 0.9
    reason = EarlyStopping(monitor="val_acc", mode="max", patience=0).update_metric(3, math.nan)
    assert reason.cause is StopCause.EARLY_STOPPING and "not finite" in reason.message


def test_a_nonfinite_metric_stops_at_once_unless_check_finite_is_off():
    assert evaluations(EarlyStopping(patience=5), [1.0, 0.9, math.nan]) == 2
    policy = EarlyStopping(patience=2, check_finite=False)
    assert evaluations(policy, [1.0, math.inf, math.inf]) == 2 and policy.best == 1.0


def test_the_reason_names_the_metric_the_best_value_and_the_wait():
    policy = EarlyStopping(patience=2)
    evaluations(policy, [0.9, 0.5, 0.6])
    reason = policy.update_metric(10, 0.7)
    assert reason.cause is StopCause.EARLY_STOPPING and reason.step == 10
    assert reason.message == "val_loss has not improved for 2 evaluations (best 0.5 at step 1, now 0.7 at step 10)"
    assert reason.end_state is RunState.STOPPED


def test_flags_named_in_stop_on_stop_the_run_and_a_divergence_ends_it_diverged():
    policy = EarlyStopping()
    assert policy.update_flag(Flag("plateau", "warning", "flat", "raise the lr"), 5) is None
    reason = policy.update_flag(Flag("divergence", "critical", "loss is NaN", "lower the lr"), 7)
    assert reason.cause is StopCause.FLAG and reason.flag == "divergence" and reason.step == 7
    assert reason.end_state is RunState.DIVERGED
    assert EarlyStopping(stop_on=()).update_flag(Flag("divergence", "critical", "x", "y"), 7) is None
    assert EarlyStopping(stop_on="plateau").stop_on == ("plateau",)


def test_replay_says_where_a_stored_run_would_have_stopped():
    events = [Event("r", i, i * 10, 1.0 + i, Kind.SCALARS, Scalars({"val_loss": v}))
              for i, v in enumerate([1.0, 0.8, 0.9, 0.95])]
    assert EarlyStopping(patience=2).replay(events).step == 30
    assert EarlyStopping(patience=3).replay(events) is None


@pytest.mark.parametrize("options", [{"mode": "minimum"}, {"patience": -1}, {"patience": 1.5},
                                     {"min_delta": math.nan}, {"monitor": ""}, {"stop_on": [3]}])
def test_options_that_cannot_work_are_refused_with_their_name(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        EarlyStopping(**options)


def test_watch_refuses_an_early_stopping_that_is_not_a_policy(tmp_path):
    with pytest.raises(TypeError, match="early_stopping"):
        watch(nn.Linear(2, 1), logdir=tmp_path, early_stopping="val_loss")


# ---------------------------------------------------------------------- real trainings

def overfit(tmp_path, policy, epochs=40, every=5):
    """A wide MLP on 24 noisy points: its validation loss bottoms out early and then climbs.
    Returns (handle, the state dicts after each epoch, the val losses, the epochs run)."""
    torch.manual_seed(0)
    model = make_mlp(inputs=20, hidden=256, classes=4)
    x, y = blobs(n=24, seed=3)
    xv, yv = blobs(n=400, seed=3, draw=1)
    y = y.roll(3)  # a few wrong labels to memorise
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    states, val_losses = [], []
    with watch(model, opt, run="overfit", logdir=tmp_path, every=every, early_stopping=policy) as mon:
        for epoch in range(epochs):
            for idx in torch.arange(24).split(8):
                opt.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                mon.log(loss=loss)
            with torch.no_grad():
                val_losses.append(F.cross_entropy(model(xv), yv).item())
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            mon.log(val_loss=val_losses[-1], epoch=epoch)
            if mon.should_stop:
                break
        final = {k: v.clone() for k, v in model.state_dict().items()}
    return mon, states, val_losses, final, model


def test_a_training_stops_after_patience_epochs_without_improvement_and_says_why(tmp_path):
    mon, _, val_losses, _, _ = overfit(tmp_path, EarlyStopping(patience=3))
    best = min(range(len(val_losses)), key=val_losses.__getitem__)
    assert len(val_losses) == best + 4  # the third evaluation without improvement stops
    assert len(val_losses) < 40
    assert mon.stop_reason.cause is StopCause.EARLY_STOPPING and "val_loss has not improved" in mon.stop_reason.message
    status = monitor.load_run(mon.run_id, tmp_path).status
    assert status.state.tolist() == ["running", "stopping", "stopped"]
    assert status.by.iloc[-1] == "early_stopping" and "not improved" in status.reason.iloc[-1]


def test_restore_best_weights_puts_the_best_epochs_weights_back(tmp_path):
    mon, states, val_losses, final, model = overfit(tmp_path, EarlyStopping(patience=2, restore_best_weights=True))
    best = min(range(len(val_losses)), key=val_losses.__getitem__)
    assert best < len(val_losses) - 1
    restored = model.state_dict()
    for name, tensor in restored.items():
        assert torch.equal(tensor, states[best][name]), name
    assert not all(torch.equal(states[-1][k], states[best][k]) for k in restored)  # the last epoch differed
    assert mon.early_stopping.best_step is not None


def test_without_restore_the_last_weights_stay(tmp_path):
    _, states, _, final, model = overfit(tmp_path, EarlyStopping(patience=2))
    assert all(torch.equal(v, states[-1][k]) for k, v in model.state_dict().items())


def test_a_divergence_stops_the_run_within_the_stated_bound_of_the_first_nonfinite_loss(tmp_path):
    """The detect stage sees a step's loss at most NUDGE_STEPS steps later (the training
    thread nudges it), and the stop it decides is read by the next should_stop; sampled
    or not, no step waits for it."""
    from trainer_hooks.writer import NUDGE_STEPS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    first_nonfinite = None
    with watch(model, opt, run="nan", logdir=tmp_path, every=1000, early_stopping=EarlyStopping()) as mon:
        for step in range(200):
            loss = model(torch.randn(16, 4)).pow(2).mean() * 1e3
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
            # a 10 ms step: the rest of a real one (data loading, a larger model), and the bound
            # below in steps leaves a loaded host that long (160 ms) to give the detect stage a core
            time.sleep(0.01)
            if first_nonfinite is None and not math.isfinite(loss.item()):
                first_nonfinite = step
            if mon.should_stop:
                break
    assert first_nonfinite is not None and first_nonfinite < 50
    assert mon.stop_reason.cause is StopCause.FLAG and mon.stop_reason.flag == "divergence"
    assert first_nonfinite < mon.step <= first_nonfinite + 2 * NUDGE_STEPS
    with RunStore(tmp_path) as store:
        info = store.run_info(mon.run_id)
    assert info.status == "diverged"


def test_a_stuck_store_neither_stalls_the_loop_nor_delays_a_stop_on_flags(tmp_path):
    """Another process holds the SQLite file locked, so the sink retries with back-off:
    the detect stage goes on without it, the NaN stops the run within the same bound as
    with a healthy store, no step waits, and nothing is lost once the lock goes."""
    import sqlite3

    from monitor.store import DB_FILENAME
    from trainer_hooks.writer import NUDGE_STEPS

    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with watch(model, opt, run="locked", logdir=tmp_path, every=1, early_stopping=EarlyStopping()) as mon:
        mon.flush()
        lock = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        for step in range(200):
            loss = model(torch.randn(8, 4)).pow(2).mean() * (math.nan if step == 40 else 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
            time.sleep(0.002)
            if mon.should_stop:
                break
        elapsed = time.monotonic() - started
        stopped_at = mon.step
        lock.execute("ROLLBACK")
        lock.close()
    assert mon.stop_reason.flag == "divergence"
    assert 40 < stopped_at <= 40 + 2 * NUDGE_STEPS
    assert elapsed < 5.0  # about 60 steps of 2 ms: no step waited for the store
    with RunStore(tmp_path) as store:
        assert len(store.events(mon.run_id, kinds=["scalars"])) >= stopped_at  # nothing lost once the lock went
        assert store.run_info(mon.run_id).status == "diverged"


def test_a_stop_on_flags_needs_no_validation_metric_and_a_plain_policy_leaves_flags_alone(tmp_path):
    model = nn.Linear(2, 1)
    with watch(model, run="flags", logdir=tmp_path, early_stopping=EarlyStopping(stop_on=())) as mon:
        mon.log(loss=math.nan)
        mon.flush()
        assert [f.kind for f in mon.flags] == ["divergence"] and not mon.should_stop
