"""Overfitting: the validation loss rises while the training loss keeps falling.

Heuristic (CS231n, "babysitting the learning process" and "regularization"): the gap
between training and validation loss is the overfitting signal. Once the network starts
memorising its training set, the training loss goes on falling while the validation loss
turns and climbs; the best weights were those of the best validation loss, and early
stopping would have kept them. The training loss is averaged over each evaluation
interval (the steps logged since the previous evaluation), so one noisy batch cannot
decide, and ``patience`` counts evaluations (not epochs or steps), as in Keras.

How far the validation loss must climb is measured against the loss's own scale, the
first training loss (ln C for a C-class classifier at init): ``min_rise`` is a fraction
of it, so one default fits any loss. Measured: the healthy demo CNN's validation loss
wobbles by 0.02 (0.9 % of its first loss 2.3) around 0.03 once it has converged; the demo
on 100 images climbs from 0.42 to 0.63 (5 to 9 %) while its training loss falls from
0.06 to 0.004.

Rule, flagged once per run (warning): for ``patience`` evaluations in a row the
validation loss is above its best by more than ``min_rise`` times the first training
loss, and the training loss of the latest interval is more than ``min_fall`` (10 %)
below the one at the best evaluation. The validation metric is ``val_loss`` (``monitor``), the training loss
``loss`` (``train``); without a training loss nothing is flagged.

Sample flag: ``overfitting (warning) at step 59: val_loss has risen for 3 evaluations
(0.619 at epoch 14, best 0.42 at epoch 11) while the training loss fell from 0.0608 to
0.00413; the gap is 0.615``, with advice to stop early, add data or regularise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.detectors.common import is_count, require
from monitor.events import Event, Flag, Kind, Severity

KIND = "overfitting"
#: Evaluations in a row the validation loss must stay risen above its best.
PATIENCE = 3
#: How far above its best it must be, as a fraction of the first training loss (2 %).
MIN_RISE = 0.02
#: How much the training loss must have fallen since the best evaluation, relative (10 %):
#: a flat training loss with a noisy validation loss (random labels, a learning rate too
#: low) is not memorising; an overfitting one falls by 90 % and more.
MIN_FALL = 0.1

ADVICE = ("Stop early and keep the best weights (EarlyStopping(monitor='val_loss', restore_best_weights=True), "
          "or reload the checkpoint of the best epoch); get more data or augment it (flips, crops, shifts, "
          "noise, cutout, mixup); regularise: weight decay, dropout on large fully-connected layers, label "
          "smoothing; or use a smaller model.")


@dataclass
class Overfitting:
    """``update(event) -> list[Flag]`` over training and validation scalars; see the module."""

    patience: int = PATIENCE
    min_rise: float = MIN_RISE
    min_fall: float = MIN_FALL
    monitor: str = "val_loss"
    train: str = "loss"
    _scale: float | None = None  # the first finite training loss
    _sum: float = 0.0  # training losses of the current evaluation interval
    _count: int = 0
    _train: float | None = None  # the mean of the last interval that had training losses
    _best: float | None = None
    _best_step: int | None = None
    _best_epoch: float | None = None
    _best_train: float | None = None
    _risen: int = 0
    _fired: bool = False

    def __post_init__(self):
        require("patience", self.patience, is_count, "an integer >= 1 (evaluations)")
        require("min_rise", self.min_rise, lambda v: 0 <= v < math.inf,
                "a fraction >= 0 of the first training loss")
        require("min_fall", self.min_fall, lambda v: 0 <= v < 1, "a fraction in [0, 1) of the training loss")
        for name in ("monitor", "train"):
            require(name, getattr(self, name), lambda v: isinstance(v, str) and v, "the name of a logged scalar")
        if self.monitor == self.train:
            raise ValueError(f"monitor: expected a validation metric other than train={self.train!r}, "
                             f"got {self.monitor!r}")

    def update(self, event: Event) -> list[Flag]:
        if self._fired or event.kind is not Kind.SCALARS:
            return []
        values = event.data.values
        loss = values.get(self.train)
        if loss is not None and math.isfinite(loss):
            if self._scale is None:
                self._scale = abs(loss)
            self._sum += loss
            self._count += 1
        val = values.get(self.monitor)
        if val is None or not math.isfinite(val):
            return []  # not an evaluation, or one that diverged (the divergence rule's business)
        if self._count:
            self._train, self._sum, self._count = self._sum / self._count, 0.0, 0
        if self._best is None or val < self._best:
            self._best, self._best_step, self._best_epoch = val, event.step, values.get("epoch")
            self._best_train, self._risen = self._train, 0
            return []
        rise = self.min_rise * (self._scale or 0.0)
        self._risen = self._risen + 1 if val > self._best + rise else 0
        if (self._risen < self.patience or self._train is None or self._best_train is None
                or not self._train < (1 - self.min_fall) * self._best_train):
            return []
        self._fired = True
        return [self._flag(event, val, values.get("epoch"), rise)]

    def _flag(self, event: Event, val: float, epoch: float | None, rise: float) -> Flag:
        def when(step, epoch):
            return f"epoch {epoch:g}" if epoch is not None and math.isfinite(epoch) else f"step {step}"

        gap = val - self._train
        message = (f"{self.monitor} has risen for {self._risen} evaluations ({val:.4g} at "
                   f"{when(event.step, epoch)}, best {self._best:.4g} at {when(self._best_step, self._best_epoch)}) "
                   f"while the training {self.train} fell from {self._best_train:.3g} to {self._train:.3g}; "
                   f"the gap is {gap:.3g}")
        return Flag(KIND, Severity.WARNING, message, ADVICE, evidence={
            "monitor": self.monitor, "step": event.step, "epoch": epoch, "value": val,
            "best": self._best, "best_step": self._best_step, "best_epoch": self._best_epoch,
            "train_loss": self._train, "train_loss_at_best": self._best_train, "gap": gap,
            "evaluations": self._risen, "patience": self.patience, "min_rise": self.min_rise,
            "min_fall": self.min_fall,
            "rise_threshold": rise, "loss_scale": self._scale})
