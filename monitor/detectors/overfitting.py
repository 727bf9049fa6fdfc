"""Overfitting: the validation loss rises while the training loss keeps falling.

Heuristic (CS231n, "babysitting the learning process" and "regularization"): the gap
between training and validation loss is the overfitting signal. Once the network starts
memorising its training set, the training loss goes on falling while the validation loss
turns and climbs; the best weights were those of the best validation loss, and early
stopping would have kept them. The training loss is averaged over each evaluation
interval (the steps logged since the previous evaluation), so one noisy batch cannot
decide, and ``patience`` counts evaluations (not epochs or steps), as in Keras.

How far the validation loss must climb is measured against its own best, as Prechelt's
*generalisation loss* (Prechelt 1998, "Early stopping, but when?": GL = val / best - 1,
his criteria stop at GL above 1 to 5 %): relative, so it is as sensitive for a model that
learned a lot (best 0.05) as for one that learned little (best 2.0). ``min_rise`` is 10 %,
twice Prechelt's largest stopping bar, because this rule warns on the run as it goes and
the validation loss of a converged model wobbles by a few per cent. The gap between the
training and validation loss must have widened too: the training loss of the latest
interval is more than ``min_fall`` (10 %) below the one at the best evaluation (a flat
training loss under a noisy validation loss is not memorising).

The rise must also stand out of the validation loss's own noise: more than ``noise`` (2)
times its evaluation-to-evaluation scatter, read from the median absolute *second*
difference of the evaluations (a steady trend, falling or rising, has none; a converged
validation loss that wobbles by 30 % around 0.03, as the healthy demo's does, has
plenty).

Rule, flagged once per run (warning): for ``patience`` evaluations in a row the
validation loss is more than ``min_rise`` above its best (relative) and more than
``noise`` times its scatter, while the training loss fell by ``min_fall``. The validation
metric is ``val_loss`` (``monitor``), the
training loss ``loss`` (``train``); without a training loss nothing is flagged. When
early stopping ends the run on this metric before the rule fired
(:meth:`Overfitting.explain_stop`), the flag is raised then if the training loss fell by
``min_fall`` since the best evaluation while the validation loss stayed above its best:
the run's story says why it stopped.

Sample flag: ``overfitting (warning) at step 59: val_loss has risen for 3 evaluations
(0.619 at epoch 14, 47% above its best 0.42 at epoch 11) while the training loss fell from
0.0608 to 0.00413; the gap is 0.615 (0.359 at the best)``, with advice to stop early, add
data or regularise.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from monitor.detectors.common import is_count, require, theil_sen_slope
from monitor.events import Event, Flag, Kind, Severity

KIND = "overfitting"
#: Evaluations in a row the validation loss must stay risen above its best.
PATIENCE = 3
#: How far above its best the validation loss must be, relative to the best (10 %; see the module).
MIN_RISE = 0.1
#: Times the validation loss's scatter (a robust std from its second differences) the rise must exceed.
NOISE = 2.0
#: How far above its best the validation loss must stand (at the last evaluation and in
#: the median since the best) when early stopping ends the run for the stop to be put
#: down to overfitting (5 %: Prechelt's GL5 criterion, "Early stopping - but when?",
#: 1998; half the bar of the flag raised during the run, as early stopping has already
#: found that validation stopped improving). The evaluations since the best must also
#: climb (Prechelt's UP criterion, read robustly: a Theil-Sen slope >= 0) or stand where
#: the rule during the run calls them risen (``min_rise``, 10 %, in their median): a
#: converged ConvNet's validation loss wobbles 2-11 % above its best for thousands of
#: steps while its training loss creeps down, and that is no story of memorising.
STOP_RISE = 0.05
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
    noise: float = NOISE
    stop_rise: float = STOP_RISE
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
    _last: tuple | None = None  # (step, value, epoch) of the latest evaluation
    _vals: list = field(default_factory=list)  # every finite evaluation, for the scatter
    _best_index: int = 0  # the best evaluation's place in _vals
    _risen: int = 0
    _fired: bool = False

    def __post_init__(self):
        require("patience", self.patience, is_count, "an integer >= 1 (evaluations)")
        require("min_rise", self.min_rise, lambda v: 0 <= v < math.inf,
                "a fraction >= 0 of the best validation loss")
        require("min_fall", self.min_fall, lambda v: 0 <= v < 1, "a fraction in [0, 1) of the training loss")
        require("noise", self.noise, lambda v: 0 <= v < math.inf, "a finite number of standard deviations >= 0")
        require("stop_rise", self.stop_rise, lambda v: 0 <= v < math.inf,
                "a fraction >= 0 of the best validation loss")
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
        self._last = (event.step, val, values.get("epoch"))
        self._vals.append(val)
        if self._best is None or val < self._best:
            self._best_index = len(self._vals) - 1
            self._best, self._best_step, self._best_epoch = val, event.step, values.get("epoch")
            self._best_train, self._risen = self._train, 0
            return []
        rise = max(self.min_rise * abs(self._best), self.noise * self._scatter())
        self._risen = self._risen + 1 if val > self._best + rise else 0
        if self._risen < self.patience or not self._train_fell() or not self._gap_grew(val):
            return []
        self._fired = True
        return [self._flag(event.step, val, values.get("epoch"), rise)]

    def _scatter(self) -> float:
        """A robust std of one evaluation's noise: the median absolute second difference of
        the evaluations / 0.6745 / sqrt(6) (0 with fewer than three). Read from the best
        evaluation on, where the rise is judged (the steep descent before it curves a lot
        and would pass for noise), or over all of them while there are fewer than three."""
        v = self._vals[self._best_index:] if len(self._vals) - self._best_index >= 3 else self._vals
        second = [abs(a - 2 * b + c) for a, b, c in zip(v, v[1:], v[2:])]
        return statistics.median(second) / 0.6745 / math.sqrt(6) if second else 0.0

    def _gap_grew(self, val: float) -> bool:
        """Whether the model now does better on its training data than on held-out data
        (validation above training: a validation loss still below the training loss is
        a model that generalises as well as it fits, as early in training, or under
        dropout) and by more than at the best evaluation: the gap is what memorising widens."""
        if self._train is None or self._best_train is None:
            return False
        gap = val - self._train
        return gap > 0 and gap > self._best - self._best_train

    def _train_fell(self) -> bool:
        return (self._train is not None and self._best_train is not None
                and self._train < (1 - self.min_fall) * self._best_train)

    def explain_stop(self, cause: str, metric: str | None, step: int) -> list[Flag]:
        """Early stopping ended the run on our metric: if the validation loss stands more
        than ``stop_rise`` (5 %) above its best and beyond its own noise (``noise`` times
        its scatter since the best), at its last evaluation and in the median of the
        evaluations since the best (the ones early stopping waited through: one spike at
        the end is not a trend), and those evaluations either do not trend down or stand
        ``min_rise`` (10 %, the bar during the run) above the best in their median, while the
        training loss fell by ``min_fall`` and the train/validation gap widened (and is
        positive), that is overfitting, and the run carries the flag (unless it already
        does). A validation loss that only stopped improving (flat within its noise, or a
        spike at the stop) is a plateau of the validation loss, not overfitting: no flag."""
        if self._fired or cause != "early_stopping" or metric != self.monitor or self._last is None:
            return []
        last_step, val, epoch = self._last
        if self._count:  # training losses logged after the last evaluation
            self._train, self._sum, self._count = self._sum / self._count, 0.0, 0
        rise = max(self.noise * self._scatter(), self.stop_rise * abs(self._best))
        since = self._vals[self._best_index + 1:]
        typical = statistics.median(since) if since else -math.inf
        climbing = theil_sen_slope(since) >= 0 or typical > self._best + self.min_rise * abs(self._best)
        if not (min(val, typical) > self._best + rise and climbing and last_step > self._best_step
                and self._train_fell() and self._gap_grew(val)):
            return []
        self._fired = True
        return [self._flag(last_step, val, epoch, rise, stopped=True)]

    def _flag(self, step: int, val: float, epoch: float | None, rise: float, stopped: bool = False) -> Flag:
        def when(step, epoch):
            return f"epoch {epoch:g}" if epoch is not None and math.isfinite(epoch) else f"step {step}"

        gap = val - self._train
        gap_at_best = self._best - self._best_train
        relative = val / self._best - 1 if self._best else math.inf
        lead = (f"early stopping ended the run: {self.monitor} stopped improving ({val:.4g} at {when(step, epoch)}"
                if stopped else f"{self.monitor} has risen for {self._risen} evaluations ({val:.4g} at "
                f"{when(step, epoch)}")
        message = (f"{lead}, {relative:.0%} above its best {self._best:.4g} at "
                   f"{when(self._best_step, self._best_epoch)}) while the training {self.train} fell from "
                   f"{self._best_train:.3g} to {self._train:.3g}; the gap is {gap:.3g} ({gap_at_best:.3g} at the best)")
        return Flag(KIND, Severity.WARNING, message, ADVICE, evidence={
            "monitor": self.monitor, "step": step, "epoch": epoch, "value": val, "relative_rise": relative,
            "gap_at_best": gap_at_best, "stopped": stopped,
            "best": self._best, "best_step": self._best_step, "best_epoch": self._best_epoch,
            "train_loss": self._train, "train_loss_at_best": self._best_train, "gap": gap,
            "evaluations": self._risen, "patience": self.patience, "min_rise": self.min_rise,
            "min_fall": self.min_fall, "noise": self.noise, "scatter": self._scatter(),
            "rise_threshold": rise, "loss_scale": self._scale})
