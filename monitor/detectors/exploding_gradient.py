"""Exploding gradient: gradients far too large for the weights they update.

Three references, none of which assumes that some layer is healthy:

* **The weights' own norm** (You et al. 2017, LARS: the ratio ||g|| / ||w|| per layer, which
  they measured between 1e-3 and 0.2 in healthy AlexNet layers; CS231n's update/weight
  ratio of ~1e-3 is ``lr * ||g|| / ||w||`` for plain SGD). The network's gradient norm
  above ``max_relative`` (10) times its weights' norm means one SGD step at lr 0.01 moves
  the weights by a tenth of their size, a hundred times what is healthy, at every step.
  Read over the whole network (the number ``clip_grad_norm_`` reads over the weights'
  norm), so a single zero-initialised layer, whose tiny norm gives any ratio, does not
  decide. A deep ReLU MLP at 3x the Kaiming std: about 50; its healthy twin: 0.003-0.03.
* **The run's own early history** (Pascanu, Mikolov & Bengio 2013, who set the clipping
  threshold from the average gradient norm over many updates): the global gradient norm
  above ``growth`` (100) times its median over the first ``reference_steps`` (20) steps has
  grown by two orders of magnitude, which no schedule does.
* **The output layer's gradient** (Glorot & Bengio 2010; CS231n, "gradient distributions
  per layer"), for the gradient that grows on its way back: a layer's per-element RMS
  gradient above ``max_ratio`` (1e3) times the output layer's, read only while the output
  layer's RMS is above ``min_output`` (a converged network's is negligible). Layers that
  feed a normalisation layer are judged at its output (see :func:`layer_gradients`).

The first two read the vital signs (``vitals``: the global and per-layer gradient norms,
on every step their own budget allows, at least one in 32; the weights' norms come from the
latest sampled ``layer_stats``), so they do not depend on the sampling interval; a run
without vital signs (an older store) is read from the sampled parameter gradients
instead. The third reads sampled steps. Each condition must hold over at least
``min_steps`` steps and ``min_samples`` samples
(:class:`~monitor.detectors.common.Persistence`), the same at any interval; a problem
present at initialisation is confirmed at step 10.

Rule, flagged once per run (warning), by the first reference to confirm. The flag names
the earliest layer past the bar (for the first two: the earliest layer whose own
gradient is above ``max_relative`` times its weights' norm, else the one with the largest
such ratio), and the evidence gives the numbers.

Sample flag: ``exploding_gradient (warning) at step 10 [fc0]: gradients explode: the
gradient norm (4.14e+03) is 54.5 times the weights' norm (76), for 10 steps (11 samples);
layer fc0 (Linear) gets 77.1 times its weights' norm``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from monitor.detectors.common import MIN_SAMPLES, MIN_STEPS, Persistence, require, require_persistence
from monitor.detectors.gradient_flow import SIGNALS, gradient_flag, layer_gradients, persistent
from monitor.detectors.vanishing_gradient import FLOOR
from monitor.events import Event, Flag, Kind, Severity, Signal, Vitals

KIND = "exploding_gradient"
#: A layer above this multiple of the output layer's RMS gradient is blowing up (three orders of magnitude).
MAX_RATIO = 1e3
#: The network's gradient norm above this multiple of its weights' norm is too large for them (see the module).
MAX_RELATIVE = 10.0
#: The global gradient norm above this multiple of its early median has exploded (two orders of magnitude).
GROWTH = 100.0
#: Steps from the first gradient over which the early median (the run's own reference) is taken.
REFERENCE_STEPS = 20

ADVICE = ("Clip gradients (torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0) before optimizer.step()); "
          "lower the learning rate; initialise with Kaiming (ReLU) or Xavier (tanh) init instead of large "
          "weights; add BatchNorm and residual connections so no layer multiplies the gradient unchecked.")


@dataclass
class ExplodingGradient:
    """``update(event) -> list[Flag]`` over vital signs and layer gradients; see the module."""

    max_relative: float = MAX_RELATIVE
    growth: float = GROWTH
    reference_steps: int = REFERENCE_STEPS
    max_ratio: float = MAX_RATIO
    min_output: float = FLOOR
    min_samples: int = MIN_SAMPLES
    min_steps: int = MIN_STEPS
    signal: str = Signal.OUTPUT_GRAD.value
    _rows: tuple[str, ...] | None = None  # the model summary's rows, in the vitals' order
    _modules: dict[str, str] = field(default_factory=dict)  # row -> module class
    _weights: dict[str, float] = field(default_factory=dict)  # row -> ||w|| at the latest sample
    _weight_norm: float = 0.0  # the network's ||w|| over those rows
    _vitals: bool = False  # vital signs seen: the sampled parameter gradients are not needed
    _first_step: int | None = None
    _early: list[float] = field(default_factory=list)  # global gradient norms of the first steps
    _held: Persistence = field(init=False)  # keys "relative", "growth"
    _layers: Persistence = field(init=False)  # per layer, against the output layer
    _fired: bool = False

    def __post_init__(self):
        require("max_relative", self.max_relative, lambda v: 0 < v < math.inf, "a finite ratio above 0")
        require("growth", self.growth, lambda v: 1 < v < math.inf, "a finite factor above 1")
        require("reference_steps", self.reference_steps, lambda v: isinstance(v, int) and v >= 1,
                "an integer >= 1 (steps)")
        require("max_ratio", self.max_ratio, lambda v: 1 < v < math.inf, "a finite ratio above 1")
        require("min_output", self.min_output, lambda v: 0 <= v < math.inf, "a finite RMS gradient >= 0")
        require_persistence(self.min_samples, self.min_steps)
        require("signal", self.signal, lambda v: v in SIGNALS, f"one of {', '.join(SIGNALS)}")
        self.signal = Signal(self.signal).value
        self._held = Persistence(self.min_samples, self.min_steps)
        self._layers = Persistence(self.min_samples, self.min_steps)

    def look_closer(self) -> int:
        """Steps to sample next: ``min_steps`` while a layer is past the output-layer bar but
        not yet confirmed (the vital signs need no sampling)."""
        return self.min_steps if not self._fired and self._layers.pending() else 0

    def update(self, event: Event) -> list[Flag]:
        if self._fired:
            return []
        if event.kind is Kind.RUN_START:
            self._rows = Vitals.layer_names(event.data.model)  # the rows the vitals' norms refer to
            self._modules = {m.name: m.module for m in event.data.model if m.name in self._rows}
            return []
        if event.kind is Kind.VITALS:
            self._vitals = True
            data = event.data
            for i, (step, total) in enumerate(zip(data.steps(event.step), data.grad_norm)):
                def norms(i=i) -> dict[str, float]:  # by layer, only when a flag needs them (this runs every step)
                    if self._rows is not None:
                        return data.by_layer(self._rows, i)
                    row = data.norms[i] if data.norms else ()
                    return {str(r): v for r, v in zip(data.layers or range(len(row)), row)}
                flags = self._relative(step, norms, total)
                if flags:
                    return flags
            return []
        if event.kind is not Kind.LAYER_STATS:
            return []
        params = [s for s in event.data.summaries if s.signal is Signal.PARAM_GRAD]
        grads: dict[str, float] = {}
        weights: dict[str, float] = {}
        for s in params:
            row = s.layer.rpartition(".")[0] or s.layer
            self._modules.setdefault(row, s.module)
            if s.weight_norm is not None and math.isfinite(s.weight_norm):
                weights[row] = weights.get(row, 0.0) + s.weight_norm ** 2
            if math.isfinite(s.norm):
                grads[row] = grads.get(row, 0.0) + s.norm ** 2
        self._weights.update({row: math.sqrt(v) for row, v in weights.items()})
        self._weight_norm = math.sqrt(sum(w * w for w in self._weights.values()))
        flags = self._against_output(event)
        if not flags and not self._vitals and grads:
            flags = self._relative(event.step, lambda: {row: math.sqrt(v) for row, v in grads.items()},
                                   math.sqrt(sum(grads.values())))
        return flags

    def _relative(self, step: int, layer_norms, total: float) -> list[Flag]:
        """The first two references, at one step's gradient norms (per layer and global)."""
        if not math.isfinite(total):
            return []  # a NaN or Inf gradient is the divergence rule's business
        if self._first_step is None:
            self._first_step = step
        if step - self._first_step < self.reference_steps:
            self._early.append(total)
            reference = None
        else:
            reference = statistics.median(self._early) if self._early else None
        weight_norm = self._weight_norm
        relative = total / weight_norm if weight_norm > 0 else None
        hit = None
        if self._held.add("relative", step, relative is not None and relative > self.max_relative):
            hit = "relative"
        if self._held.add("growth", step, bool(reference) and total > self.growth * reference) and hit is None:
            hit = "growth"
        if hit is None:
            return []
        self._fired = True
        norms = layer_norms()
        ratios = {row: norms[row] / w for row, w in self._weights.items()
                  if row in norms and w > 0 and math.isfinite(norms[row])}
        order = self._rows or list(self._weights)
        ranked = [row for row in order if row in ratios]
        layer = next((row for row in ranked if ratios[row] > self.max_relative),
                     max(ranked, key=ratios.get) if ranked else None)
        samples, steps = self._held.samples[hit], self._held.span(hit, step)
        if hit == "relative":
            what = (f"the gradient norm ({total:.3g}) is {relative:.3g} times the weights' norm "
                    f"({weight_norm:.3g})")
        else:
            what = (f"the gradient norm ({total:.3g}) is {total / reference:.3g} times its median over the first "
                    f"{self.reference_steps} steps ({reference:.3g})")
        where = (f"; layer {layer} ({self._modules.get(layer, '?')}) gets {ratios[layer]:.3g} times its weights' "
                 f"norm" if layer is not None else "")
        message = f"gradients explode: {what}, for {steps} steps ({samples} samples){where}"
        return [Flag(KIND, Severity.WARNING, message, ADVICE, layer=layer, step=step, evidence={
            "step": step, "reference": hit, "grad_norm": total, "weight_norm": weight_norm,
            "relative": relative, "early_median": reference, "samples": samples, "steps": steps,
            "layer_ratios": {row: ratios[row] for row in ranked}, "max_relative": self.max_relative,
            "growth": self.growth, "reference_steps": self.reference_steps, "min_samples": self.min_samples,
            "min_steps": self.min_steps, "source": "vitals" if self._vitals else "layer_stats"})]

    def _against_output(self, event: Event) -> list[Flag]:
        """The third reference: each layer's RMS gradient against the output layer's."""
        grads = layer_gradients(event, self.signal)
        if not grads:
            return []
        output = grads[-1]
        # a converged network's output gradient is tiny: ratios to it would only measure noise
        ratio = {g.layer: g.rms / output.rms if output.rms > self.min_output else None for g in grads}
        why = {g.layer: "ratio" if ratio[g.layer] is not None and ratio[g.layer] > self.max_ratio else None
               for g in grads}
        hits = persistent(self._layers, event.step, grads, why)
        if not hits:
            return []
        self._fired = True
        return [gradient_flag(
            KIND, ADVICE, event, self.signal, grads, hits, ratio, why, self._layers,
            verb="explode", relation="times", beyond="", bounds=f"above {self.max_ratio:g} times the output layer's",
            evidence={"reference": "output_layer", "max_ratio": self.max_ratio, "min_output": self.min_output})]

