"""Pruning by diagnosis: a trial whose run babysit has diagnosed as hopeless is stopped at
once, with the flag as the recorded reason, rather than when a median pruner notices its
validation metric lagging (Optuna's pruners read one number; babysit reads the run).

Hopeless, by default (:data:`PRUNE_ON`): ``divergence`` (a run that diverged does not
recover), a ``dead_relu`` flag that is critical (nearly a whole layer dead: no gradient
will revive it), and a ``plateau`` raised before :data:`EARLY_PLATEAU_EVALUATIONS`
evaluations (a loss flat from the start: the learning rate is far too low, the notes'
first check of a learning rate). Pure: the sweep runner hands flags in and acts on the
answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

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
