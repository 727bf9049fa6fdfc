"""The run store: every event of every run, exactly once, in one SQLite file.

Why SQLite in WAL mode: several training processes (and the dashboard server) may write
``<logdir>/babysit.sqlite3`` at once, and readers must not block the writers. Each batch
is one ``BEGIN IMMEDIATE`` transaction (take the write lock before reading, so a
concurrent writer makes us wait ``busy_timeout`` instead of failing on a stale snapshot);
``(run, seq)`` is the primary key, so a batch replayed from a spool is stored once.

Tables: ``events`` is the exact record (payload as :func:`monitor.codec.dumps` text);
``scalars`` and ``runs`` are derived from it on append, for fast charts and run lists.
SQLite stores NaN as NULL, so a NULL ``scalars.value`` means NaN; ±Inf are stored natively.

The SQL lives in this module only and the interface speaks plain dataclasses and tuples,
so a PostgreSQL backend is a second class with the same public methods, not a rewrite.
"""
from __future__ import annotations

import math
import sqlite3
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from monitor import codec
from monitor.events import Event, Kind
from monitor.validation import SchemaError, as_enum, check_run_id

DB_FILENAME = "babysit.sqlite3"
STORE_VERSION = 1  # PRAGMA user_version: bump with a migration when the tables change
BUSY_TIMEOUT_MS = 30_000  # other processes may hold the write lock for a large batch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL, seq INTEGER NOT NULL, step INTEGER NOT NULL, wall REAL NOT NULL,
    kind TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run, seq));
CREATE TABLE IF NOT EXISTS scalars (
    run TEXT NOT NULL, name TEXT NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL,
    wall REAL NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS scalars_by_name ON scalars (run, name, step);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, started REAL NOT NULL,
    updated REAL NOT NULL, last_step INTEGER NOT NULL, last_loss REAL, loss_step INTEGER,
    flags INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL DEFAULT '', rank INTEGER NOT NULL DEFAULT 0,
    world INTEGER NOT NULL DEFAULT 1, config TEXT NOT NULL DEFAULT '{}');
"""
_RUN_COLUMNS = ("run, name, status, started, updated, last_step, last_loss, loss_step, flags, "
                "host, rank, world, config")


@dataclass(frozen=True)
class RunInfo:
    """One row of the run list: what the index page and ``babysit ls`` show.

    ``last_loss`` is None until a ``loss`` scalar arrives; after that it is the loss at the
    highest step seen (``loss_step``), NaN included, because a NaN loss is news.
    """

    run: str
    name: str
    status: str
    started: float
    updated: float
    last_step: int
    last_loss: float | None
    loss_step: int | None
    flags: int
    host: str
    rank: int
    world: int
    config: dict[str, Any]


class RunStore:
    """All runs under one logdir; safe to share between a writer and a reader thread.

    One connection per instance, guarded by a lock (``check_same_thread=False``);
    separate processes each open their own instance on the same file.
    """

    def __init__(self, logdir: str | Path = "runs"):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.path = self.logdir / DB_FILENAME
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN ourselves, so a batch is exactly one transaction.
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False, isolation_level=None)
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL: a process crash loses no commit; only power loss may undo the last few.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._create_tables()
        except BaseException:
            self._db.close()
            raise

    def _create_tables(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, STORE_VERSION):
            raise RuntimeError(f"{self.path}: store version {version}, this babysit reads version "
                               f"{STORE_VERSION}; upgrade babysit or use another logdir")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {STORE_VERSION}")
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

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def append(self, events: Sequence[Event]) -> int:
        """Store a batch in one transaction, each ``(run, seq)`` once; return how many were new.

        Derived rows (scalars, run counters) are written only for newly stored events, so a
        replayed batch changes nothing. On any failure (a non-Event item included) the whole
        batch is rolled back and the exception propagates: the sender keeps it and retries.
        """
        events = list(events)
        if not events:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                stored = sum(self._insert(event, position) for position, event in enumerate(events))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return stored

    def _insert(self, event: Any, position: int) -> bool:
        if not isinstance(event, Event):
            raise TypeError(f"append: item {position} of the batch is a {type(event).__name__}, "
                            "expected a monitor.events.Event; nothing of this batch was stored")
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO events (run, seq, step, wall, kind, data) VALUES (?, ?, ?, ?, ?, ?)",
            (event.run, event.seq, event.step, event.wall, event.kind.value, codec.dumps(event.data.to_dict())))
        if cursor.rowcount == 0:
            return False  # already stored: a replay
        self._update_run(event)
        return True

    def _update_run(self, e: Event) -> None:
        db, data = self._db, e.data
        db.execute("INSERT OR IGNORE INTO runs (run, name, status, started, updated, last_step) "
                   "VALUES (?, ?, 'running', ?, ?, ?)", (e.run, e.run, e.wall, e.wall, e.step))
        db.execute("UPDATE runs SET updated = max(updated, ?), last_step = max(last_step, ?) WHERE run = ?",
                   (e.wall, e.step, e.run))
        if e.kind is Kind.RUN_START:
            db.execute("UPDATE runs SET name = ?, status = 'running', started = ?, host = ?, rank = ?, "
                       "world = ?, config = ? WHERE run = ?",
                       (data.name, e.wall, data.host, data.rank, data.world, codec.dumps(dict(data.config)), e.run))
        elif e.kind in (Kind.STATUS, Kind.RUN_END):
            db.execute("UPDATE runs SET status = ? WHERE run = ?", (data.state.value, e.run))
        elif e.kind is Kind.FLAG:
            db.execute("UPDATE runs SET flags = flags + 1 WHERE run = ?", (e.run,))
        elif e.kind is Kind.SCALARS:
            db.executemany("INSERT INTO scalars (run, name, step, seq, wall, value) VALUES (?, ?, ?, ?, ?, ?)",
                           [(e.run, name, e.step, e.seq, e.wall, value) for name, value in data.values.items()])
            if "loss" in data.values:  # an older step replayed late must not overwrite a newer loss
                db.execute("UPDATE runs SET last_loss = ?, loss_step = ? "
                           "WHERE run = ? AND coalesce(loss_step, -1) <= ?",
                           (data.values["loss"], e.step, e.run, e.step))

    # ------------------------------------------------------------------ reading

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def runs(self) -> list[RunInfo]:
        """Every run, newest first (by start time)."""
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY started DESC, run")
        return [_run_info(row) for row in rows]

    def run_info(self, run: str) -> RunInfo | None:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run = ?", (check_run_id(run),))
        return _run_info(rows[0]) if rows else None

    def events(self, run: str, kinds: Iterable[Kind | str] | None = None, after_seq: int = -1,
               limit: int | None = None) -> list[Event]:
        """Events of one run in seq order, validated; ``after_seq`` lets a reader resume.

        A row that no longer decodes raises :class:`SchemaError` naming the run and seq.
        """
        sql = "SELECT seq, step, wall, kind, data FROM events WHERE run = ? AND seq > ?"
        params: list[Any] = [check_run_id(run), int(after_seq)]
        if kinds is not None:
            wanted = [as_enum(Kind, "kinds", k).value for k in kinds]
            if not wanted:
                return []
            sql += f" AND kind IN ({', '.join('?' * len(wanted))})"
            params += wanted
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [_decode(run, *row) for row in self._query(sql, params)]

    def scalars(self, run: str, names: Iterable[str] | None = None) -> list[tuple[int, float, str, float]]:
        """``(step, wall, name, value)`` rows ordered by name then step; NULL comes back as NaN."""
        sql = "SELECT step, wall, name, value FROM scalars WHERE run = ?"
        params: list[Any] = [check_run_id(run)]
        if names is not None:
            names = list(names)
            if not names:
                return []
            sql += f" AND name IN ({', '.join('?' * len(names))})"
            params += names
        rows = self._query(sql + " ORDER BY name, step, seq", params)
        return [(step, wall, name, math.nan if value is None else value) for step, wall, name, value in rows]

    def scalar_names(self, run: str) -> list[str]:
        rows = self._query("SELECT DISTINCT name FROM scalars WHERE run = ? ORDER BY name", (check_run_id(run),))
        return [name for (name,) in rows]

    def next_seq(self, run: str) -> int:
        """The seq a new process continuing this run should use next (0 for a new run)."""
        rows = self._query("SELECT coalesce(max(seq) + 1, 0) FROM events WHERE run = ?", (check_run_id(run),))
        return rows[0][0]


def _run_info(row: tuple) -> RunInfo:
    *head, config = row
    info = RunInfo(*head, config=codec.loads(config))
    if info.loss_step is not None and info.last_loss is None:  # SQLite stored the NaN loss as NULL
        info = replace(info, last_loss=math.nan)
    return info


def _decode(run: str, seq: int, step: int, wall: float, kind: str, data: str) -> Event:
    try:
        return Event.from_dict({"run": run, "seq": seq, "step": step, "wall": wall, "kind": kind,
                                "data": codec.loads(data)})
    except (SchemaError, TypeError, KeyError, ValueError) as exc:
        # TypeError: a payload missing a field fails in the dataclass constructor.
        raise SchemaError(f"run {run!r} seq {seq}: stored {kind} event does not decode: {exc}") from exc
