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
    scalars: tuple[str, ...] = ("loss",)
    _recent: deque = field(default_factory=deque)  # the last ``smooth`` finite losses
    _start: list = field(default_factory=list)  # the first ``smooth`` finite losses
    _first: float | None = None  # their median
    _last: dict = field(default_factory=dict)  # scalar -> (step, value) last logged
    _best: float = math.inf
    _best_step: int | None = None
    _last_finite: tuple[int, float] | None = None
    _above: int = 0
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
            return []
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

    def _layers(self, event: Event) -> list[Flag]:
        flags = []
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
