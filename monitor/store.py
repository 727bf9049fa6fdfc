"""The run store: every event of every run, exactly once, in one SQLite file.

Why SQLite in WAL mode: several training processes (and the dashboard server) may write
``<logdir>/babysit.sqlite3`` at once, and readers must not block the writers. Each batch
is one ``BEGIN IMMEDIATE`` transaction (take the write lock before reading, so a
concurrent writer makes us wait ``busy_timeout`` instead of failing on a stale snapshot);
``(run, seq)`` is the primary key, so a batch replayed from a spool is stored once.

Tables: ``events`` is the exact record (payload as :func:`monitor.codec.dumps` text);
``scalars`` and ``runs`` are derived from it on append, for fast charts and run lists, and
so are the run page's tables: ``scalar_blocks`` (:mod:`monitor.store_blocks`) and
``layer_points``, ``layers``, ``input_points`` (:mod:`monitor.store_layers`); ``lost_runs``
(:mod:`monitor.store_liveness`) is the server's, not the record's: runs it marked lost. Derived rows
come from newly stored events only, so a replay changes nothing. SQLite stores NaN as NULL,
so a NULL ``scalars.value`` means NaN; ±Inf are stored natively. ``events_by_kind`` makes
"the latest event of a kind" and "every flag" index look-ups on runs of millions of events.

The SQL lives in these modules only and the interface speaks plain dataclasses and tuples,
so a PostgreSQL backend is a second class with the same public methods, not a rewrite.
"""
from __future__ import annotations

import math
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from monitor import codec, store_blocks, store_layers, store_liveness
from monitor.events import Event, Kind
from monitor.store_faults import StoreHealth, cannot_open, is_disk_fault
from monitor.store_reads import RunPageReads, decode, decode_or_none
from monitor.validation import as_enum, check_run_id

DB_FILENAME = "babysit.sqlite3"
STORE_VERSION = 2  # PRAGMA user_version: bump with a migration when the tables change
#: Versions this babysit opens and upgrades in place (v1 -> v2: the run page's tables).
MIGRATES_FROM = (1,)
BUSY_TIMEOUT_MS = 30_000  # other processes may hold the write lock for a large batch
#: The events that decide a run's status (a start means running) and, for a start, its name and host.
_LIFECYCLE = (Kind.RUN_START, Kind.STATUS, Kind.RUN_END)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL, seq INTEGER NOT NULL, step INTEGER NOT NULL, wall REAL NOT NULL,
    kind TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (run, seq));
CREATE INDEX IF NOT EXISTS events_by_kind ON events (run, kind, seq);
CREATE TABLE IF NOT EXISTS scalars (
    run TEXT NOT NULL, name TEXT NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL,
    wall REAL NOT NULL, value REAL);
CREATE INDEX IF NOT EXISTS scalars_by_name ON scalars (run, name, step);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, started REAL NOT NULL,
    updated REAL NOT NULL, last_step INTEGER NOT NULL, last_loss REAL, loss_step INTEGER,
    flags INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL DEFAULT '', rank INTEGER NOT NULL DEFAULT 0,
    world INTEGER NOT NULL DEFAULT 1, config TEXT NOT NULL DEFAULT '{}');
""" + store_blocks.SCHEMA + store_layers.SCHEMA + store_liveness.SCHEMA
_RUN_COLUMNS = ("runs.run, name, status, started, updated, last_step, last_loss, loss_step, flags, "
                "host, rank, world, config, lost_runs.at, coalesce(lost_runs.reason, ''), "
                # the kinds of its flags, through the (run, kind) index: a few rows per run
                "(SELECT group_concat(DISTINCT json_extract(e.data, '$.kind')) FROM events e "
                "WHERE e.run = runs.run AND e.kind = 'flag')")
# A lost run's when and why (monitor.store_liveness), beside its row.
_RUNS = "runs LEFT JOIN lost_runs ON lost_runs.run = runs.run AND runs.status = 'lost'"


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
    lost_at: float | None = None  # status lost: when the server marked it (unix seconds)
    lost_reason: str = ""  # and why ("no heartbeat for 31 s")
    flag_kinds: tuple[str, ...] = ()  # the kinds of its flags, sorted (the index filters by them)


class RunStore(RunPageReads):
    """All runs under one logdir; safe to share between a writer and a reader thread.

    One connection per instance, guarded by a lock (``check_same_thread=False``);
    separate processes each open their own instance on the same file. The run page's
    reads (``latest``, ``layer_points``, ``scalar_blocks``, ...) come from :class:`RunPageReads`.
    """

    def __init__(self, logdir: str | Path = "runs"):
        self.logdir = Path(logdir)
        self.path = self.logdir / DB_FILENAME
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only or full disk: say which, not a traceback
            raise cannot_open(self.path, exc) from exc
        self._lock = threading.Lock()
        #: Whether writes succeed, and why not (``monitor.store_faults``): for ``/api/health``.
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
            if version not in (0, STORE_VERSION, *MIGRATES_FROM):
                raise RuntimeError(f"{self.path}: store version {version}, this babysit reads version "
                                   f"{STORE_VERSION}; upgrade babysit or use another logdir")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            if version in MIGRATES_FROM:  # v1 -> v2: derive the run page's tables from the record
                store_blocks.backfill(self._db)
                store_layers.backfill(self._db, decode_or_none)
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

    def append(self, events: Sequence[Event], texts: Sequence[str] | None = None) -> int:
        """Store a batch in one transaction, each ``(run, seq)`` once; return how many were new.

        Derived rows (scalars and their blocks, layer and input points, run counters) are
        written only for newly stored events, so a replayed batch changes nothing. On any failure (a
        non-Event item included) the whole
        batch is rolled back and the exception propagates: the sender keeps it and retries.
        A failure of the disk (full, read-only, locked, I/O error) raises
        :class:`~monitor.store_faults.StoreUnavailable` naming the cause in plain words, and
        ``health`` says so (one log line when the fault begins, one when writes succeed again).
        The batch is written with one statement per table (``executemany``), not one per
        event: a training process commits its losses every fraction of a second, and the
        server ingests many processes at once. ``texts``, when given, are the payloads
        already encoded by the caller (``codec.encode_payload(event.data)`` of each event),
        so that a writer can time or reuse the encoding.
        """
        events = list(events)
        for position, event in enumerate(events):
            if not isinstance(event, Event):
                raise TypeError(f"append: item {position} of the batch is a {type(event).__name__}, "
                                "expected a monitor.events.Event; nothing of this batch was stored")
        if not events:
            return 0
        if texts is None:
            texts = [codec.encode_payload(e.data) for e in events]
        elif len(texts) != len(events):
            raise ValueError(f"append: {len(texts)} encoded payloads for {len(events)} events")
        rows = [(e.run, e.seq, e.step, e.wall, e.kind.value, text) for e, text in zip(events, texts)]
        return self._transaction(self._write_batch, events, rows)

    def _write_batch(self, db, events: list[Event], rows: list[tuple]) -> int:
        """The statements of one batch, inside :meth:`_transaction`; how many events were new."""
        fresh = self._new_events(events)
        db.executemany("INSERT INTO events (run, seq, step, wall, kind, data) VALUES (?, ?, ?, ?, ?, ?)",
                       [row for row, event in zip(rows, events) if id(event) in fresh])
        new = [event for event in events if id(event) in fresh]
        scalar_rows = [(e.run, name, e.step, e.seq, e.wall, value) for e in new if e.kind is Kind.SCALARS
                       for name, value in e.data.values.items()]
        db.executemany("INSERT INTO scalars (run, name, step, seq, wall, value) VALUES (?, ?, ?, ?, ?, ?)",
                       scalar_rows)
        store_blocks.insert(db, scalar_rows)
        store_layers.insert(db, new)
        for run in dict.fromkeys(e.run for e in new):
            self._update_run(run, [e for e in new if e.run == run])
        return len(new)

    def _new_events(self, events: list[Event]) -> set[int]:
        """ids of the events whose ``(run, seq)`` is neither stored nor earlier in the batch."""
        stored: set[tuple[str, int]] = set()
        for run in dict.fromkeys(e.run for e in events):
            seqs = [e.seq for e in events if e.run == run]
            stored.update((run, seq) for (seq,) in self._db.execute(
                "SELECT seq FROM events WHERE run = ? AND seq BETWEEN ? AND ?", (run, min(seqs), max(seqs))))
        fresh = set()
        for event in events:
            key = (event.run, event.seq)
            if key not in stored:
                stored.add(key)
                fresh.add(id(event))
        return fresh

    def _update_run(self, run: str, new: list[Event]) -> None:
        """The run's row from its newly stored events: counters once, lifecycle by seq."""
        db, first = self._db, new[0]
        db.execute("INSERT OR IGNORE INTO runs (run, name, status, started, updated, last_step) "
                   "VALUES (?, ?, 'running', ?, ?, ?)", (run, run, first.wall, first.wall, first.step))
        db.execute("UPDATE runs SET updated = max(updated, ?), last_step = max(last_step, ?) WHERE run = ?",
                   (max(e.wall for e in new), max(e.step for e in new), run))
        store_liveness.revive(db, run)  # a lost run's process is back; a status event below still wins
        # Lifecycle by seq, not by arrival: the row says what the run's latest start and latest
        # status say, so a late replay of an earlier seq never turns a finished run back to running.
        lifecycle = [e for e in new if e.kind in _LIFECYCLE]
        if lifecycle:
            latest = {kind: db.execute("SELECT max(seq) FROM events WHERE run = ? AND kind = ?",
                                       (run, kind.value)).fetchone()[0] for kind in _LIFECYCLE}
            newest = max(lifecycle, key=lambda e: e.seq)
            if newest.seq == max(seq for seq in latest.values() if seq is not None):
                state = "running" if newest.kind is Kind.RUN_START else newest.data.state.value
                db.execute("UPDATE runs SET status = ? WHERE run = ?", (state, run))
            start = max((e for e in lifecycle if e.kind is Kind.RUN_START), key=lambda e: e.seq, default=None)
            if start is not None and start.seq == latest[Kind.RUN_START]:
                data = start.data
                db.execute("UPDATE runs SET name = ?, started = ?, host = ?, rank = ?, world = ?, config = ? "
                           "WHERE run = ?", (data.name, start.wall, data.host, data.rank, data.world,
                                             codec.dumps(dict(data.config)), run))
        flags = sum(e.kind is Kind.FLAG for e in new)
        if flags:
            db.execute("UPDATE runs SET flags = flags + ? WHERE run = ?", (flags, run))
        losses = [e for e in new if e.kind is Kind.SCALARS and "loss" in e.data.values]
        if losses:  # the loss at the highest step (the later one on a tie); a late replay never wins
            latest = max(reversed(losses), key=lambda e: e.step)
            db.execute("UPDATE runs SET last_loss = ?, loss_step = ? WHERE run = ? AND coalesce(loss_step, -1) <= ?",
                       (latest.data.values["loss"], latest.step, run, latest.step))

    # ------------------------------------------------------------------ reading

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def runs(self) -> list[RunInfo]:
        """Every run, newest first (by start time)."""
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM {_RUNS} ORDER BY started DESC, runs.run")
        return [_run_info(row) for row in rows]

    def run_info(self, run: str) -> RunInfo | None:
        rows = self._query(f"SELECT {_RUN_COLUMNS} FROM {_RUNS} WHERE runs.run = ?", (check_run_id(run),))
        return _run_info(rows[0]) if rows else None

    # ------------------------------------------------------------------ liveness (web.liveness)

    def mark_lost(self, run: str, reason: str, at: float | None = None) -> bool:
        """Mark a run whose training process went silent ``lost``, keeping ``reason`` and
        ``at`` (unix seconds, default now); only a running or stopping run, so a run that
        ended meanwhile keeps its end. True when it was marked. No event is written: the
        run's seqs are its trainer's."""
        return self._transaction(store_liveness.mark_lost, check_run_id(run), str(reason),
                                 time.time() if at is None else float(at))

    def mark_alive(self, run: str) -> bool:
        """A lost run whose training process was heard again (a heartbeat) gets back the
        status it had; True when it was lost. A batch of new events does this by itself."""
        return self._transaction(store_liveness.revive, check_run_id(run))

    def lost_runs(self) -> dict[str, tuple[float, str]]:
        """``{run: (at, reason)}`` of the runs marked lost."""
        return store_liveness.lost(self._query)

    def active_runs(self) -> list[tuple[str, str, float]]:
        """``(run, host, started)`` of the running and stopping runs: those that can be lost."""
        return store_liveness.active(self._query)

    def _transaction(self, write, *args):
        """``write(db, *args)`` in one write transaction; its result. Every write goes
        through here: on any failure nothing of it stays, and a failure of the disk (full,
        read-only, locked, I/O error) raises :class:`~monitor.store_faults.StoreUnavailable`
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
        return [decode(run, *row) for row in self._query(sql, params)]

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
    *head, config, lost_at, lost_reason, kinds = row
    info = RunInfo(*head, config=codec.loads(config), lost_at=lost_at, lost_reason=lost_reason,
                   flag_kinds=tuple(sorted(kinds.split(","))) if kinds else ())
    if info.loss_step is not None and info.last_loss is None:  # SQLite stored the NaN loss as NULL
        info = replace(info, last_loss=math.nan)
    return info
