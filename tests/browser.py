"""Helpers of the real-browser tests: Debian's chromium driven by Playwright, and a tiny real
training that streams to a real server from a background thread."""
from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from trainer_hooks import watch

#: Debian's chromium (`apt-get install chromium`), as .ci/run installs it.
CHROMIUM = os.environ.get("BABYSIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
#: Flags for a headless chromium as root in a sandbox with no outside network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> str:
    """The browser's path; without one, skip (fail in CI, where BABYSIT_REQUIRE_BROWSER=1)."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    message = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("BABYSIT_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


def tiny_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def end_leftover_trainings(timeout: float = 2.0) -> None:
    """End the trainings a test left running (it failed before stopping them): a leftover
    thread trains on in the worker process for good, and its watch's process-wide hooks
    reach into the later tests of that worker. Its close removes them first; what it
    then sends to a server long gone may go on after ``timeout``."""
    for training in list(Training.running):
        training.abandoned.set()
        training.join(timeout)


class Training(threading.Thread):
    """A tiny real training streaming to ``server``: ``steps`` SGD steps on random 6x6
    images, ``delay`` seconds apart, a validation loss every 10 steps, an optional flag at
    ``flag_at``; it breaks when ``should_stop`` turns true. ``run_id`` is set once it watches.
    Its random labels would (rightly) raise a plateau flag after a while: the detectors
    are off unless ``detectors`` names some, so the flags a test sees are the ones it sent."""

    running: set[Training] = set()  # started and not yet ended (end_leftover_trainings)

    def __init__(self, server: str, spool: Path, *, run: str = "browser", steps: int = 60, delay: float = 0.02,
                 flag=None, flag_at: int = 5, token: str | None = None, config: dict | None = None,
                 detectors=()):
        super().__init__(name=f"training-{run}", daemon=True)
        self.server, self.spool, self.run_name, self.steps, self.delay = server, spool, run, steps, delay
        self.flag, self.flag_at, self.token, self.config = flag, flag_at, token, config or {"lr": 0.05}
        self.detectors = list(detectors)
        self.watching = threading.Event()
        self.run_id: str | None = None
        self.stopped_by_request = False
        self.steps_done = 0
        self.error: BaseException | None = None
        self.abandoned = threading.Event()  # its test is over

    def run(self) -> None:
        Training.running.add(self)
        try:
            self._train()
        except BaseException as exc:  # surfaced by finish()
            self.error = exc
            self.watching.set()
        finally:
            Training.running.discard(self)

    def _train(self) -> None:
        model = tiny_convnet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        with watch(model, optimizer, run=self.run_name, server=self.server, logdir=self.spool, every=2,
                   filters_every=1, token=self.token, config=self.config, detectors=self.detectors) as mon:
            self.run_id = mon.run_id
            self.watching.set()
            for step in range(self.steps):
                x = torch.randn(16, 1, 6, 6, generator=generator)
                y = torch.randint(0, 3, (16,), generator=generator)
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                mon.log(loss=loss, acc=0.5)
                if step % 10 == 9:
                    mon.log(val_loss=loss.item() * 1.1, val_acc=0.4, epoch=step // 10)
                if self.flag is not None and step == self.flag_at:
                    mon.add_flag(self.flag)
                self.steps_done = step + 1
                if mon.should_stop:
                    self.stopped_by_request = True
                    break
                if self.abandoned.is_set():
                    break
                time.sleep(self.delay)

    def started(self, timeout: float = 30.0) -> str:
        assert self.watching.wait(timeout), "the training did not start watching"
        if self.error is not None:
            raise self.error
        return self.run_id

    def finish(self, timeout: float = 60.0) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the training did not finish"
        if self.error is not None:
            raise self.error


def stop_from_page(page, training: Training) -> None:
    """Press the page's Stop run, confirm, and wait for the training to end."""
    page.click("#stop")
    page.click("#stop-confirm")
    training.finish()


def source_length(page, name: str) -> int:
    """Rows in the page's Bokeh data source ``name``."""
    return page.evaluate("""name => {
        for (const doc of (window.Bokeh && Bokeh.documents) || []) {
            const m = doc.get_model_by_name(name);
            if (m) { const c = Object.values(m.data)[0]; return c ? c.length : 0; }
        }
        return -1;
    }""", name)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def source_data(page, name: str) -> dict | None:
    """The columns of the page's Bokeh data source ``name``, as plain lists (None: no such source)."""
    return page.evaluate("""name => {
        for (const doc of Bokeh.documents) {
            const m = doc.get_model_by_name(name);
            if (m) return Object.fromEntries(Object.entries(m.data).map(([k, v]) => [k, Array.from(v)]));
        }
        return null;
    }""", name)
