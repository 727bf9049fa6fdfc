"""Divergence: the loss (or the network) stops being numbers, or explodes.

Heuristics (CS231n, "babysitting the learning process"): a loss that turns NaN or Inf
means training has diverged and will not come back, almost always because the learning
rate is too high (or a numerically unsafe op: log of 0, division by a tiny norm); a loss
that climbs orders of magnitude above where it has been is the same failure caught before
it overflows. Non-finite activations or gradients are named by the first layer where they
appear in the order the hooks saw them (forward order for activations, backward order for
the gradients flowing back), which is where to look first.

A learning rate too high makes the loss grow geometrically (each step multiplies the
error: the quadratic model of LeCun et al. 1998, "Efficient BackProp", diverges for a rate
above twice the optimal one), so the climb is read in log space, where it is a straight
line whatever the loss's units: the loss is smoothed by the running median of its last
``smooth`` logged values (a median ignores single spikes, which a mean would follow), and
compared with the lowest smoothed value so far. A loss that has tripled from its floor
and stands above where it started is not noise (a noisy loss near 0 moves by large
factors, but below its start), nor a schedule (none raises the loss above its start),
and it is caught at 3-5x, long before 10x.

Rules, each flagged once per run (critical):

* ``loss`` (or another watched scalar) is NaN or ±Inf;
* the smoothed loss stays above ``climb_factor`` (3) times its running minimum and above
  the smoothed first losses for ``patience`` (10) logged values in a row (a loss growing
  geometrically, or one that climbed far above its start and stays there), or a single
  loss jumps above ``burst_factor`` times that minimum (a loss of 1e20 that a BatchNorm
  network then pulls back to chance level has still thrown its weights away);
* a runaway caught before the loss explodes: the weights change by more than
  ``fast_ratio`` (0.1) of their norm per step (the median over the weight tensors, on
  ``fast_samples`` (3) sampled steps in a row; CS231n's healthy ratio is 1e-3, the zoo's
  healthy runs stay under 0.06), that relative step has grown ``fast_growth`` (2) times
  over those samples, and the smoothed loss stands above the smoothed first losses, the
  loss of the untrained model. In the quadratic model above each step multiplies the
  error by |1 - lr * curvature|, more than 1 past twice the optimal rate, and the steps,
  which follow the gradient, grow with it: doubling over two steps is a factor 1.41 a
  step, a rate 2.4 times the curvature's inverse, past the edge of stability at 2. Steps
  that are large but hold or shrink are a rate too high that the weights' growth absorbs
  (Adam's steps keep their size while the weights grow; the update_ratio rule speaks for
  those). The zoo's tiny transformer under SGD at 30x its learning rate is caught here
  at 1.6x its minimum loss, four steps before it jumps to 10x and ten before NaN;
* a layer's activations or output gradients hold NaN or Inf (each signal once);
* when the run is stopped because its early-stopping metric is not finite
  (:meth:`Divergence.explain_stop`), that metric's NaN or Inf, unless a divergence flag
  already says why.

Sample flag: ``divergence (critical) at step 812: loss is NaN (it was 2.31 at step 800)``
with advice to lower the learning rate by 10x, add gradient clipping, check for log(0).
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from monitor.detectors.update_ratio import HIGH, is_weight
from monitor.events import Event, Flag, Kind, Severity, Signal

KIND = "divergence"
#: How far above its running minimum the smoothed loss must be to count as climbing: a
#: loss that tripled from its floor and stands above its start is diverging (see the module).
CLIMB_FACTOR = 3.0
#: Logged losses in the running median (odd: a median of real values).
SMOOTH = 5
#: Logged values in a row that must stay above the bar before the climb is flagged.
PATIENCE = 10
#: A single loss this many times its running minimum is flagged at once (four orders of magnitude).
BURST_FACTOR = 1e4
#: Median update/weight ratio of the weight tensors that counts as a step far too large
#: (update_ratio's HIGH: two orders of magnitude over CS231n's 1e-3).
FAST_RATIO = HIGH
#: Sampled steps in a row with the ratio over ``fast_ratio`` before the loss is compared
#: with its start (one large step is how training often begins).
FAST_SAMPLES = 3
#: How many times the ratio must have grown over those samples: a step that doubles in two
#: steps is an error multiplied by 1.41 a step (see the module).
FAST_GROWTH = 2.0

ADVICE = ("Lower the learning rate (try 10x lower); add gradient clipping (torch.nn.utils.clip_grad_norm_); "
          "look for numerically unsafe operations (log of 0, division by a small number, exp of a large one). "
          "A run that diverged does not recover: restart it from a checkpoint.")


@dataclass
class Divergence:
    """``update(event) -> list[Flag]`` over scalars and layer statistics; see the module."""

    climb_factor: float = CLIMB_FACTOR
    patience: int = PATIENCE
    burst_factor: float = BURST_FACTOR
    smooth: int = SMOOTH
    fast_ratio: float = FAST_RATIO
    fast_samples: int = FAST_SAMPLES
    fast_growth: float = FAST_GROWTH
    scalars: tuple[str, ...] = ("loss",)
    _recent: deque = field(default_factory=deque)  # the last ``smooth`` finite losses
    _start: list = field(default_factory=list)  # the first ``smooth`` finite losses
    _first: float | None = None  # their median
    _last: dict = field(default_factory=dict)  # scalar -> (step, value) last logged
    _best: float = math.inf
    _best_step: int | None = None
    _last_finite: tuple[int, float] | None = None
    _above: int = 0
    _fast: deque = field(default_factory=deque)  # the last fast_samples medians of a streak over fast_ratio
    _fast_since: int | None = None  # the streak's first sampled step
    _fast_count: int = 0  # its samples
    _fired: set[str] = field(default_factory=set)

    def __post_init__(self):
        if not self.climb_factor > 1:
            raise ValueError(f"climb_factor: expected a factor above 1, got {self.climb_factor!r}")
        if not self.burst_factor >= self.climb_factor:
            raise ValueError(f"burst_factor: expected at least climb_factor ({self.climb_factor}), "
                             f"got {self.burst_factor!r}")
        if self.patience < 1:
            raise ValueError(f"patience: expected at least 1 logged value, got {self.patience!r}")
        if not isinstance(self.smooth, int) or self.smooth < 1:
            raise ValueError(f"smooth: expected at least 1 logged value, got {self.smooth!r}")
        if not 0 < self.fast_ratio < math.inf:
            raise ValueError(f"fast_ratio: expected a finite update/weight ratio above 0, got {self.fast_ratio!r}")
        if not isinstance(self.fast_samples, int) or self.fast_samples < 2:
            raise ValueError(f"fast_samples: expected at least 2 sampled steps (a growth), got {self.fast_samples!r}")
        if not 1 <= self.fast_growth < math.inf:
            raise ValueError(f"fast_growth: expected a finite factor of at least 1, got {self.fast_growth!r}")

    def update(self, event: Event) -> list[Flag]:
        if event.kind is Kind.SCALARS:
            return self._scalars(event)
        if event.kind is Kind.LAYER_STATS:
            return self._layers(event)
        return []

    def _once(self, key: str, flag: Flag) -> list[Flag]:
        if key in self._fired:
            return []
        self._fired.add(key)
        return [flag]

    def explain_stop(self, cause: str, metric: str | None, step: int) -> list[Flag]:
        """A stop because the early-stopping metric is NaN or Inf is a divergence: say so,
        unless a divergence flag already did."""
        last = self._last.get(metric) if metric else None
        if cause != "early_stopping" or last is None or math.isfinite(last[1]) or self._fired:
            return []
        return self._once(f"nonfinite:{metric}", Flag(
            KIND, Severity.CRITICAL, f"{metric} is {_word(last[1])} at step {last[0]}: the run was stopped because "
            f"its early-stopping metric is no longer a number", ADVICE,
            evidence={"scalar": metric, "value": last[1], "step": last[0], "stop_cause": cause}))

    def _scalars(self, event: Event) -> list[Flag]:
        flags = []
        for name, value in event.data.values.items():
            self._last[name] = (event.step, value)
        for name in self.scalars:
            value = event.data.values.get(name)
            if value is not None and not math.isfinite(value):
                before = (f" (it was {self._last_finite[1]:.4g} at step {self._last_finite[0]})"
                          if name == "loss" and self._last_finite else "")
                flags += self._once(f"nonfinite:{name}", Flag(
                    KIND, Severity.CRITICAL, f"{name} is {_word(value)} at step {event.step}{before}", ADVICE,
                    evidence={"scalar": name, "value": value, "step": event.step}))
        loss = event.data.values.get("loss")
        if loss is not None and math.isfinite(loss):
            flags += self._climb(event.step, loss)
        return flags

    def _climb(self, step: int, loss: float) -> list[Flag]:
        self._last_finite = (step, loss)
        self._recent.append(loss)
        if len(self._recent) > self.smooth:
            self._recent.popleft()
        smoothed = statistics.median(self._recent)
        if len(self._start) < self.smooth:
            self._start.append(loss)
            self._first = statistics.median(self._start)
        if smoothed < self._best:
            self._best, self._best_step = smoothed, step
        if "climb" in self._fired or not self._best > 0:
            return []
        climbing = smoothed > self._first and smoothed > self.climb_factor * self._best
        self._above = self._above + 1 if climbing else 0
        burst = loss > self._first and loss > self.burst_factor * self._best
        if self._above < self.patience and not burst:
            return self._too_fast(step, loss, smoothed)
        value = loss if burst else smoothed
        what = f"{loss:.4g}" if burst else f"smoothed {smoothed:.4g}"
        return self._once("climb", Flag(
            KIND, Severity.CRITICAL,
            f"the loss is exploding: {what} at step {step}, {value / self._best:.3g}x its minimum "
            f"{self._best:.4g} (step {self._best_step}) and above its start {self._first:.4g}"
            + ("" if burst else f", for {self._above} logged values"),
            ADVICE,
            evidence={"loss": loss, "smoothed": smoothed, "step": step, "min_loss": self._best,
                      "min_step": self._best_step, "first": self._first, "factor": value / self._best,
                      "climb_factor": self.climb_factor, "patience": self.patience,
                      "burst_factor": self.burst_factor, "smooth": self.smooth, "burst": burst}))

    def _too_fast(self, step: int, loss: float, smoothed: float) -> list[Flag]:
        """The precursor rule (see the module): steps far too large, and a loss above its start."""
        recent = list(self._fast)
        if (len(recent) < self.fast_samples or not recent[-1] >= self.fast_growth * recent[0] or self._first is None
                or not smoothed > self._first):
            return []
        ratio = statistics.median(recent)
        return self._once("climb", Flag(
            KIND, Severity.CRITICAL,
            f"the learning rate is far too high and the steps are running away: the weights change by "
            f"{recent[0]:.2g} to {recent[-1]:.2g} of their norm per step (median over the weight tensors, "
            f"{self._fast_count} sampled steps in a row over {self.fast_ratio:g} since step {self._fast_since}; "
            f"healthy is ~0.001) and the smoothed loss {smoothed:.4g} at step {step} is above its start "
            f"{self._first:.4g}: the run is diverging", ADVICE,
            evidence={"loss": loss, "smoothed": smoothed, "step": step, "first": self._first,
                      "min_loss": self._best, "min_step": self._best_step, "factor": smoothed / self._best,
                      "update_ratio": ratio, "fast_since": self._fast_since, "fast_samples": self._fast_count,
                      "fast_ratio": self.fast_ratio, "fast_growth": self.fast_growth, "smooth": self.smooth,
                      "burst": False}))

    def _update_ratio(self, event: Event) -> list[Flag]:
        ratios = [s.update_ratio for s in event.data.summaries
                  if is_weight(s) and s.update_ratio is not None and math.isfinite(s.update_ratio)]
        if not ratios:
            return []
        median = statistics.median(ratios)
        if not median > self.fast_ratio:
            self._fast.clear()
            self._fast_since, self._fast_count = None, 0
            return []
        if self._fast_since is None:
            self._fast_since = event.step
        self._fast_count += 1
        self._fast.append(median)
        if len(self._fast) > self.fast_samples:
            self._fast.popleft()
        if "climb" in self._fired or not self._recent:
            return []
        return self._too_fast(event.step, self._last_finite[1], statistics.median(self._recent))

    def _layers(self, event: Event) -> list[Flag]:
        flags = self._update_ratio(event)
        for signal, what in ((Signal.ACTIVATION, "activations"), (Signal.OUTPUT_GRAD, "gradients")):
            first = next((s for s in event.data.summaries if s.signal is signal and s.nan + s.inf), None)
            if first is None:
                continue
            flags += self._once(f"layers:{signal.value}", Flag(
                KIND, Severity.CRITICAL,
                f"{what} of layer {first.layer} ({first.module}) hold {first.nan} NaN and {first.inf} Inf "
                f"of {first.numel} values at step {event.step}: the first layer where they appear", ADVICE,
                layer=first.layer,
                evidence={"signal": signal.value, "layer": first.layer, "nan": first.nan, "inf": first.inf,
                          "numel": first.numel, "step": event.step}))
        return flags


def _word(value: float) -> str:
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
