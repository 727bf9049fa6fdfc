"""Update ratio: the weights change far too little, or far too much, at each step.

Heuristic (CS231n, "ratio of weights:updates"): the norm of an optimizer step over the
norm of the weights it changes should be somewhere around 1e-3. Much lower, the learning
rate is probably too low; much higher, too high. The hooks measure it per parameter at
each sampled step (``update_ratio`` = ||w_after - w_before|| / ||w_before||); this rule
judges the median over the weight tensors, leaving out biases and normalisation layers
(their small norms give large ratios that say nothing of the learning rate), so one
layer cannot decide for the network, and flags it when it stays out of band on every
sample over at least ``min_steps`` steps and ``min_samples`` samples (early training is
expected to move fast for a few steps). Persistence is counted in steps, so the verdict
is the same at any sampling interval (:class:`~monitor.detectors.common.Persistence`); a
median out of band but not yet confirmed asks for the next steps to be sampled
(:meth:`UpdateRatio.look_closer`).

The band is two orders of magnitude either side of 1e-3. Healthy runs measured: the demo
CNN with SGD+momentum runs at 4e-2 in its first epoch and falls to 1e-4 as it converges;
with Adam 1e-3 to 2e-2. A converged network takes tiny steps because its gradients are
tiny, not because its learning rate is low, so the "too low" side only counts while the
smoothed training loss is still above ``stuck_level`` of its first value (when no loss is
logged, the ratio alone decides).

Rules, each direction flagged once per run (warning):

* too low: the median ratio stays below ``low`` (1e-5) over the persistence while the
  loss has not come down (the demo at ``lr=1e-6``: 2e-6);
* too high: the median ratio stays above ``high`` (1e-1) over the persistence (the demo
  at ``lr=2``, 40x its rate: 0.7 to 2 in its first steps, before its ReLUs die). A
  BatchNorm network hides a too-high rate from this rule after a while: its weights grow
  until the ratio settles (the demo under Adam at ``lr=0.1`` runs at 7e-3).

Sample flag (the demo at ``lr=1e-6``): ``update_ratio (warning) at step 10: weights change
1.5e-06 of their norm per step (median over 4 weight tensors, for 10 steps, 11 samples), far below
~0.001: the learning rate is probably too low (layer 0.weight is at 5e-07)``.
"""
from __future__ import annotations

import functools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from monitor.detectors.common import (MIN_SAMPLES, MIN_STEPS, Persistence, SmoothedLoss, require,
                                     require_persistence)
from monitor.events import Event, Flag, Kind, Severity, Signal, TensorSummary

KIND = "update_ratio"
#: The ratio CS231n calls healthy, for the messages.
TARGET = 1e-3
#: Median update/weight ratio below which steps are too small (two orders of magnitude under 1e-3).
LOW = 1e-5
#: Median update/weight ratio above which steps are too large (two orders of magnitude over 1e-3).
HIGH = 1e-1
#: How many recent out-of-band medians the evidence lists.
RECENT = 5
#: "Too low" counts only while the smoothed loss is above this fraction of its first value.
STUCK_LEVEL = 0.5

ADVICE_LOW = ("The learning rate is probably too low: raise it (about 10x at a time; search it on a log scale "
              "with short runs). If a higher rate does not move the weights either, the gradients are not "
              "reaching them: look for dead ReLUs, vanishing gradients or frozen layers.")
ADVICE_HIGH = ("The learning rate is probably too high: lower it (about 10x; search it on a log scale with short "
               "runs), add a warm-up, or clip gradients (torch.nn.utils.clip_grad_norm_). With AdamW, a strong "
               "weight decay also keeps this ratio high.")

NORM_WORDS = ("Norm",)  # BatchNorm*, LayerNorm, GroupNorm, InstanceNorm*, RMSNorm... (the dashboard reads it too)


def is_weight(summary: TensorSummary) -> bool:
    """A parameter-gradient summary of a weight tensor (not a bias, not a normalisation
    layer): ``weight``, and the weight matrices torch's recurrent layers and attention
    name otherwise (``weight_ih_l0``, ``weight_hh_l0``, ``in_proj_weight``)."""
    return summary.signal is Signal.PARAM_GRAD and _is_weight_name(summary.layer, summary.module)


@functools.lru_cache(maxsize=4096)  # a model's parameter names, asked about at every sampled step
def _is_weight_name(layer: str, module: str) -> bool:
    name = layer.rpartition(".")[2]
    return (name.startswith("weight") or name.endswith("_weight")) and not any(word in module for word in NORM_WORDS)


@dataclass
class UpdateRatio:
    """``update(event) -> list[Flag]`` over parameter statistics and the loss; see the module."""

    low: float = LOW
    high: float = HIGH
    min_samples: int = MIN_SAMPLES
    min_steps: int = MIN_STEPS
    stuck_level: float = STUCK_LEVEL
    scalar: str = "loss"
    _loss: SmoothedLoss = field(default_factory=SmoothedLoss)
    _streak: dict[str, deque] = field(init=False)  # the medians of the current run out of band, per side
    _held: Persistence = field(init=False)  # per direction
    _fired: set[str] = field(default_factory=set)

    def __post_init__(self):
        require("low", self.low, lambda v: 0 < v < TARGET, f"a ratio in (0, {TARGET:g})")
        require("high", self.high, lambda v: TARGET < v < math.inf, f"a finite ratio above {TARGET:g}")
        require_persistence(self.min_samples, self.min_steps)
        require("stuck_level", self.stuck_level, lambda v: 0 <= v <= 1, "a fraction in [0, 1]")
        self._streak = {"low": deque(maxlen=RECENT), "high": deque(maxlen=RECENT)}
        self._held = Persistence(self.min_samples, self.min_steps)

    def look_closer(self) -> int:
        """Steps to sample next: ``min_steps`` while the median is out of band but not yet confirmed."""
        return self.min_steps if self._held.pending(self._fired) else 0

    def update(self, event: Event) -> list[Flag]:
        if event.kind is Kind.SCALARS:
            self._loss.add(event.data.values.get(self.scalar))
            return []
        if event.kind is not Kind.LAYER_STATS:
            return []
        ratios = {s.layer: s.update_ratio for s in event.data.summaries
                  if is_weight(s) and s.update_ratio is not None and math.isfinite(s.update_ratio)}
        if not ratios:
            return []
        median = statistics.median(ratios.values())
        level = self._loss.level()
        stuck = level is None or level >= self.stuck_level
        flags = []
        for direction, out in (("low", median < self.low and stuck), ("high", median > self.high)):
            streak = self._streak[direction]
            confirmed = self._held.add(direction, event.step, out)
            if not out:
                streak.clear()
                continue
            streak.append(median)
            if confirmed and direction not in self._fired:
                self._fired.add(direction)
                flags.append(self._flag(event, direction, median, ratios, level))
        return flags

    def _flag(self, event: Event, direction: str, median: float, ratios: dict[str, float],
              level: float | None) -> Flag:
        low = direction == "low"
        bound = self.low if low else self.high
        worst = (min if low else max)(ratios, key=ratios.get)
        samples, steps = self._held.samples[direction], self._held.span(direction, event.step)
        message = (f"weights change {median:.2g} of their norm per step (median over {len(ratios)} weight "
                   f"tensors, for {steps} steps, {samples} samples), far "
                   f"{'below' if low else 'above'} ~{TARGET:g}: the learning rate is probably too "
                   f"{'low' if low else 'high'} (layer {worst} is at {ratios[worst]:.2g})")
        return Flag(KIND, Severity.WARNING, message, ADVICE_LOW if low else ADVICE_HIGH,
                    evidence={"direction": direction, "step": event.step, "median": median, "bound": bound,
                              "target": TARGET, "samples": samples, "steps": steps,
                              "min_samples": self.min_samples, "min_steps": self.min_steps,
                              "recent_medians": list(self._streak[direction]), "extreme_layer": worst,
                              "ratios": dict(ratios), "loss_level": level, "stuck_level": self.stuck_level})
