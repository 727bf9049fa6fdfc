"""Tests that load every core on purpose, and tests that wait on a deadline for a browser or a
socket, do not run at once in the suite's worker processes.

Why: the suite runs files in two worker processes on a 2-core machine. A file that trains
the diagnosis zoo in two processes, or drives fifty trainers and a hundred viewers, takes
both cores; a browser test beside it saw a loopback connect miss its 3 s and a page miss
30 s deadlines (CI, 2026-12-03). A lock file shared by the workers of one run: the loaders
take it exclusively (:func:`all_cores`), the waiters shared (:func:`some_cores`), so
waiters run beside each other and beside ordinary tests, never beside a loader.

Fair: ``flock`` lets a shared hold in while another is held, so a stream of waiters, a
browser file's tests one after the other, would keep a loader out for the whole file. Every
taker first passes a turnstile (a second lock file) that a loader keeps closed while it waits.

Nested holds in one process reuse the one descriptor (``flock`` on two descriptors of one
process would wait for itself): a shared hold inside an exclusive one is a no-op, an
exclusive one inside a shared one converts the lock for its span.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

#: One lock per test run: pytest-xdist gives every worker of a run the same id.
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))
LOCK_PATH = Path(tempfile.gettempdir()) / f"babysit-tests-cores-{RUN_ID}.lock"
TURNSTILE_PATH = LOCK_PATH.with_suffix(".turnstile")

_held: list[int] = []  # the modes held in this process, innermost last
_fds: dict[Path, int] = {}


def _descriptor(path: Path = LOCK_PATH) -> int:
    if path not in _fds:
        _fds[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    return _fds[path]


def _take(mode: int) -> None:
    turnstile = _descriptor(TURNSTILE_PATH)
    fcntl.flock(turnstile, fcntl.LOCK_EX)  # closed behind a waiting loader
    try:
        fcntl.flock(_descriptor(), mode)
    finally:
        fcntl.flock(turnstile, fcntl.LOCK_UN)


@contextlib.contextmanager
def _holding(mode: int):
    strongest = max(_held, default=None)
    if strongest is not None and strongest >= mode:  # LOCK_EX (2) > LOCK_SH (1): already covered
        _held.append(mode)
        try:
            yield
        finally:
            _held.pop()
        return
    _take(mode)
    _held.append(mode)
    try:
        yield
    finally:
        _held.pop()
        fcntl.flock(_descriptor(), max(_held) if _held else fcntl.LOCK_UN)


def all_cores():
    """Hold the machine alone (a test that loads every core) for the block."""
    return _holding(fcntl.LOCK_EX)


def some_cores():
    """Keep the core-loading tests out for the block (a test that waits on deadlines)."""
    return _holding(fcntl.LOCK_SH)
