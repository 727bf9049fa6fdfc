"""The detect-and-decide stage of a run: detectors and the stop decision over decoded events.

Pure (no torch, no threads): the training process's writer runs it on each event before
the event is committed (:mod:`trainer_hooks.writer`), and acts on the :class:`Verdict`
(records and prints the flags, stops the run, samples the next steps). The same stage
replays a stored run.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from monitor.detectors import Detector, diagnose
from monitor.early_stopping import EarlyStopping, StopReason
from monitor.events import Event, Flag, Kind

#: Events after which the detectors are asked whether they want a closer look: the
#: sampled statistics, where suspicions about layers arise (the every-step signs need no
#: sampling to be confirmed, and asking on each of them would cost every step).
LOOK_AFTER = frozenset({Kind.LAYER_STATS, Kind.INPUT_STATS})
#: Flags that a divergence already explains once it has been raised: after the loss has
#: blown up (or gone NaN) the weights are wrecked, so what their layers show next
#: (saturated units, vanishing gradients, update/weight ratios whose denominator is the
#: blown-up or NaN weights, a loss that no longer falls) is the divergence seen from
#: elsewhere, with advice that can contradict its own (raise the learning rate); so is a
#: validation loss that rises from a best the wrecked weights set (a diverged MLP's went
#: from 2.5e31 to 1.3e32: not overfitting, and "regularise" would be the wrong advice).
#: Dead units are not in the list: they are lasting damage with a remedy of their own,
#: and neither are exploding gradients, which are how a divergence happens.
EXPLAINED_BY_DIVERGENCE = frozenset({"saturation", "vanishing_gradient", "update_ratio", "plateau", "overfitting"})


@dataclass(frozen=True)
class Verdict:
    """What the stage says about one event: the flags raised (their steps set), a stop to
    ask for (a flag the policy stops on), and how many of the next steps to sample."""

    flags: tuple[Flag, ...] = ()
    stop: StopReason | None = None
    look: int = 0


class Diagnosis:
    """The run's detectors and its early-stopping policy (which decides on flags here;
    its metric decisions are the training thread's, where the metric is logged). Once a
    divergence is flagged, the flags it explains (:data:`EXPLAINED_BY_DIVERGENCE`) are
    no longer raised: one story, with one piece of advice."""

    def __init__(self, detectors: Iterable[Detector], early_stopping: EarlyStopping | None = None):
        self.detectors = list(detectors)
        self.early_stopping = early_stopping
        self._lookers = [d for d in self.detectors if callable(getattr(d, "look_closer", None))]
        self._explainers = [d for d in self.detectors if callable(getattr(d, "explain_stop", None))]
        self._raised: set[tuple[str, str | None]] = set()
        self._diverged = False

    def event(self, event: Event) -> Verdict:
        flags = tuple(flag for _, flag in diagnose(self.detectors, [event]))
        self._diverged = self._diverged or any(f.kind == "divergence" for f in flags)
        if self._diverged:
            flags = tuple(f for f in flags if f.kind not in EXPLAINED_BY_DIVERGENCE)
        self._raised.update((f.kind, f.layer) for f in flags)
        stop = None
        if self.early_stopping is not None:
            stop = next((reason for flag in flags
                         for reason in [self.early_stopping.update_flag(flag, flag.step)] if reason is not None),
                        None)
        look = max((d.look_closer() for d in self._lookers), default=0) if event.kind in LOOK_AFTER else 0
        return Verdict(flags, stop, look)

    def stopped(self, reason: StopReason) -> Verdict:
        """The flags that explain a stop, from the detectors' own evidence (one per kind
        and layer not raised before)."""
        metric = self.early_stopping.monitor if self.early_stopping is not None else None
        flags = []
        for detector in self._explainers:
            for flag in detector.explain_stop(reason.cause.value, metric, reason.step):
                key = (flag.kind, flag.layer)
                if key not in self._raised and not (self._diverged and flag.kind in EXPLAINED_BY_DIVERGENCE):
                    self._raised.add(key)
                    flags.append(flag if flag.step is not None else replace(flag, step=reason.step))
        return Verdict(tuple(flags))

