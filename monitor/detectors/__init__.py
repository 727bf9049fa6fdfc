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
