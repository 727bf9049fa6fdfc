"""Which steps are sampled: a fixed interval, or one sized to an overhead budget.

Scalars (the loss) are recorded on every step whatever the schedule; the schedule only
decides when the per-layer statistics are taken. Step 0 is always sampled, so the first
loss, the initial distributions and the initial filters are on record.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Callable

#: Share of training time the automatic schedule may spend on statistics, as it
#: measures them. What it measures (a sampled step, its next few steps, the writer's CPU
#: time) misses part of the real cost of an occasional sample (caches refilled over many
#: steps, the writer competing for the cores): on the reference CPU workload a sample
#: costs about twice what is measured. Half a per cent measured keeps the total, with
#: the hooks' idle cost of about 1 %, under the 2 % of a step the benchmark holds.
OVERHEAD_BUDGET = 0.005
#: Interval used until a few plain and sampled steps have been timed.
INITIAL_EVERY = 10
#: Never sample less often than this, however cheap the steps: a run that goes wrong
#: in a thousand steps should still be seen going wrong.
MAX_EVERY = 1000
#: Plain steps after a sampled step that are charged with its aftermath (a fixed few:
#: over a whole interval the scatter of step times would drown the cost).
AFTERMATH_STEPS = 3
#: A plain step slower than this many median plain steps is not charged to a sample.
OUTLIER = 2.0
#: Recent plain and sampled steps whose median times set the interval. Medians, not
#: means: a validation pass or a checkpoint between two steps must not count as cost.
PLAIN_WINDOW, SAMPLED_WINDOW = 31, 5


class FixedInterval:
    """Sample every ``every`` steps, starting at step 0."""

    def __init__(self, every: int):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every: expected a whole number of steps >= 1 (or None for automatic), got {every!r}")
        self.every = every

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def observe(self, step: int, seconds: float, sampled: bool) -> None:
        pass

    def describe(self) -> dict:
        return {"mode": "fixed", "every": self.every}


class AutoInterval:
    """Sample as often as the budget allows, measured on this very run.

    The cost of a sample is what the sampled step and the :data:`AFTERMATH_STEPS` steps
    after it took beyond as many plain steps (the median plain step time): the sampled
    step's own extra and its aftermath (caches refilled, allocations settled). Steps
    slower than :data:`OUTLIER` plain steps (a validation pass, a checkpoint) are left
    out, and the median over the last few samples drops the rest of such accidents.
    ``background()`` adds the CPU time the writer thread spends on a sample (decoding,
    encoding), which the training thread does not see but pays for on a machine with
    few cores. The interval is the smallest that keeps that cost under ``budget`` of the
    plain step time: ``every = ceil(cost / (budget * plain))``. Step 0 is warm-up and is
    not timed; the first estimate comes at the second sampled step.
    """

    def __init__(self, budget: float = OVERHEAD_BUDGET, max_every: int = MAX_EVERY,
                 background: Callable[[], float] | None = None):
        if not 0 < budget < 1:
            raise ValueError(f"overhead budget: expected a fraction in (0, 1), got {budget!r}")
        self.budget = budget
        self.max_every = max_every
        self.background = background
        self.every = INITIAL_EVERY
        self.next_due = 0
        self.plain_times: deque[float] = deque(maxlen=PLAIN_WINDOW)
        self.extra_times: deque[float] = deque(maxlen=SAMPLED_WINDOW)
        self.interval: list[float] | None = None  # the last sampled step's time and its aftermath's

    def due(self, step: int) -> bool:
        return step >= self.next_due

    def observe(self, step: int, seconds: float, sampled: bool) -> None:
        """Called once per finished step with its wall time and whether it was sampled."""
        if step == 0:  # warm-up: allocator growth, lazy initialisation
            self.next_due = self.every
            return
        if not sampled:
            self.plain_times.append(seconds)
            if self.interval is not None and len(self.interval) <= AFTERMATH_STEPS:
                self.interval.append(seconds)
            return
        if self.interval and self.plain_times:
            plain = statistics.median(self.plain_times)
            sampled_step, *after = self.interval
            # Signed differences, so that noise cancels instead of adding up; a step slower
            # than OUTLIER plain steps is something else (validation, a checkpoint, another
            # process) and is left out.
            aftermath = sum(t - plain for t in after if t <= OUTLIER * plain)
            self.extra_times.append(max(sampled_step - plain + aftermath, 0.0))
            extra = statistics.median(self.extra_times) + (self.background() if self.background else 0.0)
            # (less a hair: a sum of step times carries float rounding that must not add a step)
            wanted = math.ceil(extra / (self.budget * plain) - 1e-6) if plain > 0 else self.max_every
            self.every = min(max(wanted, 1), self.max_every)
        self.interval = [seconds]
        self.next_due = step + self.every

    def describe(self) -> dict:
        return {"mode": "auto", "budget": self.budget, "every": self.every}


def make_schedule(every: int | None, budget: float = OVERHEAD_BUDGET,
                  background: Callable[[], float] | None = None):
    return AutoInterval(budget, background=background) if every is None else FixedInterval(every)
