"""The sweep's parts below the command line: the trial's command template, the documents
between the sweep and a trial's process, the trial's stop policy, and the Optuna study
(a real SQLite storage): random draws that depend on the trial's number only, a grid,
and a study that refuses a process with another space."""
import math

import pytest

from monitor.events import Flag, Severity
from monitor.sweeps import command, study as studies
from monitor.sweeps.pruning import TrialPolicy
from monitor.sweeps.space import parse, parse_all
from monitor.sweeps.trial import TRIAL_ENV, Outcome, TrialSpec

SPACE = parse_all(["lr=loguniform(1e-4,1)", "bs=choice(32,64)", "layers=int(1,4)"])


def test_the_command_takes_every_dimension_once_and_nothing_else():
    argv = ["python", "train.py", "--lr", "{lr}", "--batch-size={bs}", "--layers", "{layers}", "--epochs", "2"]
    command.check(argv, SPACE)
    filled = command.fill(argv, {"lr": 0.000123456789012, "bs": 64, "layers": 3})
    assert filled[3] == "0.000123456789012" and float(filled[3]) == 0.000123456789012  # exact
    assert filled[4] == "--batch-size=64" and command.script_of(filled)[0] == "train.py"
    assert command.epochs(filled, {}) == 2.0 and command.epochs(["x.py", "--epochs=3"], {}) == 3.0
    assert command.epochs(["x.py"], {"epochs": 5}) == 5.0 and command.epochs(["x.py"], {}) is None
    assert command.script_of(["python3", "-m", "pkg.train", "--lr", "1"])[:2] == ["-m", "pkg.train"]
    for argv, words in [(["python", "t.py", "--lr", "{lr}", "{wd}", "{bs}", "{layers}"], "{wd}, which no --space"),
                        (["python", "t.py", "--lr", "{lr}"], "--space bs, layers never reaches"),
                        (["torchrun", "t", "{lr}", "{bs}", "{layers}"], "must run a Python script"),
                        (["python", "t.py", "{lr", "{bs}", "{layers}"], "is not a template"),
                        ([], "give the trial command after --")]:
        with pytest.raises(command.CommandError, match=words.replace("{", r"\{").replace("}", r"\}")):
            command.check(argv, SPACE)


def test_the_trial_spec_and_outcome_cross_the_process_boundary_whole(tmp_path):
    spec = TrialSpec("s", 3, {"lr": 0.01, "bs": 32}, tuple(d.spec() for d in SPACE), outcome=str(tmp_path / "o"))
    assert TrialSpec.from_env({TRIAL_ENV: spec.to_env()}) == spec
    assert TrialSpec.from_env({}) is None
    with pytest.raises(ValueError, match=f"{TRIAL_ENV}: not a trial"):
        TrialSpec.from_env({TRIAL_ENV: "{not json"})
    with pytest.raises(ValueError, match="the median pruner needs the study's storage"):
        TrialSpec("s", 0, {}, (), pruner="median")
    assert spec.config()["params"] == {"lr": 0.01, "bs": 32} and spec.config()["space"][0].startswith("lr=")
    done = Outcome("run-1", "diverged", "why", values=((10, 2.0), (20, 1.5), (30, math.nan)),
                   standard_errors=((10, 0.05), (20, 0.02), (30, 0.03)))
    done.write(spec.outcome)
    back = Outcome.read(spec.outcome)
    assert back.values[:2] == done.values[:2] and math.isnan(back.values[2][1])
    assert back.best() == 1.5 and back.best(maximize=True) == 2.0
    assert back.noise() == 0.02 and back.noise(maximize=True) == 0.05  # the error of the value ranked
    assert Outcome.read(tmp_path / "missing") is None


def flag(kind, severity=Severity.WARNING, step=10, layer=None):
    return Flag(kind, severity, f"{kind} at step {step}", "advice", step=step, layer=layer)


def test_the_trial_policy_prunes_on_a_hopeless_diagnosis_at_once_and_never_for_want_of_improvement():
    policy = TrialPolicy(monitor="val_loss")
    for step, value in enumerate([1.0, 1.1, 1.2, 1.3, 1.4, 1.5]):  # worse and worse: a search's business
        assert policy.update_metric(step, value) is None
    assert policy.update_flag(flag("plateau"), 6) is None  # six evaluations in: not an early plateau
    stop = policy.update_flag(flag("dead_relu", Severity.CRITICAL, 7, layer="net.1"), 7)
    assert stop.cause.value == "pruned" and stop.message == "dead_relu [net.1]: dead_relu at step 7"
    assert policy.pruned_by == "dead_relu" and stop.end_state.value == "stopped"

    early = TrialPolicy(monitor="val_loss")
    assert early.update_flag(flag("plateau"), 3).cause.value == "pruned"
    diverged = TrialPolicy(monitor="val_loss")
    assert diverged.update_flag(flag("divergence", Severity.CRITICAL), 9).end_state.value == "diverged"
    nan = TrialPolicy(monitor="val_acc", mode="max")
    assert nan.update_metric(4, math.nan).message == "val_acc is nan at step 4" and nan.pruned_by == "objective"
    off = TrialPolicy(monitor="val_loss", prune=False)
    assert off.update_flag(flag("divergence", Severity.CRITICAL), 9) is None
    asked = TrialPolicy(monitor="val_loss", ask=lambda step, value: "behind" if value > 2 else None)
    assert asked.update_metric(1, 1.0) is None and asked.update_metric(2, 3.0).message == "behind"
    assert asked.pruned_by == "pruner" and asked.values == [(1, 1.0), (2, 3.0)]
    asked.note_standard_error(0.1)  # babysit run's, right after the value it belongs to
    assert asked.standard_errors == [(2, 0.1)]


def numbered_trials(tmp_path, name, seed, count):
    study = studies.open_study(name, studies.storage_url(str(tmp_path / f"{name}.sqlite3"), tmp_path), "minimize",
                               SPACE, studies.sampler("random", SPACE, seed))
    out = []
    for _ in range(count):
        trial = study.ask(studies.distributions(SPACE))
        study.tell(trial, 1.0)
        out.append((trial.number, trial.params))
    return out


def test_random_draws_depend_on_the_seed_and_the_trials_number_only(tmp_path):
    one = numbered_trials(tmp_path, "a", 7, 6)
    again = numbered_trials(tmp_path, "b", 7, 6)
    assert one == again  # another study, another process layout: the same trials
    assert len({tuple(sorted(p.items())) for _, p in one}) == 6
    other = numbered_trials(tmp_path, "c", 8, 6)
    assert [p for _, p in other] != [p for _, p in one]
    memory = studies.optuna().create_study(sampler=studies.sampler("random", SPACE, 0))  # no storage: quick
    many = [(t.number, t.params) for t in (memory.ask(studies.distributions(SPACE)) for _ in range(200))]
    lrs = [p["lr"] for _, p in many]
    assert all(1e-4 <= v <= 1 for v in lrs) and {p["bs"] for _, p in many} == {32, 64}
    assert {p["layers"] for _, p in many} == {1, 2, 3, 4}
    decades = [sum(10 ** -k <= v < 10 ** -(k - 1) for v in lrs) for k in (4, 3, 2, 1)]
    assert min(decades) > 30  # log-uniform: each decade about a quarter of 200


def test_a_grid_spreads_its_values_on_the_dimensions_scale_and_the_study_keeps_its_space(tmp_path):
    assert studies.grid_values(parse("lr=loguniform(1e-4,1)")) == [1e-4, 0.00215443, 0.0464159, 1.0]
    assert studies.grid_values(parse("n=int(1,4)"), 3) == [1, 2, 4]  # 1, 2.5, 4 rounded
    assert studies.grid_size(SPACE) == 4 * 2 * 4
    url = studies.storage_url(None, tmp_path)
    assert url == f"sqlite:///{(tmp_path / 'sweeps.sqlite3').resolve()}"
    studies.open_study("s", url, "minimize", SPACE, studies.sampler("grid", SPACE))
    with pytest.raises(studies.StudyError, match="searches lr=loguniform"):
        studies.open_study("s", url, "minimize", SPACE[:1], studies.sampler("random", SPACE[:1]))
    with pytest.raises(studies.StudyError, match="is to minimize its objective"):
        studies.open_study("s", url, "maximize", SPACE, studies.sampler("random", SPACE))
    with pytest.raises(studies.StudyError, match="cannot open the study's storage"):
        studies.storage(f"sqlite:///{tmp_path}/no/such/dir/x.sqlite3")


def test_processes_opening_a_new_storage_at_once_all_get_it(tmp_path):
    """Optuna creates a new storage's tables on first open; openers at the same moment race
    (one meets "table studies already exists"): each is tried again instead of failing."""
    import threading

    def open_it(url, start, failures):
        start.wait()
        try:
            studies.storage(url)
        except studies.StudyError as exc:
            failures.append(str(exc))

    for attempt in range(4):
        url, start, failures = f"sqlite:///{tmp_path / f'race{attempt}.sqlite3'}", threading.Barrier(6), []
        threads = [threading.Thread(target=open_it, args=(url, start, failures)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
