"""How long does the run page take to open a run of a million steps? (the run page's figure)

Builds, in a temporary logdir, the store of two runs of the same 50-layer model: ``big``
(``--steps``, default 1,000,000: ``loss`` every step, ``val_loss`` and ``epoch`` every
1,000, layer statistics, input statistics and a filter image every 200 steps: 150
summaries per sample (activation and output_grad of 50 layers, param_grad of 50
parameters) with 7 quantiles and a 32-bin histogram each, a few flags, status events and
a run end) and ``small`` (1,000 steps, the same schedule). Events are real
:class:`monitor.events.Event` objects appended through ``RunStore.append`` in batches,
as the ingest channel does. Then a real server (the app ``babysit serve`` runs, here in a
thread on a loopback port) answers the calls the run page makes when it opens a run,
each timed by wall clock from request to last byte: the first call, then the median of
``--repeats`` more. The figure is the sum of the medians; the target is about one second
for ``big``.

Run: ``python benchmarks/history.py`` (building takes a few minutes on 2 cores);
``--steps 20000`` for a quick run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from monitor.events import (QUANTILE_LEVELS, Event, Filters, Flag, InputStats, Kind, LayerStats, ModuleInfo,
                            RunEnd, RunStart, Scalars, Status, TensorSummary)
from monitor.store import RunStore
from web.app import ServerConfig, create_app
from web.serving import serve_in_thread

LAYERS = 50
SAMPLE_EVERY = 200  # steps between sampled layer statistics, input statistics and filter images
VAL_EVERY = 1_000  # steps between validation losses (and epoch numbers)
HIST_BINS = 32
BATCH_EVENTS = 2_000  # events per append: what the writer and the ingest channel commit at most
TARGET_SECONDS = 1.0
FLAG_STEPS = (0.1, 0.5, 0.9)  # fractions of the run where a flag is raised


def page_calls(run: str, first_layer: str) -> list[tuple[str, str]]:
    """(label, path) of every call the run page makes when it opens ``run``."""
    base = f"/api/runs/{run}"
    bands = "step,min,max,mean,q0,q1,q2,q3,q4,q5,q6"  # what web/js/src/layers.js asks for
    return [("run", base), ("series", f"{base}/series"), ("flags", f"{base}/flags"), ("incidents", f"{base}/incidents"),
            ("layers activation", f"{base}/layers?signal=activation&layer={first_layer}&fields={bands}"),
            ("layers output_grad", f"{base}/layers?signal=output_grad&layer={first_layer}&fields={bands}"),
            ("layers param_grad", f"{base}/layers?signal=param_grad&fields=step,update_ratio&max_points=500"),
            ("latest layer_stats", f"{base}/latest/layer_stats"), ("latest filters", f"{base}/latest/filters"),
            ("inputs", f"{base}/inputs"), ("filters.png", f"{base}/filters.png")]


def summaries(rng: np.random.Generator, step: int, steps: int) -> tuple[TensorSummary, ...]:
    """150 realistic summaries of one sampled step: spread shrinking as training goes on."""
    decay = 1.0 / (1.0 + 5.0 * step / max(steps, 1))
    out = []
    for signal, scale in (("activation", 1.0), ("output_grad", 1e-3 * decay), ("param_grad", 1e-2 * decay)):
        for i in range(LAYERS):
            std = float(scale * (1.0 + 0.1 * rng.random()))
            mean = float(std * rng.normal() * 0.1)
            quantiles = tuple(float(v) for v in mean + std * np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]))
            hist = tuple(int(v) for v in rng.multinomial(4096, np.full(HIST_BINS, 1.0 / HIST_BINS)))
            extra = {"units": 64, "dead_units": int(rng.integers(0, 4)), "window": 4} if signal == "activation" else {}
            if signal == "param_grad":
                extra = {"weight_norm": float(5.0 + rng.random()), "update_ratio": float(1e-3 * decay * rng.random())}
            out.append(TensorSummary(
                layer=f"blocks.{i}.weight" if signal == "param_grad" else f"blocks.{i}", signal=signal,
                module="Linear", numel=65_536, nan=0, inf=0, mean=mean, std=std, min=mean - 4 * std,
                max=mean + 4 * std, norm=float(std * 256), sample=4096, quantiles=quantiles, hist=hist,
                hist_lo=mean - 4 * std, hist_hi=mean + 4 * std, zero_frac=float(rng.random() * 0.5), **extra))
    assert len(out[0].quantiles) == len(QUANTILE_LEVELS)
    return tuple(out)


def run_events(run: str, steps: int, seed: int = 0):
    """The run's events in seq order, as a training process would send them."""
    rng = np.random.default_rng(seed)
    seq = 0
    wall = 1.7e9

    def event(step: int, kind: Kind, data) -> Event:
        nonlocal seq
        seq += 1
        return Event(run, seq - 1, step, wall + step * 0.05, kind, data)

    model = tuple(ModuleInfo(f"blocks.{i}", "Linear", 65_792, 65_792, "256x256, 256") for i in range(LAYERS))
    yield event(0, Kind.RUN_START, RunStart(name=run, config={"lr": 0.1, "batch": 64}, model=model, host="bench",
                                            pid=1, rank=0, world=1, versions={"torch": "2.x"},
                                            sampling={"every": SAMPLE_EVERY}))
    yield event(0, Kind.STATUS, Status("running", "started", "user"))
    flags = {int(steps * f) // SAMPLE_EVERY * SAMPLE_EVERY for f in FLAG_STEPS}
    for step in range(steps):
        if step % SAMPLE_EVERY == 0:
            yield event(step, Kind.INPUT_STATS, InputStats(shape=(64, 256), mean=float(rng.normal() * 0.01),
                                                           std=1.0, min=-4.0, max=4.0, nan=0, inf=0))
            yield event(step, Kind.LAYER_STATS, LayerStats(summaries(rng, step, steps)))
            pixels = rng.integers(0, 256, 23 * 23 * 3, dtype=np.uint8).tobytes()
            yield event(step, Kind.FILTERS, Filters(layer="blocks.0", count=16, height=23, width=23, channels=3,
                                                    pixels=pixels))
            if step in flags:
                yield event(step, Kind.FLAG, Flag(kind="dead_units", severity="warning", layer="blocks.3",
                                                  message="blocks.3: 3 of 64 units never active",
                                                  advice="lower the learning rate", evidence={"dead": 3}))
        values = {"loss": float(2.0 / (1.0 + step / 1e4) + 0.05 * rng.random())}
        if step % VAL_EVERY == VAL_EVERY - 1:
            values.update(val_loss=values["loss"] * 1.1, epoch=float(step // VAL_EVERY))
        yield event(step, Kind.SCALARS, Scalars(values))
    yield event(steps - 1, Kind.STATUS, Status("finished", "done", "user"))
    yield event(steps - 1, Kind.RUN_END, RunEnd(state="finished", steps=steps, duration=steps * 0.05))


def build(logdir: Path, runs: dict[str, int]) -> float:
    """Append every run's events through RunStore.append in batches; return the seconds it took."""
    start = time.perf_counter()
    with RunStore(logdir) as store:
        for seed, (run, steps) in enumerate(runs.items()):
            batch = []
            for event in run_events(run, steps, seed):
                batch.append(event)
                if len(batch) == BATCH_EVENTS:
                    store.append(batch)
                    batch = []
            store.append(batch)
    return time.perf_counter() - start


def fetch(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        size = len(response.read())
        assert response.status == 200, (url, response.status)
    return time.perf_counter() - start, size


def time_calls(url: str, run: str, repeats: int) -> list[tuple[str, float, float, int]]:
    """(label, first call s, median of the repeats s, bytes) for each call of the page."""
    out = []
    for label, path in page_calls(run, "blocks.0"):
        first, size = fetch(url + path)
        again = [fetch(url + path)[0] for _ in range(repeats)]
        out.append((label, first, statistics.median(again), size))
    return out


def time_in_browser(url: str, runs: list[str], repeats: int) -> dict[str, float]:
    """Median seconds from opening a run page in headless chromium to the page having loaded
    the run (every figure filled, ``babysitPage.loaded``), per run."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for run in runs:
            times = []
            for _ in range(repeats + 1):  # the first fills the browser's caches (BokehJS): left out
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                started = time.perf_counter()
                page.goto(f"{url}/runs/{run}")
                page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=60_000)
                times.append(time.perf_counter() - started)
                page.close()
            out[run] = statistics.median(times[1:])
        browser.close()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps of the big run (default: 1000000)")
    parser.add_argument("--small", type=int, default=1_000, help="steps of the small run (default: 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each call (default: 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="babysit-history-") as folder:
        logdir = Path(folder)
        built = build(logdir, {"small": args.small, "big": args.steps})
        size_mb = sum(p.stat().st_size for p in logdir.iterdir()) / 2**20
        app = create_app(ServerConfig(logdir=logdir))
        server = serve_in_thread(app)
        try:
            results = {run: time_calls(server.url, run, args.repeats) for run in ("small", "big")}
            in_browser = time_in_browser(server.url, ["small", "big"], 3)
        finally:
            server.stop()
            app.store.close()
    print(f"{os.cpu_count()} CPUs; store built in {built:.0f} s ({size_mb:,.0f} MiB): runs of {args.small:,} and "
          f"{args.steps:,} steps, {LAYERS} layers x 3 signals sampled every {SAMPLE_EVERY} steps; "
          f"threaded werkzeug server on loopback; median of {args.repeats} repeats after a first call")
    print(f"{'call':<20} {'small ms':>9} {'big first ms':>13} {'big ms':>8} {'big/small':>9} {'big KiB':>8}")
    for (label, _, small, _), (_, first, big, size) in zip(results["small"], results["big"]):
        print(f"{label:<20} {small * 1e3:>9.1f} {first * 1e3:>13.1f} {big * 1e3:>8.1f} {big / small:>9.1f} "
              f"{size / 1024:>8.0f}")
    small_total = sum(r[2] for r in results["small"])
    big_first = sum(r[1] for r in results["big"])
    big_total = sum(r[2] for r in results["big"])
    print(f"{'total':<20} {small_total * 1e3:>9.1f} {big_first * 1e3:>13.1f} {big_total * 1e3:>8.1f} "
          f"{big_total / small_total:>9.1f}")
    print(f"in a real browser (headless chromium), opening the page until every figure is filled, "
          f"median of 3: small {in_browser['small']:.2f} s, big {in_browser['big']:.2f} s "
          f"({in_browser['big'] / in_browser['small']:.2f}x)")
    print(f"issue 3 target: the page opens the big run in about {TARGET_SECONDS:.0f} s: "
          f"{in_browser['big']:.2f} s in the browser ({in_browser['big'] / TARGET_SECONDS:.2f}x; "
          f"{big_total:.2f} s of it answering on the server)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
