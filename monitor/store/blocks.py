"""The store's ``scalar_blocks`` table: each scalar series summarised per block of steps.

Why: a chart of a million-step loss needs about 2,000 points, chosen so that every spike
and NaN survives (see :mod:`web.downsample`), and reading a million rows out of SQLite
into Python takes about a second. So on append every new scalar row is also folded into
the block of :data:`BLOCK_STEPS` steps it falls in (an UPSERT, once per block the batch
touches): the block's row count and its first, last, minimum, maximum and first-NaN
points, each as ``(step, seq, wall, value)``. A chart of the whole series then reads a few
thousand block rows instead. Points are ordered by ``(step, seq)``; on a tie of values the
earlier point is the block's minimum or maximum, as ``numpy.argmin`` would choose.

Merging is order-free: a late replay of old steps updates the blocks it falls in and only
wins where it comes first (or holds a new extreme). NaN values are stored as NULL, so
``min_*`` and ``max_*`` are NULL in a block of NaN only; ``first_value`` and ``last_value``
NULL mean NaN.

The SQL lives here only (portable: SQLite and PostgreSQL); the stores of :mod:`monitor.store` call these functions.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import numpy as np

#: Steps per block: 1,000,000 steps make 3,907 block rows, a few ms to read; a chart of
#: 2,000 points (400 buckets) then merges about 10 blocks per bucket.
BLOCK_STEPS = 256
POINTS = ("first", "last", "min", "max", "nan")
#: The columns of one block as read: ``count`` then each point's step, seq, wall (and
#: value, but for ``nan``, whose value is NaN).
BLOCK_COLUMNS = ("count", *(f"{p}_{c}" for p in POINTS for c in ("step", "seq", "wall", "value")
                            if not (p == "nan" and c == "value")))

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS scalar_blocks (
    run TEXT NOT NULL, name TEXT NOT NULL, block INTEGER NOT NULL, count INTEGER NOT NULL,
    {', '.join(f'{c} {"REAL" if c.endswith(("wall", "value")) else "INTEGER"}' for c in BLOCK_COLUMNS[1:])},
    PRIMARY KEY (run, name, block)) WITHOUT ROWID;
"""

# The stored row's columns are named with the table (``scalar_blocks.min_value``): PostgreSQL
# finds a bare name ambiguous beside ``excluded``, SQLite takes either.
_EARLIER = "(excluded.{p}_step, excluded.{p}_seq) < (scalar_blocks.{p}_step, scalar_blocks.{p}_seq)"
_REPLACE_IF = {  # when the incoming block's point replaces the stored one (all read the old row)
    "first": _EARLIER,
    "last": "(excluded.{p}_step, excluded.{p}_seq) > (scalar_blocks.{p}_step, scalar_blocks.{p}_seq)",
    "min": "excluded.{p}_seq IS NOT NULL AND (scalar_blocks.{p}_seq IS NULL OR excluded.{p}_value < "
           "scalar_blocks.{p}_value OR (excluded.{p}_value = scalar_blocks.{p}_value AND " + _EARLIER + "))",
    "max": "excluded.{p}_seq IS NOT NULL AND (scalar_blocks.{p}_seq IS NULL OR excluded.{p}_value > "
           "scalar_blocks.{p}_value OR (excluded.{p}_value = scalar_blocks.{p}_value AND " + _EARLIER + "))",
    "nan": "excluded.{p}_seq IS NOT NULL AND (scalar_blocks.{p}_seq IS NULL OR " + _EARLIER + ")",
}
_UPSERT = (f"INSERT INTO scalar_blocks (run, name, block, {', '.join(BLOCK_COLUMNS)}) "
           f"VALUES (?, ?, ?, {', '.join('?' * len(BLOCK_COLUMNS))}) "
           "ON CONFLICT (run, name, block) DO UPDATE SET count = scalar_blocks.count + excluded.count, "
           + ", ".join(f"{column} = CASE WHEN {_REPLACE_IF[column.split('_')[0]].format(p=column.split('_')[0])} "
                       f"THEN excluded.{column} ELSE scalar_blocks.{column} END" for column in BLOCK_COLUMNS[1:]))


def insert(db, rows: Iterable[tuple]) -> None:
    """Fold scalar rows ``(run, name, step, seq, wall, value)`` into their blocks (call inside
    the append transaction; ``value`` None or NaN both mean NaN)."""
    db.executemany(_UPSERT, summarise(rows))


def summarise(rows: Iterable[tuple]) -> list[tuple]:
    """One block row per (run, name, block) of ``rows``, in the UPSERT's column order."""
    blocks: dict[tuple, list] = {}
    for run, name, step, seq, wall, value in rows:
        if value is None:
            value = math.nan
        point = (step, seq, wall, value)
        key = (run, name, step // BLOCK_STEPS)
        b = blocks.get(key)
        if b is None:  # count, first, last, min, max, first NaN
            b = blocks[key] = [0, point, point, None, None, None]
        b[0] += 1
        if (step, seq) < b[1][:2]:
            b[1] = point
        if (step, seq) > b[2][:2]:
            b[2] = point
        if value != value:
            if b[5] is None or (step, seq) < b[5][:2]:
                b[5] = point
        else:
            if b[3] is None or (value, step, seq) < (b[3][3], *b[3][:2]):
                b[3] = point
            if b[4] is None or value > b[4][3] or (value == b[4][3] and (step, seq) < b[4][:2]):
                b[4] = point
    empty = (None,) * 4
    return [(*key, count, *first, *last, *(low or empty), *(high or empty), *(nan or empty)[:3])
            for key, (count, first, last, low, high, nan) in blocks.items()]


def backfill(db, chunk: int = 100_000) -> None:
    """Fill ``scalar_blocks`` from the ``scalars`` table (the v1 -> v2 migration)."""
    cursor = db.execute("SELECT run, name, step, seq, wall, value FROM scalars")
    while rows := cursor.fetchmany(chunk):
        insert(db, rows)


# ---------------------------------------------------------------------------- reading

Query = Callable[[str, Iterable[Any]], list]


def totals(query: Query, run: str) -> dict[str, tuple[int, int]]:
    """``{name: (rows, blocks)}`` of every scalar series of the run, by name."""
    # the CAST: PostgreSQL sums BIGINTs as NUMERIC
    rows = query("SELECT name, CAST(sum(count) AS BIGINT), count(*) FROM scalar_blocks WHERE run = ? "
                 "GROUP BY name ORDER BY name", (run,))
    return {name: (total, blocks) for name, total, blocks in rows}


def blocks(query: Query, run: str, name: str) -> dict[str, np.ndarray]:
    """The series' blocks in step order: :data:`BLOCK_COLUMNS` as float64 arrays, NULL as NaN
    (a ``*_seq`` of NaN: the block has no such point), but the ``*_step`` columns: int64,
    exact up to 2**63-1 (0 where the block has no such point)."""
    rows = query(f"SELECT {', '.join(BLOCK_COLUMNS)} FROM scalar_blocks WHERE run = ? AND name = ? ORDER BY block",
                 (run, name))
    table = np.array(rows, dtype=np.float64).reshape(len(rows), len(BLOCK_COLUMNS))
    out = {column: table[:, i] for i, column in enumerate(BLOCK_COLUMNS)}
    for i, column in enumerate(BLOCK_COLUMNS):
        if column.endswith("_step"):  # through float64 a step past 2**53 would come back rounded
            out[column] = np.array([0 if row[i] is None else row[i] for row in rows], dtype=np.int64)
    return out


def last_value(query: Query, run: str, name: str) -> float | None:
    """The value at the highest step (NaN included), or None when the run has no such scalar."""
    rows = query("SELECT last_value, last_seq FROM scalar_blocks WHERE run = ? AND name = ? "
                 "ORDER BY block DESC LIMIT 1", (run, name))
    if not rows:
        return None
    return math.nan if rows[0][0] is None else rows[0][0]
