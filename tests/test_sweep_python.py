"""The Python form, ``trainer_hooks.sweep(objective, space, trials)``: an objective in code,
trials watched in this process and pruned by diagnosis (``mon.should_stop``), Optuna's
median pruner on the objective as an option, and the same report as the command."""
import math
import time

import torch
from torch import nn

import monitor
from trainer_hooks import sweep

X = torch.randn(320, 8, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))


def objective(trial, epochs=4):
    """A small MLP on a linear target, 8 steps an epoch, ``trial.params``: lr (and width).
    Each step takes 5 ms at least, as a real one does (tests/sweep_trial.py says why)."""
    torch.manual_seed(0)
    width = trial.params.get("width", 16)
    model = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 1))
    opt = torch.optim.SGD(model.parameters(), lr=trial.params["lr"], momentum=0.9)
    with trial.watch(model, opt, every=2) as mon:
        for _ in range(epochs):
            for i in range(0, 256, 32):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(X[i:i + 32]), Y[i:i + 32])
                loss.backward()
                opt.step()
                mon.log(loss=loss)
                time.sleep(0.005)
                if mon.should_stop:
                    return None
            with torch.no_grad():
                mon.log(val_loss=nn.functional.mse_loss(model(X[256:]), Y[256:]))
            if mon.should_stop:
                return None
    return None


def test_an_objective_in_code_is_searched_its_diverged_trials_pruned_with_the_flag_as_reason(tmp_path):
    said = []
    result = sweep(objective, ["lr=loguniform(1e-3,30)"], trials=8, seed=2, name="py", logdir=str(tmp_path),
                   say=said.append)
    assert len(result.trials) == 8 and [t.number for t in result.trials] == list(range(8))
    for t in result.trials:
        frames = monitor.load_run(t.run, logdir=tmp_path)
        loss = frames.series("loss")
        assert frames.info["config"]["sweep"] == "py" and frames.info["config"]["params"] == dict(t.params)
        if not loss.map(math.isfinite).all() or loss.max() > 100 * loss.iloc[0]:  # the truth: it blew up
            assert t.state == "pruned" and t.reason.startswith(("divergence", "val_loss is nan")), t
            assert frames.status.state.iloc[-1] == "diverged" and len(loss) < 32
        else:
            assert t.state == "complete" and t.value == frames.series("val_loss").min()
    best = min((t for t in result.trials if t.state == "complete"), key=lambda t: t.value)
    assert result.best == best and any(line.startswith(f"best: trial {best.number} ") for line in result.lines)
    assert any(t.state == "pruned" for t in result.trials)
    assert any(line.startswith("babysit sweep: trial ") and " pruned after " in line for line in said)


def test_optunas_median_pruner_ends_a_trial_behind_the_others_at_the_same_step(tmp_path):
    # The objective trains with fixed rates (the drawn ones aside) so that the test knows which trial lags:
    lrs = iter([0.05, 0.05, 0.05, 0.05, 0.05, 1e-4])  # five good trials, then one that barely learns

    def fixed(trial):
        trial.params = {"lr": next(lrs)}
        return objective(trial, epochs=3)

    result = sweep(fixed, ["lr=loguniform(1e-4,1)"], trials=6, name="median", logdir=str(tmp_path),
                   pruner="median", prune=False, say=lambda line: None)
    slow = result.trials[-1]
    assert slow.state == "pruned" and slow.pruned_by == "pruner" and "median pruner" in slow.reason, slow
    assert all(t.state == "complete" for t in result.trials[:5])
    frames = monitor.load_run(slow.run, logdir=tmp_path)
    assert len(frames.series("val_loss")) == 1  # pruned at its first evaluation, behind the others there


def test_the_sweep_as_the_run_store_holds_it_tells_the_same_story_as_the_study(tmp_path, http_get):
    import json

    from servers import serving

    result = sweep(objective, ["lr=loguniform(1e-3,30)"], trials=6, seed=4, name="told", logdir=str(tmp_path),
                   say=lambda line: None)
    with serving(tmp_path) as running:
        status, _, body = http_get(f"{running.url}/api/sweeps/told")
        missing, _, error = http_get(f"{running.url}/api/sweeps/nope")
        bad, _, _ = http_get(f"{running.url}/api/sweeps/no%20spaces")
    view = json.loads(body)
    assert status == 200 and (missing, bad) == (404, 400)
    assert json.loads(error)["error"] == "no sweep 'nope' (known sweeps: told)"
    assert view["best"] == result.best.number and view["space"][0]["spec"] == "lr=loguniform(0.001,30)"
    assert [(t["number"], t["state"], t["run"]) for t in view["trials"]] == \
        [(t.number, t.state, t.run) for t in result.trials]
    assert [a["kind"] for a in view["advice"]] == [a.kind for a in result.report.advice]


def test_a_grid_runs_each_cell_once_and_a_crashing_trial_fails_without_ending_the_search(tmp_path):
    said = []

    def sometimes(trial):
        if trial.params["lr"] > 1:
            raise ValueError("this configuration cannot be built")
        return objective(trial, epochs=2)

    result = sweep(sometimes, ["lr=loguniform(1e-3,10)"], trials=10, sampler="grid", name="grid",
                   logdir=str(tmp_path), say=said.append)
    assert sorted(t.params["lr"] for t in result.trials) == [0.001, 0.0215443, 0.464159, 10.0]  # 4 cells, not 10
    [crashed] = [t for t in result.trials if t.params["lr"] == 10.0]
    assert crashed.state == "failed" and "cannot be built" in " ".join(said)
    assert any(line.startswith("advice (grid): a grid: ") for line in result.lines)
