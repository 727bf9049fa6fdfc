"""What several detectors share: option checks, persistence that means the same at any
sampling interval, per-layer severities, and the smoothed loss that tells a network that
learned from one that is stuck."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from monitor.events import Severity

#: Span of the loss's exponential moving average, in logged values (alpha = 2 / (span + 1)).
SPAN = 20
#: Fewest training steps a condition must hold, from the first sample that shows it to the
#: one that confirms it, before a layer rule flags. Persistence counted in samples means
#: 3 steps at ``every=1`` (consecutive batches are correlated: a transient) and 900 at an
#: interval of 300; counted in steps it means the same at any interval. Ten steps: an
#: init-time problem is confirmed by step 10 while every step is sampled at the start, and
#: a detector that sees a suspicious sample asks for the next ten to be sampled.
MIN_STEPS = 10
#: Fewest samples showing the condition (with no sample against it in between): one odd
#: batch never decides, however far apart the samples are.
MIN_SAMPLES = 3


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
class Persistence:
    """Per key (a layer, a direction): since which step a condition has held on every
    sample of it, and on how many samples. Confirmed once it has held on at least
    ``min_samples`` samples spanning at least ``min_steps`` steps, so that more samples
    never make a flag easier: at ``every=1`` the span decides, at a coarse interval the
    count does. A sample against the condition starts it over; a key absent from a sample
    keeps its state."""

    min_samples: int = MIN_SAMPLES
    min_steps: int = MIN_STEPS
    since: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, step: int, out: bool, since: int | None = None) -> bool:
        """One more sample of ``key`` at ``step``; ``since``: the earliest step this sample's
        evidence covers (a window of batches), default ``step``. Whether it is confirmed now."""
        if not out:
            for held in (self.since, self.samples, self.last):
                held.pop(key, None)
            return False
        start = step if since is None else min(since, step)
        self.since[key] = min(self.since.get(key, start), start)
        if self.last.get(key) != step:  # two readings of one step (a sample and its vital signs) are one sample
            self.samples[key] = self.samples.get(key, 0) + 1
        self.last[key] = step
        return self.confirmed(key, step)

    def confirmed(self, key: str, step: int) -> bool:
        return (self.samples.get(key, 0) >= self.min_samples
                and step - self.since.get(key, step) >= self.min_steps)

    def span(self, key: str, step: int) -> int:
        """Steps the condition has held for ``key`` up to ``step`` (0 when it does not hold)."""
        return step - self.since[key] if key in self.since else 0

    def pending(self, done=()) -> bool:
        """Whether some key (not in ``done``) holds the condition but is not yet confirmed."""
        return any(key not in done for key in self.since)


def theil_sen_slope(values: list[float]) -> float:
    """The median of the slopes between every pair of values (per position): a trend that
    a few outliers cannot set (Sen 1968), 0 with fewer than two values."""
    slopes = [(b - a) / (j - i) for i, a in enumerate(values) for j, b in enumerate(values) if j > i]
    return statistics.median(slopes) if slopes else 0.0


def require_persistence(min_samples, min_steps) -> None:
    require("min_samples", min_samples, is_count, "an integer >= 1 (samples)")
    require("min_steps", min_steps, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (steps)")


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
