"""Running a sweep: trials asked of the Optuna study, each run as its own process under
``babysit run`` (the command filled in with its parameters), told back to the study.

* A trial's process is watched by babysit like any run (stored under ``logdir``, or
  streamed to ``server``), tagged with the sweep, its number, parameters and the space,
  and pruned by its own policy (``monitor.sweeps.pruning.TrialPolicy``) the moment its
  diagnosis says it is hopeless. It writes an :class:`~monitor.sweeps.trial.Outcome`
  the sweep reads; its output goes to ``<logdir>/sweeps/<sweep>/trial-NNN.log``.
* ``trials`` is the study's budget, shared by every process that joins it: a process asks
  for a trial, and one numbered past the budget is given back (marked failed as surplus,
  and never run). Trial numbers come from the storage, so two processes never run the
  same trial.
* ``parallel`` trials run at once; each gets ``OMP_NUM_THREADS`` = cores // parallel
  (unless set) so that they share the machine instead of fighting over it.
* Every trial's record (state, value, seconds, run, reason) is kept as the study trial's
  user attributes, so the report of any process covers the whole sweep.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from monitor.sweeps import command, study as studies
from monitor.sweeps.report import SweepTrial, value_text
from monitor.sweeps.runs import trial_state
from monitor.sweeps.space import Dimension
from monitor.sweeps.trial import TRIAL_ENV, Outcome, TrialSpec

#: Seconds a trial past its time (or the sweep interrupted) gets to end after SIGINT before it is killed.
GRACE_SECONDS = 20.0
#: The study trial's user attribute holding its babysit record.
RECORD_ATTR = "babysit"


@dataclass(frozen=True)
class SweepPlan:
    name: str
    space: tuple[Dimension, ...]
    command: tuple[str, ...]
    trials: int
    storage: str  # a URL (monitor.sweeps.study.storage_url)
    parallel: int = 1
    sampler: str = "random"
    objective: str = "val_loss"
    direction: str = "minimize"
    prune: bool = True
    pruner: str | None = None
    logdir: str = "runs"
    server: str | None = None
    token: str | None = None
    every: int | None = None
    seed: int | None = None
    grid_points: int = studies.GRID_POINTS
    trial_timeout: float | None = None

    @property
    def budget(self) -> int:
        """Trials to run: ``trials``, or a grid's size when that is smaller."""
        if self.sampler == "grid":
            return min(self.trials, studies.grid_size(self.space, self.grid_points))
        return self.trials

    @property
    def folder(self) -> Path:
        return Path(self.logdir) / "sweeps" / self.name


class Sweep:
    """One process's part of a sweep; :meth:`run` returns when the study's budget is spent."""

    def __init__(self, plan: SweepPlan, say: Callable[[str], None] = print,
                 run_trial: Callable[[Any, TrialSpec], SweepTrial] | None = None):
        """``run_trial(trial, spec)`` runs one trial and says how it ended (default: the
        plan's command as a ``babysit run`` process; the Python form passes its objective)."""
        self.plan = plan
        self.say = say
        self.run_trial = run_trial or self._run_process
        self.search = studies.sampler(plan.sampler, plan.space, plan.seed, plan.grid_points)
        self.study = studies.open_study(plan.name, plan.storage, plan.direction, plan.space, self.search)
        self.distributions = studies.distributions(plan.space)
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen] = {}
        self._stopping = threading.Event()
        self.ran: list[SweepTrial] = []  # this process's trials

    # ------------------------------------------------------------------ the loop

    def run(self) -> list[SweepTrial]:
        """Run the trials (``parallel`` worker threads) until the budget is spent. Ctrl-C ends
        the running trials as Ctrl-C would and waits for them to be told to the study. The
        wait is on each worker's own event: a ``Thread.join`` that a KeyboardInterrupt broke
        into reports the thread dead while it still runs (CPython, 3.11)."""
        self.plan.folder.mkdir(parents=True, exist_ok=True)
        done = [threading.Event() for _ in range(self.plan.parallel)]
        for i, finished in enumerate(done):
            threading.Thread(target=self._work, args=(finished,), name=f"babysit-sweep-{i}", daemon=True).start()
        try:
            for finished in done:
                while not finished.wait(0.2):
                    pass
        except KeyboardInterrupt:
            self.interrupt()
            for finished in done:
                finished.wait(GRACE_SECONDS + 5)
            raise
        return self.ran

    def interrupt(self) -> None:
        """Stop asking for trials and end the running ones as Ctrl-C would."""
        self._stopping.set()
        with self._lock:
            running = list(self._running.values())
        for process in running:
            _signal(process, signal.SIGINT)

    def _work(self, finished: threading.Event) -> None:
        try:
            self._work_until_spent()
        finally:
            finished.set()

    def _work_until_spent(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                trial = self.study.ask(self.distributions)
            if trial.number >= self.plan.budget:
                self._tell(trial, SweepTrial(trial.number, trial.params, "failed",
                                             reason=f"surplus: the sweep's budget of {self.plan.budget} trials "
                                                    "was spent (never run)", extra={"surplus": True}))
                return
            try:
                record = self.run_trial(trial, self.spec(trial))
            except Exception as exc:  # noqa: BLE001 - a trial we could not start fails; the sweep goes on
                record = SweepTrial(trial.number, trial.params, "failed",
                                    reason=f"babysit sweep could not run it: {type(exc).__name__}: {exc}")
            self._tell(trial, record)
            self.ran.append(record)
            self.say(_line(record, self.plan))

    def _tell(self, trial, record: SweepTrial) -> None:
        state = studies.optuna().trial.TrialState
        with self._lock:
            trial.set_user_attr(RECORD_ATTR, _attrs(record))
            try:
                if record.state == "complete":
                    self.study.tell(trial, record.value)
                else:
                    self.study.tell(trial, state=state.PRUNED if record.state == "pruned" else state.FAIL)
            except RuntimeError as exc:  # a grid's last cell: Optuna's grid sampler stops the study, which
                if "Study.stop" not in str(exc):  # only an optimize() loop may; the trial is stored by then
                    raise

    # ------------------------------------------------------------------ one trial

    def spec(self, trial) -> TrialSpec:
        """What the trial's process (or the Python objective's watch) is handed."""
        plan, number, params = self.plan, trial.number, dict(trial.params)
        argv = command.fill(plan.command, params) if plan.command else []
        return TrialSpec(plan.name, number, params, tuple(d.spec() for d in plan.space), plan.objective,
                         plan.direction, plan.prune, plan.pruner, plan.storage if plan.pruner else None,
                         plan.name if plan.pruner else None, trial._trial_id if plan.pruner else None,
                         str((plan.folder / f"trial-{number:03d}.json").resolve()), command.epochs(argv, params),
                         plan.sampler)

    def _run_process(self, trial, spec: TrialSpec) -> SweepTrial:
        plan, number, params = self.plan, spec.number, dict(spec.params)
        argv = command.fill(plan.command, params)
        run_name = run_name_of(plan.name, number)
        outcome_path = Path(spec.outcome)
        log_path = plan.folder / f"trial-{number:03d}.log"
        outcome_path.unlink(missing_ok=True)
        shown = ", ".join(f"{k}={value_text(v)}" for k, v in params.items())
        self.say(f"babysit sweep: trial {number} ({shown}) starts as run {run_name}; its output: {log_path}")
        started = time.monotonic()
        with open(log_path, "w") as log:
            process = subprocess.Popen([*self._babysit_run(run_name), *command.script_of(argv)], stdout=log,
                                       stderr=subprocess.STDOUT, env=self._env(spec), start_new_session=True)
            with self._lock:
                self._running[number] = process
            try:
                code = self._wait(process)
            finally:
                with self._lock:
                    self._running.pop(number, None)
        wall = time.monotonic() - started
        outcome = Outcome.read(outcome_path)
        # The run's time, as the trial measured it: the interpreter's start and the script's
        # imports (seconds here) are the same for every trial, and no pruning saves them.
        seconds = outcome.seconds if outcome is not None and outcome.seconds is not None else wall
        return record_of(spec, outcome, code, seconds, {"log": str(log_path), "exit": code, "wall": round(wall, 3)},
                         timed_out=code is None)

    def _babysit_run(self, run_name: str) -> list[str]:
        argv = [sys.executable, "-m", "monitor.cli", "run", "--logdir", str(self.plan.logdir), "--run", run_name]
        if self.plan.server:
            argv += ["--server", self.plan.server]
        if self.plan.every is not None:
            argv += ["--every", str(self.plan.every)]
        return argv

    def _env(self, spec: TrialSpec) -> dict[str, str]:
        env = {**os.environ, TRIAL_ENV: spec.to_env()}
        if self.plan.token:
            env["BABYSIT_TOKEN"] = self.plan.token  # not on the command line, where ps shows it
        if "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.plan.parallel))
        return env

    def _wait(self, process: subprocess.Popen) -> int | None:
        """The exit status, or None for a trial ended because it ran past ``trial_timeout``."""
        try:
            return process.wait(self.plan.trial_timeout)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGINT)
            try:
                process.wait(GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                _signal(process, signal.SIGKILL)
                process.wait()
            return None


def _signal(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # its DataLoader workers too
    except (ProcessLookupError, PermissionError):
        pass


def run_name_of(sweep: str, number: int) -> str:
    return f"{sweep}-{number:03d}"


def record_of(spec: TrialSpec, outcome: Outcome | None, code: int | None, seconds: float,
              extra: dict[str, Any], timed_out: bool = False, value: float | None = None) -> SweepTrial:
    """How one trial ended, as the sweep records it. ``code``: the process's exit status
    (0 for a Python objective that returned); ``value``: the objective's own answer, which
    wins over the best logged value."""
    number, params, log = spec.number, dict(spec.params), extra.get("log")
    common = dict(seconds=seconds, epochs=spec.epochs, extra=extra)
    if outcome is None or timed_out:
        why = ("ran past --trial-timeout" if timed_out else
               f"exited with status {code} before babysit recorded how it ended; see {log}")
        return SweepTrial(number, params, "failed", run=outcome.run if outcome else None, reason=why, **common)
    value = outcome.best(spec.maximize) if value is None else float(value)
    state = trial_state(outcome.state, "pruned" if outcome.pruned is not None else "", value)
    reason = outcome.pruned or outcome.reason or ("" if value is not None else
                                                 f"no {spec.objective} was logged (the objective)")
    if state == "failed" and code not in (0, None) and not outcome.reason:
        reason = f"exited with status {code}" + (f"; see {log}" if log else "")
    return SweepTrial(number, params, state, value, run=outcome.run, reason=reason, pruned_by=outcome.pruned_by,
                      noise=outcome.noise(spec.maximize), **common)


def _attrs(record: SweepTrial) -> dict[str, Any]:
    return {"state": record.state, "value": record.value, "seconds": record.seconds, "run": record.run,
            "reason": record.reason, "pruned_by": record.pruned_by, "epochs": record.epochs, "noise": record.noise,
            **record.extra}


def trials_of(study) -> list[SweepTrial]:
    """Every trial of the study as the sweep recorded it (surplus ones left out; a trial
    still running, from this process or another, as ``running``)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs.get(RECORD_ATTR)
        if attrs is None:
            out.append(SweepTrial(t.number, t.params, "running"))
            continue
        if attrs.get("surplus"):
            continue
        extra = {k: v for k, v in attrs.items() if k in ("log", "exit", "wall")}
        out.append(SweepTrial(t.number, t.params, attrs["state"], attrs.get("value"), attrs.get("seconds"),
                              attrs.get("run"), attrs.get("reason", ""), attrs.get("pruned_by"), attrs.get("epochs"),
                              attrs.get("noise"), extra))
    return out


def _line(record: SweepTrial, plan: SweepPlan) -> str:
    shown = ", ".join(f"{k}={value_text(v)}" for k, v in record.params.items())
    took = f" after {record.seconds:.1f} s" if record.seconds is not None else ""
    if record.state == "complete":
        return f"babysit sweep: trial {record.number} ({shown}) complete{took}: {plan.objective} {record.value:.4g}"
    return f"babysit sweep: trial {record.number} ({shown}) {record.state}{took}: {record.reason}"


