"""What a finished (or running) search says about itself: the checks of the practice
notes (../shared/background, CS231n "hyperparameter optimization") that no search tool
makes for its user.

* **Border** (:data:`BORDER_SHARE`): the best value within the outer 10 % of its range,
  on the dimension's scale, may have better values beyond: extend the range that way
  (by :data:`EXTEND_SHARE` of its width; a decade or more on a log scale). "Be careful
  with best values on the border."
* **Grid** (:data:`GRID_DISTINCT_SHARE`): a dimension with few distinct values among many
  trials was searched on a grid; random search tries a new value of every dimension in
  every trial, so the one dimension that matters gets as many values as there are trials
  (Bergstra & Bengio 2012).
* **Next range** (coarse to fine): the range the top trials (:data:`TOP_SHARE`, at least
  :data:`MIN_TOP`) span, widened by :data:`WIDEN_SHARE` of their span each side (of the
  original range when they agree on one value), printed as ``--space`` options to paste.
* **First stage too long** (:data:`COARSE_DECADES`, :data:`FIRST_STAGE_EPOCHS`): a coarse
  search (a log dimension over 3 decades or more) whose trials ran more than one epoch:
  "start with one epoch or less" and add epochs for the finer stages.
* **Validation too small** (:data:`NOISE_FACTOR`): the top trials' values lie within twice
  the standard error that the validation set's size leaves in each (the spread of the
  evaluation's batch losses over the square root of their number), so the validation set
  cannot rank them.

Pruned, failed and diverged trials are left out (their values are not the configuration's
worth). Pure functions over plain data.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

from monitor.sweeps.space import Dimension

#: Share of a range, at each end, counted as its border.
BORDER_SHARE = 0.1
#: How far past the border the range is extended, as a share of its width.
EXTEND_SHARE = 0.5
#: A dimension with at most this share of distinct values per trial was searched on a grid.
GRID_DISTINCT_SHARE = 0.5
#: Fewest trials before the grid check speaks (a handful of trials repeat values by chance).
GRID_MIN_TRIALS = 6
#: The top trials that define the next range: this share of the usable ones...
TOP_SHARE = 0.25
#: ...and at least this many.
MIN_TOP = 3
#: The next range is the top trials' span widened by this share of it on each side.
WIDEN_SHARE = 0.25
#: A log dimension spanning this many decades or more makes a coarse stage.
COARSE_DECADES = 3.0
#: Epochs per trial a coarse stage needs at most.
FIRST_STAGE_EPOCHS = 1.0
#: The top trials are told apart only when they spread over this many times the metric's noise.
NOISE_FACTOR = 2.0


@dataclass(frozen=True)
class Trial:
    """One trial as the advice reads it. ``value``: its objective (the best validation
    metric); ``state``: complete, pruned, failed or diverged; ``epochs``: how long it ran;
    ``noise``: the standard error of its value from the validation set's size."""

    number: int
    params: Mapping[str, Any]
    value: float | None
    state: str = "complete"
    epochs: float | None = None
    noise: float | None = None


@dataclass(frozen=True)
class Advice:
    kind: str  # border, grid, next_range, first_stage, validation_noise
    message: str
    dimension: str | None = None
    space: tuple[str, ...] = ()  # --space options to paste
    evidence: Mapping[str, Any] = field(default_factory=dict)


def usable(trials: Sequence[Trial]) -> list[Trial]:
    return [t for t in trials if t.state == "complete" and t.value is not None and math.isfinite(t.value)]


def ranked(trials: Sequence[Trial], direction: str = "minimize") -> list[Trial]:
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction: expected 'minimize' or 'maximize', got {direction!r}")
    return sorted(usable(trials), key=lambda t: t.value, reverse=direction == "maximize")


def advise(trials: Sequence[Trial], space: Sequence[Dimension], *, direction: str = "minimize",
           sampler: str = "random") -> list[Advice]:
    """Every piece of advice the search gives, in the order a person acts on it."""
    order = ranked(trials, direction)
    if not order:
        return []
    best = order[0]
    top = order[:max(MIN_TOP, math.ceil(TOP_SHARE * len(order)))]
    numeric = [d for d in space if d.numeric and d.name in best.params]
    out = [a for d in numeric if (a := border(d, best)) is not None]
    out += grid(trials, space, sampler)
    ranges = [next_range(d, top, best) for d in numeric]
    if len(order) >= MIN_TOP:
        out.append(Advice("next_range", "the next, finer stage: around the best trials "
                          f"({len(top)} of {len(order)}): " + ", ".join(r.spec() for r in ranges),
                          space=tuple(r.spec() for r in ranges),
                          evidence={"top": [t.number for t in top]}))
    out += first_stage(trials, space)
    out += validation_noise(top)
    return out


def border(d: Dimension, best: Trial) -> Advice | None:
    value = float(best.params[d.name])
    where = d.position(value)
    if BORDER_SHARE < where < 1 - BORDER_SHARE:
        return None
    low_side = where <= BORDER_SHARE
    extended = _extend(d, low_side)
    return Advice(
        "border", f"the best {d.name} ({value:.3g}, trial {best.number}) is on the {'lower' if low_side else 'upper'} "
        f"border of {d.low:g}..{d.high:g}: better values may lie {'below' if low_side else 'above'} it; "
        f"extend the range {'downwards' if low_side else 'upwards'}: --space '{extended.spec()}'",
        dimension=d.name, space=(extended.spec(),),
        evidence={"value": value, "position": where, "low": d.low, "high": d.high, "border_share": BORDER_SHARE})


def _extend(d: Dimension, low_side: bool) -> Dimension:
    if d.log:
        width = math.log10(d.high / d.low)
        step = max(1.0, EXTEND_SHARE * width)  # a decade at least
        return replace(d, low=d.low / 10 ** step) if low_side else replace(d, high=d.high * 10 ** step)
    step = EXTEND_SHARE * (d.high - d.low)
    low = d.low - step
    if low_side and d.low >= 0 > low:  # a range of sizes or rates that starts at 0 or above stays there
        low = 0.0 if d.low > 0 else low
    return replace(d, low=low) if low_side else replace(d, high=d.high + step)


def grid(trials: Sequence[Trial], space: Sequence[Dimension], sampler: str) -> list[Advice]:
    ran = [t for t in trials if t.state != "failed"]
    if sampler != "grid" and len(ran) < GRID_MIN_TRIALS:
        return []
    few = {}
    for d in space:
        if not d.numeric:
            continue
        distinct = len({t.params[d.name] for t in ran if d.name in t.params})
        if distinct <= GRID_DISTINCT_SHARE * len(ran):
            few[d.name] = distinct
    if sampler != "grid" and not few:
        return []
    shown = ", ".join(f"{n}: {k}" for n, k in few.items()) or "every dimension"
    return [Advice("grid", f"a grid: {len(ran)} trials tried few distinct values ({shown}); random search "
                   f"would have tried {len(ran)} values of each, and the dimension that matters most gets "
                   "them all (Bergstra & Bengio 2012): prefer --sampler random", evidence={"distinct": few,
                                                                                        "trials": len(ran)})]


def next_range(d: Dimension, top: Sequence[Trial], best: Trial) -> Dimension:
    to, back = (math.log10, lambda v: 10 ** v) if d.log else (float, float)
    values = [to(float(t.params[d.name])) for t in top if d.name in t.params]
    low, high = min(values), max(values)
    span = high - low or (to(d.high) - to(d.low)) * WIDEN_SHARE
    low, high = back(low - WIDEN_SHARE * span), back(high + WIDEN_SHARE * span)
    if not d.log and d.low >= 0:
        low = max(low, 0.0)
    if d.distribution in ("int", "logint"):
        low, high = math.floor(low), max(math.ceil(high), math.floor(low) + 1)
    return replace(d, low=low, high=high)


def first_stage(trials: Sequence[Trial], space: Sequence[Dimension]) -> list[Advice]:
    coarse = [d for d in space if d.log and math.log10(d.high / d.low) >= COARSE_DECADES]
    epochs = [t.epochs for t in trials if t.epochs is not None and t.state != "failed"]
    if not coarse or not epochs or statistics.median(epochs) <= FIRST_STAGE_EPOCHS:
        return []
    median = statistics.median(epochs)
    return [Advice("first_stage", f"a coarse stage ({', '.join(d.name for d in coarse)} over "
                   f"{max(math.log10(d.high / d.low) for d in coarse):.0f} decades) ran {median:g} epochs per trial: "
                   "start with one epoch or less, which ranks the far-off settings as well, and add epochs "
                   f"for the finer stages (about {median:g}x the trials for the same compute)",
                   evidence={"median_epochs": median, "coarse": [d.name for d in coarse]})]


def validation_noise(top: Sequence[Trial]) -> list[Advice]:
    noises = [t.noise for t in top if t.noise is not None and math.isfinite(t.noise)]
    if len(top) < 2 or not noises:
        return []
    spread = max(t.value for t in top) - min(t.value for t in top)
    noise = statistics.median(noises)
    if spread > NOISE_FACTOR * noise:
        return []
    return [Advice("validation_noise", f"the best {len(top)} trials lie within {spread:.3g} of each other, inside "
                   f"{NOISE_FACTOR:g}x the standard error the validation set's size leaves in each value "
                   f"({noise:.3g}): the set is too small to rank them; use a larger one (the notes: one validation "
                   "set of respectable size)",
                   evidence={"spread": spread, "noise": noise, "top": [t.number for t in top]})]
