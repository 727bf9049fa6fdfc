"""Sweeps from Python: ``sweep(objective, space, trials=...)`` for an objective in code,
and what a trial's ``babysit run`` process needs (its stop policy, its outcome).

``objective(trial)`` trains one configuration: ``trial.params`` are its values, and
``trial.watch(model, optimizer, ...)`` watches it as a trial of the sweep (named, tagged,
pruned by diagnosis: ``mon.should_stop`` turns true when babysit finds it hopeless). It
returns its objective value, or None to let babysit take the best logged value of the
sweep's objective (``val_loss`` by default). The search is the CLI's: Optuna's study in a
shared storage, random search by default, the same report and advice
(``monitor.sweeps``)::

    from trainer_hooks import sweep

    def objective(trial):
        model, opt = make(lr=trial.params["lr"])
        with trial.watch(model, opt) as mon:
            for epoch in range(3):
                train_one_epoch(model, opt, mon)     # mon.log(loss=...); break on mon.should_stop
                mon.log(val_loss=evaluate(model))
                if mon.should_stop: break

    result = sweep(objective, ["lr=loguniform(1e-4,1)"], trials=16)
    print(result.best.params, *result.lines, sep="\\n")
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from monitor.early_stopping import StopCause
from monitor.sweeps.pruning import TrialPolicy
from monitor.sweeps.report import SweepReport, SweepTrial, lines, report
from monitor.sweeps.space import Dimension, parse_all
from monitor.sweeps.trial import Outcome, TrialSpec
from trainer_hooks.handle import Monitor, watch


def trial_policy(trial: TrialSpec) -> TrialPolicy:
    """The trial's stop policy: pruned by diagnosis, and by Optuna's pruner when it has one."""
    ask = None
    if trial.pruner is not None:
        from monitor.sweeps.study import pruner_ask  # Optuna, only for a trial that uses its pruner

        ask = pruner_ask(trial)
    return TrialPolicy(monitor=trial.objective, mode="max" if trial.maximize else "min", prune=trial.prune,
                       ask=ask)


def outcome_of(monitor: Monitor | None, seconds: float, ending: tuple = (None, "")) -> Outcome:
    """How a trial's run ended (``monitor``: the run its policy watched, None if none was
    found; ``ending``: the script's own end as (state, reason), a crash before any step too).
    Its seconds are its run's, from watch() to the end: the training that pruning can save
    (the script's imports and data loading before it are the same for every trial)."""
    if monitor is None:
        state, reason = ending
        return Outcome(None, getattr(state, "value", state) or "failed",
                       reason or "no model was found training", seconds=seconds)
    policy, stop = monitor.early_stopping, monitor.stop_reason
    pruned = stop is not None and stop.cause is StopCause.PRUNED
    return Outcome(monitor.run_id, monitor.ended.value if monitor.ended else "unknown",
                   stop.message if stop else ending[1],
                   pruned=stop.message if pruned else None,
                   pruned_by=getattr(policy, "pruned_by", None) if pruned else None, step=monitor.step,
                   values=tuple(policy.values) if isinstance(policy, TrialPolicy) else (),
                   seconds=monitor.duration if monitor.duration is not None else seconds,
                   standard_errors=tuple(policy.standard_errors) if isinstance(policy, TrialPolicy) else ())


@dataclass
class Trial:
    """One trial of a Python sweep, as the objective sees it."""

    number: int
    params: Mapping[str, Any]
    spec: TrialSpec
    options: Mapping[str, Any] = field(default_factory=dict)
    monitor: Monitor | None = None

    def watch(self, model, optimizer=None, **options) -> Monitor:
        """``watch()`` for this trial: its run name, the sweep's tags in its config, its
        pruning policy (``mon.should_stop`` turns true when the trial is pruned)."""
        if self.monitor is not None:
            raise RuntimeError(f"trial {self.number}: watch() was called already; a trial watches one model")
        config = {**dict(options.pop("config", None) or {}), **self.spec.config()}
        merged = {**self.options, **options}
        merged.setdefault("run", f"{self.spec.sweep}-{self.number:03d}")
        self.monitor = watch(model, optimizer, config=config, early_stopping=trial_policy(self.spec), **merged)
        return self.monitor


@dataclass(frozen=True)
class SweepResult:
    name: str
    storage: str
    report: SweepReport
    lines: tuple[str, ...]

    @property
    def best(self) -> SweepTrial | None:
        return self.report.best

    @property
    def trials(self) -> tuple[SweepTrial, ...]:
        return self.report.trials


def sweep(objective: Callable[[Trial], float | None], space: Sequence[str | Dimension], trials: int = 20, *,
          name: str | None = None, storage: str | None = None, sampler: str = "random",
          objective_name: str = "val_loss", direction: str = "minimize", prune: bool = True,
          pruner: str | None = None, seed: int | None = None, logdir: str = "runs",
          say: Callable[[str], None] = print, **watch_options) -> SweepResult:
    """Search ``space`` (``--space`` specs or Dimensions) with ``trials`` calls of
    ``objective`` in this process; ``watch_options`` go to every trial's ``watch()``
    (``server=``, ``every=``, ...). Other processes join by ``name`` and ``storage``."""
    from pathlib import Path

    from monitor.sweeps import study as studies
    from monitor.sweeps.launch import Sweep, SweepPlan, record_of, trials_of

    dims = tuple(d if isinstance(d, Dimension) else parse_all([d])[0] for d in space)
    parse_all([d.spec() for d in dims])  # names given twice, or none
    name = name or datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    Path(logdir).mkdir(parents=True, exist_ok=True)
    plan = SweepPlan(name, dims, (), trials, studies.storage_url(storage, logdir), 1, sampler, objective_name,
                     direction, prune, pruner, logdir, seed=seed)

    def run_trial(optuna_trial, spec: TrialSpec) -> SweepTrial:
        trial = Trial(spec.number, dict(spec.params), spec, {"logdir": logdir, **watch_options})
        started = time.monotonic()
        try:
            value = objective(trial)
        except Exception as exc:  # noqa: BLE001 - one configuration's crash does not end the search
            why = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]
            if trial.monitor is not None:
                trial.monitor.close("crashed", why)
            say(f"babysit sweep: trial {spec.number} crashed: {why}")
            seconds = time.monotonic() - started
            run = trial.monitor.run_id if trial.monitor is not None else None
            return record_of(spec, Outcome(run, "crashed", why, seconds=seconds), 1, seconds, {"exit": 1})
        seconds = time.monotonic() - started
        if trial.monitor is not None:
            trial.monitor.close()
            outcome = outcome_of(trial.monitor, seconds)
        else:  # an objective that trains unwatched and answers its value
            outcome = Outcome(None, "finished" if value is not None else "failed",
                              "" if value is not None else "the objective neither watched a model nor returned "
                              "a value", seconds=seconds)
        return record_of(spec, outcome, 0, seconds, {}, value=value)

    search = Sweep(plan, say, run_trial)
    search.run()
    rep = report(trials_of(search.study), dims, direction, sampler)
    return SweepResult(name, plan.storage, rep, tuple(lines(rep, dims, objective_name)))
