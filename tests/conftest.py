"""Shared fixtures: a small run with every event kind, NaN and ±Inf where they can occur."""
from __future__ import annotations

import math
import os
import sys

# The trainings in the tests are tiny: one thread runs them as fast as several, and
# several threads fight over the cores when anything else runs (a test's server, CI's
# neighbours), slowing an 8-epoch demo from 1 s to over a minute. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from cores import some_cores
from services import postgres, postgres_url, redis_url  # noqa: F401 - fixtures for every test module

from monitor.events import (PAYLOADS, Event, Filters, Flag, InputStats, LayerStats, ModuleInfo, RunEnd,
                            RunStart, Scalars, Status, TensorSummary)


def summary(layer: str, **overrides) -> TensorSummary:
    fields = dict(layer=layer, signal="activation", module="Conv2d", numel=64, nan=1, inf=1,
                  mean=0.5, std=math.nan, min=-math.inf, max=math.inf, norm=3.0, sample=62,
                  quantiles=(-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5), hist=(1, 2, 3, 4),
                  hist_lo=-2.0, hist_hi=2.0, zero_frac=0.25, units=8, dead_units=2, window=4)
    return TensorSummary(**{**fields, **overrides})


def make_run(run: str = "digits-cnn", wall: float = 1000.0) -> list[Event]:
    """Every kind once or more, in seq order, as the trainer would send them."""
    payloads = [
        (0, RunStart(name="digits", config={"lr": 0.1, "sizes": [1, 2], "eps": math.nan},
                     model=(ModuleInfo("conv1", "Conv2d", 448, 448, "16x3x3x3, 16"),),
                     host="gpu-1", pid=42, rank=0, world=1, versions={"torch": "2.3"},
                     sampling={"every": 10})),
        (0, InputStats(shape=(8, 3, 2, 2), mean=0.1, std=1.0, min=-3.0, max=math.inf, nan=0, inf=1,
                       channel_mean=(0.1, math.nan, 0.2), channel_std=(1.0, 1.0, math.inf))),
        (0, Scalars({"loss": 2.5, "lr": 0.1})),
        (0, LayerStats((summary("conv1"),
                        summary("fc", signal="param_grad", module="Linear", quantiles=(), units=None,
                                dead_units=None, window=None, weight_norm=2.0, update_ratio=1e-3)))),
        (0, Filters(layer="conv1", count=4, height=2, width=3, channels=3, pixels=bytes(range(18)))),
        (1, Scalars({"loss": math.inf, "grad_norm": -math.inf})),
        (2, Scalars({"loss": math.nan, "val_acc": 0.5})),
        (2, Flag(kind="nan_loss", severity="critical", message="loss is NaN at step 2",
                 advice="lower the learning rate", layer="fc", evidence={"loss": math.nan, "steps": [1, 2]})),
        (2, Status(state="diverged", reason="loss is NaN", by="early_stopping")),
        (2, RunEnd(state="diverged", steps=3, duration=1.5)),
    ]
    kinds = {payload: kind for kind, payload in PAYLOADS.items()}
    return [Event(run=run, seq=seq, step=step, wall=wall + seq, kind=kinds[type(data)], data=data)
            for seq, (step, data) in enumerate(payloads)]


@pytest.fixture(autouse=True)
def no_training_outlives_its_test():
    """A browser test that fails before it stops its training would leave it running."""
    yield
    browser = sys.modules.get("browser")  # tests/browser.py, where a test imported it
    if browser is not None:
        browser.end_leftover_trainings()


@pytest.fixture
def make_events():
    """``make_events(run="digits-cnn", wall=1000.0) -> list[Event]``: a fresh sample run."""
    return make_run


def _http_get(url: str, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """GET ``url``: (status, headers, body), error statuses included, the connection always closed."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


@pytest.fixture
def http_get():
    return _http_get


@pytest.fixture
def calm_cores():
    """For a test that waits on deadlines: never beside a test that loads every core (tests/cores.py)."""
    with some_cores():
        yield


@pytest.fixture
def page(browser):
    """A fresh tab; any script error or console error on it fails the test (``expected_errors``:
    console texts a test provokes, as a server taken down). With ``strict_network`` set, so
    does any failed request or HTTP error answer (tests/test_zoo_pages.py). Never beside a test
    that loads every core (tests/cores.py): the page's deadlines are for a page, not a starved host."""
    with some_cores():
        yield from _tab(browser)


def _tab(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    problems, network = [], []
    tab.expected_errors = ()
    tab.strict_network = False
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", lambda m: problems.append(f"console error: {m.text}")
           if m.type == "error" and not any(e in m.text for e in tab.expected_errors) else None)
    tab.on("requestfailed", lambda r: network.append(f"request failed: {r.method} {r.url} ({r.failure})")
           if not r.url.startswith("about:") else None)
    tab.on("response", lambda r: network.append(f"HTTP {r.status}: {r.request.method} {r.url}")
           if r.status >= 400 else None)
    yield tab
    tab.goto("about:blank")  # leave before the server stops: no reconnection errors
    context.close()
    assert not problems, problems
    assert not (tab.strict_network and network), network


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium under Playwright, one per test module (skipped without it, a
    failure in CI: tests/browser.py)."""
    from browser import CHROMIUM_ARGS, require_chromium

    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
