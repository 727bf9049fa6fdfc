"""Plateau: the smoothed training loss stops improving while it is still far from its floor.

Heuristic (CS231n, "babysitting the learning process": watch the loss curve first): a loss
that stays flat from the start means the learning rate is far too low (or the labels or
the loss are wrong: a classifier stuck at ln(classes) predicts chance); one that bounces
around a level means it is too high; one that levelled off after progress wants a
learning-rate schedule. Per-batch losses are noisy, so the rule reads an exponential
moving average (EMA) and counts, like Keras' ``ReduceLROnPlateau``, the logged values
since the EMA last improved on its best by a relative ``min_delta``.

A loss that has converged near its floor (0 for cross-entropy and MSE) keeps moving by
large *relative* amounts on noise alone and is not a plateau: the rule only applies while
the EMA is still above ``min_level`` of the way from the floor to its first value (a
healthy demo CNN ends at 2e-4, 0.01 % of its start, and stays silent; the demo at
``lr=1e-6`` sits at ln 10 and is flagged).

Rule, flagged once per run (warning): the EMA of ``loss`` has not gone below
``best - min_delta * (best - floor)`` for ``window`` logged values, and it is above
``floor + min_level * (first - floor)``.

Sample flag: ``plateau (warning) at step 212: the training loss has not improved by 1 %
in 200 logged steps (smoothed 2.38, best 2.37 at step 12, 100 % of its first value 2.34)``
with advice on the learning rate, the labels and the schedule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from monitor.detectors.common import SPAN, SmoothedLoss, is_count, require
from monitor.events import Event, Flag, Kind, Severity

KIND = "plateau"
#: Logged values without a relative improvement of the EMA before a plateau is flagged.
WINDOW = 200
#: Relative improvement that counts (of the best EMA's distance from the floor): 1 %.
MIN_DELTA = 0.01
#: The loss's lowest possible value (0 for cross-entropy, MSE and most losses).
FLOOR = 0.0
#: Below this fraction of the way from the floor to its first value, a flat loss has converged.
MIN_LEVEL = 0.1

ADVICE = ("Check the learning rate first: a loss that creeps is learning too slowly (raise the rate, "
          "about 10x), one that bounces around a level is stepping too far (lower it); search it on a log "
          "scale (e.g. 1e-5 to 1e-1) with short runs. Check the loss and the labels: a classifier stuck at "
          "ln(classes) predicts chance (shuffled or mismatched labels, a loss that does not fit the targets). "
          "A loss that levelled off after progress wants a schedule (step decay, cosine, reduce on plateau).")


@dataclass
class Plateau:
    """``update(event) -> list[Flag]`` over the training loss; see the module."""

    span: int = SPAN
    window: int = WINDOW
    min_delta: float = MIN_DELTA
    floor: float = FLOOR
    min_level: float = MIN_LEVEL
    scalar: str = "loss"
    _ema: SmoothedLoss = field(init=False)
    _best: float = math.inf
    _best_step: int | None = None
    _wait: int = 0
    _fired: bool = False

    def __post_init__(self):
        require("span", self.span, is_count, "an integer >= 1 (logged values)")
        require("window", self.window, is_count, "an integer >= 1 (logged values)")
        require("min_delta", self.min_delta, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
        require("floor", self.floor, math.isfinite, "a finite number")
        require("min_level", self.min_level, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
        require("scalar", self.scalar, lambda v: isinstance(v, str) and v, "the name of a logged scalar")
        self._ema = SmoothedLoss(self.span)

    def update(self, event: Event) -> list[Flag]:
        if self._fired or event.kind is not Kind.SCALARS:
            return []
        if not self._ema.add(event.data.values.get(self.scalar)):
            return []
        ema = self._ema.value
        if self._best_step is None or ema < self._best - self.min_delta * abs(self._best - self.floor):
            self._best, self._best_step, self._wait = ema, event.step, 0
            return []
        self._wait += 1
        level = self._ema.level(self.floor)
        if self._wait < self.window or level is None or level < self.min_level:
            return []
        self._fired = True
        first = self._ema.first
        return [Flag(
            KIND, Severity.WARNING,
            f"the training {self.scalar} has not improved by {self.min_delta:.0%} in {self._wait} logged steps "
            f"(smoothed {ema:.4g} at step {event.step}, best {self._best:.4g} at step {self._best_step}, "
            f"{level:.0%} of the way from {self.floor:g} to its first value {first:.4g})", ADVICE,
            evidence={"scalar": self.scalar, "step": event.step, "smoothed": ema, "best": self._best,
                      "best_step": self._best_step, "first": first, "level": level, "logged": self._wait,
                      "window": self.window, "min_delta": self.min_delta, "floor": self.floor,
                      "min_level": self.min_level})]
