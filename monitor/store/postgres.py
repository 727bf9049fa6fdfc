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

One connection per store, its use serialised by a lock, as the SQLite backend does:
the server's threads take turns, and throughput comes from batching (psycopg sends an
``executemany`` as one pipeline).
"""
from __future__ import annotations

import functools
import hashlib
import re
import threading
from typing import Any, Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from monitor.store import migrations
from monitor.store.faults import BUSY, FULL, IO_ERROR, READ_ONLY, UNREACHABLE, StoreHealth, StoreUnavailable
from monitor.store.interface import Store

#: Seconds to wait for the database when connecting: a store that is down fails fast.
CONNECT_TIMEOUT = 5
#: The migrations' advisory lock, in the two-key space: ("babysit", 1) as two int4.
_MIGRATION_LOCK = (0x62616279, 1)
_WORDS = [(re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"),
          (re.compile(r"\bTEXT\b"), 'TEXT COLLATE "C"'), (re.compile(r"\s*\bWITHOUT ROWID\b"), "")]


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise RuntimeError("a PostgreSQL store needs psycopg: pip install 'babysit[scale]'") from None
    return psycopg


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


class _Connection:
    """A psycopg connection spoken to as the store modules speak to sqlite3's: ``execute``
    returns a cursor (``fetchone``, ``fetchall``, ``fetchmany``, ``rowcount``), ``executemany``."""

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()):
        cursor = self.raw.cursor()
        cursor.execute(_placeholders(sql), tuple(params))
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self.raw.cursor() as cursor:
                cursor.executemany(_placeholders(sql), rows)


class PostgresStore(Store):
    """Every run in one PostgreSQL database, given as ``postgresql://user:password@host:port/db``."""

    FLAG_KINDS = ("SELECT string_agg(DISTINCT (e.data::json ->> 'kind'), ',') FROM events e "
                  "WHERE e.run = runs.run AND e.kind = 'flag'")

    def __init__(self, url: str):
        self._psycopg = _psycopg()
        self.url = url
        self.location = redact(url)
        self.health = StoreHealth(self.location)
        self._lock = threading.Lock()
        self._db: _Connection | None = None
        self._closed = False
        try:
            with self._lock:
                self._migrate(self._connection())
        except BaseException as exc:
            self._disconnect()
            if isinstance(exc, self._psycopg.Error):
                raise self._fault(exc, opening=True) from None
            raise

    # ------------------------------------------------------------------ the connection

    def _connection(self) -> _Connection:
        """The open connection, or a new one (after a fault, the database may be back)."""
        if self._closed:
            raise self._psycopg.InterfaceError("the store is closed")
        if self._db is None or self._db.raw.closed or self._db.raw.broken:
            self._disconnect()
            self._db = _Connection(self._psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                                                         application_name="babysit"))
        return self._db

    def _disconnect(self) -> None:
        if self._db is not None:
            try:
                self._db.raw.close()
            except self._psycopg.Error:
                pass
            self._db = None

    def _migrate(self, db: _Connection) -> None:
        with db.raw.transaction():
            db.execute("SELECT pg_advisory_xact_lock(?, ?)", _MIGRATION_LOCK)
            db.execute("CREATE TABLE IF NOT EXISTS babysit_store (version BIGINT NOT NULL)")
            row = db.execute("SELECT max(version) FROM babysit_store").fetchone()
            version = migrations.apply(db, row[0] or 0, self.location, translate)
            db.execute("DELETE FROM babysit_store")
            db.execute("INSERT INTO babysit_store (version) VALUES (?)", (version,))

    # ------------------------------------------------------------------ the interface's part

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        params = tuple(params)
        with self._lock:
            for attempt in (1, 2):  # a read is safe to retry on a new connection
                try:
                    return self._connection().execute(sql, params).fetchall()
                except self._psycopg.OperationalError as exc:
                    self._disconnect()
                    if attempt == 2:
                        raise self._fault(exc) from None
        raise AssertionError("unreachable")

    def _transaction(self, write, *args):
        """One transaction, retried once on a new connection when the connection failed (a
        database restarted since the last call leaves a connection that fails at first use):
        every write of the store is idempotent (a batch stores each seq once), so a retry
        is safe even when the first try's commit did happen."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    db = self._connection()
                    with db.raw.transaction():
                        result = write(db, *args)
                    break
                except self._psycopg.OperationalError as exc:  # down, unreachable, full, read-only, ...
                    self._disconnect()
                    if attempt == 2:
                        raise self._failed(exc) from exc
                except self._psycopg.errors.ReadOnlySqlTransaction as exc:  # a standby
                    raise self._failed(exc) from exc
        self.health.succeeded()
        return result

    def _lock_runs(self, db: _Connection, runs: Sequence[str]) -> None:
        for key in sorted({run_lock_key(run) for run in runs}):
            db.execute("SELECT pg_advisory_xact_lock(?)", (key,))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._disconnect()

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
