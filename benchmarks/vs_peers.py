"""What does monitoring cost a training step, babysit beside its peers? Issue 15, item 1.

The configs, each on the same workload: ``bare`` (no monitor: the reference); ``babysit auto``
(``watch(every=None)``, the default), ``babysit every=100`` and ``babysit every=1``;
``wandb log=all freq=1`` and ``freq=100`` (``wandb.watch(model, log="all", log_freq=N)`` in an
offline run, and ``wandb.log({"loss": ...})`` each step as a user would); ``tensorboard every=1``
and ``every=100`` (a ``SummaryWriter``: the loss each step, a histogram of every parameter and
every gradient at the cadence); ``hooks floor every=1`` (forward hooks and tensor hooks taking a
64-bin ``torch.histc`` of every activation and output gradient of every leaf module, and of every
parameter and gradient, read to the host: the least a hand-written monitor of the same
statistics does). A step is zero_grad, forward, cross-entropy, backward, optimizer step, then the
config's logging of the loss. Workloads (benchmarks/workloads.py): overhead.py's ``cnn`` and ``mlp`` (SGD,
batches of 64), a causal ``transformer`` (vocabulary 256, learned positions, 2 pre-norm
blocks of width 128 with 4 heads and a 4x GELU MLP, 8 sequences of 64 tokens, AdamW) and an
``lstm`` (embedding 256 -> 128, 2 layers of 256, 16 sequences of 32 tokens, Adam), both
predicting the next of random tokens; their batches are sized to steps of tens of ms on 2 cores.

Method. Each config trains in a process of its own (2 torch threads), started once and kept
for the run, so no library's global state (hooks, threads, a service process) touches
another's figures and a peer is imported only where it is measured. The coordinator drives
them in rounds: each round it tells one worker at a time, in a random order drawn afresh
each round (seeded), to train a block of ``--steps`` steps; the others wait on their pipe.
So drift of the machine and one config's aftermath fall on all configs alike, as in
overhead.py. Every worker first trains ``--warmup`` untimed steps. After a block the worker
waits, outside the clock, for the config's background work to be done: its own flush where
it has one (babysit's ``mon.flush()``, ``SummaryWriter.flush()``; wandb has none), then until
its helper threads and processes have stopped spending CPU. The CPU those helpers spent
after the block's last step is charged to the block: it is work that would otherwise fall
into the next block. A block's time over its steps is its step time; a config's figure is
the median over rounds, and ``x bare`` the median of its per-round ratios to bare (the two
blocks of a ratio ran seconds apart); the mean over all timed steps weighs every sampled step
as often as it happened, which the median of blocks can hide at ``every=100``. Last, a line
per workload and cadence says whether babysit's median ratio is below every peer's at it.

CPU outside the training thread, per timed step, in two columns. ``bg CPU``: the config's
helpers, that is every Python thread but the training one (each read on its own clock,
``pthread_getcpuclockid``: babysit's writer, SummaryWriter's event writer, wandb's threads)
and child processes (wandb's ``wandb-core`` service, through psutil), from the block's first
step to the end of the wait; part of it, the catch-up, is also in the step time. ``pool
CPU``: the rest of the process outside the training thread during the steps (process time
less training thread and helpers), less bare's in the same round. That rest is torch's
OpenMP pool: it works on the config's extra tensor ops and spins idle between them, so it
is counted apart and relative to bare, whose pool does the model's own work. The process
clock alone would put bare's pool in every config's background figure.

Memory. Each worker resets its peak resident set (Linux ``VmHWM``, through
``/proc/self/clear_refs``) after its imports and model build, notes its resident set then,
and reports at the end how far the peak rose above it, plus the peak of its child
processes (``wandb-core``). ``extra peak RSS`` is that rise less bare's: the cost of
monitoring, not of importing (every worker imports babysit; a peer's import is left out too).

Run: ``python benchmarks/vs_peers.py`` (every workload, every config); ``--workload mlp``;
``--configs "bare,babysit every=1,hooks floor every=1"``; ``--quick`` for a smoke run.
wandb and tensorboard come with ``pip install 'babysit[bench]'``; a peer not installed is
skipped by name. wandb runs offline, with its files in a temporary folder removed afterwards.
See benchmarks/README.md for what the figures mean.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import torch  # noqa: E402
from torch import nn  # noqa: E402

from overhead import BATCH, THREADS, _peak_rss_kib, _reset_peak_rss  # noqa: E402
from trainer_hooks import watch  # noqa: E402
from workloads import CPU_WORKLOADS, Batches, train_step, workloads  # noqa: E402  (the models, defined once)

SCRIPT = Path(__file__).resolve()
CONFIGS = ("bare", "babysit auto", "babysit every=100", "babysit every=1", "wandb log=all freq=1",
           "wandb log=all freq=100", "tensorboard every=1", "tensorboard every=100", "hooks floor every=1")
#: The names a config may have: TOOL and its cadence, N steps (None: babysit's automatic interval).
PATTERNS = {"bare": re.compile(r"bare()"), "babysit": re.compile(r"babysit (?:auto|every=(\d+))"),
            "wandb": re.compile(r"wandb log=all freq=(\d+)"), "tensorboard": re.compile(r"tensorboard every=(\d+)"),
            "hooks": re.compile(r"hooks floor every=(\d+)")}
PACKAGES = {"wandb": "wandb", "tensorboard": "tensorboard"}  # the peers' distributions (the bench extra)
ANSWER_SECONDS = 600  # longest wait for a worker's answer: a hung worker, not a slow one
SETTLE_WINDOW = 0.03  # seconds without helper CPU that count as idle
SETTLE_LIMIT = 10.0


# ------------------------------------------------------------------------ workloads

TASKS = {name: task for name, task in workloads(BATCH).items() if name in CPU_WORKLOADS}


# ------------------------------------------------------------------------ configs

@dataclass(frozen=True)
class Config:
    name: str
    tool: str  # a key of PATTERNS
    every: int | None  # its cadence in steps; None: babysit's automatic interval, or bare

    @classmethod
    def parse(cls, name: str) -> Config:
        name = " ".join(name.split())
        for tool, pattern in PATTERNS.items():
            found = pattern.fullmatch(name)
            if found:
                return cls(name, tool, int(found[1]) if found[1] else None)
        raise ValueError(f"unknown config {name!r}: one of {', '.join(CONFIGS)} (any N in every=N, freq=N)")


class Bare:
    """No monitoring. The others override what they do."""

    def __init__(self, config: Config):
        self.every = config.every

    def prepare(self) -> None:
        """Import what the config needs (before the peak-RSS count restarts)."""

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, workdir: Path, workload: str) -> None:
        pass

    def after_step(self, step: int, loss: torch.Tensor) -> None:
        pass

    def drain(self) -> None:
        """Wait for the background work of the steps so far, where there is a way to."""

    def writer_seconds(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


class Babysit(Bare):
    def attach(self, model, optimizer, workdir, workload) -> None:
        self.mon = watch(model, optimizer, run=f"vs-peers-{workload}-{self.every or 'auto'}",
                         config={"workload": workload}, every=self.every, logdir=str(workdir), server=None)

    def after_step(self, step, loss) -> None:
        self.mon.log(loss=loss)

    def drain(self) -> None:
        if not self.mon.flush():
            raise RuntimeError("babysit's writer did not catch up within 30 s")

    def writer_seconds(self) -> float:
        return self.mon.writer_seconds

    def close(self) -> None:
        self.mon.close()


class Wandb(Bare):
    def prepare(self) -> None:
        import wandb
        self.wandb = wandb

    def attach(self, model, optimizer, workdir, workload) -> None:
        wanted = {"console": "off", "disable_git": True, "disable_code": True, "disable_job_creation": True,
                  "x_save_requirements": False}  # nothing of the repository or the environment gathered
        known = getattr(self.wandb.Settings, "model_fields", wanted)  # the names vary across versions
        settings = self.wandb.Settings(**{k: v for k, v in wanted.items() if k in known})
        self.run = self.wandb.init(mode="offline", dir=str(workdir), project="babysit-vs-peers",
                                   name=f"{workload}-freq{self.every}", config={"workload": workload},
                                   settings=settings)
        self.wandb.watch(model, log="all", log_freq=self.every)

    def after_step(self, step, loss) -> None:
        self.run.log({"loss": loss.item()})

    def close(self) -> None:
        self.run.finish()


class TensorBoard(Bare):
    def prepare(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer_class = SummaryWriter

    def attach(self, model, optimizer, workdir, workload) -> None:
        self.model, self.writer = model, self.writer_class(log_dir=str(workdir / "tensorboard"))

    def after_step(self, step, loss) -> None:
        self.writer.add_scalar("loss", loss.item(), step)
        if step % self.every == 0:
            for name, p in self.model.named_parameters():
                self.writer.add_histogram(f"parameters/{name}", p, step)
                if p.grad is not None:
                    self.writer.add_histogram(f"gradients/{name}", p.grad, step)

    def drain(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class HooksFloor(Bare):
    """64-bin histograms of every leaf module's outputs and their gradients (forward hooks,
    tensor hooks), then of every parameter and gradient, read to the host on sampled steps."""

    def attach(self, model, optimizer, workdir, workload) -> None:
        self.model, self.sampling, self.pending, self.losses = model, True, [], []
        for module in model.modules():
            if next(module.children(), None) is None:
                module.register_forward_hook(self._forward)

    def _forward(self, module, args, output) -> None:
        if not self.sampling:
            return
        for t in tensors(output):
            if t.is_floating_point():
                self.pending.append(torch.histc(t.detach(), bins=64))
                if t.requires_grad:
                    t.register_hook(self._gradient)

    def _gradient(self, grad: torch.Tensor) -> None:
        self.pending.append(torch.histc(grad, bins=64))

    def after_step(self, step, loss) -> None:
        self.losses.append(loss.item())
        if self.sampling:
            for p in self.model.parameters():
                self.pending.append(torch.histc(p.detach(), bins=64))
                if p.grad is not None:
                    self.pending.append(torch.histc(p.grad, bins=64))
            self.histograms = torch.stack(self.pending).tolist()  # to the host, as a monitor must
            self.pending = []
        self.sampling = (step + 1) % self.every == 0


def tensors(output) -> Iterator[torch.Tensor]:
    """The tensors in a module's output (an LSTM's is ``(out, (h, c))``)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from tensors(item)


MONITORS = {"bare": Bare, "babysit": Babysit, "wandb": Wandb, "tensorboard": TensorBoard, "hooks": HooksFloor}


# ------------------------------------------------------------------------ the worker's clocks

@dataclass
class Clocks:
    """CPU seconds of this process's parts, read together."""

    training: float  # the training (main) thread
    process: float  # every thread of this process
    helpers: dict[int, float]  # each other Python thread, by ident
    children: dict[int, float]  # each child process (and its children), by pid


def thread_seconds(thread: threading.Thread) -> float | None:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (AttributeError, OSError, TypeError):  # not on this platform, or the thread just ended
        return None


def children_seconds() -> dict[int, float]:
    try:
        import psutil
    except ImportError:
        return {}  # no child process of a config here outlives its block: wandb needs psutil
    found = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            found[child.pid] = times.user + times.system
    return found


def read_clocks() -> Clocks:
    main = threading.main_thread()
    helpers = {t.ident: s for t in threading.enumerate() if t is not main and (s := thread_seconds(t)) is not None}
    return Clocks(time.thread_time(), time.process_time(), helpers, children_seconds())


def helper_seconds(before: Clocks, after: Clocks) -> float:
    """CPU the helper threads and child processes spent between two readings (one that
    started meanwhile counts from zero; one that ended meanwhile is lost to this figure)."""
    threads = sum(s - before.helpers.get(ident, 0.0) for ident, s in after.helpers.items())
    return threads + sum(s - before.children.get(pid, 0.0) for pid, s in after.children.items())


def pool_seconds(before: Clocks, after: Clocks) -> float:
    """CPU of the process outside the training thread and the Python helper threads: torch's pool."""
    threads = sum(s - before.helpers.get(ident, 0.0) for ident, s in after.helpers.items())
    return (after.process - before.process) - (after.training - before.training) - threads


def settle() -> None:
    """Wait until the helpers have spent no CPU for ``SETTLE_WINDOW`` seconds (or ``SETTLE_LIMIT`` passed)."""
    deadline, last = time.perf_counter() + SETTLE_LIMIT, read_clocks()
    if not last.helpers and not last.children:
        return
    while time.perf_counter() < deadline:
        time.sleep(SETTLE_WINDOW)
        now = read_clocks()
        if helper_seconds(last, now) < 1e-3:
            return
        last = now


def resident_kib(pid: int | str = "self", field_name: str = "VmRSS") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((float(line.split()[1]) for line in f if line.startswith(field_name + ":")), 0.0)
    except OSError:
        return 0.0


# ------------------------------------------------------------------------ the worker

@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: Batches
    monitor: Bare
    steps: int = 0

    def step(self) -> None:
        loss = train_step(self.model, self.optimizer, self.batches[self.steps % len(self.batches)])
        self.monitor.after_step(self.steps, loss)
        self.steps += 1

    def block(self, steps: int) -> dict:
        """Train ``steps`` steps; their seconds (the helpers' catch-up included) and CPU figures."""
        writer = self.monitor.writer_seconds()
        before = read_clocks()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        elapsed = time.perf_counter() - start
        trained = read_clocks()
        self.monitor.drain()
        settle()
        after = read_clocks()
        return {"seconds": elapsed + helper_seconds(trained, after), "helpers": helper_seconds(before, after),
                "pool": pool_seconds(before, trained), "writer": self.monitor.writer_seconds() - writer}


def worker(workload: str, config: Config, seed: int) -> int:
    """Serve the coordinator: JSON lines in on stdin, out on the original stdout; anything
    the libraries print goes to stderr (the coordinator's log of this worker)."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    torch.set_num_threads(THREADS)
    monitor = MONITORS[config.tool](config)
    monitor.prepare()
    task = TASKS[workload]
    torch.manual_seed(seed)  # every config starts from the same weights and sees the same batches
    model = task.build()
    trainer = Trainer(model, task.optimizer(model), task.batches(), monitor)
    reset = _reset_peak_rss()
    base = resident_kib()
    monitor.attach(model, trainer.optimizer, Path.cwd(), workload)
    answers.write(json.dumps({"ready": True}) + "\n")
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["do"] == "block":
                answers.write(json.dumps(trainer.block(command["steps"])) + "\n")
                continue
            children = sum(resident_kib(pid, "VmHWM") for pid in children_seconds())
            answers.write(json.dumps({"rise_kib": _peak_rss_kib() - base + children, "reset": reset}) + "\n")
            break
    finally:
        monitor.close()
    return 0


# ------------------------------------------------------------------------ the coordinator

class WorkerFailed(RuntimeError):
    pass


@dataclass
class Worker:
    config: Config
    process: subprocess.Popen
    log: Path

    def send(self, **command) -> None:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float = ANSWER_SECONDS) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise WorkerFailed(f"{self.config.name}: no answer ({'timed out' if not ready else 'exited'}); "
                               f"its log ends:\n{self.tail()}")
        return json.loads(line)

    def ask(self, **command) -> dict:
        self.send(**command)
        return self.answer()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def worker_env(workdir: Path) -> dict[str, str]:
    """The coordinator's environment, with wandb kept offline and every file in ``workdir``."""
    env = dict(os.environ, TMPDIR=str(workdir), WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true",
               WANDB_DISABLE_CODE="true", WANDB_ERROR_REPORTING="false", WANDB_CONSOLE="off",
               WANDB_BASE_URL="http://127.0.0.1:9")  # offline; and were anything to call out, nowhere
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[name] = str(workdir / name.lower())
        (workdir / name.lower()).mkdir()
    env.pop("WANDB_API_KEY", None)
    env.pop("BABYSIT_SERVER", None)
    return env


def start_worker(workload: str, config: Config, seed: int, root: Path, index: int) -> Worker:
    workdir = root / f"{workload}-{index}"
    workdir.mkdir()
    log = workdir / "worker.log"
    with open(log, "w") as stderr:
        command = [sys.executable, str(SCRIPT), "--worker", workload, config.name, "--seed", str(seed)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   cwd=workdir, env=worker_env(workdir))
    return Worker(config, process, log)


@dataclass
class Measured:
    """One config's figures over the timed rounds."""

    config: Config
    seconds: list[float] = field(default_factory=list)  # per step, one entry per round
    helpers: list[float] = field(default_factory=list)  # CPU seconds per round (block)
    pool: list[float] = field(default_factory=list)
    writer: float = 0.0
    rise_kib: float = 0.0
    reset: bool = True


def start_all(workload: str, configs: list[Config], seed: int, root: Path) -> list[Worker]:
    """Start a worker per config (their imports in parallel), drop those that fail to start."""
    started = [start_worker(workload, config, seed, root, i) for i, config in enumerate(configs)]
    workers = []
    for w in started:
        try:
            w.answer()
            workers.append(w)
        except WorkerFailed as e:
            if w.config.tool == "bare":
                raise
            print(f"{workload} {w.config.name}: failed to start, left out. {e}", flush=True)
            w.stop()
    return workers


def time_workload(workload: str, configs: list[Config], rounds: int, steps: int, warmup: int,
                  seed: int) -> list[Measured]:
    with tempfile.TemporaryDirectory(prefix="babysit-vs-peers-", ignore_cleanup_errors=True) as root:
        workers = start_all(workload, configs, seed, Path(root))
        try:
            for w in workers:
                w.ask(do="block", steps=warmup)  # one at a time, as the timed blocks
            measured = {w.config.name: Measured(w.config) for w in workers}
            order = random.Random(seed)
            for _ in range(rounds):
                for w in order.sample(workers, len(workers)):
                    block, mine = w.ask(do="block", steps=steps), measured[w.config.name]
                    mine.seconds.append(block["seconds"] / steps)
                    mine.helpers.append(block["helpers"])
                    mine.pool.append(block["pool"])
                    mine.writer += block["writer"]
            for w in workers:
                end = w.ask(do="finish")
                measured[w.config.name].rise_kib, measured[w.config.name].reset = end["rise_kib"], end["reset"]
        finally:
            for w in workers:
                w.stop()
    return list(measured.values())


# ------------------------------------------------------------------------ report

@dataclass
class Row:
    workload: str
    config: Config
    median_ms: float
    ratio: float  # median over rounds of the ratio to bare's block of the same round
    mean_ms: float
    mean_ratio: float  # of the means over all timed steps: every sampled step weighs as often as it happened
    extra_mib: float | None
    bg_ms: float  # the helpers' CPU per timed step
    pool_ms: float | None  # the pool's CPU per timed step, less bare's
    writer_ms: float | None  # babysit's own count of its writer's CPU per timed step


def rows_of(workload: str, measured: list[Measured], steps: int) -> list[Row]:
    bare = next(m for m in measured if m.config.tool == "bare")
    rows = []
    for m in measured:
        timed = steps * len(m.seconds)
        is_bare = m is bare
        rows.append(Row(
            workload, m.config, statistics.median(m.seconds) * 1e3,
            statistics.median(a / b for a, b in zip(m.seconds, bare.seconds)),
            statistics.fmean(m.seconds) * 1e3, statistics.fmean(m.seconds) / statistics.fmean(bare.seconds),
            None if is_bare else (m.rise_kib - bare.rise_kib) / 1024, sum(m.helpers) / timed * 1e3,
            None if is_bare else (sum(m.pool) - sum(bare.pool)) / timed * 1e3,
            m.writer / timed * 1e3 if m.config.tool == "babysit" else None))
    return rows


def format_rows(rows: list[Row]) -> str:
    headers = ("workload", "config", "median ms/step", "x bare", "mean ms/step", "x bare", "extra peak RSS",
               "bg CPU ms/step", "pool CPU ms/step")
    table = [[r.workload, r.config.name, f"{r.median_ms:.3f}", f"{r.ratio:.3f}", f"{r.mean_ms:.3f}",
              f"{r.mean_ratio:.3f}",
              "-" if r.extra_mib is None else f"{r.extra_mib:+.1f} MiB", f"{r.bg_ms:.3f}",
              "-" if r.pool_ms is None else f"{r.pool_ms:+.3f}"] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    return "\n".join("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in (headers, *table))


def verdicts(rows: list[Row]) -> list[str]:
    """Per workload and cadence N where ``babysit every=N`` ran: is its step time below every peer's at N?"""
    lines = []
    for workload in dict.fromkeys(r.workload for r in rows):
        mine = [r for r in rows if r.workload == workload]
        for ours in (r for r in mine if r.config.tool == "babysit" and r.config.every):
            peers = [r for r in mine
                     if r.config.tool not in ("bare", "babysit") and r.config.every == ours.config.every]
            if not peers:
                continue
            above = [p.config.name for p in peers if p.ratio <= ours.ratio]
            others = ", ".join(f"{p.config.name} {p.ratio:.3f}x" for p in peers)
            lines.append(f"{workload}, every {ours.config.every} step(s): {ours.config.name} {ours.ratio:.3f}x vs "
                         f"{others}: " + ("below every peer" if not above else f"NOT below {', '.join(above)}"))
    return lines


def notes(rows: list[Row], reset: bool) -> str:
    """What the columns are, under the table."""
    lines = ["", "median ms/step: over rounds, the config's background catch-up included; x bare: median of the "
             "ratios to bare in the same round.",
             "mean ms/step: over all timed steps, so every sampled step counts as often as it happened; x bare: the "
             "ratio of the means.",
             "extra peak RSS: the rise of the peak resident set over the resident set after imports and model build, "
             "child processes' peaks added, minus bare's"
             + ("." if reset else " (the peak could not be reset: whole-process peaks)."),
             "bg CPU: the config's helper threads and processes, per timed step; pool CPU: the rest of the process "
             "outside the training thread (torch's threads), less bare's."]
    writer = "; ".join(f"{r.workload} {r.config.name} {r.writer_ms:.3f}" for r in rows if r.writer_ms is not None)
    if writer:
        lines.append(f"babysit's own count of its writer's CPU (mon.writer_seconds), ms/step: {writer}")
    return "\n".join(lines)


def available(configs: list[Config]) -> list[Config]:
    """The configs whose libraries are installed; the others are named and left out."""
    missing = sorted({c.tool for c in configs
                      if c.tool in PACKAGES and importlib.util.find_spec(PACKAGES[c.tool]) is None})
    for tool in missing:
        print(f"{tool}: not installed (pip install 'babysit[bench]'); its configs are skipped", flush=True)
    return [c for c in configs if c.tool not in missing]


def versions(configs: list[Config]) -> str:
    found = [f"{tool} {importlib.metadata.version(PACKAGES[tool])}" for tool in dict.fromkeys(c.tool for c in configs)
             if tool in PACKAGES]
    return ", ".join([f"torch {torch.__version__}", *found])


def parse_configs(text: str) -> list[Config]:
    configs = [Config.parse(name) for name in text.split(",") if name.strip()]
    if not any(c.tool == "bare" for c in configs):
        configs.insert(0, Config.parse("bare"))  # every ratio is to it
    return list({c.name: c for c in configs}.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Step time, memory and background CPU of babysit beside wandb, "
                                                 "TensorBoard and plain hooks, one process per config.")
    parser.add_argument("--workload", choices=(*TASKS, "all"), default="all")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default: 20)")
    parser.add_argument("--steps", type=int, default=50, help="steps per config per round (default: 50)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps per config first (default: 30)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 5 steps, 5 warm-up steps")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated config names (default: all of them; bare is always added)")
    parser.add_argument("--seed", type=int, default=0, help="of the weights, the batches and the rounds' orders")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], Config.parse(args.worker[1]), args.seed)
    try:
        configs = available(parse_configs(args.configs))
    except ValueError as e:
        parser.error(str(e))
    rounds, steps, warmup = (2, 5, 5) if args.quick else (args.rounds, args.steps, args.warmup)
    workloads = list(TASKS) if args.workload == "all" else [args.workload]
    print(f"CPU; {versions(configs)}; {THREADS} threads per worker, {os.cpu_count()} CPUs (load average "
          f"{os.getloadavg()[0]:.1f} at start); one process per config; {rounds} rounds x {steps} steps per config, "
          f"{warmup} warm-up steps", flush=True)
    rows, measured = [], []
    for workload in workloads:
        found = time_workload(workload, configs, rounds, steps, warmup, args.seed)
        measured += found
        rows += rows_of(workload, found, steps)
    print(format_rows(rows))
    print(notes(rows, all(m.reset for m in measured)))
    for line in verdicts(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
