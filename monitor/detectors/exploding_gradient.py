"""Exploding gradient: the gradient grows on its way back to the first layers.

Heuristic (Glorot & Bengio 2010; He et al. 2015; CS231n, "gradient distributions per
layer"): when each layer multiplies the back-propagated gradient by more than one (weights
initialised too large, no normalisation, a deep plain stack), the early layers receive
orders of magnitude more of it than the output layer; their steps are then far too large
for the learning rate, and the loss soon turns NaN (which the divergence rule flags). This
rule catches the growth before that. Like :mod:`vanishing_gradient`, it compares each
layer's per-element RMS gradient to the output layer's at every sampled step (read only
while the output layer's RMS is above ``min_output``: a converged network's output
gradient is negligible and a ratio to it measures noise), and holds it against an
absolute ``ceiling`` as well (a gradient element of 1e6 moves a weight by 1e3 per step at
a learning rate of 1e-3: no training survives it). With mixed precision, output gradients
carry the GradScaler's loss scale (2**16 at first): raise ``ceiling`` or use
``signal="param_grad"`` (the optimizer sees unscaled gradients). Layers that feed a
normalisation layer are judged at its output (see :func:`layer_gradients`).

Healthy runs measured: no layer of the demo CNN goes above its output layer's RMS; a
12-layer ReLU MLP with weights scaled up 6x puts its first layer at 4e3 times it while its
loss (2e4) stays finite.

Rule, flagged once per run (warning): a layer's RMS gradient stays above ``max_ratio``
times the output layer's (or above ``ceiling``) for ``window`` samples in a row. The flag
names the earliest such layer (nearest the input, where the gradient is largest) and lists
them all in the evidence.

Sample flag: ``exploding_gradient (warning) at step 8: gradients explode: layer 0 (Linear)
gets 4.2e+03 times the output layer 22's gradient (RMS 80 vs 0.019), 5 samples in a row;
2 layers above 1000 times the output layer's or 1e+06: 0, 2``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from monitor.detectors.common import Streaks, is_count, require
from monitor.detectors.gradient_flow import SIGNALS, gradient_flag, layer_gradients, persistent
from monitor.detectors.vanishing_gradient import FLOOR
from monitor.events import Event, Flag, Kind, Signal

KIND = "exploding_gradient"
#: A layer above this multiple of the output layer's RMS gradient is blowing up (three orders of magnitude).
MAX_RATIO = 1e3
#: Per-element RMS gradient above which a layer explodes, whatever the output gets.
CEILING = 1e6
#: Sampled steps in a row a layer must stay above before it is flagged.
WINDOW = 5

ADVICE = ("Clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before optimizer.step()); "
          "lower the learning rate; initialise with Kaiming (ReLU) or Xavier (tanh) init instead of large "
          "weights; add BatchNorm and residual connections so no layer multiplies the gradient unchecked.")


@dataclass
class ExplodingGradient:
    """``update(event) -> list[Flag]`` over layer gradients; see the module."""

    max_ratio: float = MAX_RATIO
    ceiling: float = CEILING
    window: int = WINDOW
    min_output: float = FLOOR
    signal: str = Signal.OUTPUT_GRAD.value
    _streaks: Streaks = field(default_factory=Streaks)
    _fired: bool = False

    def __post_init__(self):
        require("max_ratio", self.max_ratio, lambda v: 1 < v < math.inf, "a finite ratio above 1")
        require("ceiling", self.ceiling, lambda v: 0 < v < math.inf, "a finite RMS gradient above 0")
        require("window", self.window, is_count, "an integer >= 1 (samples)")
        require("min_output", self.min_output, lambda v: 0 <= v < math.inf, "a finite RMS gradient >= 0")
        require("signal", self.signal, lambda v: v in SIGNALS, f"one of {', '.join(SIGNALS)}")
        self.signal = Signal(self.signal).value

    def update(self, event: Event) -> list[Flag]:
        if self._fired or event.kind is not Kind.LAYER_STATS:
            return []
        grads = layer_gradients(event, self.signal)
        if not grads:
            return []
        output = grads[-1]
        # a converged network's output gradient is tiny: ratios to it would only measure noise
        ratio = {g.layer: g.rms / output.rms if output.rms > self.min_output else None for g in grads}
        why = {g.layer: "ratio" if ratio[g.layer] is not None and ratio[g.layer] > self.max_ratio
               else "ceiling" if g.rms > self.ceiling else None for g in grads}
        hits = persistent(self._streaks, grads, why, self.window)
        if not hits:
            return []
        self._fired = True
        return [gradient_flag(
            KIND, ADVICE, event, self.signal, grads, hits, ratio, why, self._streaks.counts[hits[0].layer],
            verb="explode", relation="times", beyond=f"above the ceiling {self.ceiling:g}",
            bounds=f"above {self.max_ratio:g} times the output layer's or {self.ceiling:g}",
            evidence={"max_ratio": self.max_ratio, "ceiling": self.ceiling, "min_output": self.min_output,
                      "window": self.window})]
