"""The SQLite backend: every event of every run, exactly once, in one file under the logdir.

Why SQLite in WAL mode: several training processes (and the dashboard server) may write
``<logdir>/babysit.sqlite3`` at once, and readers must not block the writers. Each batch
is one ``BEGIN IMMEDIATE`` transaction (take the write lock before reading, so a
concurrent writer makes us wait ``busy_timeout`` instead of failing on a stale snapshot);
``(run, seq)`` is the primary key, so a batch replayed from a spool is stored once.

Tables (:mod:`monitor.store.migrations`): ``events`` is the exact record (payload as
:func:`monitor.codec.dumps` text); ``scalars`` and ``runs`` are derived from it on append,
for fast charts and run lists, and so are the run page's tables: ``scalar_blocks``
(:mod:`monitor.store.blocks`) and ``layer_points``, ``layers``, ``input_points``
(:mod:`monitor.store.layers`); ``lost_runs`` and ``heard_runs`` (:mod:`monitor.store.liveness`)
are the server's, not the record's. SQLite stores NaN as NULL, so a NULL ``scalars.value``
means NaN; ±Inf are stored natively. What the store means is :mod:`monitor.store.interface`;
this module is the file, its locking and its faults.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from monitor.store import migrations
from monitor.store.faults import StoreHealth, cannot_open, is_disk_fault
from monitor.store.interface import Store

DB_FILENAME = "babysit.sqlite3"
BUSY_TIMEOUT_MS = 30_000  # other processes may hold the write lock for a large batch


class RunStore(Store):
    """All runs under one logdir in SQLite; safe to share between a writer and a reader thread.

    One connection per instance, guarded by a lock (``check_same_thread=False``);
    separate processes each open their own instance on the same file. The run page's
    reads (``latest``, ``layer_points``, ``scalar_blocks``, ...) come from :class:`RunPageReads`.
    """

    # the kinds of its flags, through the (run, kind) index: a few rows per run
    FLAG_KINDS = ("SELECT group_concat(DISTINCT json_extract(e.data, '$.kind')) FROM events e "
                  "WHERE e.run = runs.run AND e.kind = 'flag'")

    def __init__(self, logdir: str | Path = "runs"):
        self.logdir = Path(logdir)
        self.path = self.logdir / DB_FILENAME
        self.location = str(self.path)
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only or full disk: say which, not a traceback
            raise cannot_open(self.path, exc) from exc
        self._lock = threading.Lock()
        #: Whether writes succeed, and why not (``monitor.store.faults``): for ``/api/health``.
        self.health = StoreHealth(self.path)
        # isolation_level=None: we issue BEGIN ourselves, so a batch is exactly one transaction.
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False, isolation_level=None)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._wal()
            # NORMAL in WAL: a process crash loses no commit; only power loss (or a disk error
            # that remounts the file system read-only) may undo the last few.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._create_tables()
        except BaseException as exc:
            self._db.close()
            if is_disk_fault(exc):
                raise cannot_open(self.path, exc) from exc
            raise

    def _wal(self) -> None:
        """Switch the file to WAL. Of several processes opening a new file at once, one may
        be creating it: SQLite then answers "database is locked" at once, without waiting
        out the busy timeout (the switch needs the file to itself), so wait and retry here,
        within that same timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _create_tables(self) -> None:
        """Create the tables, or upgrade an older file in place, in one transaction.

        The version is read under the write lock, so of two processes opening an old file
        at once one migrates and the other then finds it current.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            version = migrations.apply(self._db, version, str(self.path))
            self._db.execute(f"PRAGMA user_version = {version}")
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        if self._db.in_transaction:  # SQLite may already have rolled back (disk full, I/O error)
            self._db.execute("ROLLBACK")

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _lock_runs(self, db, runs) -> None:
        pass  # BEGIN IMMEDIATE took the database's write lock

    # ------------------------------------------------------------------ reading

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def _transaction(self, write, *args):
        """``write(db, *args)`` in one write transaction; its result. Every write goes
        through here: on any failure nothing of it stays, and a failure of the disk (full,
        read-only, locked, I/O error) raises :class:`~monitor.store.faults.StoreUnavailable`
        and is reflected in :attr:`health`."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")  # read-only or locked past busy_timeout fails here
                result = write(self._db, *args)
                self._db.execute("COMMIT")
            except BaseException as exc:
                try:
                    self._rollback()
                except sqlite3.Error:  # the disk that failed the write may fail the rollback too
                    pass
                if is_disk_fault(exc):
                    raise self.health.failed(exc, self.path) from exc
                raise
        self.health.succeeded()
        return result

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a background reader then stops)."""
        try:
            self._db.total_changes  # noqa: B018 - raises once the connection is closed
        except sqlite3.ProgrammingError:
            return True
        return False
