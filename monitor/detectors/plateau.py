"""Plateau: the training loss makes no real progress while it is still far from its floor.

Heuristic (CS231n, "babysitting the learning process": watch the loss curve first): a loss
that stays flat from the start means the learning rate is far too low (or the labels or
the loss are wrong: a classifier stuck at ln(classes) predicts chance). Progress is judged
against the loss's own scale and its own noise, over a window that grows with the run:

* the window is the last half of the logged values (at least ``min_window``, 50; at most
  ``max_window``): a run that learns cuts its loss by far more than a few per cent over
  the second half of its life, however long it is;
* the improvement is the median of the window's earlier half minus the median of its
  later half (medians: one odd batch does not move them);
* the batch-to-batch noise ``sigma`` is read from the window's successive differences
  (their median absolute value / 0.6745 / sqrt 2: a robust std that a trend does not
  inflate), which gives the standard error of that improvement;
* progress is missing when the improvement is not significant (below ``z`` standard
  errors: the loss does not move beyond its own noise) although the window is long enough
  to see an improvement of ``min_delta`` (5 %) of the loss's distance from ``floor`` (so a
  very noisy loss is not called flat before the window can tell), or when, at the rate the
  window shows, halving that distance would take more than ``horizon`` (100) times the
  logged values so far (it creeps: a learning rate far too low). Both read the
  run's own time scale, so a slow start that is plainly under way (the README example's
  SGD run cuts 3 % in its first 50 steps, well beyond its noise, and halves it in a few
  hundred) is not a plateau, while a rate 1000x too low (a change of 0.01 % per window)
  is, within about ``min_window`` steps.

Not a plateau: a loss below ``min_level`` (80 %) of the way from its floor to its first
value (it learned: a flat stretch after a fifth of the loss is gone is convergence or the
task's floor, as in a long healthy run whose tail is flat; a stuck run sits at its start), a loss above its
start or climbing over the window, beyond its noise (``z`` standard errors of the medians
compared; and in any case above ``climbed``, 1.5x, its start: a loss going the wrong way
is the divergence rule's business, with the opposite advice), and a learning rate still
rising over the window (a warm-up: progress comes later). A loss flat at its start but
above it within the noise gets the advice to lower the learning rate, never to raise it.
Checked every tenth of a window; flagged once per run (warning) on two checks in a row.
The window counts logged values, not sampled steps, so the sampling interval plays no
part.

Sample flag: ``plateau (warning) at step 54: the training loss is not making progress: it
has not moved beyond its noise over the last 50 logged steps (median 2.301 in steps 30-54
vs 2.33 before; noise 0.089; 100% of the way from 0 to its first value 2.301)`` with advice on the learning rate and
the labels.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from monitor.detectors.common import is_count, require
from monitor.events import Event, Flag, Kind, Severity

KIND = "plateau"
#: Shortest window judged, in logged values.
MIN_WINDOW = 50
#: Longest window judged (memory and time stay bounded on long runs), in logged values.
MAX_WINDOW = 4000
#: Least relative improvement (of the later median's distance from the floor) a window must
#: be able to tell from noise before a loss that does not move in it is called flat.
MIN_DELTA = 0.05
#: Most multiples of the logged values so far that halving the loss may take, at the
#: window's rate, for the run to count as progressing.
HORIZON = 100.0
#: Standard errors the improvement must exceed to be progress at all (one-sided 97.7 %).
Z = 2.0
#: The loss's lowest possible value (0 for cross-entropy, MSE and most losses).
FLOOR = 0.0
#: Below this fraction of the way from the floor to its first value, a flat loss has learned (see the module).
MIN_LEVEL = 0.8
#: Above this multiple of its first value (from the floor), the loss has climbed: not a plateau.
CLIMBED = 1.5
#: Logged values whose median is the loss's first value.
FIRST = 10
#: Checks per window, and flat checks in a row that flag.
CHECKS = 10
STALLED = 2

ADVICE = ("Check the learning rate first: a loss that does not move is learning too slowly (raise the rate, "
          "about 10x), one that bounces around a level is stepping too far (lower it); search it on a log "
          "scale (e.g. 1e-5 to 1e-1) with short runs. Check the loss and the labels: a classifier stuck at "
          "ln(classes) predicts chance (shuffled or mismatched labels, a loss that does not fit the targets). "
          "Dead ReLUs or vanishing gradients (flagged on their own) also stop a loss.")
ADVICE_ABOVE = ("The loss sits above where it started: the steps are too large, not too small. Lower the learning "
                "rate (about 10x) or add a warm-up and gradient clipping; check the loss and the labels "
                "(a loss that does not fit the targets does not fall).")


@dataclass
class Plateau:
    """``update(event) -> list[Flag]`` over the training loss (and ``lr`` when logged); see the module."""

    min_window: int = MIN_WINDOW
    max_window: int = MAX_WINDOW
    min_delta: float = MIN_DELTA
    horizon: float = HORIZON
    z: float = Z
    floor: float = FLOOR
    min_level: float = MIN_LEVEL
    climbed: float = CLIMBED
    scalar: str = "loss"
    _values: deque = field(init=False)  # (step, loss, lr) of the last max_window finite losses
    _start: list = field(default_factory=list)
    _logged: int = 0
    _due: int = 0
    _stalled: int = 0
    _lr: float | None = None
    _fired: bool = False

    def __post_init__(self):
        require("min_window", self.min_window, lambda v: is_count(v) and v >= 4, "an integer >= 4 (logged values)")
        require("max_window", self.max_window, lambda v: is_count(v) and v >= self.min_window,
                f"an integer >= min_window ({self.min_window})")
        require("min_delta", self.min_delta, lambda v: 0 < v < 1, "a fraction in (0, 1)")
        require("horizon", self.horizon, lambda v: 1 <= v < math.inf, "a finite multiple >= 1 of the steps so far")
        require("z", self.z, lambda v: 0 <= v < math.inf, "a finite number of standard errors >= 0")
        require("floor", self.floor, math.isfinite, "a finite number")
        require("min_level", self.min_level, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
        require("climbed", self.climbed, lambda v: 1 <= v < math.inf, "a finite factor >= 1")
        require("scalar", self.scalar, lambda v: isinstance(v, str) and v, "the name of a logged scalar")
        self._values = deque(maxlen=self.max_window)
        self._due = self.min_window

    def update(self, event: Event) -> list[Flag]:
        if self._fired or event.kind is not Kind.SCALARS:
            return []
        values = event.data.values
        lr = values.get("lr")
        if lr is not None and math.isfinite(lr):
            self._lr = lr
        loss = values.get(self.scalar)
        if loss is None or not math.isfinite(loss):
            return []
        self._values.append((event.step, loss, self._lr))
        if len(self._start) < FIRST:
            self._start.append(loss)
        self._logged += 1
        if self._logged < self._due:
            return []
        window = self._window()
        self._due = self._logged + max(1, window // CHECKS)
        verdict = self._judge(window)
        self._stalled = self._stalled + 1 if verdict is not None else 0
        if self._stalled < STALLED:
            return []
        self._fired = True
        return [self._flag(event.step, window, verdict)]

    def _window(self) -> int:
        return min(max(self.min_window, self._logged // 2), self.max_window, len(self._values))

    def _judge(self, window: int) -> dict | None:
        """The numbers of a window without progress, or None when it progressed (or is not judged)."""
        recent = list(self._values)[-window:]
        half = window // 2
        earlier, later = [v for _, v, _ in recent[:-half]], [v for _, v, _ in recent[-half:]]
        first = statistics.median(self._start) - self.floor
        now = statistics.median(later)
        if not first > 0:
            return None
        level = (now - self.floor) / first
        lrs = [lr for *_, lr in recent if lr is not None]
        warming = len(lrs) > 1 and lrs[-1] > lrs[0]
        if level < self.min_level or level > self.climbed or warming:
            return None
        improvement = statistics.median(earlier) - now
        diffs = [abs(b - a) for (_, a, _), (_, b, _) in zip(recent, recent[1:])]
        sigma = statistics.median(diffs) / 0.6745 / math.sqrt(2)
        # the standard error of a median is about 1.2533 sigma / sqrt(n); two halves of ``half``
        error = 1.2533 * sigma * math.sqrt(1 / half + 1 / len(earlier))
        # above its start or climbing, beyond the noise: a loss going the wrong way is the
        # divergence story (with the opposite advice), not a loss that cannot get going
        above_start = (now - first - self.floor) >= self.z * 1.2533 * sigma * math.sqrt(1 / half + 1 / len(self._start))
        if improvement <= -self.z * error or above_start:
            return None
        halving = 0.5 * (now - self.floor) * half / improvement if improvement > 0 else math.inf
        significant = improvement >= self.z * error
        flat = not significant and self.z * error < self.min_delta * (now - self.floor)  # and the window can tell
        if not flat and not (significant and halving > self.horizon * self._logged):
            return None
        return {"improvement": improvement, "halving": halving, "significant": significant, "error": error,
                "noise": sigma, "earlier": statistics.median(earlier),
                "later": now, "level": level, "first": first + self.floor, "since": recent[-half][0],
                "from": recent[0][0]}

    def _flag(self, step: int, window: int, v: dict) -> Flag:
        above = v["level"] > 1
        how = (f"at its rate over the last {window} logged steps, halving it would take {v['halving']:.3g} more, "
               f"over {self.horizon:g} times the {self._logged} so far" if v["significant"] else
               f"it has not moved beyond its noise over the last {window} logged steps")
        return Flag(
            KIND, Severity.WARNING,
            f"the training {self.scalar} is not making progress: {how} (median {v['later']:.4g} in steps "
            f"{v['since']}-{step} vs {v['earlier']:.4g} before; noise {v['noise']:.2g}; {v['level']:.0%} of the "
            f"way from {self.floor:g} to its first value {v['first']:.4g})", ADVICE_ABOVE if above else ADVICE,
            evidence={"scalar": self.scalar, "step": step, "window": window, "from_step": v["from"],
                      "later_since": v["since"], "earlier_median": v["earlier"], "later_median": v["later"],
                      "improvement": v["improvement"], "standard_error": v["error"], "noise": v["noise"],
                      "first": v["first"], "level": v["level"], "above_start": above,
                      "halving_steps": v["halving"], "min_delta": self.min_delta,
                      "logged": self._logged, "horizon": self.horizon,
                      "z": self.z, "floor": self.floor, "min_level": self.min_level, "climbed": self.climbed})
