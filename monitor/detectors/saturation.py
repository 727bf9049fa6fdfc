"""Saturation: tanh/sigmoid units pinned at the bounds of their range, where they stop learning.

Heuristic (CS231n, activation functions: "don't use sigmoid", "saturated neurons kill
the gradients"; Glorot & Bengio 2010, who watched sigmoid layers saturate from a poor
init): the derivative of tanh or sigmoid is nearly 0 near its bounds, so a unit whose
pre-activation is large passes almost no gradient to the layers below. Large
pre-activations come from inputs that are not normalised, weights initialised too large
(anything much above Xavier's 1/sqrt(fan_in) scale), or updates that grow the weights.
The hooks give each activation summary of a saturating module (Tanh, Sigmoid, Hardtanh,
Softsign, Hardsigmoid) ``sat_frac``: the share of its sampled outputs within a small
margin of a bound (for tanh, |y| above about 0.98).

Rules:

* a layer is flagged when ``sat_frac`` is above ``sat_fraction`` on ``patience`` sampled
  batches in a row (one batch of extreme inputs does not fire);
* warning; critical when it is at least ``critical_fraction`` (almost no gradient passes);
* the model's output nonlinearity is left alone (``skip_output``): the last activation
  summary of the forward pass, when it is a saturating module, is a sigmoid of a binary
  classifier or a tanh of an image generator, whose outputs are meant to reach the bounds
  as it grows confident (a background pixel at -1);
* once per layer per run, except that a warning is followed by a critical flag if the
  layer gets there.

The default ``sat_fraction`` is 0.6: healthy tanh MLPs on our blobs task stay at or below
0.02 with SGD and reach 0.45 in their last hidden layer with Adam at lr 0.01 once they are
confident; weights or inputs scaled up 3-5x put the first layer at 0.6-0.9 from the start.

Sample flag: ``saturation (warning) at step 8 [1]: 89 % of the outputs of layer 1 (Tanh)
were pinned near a bound of its range on 5 sampled batches in a row``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from monitor.detectors.common import LayerSeverity, Streaks, is_count, require, require_bars
from monitor.events import Event, Flag, Kind, Severity, Signal

KIND = "saturation"
#: Share of a layer's outputs near a bound above which it counts as saturated (strictly more).
SAT_FRACTION = 0.6
#: Share from which the flag is critical: (almost) every output is pinned.
CRITICAL_FRACTION = 0.95
#: Sampled batches in a row that must pass the threshold before the layer is flagged.
PATIENCE = 5

ADVICE = ("Saturated tanh/sigmoid units have a local gradient near 0, so the layers below them barely learn. "
          "Usual causes: pre-activations too large, from inputs that are not normalised or weights initialised "
          "too large. Normalise the inputs (zero mean, unit variance); initialise with Xavier (Glorot) init for "
          "tanh/sigmoid layers; add BatchNorm before the nonlinearity (Linear - BatchNorm - tanh); if saturation "
          "grows during training, lower the learning rate; or prefer a ReLU-family activation (CS231n: don't "
          "use sigmoid in hidden layers).")


@dataclass
class Saturation:
    """``update(event) -> list[Flag]`` over activation summaries with ``sat_frac``; see the module."""

    sat_fraction: float = SAT_FRACTION
    critical_fraction: float = CRITICAL_FRACTION
    patience: int = PATIENCE
    skip_output: bool = True
    _streaks: Streaks = field(default_factory=Streaks)  # samples in a row over the bar
    _flagged: LayerSeverity = field(default_factory=LayerSeverity)

    def __post_init__(self):
        require_bars("sat_fraction", self.sat_fraction, self.critical_fraction)
        require("patience", self.patience, is_count, "at least 1 sampled batch")
        if not isinstance(self.skip_output, bool):
            raise ValueError(f"skip_output: expected True or False, got {self.skip_output!r}")

    def update(self, event: Event) -> list[Flag]:
        if event.kind is not Kind.LAYER_STATS:
            return []
        # Activation summaries come in forward order: the last one is the model's output.
        activations = [s for s in event.data.summaries if s.signal is Signal.ACTIVATION]
        if self.skip_output and activations:
            activations.pop()
        flags = []
        for s in activations:
            if s.sat_frac is not None and s.sat_frac == s.sat_frac:  # NaN: no finite output to judge
                flags += self._layer(event.step, s)
        return flags

    def _layer(self, step: int, s) -> list[Flag]:
        streak = self._streaks.add(s.layer, s.sat_frac > self.sat_fraction)
        severity = Severity.CRITICAL if s.sat_frac >= self.critical_fraction else Severity.WARNING
        if streak < self.patience or not self._flagged.first(s.layer, severity):
            return []
        return [Flag(
            KIND, severity,
            f"{s.sat_frac:.0%} of the outputs of layer {s.layer} ({s.module}) were pinned near a bound of its "
            f"range on {streak} sampled batches in a row: they pass almost no gradient", ADVICE, layer=s.layer,
            evidence={"layer": s.layer, "module": s.module, "sat_frac": s.sat_frac, "samples": streak,
                      "step": step, "mean": s.mean, "std": s.std, "threshold": self.sat_fraction,
                      "critical_fraction": self.critical_fraction})]
