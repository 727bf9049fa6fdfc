"""The PostgreSQL backend: one store that several server processes, on several machines, share.

Why PostgreSQL: one SQLite file on one disk serves one machine; a team's servers behind a
proxy need a store they all write at once, over the network, with real concurrency. The
tables, their meaning and every statement are :mod:`monitor.store.interface`'s and
:mod:`monitor.store.migrations`'s; this module is the connection and what PostgreSQL does
differently:

* **Words.** The schema is written once in SQLite's words; :func:`translate` turns
  ``REAL`` into ``DOUBLE PRECISION`` (PostgreSQL's ``REAL`` is 32 bits), ``INTEGER`` into
  ``BIGINT`` (steps and seqs up to 2**63-1, as in SQLite), ``TEXT`` into ``TEXT COLLATE "C"``
  (byte order, so lists sort as SQLite sorts them whatever the cluster's locale) and drops
  ``WITHOUT ROWID``. Statements use ``?`` placeholders, turned into psycopg's ``%s``.
* **Exactly once across servers.** A batch's transaction first takes one advisory lock per
  run it names (``pg_advisory_xact_lock``, keyed by a 64-bit hash of the run id, taken in
  key order so two batches never deadlock), so two servers given the same replayed batch
  store it once: the second finds the seqs stored. SQLite gets the same from its one write lock.
* **Migrations** run under an advisory lock of their own (two-key space, which never meets
  the runs' one-key space); the version lives in table ``babysit_store``.
* **Faults.** A server that is down, unreachable, out of disk or read-only raises
  :class:`~monitor.store.faults.StoreUnavailable` (the ingest refuses the batch as transient:
  the sender keeps it), shown in ``health``; the next call connects again, so the store
  comes back by itself when the database does. A call whose connection fails is retried once
  on a new one: reads are safe to repeat, and so is every write (each is idempotent).

A pool of connections per store (``psycopg_pool``, :data:`POOL_SIZE`): the server's
threads ingest and read at once, PostgreSQL runs their transactions side by side and
commits them together. A batch's statements go in a pipeline (sent without waiting for
each answer), and its rows of a table as one ``COPY`` (see :class:`_Connection`).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import random
import re
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from monitor.store import migrations
from monitor.store.faults import BUSY, FULL, IO_ERROR, READ_ONLY, UNREACHABLE, StoreHealth, StoreUnavailable
from monitor.store.interface import Store

#: Seconds to wait for the database when connecting: a store that is down fails fast.
CONNECT_TIMEOUT = 5
#: Connections per store (per server process): the server's threads ingest and read at
#: once, and overlapping transactions let PostgreSQL commit them together (group commit).
POOL_SIZE = 8
_CONNECT = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, "application_name": "babysit"}
#: The migrations' advisory lock, in the two-key space: ("babysit", 1) as two int4.
_MIGRATION_LOCK = (0x62616279, 1)
_WORDS = [(re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"),
          (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'), (re.compile(r"\s*\bWITHOUT ROWID\b"), "")]


def _psycopg():
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 - the store's connections
    except ImportError:
        raise RuntimeError("a PostgreSQL store needs psycopg: pip install 'babysit[scale]'") from None
    return psycopg


@functools.cache
def _pool_class():
    """psycopg_pool's ConnectionPool with the jitter of its connections' lifetimes drawn from a
    stream of its own: the library draws from the global ``random``, the
    user's own when the server runs inside the training process, and a seeded script would
    draw differently for every connection the pool opens. (One draw is beyond a subclass's
    reach: the delay between reconnection attempts while the database is unreachable, which
    psycopg_pool takes on its base class; psycopg_pool 3.2 to 3.3.)"""
    from psycopg_pool import ConnectionPool

    jitter = random.Random()

    class Pool(ConnectionPool):
        @classmethod
        def _jitter(cls, value: float, min_pc: float, max_pc: float) -> float:
            return value * (1.0 + (max_pc - min_pc) * jitter.random() + min_pc)

    return Pool


def translate(statement: str) -> str:
    """A schema statement in SQLite's words, in PostgreSQL's."""
    for pattern, word in _WORDS:
        statement = pattern.sub(word, statement)
    return statement


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """The URL without its password, for messages and ``/api/health``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def run_lock_key(run: str) -> int:
    """A run's advisory lock key: 64 bits of its id's BLAKE2b, the same in every process."""
    return int.from_bytes(hashlib.blake2b(run.encode(), digest_size=8).digest(), "big", signed=True)


# A plain multi-row INSERT (no ON CONFLICT): rows the store already knows are new.
_PLAIN_INSERT = re.compile(r"^INSERT INTO (\w+) \(([\w, ]+)\) VALUES \([?, ]+\)$")
# An INSERT of one row of values with an ON CONFLICT tail (DO UPDATE: the runs' rows, the
# scalars' blocks, the layers; DO NOTHING: the layer and input points). Many rows go as
# one statement of many VALUES rows.
_UPSERT = re.compile(r"^(INSERT INTO \w+ \([\w, ]+\) VALUES )(\([^()]*\))( ON CONFLICT .*)$", re.S)
#: Parameters of one statement at most (PostgreSQL's protocol allows 65,535).
MAX_PARAMETERS = 30_000


class _Connection:
    """A psycopg connection spoken to as the store modules speak to sqlite3's: ``execute``
    returns a cursor (``fetchone``, ``fetchall``, ``fetchmany``), ``executemany``.

    In a write (``pipelined``), statements go in a pipeline: sent without waiting for each
    answer; a read (a batch's stored seqs) waits, and so does the end of the transaction.
    A plain ``INSERT`` of many rows (the events and scalars the store knows are new) goes
    as a binary ``COPY``, whose rows psycopg writes in C: ``INSERT ... SELECT * FROM
    unnest(column arrays)`` had psycopg build each array in Python, 1.7 to 2.1 us a row on
    the client against 0.6 for ``COPY`` (and 4.7 to 5.7 us a row in all against 2.8 to 3.2).
    ``COPY`` cannot run in a pipeline, so the pipeline is ended first (one round trip)
    and begun again at the next statement; below :data:`COPY_ROWS` rows the unnest
    ``INSERT`` stays in the pipeline (fewer round trips for a small batch). An upsert of
    many rows (``INSERT ... VALUES (...) ON CONFLICT ...``: the runs' rows, the scalars'
    blocks, the layers) goes as one statement of many ``VALUES`` rows: the store's callers
    give each key of a ``DO UPDATE`` once (a statement may not update a row twice)."""

    def __init__(self, raw, pipelined: bool = False):
        self.raw = raw
        self._pipelined = pipelined
        self._pipeline: contextlib.ExitStack | None = None

    def execute(self, sql: str, params: Sequence[Any] = ()):
        self._begin_pipeline()
        cursor = self.raw.cursor()
        cursor.execute(_placeholders(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        plain = _PLAIN_INSERT.match(sql) if len(rows) > 1 else None
        upsert = _UPSERT.match(sql) if len(rows) > 1 else None
        if not rows:
            return
        if plain is not None and len(rows) >= COPY_ROWS:
            self._copy(plain.group(1), [c.strip() for c in plain.group(2).split(",")], rows)
            return
        self._begin_pipeline()
        with self.raw.cursor() as cursor:
            if plain is not None:
                table, columns = plain.group(1), [c.strip() for c in plain.group(2).split(",")]
                types = self._types(table)
                arrays = ", ".join(f"%b::{types[c]}[]" for c in columns)  # binary: no text escaping
                cursor.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM unnest({arrays})",
                               [list(column) for column in zip(*rows)])
            elif upsert is not None:
                # one statement, not one execution a row: the database's work per statement
                # (planning, executing) was most of what PostgreSQL spent on a group
                head, one, tail = upsert.groups()
                per_statement = max(1, MAX_PARAMETERS // len(rows[0]))
                for start in range(0, len(rows), per_statement):
                    chunk = rows[start:start + per_statement]
                    cursor.execute(_placeholders(head + ", ".join([one] * len(chunk)) + tail),
                                   [value for row in chunk for value in row])
            else:
                cursor.executemany(_placeholders(sql), rows)

    def _copy(self, table: str, columns: list[str], rows: list[Sequence[Any]]) -> None:
        """``rows`` into ``table`` by binary ``COPY``, after the pipeline (which cannot carry it)."""
        self.end_pipeline()
        types = self._types(table)
        with self.raw.cursor() as cursor, \
                cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([types[c] for c in columns])
            for row in rows:
                copy.write_row(row)

    def end_pipeline(self) -> None:
        """Send what waits in the pipeline and read its answers (a failed statement raises here)."""
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()

    def _begin_pipeline(self) -> None:
        if self._pipelined and self._pipeline is None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.raw.pipeline())
            self._pipeline = stack

    def _types(self, table: str) -> dict[str, str]:
        types = _COLUMN_TYPES.get(table)
        if types is None:
            rows = self.raw.execute("SELECT column_name, data_type FROM information_schema.columns "
                                    "WHERE table_name = %s AND table_schema = current_schema()", (table,)).fetchall()
            types = _COLUMN_TYPES[table] = dict(rows)
        return types


#: Rows of one plain INSERT from which it goes as COPY (see :class:`_Connection`): about
#: where its two extra round trips cost what it saves.
COPY_ROWS = 100
#: Each table's column types (the schema is babysit's, the same in every database), for ``unnest``.
_COLUMN_TYPES: dict[str, dict[str, str]] = {}


class PostgresStore(Store):
    """Every run in one PostgreSQL database, given as ``postgresql://user:password@host:port/db``."""

    FLAG_KINDS = ("SELECT string_agg(DISTINCT (e.data::json ->> 'kind'), ',') FROM events e "
                  "WHERE e.run = runs.run AND e.kind = 'flag'")

    def __init__(self, url: str, pool_size: int = POOL_SIZE):
        self._psycopg = _psycopg()
        self.url = url
        self.location = redact(url)
        self.health = StoreHealth(self.location)
        self._closed = False
        try:  # one connection first: a database that is down or refuses us fails here, in plain words
            with self._psycopg.connect(url, **_CONNECT) as raw:
                self._migrate(_Connection(raw))
        except self._psycopg.Error as exc:
            raise self._fault(exc, opening=True) from None
        self._pool = _pool_class()(url, kwargs=_CONNECT, min_size=1, max_size=pool_size, open=True,
                                    timeout=CONNECT_TIMEOUT, name="babysit-store")

    # ------------------------------------------------------------------ the connections

    def _migrate(self, db: _Connection) -> None:
        with db.raw.transaction():
            db.execute("SELECT pg_advisory_xact_lock(?, ?)", _MIGRATION_LOCK)
            db.execute("CREATE TABLE IF NOT EXISTS babysit_store (version BIGINT NOT NULL)")
            row = db.execute("SELECT max(version) FROM babysit_store").fetchone()
            version = migrations.apply(db, row[0] or 0, self.location, translate)
            db.execute("DELETE FROM babysit_store")
            db.execute("INSERT INTO babysit_store (version) VALUES (?)", (version,))

    def _with_connection(self, use):
        """``use(connection)`` on a pooled connection; retried once when the connection failed
        (a database restarted since the last call leaves connections that fail at first use:
        the pool then drops its broken ones). Safe for every call of the store: reads, and
        writes, each of which is idempotent (a batch stores each seq once), so a retry is
        right even when the first try's commit did happen. A database that stays away raises
        :class:`~monitor.store.faults.StoreUnavailable`."""
        from psycopg_pool import PoolTimeout

        if self._closed:
            raise RuntimeError(f"the store {self.location} is closed")
        for attempt in (1, 2):
            try:
                with self._pool.connection() as raw:
                    return use(_Connection(raw))
            except (self._psycopg.OperationalError, PoolTimeout) as exc:  # down, unreachable, full, ...
                if attempt == 2:
                    raise self._failed(exc) from exc
                self._pool.check()  # drop the connections the restart broke
            except self._psycopg.errors.ReadOnlySqlTransaction as exc:  # a standby
                raise self._failed(exc) from exc
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ the interface's part

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        params = tuple(params)
        return self._with_connection(lambda db: db.execute(sql, params).fetchall())

    def _transaction(self, write, *args):
        def transaction(db: _Connection):
            # In a pipeline, statements go out without waiting for their answers; only a read
            # (a batch's stored seqs), a COPY and the commit wait: a few round trips, not fifteen.
            with db.raw.transaction():
                writer = _Connection(db.raw, pipelined=True)
                try:
                    return write(writer, *args)
                finally:
                    writer.end_pipeline()

        result = self._with_connection(transaction)
        self.health.succeeded()
        return result

    def _lock_runs(self, db: _Connection, runs: Sequence[str]) -> None:
        """One advisory lock a run, taken in the order of their keys (two writers of the same
        runs never wait for each other crosswise), by one statement: ``unnest`` yields the
        sorted array in its order and each row takes its lock as it passes."""
        keys = sorted({run_lock_key(run) for run in runs})
        db.execute("SELECT count(pg_advisory_xact_lock(key)) FROM unnest(?::bigint[]) AS key", (keys,))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ faults

    def _failed(self, exc: BaseException) -> StoreUnavailable:
        return self.health.record(self._fault(exc), exc)

    def _fault(self, exc: BaseException, opening: bool = False) -> StoreUnavailable:
        errors = self._psycopg.errors
        if isinstance(exc, errors.DiskFull):
            state, cause = FULL, f"the database server's disk is full ({self.location})"
        elif isinstance(exc, errors.ReadOnlySqlTransaction):
            state, cause = READ_ONLY, f"the database is read-only ({self.location}: {_first_line(exc)})"
        elif isinstance(exc, (errors.LockNotAvailable, errors.DeadlockDetected)):
            state, cause = BUSY, f"the database is locked ({self.location}: {_first_line(exc)})"
        elif isinstance(exc, errors.IoError):
            state, cause = IO_ERROR, f"the database server failed to write ({self.location}: {_first_line(exc)})"
        else:
            state, cause = UNREACHABLE, f"cannot reach the database {self.location}: {_first_line(exc)}"
        if opening:
            return StoreUnavailable(state, f"cannot open the store: {cause}; start the database or give "
                                           "another --store URL")
        return StoreUnavailable(state, f"{cause}: batches are refused until it takes writes again")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
