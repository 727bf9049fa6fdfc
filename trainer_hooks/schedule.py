"""Which steps are sampled: a fixed interval, or a schedule led by what diagnosis needs
inside an overhead budget.

Scalars (the loss) are recorded on every step whatever the schedule, and the vital signs
(gradient norms) on every step their own budget allows (:class:`VitalsCadence`); the
schedule decides when the full per-layer statistics are taken. Step 0 is always sampled,
so the first loss, the initial distributions and the initial filters are on record.

The automatic schedule (``every=None``, the default) has three parts:

* **the start**: the first :data:`START_STEPS` steps are all sampled. Problems present at
  initialisation (dead units, saturation, vanishing or exploding gradients, an input that
  is not normalised, a broken first loss) are there from step 0, and the detectors want a
  few samples in a row to confirm them: a person checks exactly these in the first
  minutes (CS231n, "babysitting the learning process"; Karpathy's recipe). It is paid once.
* **the ramp**: then the gaps double (2, 4, 8, ... steps) until they reach the budget
  interval: training changes fastest early;
* **the budget interval**: as often as :data:`OVERHEAD_BUDGET` of the measured step time
  allows (see :class:`AutoInterval`), at least every :data:`MAX_EVERY` steps;
* and at any time, **a closer look**: a detector that sees a suspicious reading asks for
  the next few steps (:meth:`AutoInterval.look`), at most :data:`MAX_LOOK` at once. Those
  samples are owed to the budget and repaid by doubling the next regular gaps; while
  :data:`MAX_DEBT` samples are owed, requests wait.
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
#: Steps sampled one after another at the start of training (see the module).
START_STEPS = 24
#: The first gap of the ramp after the start, in steps; it doubles at each sample.
RAMP_FIRST_GAP = 2
#: Most steps one request of a detector adds to the closer look.
MAX_LOOK = 16
#: Most requested samples owed to the budget; beyond it requests wait until some are repaid.
MAX_DEBT = 32
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

    def look(self, step: int, steps: int) -> bool:
        """A fixed interval is what the user chose: a detector's request is not granted."""
        return False

    def describe(self) -> dict:
        return {"mode": "fixed", "every": self.every}


class NoSamples:
    """Never sample: a distributed run's other ranks, whose layers rank 0 records (their
    scalars are recorded on every step all the same, and their vital signs as on any rank)."""

    def __init__(self, why: str):
        self.why = why

    def due(self, step: int) -> bool:
        return False

    def observe(self, step: int, seconds: float, sampled: bool) -> None:
        pass

    def look(self, step: int, steps: int) -> bool:
        return False

    def describe(self) -> dict:
        return {"mode": "none", "why": self.why}


class AutoInterval:
    """The start, the ramp, then as often as the budget allows, measured on this very run,
    and closer looks on request (see the module).

    The cost of a sample is what the sampled step and the :data:`AFTERMATH_STEPS` steps
    after it took beyond as many plain steps (the median plain step time): the sampled
    step's own extra and its aftermath (caches refilled, allocations settled). Steps
    slower than :data:`OUTLIER` plain steps (a validation pass, a checkpoint) are left
    out, and the median over the last few samples drops the rest of such accidents.
    ``background()`` adds the CPU time the writer thread spends on a sample (decoding,
    encoding), which the training thread does not see but pays for on a machine with
    few cores. The interval is the smallest that keeps that cost under ``budget`` of the
    plain step time: ``every = ceil(cost / (budget * plain))``. Step 0 is warm-up and is
    not timed; the first estimate comes once the ramp leaves plain steps between samples.

    ``due`` is a pure read (it may be asked several times per step, and from the
    training thread only); ``look`` may be called from the writer's detect stage.
    """

    def __init__(self, budget: float = OVERHEAD_BUDGET, max_every: int = MAX_EVERY,
                 background: Callable[[], float] | None = None, start_steps: int = START_STEPS):
        if not 0 < budget < 1:
            raise ValueError(f"overhead budget: expected a fraction in (0, 1), got {budget!r}")
        self.budget = budget
        self.max_every = max_every
        self.background = background
        self.start_steps = start_steps
        self.every = INITIAL_EVERY
        self.gap = RAMP_FIRST_GAP  # the ramp's next gap, until it reaches every
        self.next_due = 0
        self.look_until = 0  # steps before this one are sampled on a detector's request
        self.debt = 0  # requested samples not yet repaid
        self.granted = 0  # requested samples taken, over the run
        self.plain_times: deque[float] = deque(maxlen=PLAIN_WINDOW)
        self.extra_times: deque[float] = deque(maxlen=SAMPLED_WINDOW)
        self.interval: list[float] | None = None  # the last sampled step's time and its aftermath's

    def due(self, step: int) -> bool:
        return (step < self.start_steps or step >= self.next_due
                or (step < self.look_until and self.debt < MAX_DEBT))

    def look(self, step: int, steps: int) -> bool:
        """A detector asks for ``steps`` steps from ``step`` on to be sampled; granted (True)
        unless :data:`MAX_DEBT` samples are owed already."""
        if steps < 1 or self.debt >= MAX_DEBT:
            return False
        self.look_until = max(self.look_until, step + min(steps, MAX_LOOK))
        return True

    def observe(self, step: int, seconds: float, sampled: bool) -> None:
        """Called once per finished step with its wall time and whether it was sampled."""
        if sampled and step >= self.start_steps:
            if step >= self.next_due:  # a regular sample: the next one, owed samples repaid first
                gap = min(self.gap, self.every)
                self.gap = min(self.gap * 2, self.max_every)
                if self.debt:
                    self.debt -= 1
                    gap *= 2
                self.next_due = step + gap
            else:  # a closer look a detector asked for
                self.debt += 1
                self.granted += 1
        elif sampled:
            self.next_due = step + 1
        if step == 0:  # warm-up: allocator growth, lazy initialisation
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

    def describe(self) -> dict:
        return {"mode": "auto", "budget": self.budget, "every": self.every, "start": self.start_steps}


#: Share of the step time the vital signs may take on the training thread. A pass over every
#: gradient costs what it costs in memory traffic, not in arithmetic: about 2 % of a step of
#: a conv net (its compute is large for its parameters), 5 to 8 % of a small-batch MLP's,
#: a fraction of one per cent of a large model's on a GPU. The budget takes them on every
#: step where they are cheap and thins them where not, so that no model pays more than this
#: for them.
VITALS_BUDGET = 0.002
#: Steps at the start whose vital signs are all read: the exploding-gradient rule's early
#: reference is the median over the first 20 steps (monitor.detectors.exploding_gradient).
VITALS_START_STEPS = 24
#: Never fewer vital signs than one per this many steps, whatever the budget: a gradient
#: that explodes is seen within this many steps (the loss, read on every step, sees a
#: divergence on the step it happens).
MAX_VITALS_EVERY = 32
#: Recent readings of the vital signs' cost and of the steps' times whose medians set the cadence.
VITALS_WINDOW = 15


class VitalsCadence:
    """Which steps read the vital signs: every step of the first :data:`VITALS_START_STEPS`,
    then as often as :data:`VITALS_BUDGET` of the measured step time allows, their own cost
    measured on the training thread as they are taken (``every = ceil(cost / (budget *
    step))``, at most :data:`MAX_VITALS_EVERY`). A sampled step reads them whatever the
    cadence (its parameter statistics reuse the same sums of squares)."""

    def __init__(self, budget: float = VITALS_BUDGET, start_steps: int = VITALS_START_STEPS,
                 max_every: int = MAX_VITALS_EVERY):
        if not 0 < budget < 1:
            raise ValueError(f"vital signs' budget: expected a fraction in (0, 1), got {budget!r}")
        self.budget, self.start_steps, self.max_every = budget, start_steps, max_every
        self.every = 1
        self.next_due = 0
        self.costs: deque[float] = deque(maxlen=VITALS_WINDOW)
        self.steps: deque[float] = deque(maxlen=VITALS_WINDOW)

    def due(self, step: int) -> bool:
        return step < self.start_steps or step >= self.next_due

    def observe(self, step: int, seconds: float, cost: float | None) -> None:
        """Called once per finished step with its wall time and what its vital signs took
        (None: not read)."""
        if step > 0:  # step 0 is warm-up
            self.steps.append(seconds)
        if cost is None:
            return
        if step > 0:
            self.costs.append(cost)
        if self.costs and self.steps:
            step_time = statistics.median(self.steps)
            wanted = math.ceil(statistics.median(self.costs) / (self.budget * step_time) - 1e-6) if step_time > 0 else 1
            self.every = min(max(wanted, 1), self.max_every)
        self.next_due = step + self.every

    def describe(self) -> dict:
        return {"budget": self.budget, "every": self.every, "start": self.start_steps}


def make_schedule(every: int | None, budget: float = OVERHEAD_BUDGET,
                  background: Callable[[], float] | None = None):
    return AutoInterval(budget, background=background) if every is None else FixedInterval(every)
