"""Vanishing gradient: the gradient dies out on its way back to the first layers.

Heuristic (Glorot & Bengio 2010; CS231n, "activation/gradient distributions per layer"):
in a deep stack of saturating units (sigmoid, tanh) or with too small an init, each layer
multiplies the back-propagated gradient by less than one, so the early layers receive
orders of magnitude less of it than the output layer and stop learning. The rule compares
each layer's gradient to the output layer's at every sampled step, as the per-element
RMS (``norm / sqrt(elements)``, the standard deviation Glorot & Bengio follow layer by
layer, which does not grow with a layer's width). The default signal is ``output_grad``
(d loss / d layer output, where the flow is read); ``param_grad`` reads the weights'
gradients instead (biases and normalisation layers left out). A layer that feeds a
normalisation layer is judged at that layer's output: BatchNorm makes it scale-free, so
its own gradient shrinks as its weights grow, whatever the depth (the demo CNN under Adam
at lr=0.1 takes its second convolution's to 1e-4 of the output's while it learns).

Healthy runs measured: the demo CNN's layers sit between 1.5e-2 (a BatchNorm at init) and
1 of the output layer's RMS, also after it has converged (all gradients shrink together);
a 10-layer sigmoid MLP puts its first layer at 8e-9. A network that has learned has small
gradients everywhere, so the absolute ``floor`` applies only while the smoothed loss is
still above ``stuck_level`` of its first value (with no loss logged, it applies alone), and
ratios are read only while the output layer's own RMS is above ``floor``.

The ratio to the output layer is a sound reference here: a vanishing gradient is one that
dies out *on its way back*, and the output layer, nearest the loss, is where it starts
(when the output itself gets nothing, only the floor can speak).

Rule, flagged once per run (warning): a layer's RMS gradient stays below ``min_ratio``
times the output layer's (or below ``floor``) on every sample over at least
``min_steps`` steps and ``min_samples`` samples (:class:`~monitor.detectors.common.Persistence`:
the same verdict at any sampling interval; a layer past the bar but not yet confirmed
asks for the next ``min_steps`` steps to be sampled, :meth:`VanishingGradient.look_closer`).
A problem present at initialisation is flagged at step 10 while every step is sampled.
The flag names the earliest such layer (nearest the input, where the gradient is
weakest) and lists them all in the evidence.

Sample flag: ``vanishing_gradient (warning) at step 10: gradients vanish: layer 0 (Linear)
gets 8.8e-09 of the output layer 18's gradient (RMS 1.2e-10 vs 0.014), for 10 steps (11
samples); 6 layers below 0.001 of the output layer's or 1e-08: 0, 2, 4, 6, 8, 10``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from monitor.detectors.common import (MIN_SAMPLES, MIN_STEPS, Persistence, SmoothedLoss, require,
                                     require_persistence)
from monitor.detectors.gradient_flow import SIGNALS, gradient_flag, layer_gradients, persistent
from monitor.events import Event, Flag, Kind, Signal

KIND = "vanishing_gradient"
#: A layer below this fraction of the output layer's RMS gradient is starved (three orders of magnitude).
MIN_RATIO = 1e-3
#: Per-element RMS gradient under which a layer gets essentially nothing, whatever the output gets.
FLOOR = 1e-8
#: The absolute floor counts only while the smoothed loss is above this fraction of its first value.
STUCK_LEVEL = 0.5

ADVICE = ("Use ReLU-family activations (ReLU, leaky ReLU, GELU) instead of sigmoid or tanh in deep stacks; "
          "initialise with Kaiming init for ReLU or Xavier init for tanh; add BatchNorm (Linear/Conv - "
          "BatchNorm - ReLU); add residual (skip) connections so the gradient has a short path to the first "
          "layers. Gradients that are exactly 0 under ReLUs mean dead units: lower the learning rate.")


@dataclass
class VanishingGradient:
    """``update(event) -> list[Flag]`` over layer gradients and the loss; see the module."""

    min_ratio: float = MIN_RATIO
    floor: float = FLOOR
    min_samples: int = MIN_SAMPLES
    min_steps: int = MIN_STEPS
    stuck_level: float = STUCK_LEVEL
    signal: str = Signal.OUTPUT_GRAD.value
    scalar: str = "loss"
    _loss: SmoothedLoss = field(default_factory=SmoothedLoss)
    _held: Persistence = field(init=False)
    _fired: bool = False

    def __post_init__(self):
        require("min_ratio", self.min_ratio, lambda v: 0 < v < 1, "a ratio in (0, 1)")
        require("floor", self.floor, lambda v: 0 <= v < math.inf, "a finite RMS gradient >= 0")
        require_persistence(self.min_samples, self.min_steps)
        require("stuck_level", self.stuck_level, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
        require("signal", self.signal, lambda v: v in SIGNALS, f"one of {', '.join(SIGNALS)}")
        self.signal = Signal(self.signal).value
        self._held = Persistence(self.min_samples, self.min_steps)

    def look_closer(self) -> int:
        """Steps to sample next: ``min_steps`` while a layer is past its bar but not yet confirmed."""
        return self.min_steps if not self._fired and self._held.pending() else 0

    def update(self, event: Event) -> list[Flag]:
        if event.kind is Kind.SCALARS:
            self._loss.add(event.data.values.get(self.scalar))
            return []
        if self._fired or event.kind is not Kind.LAYER_STATS:
            return []
        grads = layer_gradients(event, self.signal)
        if not grads:
            return []
        output = grads[-1]
        level = self._loss.level()
        use_floor = level is None or level >= self.stuck_level
        # the flow is read on the elements the gradient reaches (exact zeros are ReLU gating or
        # dead units: not a gradient fading with depth); a layer it reaches nowhere says
        # nothing here. The ratio of two negligible numbers says nothing either: read it only
        # when the output gets a gradient, and only for layers with no normalisation layer
        # between them and the output (that layer rescales the gradient by 1 / its input's std).
        out_rms = output.active_rms
        ratio = {g.layer: g.active_rms / out_rms
                 if g.active_rms is not None and out_rms is not None and out_rms > self.floor and not g.below_norm
                 else None for g in grads}
        why = {g.layer: "ratio" if g is not output and ratio[g.layer] is not None and ratio[g.layer] < self.min_ratio
               else "floor" if use_floor and g.active_rms is not None and g.active_rms < self.floor else None
               for g in grads}
        hits = persistent(self._held, event.step, grads, why)
        if not hits:
            return []
        self._fired = True
        return [gradient_flag(
            KIND, ADVICE, event, self.signal, grads, hits, ratio, why, self._held,
            verb="vanish", relation="of", beyond=f"below the floor {self.floor:g}, while the loss is high",
            bounds=f"below {self.min_ratio:g} of the output layer's or {self.floor:g}",
            evidence={"min_ratio": self.min_ratio, "floor": self.floor, "floor_applied": use_floor,
                      "loss_level": level})]
