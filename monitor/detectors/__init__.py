"""Detectors: pure functions of the event stream that say when training goes wrong.

Each detector is one module with one class whose ``update(event) -> list[Flag]`` reads a
stored event (plain data, no torch) and keeps a small explicit state; its docstring cites
the heuristic and its thresholds are keyword-only named defaults. Detectors decide; the
training process's handle acts (records the flag, prints it, stops the run when asked), so
the same detectors run in a training process or over a stored run.
"""
from __future__ import annotations

from typing import Iterable, Protocol

from monitor.events import Event, Flag


class Detector(Protocol):
    def update(self, event: Event) -> list[Flag]: ...


def default_detectors() -> list[Detector]:
    """The detectors ``watch`` runs unless told otherwise, with their default thresholds."""
    from monitor.detectors.divergence import Divergence

    return [Divergence()]


def diagnose(detectors: Iterable[Detector], events: Iterable[Event]) -> list[tuple[Event, Flag]]:
    """Every flag the detectors raise over ``events``, with the event that raised it."""
    detectors = list(detectors)
    return [(event, flag) for event in events for detector in detectors for flag in detector.update(event)]
