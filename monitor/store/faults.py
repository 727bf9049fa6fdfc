"""When the store's disk fails: the cause in plain words, and the store's health.

Why: a full or read-only disk is not the batch's fault and not a bug, so it must read as
neither. SQLite answers a full disk with ``SQLITE_FULL``, a read-only file with
``SQLITE_READONLY``, and a file system the kernel remounted read-only under an open file
(ext4's ``errors=remount-ro`` after a disk error) with ``SQLITE_IOERR_WRITE``, which a
one-byte probe write beside the store tells apart (``EROFS``, ``ENOSPC``). The store raises
:class:`StoreUnavailable` with that cause; the server refuses the batch as transient (the
sender keeps it and sends it again), and :class:`StoreHealth` logs one line when the
fault begins and one when the store takes writes again, never one per batch, and is what
``GET /api/health`` shows.
"""
from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("babysit.store")

#: The store's states: it takes writes, or why it does not (``unreachable``: a database
#: server that is down or cannot be reached, :mod:`monitor.store.postgres`).
OK, FULL, READ_ONLY, BUSY, IO_ERROR, UNREACHABLE = "ok", "full", "read_only", "busy", "io_error", "unreachable"

_CAUSE = {
    FULL: "the store's disk is full ({path})",
    READ_ONLY: "the store's disk is read-only ({path})",
    BUSY: "the store is locked by another process for longer than its busy timeout ({path})",
    IO_ERROR: "the store's disk failed to write ({path}: {error})",
}
_UNTIL = {FULL: "there is space again", READ_ONLY: "it is writable again", BUSY: "the lock is released",
          IO_ERROR: "it writes again"}
_ERRNOS = {errno.ENOSPC: FULL, errno.EDQUOT: FULL, errno.EFBIG: FULL, errno.EROFS: READ_ONLY,
           errno.EACCES: READ_ONLY, errno.EPERM: READ_ONLY}


class StoreUnavailable(RuntimeError):
    """The store cannot take writes now (``state``: full, read_only, busy, io_error); nothing
    of the batch was stored. Transient: the same batch can be stored once the cause is gone."""

    def __init__(self, state: str, message: str):
        super().__init__(message)
        self.state = state


def is_disk_fault(exc: BaseException) -> bool:
    """Whether SQLite failed because of the disk or the database file, not the batch's values
    (those raise ``OverflowError``, ``UnicodeEncodeError``, ``DataError``, ... and are refused
    for good upstream)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError, sqlite3.NotSupportedError))


def diagnose(exc: BaseException, path: Path) -> StoreUnavailable:
    """The cause of a disk fault of the store at ``path`` (SQLite's error, or the disk's
    ``OSError``), in plain words."""
    state = _state(exc, path)
    return StoreUnavailable(state, f"{_cause(state, path, exc)}: batches are refused until {_UNTIL[state]}")


def cannot_open(path: Path, exc: BaseException) -> StoreUnavailable:
    """The store cannot be opened for writing: the cause, and what to do."""
    state = _state(exc, path)
    return StoreUnavailable(state, f"cannot open the store: {_cause(state, path, exc)}; babysit must write "
                                   "its store there: free space or make it writable, or give another logdir")


def _cause(state: str, path: Path, exc: BaseException) -> str:
    return _CAUSE[state].format(path=path, error=exc)


def _state(exc: BaseException, path: Path) -> str:
    if isinstance(exc, OSError):
        return _ERRNOS.get(exc.errno, IO_ERROR)
    name = getattr(exc, "sqlite_errorname", "") or ""  # Python 3.11+; the message before that
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return FULL
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return READ_ONLY
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return BUSY
    return _probe(path.parent)  # an I/O error or a file that cannot be opened: ask the disk itself


def _probe(folder: Path) -> str:
    """Write, sync and remove one byte beside the store: what the disk answers names the cause."""
    probe = folder / ".babysit-write-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return _ERRNOS.get(exc.errno, IO_ERROR)
    return IO_ERROR


@dataclass(frozen=True)
class HealthState:
    """``state``: ``ok`` or why writes fail; ``since``: unix seconds the fault began (None
    when ok); ``refused``: writes refused since then; ``message``: the plain-words cause."""

    state: str
    path: str
    message: str = ""
    since: float | None = None
    refused: int = 0

    @property
    def ok(self) -> bool:
        return self.state == OK


class StoreHealth:
    """The store's write health, told once per change: a fault's first failure logs one
    line (its cause), the first success after it one line (how long it lasted)."""

    def __init__(self, path: Path):
        self._state = HealthState(OK, str(path))
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, path: Path) -> StoreUnavailable:
        """Record a failed write of the SQLite file at ``path``; the exception to raise in its place."""
        return self.record(diagnose(exc, path), exc)

    def record(self, fault: StoreUnavailable, exc: BaseException) -> StoreUnavailable:
        """Record a failed write whose cause is ``fault`` (``exc``: the engine's own error); ``fault``."""
        with self._lock:
            before = self._state
            fresh = before.state != fault.state
            self._state = HealthState(fault.state, before.path, str(fault),
                                      time.time() if before.ok else before.since, before.refused + 1)
        if fresh:
            log.error("babysit: %s; nothing is lost: senders keep their batches and send them again "
                      "(%s: %s)", fault, type(exc).__name__, exc)
        return fault

    def succeeded(self) -> None:
        with self._lock:
            before = self._state
            if before.ok:
                return
            self._state = HealthState(OK, before.path)
        log.warning("babysit: the store at %s takes writes again, after %.0f s (%s); %d writes were "
                    "refused meanwhile and are sent again by their senders",
                    before.path, time.time() - (before.since or time.time()), before.state, before.refused)

    def snapshot(self) -> HealthState:
        with self._lock:
            return self._state
