"""The run store's interface, and the one implementation of it both backends share.

Why one implementation: the server's routes and namespaces talk to "the store" and never
know its engine, so SQLite and PostgreSQL must give the same answers to the same calls,
the same exactly-once guarantee included. Everything the store means (which events are
new, what a run's row says, what the run page reads) is written here once, in SQL both
engines speak; a backend (:mod:`monitor.store.sqlite`, :mod:`monitor.store.postgres`)
supplies only its connection, its transaction and locking, its fault reporting and the
one fragment its engine spells differently (:attr:`Store.FLAG_KINDS`).

Exactly once: ``(run, seq)`` is the ``events`` primary key and a batch is one transaction
that first reads which of its seqs are stored, under a lock that keeps every other writer
of those runs out until it commits (SQLite: the database's write lock; PostgreSQL: one
advisory lock per run). So a replayed batch, even one arriving at two servers at once,
stores each event once, and derived rows come from the newly stored events only.

NaN: SQLite stores a NaN float as NULL and PostgreSQL keeps it; readers take NULL as NaN
(see :mod:`monitor.store.blocks`, :mod:`monitor.store.layers`), so both read back alike.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

from monitor import codec
from monitor.events import Event, Kind
from monitor.store import blocks, layers, liveness
from monitor.store.faults import StoreHealth
from monitor.store.reads import RunPageReads, decode
from monitor.validation import as_enum, check_run_id

#: The events that decide a run's status (a start means running) and, for a start, its name and host.
_LIFECYCLE = (Kind.RUN_START, Kind.STATUS, Kind.RUN_END)


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


class Store(RunPageReads):
    """Every run of one store; safe to share between threads (a backend serialises its
    connection's use under a lock). Subclasses provide :meth:`_query`, :meth:`_transaction`,
    :meth:`_lock_runs`, :meth:`close`, :attr:`closed`, :attr:`FLAG_KINDS`, ``health`` (a
    :class:`~monitor.store.faults.StoreHealth`) and ``location`` (what to call the store in
    a message: a file's path, a database's URL without its password)."""

    #: SQL giving the comma-joined distinct kinds of the flags of run ``runs.run``, or NULL.
    FLAG_KINDS = ""
    location: str = ""
    health: StoreHealth

    # ------------------------------------------------------------------ the backend's part

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        raise NotImplementedError

    def _transaction(self, write, *args):
        """``write(db, *args)`` in one write transaction; its result. On any failure nothing
        of it stays; a failure of the store itself (disk, connection) raises
        :class:`~monitor.store.faults.StoreUnavailable` and shows in :attr:`health`."""
        raise NotImplementedError

    def _lock_runs(self, db, runs: Sequence[str]) -> None:
        """Keep every other writer of these runs out until this transaction ends."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a background reader then stops)."""
        raise NotImplementedError

    def __enter__(self):
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
        A failure of the store (disk full, read-only, locked, I/O error, a lost database
        connection) raises :class:`~monitor.store.faults.StoreUnavailable` naming the cause
        in plain words, and ``health`` says so (one log line when the fault begins, one when
        writes succeed again).
        The batch is written with one statement per table (``executemany``), not one per
        event: a training process commits its losses every fraction of a second, and the
        server ingests many processes at once. ``texts``, when given, are the payloads
        already encoded by the caller (``codec.encode_payload(event.data)`` of each event),
        so that a writer can time or reuse the encoding.
        """
        return self.append_batches([(events, texts)])[0]

    def append_batches(self, batches: Sequence[tuple[Sequence[Event], Sequence[str] | None]]) -> list[int]:
        """Several batches ``(events, texts)`` in one transaction (a server commits the batches
        that arrived together at once: one commit, a few round trips to a database, not a few
        per batch); how many events of each were new. All or nothing, as :meth:`append`."""
        events, rows, sizes = [], [], []
        for batch_events, texts in batches:
            batch_events = list(batch_events)
            for position, event in enumerate(batch_events):
                if not isinstance(event, Event):
                    raise TypeError(f"append: item {position} of the batch is a {type(event).__name__}, "
                                    "expected a monitor.events.Event; nothing of this batch was stored")
            if texts is None:
                texts = [codec.encode_payload(e.data) for e in batch_events]
            elif len(texts) != len(batch_events):
                raise ValueError(f"append: {len(texts)} encoded payloads for {len(batch_events)} events")
            events += batch_events
            rows += [(e.run, e.seq, e.step, e.wall, e.kind.value, text) for e, text in zip(batch_events, texts)]
            sizes.append(len(batch_events))
        if not events:
            return [0] * len(sizes)
        fresh = self._transaction(self._write_batch, events, rows)
        counts, start = [], 0
        for size in sizes:
            counts.append(sum(id(e) in fresh for e in events[start:start + size]))
            start += size
        return counts

    def _write_batch(self, db, events: list[Event], rows: list[tuple]) -> set[int]:
        """The statements of one batch, inside :meth:`_transaction`; the ids of the events that were new."""
        self._lock_runs(db, sorted(dict.fromkeys(e.run for e in events)))
        fresh = _new_events(db, events)
        db.executemany("INSERT INTO events (run, seq, step, wall, kind, data) VALUES (?, ?, ?, ?, ?, ?)",
                       [row for row, event in zip(rows, events) if id(event) in fresh])
        new = [event for event in events if id(event) in fresh]
        scalar_rows = [(e.run, name, e.step, e.seq, e.wall, value) for e in new if e.kind is Kind.SCALARS
                       for name, value in e.data.values.items()]
        db.executemany("INSERT INTO scalars (run, name, step, seq, wall, value) VALUES (?, ?, ?, ?, ?, ?)",
                       scalar_rows)
        blocks.insert(db, scalar_rows)
        layers.insert(db, new)
        if new:
            _update_runs(db, new)
        return fresh

    # ------------------------------------------------------------------ reading

    def runs(self) -> list[RunInfo]:
        """Every run, newest first (by start time)."""
        rows = self._query(f"SELECT {self._run_columns()} FROM {_RUNS} ORDER BY started DESC, runs.run")
        return [_run_info(row) for row in rows]

    def run_info(self, run: str) -> RunInfo | None:
        rows = self._query(f"SELECT {self._run_columns()} FROM {_RUNS} WHERE runs.run = ?", (check_run_id(run),))
        return _run_info(rows[0]) if rows else None

    def _run_columns(self) -> str:
        # the kinds of its flags, through the (run, kind) index: a few rows per run
        return _RUN_COLUMNS + f", ({self.FLAG_KINDS})"

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

    # ------------------------------------------------------------------ liveness (web.liveness)

    def mark_lost(self, run: str, reason: str, at: float | None = None) -> bool:
        """Mark a run whose training process went silent ``lost``, keeping ``reason`` and
        ``at`` (unix seconds, default now); only a running or stopping run, so a run that
        ended meanwhile keeps its end. True when it was marked. No event is written: the
        run's seqs are its trainer's."""
        return self._transaction(self._locked, liveness.mark_lost, check_run_id(run), str(reason),
                                 time.time() if at is None else float(at))

    def mark_alive(self, run: str) -> bool:
        """A lost run whose training process was heard again (a heartbeat) gets back the
        status it had; True when it was lost. A batch of new events does this by itself."""
        return self._transaction(self._locked, liveness.revive, check_run_id(run))

    def _locked(self, db, change, run: str, *args):
        self._lock_runs(db, [run])
        return change(db, run, *args)

    def lost_runs(self) -> dict[str, tuple[float, str]]:
        """``{run: (at, reason)}`` of the runs marked lost."""
        return liveness.lost(self._query)

    def active_runs(self) -> list[tuple[str, str, float]]:
        """``(run, host, started)`` of the running and stopping runs: those that can be lost."""
        return liveness.active(self._query)

    def note_heard(self, heard: dict[str, float]) -> None:
        """``{run: at}``: this server heard these runs' trainers at ``at`` (unix seconds), for
        the other server processes sharing this store (:mod:`monitor.store.liveness`)."""
        heard = {check_run_id(run): float(at) for run, at in heard.items()}
        if heard:
            self._transaction(liveness.note_heard, sorted(heard.items()))

    def last_heard(self) -> dict[str, float]:
        """``{run: at}``: when any server last heard each running or stopping run's trainer."""
        return liveness.last_heard(self._query)


# A lost run's when and why (monitor.store.liveness), beside its row.
_RUNS = "runs LEFT JOIN lost_runs ON lost_runs.run = runs.run AND runs.status = 'lost'"
_RUN_COLUMNS = ("runs.run, name, status, started, updated, last_step, last_loss, loss_step, flags, "
                "host, rank, world, config, lost_runs.at, coalesce(lost_runs.reason, '')")


#: Runs whose stored seqs one statement reads at most (its parameters: three a run).
RUNS_PER_READ = 100


def _new_events(db, events: list[Event]) -> set[int]:
    """ids of the events whose ``(run, seq)`` is neither stored nor earlier in the batch.

    One statement for all the runs of a group (each run's seq range, through the primary
    key), not one a run: on PostgreSQL this read is the transaction's one wait for an answer
    (a pipeline sends everything else without waiting), and a committer that waited once a
    run, for fifty runs, spent most of each group waiting, each wait ending in a wait for
    the interpreter lock."""
    ranges: dict[str, list[int]] = {}
    for e in events:
        span = ranges.get(e.run)
        if span is None:
            ranges[e.run] = [e.seq, e.seq]
        elif e.seq < span[0]:
            span[0] = e.seq
        elif e.seq > span[1]:
            span[1] = e.seq
    stored: set[tuple[str, int]] = set()
    spans = list(ranges.items())
    for start in range(0, len(spans), RUNS_PER_READ):
        chunk = spans[start:start + RUNS_PER_READ]
        where = " OR ".join(["(run = ? AND seq BETWEEN ? AND ?)"] * len(chunk))
        params = [value for run, (low, high) in chunk for value in (run, low, high)]
        stored.update((run, seq) for run, seq in db.execute(f"SELECT run, seq FROM events WHERE {where}",
                                                            params).fetchall())
    fresh = set()
    for event in events:
        key = (event.run, event.seq)
        if key not in stored:
            stored.add(key)
            fresh.add(id(event))
    return fresh


def _update_runs(db, new: list[Event]) -> None:
    """The runs' rows from their newly stored events: counters once, lifecycle by seq. Each
    statement goes once for all the runs of the group (``executemany``: one prepared
    statement, its rows sent together), not once a run."""
    by_run: dict[str, list[Event]] = {}
    for e in new:
        by_run.setdefault(e.run, []).append(e)
    runs = list(by_run)
    # a new run's row (started at its first new event), or a known one's progress: one upsert
    db.executemany("INSERT INTO runs (run, name, status, started, updated, last_step) "
                   "VALUES (?, ?, 'running', ?, ?, ?) ON CONFLICT (run) DO UPDATE SET "
                   "updated = CASE WHEN runs.updated < excluded.updated THEN excluded.updated ELSE runs.updated END, "
                   "last_step = CASE WHEN runs.last_step < excluded.last_step THEN excluded.last_step "
                   "ELSE runs.last_step END",
                   [(run, run, events[0].wall, max(e.wall for e in events), max(e.step for e in events))
                    for run, events in by_run.items()])
    liveness.revive_on_news(db, runs)  # a lost run's process is back; a status event below still wins
    for run, events in by_run.items():
        _update_lifecycle(db, run, events)
    flags = [(n, run) for run, events in by_run.items() if (n := sum(e.kind is Kind.FLAG for e in events))]
    db.executemany("UPDATE runs SET flags = flags + ? WHERE run = ?", flags)
    losses = []
    for run, events in by_run.items():
        with_loss = [e for e in events if e.kind is Kind.SCALARS and "loss" in e.data.values]
        if with_loss:  # the loss at the highest step (the later one on a tie); a late replay never wins
            latest = max(reversed(with_loss), key=lambda e: e.step)
            losses.append((latest.data.values["loss"], latest.step, run, latest.step))
    db.executemany("UPDATE runs SET last_loss = ?, loss_step = ? WHERE run = ? AND coalesce(loss_step, -1) <= ?",
                   losses)


def _update_lifecycle(db, run: str, new: list[Event]) -> None:
    """Lifecycle by seq, not by arrival: the row says what the run's latest start and latest
    status say, so a late replay of an earlier seq never turns a finished run back to running."""
    lifecycle = [e for e in new if e.kind in _LIFECYCLE]
    if not lifecycle:
        return
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


def _run_info(row: tuple) -> RunInfo:
    *head, config, lost_at, lost_reason, kinds = row
    info = RunInfo(*head, config=codec.loads(config), lost_at=lost_at, lost_reason=lost_reason,
                   flag_kinds=tuple(sorted(kinds.split(","))) if kinds else ())
    if info.loss_step is not None and info.last_loss is None:  # SQLite stored the NaN loss as NULL
        info = replace(info, last_loss=math.nan)
    return info
