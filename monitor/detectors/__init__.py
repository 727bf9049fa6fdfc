"""Detectors: pure functions of the event stream that say when training goes wrong.

Each detector is one module with one class whose ``update(event) -> list[Flag]`` reads a
stored event (plain data, no torch) and keeps a small explicit state; its docstring cites
the heuristic and its thresholds are keyword-only named defaults. Detectors decide; the
training process's handle acts (records the flag, prints it, stops the run when asked), so
the same detectors run in a training process or over a stored run.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Protocol

from monitor.events import Event, Flag


class Detector(Protocol):
    """What every detector is. Two optional methods let it take part in the run beyond
    raising flags (the training process calls them when they exist):

    * ``look_closer() -> int``: asked after each event; a detector that has seen a
      suspicious reading it cannot yet confirm answers how many of the next steps it
      wants sampled (0: none). The schedule grants it within the overhead budget, so a
      suspicion is confirmed or dropped in a few steps instead of a few intervals.
    * ``explain_stop(cause: str, metric: str | None, step: int) -> list[Flag]``: asked
      when the run is stopped (``cause`` a ``monitor.early_stopping.StopCause`` value,
      ``metric`` the early-stopping metric for its stops), after it has seen every
      event before the stop: the flags that say why, from its own evidence (an
      overfitting run ended by early stopping carries its ``overfitting`` flag).
    """

    def update(self, event: Event) -> list[Flag]: ...


def default_detectors() -> list[Detector]:
    """The detectors ``watch`` runs unless told otherwise, each with its default thresholds
    (fresh state: one list per run)."""
    from monitor.detectors.dead_relu import DeadRelu
    from monitor.detectors.divergence import Divergence
    from monitor.detectors.exploding_gradient import ExplodingGradient
    from monitor.detectors.initial_loss import InitialLoss
    from monitor.detectors.input_normalization import InputNormalization
    from monitor.detectors.overfitting import Overfitting
    from monitor.detectors.plateau import Plateau
    from monitor.detectors.saturation import Saturation
    from monitor.detectors.update_ratio import UpdateRatio
    from monitor.detectors.vanishing_gradient import VanishingGradient

    return [Divergence(), InitialLoss(), InputNormalization(), DeadRelu(), Saturation(), VanishingGradient(),
            ExplodingGradient(), UpdateRatio(), Plateau(), Overfitting()]


def diagnose(detectors: Iterable[Detector], events: Iterable[Event]) -> list[tuple[Event, Flag]]:
    """Every flag the detectors raise over ``events``, with the event that raised it (and
    its step, when the detector did not set one)."""
    detectors = list(detectors)
    return [(event, flag if flag.step is not None else replace(flag, step=event.step))
            for event in events for detector in detectors for flag in detector.update(event)]
