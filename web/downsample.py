"""Downsampling a series for a chart without hiding what matters in it.

A run of a million steps cannot be drawn point by point, and plain decimation would drop
the spike or the NaN that the person babysitting needs to see. The series is cut into
equal buckets of consecutive points; each bucket keeps its first and last point, its
minimum and maximum, and its first NaN (a NaN loss is news), in step order. So every
extreme survives, and a page opens a long run at a flat cost. :func:`downsample_blocks`
applies the same rule to a series the store keeps as per-block summaries (a million
points read as a few thousand rows); :func:`downsample_rows` to tables such as a layer's
statistics, where several columns decide which rows to keep.
"""
from __future__ import annotations

import numpy as np

#: Points a series is cut down to at most (a chart is about that many pixels wide).
MAX_POINTS = 2000
#: Points one bucket may keep: first, min, max, first NaN, last.
KEPT_PER_BUCKET = 5


def downsample(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices (ascending) of the points to draw; all of them when there are few enough.

    ``steps`` must be in ascending order; ``values`` may hold NaN and ±Inf (±Inf count
    as extremes, NaN is kept once per bucket).
    """
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    buckets = max(max_points // KEPT_PER_BUCKET, 1)
    size = -(-n // buckets)  # ceil
    padded = np.full(buckets * size, np.nan)
    padded[:n] = values
    rows = padded.reshape(buckets, size)
    base = np.arange(buckets) * size
    finite_or_inf = ~np.isnan(rows)
    has_number = finite_or_inf.any(axis=1)
    low = np.where(np.isnan(rows), np.inf, rows)
    high = np.where(np.isnan(rows), -np.inf, rows)
    # argmin/argmax over the numbers; where a row holds +inf/-inf they win, as they should
    picks = [base, np.minimum(base + size - 1, n - 1)]
    picks.append((base + low.argmin(axis=1))[has_number])
    picks.append((base + high.argmax(axis=1))[has_number])
    is_nan = np.isnan(rows)
    is_nan[np.arange(buckets * size).reshape(buckets, size) >= n] = False  # padding is not data
    nan_rows = is_nan.any(axis=1)
    picks.append((base + is_nan.argmax(axis=1))[nan_rows])
    kept = np.unique(np.concatenate(picks))
    return kept[kept < n]


def downsample_rows(steps: np.ndarray, keys: list[np.ndarray], max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices (ascending) of the rows of a table to draw, chosen by several key columns.

    Each key column gets an equal share of ``max_points`` and keeps, per bucket, what
    :func:`downsample` keeps (first, last, minimum, maximum, first NaN); the union is at
    most ``max_points`` rows. Keys beyond ``max_points // KEPT_PER_BUCKET`` are not used.
    """
    n = len(steps)
    if n <= max_points or not keys:
        return np.arange(n)
    keys = keys[:max(max_points // KEPT_PER_BUCKET, 1)]
    share = max_points // len(keys)
    return np.unique(np.concatenate([downsample(steps, key, share) for key in keys]))


def downsample_blocks(blocks: dict[str, np.ndarray], max_points: int = MAX_POINTS) -> dict[str, np.ndarray]:
    """The points to draw of a series stored as per-block summaries (:mod:`monitor.store.blocks`).

    The same rule as :func:`downsample`, with bucket edges on block edges: consecutive
    blocks are grouped into at most ``max_points // KEPT_PER_BUCKET`` buckets, and each
    bucket keeps its first and last point, its minimum and maximum (±Inf included) and its
    first NaN. Returns ``step`` (int64), ``wall`` and ``value`` arrays in step order.
    """
    n = len(blocks["count"])
    per = -(-n // max(max_points // KEPT_PER_BUCKET, 1))  # blocks per bucket (ceil)
    groups = -(-n // per)
    base = np.arange(groups) * per

    def grid(column: np.ndarray, fill: float) -> np.ndarray:
        return np.concatenate([column, np.full(groups * per - n, fill)]).reshape(groups, per)

    picks = [("first", base), ("last", np.minimum(base + per - 1, n - 1))]
    for point, worst, best in (("min", np.inf, np.min), ("max", -np.inf, np.max)):
        present = ~np.isnan(grid(blocks[f"{point}_seq"], np.nan))
        values = np.where(present, grid(blocks[f"{point}_value"], worst), worst)
        winners = present & (values == best(values, axis=1)[:, None])  # earliest block wins a tie
        picks.append((point, (base + winners.argmax(axis=1))[winners.any(axis=1)]))
    has_nan = ~np.isnan(grid(blocks["nan_seq"], np.nan))
    picks.append(("nan", (base + has_nan.argmax(axis=1))[has_nan.any(axis=1)]))
    seq = np.concatenate([blocks[f"{p}_seq"][i] for p, i in picks])
    step = np.concatenate([blocks[f"{p}_step"][i] for p, i in picks])
    wall = np.concatenate([blocks[f"{p}_wall"][i] for p, i in picks])
    value = np.concatenate([blocks[f"{p}_value"][i] if p != "nan" else np.full(len(i), np.nan) for p, i in picks])
    _, unique = np.unique(seq, return_index=True)  # a point may be first and minimum at once
    order = unique[np.lexsort((seq[unique], step[unique]))]
    return {"step": step[order].astype(np.int64), "wall": wall[order], "value": value[order]}
