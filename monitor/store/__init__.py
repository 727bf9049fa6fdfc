"""The run store: every event of every run, exactly once, behind one interface.

* :mod:`monitor.store.interface`: what a store is and means (:class:`Store`, :class:`RunInfo`);
* :mod:`monitor.store.sqlite`: the embedded default, one file under the logdir (:class:`RunStore`);
* :mod:`monitor.store.postgres`: PostgreSQL, shared by several server processes (:class:`PostgresStore`);
* :mod:`monitor.store.migrations`: the one schema, as versioned migrations both apply on open;
* :mod:`monitor.store.blocks`, :mod:`monitor.store.layers`, :mod:`monitor.store.liveness`: derived
  and server tables; :mod:`monitor.store.reads`: the run page's reads; :mod:`monitor.store.faults`:
  a store that cannot take writes, in plain words.

:func:`open_store` picks the backend from where the store is: a folder (SQLite) or a
``postgresql://`` URL. Nothing outside this package knows which one it talks to.
"""
from __future__ import annotations

from pathlib import Path

from monitor.store.faults import StoreUnavailable
from monitor.store.interface import RunInfo, Store
from monitor.store.migrations import STORE_VERSION
from monitor.store.sqlite import DB_FILENAME, RunStore

#: URL schemes of a PostgreSQL store.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")

__all__ = ["DB_FILENAME", "POSTGRES_SCHEMES", "STORE_VERSION", "RunInfo", "RunStore", "Store",
           "StoreUnavailable", "is_database_url", "open_store"]


def is_database_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def open_store(location: str | Path) -> Store:
    """The store at ``location``: a ``postgresql://user:password@host:port/db`` URL (needs the
    ``scale`` extra: psycopg), or a logdir folder holding ``babysit.sqlite3``."""
    if is_database_url(location):
        from monitor.store.postgres import PostgresStore

        return PostgresStore(str(location))
    return RunStore(location)
