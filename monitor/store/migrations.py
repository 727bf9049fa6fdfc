"""The store's one schema, as versioned migrations that every backend applies on open.

Why one list for every backend: SQLite and PostgreSQL must hold the same tables with the
same meaning, so that the same reads give the same REST answers. The SQL is written once,
in SQLite's words (``INTEGER``, ``REAL``, ``WITHOUT ROWID``); a backend translates the few
words its engine spells differently (:func:`monitor.store.postgres.translate`).

A store records the version it is at (SQLite: ``PRAGMA user_version``; PostgreSQL: the
``babysit_store`` table). Opening applies, in one transaction taken under the backend's
write lock (so of several processes opening one store at once, one migrates and the others
then find it current), every migration above that version, then the additive tables
(:data:`ADDITIVE`): tables new since version 2 that an older babysit simply ignores, so no
version bump stops it opening the store.

* version 1: the record (``events``) and what the run list and charts read (``scalars``, ``runs``);
* version 2: the ``events_by_kind`` index and the run page's derived tables
  (:mod:`monitor.store.blocks`, :mod:`monitor.store.layers`), filled from the record when the
  store was at version 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from monitor.store import blocks, layers, liveness
from monitor.store.reads import decode_or_none

#: The version this babysit writes; it opens any store at a version of :data:`MIGRATIONS` up to it.
STORE_VERSION = 2

_RECORD = """
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

# "the latest event of a kind" and "every flag" as index look-ups on runs of millions of events
_KIND_INDEX = "CREATE INDEX IF NOT EXISTS events_by_kind ON events (run, kind, seq);"


def _derive_run_page_tables(db) -> None:
    blocks.backfill(db)
    layers.backfill(db, decode_or_none)


@dataclass(frozen=True)
class Migration:
    """From ``version - 1`` to ``version``: the statements, then ``backfill(db)`` when the
    store held data at the version before (a new store has nothing to derive)."""

    version: int
    schema: str
    backfill: Callable | None = None


MIGRATIONS = (
    Migration(1, _RECORD),
    Migration(2, _KIND_INDEX + blocks.SCHEMA + layers.SCHEMA, _derive_run_page_tables),
)
#: Tables added without a version bump (an older babysit ignores them), created on every open.
ADDITIVE = liveness.SCHEMA


def statements(schema: str) -> list[str]:
    return [s.strip() for s in schema.split(";") if s.strip()]


def apply(db, version: int, where: str, translate: Callable[[str], str] = str) -> int:
    """Bring a store at ``version`` (0: new) to :data:`STORE_VERSION` on ``db`` (inside the
    caller's transaction); the version it is at now. ``where`` names the store in an error."""
    if not 0 <= version <= STORE_VERSION:
        raise RuntimeError(f"{where}: store version {version}, this babysit reads version "
                           f"{STORE_VERSION} (or older); upgrade babysit or use another store")
    for migration in MIGRATIONS:
        if migration.version <= version:
            continue
        for statement in statements(migration.schema):
            db.execute(translate(statement))
        if version > 0 and migration.backfill is not None:  # a new store has nothing to derive
            migration.backfill(db)
    for statement in statements(ADDITIVE):
        db.execute(translate(statement))
    return STORE_VERSION
