"""Divergence: the loss (or the network) stops being numbers, or explodes.

Heuristics (CS231n, "babysitting the learning process"): a loss that turns NaN or Inf
means training has diverged and will not come back, almost always because the learning
rate is too high (or a numerically unsafe op: log of 0, division by a tiny norm); a loss
that climbs orders of magnitude above where it has been is the same failure caught before
it overflows. Non-finite activations or gradients are named by the first layer where they
appear in the order the hooks saw them (forward order for activations, backward order for
the gradients flowing back), which is where to look first.

Rules, each flagged once per run (critical):

* ``loss`` (or another watched scalar) is NaN or ±Inf;
* the loss stays above ``climb_factor`` times its running minimum, and above its first
  value, for ``patience`` logged values in a row (a single spike is not divergence; the
  first-value condition keeps a loss that fell to 1e-5 from flagging on noise), or jumps
  above ``burst_factor`` times it even once (a loss of 1e20 that a BatchNorm network then
  pulls back to chance level has still thrown its weights away);
* a layer's activations or output gradients hold NaN or Inf (each signal once).

Sample flag: ``divergence (critical) at step 812: loss is NaN (it was 2.31 at step 800)``
with advice to lower the learning rate by 10x, add gradient clipping, check for log(0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from monitor.events import Event, Flag, Kind, Severity, Signal

KIND = "divergence"
#: How far above its running minimum the loss must be to count as exploding (two orders of magnitude).
CLIMB_FACTOR = 100.0
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
    scalars: tuple[str, ...] = ("loss",)
    _first: float | None = None
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

    def _scalars(self, event: Event) -> list[Flag]:
        flags = []
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
        if self._first is None:
            self._first = loss
        if loss < self._best:
            self._best, self._best_step = loss, step
        above_first = self._best > 0 and loss > self._first
        self._above = self._above + 1 if above_first and loss > self.climb_factor * self._best else 0
        burst = above_first and loss > self.burst_factor * self._best
        if self._above < self.patience and not burst:
            return []
        return self._once("climb", Flag(
            KIND, Severity.CRITICAL,
            f"the loss is exploding: {loss:.4g} at step {step}, {loss / self._best:.3g}x its minimum "
            f"{self._best:.4g} (step {self._best_step})" + ("" if burst else f" for {self._above} logged values"),
            ADVICE,
            evidence={"loss": loss, "step": step, "min_loss": self._best, "min_step": self._best_step,
                      "factor": loss / self._best, "climb_factor": self.climb_factor, "patience": self.patience,
                      "burst_factor": self.burst_factor}))

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
