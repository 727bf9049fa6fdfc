"""Saturation: units where their activation is flat, so they stop learning: tanh/sigmoid pinned
at the bounds of their range, or GELU/SiLU/ELU-like units deep in their flat negative tail.

Heuristic (CS231n, activation functions: "don't use sigmoid", "saturated neurons kill
the gradients"; Glorot & Bengio 2010, who watched sigmoid layers saturate from a poor
init): the derivative of tanh or sigmoid is nearly 0 near its bounds, so a unit whose
pre-activation is large passes almost no gradient to the layers below. Large
pre-activations come from inputs that are not normalised, weights initialised too large
(anything much above Xavier's 1/sqrt(fan_in) scale), or updates that grow the weights.
The hooks give each activation summary of a saturating module (Tanh, Sigmoid, Hardtanh,
Softsign, Hardsigmoid) ``sat_frac``: the share of its sampled outputs within a small
margin of a bound (for tanh, |y| above about 0.98). Smooth activations with a flat tail
(GELU, SiLU, Mish, ELU, CELU, SELU, Softplus, Hardswish) get the exact share of their
inputs where the slope stays below the same 4 % of its peak (GELU: below about -2.4,
SiLU -4.3): their output is rarely exactly zero, so "dead" never applies to them, but a
unit kept in that tail is as stuck as a dead ReLU (Hendrycks & Gimpel 2016 on GELU's
shape; the same pre-activation causes).

Rules:

* a layer is flagged when ``sat_frac`` is above ``sat_fraction`` on every sample over at
  least ``min_steps`` steps and ``patience`` samples (one batch of extreme inputs does not
  fire; counted in steps, the verdict is the same at any sampling interval, see
  :class:`~monitor.detectors.common.Persistence`); a layer over the bar but not yet
  confirmed asks for the next steps to be sampled (:meth:`Saturation.look_closer`), and
  one saturated from initialisation is flagged at step 10 while every step is sampled;
* warning; critical when it is at least ``critical_fraction`` (almost no gradient passes);
* the model's output nonlinearity is left alone (``skip_output``): the last activation
  summary of the forward pass, when it is a bounded module (:data:`BOUNDED`), is a sigmoid of a binary
  classifier or a tanh of an image generator, whose outputs are meant to reach the bounds
  as it grows confident (a background pixel at -1);
* once per layer per run, except that a warning is followed by a critical flag if the
  layer gets there.

The default ``sat_fraction`` is 0.6: healthy tanh MLPs on our blobs task stay at or below
0.02 with SGD and reach 0.45 in their last hidden layer with Adam at lr 0.01 once they are
confident; weights or inputs scaled up 3-5x put the first layer at 0.6-0.9 from the start.

Sample flag: ``saturation (warning) at step 10 [1]: 89 % of the outputs of layer 1 (Tanh)
were pinned near a bound of its range over 10 steps (11 samples)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from monitor.detectors.common import MIN_SAMPLES, MIN_STEPS, LayerSeverity, Persistence, is_count, require, require_bars
from monitor.events import Event, Flag, Kind, Severity, Signal

KIND = "saturation"
#: Share of a layer's outputs near a bound above which it counts as saturated (strictly more).
SAT_FRACTION = 0.6
#: Share from which the flag is critical: (almost) every output is pinned.
CRITICAL_FRACTION = 0.95
#: Fewest samples over the threshold (none under it in between, over ``min_steps`` steps) before the flag.
PATIENCE = MIN_SAMPLES

#: Activations with a bounded range: the only ones a model ends with on purpose.
BOUNDED = ("Tanh", "Sigmoid", "Hardtanh", "Softsign", "Hardsigmoid")

TAIL_ADVICE = ("Units deep in the flat negative tail of a smooth activation (GELU, SiLU, ELU...) pass almost no "
               "gradient, much like dead ReLUs. Usual causes: a learning rate too high (large updates push the "
               "pre-activations far below zero), large negative biases, or inputs that are not normalised. Lower "
               "the learning rate (or warm it up), check the initialisation of the layer before it, and normalise "
               "before the nonlinearity (LayerNorm or BatchNorm).")
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
    min_steps: int = MIN_STEPS
    skip_output: bool = True
    _held: Persistence = field(init=False)  # samples over the bar, and since which step
    _flagged: LayerSeverity = field(default_factory=LayerSeverity)

    def __post_init__(self):
        require_bars("sat_fraction", self.sat_fraction, self.critical_fraction)
        require("patience", self.patience, is_count, "at least 1 sampled batch")
        require("min_steps", self.min_steps, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (steps)")
        self._held = Persistence(self.patience, self.min_steps)
        if not isinstance(self.skip_output, bool):
            raise ValueError(f"skip_output: expected True or False, got {self.skip_output!r}")

    def look_closer(self) -> int:
        """Steps to sample next: ``min_steps`` while a layer is over the bar but not yet confirmed."""
        return self.min_steps if self._held.pending(self._flagged.flagged) else 0

    def update(self, event: Event) -> list[Flag]:
        if event.kind is not Kind.LAYER_STATS:
            return []
        # Activation summaries come in forward order: the last one is the model's output.
        activations = [s for s in event.data.summaries if s.signal is Signal.ACTIVATION]
        if self.skip_output and activations and activations[-1].module in BOUNDED:
            activations.pop()
        flags = []
        for s in activations:
            if s.sat_frac is not None and s.sat_frac == s.sat_frac:  # NaN: no finite output to judge
                flags += self._layer(event.step, s)
        return flags

    def _layer(self, step: int, s) -> list[Flag]:
        confirmed = self._held.add(s.layer, step, s.sat_frac > self.sat_fraction)
        severity = Severity.CRITICAL if s.sat_frac >= self.critical_fraction else Severity.WARNING
        if not confirmed or not self._flagged.first(s.layer, severity):
            return []
        samples, span = self._held.samples[s.layer], self._held.span(s.layer, step)
        where = ("of the outputs", "were pinned near a bound of its range") if s.module in BOUNDED else \
            ("of the inputs", "lay in its flat tail")
        return [Flag(
            KIND, severity,
            f"{s.sat_frac:.0%} {where[0]} of layer {s.layer} ({s.module}) {where[1]} over {span} steps "
            f"({samples} samples): they pass almost no gradient", ADVICE if s.module in BOUNDED else TAIL_ADVICE,
            layer=s.layer,
            evidence={"layer": s.layer, "module": s.module, "sat_frac": s.sat_frac, "samples": samples,
                      "steps": span, "min_steps": self.min_steps, "step": step, "mean": s.mean, "std": s.std,
                      "threshold": self.sat_fraction,
                      "critical_fraction": self.critical_fraction})]
