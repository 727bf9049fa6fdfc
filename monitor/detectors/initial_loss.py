"""Initial loss: a classifier that does not start at chance has a broken init or label pipeline.

Heuristic (CS231n, "look for correct loss at chance performance"; Karpathy's recipe,
"verify loss @ init"): at initialisation a softmax classifier over C classes should be
unsure of every class, so its mean cross-entropy starts at about ln(C) (2.30 for 10
classes). A first loss far above that means the outputs start large and confidently
wrong: inputs or weights too large, a last layer that was not scaled down, or a loss
that does not match the labels.

Rules, evaluated once, on the first ``first_losses`` finite values of the ``loss`` scalar:

* C is ``classes`` when given; otherwise the output layer is the last activation summary
  of the first sampled forward pass, and C its output size when it is a ``Linear``
  (its weight shape ``C x H`` in the run's model summary). No output layer found, another
  kind of output layer, or C < 2 (a regression or a binary logit): nothing is checked;
* the median of those losses (one odd batch does not decide) must be above ``factor``
  times ln(C) to flag (warning). Only the high side is checked: a loss below ln(C) at the
  start is what a last-layer bias set to the class priors gives on imbalanced data (good
  practice), or a run resumed from a checkpoint;
* with an inferred C, the loss must also be one a cross-entropy over those outputs can
  take: it never exceeds ln(C) by more than the spread (max - min) of a row of logits,
  so a median more than ``spread_slack`` times the output layer's spread (max - min of
  its sampled outputs over the first steps) above ln(C) is some other loss (a regression,
  a summed reduction, extra terms) and is left alone. Given ``classes``, the user said it
  is a classifier and this check is skipped.

Healthy classifiers start within about 10 % of ln(C) (the demo ConvNet: 2.2 for ln 10 =
2.30; the blobs MLP: 1.37 for ln 4 = 1.39); a last layer scaled up 50x starts at 10-20x.

Sample flag (``first_losses=3``): ``initial_loss (warning) at step 2: the first losses
(median 21.7 over steps 0-2) are 15.6x ln(4) = 1.386, the loss of a 4-class classifier at
chance``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from monitor.events import Event, Flag, Kind, Severity, Signal

KIND = "initial_loss"
#: Logged losses whose median is compared with ln(C). One by default: the loss of the
#: first step is the only one taken before any update; the next already show what the
#: learning rate did (a last layer scaled 50x starts at 26 on the demo, then jumps to 1400
#: at lr 0.05, which would hide the first under the median). More suit a loss logged per
#: micro-batch.
FIRST_LOSSES = 1
#: How many times ln(C) the initial loss may be before it is flagged.
FACTOR = 2.0
#: How many times the output layer's spread the loss may exceed ln(C) and still be a cross-entropy.
SPREAD_SLACK = 2.0

ADVICE = ("At initialisation a classifier should be unsure of every class, so its cross-entropy starts at about "
          "ln(C) (CS231n: look for correct loss at chance performance). A much higher first loss means the "
          "outputs start large and confidently wrong. Normalise the inputs (zero mean, unit variance); "
          "initialise the last layer small (PyTorch's default or Xavier init with a zero bias, or scale its "
          "weights down by 10-100x) and the other layers with Xavier/Kaiming, not N(0, 1); check that the loss "
          "is cross-entropy on logits with reduction='mean' and that the labels are class indices 0..C-1 "
          "matching the output size.")


@dataclass
class InitialLoss:
    """``update(event) -> list[Flag]`` over run_start, layer_stats and scalars; see the module."""

    classes: int | None = None
    first_losses: int = FIRST_LOSSES
    factor: float = FACTOR
    spread_slack: float = SPREAD_SLACK
    scalar: str = "loss"
    _shapes: dict[str, tuple[str, str]] | None = None  # layer -> (module, parameter shapes), from run_start
    _output: str | None = None  # the output layer, once looked for (None: not a Linear)
    _looked: bool = False
    _inferred: int | None = None
    _spread: float | None = None
    _passed: bool = False  # layer statistics of a step after the first losses have arrived
    _losses: list[tuple[int, float]] = field(default_factory=list)
    _done: bool = False

    def __post_init__(self):
        if self.classes is not None and (not isinstance(self.classes, int) or self.classes < 2):
            raise ValueError(f"classes: expected the number of classes (at least 2) or None to infer it "
                             f"from the output layer, got {self.classes!r}")
        if not isinstance(self.first_losses, int) or self.first_losses < 1:
            raise ValueError(f"first_losses: expected at least 1 logged loss, got {self.first_losses!r}")
        if not (self.factor > 1 and math.isfinite(self.factor)):
            raise ValueError(f"factor: expected a finite factor above 1, got {self.factor!r}")
        if not self.spread_slack > 0:
            raise ValueError(f"spread_slack: expected a positive factor, got {self.spread_slack!r}")
        if not isinstance(self.scalar, str) or not self.scalar:
            raise ValueError(f"scalar: expected the name of the loss scalar, got {self.scalar!r}")

    def update(self, event: Event) -> list[Flag]:
        if self._done:
            return []
        if event.kind is Kind.RUN_START and self._shapes is None:
            self._shapes = {m.name: (m.module, m.shape) for m in event.data.model}
        elif event.kind is Kind.LAYER_STATS:
            self._layers(event)
        elif event.kind is Kind.SCALARS:
            value = event.data.values.get(self.scalar)
            if value is not None and math.isfinite(value) and len(self._losses) < self.first_losses:
                self._losses.append((event.step, value))
        elif event.kind is Kind.RUN_END:
            return self._decide(event.step)
        return self._decide(event.step) if self._ready() else []

    def _layers(self, event: Event) -> None:
        activations = [s for s in event.data.summaries if s.signal is Signal.ACTIVATION]
        if not self._looked and activations:
            # Forward order: the last activation summary is what the model returns.
            self._looked = True
            module, shape = (self._shapes or {}).get(activations[-1].layer, ("", ""))
            if module == "Linear":
                self._output, self._inferred = activations[-1].layer, _out_features(shape)
        for s in activations:
            if s.layer == self._output and math.isfinite(s.max - s.min):
                self._spread = max(self._spread or 0.0, s.max - s.min)
        if len(self._losses) >= self.first_losses and event.step > self._losses[-1][0]:
            self._passed = True

    def _ready(self) -> bool:
        if len(self._losses) < self.first_losses:
            return False
        if self.classes is not None or (self._shapes is None and self._looked):
            return True
        return self._looked and (self._output is None or self._spread is not None or self._passed)

    def _decide(self, step: int) -> list[Flag]:
        self._done = True
        classes = self.classes or self._inferred
        if not self._losses or classes is None or classes < 2:
            return []
        median = statistics.median(v for _, v in self._losses)
        chance = math.log(classes)
        if not median > self.factor * chance:
            return []
        if self.classes is None and (self._spread is None or median - chance > self.spread_slack * self._spread):
            return []  # not a cross-entropy over the output layer's values: some other loss
        steps = [s for s, _ in self._losses]
        first = (f"the first loss ({median:.4g} at step {steps[0]}) is" if len(steps) == 1 else
                 f"the first losses (median {median:.4g} over steps {steps[0]}-{steps[-1]}) are")
        return [Flag(
            KIND, Severity.WARNING,
            f"{first} {median / chance:.3g}x ln({classes}) = "
            f"{chance:.4g}, the loss of a {classes}-class classifier at chance: the initial predictions are "
            f"confidently wrong", ADVICE, layer=self._output if self.classes is None else None,
            evidence={"losses": [v for _, v in self._losses], "steps": steps, "median": median,
                      "ln_classes": chance, "classes": classes, "inferred": self.classes is None,
                      "output_layer": self._output, "output_spread": self._spread, "factor": self.factor,
                      "step": step})]


def _out_features(shape: str) -> int | None:
    """C of a Linear's parameter shapes ``"CxH, C"`` (or ``"CxH"`` without a bias)."""
    dims = shape.split(",")[0].strip().split("x")
    return int(dims[0]) if len(dims) == 2 and dims[0].isdigit() else None
