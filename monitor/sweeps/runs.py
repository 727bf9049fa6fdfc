"""A sweep as the run store holds it: the runs whose config names the sweep and the trial
(``babysit sweep`` tags each trial's run so), read back as :class:`SweepTrial` records.

The store is the sweep page's source, not the Optuna study: it is the one place every
trial streamed to (from any machine), and it is live. A trial's state comes from how its
run ended: a stop ``by`` ``pruned`` is a pruned trial (diverged or not), a run still
running is ``running``, a finished or stopped one with a value of the objective is
complete, anything else failed. Its value is the best value of the objective it logged;
its noise the ``<objective>_se`` logged at that value's step (the standard error of the
evaluation over its batches, which ``babysit run`` logs).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from monitor.sweeps.command import epochs
from monitor.sweeps.report import SweepTrial
from monitor.sweeps.trial import best_of, error_at_best

#: Run states of a trial still under way.
UNDER_WAY = ("running", "stopping", "lost")


def is_trial(config: Mapping[str, Any]) -> bool:
    return isinstance(config.get("sweep"), str) and isinstance(config.get("trial"), int) \
        and isinstance(config.get("params"), Mapping)


def by_sweep(runs: Iterable[Any]) -> dict[str, list[Any]]:
    """The trial runs (``RunInfo``-like: ``.config``, ``.started``) of each sweep, one per
    trial number: the newest where a number was run twice."""
    out: dict[str, dict[int, Any]] = {}
    for info in runs:
        config = info.config or {}
        if not is_trial(config):
            continue
        trials = out.setdefault(config["sweep"], {})
        known = trials.get(config["trial"])
        if known is None or info.started > known.started:
            trials[config["trial"]] = info
    return {name: [trials[n] for n in sorted(trials)] for name, trials in out.items()}


def trial_state(status: str, by: str, value: float | None) -> str:
    """A trial's state from how its run ended (``by``: who stopped it) and its value."""
    if by == "pruned":
        return "pruned"
    if status in UNDER_WAY:
        return "running"
    if status == "diverged":
        return "diverged"
    if status in ("finished", "stopped") and value is not None:
        return "complete"
    return "failed"


def sweep_trial(info: Any, reason: str, by: str, values: Sequence[tuple[int, float]],
                errors: Sequence[tuple[int, float]] = ()) -> SweepTrial:
    """One trial from its run: ``reason``/``by`` of its last status, the objective's values
    and their standard errors, each as (step, value)."""
    config = info.config
    maximize = config.get("direction") == "maximize"
    best = best_of(values, maximize)
    value = best[1] if best else None
    state = trial_state(info.status, by, value)
    return SweepTrial(config["trial"], dict(config["params"]), state, value,
                      max(info.updated - info.started, 0.0), info.run, reason if state != "complete" else "",
                      extra={"status": info.status, "last_step": info.last_step, "flags": info.flags,
                             "flag_kinds": list(getattr(info, "flag_kinds", ())), "by": by},
                      noise=error_at_best(values, errors, maximize), epochs=_epochs(config))


def _epochs(config: Mapping[str, Any]) -> float | None:
    return epochs(list(config.get("args") or ()), config.get("params") or {})
