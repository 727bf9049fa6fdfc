"""What a sweep says when it is done (or asked): one row per trial, the best trial, what
pruning saved, and the search's advice. Pure: it reads :class:`SweepTrial` records, which
the study's trials carry as user attributes (so every process of a sweep, and any reader
of its storage, tells the same story)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from monitor.sweeps.advice import Advice, Trial, advise, ranked
from monitor.sweeps.pruning import Savings, savings
from monitor.sweeps.space import Dimension
from monitor.tables import format_table

#: Trial states as the report and the advice name them.
STATES = ("complete", "pruned", "diverged", "failed", "running")


@dataclass(frozen=True)
class SweepTrial:
    number: int
    params: Mapping[str, Any]
    state: str  # one of STATES
    value: float | None = None
    seconds: float | None = None
    run: str | None = None
    reason: str = ""  # why it was pruned or failed
    pruned_by: str | None = None
    epochs: float | None = None
    noise: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def for_advice(self) -> Trial:
        return Trial(self.number, self.params, self.value, self.state, self.epochs, self.noise)


@dataclass(frozen=True)
class SweepReport:
    trials: tuple[SweepTrial, ...]
    best: SweepTrial | None
    saved: Savings
    advice: tuple[Advice, ...]


def report(trials: Sequence[SweepTrial], space: Sequence[Dimension], direction: str = "minimize",
           sampler: str = "random") -> SweepReport:
    order = ranked([t.for_advice() for t in trials], direction)
    best = next((t for t in trials if order and t.number == order[0].number), None)
    done = [t.seconds for t in trials if t.state == "complete" and t.seconds is not None]
    pruned = [t.seconds for t in trials if t.state == "pruned" and t.seconds is not None]
    advice = advise([t.for_advice() for t in trials if t.state != "running"], space, direction=direction,
                    sampler=sampler)
    return SweepReport(tuple(sorted(trials, key=lambda t: t.number)), best, savings(done, pruned), tuple(advice))


def lines(rep: SweepReport, space: Sequence[Dimension], objective: str = "val_loss") -> list[str]:
    """The report as a person reads it in a terminal."""
    names = [d.name for d in space]
    rows = [[str(t.number), *(value_text(t.params.get(n)) for n in names), t.state,
             value_text(t.value), "-" if t.seconds is None else f"{t.seconds:.1f}", t.run or "-", _short(t.reason)]
            for t in rep.trials]
    out = [format_table(["TRIAL", *(n.upper() for n in names), "STATE", objective.upper(), "SECONDS", "RUN",
                         "REASON"], rows)] if rows else ["no trials yet"]
    counts = {s: sum(t.state == s for t in rep.trials) for s in STATES}
    out.append(", ".join(f"{k} {counts[k]}" for k in STATES if counts[k]) + f" of {len(rep.trials)} trials")
    if rep.best is not None:
        shown = ", ".join(f"{n}={value_text(rep.best.params.get(n))}" for n in names)
        out.append(f"best: trial {rep.best.number} ({shown}): {objective} {rep.best.value:.4g}"
                   + (f", run {rep.best.run}" if rep.best.run else ""))
    if rep.saved.pruned:
        saved = rep.saved
        whole = saved.seconds_run + saved.seconds_saved
        out.append(f"pruning ended {saved.pruned} trial{'s' if saved.pruned > 1 else ''} early and saved about "
                   f"{_seconds(saved.seconds_saved)} trial-seconds of {_seconds(whole)} ({_share(saved)}) of the "
                   "trials' training time, against the completed trials' median")
    for a in rep.advice:
        out.append(f"advice ({a.kind}): {a.message}")
    return out


def _seconds(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _share(saved: Savings) -> str:
    whole = saved.seconds_run + saved.seconds_saved
    return f"{100 * saved.seconds_saved / whole:.0f} %" if whole > 0 else "0 %"


def value_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
