"""What does ``watch`` cost a training step? The reference workloads of issue 2, item 7.

The workloads are :mod:`workloads`' (defined once for every benchmark), on 2 threads:
the CPU reference ``cnn`` (two conv-ReLU-pool blocks on synthetic 3x32x32 images, then a
2048-128-10 MLP head) and ``mlp`` (784 -> 512 five times with ReLU, -> 10), SGD with
momentum 0.9 and cross-entropy, batches of 64; also ``transformer`` (a small causal
language model, AdamW) and ``lstm``; and for ``--device cuda``, ``resnet18`` (ResNet-18 on
3x32x32, batches of 128) and ``gpt2`` (GPT-2 small, 124M parameters, 8 sequences of 1,024), ``--workload
gpu`` for both. ``--compile`` runs every config's model through ``torch.compile``, bare
included. Each is timed in five configs:
``bare`` (no babysit); ``bare again`` (a second unwatched model: the noise floor);
``unsampled`` (watched, but only step 0 sampled: what every step pays for the hooks, the
loss logging and the writer); ``auto`` (``watch(every=None)``, the default interval); ``auto+stopping`` (the same
with an ``EarlyStopping()`` policy, whose stop on divergence makes each sampled step wait
for the detectors to have seen the losses logged before it); and
``every=1`` (every statistic on every step). A step is zero_grad, forward, loss, backward,
optimizer step and, when watched, ``mon.log(loss=loss)`` with the loss as a tensor.

Method. The configs train side by side in rounds; each round runs a block of
``--steps`` steps per config, in a random order drawn afresh for each round (seeded), so
slow drift of the machine (thermal, other processes) and the aftermath of one config's
block fall on all configs alike. Before the rounds,
each config runs ``WARMUP_STEPS`` untimed steps (allocator growth, the automatic
schedule's first estimate). After each watched block we wait for babysit's writer thread
to commit what the block logged, outside the clock, and charge the CPU time the writer
thread spent meanwhile (``mon.writer_seconds``, its own thread clock) to the block: that
is work which would otherwise spill into the next config's block. (The process clock
would also count torch's idle OpenMP threads spinning while we wait.) A block's time over its steps is its
step time; we report, per
config, the median over rounds (with the median of its per-round ratios to bare) and the
mean over all steps (which weighs every sampled step exactly as often as it happened).

Memory. tracemalloc does not see torch's allocations and torch keeps no allocator
statistics on the CPU, so each config also trains in fresh subprocesses that report
their peak resident set (Linux ``VmHWM``, reset after the imports through
``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` of the whole process); the extra peak
is the difference of the medians to bare's. All subprocesses import babysit, so the figure
is the cost of watching, not of importing.

Run: ``python benchmarks/overhead.py`` (cnn and mlp, about five minutes on 2 cores);
``--quick`` for a smoke run; on a GPU ``python benchmarks/overhead.py --device cuda
--workload gpu --instances 1``. See benchmarks/README.md for what the figures mean.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/: its workloads module
from trainer_hooks import EarlyStopping, watch  # noqa: E402
from workloads import CPU_WORKLOADS, GPU_WORKLOADS, train_step, workloads  # noqa: E402

THREADS = 2  # the reference machine's core count; fixed so results compare across machines
BATCH = 64
DEVICE = "cpu"  # --device: the reference figures are CPU; on a GPU the same workloads show the hooks' launch cost
COMPILE = False  # --compile: every config's model through torch.compile (inductor), bare included
WARMUP_STEPS = 60  # timed apart; covers lazy initialisation and the automatic schedule's calibration
MEMORY_STEPS = 200  # steps each memory subprocess trains: several sampled steps at the default interval
MEMORY_REPEATS = 3  # fresh processes per config; the median, as one process's peak varies by a few MiB
CONFIGS = ("bare", "bare again", "unsampled", "auto", "auto+stopping", "every=1")
INSTANCES = 3  # models per config, used in turn (see time_workload)
#: ``bare again`` is a second unwatched model timed like the others: its ratio to bare,
#: which should be 1, shows how far the machine's noise moves the figures.
#: ``unsampled`` samples step 0 only: the cost of the hooks, the loss logging and the writer
#: on the steps that are not sampled, which every interval pays on every step.
EVERY = {"unsampled": 10**9, "auto": None, "auto+stopping": None, "every=1": 1}  # the watched configs


TARGETS = {"auto": 1.02, "every=1": 1.5}  # issue 2, done-when: the cnn step time over bare


@dataclass
class Trainer:
    """One config of one workload: its own model, optimizer, batches and (maybe) watch handle."""

    config: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    mon: object | None
    times: list[float] = field(default_factory=list)  # seconds per step, one entry per round
    warmup: float = 0.0  # seconds the warm-up steps took
    steps: int = 0

    def step(self) -> None:
        loss = train_step(self.model, self.optimizer, self.batches[self.steps % len(self.batches)])
        if self.mon is not None:
            self.mon.log(loss=loss)
        self.steps += 1

    def block(self, steps: int) -> float:
        """Run ``steps`` steps; return the seconds they cost, the writer's catch-up included."""
        _synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        _synchronize()  # a GPU's queued work belongs to the block that queued it
        elapsed = time.perf_counter() - start
        if self.mon is not None:
            cpu = self.mon.writer_seconds
            _drain(self.mon)
            # The writer's CPU time on what was still queued, not the wait: process time
            # would also count torch's idle OpenMP threads spinning meanwhile.
            elapsed += self.mon.writer_seconds - cpu
        return elapsed


def _synchronize() -> None:
    if DEVICE != "cpu":
        torch.cuda.synchronize()


def _drain(mon) -> None:
    """Wait until the writer has committed everything logged so far."""
    if not mon.flush():
        raise RuntimeError("babysit's writer did not catch up within 30 s")


def make_trainer(workload: str, config: str, logdir: str, seed: int = 0, instance: int = 0) -> Trainer:
    task = workloads(BATCH)[workload]
    torch.manual_seed(seed)  # every config starts from the same weights and sees the same batches
    model = task.build().to(DEVICE)
    optimizer = task.optimizer(model)
    if COMPILE:  # every config, bare included: the overhead is against the compiled bare model
        model = torch.compile(model)
    batches = [(x.to(DEVICE), y.to(DEVICE)) for x, y in task.batches()]
    mon = None
    if config in EVERY:
        mon = watch(model, optimizer, run=f"bench-{workload}-{config.replace('=', '').replace('+', '-')}-{instance}",
                    config={"workload": workload}, every=EVERY[config], logdir=logdir,
                    early_stopping=EarlyStopping() if config.endswith("+stopping") else None)
    return Trainer(config, model, optimizer, batches, mon)


def interval_of(instances: list[Trainer]) -> str:
    """The sampling intervals the instances' schedules have settled on, at the end of the rounds."""
    if instances[0].mon is None:
        return "-"
    every = [t.mon.schedule.every for t in instances]
    return "step 0 only" if min(every) >= EVERY["unsampled"] else "/".join(map(str, every))


def time_workload(workload: str, rounds: int, steps: int, instances: int = INSTANCES) -> list[dict]:
    """Interleaved rounds of all configs; one result row per config.

    Each config trains ``instances`` separate models (same weights, same batches), one
    per round in turn: where a model's tensors happen to land in memory moves its step
    time by a percent or two, a bias that rotating instances averages out.
    """
    with tempfile.TemporaryDirectory(prefix="babysit-bench-") as logdir:
        trainers = {config: [make_trainer(workload, config, logdir, instance=i) for i in range(instances)]
                    for config in CONFIGS}
        make_trainer(workload, "bare", logdir).block(10)  # the process's first steps initialise torch's kernels
        try:
            for group in trainers.values():
                for trainer in group:
                    trainer.warmup = trainer.block(WARMUP_STEPS)
            order = random.Random(0)
            times: dict[str, list[float]] = {config: [] for config in CONFIGS}
            for round_ in range(rounds):
                # A fresh random order each round: no config always follows the same one
                # (a rotation would always put bare right after every=1's aftermath).
                for config in order.sample(CONFIGS, len(CONFIGS)):
                    trainer = trainers[config][round_ % instances]
                    times[config].append(trainer.block(steps) / steps)
            intervals = {config: interval_of(group) for config, group in trainers.items()}
        finally:
            for group in trainers.values():
                for trainer in group:
                    if trainer.mon is not None:
                        trainer.mon.close()
    bare = times["bare"]
    warmup = {config: sum(t.warmup for t in group) for config, group in trainers.items()}
    rows = []
    for config in CONFIGS:
        mine = times[config]
        paired = [a / b for a, b in zip(mine, bare)]  # same round: drift cancels
        rows.append({"workload": workload, "config": config, "every": intervals[config],
                     "median_ms": statistics.median(mine) * 1e3, "median_ratio": statistics.median(paired),
                     "mean_ms": statistics.fmean(mine) * 1e3,
                     "mean_ratio": statistics.fmean(mine) / statistics.fmean(bare),
                     "warmup_ratio": warmup[config] / warmup["bare"]})
    return rows


# ------------------------------------------------------------------------ memory

def peak_rss_mib(workload: str, config: str, steps: int) -> tuple[float, bool]:
    """Peak resident set of a fresh process that trains ``steps`` steps in ``config``, and
    whether the count started after the imports."""
    out = subprocess.run([sys.executable, __file__, "--memory-probe", workload, config, "--steps", str(steps),
                          *(["--compile"] if COMPILE else [])],
                         check=True, capture_output=True, text=True).stdout
    found = json.loads(out.strip().splitlines()[-1])
    return found["maxrss_kib"] / 1024, found["reset"]


def memory_probe(workload: str, config: str, steps: int) -> None:
    """Print the peak RSS of setting up and training, imports excluded where Linux allows."""
    reset = _reset_peak_rss()
    with tempfile.TemporaryDirectory(prefix="babysit-bench-") as logdir:
        trainer = make_trainer(workload, config, logdir)
        for _ in range(steps):
            trainer.step()
        if trainer.mon is not None:
            trainer.mon.close()
    print(json.dumps({"maxrss_kib": _peak_rss_kib(), "reset": reset}))


def _peak_rss_kib() -> float:
    """This process's peak resident set in KiB.

    Linux: ``VmHWM``, which belongs to this process image. ``ru_maxrss`` would not do in a
    subprocess: Linux carries the parent's resident set at fork into it across exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 1024 if sys.platform == "darwin" else maxrss  # macOS reports bytes


def _reset_peak_rss() -> bool:
    """Restart the peak-RSS count here (Linux >= 4.0), so import peaks do not hide training's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size (VmHWM, ru_maxrss)
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------ report

def format_rows(rows: list[dict]) -> str:
    headers = ("workload", "config", "every", "median ms/step", "x bare", "mean ms/step", "x bare",
               "extra peak RSS")
    table = [[r["workload"], r["config"], r["every"], f"{r['median_ms']:.3f}", f"{r['median_ratio']:.3f}",
              f"{r['mean_ms']:.3f}", f"{r['mean_ratio']:.3f}",
              "-" if r["extra_mib"] is None else f"{r['extra_mib']:+.1f} MiB"] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]
    lines = [headers, *table]
    return "\n".join("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def main(argv=None) -> int:
    global DEVICE, BATCH, COMPILE
    parser = argparse.ArgumentParser(description="Step-time and memory overhead of babysit's watch "
                                                 "on the reference CPU workloads.")
    parser.add_argument("--workload", choices=(*CPU_WORKLOADS, *GPU_WORKLOADS, "all", "gpu"), default="all",
                        help="all: the CPU reference, cnn and mlp; gpu: resnet18 and gpt2 (for --device cuda)")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default: 30)")
    parser.add_argument("--instances", type=int, default=INSTANCES,
                        help=f"models per config, used in turn (default: {INSTANCES})")
    parser.add_argument("--steps", type=int, default=50,
                        help="steps per config per round; about the automatic interval, so that most "
                             "rounds hold a sampled step (default: 50)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 rounds of 10 steps, short "
                                                             "memory probes; the figures are noisy")
    parser.add_argument("--device", default="cpu", help="cpu (the reference) or cuda; on cuda the "
                                                        "peak-memory probes are skipped")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default: {BATCH})")
    parser.add_argument("--compile", action="store_true", help="every config's model through torch.compile, "
                                                               "bare included (watch is given the compiled module)")
    parser.add_argument("--memory-probe", nargs=2, metavar=("WORKLOAD", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    DEVICE, BATCH, COMPILE = args.device, args.batch, args.compile
    torch.set_num_threads(THREADS)
    if args.memory_probe:
        memory_probe(*args.memory_probe, steps=args.steps)
        return 0
    rounds, steps, memory_steps, repeats = ((3, 10, 40, 1) if args.quick else
                                            (args.rounds, args.steps, MEMORY_STEPS, MEMORY_REPEATS))
    chosen = {"all": ("cnn", "mlp"), "gpu": GPU_WORKLOADS}.get(args.workload, (args.workload,))
    where = torch.cuda.get_device_name() if DEVICE != "cpu" else "CPU"
    print(f"{where}{' compiled' if COMPILE else ''}, batch {BATCH}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs "
          f"(load average {os.getloadavg()[0]:.1f} at start); "
          f"{rounds} rounds x {steps} steps per config, {WARMUP_STEPS} warm-up steps; "
          f"peak RSS: median of {repeats} fresh process(es) per config ({memory_steps} steps)", flush=True)
    rows, reset = [], True
    for workload in chosen:
        found = time_workload(workload, rounds, steps, 1 if args.quick else args.instances)
        peaks = {}
        for config in ("bare", *EVERY) if DEVICE == "cpu" else ():
            probes = [peak_rss_mib(workload, config, memory_steps) for _ in range(repeats)]
            peaks[config], reset = statistics.median(p for p, _ in probes), all(r for _, r in probes)
        for row in found:
            row["extra_mib"] = peaks[row["config"]] - peaks["bare"] if row["config"] in EVERY and peaks else None
        rows += found
    print(format_rows(rows))
    print(f"\nmedian: of the rounds' mean step times, and x bare the median of the ratios to bare in the same "
          "round;\nmean: over all timed steps, every sampled step included.\n"
          f"every: the interval in force at the end. Warm-up ({WARMUP_STEPS} steps, not in the figures above) "
          "took " + ", ".join(f"{r['workload']} {r['config']} {r['warmup_ratio']:.2f}x" for r in rows
                             if r["config"] in EVERY) + " bare.\n"
          + (f"extra peak RSS: median peak resident set of {repeats} fresh process(es) per config, minus bare's "
             + ("(counted from after the imports)." if reset else "(whole process; imports included).")
             if DEVICE == "cpu" else "peak memory: not probed on a GPU."))
    targets = [f"{r['config']} {r['median_ratio']:.3f}x (target <= {TARGETS[r['config']]}x: "
               f"{'met' if r['median_ratio'] <= TARGETS[r['config']] else 'NOT met'})"
               for r in rows if r["workload"] == "cnn" and r["config"] in TARGETS]
    if targets and DEVICE == "cpu" and BATCH == 64:
        print("issue 2 targets on cnn: " + "; ".join(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
