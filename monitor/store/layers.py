"""The store's per-layer and input tables: what the run page charts, as columns, not JSON.

Why derived tables: a layer_stats event holds every layer's summary as one JSON text, and
a run of a million steps sampled every 200 holds thousands of them; decoding them all to
chart one layer would take seconds. On append, each newly stored summary also becomes one
``layer_points`` row and each input_stats event one ``input_points`` row (replays store no
event, so they add no row). Both are ``WITHOUT ROWID`` tables clustered on
``(run, signal, layer, step, seq)`` and ``(run, step, seq)``: one layer's samples lie side by
side on disk, so reading them is one range scan however long the run. ``layers`` lists each
run's (signal, layer) pairs with the module and the position where each was first seen.

NaN and absent: SQLite stores NaN as NULL. The statistics every summary has (``mean``,
``std``, ``min``, ``max``, ``norm``, ``zero_frac``) are never absent, so NULL reads back as
NaN. The optional ones (:data:`OPTIONAL_FIELDS`: quantiles, ``sat_frac``, ``dead_frac``,
``update_ratio``) are NULL when the summary had none, and also when it was NaN; bit *i* of
``nan_mask`` is set when ``OPTIONAL_FIELDS[i]`` was NaN, so readers tell the two apart.
±Inf are stored natively.

The SQL of these tables lives here only (portable: SQLite and PostgreSQL); the stores of
:mod:`monitor.store` call these functions inside their own transactions and lock.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from monitor.events import QUANTILE_LEVELS, Event, Kind

QUANTILE_FIELDS = tuple(f"q{i}" for i in range(len(QUANTILE_LEVELS)))  # q0..q6 at QUANTILE_LEVELS
#: Columns a summary may lack: NULL means absent unless its bit in ``nan_mask`` says NaN.
OPTIONAL_FIELDS = (*QUANTILE_FIELDS, "sat_frac", "dead_frac", "update_ratio")
#: The columns of ``layer_points`` a reader may ask for, in the order they are returned.
LAYER_FIELDS = ("step", "mean", "std", "min", "max", "norm", *QUANTILE_FIELDS, "zero_frac", "sat_frac",
                "dead_frac", "update_ratio", "nan", "inf")
#: The columns of ``input_points`` (input_stats events) a reader gets.
INPUT_FIELDS = ("step", "wall", "mean", "std", "min", "max", "nan", "inf")
_INTEGER_FIELDS = {"step", "nan", "inf", "nan_mask"}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS layer_points (
    run TEXT NOT NULL, signal TEXT NOT NULL, layer TEXT NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL,
    module TEXT NOT NULL, mean REAL, std REAL, min REAL, max REAL, norm REAL,
    {', '.join(f'{q} REAL' for q in QUANTILE_FIELDS)}, zero_frac REAL, sat_frac REAL, dead_frac REAL,
    update_ratio REAL, nan INTEGER NOT NULL, inf INTEGER NOT NULL, nan_mask INTEGER NOT NULL,
    PRIMARY KEY (run, signal, layer, step, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS layers (
    run TEXT NOT NULL, signal TEXT NOT NULL, layer TEXT NOT NULL, module TEXT NOT NULL,
    seq INTEGER NOT NULL, pos INTEGER NOT NULL, PRIMARY KEY (run, signal, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS input_points (
    run TEXT NOT NULL, step INTEGER NOT NULL, seq INTEGER NOT NULL, wall REAL NOT NULL,
    mean REAL, std REAL, min REAL, max REAL, nan INTEGER NOT NULL, inf INTEGER NOT NULL,
    PRIMARY KEY (run, step, seq)) WITHOUT ROWID;
"""

_POINT_COLUMNS = ("run", "signal", "layer", "step", "seq", "module", "mean", "std", "min", "max", "norm",
                  *QUANTILE_FIELDS, "zero_frac", "sat_frac", "dead_frac", "update_ratio", "nan", "inf", "nan_mask")
# DO NOTHING: two summaries of one layer and signal in one event (valid, never sent by our
# hooks) keep the first rather than failing the whole batch.
_INSERT_POINTS = (f"INSERT INTO layer_points ({', '.join(_POINT_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_POINT_COLUMNS))}) ON CONFLICT DO NOTHING")
# A layer first seen in a late replay of an earlier seq moves up to where it belongs.
_INSERT_LAYER = ("INSERT INTO layers (run, signal, layer, module, seq, pos) VALUES (?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT (run, signal, layer) DO UPDATE SET module = excluded.module, seq = excluded.seq, "
                 "pos = excluded.pos WHERE (excluded.seq, excluded.pos) < (layers.seq, layers.pos)")
_INSERT_INPUT = ("INSERT INTO input_points (run, step, seq, wall, mean, std, min, max, nan, inf) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
_NO_QUANTILES = (None,) * len(QUANTILE_FIELDS)


@dataclass(frozen=True)
class LayerColumns:
    """One layer's samples of one signal, in step order, as numpy columns.

    ``columns`` holds ``step`` (int64) and each asked field (float64; ``nan`` and ``inf``
    int64), NaN where the value was NaN or absent; ``absent`` holds, for each asked field of
    :data:`OPTIONAL_FIELDS` that the layer lacks somewhere, a bool mask of those rows.
    """

    layer: str
    module: str
    columns: dict[str, np.ndarray]
    absent: dict[str, np.ndarray]


def insert(db, events: Sequence[Event]) -> None:
    """Derived rows of newly stored events (call inside the append transaction)."""
    points, layers, inputs = [], [], []
    for e in events:
        if e.kind is Kind.LAYER_STATS:
            for pos, s in enumerate(e.data.summaries):
                signal = s.signal.value
                points.append(_point_row(e, signal, s))
                layers.append((e.run, signal, s.layer, s.module, e.seq, pos))
        elif e.kind is Kind.INPUT_STATS:
            d = e.data
            inputs.append((e.run, e.step, e.seq, e.wall, d.mean, d.std, d.min, d.max, d.nan, d.inf))
    if points:
        db.executemany(_INSERT_POINTS, points)
        first: dict[tuple, tuple] = {}  # each layer once, where it is first seen: an upsert names each key once
        for row in layers:
            key = row[:3]
            if key not in first or row[4:] < first[key][4:]:
                first[key] = row
        db.executemany(_INSERT_LAYER, list(first.values()))
    if inputs:
        db.executemany(_INSERT_INPUT, inputs)


def _point_row(e: Event, signal: str, s) -> tuple:
    if s.units is None or s.dead_units is None:
        dead = None
    else:
        dead = s.dead_units / s.units if s.units else math.nan  # no units at all: undefined, not zero
    optional = (*(s.quantiles or _NO_QUANTILES), s.sat_frac, dead, s.update_ratio)
    mask = 0
    for bit, value in enumerate(optional):
        if value is not None and value != value:  # NaN
            mask |= 1 << bit
    return (e.run, signal, s.layer, e.step, e.seq, s.module, s.mean, s.std, s.min, s.max, s.norm,
            *optional[:len(QUANTILE_FIELDS)], s.zero_frac, *optional[len(QUANTILE_FIELDS):], s.nan, s.inf, mask)


def backfill(db, decode: Callable[[tuple], Event | None], chunk: int = 200) -> None:
    """Fill the tables from the stored layer_stats and input_stats events (the v1 -> v2
    migration); ``decode`` turns an ``events`` row into an Event, or None when it no
    longer decodes (such a row raises when read anyway; it is not charted)."""
    cursor = db.execute("SELECT run, seq, step, wall, kind, data FROM events WHERE kind IN (?, ?) ORDER BY run, seq",
                        (Kind.LAYER_STATS.value, Kind.INPUT_STATS.value))
    while rows := cursor.fetchmany(chunk):
        insert(db, [e for e in map(decode, rows) if e is not None])


# ---------------------------------------------------------------------------- reading

Query = Callable[[str, Iterable[Any]], list]


def layer_index(query: Query, run: str) -> list[tuple[str, str, str]]:
    rows = query("SELECT layer, signal, module FROM layers WHERE run = ? ORDER BY seq, pos, signal", (run,))
    return [tuple(row) for row in rows]


def layer_points(query: Query, run: str, signal: str, layers: Sequence[str] | None,
                 fields: Sequence[str]) -> list[LayerColumns]:
    """Columns of each layer (all of the signal's, in first-seen order, when ``layers`` is
    None; unknown names are left out) with ``step`` first and then ``fields``."""
    modules = dict(query("SELECT layer, module FROM layers WHERE run = ? AND signal = ? ORDER BY seq, pos",
                         (run, signal)))
    names = list(modules) if layers is None else [name for name in dict.fromkeys(layers) if name in modules]
    wanted = ["step", *(f for f in dict.fromkeys(fields) if f != "step")]
    optional = [f for f in wanted if f in OPTIONAL_FIELDS]
    read = [*wanted, "nan_mask"] if optional else wanted
    sql = f"SELECT {', '.join(read)} FROM layer_points WHERE run = ? AND signal = ? AND layer = ? ORDER BY step, seq"
    out = []
    for name in names:
        columns = _columns(query(sql, (run, signal, name)), read)
        absent = {}
        if optional:
            mask = columns.pop("nan_mask")
            for field in optional:
                missing = np.isnan(columns[field]) & ((mask >> OPTIONAL_FIELDS.index(field)) & 1 == 0)
                if missing.any():
                    absent[field] = missing
        out.append(LayerColumns(name, modules[name], columns, absent))
    return out


def input_points(query: Query, run: str) -> dict[str, np.ndarray]:
    """Every input_stats reading of the run in step order: :data:`INPUT_FIELDS` columns."""
    rows = query(f"SELECT {', '.join(INPUT_FIELDS)} FROM input_points WHERE run = ? ORDER BY step, seq", (run,))
    return _columns(rows, INPUT_FIELDS)


def _columns(rows: list, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Rows as one numpy column per field: int64 for the integer fields, exact up to 2**63-1
    (through float64 a step past 2**53 would come back rounded, and one near 2**63 overflow),
    float64 for the others, NULL as NaN."""
    values = list(zip(*rows)) if rows else [()] * len(fields)
    return {field: np.array(column, dtype=np.int64 if field in _INTEGER_FIELDS else np.float64)
            for field, column in zip(fields, values)}
