"""Downsampling a series for a chart without hiding what matters in it.

A run of a million steps cannot be drawn point by point, and plain decimation would drop
the spike or the NaN that the person babysitting needs to see. The series is cut into
equal buckets of consecutive points; each bucket keeps its first and last point, its
minimum and maximum, and its first NaN (a NaN loss is news), in step order. So every
extreme survives, and a page opens a long run at a flat cost.
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
