"""What does ``babysit run`` cost a whole script? Wall time of ``babysit run SCRIPT`` over
``python SCRIPT``, and the hooks' cost per module call.

**Scripts.** Two of examples/unmodified/: ``cross_entropy_loop.py`` (a ConvNet on the
digits, Adam, a DataLoader with two workers, a validation pass per epoch: 5 epochs, 120
steps) and ``lbfgs_rnn.py`` (an LSTM cell run 59 times per forward pass, LBFGS evaluating
its closure up to 20 times per step: about 70,000 module calls in 6 steps, the shape where
per-call cost shows). Each is run as a fresh process, as a user runs it, so the figure
includes what babysit adds to start-up (its imports, the store, the writer thread) and to
shut-down (the last commit).

**Method.** Rounds; each round runs ``bare`` (``python SCRIPT``), ``bare again`` (the same:
its ratio to ``bare`` is the noise of this machine now) and ``babysit run`` once each, in an
order drawn afresh per round (seeded), so drift falls on all three alike. Reported: the
median wall time of each, and the median of the per-round ratios to ``bare``.

**Per call.** An ``nn.LSTMCell(1, 24)`` on a batch of 16, called ``--calls`` times per
step, in fresh processes bare and with ``babysit run``'s hooks attached and the cell
watched (on steps that are not sampled: what every call pays), interleaved in rounds;
the difference of the medians is the hooks' cost per call.

Run: ``python benchmarks/run_wall.py`` (about four minutes on 2 cores); ``--rounds 3`` for a
smoke run. Figures in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "cross_entropy_loop": ["examples/unmodified/cross_entropy_loop.py", "--epochs", "5"],
    "lbfgs_rnn": ["examples/unmodified/lbfgs_rnn.py"],
}
CONFIGS = ("bare", "bare again", "babysit run")


def _command(config: str, script: list[str], logdir: str) -> list[str]:
    if config == "babysit run":
        return [sys.executable, "-m", "monitor.cli", "run", "--logdir", logdir, *script]
    return [sys.executable, *script]


def wall_ratios(rounds: int, seed: int) -> dict[str, dict[str, list[float]]]:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    rng = random.Random(seed)
    times = {name: {config: [] for config in CONFIGS} for name in SCRIPTS}
    with tempfile.TemporaryDirectory() as logdir:
        for r in range(rounds):
            for name, script in SCRIPTS.items():
                order = list(CONFIGS)
                rng.shuffle(order)
                for config in order:
                    started = time.perf_counter()
                    subprocess.run(_command(config, script, logdir), cwd=ROOT, env=env, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    times[name][config].append(time.perf_counter() - started)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return times


def per_call_worker(config: str, calls: int) -> float:
    """In this process: the median microseconds of an LSTMCell call over 20 blocks of
    ``calls``, bare or with babysit run's hooks attached and the cell watched (steps not sampled)."""
    import torch
    from torch import nn

    from trainer_hooks.attach import Attacher

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cell, x = nn.LSTMCell(1, 24), torch.randn(16, 1)
    optimizer = torch.optim.SGD(cell.parameters(), lr=1e-3)

    def block() -> float:
        h = c = torch.zeros(16, 24)
        started = time.perf_counter()
        for _ in range(calls):
            h, c = cell(x, (h, c))
        elapsed = time.perf_counter() - started
        (h.sum() + c.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
        return elapsed / calls * 1e6

    with tempfile.TemporaryDirectory() as logdir:
        attached = Attacher("per-call", {}, {"logdir": logdir, "every": 10 ** 6}) if config == "hooked" else None
        try:
            for _ in range(3):
                block()  # warm-up; with the hooks, the cell is watched at its first step (the sampled one)
            return statistics.median(block() for _ in range(20))
        finally:
            if attached is not None:
                attached.close()


def per_call(calls: int, rounds: int, seed: int) -> tuple[float, float]:
    """Median microseconds per call, bare and hooked, each in fresh processes, interleaved."""
    rng = random.Random(seed)
    figures = {"bare": [], "hooked": []}
    for _ in range(rounds):
        order = list(figures)
        rng.shuffle(order)
        for config in order:
            out = subprocess.run([sys.executable, __file__, "--per-call-worker", config, "--calls", str(calls)],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
            figures[config].append(float(out.split()[-1]))
    return statistics.median(figures["bare"]), statistics.median(figures["hooked"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--per-call-worker", choices=("bare", "hooked"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.per_call_worker:
        print(per_call_worker(args.per_call_worker, args.calls))
        return
    times = wall_ratios(args.rounds, args.seed)
    print(f"babysit run over python SCRIPT, {args.rounds} interleaved rounds (median wall seconds; median "
          "ratio to bare)")
    print(f"{'script':<20} {'config':<12} {'wall s':>8} {'ratio':>7}")
    for name, configs in times.items():
        for config, values in configs.items():
            ratio = statistics.median(v / b for v, b in zip(values, configs["bare"]))
            print(f"{name:<20} {config:<12} {statistics.median(values):>8.2f} {ratio:>7.3f}")
    bare, hooked = per_call(args.calls, args.rounds, args.seed)
    print(f"LSTMCell call: {bare:.1f} us bare, {hooked:.1f} us with babysit run's hooks "
          f"(+{hooked - bare:.2f} us a call, unsampled steps)")


if __name__ == "__main__":
    main()
