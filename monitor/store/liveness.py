"""Runs the server marked ``lost``: when, why, and the status they get back when heard again.

Why a table of its own and not an event: a run's seqs belong to its training process (the
server never writes into them), and "lost" is the server's judgement (:mod:`web.liveness`),
undone as soon as the trainer is heard from again. ``runs.status`` says ``lost``; this
table keeps when the server decided it (``at``, unix seconds), why (``no heartbeat for
31 s``) and the status the run had (``was``: running or stopping), which it gets back.

No store version bump: the table is new and nothing else changes, so an older babysit
opening the file simply ignores it (and lists the run's status as the text ``lost``).
``heard_runs`` is what several server processes sharing one store (``babysit serve
--message-queue``, ARCHITECTURE.md) tell each other: when any of them last heard each run's
trainer (unix seconds, the hearing server's clock), so that a process whose trainers are
connected elsewhere does not take them for silent.

The functions take the store's connection inside its transaction (see :mod:`monitor.store`);
their SQL is portable (SQLite and PostgreSQL).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

SCHEMA = """
CREATE TABLE IF NOT EXISTS lost_runs (
    run TEXT PRIMARY KEY, at REAL NOT NULL, reason TEXT NOT NULL, was TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS heard_runs (run TEXT PRIMARY KEY, at REAL NOT NULL);
"""
#: The statuses of a run whose training process should still be talking: only these can be lost.
ACTIVE = ("running", "stopping")
#: Longest reason kept (a reason is one line on the page).
MAX_REASON = 500


def mark_lost(db, run: str, reason: str, at: float) -> bool:
    """Mark ``run`` lost if it is still active; True when it was."""
    row = db.execute("SELECT status FROM runs WHERE run = ?", (run,)).fetchone()
    if row is None or row[0] not in ACTIVE:  # it ended (or is lost already) meanwhile: nothing to do
        return False
    db.execute("UPDATE runs SET status = 'lost' WHERE run = ?", (run,))
    db.execute("INSERT INTO lost_runs (run, at, reason, was) VALUES (?, ?, ?, ?) ON CONFLICT (run) DO UPDATE "
               "SET at = excluded.at, reason = excluded.reason, was = excluded.was",
               (run, at, reason[:MAX_REASON], row[0]))
    return True


def revive(db, run: str) -> bool:
    """The run's status from before it was lost, if it is lost; True when it was."""
    # the status read here, not a rowcount: in a PostgreSQL pipeline a rowcount is not known yet
    row = db.execute("SELECT l.was, r.status FROM lost_runs l LEFT JOIN runs r ON r.run = l.run WHERE l.run = ?",
                     (run,)).fetchone()
    if row is None:
        return False
    was, status = row
    if status == "lost":
        db.execute("UPDATE runs SET status = ? WHERE run = ?", (was, run))
    db.execute("DELETE FROM lost_runs WHERE run = ?", (run,))
    return status == "lost"


#: Runs one statement names at most (SQLite's and PostgreSQL's limits on parameters are far above).
RUNS_PER_STATEMENT = 500


def revive_on_news(db, runs: Sequence[str]) -> None:
    """:func:`revive` as statements whose results are not read (a batch of new events is news
    of its run: on a PostgreSQL pipeline, reading back would cost a round trip per batch),
    each one statement for all of ``runs``."""
    runs = list(runs)
    for start in range(0, len(runs), RUNS_PER_STATEMENT):
        chunk = runs[start:start + RUNS_PER_STATEMENT]
        among = ", ".join("?" * len(chunk))
        db.execute("UPDATE runs SET status = (SELECT was FROM lost_runs WHERE lost_runs.run = runs.run) "
                   f"WHERE run IN ({among}) AND status = 'lost' AND EXISTS (SELECT 1 FROM lost_runs "
                   "WHERE lost_runs.run = runs.run)", chunk)
        db.execute(f"DELETE FROM lost_runs WHERE run IN ({among})", chunk)


def lost(query: Callable[..., list[tuple]]) -> dict[str, tuple[float, str]]:
    """``{run: (at, reason)}`` of every run whose status is lost."""
    rows = query("SELECT l.run, l.at, l.reason FROM lost_runs l JOIN runs r ON r.run = l.run "
                 "WHERE r.status = 'lost'")
    return {run: (at, reason) for run, at, reason in rows}


def active(query: Callable[..., list[tuple]]) -> list[tuple[str, str, float]]:
    """``(run, host, started)`` of every run whose training process should still be talking."""
    return query(f"SELECT run, host, started FROM runs WHERE status IN ({', '.join('?' * len(ACTIVE))})",
                 ACTIVE)


def note_heard(db, heard: Iterable[tuple[str, float]]) -> None:
    """Record ``(run, at)`` pairs: the run's trainer was heard at ``at`` (the latest time wins)."""
    db.executemany("INSERT INTO heard_runs (run, at) VALUES (?, ?) ON CONFLICT (run) DO UPDATE "
                   "SET at = CASE WHEN excluded.at > heard_runs.at THEN excluded.at ELSE heard_runs.at END",
                   list(heard))


def last_heard(query: Callable[..., list[tuple]]) -> dict[str, float]:
    """``{run: at}``: when any server last heard each running or stopping run's trainer."""
    rows = query("SELECT h.run, h.at FROM heard_runs h JOIN runs r ON r.run = h.run "
                 f"WHERE r.status IN ({', '.join('?' * len(ACTIVE))})", ACTIVE)
    return {run: at for run, at in rows}
