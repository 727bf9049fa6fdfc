"""How babysit's cost grows with the model: issue 15, item 5.

Two tables, both on the CPU, SGD and cross-entropy; a step is the one of benchmarks/overhead.py
(zero_grad, forward, loss, backward, optimizer step, and when watched ``mon.log(loss=loss)``).

``layers``: the cost of a sampled step against the number of layers and their size. Models:
``depth`` blocks of ``nn.Linear(width, width)`` + ``nn.ReLU`` (Kaiming-initialised, so a deep
stack keeps its scale), batches of 32, at 10 to 500 blocks of width 64 and at widths 256 and
1024 with 50 blocks. Each model trains as ``bare``, ``unsampled`` (``watch(every=10**9)``: only
step 0 sampled) and ``every=1`` (every step sampled). A sampled step reduces every activation,
output gradient, weight, gradient and update to a few numbers and a sample (trainer_hooks.reduce):
its cost should grow with the tensors, i.e. linearly in the layers, and the table says by how
much per layer, how it splits between the training thread and babysit's writer thread, and how
many torch operators it dispatches (on a GPU each is a kernel launch, a few microseconds of CPU
whatever the tensor's size).

``calls``: the idle cost per module call. With a model watched, a process-wide forward pre-hook
runs on every module call of the process, sampled step or not, and any global hook sends every
call through torch's slower call path. The model calls a tiny recurrent cell (``h = tanh(cell(h)
+ x)``, ``cell`` an ``nn.Linear(16, 16)``) ``k`` times a step, for ``k`` up to 50,000 (a cell
run along a long sequence), as ``bare``, ``no-op hook`` (bare with an empty process-wide pre-hook:
torch's slow path alone), ``unsampled`` and ``every=1`` (``no-op hook`` and ``every=1`` up to
10,000 calls: beyond, the noise of a step of seconds hides the little they add). A sampled step
records a reused module at its 1st, 2nd, 4th, 8th ... call only, so what it adds to the idle
cost should grow as log2(k). A microsecond in a step of 60 us per call is hard to see on a busy
machine, so the table ends with the idle cost isolated: ``nn.Identity`` called in a loop,
forward only, bare, with a no-op hook, and with a model watched elsewhere in the process.

Method. The configs of one model size train side by side in rounds, each a block of steps in
a random order drawn afresh per round (seeded), so the machine's drift falls on all alike, as
in overhead.py; each config's block is sized to about ``--block`` seconds by its warm-up steps
(at most half the writer's backlog limit of sampled steps, so no sample is skipped). The rounds
of a size stop at ``--rounds`` or, once 3 are done, when the size has had ``--seconds`` (the
table says how many ran). Figures are medians over rounds; differences and ratios are paired
within a round. A watched block waits, off the clock, for the writer to commit what it logged
and is charged the writer thread's CPU meanwhile (``mon.writer_seconds``), as in overhead.py;
the table also shows the writer's CPU per step in all, and the training thread's own CPU
(``time.thread_time``: torch's second thread, busy on large ops only, is not in it). The calls
table's idle and sampling costs are in that thread's CPU: they are work on that thread alone.
Global hooks are per process, so while one config's block runs every other config's
process-wide hooks are taken out of torch's hook tables and put back after: a bare block runs
with none, and a watched one with its own only. The summary lines fit a fixed cost per step
plus a cost per layer (per module call) to the sizes' figures.

Operators are counted on one step per config with a ``TorchDispatchMode`` (what
``torch.utils.flop_counter`` is built on): it sees each aten operator once, below autograd,
after composite operators are decomposed, backward included, on the training thread only (the
profiler would also record the writer thread's host-side work, asynchronously, and nests
composite operators over the ones they call, so its counts need filtering and vary run to
run). Views (``view``, ``t``, ``detach``...) launch nothing and are left out. The count is
the CPU path's: on an accelerator trainer_hooks.reduce takes its sync-free kernels, so the
numbers differ there, but grow the same way.

Threads: the layers table runs on 2 threads (``torch.set_num_threads``, as overhead.py;
``--threads`` to change it). The calls table runs on 1: its tensors are far too small for a
second thread, and on a busy 2-core machine torch's thread pool waiting for a descheduled
worker made such steps 2 to 10 times slower at random, hiding a microsecond per call (the
layers table's medium tensors suffer from it too: ``--threads 1`` gives steadier figures
there). Denormals are flushed to zero (both tables): gradients fading along 50,000 calls, or
500 layers, would otherwise hit the CPU's slow path.

Run: ``python benchmarks/growth.py`` (both tables, about 6 minutes on 2 cores);
``--table layers`` or ``--table calls`` for one; ``--quick`` for a smoke run (about 30 s).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import THREADS, Trainer, _drain  # noqa: E402  (benchmarks/, found through the path above)

from trainer_hooks import watch  # noqa: E402
from trainer_hooks.writer import CAPTURE_BACKLOG_LIMIT  # noqa: E402

BATCH = 32
DEPTHS, WIDTH = (10, 50, 100, 250, 500), 64  # the depth series
WIDTHS, DEPTH = (256, 1024), 50  # the width series (and WIDTH at DEPTH from the depth series)
CALLS = (10, 100, 1_000, 10_000, 50_000)  # module calls per step in the calls table
CELL, CALLS_BATCH = 16, 8  # the recurrent cell's features and its batch
CALLS_THREADS = 1  # see the docstring: tiny tensors, and a busy machine's thread pool
COUNT_CALLS_MAX = 10_000  # counting operators costs a Python call each: not beyond this many calls
#: Beyond this many calls per step only bare and unsampled train: the noise of so long a step
#: hides the few milliseconds sampling adds (the operator counts show its growth instead).
SAMPLED_CALLS_MAX = 10_000
EVERY = {"unsampled": 10**9, "every=1": 1}  # the watched configs
LAYER_CONFIGS = ("bare", "unsampled", "every=1")
CALL_CONFIGS = ("bare", "no-op hook", "unsampled", "every=1")
WARMUP_STEPS, MIN_ROUNDS = 3, 3
#: Sampled steps per block at most: the writer holds up to CAPTURE_BACKLOG_LIMIT of them
#: before it skips a sample, and it is drained only between blocks.
SAMPLED_BLOCK_STEPS = CAPTURE_BACKLOG_LIMIT // 2
MAX_BLOCK_STEPS = 500


@dataclass(frozen=True)
class Budget:
    rounds: int  # rounds per model size, at most
    seconds: float  # per model size: no round starts after this, once MIN_ROUNDS are done
    block: float  # seconds a config's block aims at
    warmup: float  # seconds of warm-up per config, beyond its first step or two


@dataclass(frozen=True)
class Block:
    """One config's block of a round, per step: seconds charged (wall, plus the writer's CPU
    catching up after it), the training thread's CPU, and the writer's CPU in all."""

    step: float
    train_cpu: float
    writer_cpu: float


@dataclass
class Subject:
    """One config of one model size."""

    config: str
    trainer: Trainer
    steps: int = 1  # per block
    blocks: list[Block] = field(default_factory=list)
    ops: int | None = None  # non-view aten operators dispatched on one step

    @property
    def mon(self):
        return self.trainer.mon


# ------------------------------------------------------------------------ models

def stack(depth: int, width: int) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")  # a deep stack keeps its scale
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers)


class Recurrent(nn.Module):
    """A tiny recurrent cell run ``calls`` times: ``h = tanh(cell(h) + x)``, then a head."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls
        self.cell = nn.Linear(CELL, CELL)
        self.head = nn.Linear(CELL, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros_like(x)
        for _ in range(self.calls):
            h = torch.tanh(self.cell(h) + x)
        return self.head(h)


def make_subject(config: str, build: Callable[[], nn.Module], features: int, classes: int, logdir: str,
                 tag: str, batch: int) -> Subject:
    torch.manual_seed(0)  # every config starts from the same weights and sees the same batches
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = [(torch.randn(batch, features), torch.randint(0, classes, (batch,))) for _ in range(4)]
    mon = None
    if config in EVERY:
        mon = watch(model, optimizer, run=f"growth-{tag}-{config.replace('=', '')}", every=EVERY[config],
                    logdir=logdir)
    return Subject(config, Trainer(config, model, optimizer, batches, mon))


# ------------------------------------------------------------------------ measuring

GLOBAL_HOOKS = (module_hooks._global_forward_pre_hooks, module_hooks._global_forward_hooks)


def _noop_pre_hook(module, args) -> None:
    return None


@contextmanager
def alone(subject: Subject):
    """Only this subject's process-wide module hooks registered: every other one (the other
    configs' babysit hooks) is parked meanwhile, so a bare block runs with none; ``no-op hook``
    gets an empty pre-hook."""
    probe = subject.mon.probe if subject.mon is not None else None
    parked = []
    for hooks in GLOBAL_HOOKS:
        theirs = {key: hook for key, hook in hooks.items() if probe is None or getattr(hook, "__self__", None)
                  is not probe}
        for key in theirs:
            del hooks[key]
        parked.append((hooks, theirs))
    noop = module_hooks.register_module_forward_pre_hook(_noop_pre_hook) if subject.config == "no-op hook" else None
    try:
        yield
    finally:
        if noop is not None:
            noop.remove()
        for hooks, theirs in parked:
            hooks.update(theirs)


def run_block(subject: Subject, steps: int) -> Block:
    mon = subject.mon
    writer = mon.writer_seconds if mon is not None else 0.0
    with alone(subject):
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(steps):
            subject.trainer.step()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    catch_up = 0.0
    if mon is not None:
        ended = mon.writer_seconds
        _drain(mon)
        catch_up = mon.writer_seconds - ended
        writer = mon.writer_seconds - writer
    return Block((wall + catch_up) / steps, cpu / steps, writer / steps)


def warm_up(subject: Subject, budget: Budget) -> None:
    """Warm-up steps, the last of which sizes the config's blocks: at least 2 for ``unsampled``
    (its step 0 is its one sampled step), up to WARMUP_STEPS or ``budget.warmup`` seconds."""
    least, started, done = (2 if subject.config == "unsampled" else 1), time.perf_counter(), 0
    while True:
        estimate, done = run_block(subject, 1).step, done + 1
        if done >= least and (done >= WARMUP_STEPS or time.perf_counter() - started > budget.warmup):
            break
    cap = SAMPLED_BLOCK_STEPS if subject.config == "every=1" else MAX_BLOCK_STEPS
    subject.steps = max(1, min(cap, round(budget.block / max(estimate, 1e-6))))


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched on this thread, views left out."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "aten" and not func.is_view:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def count_ops(subject: Subject) -> int:
    """Operators of one step; a watched plain step is counted with its vital signs read
    (the dearest plain step: most read none once their budget thins them,
    trainer_hooks.schedule.VitalsCadence)."""
    if subject.mon is not None:
        subject.mon.probe.vitals_due = True
    with alone(subject), OpCounter() as counter:
        subject.trainer.step()
    if subject.mon is not None:
        _drain(subject.mon)
    return counter.ops


def measure(subjects: list[Subject], budget: Budget, count: bool, seed: int = 0) -> None:
    """Warm up, run the interleaved rounds, count operators, close the runs."""
    try:
        for subject in subjects:
            warm_up(subject, budget)
        order, started = random.Random(seed), time.perf_counter()
        for round_ in range(budget.rounds):
            if round_ >= MIN_ROUNDS and time.perf_counter() - started > budget.seconds:
                break
            for subject in order.sample(subjects, len(subjects)):
                subject.blocks.append(run_block(subject, subject.steps))
        if count:
            for subject in subjects:
                subject.ops = count_ops(subject)
        skipped = sum(s.mon.skipped_samples for s in subjects if s.mon is not None)
        if skipped:
            print(f"warning: {skipped} due sample(s) skipped (writer behind): figures undercount", file=sys.stderr)
    finally:
        for subject in subjects:
            if subject.mon is not None:
                subject.mon.close()


def median_of(subject: Subject, value: Callable[[Block], float]) -> float:
    return statistics.median(value(b) for b in subject.blocks)


def paired(a: Subject, b: Subject, value: Callable[[Block, Block], float]) -> float:
    """The median over rounds of ``value(a's block, b's block)``, the two from the same round."""
    return statistics.median(value(x, y) for x, y in zip(a.blocks, b.blocks))


def extra(a: Subject, b: Subject) -> float:
    return paired(a, b, lambda x, y: x.step - y.step)


def ratio(a: Subject, b: Subject) -> float:
    return paired(a, b, lambda x, y: x.step / y.step)


def finite(subjects: list[Subject]) -> bool:
    return all(bool(torch.isfinite(p).all()) for s in subjects for p in s.trainer.model.parameters())


# ------------------------------------------------------------------------ the tables

@dataclass
class LayerRow:
    depth: int
    width: int
    rounds: int
    bare_ms: float
    every1_ms: float
    extra_ms: float  # every=1 minus bare, per step
    extra_us_per_layer: float
    every1_ratio: float
    train_cpu_extra_ms: float  # the training thread's, every=1 minus bare
    writer_cpu_ms: float  # the writer's, every=1
    unsampled_ratio: float
    unsampled_extra_us: float
    ops_bare: int | None
    ops_unsampled: int | None
    ops_every1: int | None
    finite: bool

    @property
    def extra_ops_per_layer(self) -> float | None:
        return None if self.ops_every1 is None else (self.ops_every1 - self.ops_bare) / self.depth

    @property
    def us_per_extra_op(self) -> float | None:
        extra_ops = None if self.ops_every1 is None else self.ops_every1 - self.ops_bare
        return self.train_cpu_extra_ms * 1e3 / extra_ops if extra_ops else None


def layer_row(depth: int, width: int, budget: Budget, logdir: str, count: bool) -> LayerRow:
    subjects = [make_subject(config, lambda: stack(depth, width), width, 10, logdir, f"{depth}x{width}", BATCH)
                for config in LAYER_CONFIGS]
    measure(subjects, budget, count)
    bare, unsampled, every1 = subjects
    return LayerRow(
        depth, width, len(bare.blocks), median_of(bare, lambda b: b.step) * 1e3,
        median_of(every1, lambda b: b.step) * 1e3, extra(every1, bare) * 1e3, extra(every1, bare) * 1e6 / depth,
        ratio(every1, bare), paired(every1, bare, lambda x, y: x.train_cpu - y.train_cpu) * 1e3,
        median_of(every1, lambda b: b.writer_cpu) * 1e3, ratio(unsampled, bare), extra(unsampled, bare) * 1e6,
        bare.ops, unsampled.ops, every1.ops, finite(subjects))


@dataclass
class CallRow:
    """Per step; the idle and sampling costs in the training thread's CPU (see call_row)."""

    calls: int
    rounds: int
    bare_ms: float  # wall
    bare_cpu_ms: float
    noop_us_per_call: float | None  # the no-op hook minus bare
    unsampled_us_per_call: float  # unsampled minus bare
    unsampled_ratio: float
    every1_ms: float | None  # wall
    sampled_extra_ms: float | None  # every=1 minus unsampled: what sampling adds to the idle cost
    records: int  # the cell's calls a sampled step records: 1st, 2nd, 4th ...
    writer_cpu_ms: float | None  # the writer's, every=1
    ops_bare: int | None
    ops_unsampled: int | None
    ops_every1: int | None
    finite: bool


def call_row(calls: int, budget: Budget, logdir: str, count: bool) -> CallRow:
    """The idle cost is work on the training thread, so it is read from that thread's CPU
    clock: on a busy machine the wall clock adds the time the thread waited for a core, far
    more than a microsecond a call."""
    configs = CALL_CONFIGS if calls <= SAMPLED_CALLS_MAX else ("bare", "unsampled")
    subjects = [make_subject(config, lambda: Recurrent(calls), CELL, 10, logdir, f"calls{calls}", CALLS_BATCH)
                for config in configs]
    measure(subjects, budget, count and calls <= COUNT_CALLS_MAX)
    by = {s.config: s for s in subjects}
    bare, noop, unsampled, every1 = (by.get(config) for config in CALL_CONFIGS)

    def cpu_extra(a: Subject, b: Subject) -> float:
        return paired(a, b, lambda x, y: x.train_cpu - y.train_cpu)

    sampled = every1 is not None
    return CallRow(
        calls, len(bare.blocks), median_of(bare, lambda b: b.step) * 1e3, median_of(bare, lambda b: b.train_cpu) * 1e3,
        cpu_extra(noop, bare) * 1e6 / calls if noop else None, cpu_extra(unsampled, bare) * 1e6 / calls,
        paired(unsampled, bare, lambda x, y: x.train_cpu / y.train_cpu),
        median_of(every1, lambda b: b.step) * 1e3 if sampled else None,
        cpu_extra(every1, unsampled) * 1e3 if sampled else None, calls.bit_length(),
        median_of(every1, lambda b: b.writer_cpu) * 1e3 if sampled else None,
        bare.ops, unsampled.ops, every1.ops if sampled else None, finite(subjects))


ISOLATED_CALLS, ISOLATED_ROUNDS = 10_000, 60  # the isolated measure: nn.Identity calls per block, rounds


def isolated_call_cost(rounds: int, logdir: str) -> dict[str, float]:
    """Microseconds per call of an ``nn.Identity`` called in a loop, forward only, grad on,
    for bare, no-op hook and unsampled (a watched model elsewhere in the process): the idle
    cost per call without a training step's noise around it. Interleaved blocks of
    ISOLATED_CALLS calls, the training thread's CPU, medians of the differences to bare."""
    subjects = [make_subject(config, lambda: nn.Linear(CELL, CELL), CELL, 10, logdir, "isolated", CALLS_BATCH)
                for config in ("bare", "no-op hook", "unsampled")]
    identity, x = nn.Identity(), torch.randn(CALLS_BATCH, CELL)
    times: dict[str, list[float]] = {s.config: [] for s in subjects}
    order = random.Random(1)
    try:
        for _ in range(rounds):
            for subject in order.sample(subjects, len(subjects)):
                with alone(subject):
                    cpu = time.thread_time()
                    for _ in range(ISOLATED_CALLS):
                        identity(x)
                    times[subject.config].append((time.thread_time() - cpu) / ISOLATED_CALLS * 1e6)
    finally:
        for subject in subjects:
            if subject.mon is not None:
                subject.mon.close()
    bare = times["bare"]
    return {"bare": statistics.median(bare),
            **{config: statistics.median(a - b for a, b in zip(mine, bare)) for config, mine in times.items()
               if config != "bare"}}


# ------------------------------------------------------------------------ report

def _n(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def format_table(headers: tuple[str, ...], table: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in (headers, *table))


def format_layers(rows: list[LayerRow], rounds: int) -> str:
    headers = ("layers", "width", "rounds", "bare ms", "every=1 ms", "+ms", "+us/layer", "x bare",
               "train CPU +ms", "writer CPU ms", "unsampled x bare", "ops bare", "ops unsampled",
               "ops every=1", "+ops/layer", "train +us/op")
    table = [[str(r.depth), str(r.width), f"{r.rounds}{'' if r.rounds == rounds else '*'}", _n(r.bare_ms),
              _n(r.every1_ms), _n(r.extra_ms), _n(r.extra_us_per_layer, 0), _n(r.every1_ratio),
              _n(r.train_cpu_extra_ms), _n(r.writer_cpu_ms), _n(r.unsampled_ratio, 3), _n(r.ops_bare),
              _n(r.ops_unsampled), _n(r.ops_every1), _n(r.extra_ops_per_layer, 1), _n(r.us_per_extra_op, 1)]
             for r in rows]
    return format_table(headers, table)


def format_calls(rows: list[CallRow], rounds: int) -> str:
    headers = ("calls/step", "rounds", "bare ms", "bare CPU ms", "no-op hook +us/call", "unsampled +us/call",
               "x bare", "every=1 ms", "sampled +ms", "records", "sampled +us/call", "writer CPU ms", "ops bare",
               "+ops unsampled", "+ops sampled")
    table = [[f"{r.calls:,}", f"{r.rounds}{'' if r.rounds == rounds else '*'}", _n(r.bare_ms), _n(r.bare_cpu_ms),
              _n(r.noop_us_per_call, 3), _n(r.unsampled_us_per_call, 3), _n(r.unsampled_ratio, 3), _n(r.every1_ms),
              _n(r.sampled_extra_ms), str(r.records),
              _n(None if r.sampled_extra_ms is None else r.sampled_extra_ms * 1e3 / r.calls, 3),
              _n(r.writer_cpu_ms), _n(r.ops_bare),
              _n(None if r.ops_bare is None else r.ops_unsampled - r.ops_bare),
              _n(None if r.ops_every1 is None else r.ops_every1 - r.ops_unsampled)] for r in rows]
    return format_table(headers, table)


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def per_unit_fit(units: list[int], per_unit: list[float], rounds: list[int]) -> tuple[float, float]:
    """(fixed cost per step, cost per unit) from each size's extra per unit (layer, module call).

    extra = fixed + per_unit_cost * units, fitted as extra / units = per_unit_cost + fixed / units
    weighted by rounds: a size's noise per unit is its step's noise over its units, so every
    size weighs alike for the cost per unit instead of the largest alone deciding the slope.
    """
    xs = [1 / u for u in units]
    total = sum(rounds)
    mx = sum(w * x for w, x in zip(rounds, xs)) / total
    my = sum(w * y for w, y in zip(rounds, per_unit)) / total
    fixed = (sum(w * (x - mx) * (y - my) for w, x, y in zip(rounds, xs, per_unit))
             / sum(w * (x - mx) ** 2 for w, x in zip(rounds, xs)))
    return fixed, my - fixed * mx


def layers_summary(rows: list[LayerRow]) -> str:
    depth = [r for r in rows if r.width == WIDTH]
    lines = []
    if len({r.depth for r in depth}) >= 2:
        depths, rounds = [r.depth for r in depth], [r.rounds for r in depth]
        fixed, per = per_unit_fit(depths, [r.extra_us_per_layer for r in depth], rounds)
        idle = per_unit_fit(depths, [r.unsampled_extra_us / r.depth for r in depth], rounds)[1]
        lines.append(f"fit over the width-{WIDTH} rows: a sampled step costs {fixed / 1e3:+.2f} ms + {per:.0f} us per "
                     f"layer extra; an unsampled one {idle:+.1f} us per layer")
        if depth[0].ops_every1 is not None:
            lo, hi = depth[0], depth[-1]
            per = ((hi.ops_every1 - hi.ops_bare) - (lo.ops_every1 - lo.ops_bare)) / (hi.depth - lo.depth)
            idle = ((hi.ops_unsampled - hi.ops_bare) - (lo.ops_unsampled - lo.ops_bare)) / (hi.depth - lo.depth)
            lines.append(f"operators beyond bare: {per:.1f} per layer sampled, {idle:.1f} per layer unsampled "
                         f"(bare: {(hi.ops_bare - lo.ops_bare) / (hi.depth - lo.depth):.1f} per layer)")
    if not all(r.finite for r in rows):
        lines.append("warning: some weights went non-finite: the reductions' NaN passes are in the figures")
    return "\n".join(lines)


def calls_summary(rows: list[CallRow]) -> str:
    lines = []
    if len(rows) >= 2:
        fixed, per = per_unit_fit([r.calls for r in rows], [r.unsampled_us_per_call for r in rows],
                                  [r.rounds for r in rows])
        lines.append(f"fit, unsampled: {per:.2f} us per module call {fixed:+.0f} us per step (training thread)")
        hooked = [r for r in rows if r.noop_us_per_call is not None]
        if len(hooked) >= 2:
            fixed, per = per_unit_fit([r.calls for r in hooked], [r.noop_us_per_call for r in hooked],
                                      [r.rounds for r in hooked])
            lines.append(f"fit, no-op hook: {per:.2f} us per module call {fixed:+.0f} us per step")
        counted = [r for r in rows if r.ops_every1 is not None]
        if len(counted) >= 2:
            a, b = fit([r.records for r in counted], [r.ops_every1 - r.ops_unsampled for r in counted])
            lines.append(f"fit, operators a sampled step adds: {a:.0f} + {b:.1f} per recorded call (records = "
                         "floor(log2 calls) + 1)")
    if not all(r.finite for r in rows):
        lines.append("warning: some weights went non-finite")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="How the cost of babysit's watch grows with layers, tensor "
                                                 "sizes and module calls per step.")
    parser.add_argument("--table", choices=("layers", "calls", "all"), default="all")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per model size, at most "
                                                              "(default: 30)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="per model size: no round starts after this, once 3 are done (default: 20)")
    parser.add_argument("--block", type=float, default=0.3, help="seconds a config's block aims at (default: 0.3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 model sizes per table, 3 short "
                                                             "rounds; the figures are noisy")
    parser.add_argument("--calls", type=int, nargs="+", help=f"module calls per step for the calls table "
                                                              f"(default: {' '.join(map(str, CALLS))})")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"torch threads for the layers table (default: {THREADS}; the calls table runs on "
                             f"{CALLS_THREADS})")
    parser.add_argument("--no-ops", action="store_true", help="do not count operators")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    if args.quick:
        budget = Budget(rounds=3, seconds=1.0, block=0.04, warmup=0.2)
        sizes, calls = [(10, WIDTH), (50, WIDTH), (DEPTH, WIDTHS[0])], CALLS[:3]
    else:
        budget = Budget(rounds=args.rounds, seconds=args.seconds, block=args.block, warmup=1.0)
        sizes, calls = [(d, WIDTH) for d in DEPTHS] + [(DEPTH, w) for w in WIDTHS], CALLS
    calls = args.calls or calls
    print(f"CPU; torch {torch.__version__}, {torch.get_num_threads()} threads (calls table: {CALLS_THREADS}), "
          f"{os.cpu_count()} "
          f"CPUs (load average {os.getloadavg()[0]:.1f} at start); up to {budget.rounds} rounds per model size, "
          f"{budget.seconds:g} s per size once {MIN_ROUNDS} are done (* fewer), blocks of about {budget.block:g} s",
          flush=True)
    found: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="babysit-growth-") as logdir:
        if args.table in ("layers", "all"):
            rows = found["layers"] = [layer_row(d, w, budget, logdir, not args.no_ops) for d, w in sizes]
            print(f"\nlayers: depth x (Linear(width, width) + ReLU), batch {BATCH}, SGD, {torch.get_num_threads()} "
                  "threads; every=1 against bare\n"
                  + format_layers(rows, budget.rounds) + "\n" + layers_summary(rows), flush=True)
        if args.table in ("calls", "all"):
            torch.set_num_threads(CALLS_THREADS)
            rows = found["calls"] = [call_row(k, budget, logdir, not args.no_ops) for k in calls]
            isolated = found["isolated"] = isolated_call_cost(ISOLATED_ROUNDS // (3 if args.quick else 1), logdir)
            print(f"\ncalls: h = tanh(Linear({CELL}, {CELL})(h) + x) k times per step, batch {CALLS_BATCH}, SGD, "
                  f"{torch.get_num_threads()} thread(s)\n"
                  + format_calls(rows, budget.rounds) + "\n" + calls_summary(rows)
                  + f"\nisolated, nn.Identity called in a loop: {isolated['bare']:.2f} us a call bare, "
                  f"{isolated['no-op hook']:+.2f} us with a no-op process-wide hook, {isolated['unsampled']:+.2f} us "
                  "watched (unsampled)", flush=True)
    print("\n+ms, x bare: medians over rounds of the difference and ratio to bare in the same round (sampled: "
          "every=1 minus unsampled).\nms per step: wall time, plus the writer's CPU catching up after the block; "
          "writer CPU ms: all the writer's CPU per step;\ntrain CPU: the training thread's own CPU; the calls "
          "table's +us/call, x bare and sampled +ms are in it too.\nops: aten operators dispatched on one step, "
          f"views left out (not counted beyond {COUNT_CALLS_MAX:,} calls).")
    if args.json:
        args.json.write_text(json.dumps({name: rows if isinstance(rows, dict) else [asdict(r) for r in rows]
                                         for name, rows in found.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
