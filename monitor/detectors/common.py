"""What several detectors share: option checks, per-layer streaks and severities, and the
smoothed loss that tells a network that learned from one that is stuck."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from monitor.events import Severity

#: Span of the loss's exponential moving average, in logged values (alpha = 2 / (span + 1)).
SPAN = 20


def require(name: str, value, test, expected: str) -> None:
    """Refuse an option that cannot work: a ValueError naming it, what came and what is expected."""
    try:
        ok = not isinstance(value, bool) and bool(test(value))
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def require_bars(name: str, bar: float, critical: float) -> None:
    """Refuse a warning bar (a fraction in [0, 1)) and a critical one above it (at most 1)
    that cannot work, naming the option at fault."""
    require(name, bar, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
    require("critical_fraction", critical, lambda v: bar < v <= 1,
            f"a fraction above {name} ({bar}) and at most 1")


def is_count(value) -> bool:
    return isinstance(value, int) and value >= 1


@dataclass
class SmoothedLoss:
    """The EMA of a scalar and its first value: how far a loss has come.

    The other rules use it to tell a network that learned (loss near its floor, small
    gradients and updates by design) from one that is stuck.
    """

    span: int = SPAN
    first: float | None = None
    value: float | None = None

    def add(self, x: float | None) -> bool:
        """Fold in one logged value; non-finite ones are skipped (the divergence rule's business)."""
        if x is None or not math.isfinite(x):
            return False
        if self.value is None:
            self.first = self.value = x
        else:
            alpha = 2.0 / (self.span + 1)
            self.value += alpha * (x - self.value)
        return True

    def level(self, floor: float = 0.0) -> float | None:
        """Where the EMA stands between ``floor`` (0) and its first value (1); None when unknown."""
        if self.value is None or not self.first > floor:
            return None
        return (self.value - floor) / (self.first - floor)


@dataclass
class Streaks:
    """Per layer, how many samples in a row a condition has held (a layer absent from a sample keeps its count)."""

    counts: dict[str, int] = field(default_factory=dict)

    def update(self, verdicts: dict[str, bool]) -> None:
        for layer, out in verdicts.items():
            self.add(layer, out)

    def add(self, layer: str, out: bool) -> int:
        """One more sample of ``layer``: its streak, grown or reset."""
        count = self.counts[layer] = self.counts.get(layer, 0) + 1 if out else 0
        return count

    def at_least(self, window: int) -> set[str]:
        return {layer for layer, n in self.counts.items() if n >= window}


@dataclass
class LayerSeverity:
    """Once per layer and severity: a warning may be followed by one critical flag when
    things get worse, never by another warning, and nothing follows a critical one."""

    flagged: dict[str, Severity] = field(default_factory=dict)

    def first(self, layer: str, severity: Severity) -> bool:
        """Whether this layer's flag at ``severity`` is news (and remember it if so)."""
        before = self.flagged.get(layer)
        if before is Severity.CRITICAL or before is severity:
            return False
        self.flagged[layer] = severity
        return True
