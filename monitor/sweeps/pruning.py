"""Pruning by diagnosis: a trial whose run babysit has diagnosed as hopeless is stopped at
once, with the flag as the recorded reason, rather than when a median pruner notices its
validation metric lagging (Optuna's pruners read one number; babysit reads the run).

Hopeless, by default (:data:`PRUNE_ON`): ``divergence`` (a run that diverged does not
recover), a ``dead_relu`` flag that is critical (nearly a whole layer dead: no gradient
will revive it), and a ``plateau`` raised before :data:`EARLY_PLATEAU_EVALUATIONS`
evaluations (a loss flat from the start: the learning rate is far too low, the notes'
first check of a learning rate). :func:`prune_reason` is pure; :class:`TrialPolicy` is
how a trial's own process applies it: an early-stopping policy (``watch(early_stopping=)``)
that stops the run at the flag, at once and with the flag as its reason, and that can ask
one of Optuna's pruners about each evaluation of the objective as well.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from monitor.early_stopping import EarlyStopping, StopCause, StopReason
from monitor.events import Flag, Severity

#: Flag kinds that end a trial, with the severity they need (None: any).
PRUNE_ON: dict[str, Severity | None] = {"divergence": None, "dead_relu": Severity.CRITICAL, "plateau": None}
#: A plateau prunes only while the trial has had at most this many evaluations.
EARLY_PLATEAU_EVALUATIONS = 2


@dataclass(frozen=True)
class Pruned:
    kind: str
    step: int | None
    reason: str  # the flag's message, recorded as the trial's reason


def prune_reason(flags: Iterable[Flag], evaluations: int = 0,
                 prune_on: dict[str, Severity | None] = PRUNE_ON) -> Pruned | None:
    """The first flag that makes the trial hopeless, or None."""
    for flag in flags:
        if flag.kind not in prune_on:
            continue
        needed = prune_on[flag.kind]
        if needed is not None and flag.severity is not needed:
            continue
        if flag.kind == "plateau" and evaluations > EARLY_PLATEAU_EVALUATIONS:
            continue
        return Pruned(flag.kind, flag.step, f"{flag.kind}: {flag.message}")
    return None


@dataclass
class TrialPolicy(EarlyStopping):
    """A sweep trial's stop policy: prune on a hopeless diagnosis (:func:`prune_reason`),
    on a non-finite objective, or when ``ask`` (one of Optuna's pruners, given each
    evaluation as ``(step, value)``, answering a reason or None) says so. It never stops a
    trial for want of improvement: that is the search's call, not the trial's. Every
    evaluation of ``monitor`` (the objective) is kept in ``values``."""

    stop_on: tuple[str, ...] = ()
    prune: bool = True
    prune_on: dict[str, Severity | None] = field(default_factory=lambda: dict(PRUNE_ON))
    ask: Callable[[int, float], str | None] | None = None
    values: list[tuple[int, float]] = field(default_factory=list, init=False)
    standard_errors: list[tuple[int, float]] = field(default_factory=list, init=False)  # (step, error)
    pruned: StopReason | None = field(default=None, init=False)
    pruned_by: str | None = field(default=None, init=False)  # the flag's kind, "objective" or "pruner"

    def update_metric(self, step: int, value: float) -> StopReason | None:
        self.values.append((int(step), float(value)))
        if not math.isfinite(value):
            return self._pruned(StopReason(StopCause.PRUNED, f"{self.monitor} is {value} at step {step}",
                                           step), "objective")
        if self.improves(value):
            self.best, self.best_step, self.wait = value, step, 0
        else:
            self.wait += 1
        why = self.ask(step, value) if self.ask is not None else None
        return self._pruned(StopReason(StopCause.PRUNED, why, step), "pruner") if why else None

    def note_standard_error(self, value: float) -> None:
        """The standard error of the evaluation just logged, over its batches (``babysit run``
        gives it right after the value): the noise the validation set's size leaves in it."""
        if math.isfinite(value) and self.values:
            self.standard_errors.append((self.values[-1][0], float(value)))

    def update_flag(self, flag: Flag, step: int) -> StopReason | None:
        pruned = prune_reason([flag], len(self.values), self.prune_on) if self.prune else None
        if pruned is None:
            return None
        where = f" [{flag.layer}]" if flag.layer else ""
        kind, _, message = pruned.reason.partition(": ")
        return self._pruned(StopReason(StopCause.PRUNED, f"{kind}{where}: {message}", step, flag.kind),
                            flag.kind)

    def _pruned(self, reason: StopReason, by: str) -> StopReason:
        if self.pruned is None:
            self.pruned, self.pruned_by = reason, by
        return reason


@dataclass(frozen=True)
class Savings:
    """What pruning saved: the trials it ended and the trial-seconds they did not run,
    estimated from the completed trials' median duration (a pruned trial would have run
    about as long as a completed one)."""

    pruned: int
    completed: int
    seconds_run: float
    seconds_saved: float


def savings(completed_seconds: Sequence[float], pruned_seconds: Sequence[float]) -> Savings:
    finite = sorted(s for s in completed_seconds if math.isfinite(s) and s >= 0)
    typical = finite[len(finite) // 2] if finite else 0.0
    saved = sum(max(typical - s, 0.0) for s in pruned_seconds)
    return Savings(len(pruned_seconds), len(finite), sum(finite) + sum(pruned_seconds), saved)
