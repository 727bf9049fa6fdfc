"""Dead ReLUs: units of a ReLU layer that output 0 for every input, and so never learn again.

Heuristic (CS231n, "ReLU: careful with learning rates"; SageMaker Debugger's ``dead_relu``
rule): a ReLU unit whose input is negative for every example passes no gradient, so
nothing moves its weights back: it is dead for good. A large update (learning rate too
high), a large negative bias or a poor init can kill a large share of a layer at once.
SageMaker calls a unit dead when it is active under 1 % of the time and flags a layer
when more than 50 % of its units are dead, from tensors saved every 500 steps. Here the
hooks count, on every sampled batch, which units (channels of a conv map, features of a
dense output) were positive anywhere in the batch; ``dead_units`` are the units never
positive over the last ``window`` sampled batches (``watch(dead_window=8)``), which is
stricter than "under 1 %": one positive value in thousands keeps a unit alive.

Rules (activation summaries of modules whose output is exactly 0 for negative input:
``ReLU`` and ``ReLU6`` by default; not LeakyReLU, ELU, GELU, which always pass gradient):

* a summary counts only once its window is full: the layer's ``window`` stopped growing
  (equal to its previous one: the hooks' ring of batches is filled) and is at least
  ``min_window`` sampled batches (fewer batches are too little evidence);
* a layer is flagged when more than ``dead_fraction`` of its units are dead on every full
  sample over at least ``min_steps`` steps, counted from the first batch of the first
  such window, and on at least ``patience`` full samples (one odd stretch of batches
  does not fire). Counting steps, not samples in a row, gives the same verdict at any
  sampling interval (:class:`~monitor.detectors.common.Persistence`); a layer over the
  bar but not yet confirmed asks for the next steps to be sampled
  (:meth:`DeadRelu.look_closer`), and so does a layer with more than ``suspect_fraction``
  (0.5, SageMaker's bar) of its units silent, on a full window or not: under automatic
  sampling a window keeps only the batches of the last 16 steps
  (``trainer_hooks.reduce.DEAD_SPAN_STEPS``), so between sparse samples it holds one or
  two, a suspicion that the closer look turns into full windows, and a layer past half
  dead is watched closely until it is confirmed or falls back (a dying layer crosses the
  bar under that watch, and its flag counts from the first batch of the window that did).
  A layer dead from initialisation, sampled at every step, fills its window of 8 batches
  by step 8 and is flagged at step 11 (the third full sample);
* warning; critical when at least ``critical_fraction`` of the layer is dead (the layer
  passes (almost) nothing on: the network below it no longer trains);
* once per layer per run, except that a layer flagged as a warning is flagged again if it
  later becomes critical. No re-arm after a recovery: a layer that dies, revives and dies
  again has already been reported, and a flag per oscillation would be noise.

The default ``dead_fraction`` is 0.6, not SageMaker's 0.5: the demo's healthy ConvNet
(98-99 % validation accuracy) settles with 34-48 % of its 64-unit hidden ReLU never
positive over 8 sampled batches (5 seeds, SGD and Adam), within two units of 50 %, while
a dying layer goes to 70-100 % (lr 0.3: 73 %; init_bias -2 or -5: 100 %).

Sample flag: ``dead_relu (critical) at step 11 [9]: 64 of 64 units (100 %) of layer 9
(ReLU) were never positive on any of the last 8 sampled batches, over 10 steps (4 samples)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from collections import deque

from monitor.detectors.common import MIN_STEPS, LayerSeverity, Persistence, is_count, require, require_bars
from monitor.events import Event, Flag, Kind, Severity, Signal

KIND = "dead_relu"
#: Share of a layer's units that must be dead for the layer to be flagged (strictly more).
DEAD_FRACTION = 0.6
#: Share of dead units over which a layer whose window is not full yet (sparse sampling
#: keeps only recent batches) is looked at closely: SageMaker Debugger's DeadRelu bar.
SUSPECT_FRACTION = 0.5
#: Share of dead units from which the flag is critical: (nearly) the whole layer is dead.
CRITICAL_FRACTION = 0.9
#: Fewest full-window samples over the threshold before the layer is flagged (with no
#: sample under it in between, and over at least ``min_steps`` steps).
PATIENCE = 3
#: Fewest sampled batches a unit must stay silent over to be counted (the window's size).
MIN_WINDOW = 4
#: Modules whose output is exactly 0 for every negative input (class names).
RELU_FAMILY = ("ReLU", "ReLU6")

ADVICE = ("A dead ReLU outputs 0 for every input, so it gets no gradient and never recovers. Usual causes: "
          "a learning rate too high (one large update pushes the unit to where it never fires), a large "
          "negative bias, or a poor init. Lower the learning rate (try 3-10x lower); initialise with Kaiming "
          "(He) init and zero or slightly positive biases; put BatchNorm before the ReLU (Linear/Conv - "
          "BatchNorm - ReLU); or use LeakyReLU, which always passes some gradient.")


@dataclass
class DeadRelu:
    """``update(event) -> list[Flag]`` over activation summaries of ReLU-family layers; see the module."""

    dead_fraction: float = DEAD_FRACTION
    suspect_fraction: float = SUSPECT_FRACTION
    critical_fraction: float = CRITICAL_FRACTION
    patience: int = PATIENCE
    min_window: int = MIN_WINDOW
    min_steps: int = MIN_STEPS
    modules: tuple[str, ...] = RELU_FAMILY
    _windows: dict[str, int] = field(default_factory=dict)  # layer -> its last window
    _steps: dict[str, deque] = field(default_factory=dict)  # layer -> the steps of its recent samples
    _held: Persistence = field(init=False)  # full samples over the bar, and since which step
    _flagged: LayerSeverity = field(default_factory=LayerSeverity)
    _suspects: set = field(default_factory=set)  # layers over the suspicion bar, not yet flagged

    def __post_init__(self):
        require_bars("dead_fraction", self.dead_fraction, self.critical_fraction)
        require("suspect_fraction", self.suspect_fraction, lambda v: 0 < v <= self.dead_fraction,
                f"a fraction in (0, dead_fraction={self.dead_fraction}]")
        require("patience", self.patience, is_count, "at least 1 sample")
        require("min_window", self.min_window, is_count, "at least 1 sampled batch")
        require("min_steps", self.min_steps, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (steps)")
        self._held = Persistence(self.patience, self.min_steps)
        if isinstance(self.modules, str) or not self.modules or not all(isinstance(m, str) for m in self.modules):
            raise ValueError(f"modules: expected a non-empty tuple of module class names such as "
                             f"('ReLU', 'ReLU6'), got {self.modules!r}")
        self.modules = tuple(self.modules)

    def look_closer(self) -> int:
        """Steps to sample next: ``min_steps`` while a layer is over the bar, or over the
        suspicion bar, but not yet confirmed."""
        return self.min_steps if self._held.pending(self._flagged.flagged) or bool(self._suspects) else 0

    def update(self, event: Event) -> list[Flag]:
        if event.kind is not Kind.LAYER_STATS:
            return []
        flags = []
        for s in event.data.summaries:
            if (s.signal is Signal.ACTIVATION and s.module in self.modules and s.units
                    and s.dead_units is not None and s.window is not None):
                flags += self._layer(event.step, s)
        return flags

    def _layer(self, step: int, s) -> list[Flag]:
        previous, self._windows[s.layer] = self._windows.get(s.layer), s.window
        steps = self._steps.setdefault(s.layer, deque(maxlen=256))
        steps.append(step)
        full = s.window == previous and s.window >= self.min_window  # the ring of batches stopped growing
        fraction = s.dead_units / s.units
        if fraction > self.suspect_fraction and s.layer not in self._flagged.flagged:
            self._suspects.add(s.layer)
        else:
            self._suspects.discard(s.layer)
        # the window's evidence reaches back to its first batch
        since = steps[-s.window] if len(steps) >= s.window else steps[0]
        confirmed = self._held.add(s.layer, step, full and fraction > self.dead_fraction, since)
        severity = Severity.CRITICAL if fraction >= self.critical_fraction else Severity.WARNING
        if not confirmed or not self._flagged.first(s.layer, severity):
            return []
        samples, span = self._held.samples[s.layer], self._held.span(s.layer, step)
        return [Flag(
            KIND, severity,
            f"{s.dead_units} of {s.units} units ({fraction:.0%}) of layer {s.layer} ({s.module}) were never "
            f"positive on any of the last {s.window} sampled batches, over {span} steps ({samples} samples): "
            f"they get no gradient and will not recover", ADVICE, layer=s.layer,
            evidence={"layer": s.layer, "module": s.module, "dead_units": s.dead_units, "units": s.units,
                      "dead_fraction": fraction, "window": s.window, "samples": samples, "steps": span, "step": step,
                      "min_steps": self.min_steps, "patience": self.patience,
                      "threshold": self.dead_fraction, "critical_fraction": self.critical_fraction})]
