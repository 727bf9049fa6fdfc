"""How long from ``mon.log(loss=...)`` to the point in the browser's plot? (issue 3's latency figure)

A training loop calls ``mon.log`` ``--events`` times, ``--interval`` seconds apart (100 logs
a second by default, a fast training), streaming to a real server on loopback; a real
browser (Debian's chromium, headless, driven by Playwright) has the run page open. The page's
``apply`` (which streams the points into the Bokeh sources) is wrapped to note, for every
loss point, the wall clock after the point is in its source minus the event's ``wall``
(stamped by ``log`` itself). Both clocks are this machine's. Two servers, side by side in
one run: the embedded one (``babysit demo``, ``watch(dashboard=True)``: Werkzeug in a
thread of the training process) and ``babysit serve`` (gunicorn, its own process).

Run: ``python benchmarks/latency.py`` (about 30 s). Target (issue 3): p95 <= 50 ms.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the tests' browser setup)

from monitor.cli import start_dashboard  # noqa: E402
from trainer_hooks import watch  # noqa: E402

TARGET_P95_MS = 50.0
INSTRUMENT = """() => {
    window.latencies = [];
    const page = window.babysitPage, apply = page.apply.bind(page);
    page.apply = (events) => {
        apply(events);
        const now = Date.now() / 1000;
        for (const e of events) {
            if (e.kind === "scalars" && "loss" in e.data.values) window.latencies.push(now - e.wall);
        }
    };
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def measure(browser, server: str, spool: Path, events: int, interval: float) -> list[float]:
    """Latencies in seconds of ``events`` logged losses, as the open run page saw them."""
    mon = watch(nn.Linear(1, 1), run="latency", server=server, logdir=spool)
    try:
        page = browser.new_page()
        page.goto(mon.dashboard_url)
        page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=30_000)
        page.evaluate(INSTRUMENT)
        next_at = time.perf_counter()
        for i in range(events):
            mon.log(loss=1.0 / (i + 1))
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
        page.wait_for_function(f"() => window.latencies.length >= {events}", timeout=60_000)
        latencies = page.evaluate("() => window.latencies")
        page.close()
        return latencies
    finally:
        mon.close()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between logs (default: 0.01)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    rows = []
    with tempfile.TemporaryDirectory(prefix="babysit-latency-") as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        embedded = start_dashboard(Path(tmp) / "embedded")
        try:
            rows.append(("embedded (Werkzeug thread)", measure(browser, embedded.url, Path(tmp) / "t1",
                                                              args.events, args.interval)))
        finally:
            embedded.stop()
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve", "--port", str(port),
                                  "--logdir", str(Path(tmp) / "served")], cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(url + "/api/runs")
            rows.append(("babysit serve (gunicorn)", measure(browser, url, Path(tmp) / "t2",
                                                            args.events, args.interval)))
        finally:
            serve.terminate()
            serve.wait(30)
        browser.close()
    print(f"log() -> point in the browser's plot, {args.events} losses logged every {args.interval * 1000:g} ms, "
          f"loopback, {os.cpu_count()} CPUs")
    print(f"{'server':<28} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  p95 / target")
    for name, values in rows:
        ms = [v * 1000 for v in values]
        p50, p95 = percentile(ms, 50), percentile(ms, 95)
        print(f"{name:<28} {p50:8.1f} {p95:8.1f} {max(ms):8.1f}  {p95 / TARGET_P95_MS:.2f}x of {TARGET_P95_MS:g} ms")


if __name__ == "__main__":
    main()
