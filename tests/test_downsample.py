"""Downsampling keeps every extreme and every NaN a chart must show."""
import math

import numpy as np
import pytest

from monitor.store.blocks import BLOCK_COLUMNS, BLOCK_STEPS, summarise
from web.downsample import MAX_POINTS, downsample, downsample_blocks, downsample_rows


def test_a_short_series_is_kept_whole():
    assert downsample(np.arange(50), np.ones(50)).tolist() == list(range(50))


def test_a_million_points_become_at_most_the_limit_with_extremes_spikes_and_nan_kept():
    rng = np.random.default_rng(0)
    n = 1_000_000
    values = np.exp(-np.arange(n) / 2e5) + rng.normal(0, 0.01, n)
    values[123_457] = 50.0  # one spike
    values[700_001] = math.nan  # one NaN loss
    values[900_000] = -math.inf
    keep = downsample(np.arange(n), values)
    assert len(keep) <= MAX_POINTS
    assert np.all(np.diff(keep) > 0)  # step order
    kept = values[keep]
    assert {123_457, 700_001, 900_000, 0, n - 1} <= set(keep.tolist())
    finite = values[np.isfinite(values)]
    assert np.nanmax(kept[np.isfinite(kept)]) == finite.max() and np.nanmin(kept[np.isfinite(kept)]) == finite.min()


@pytest.mark.parametrize("max_points", [10, 100, 2000])
def test_every_bucket_keeps_its_own_min_and_max(max_points):
    rng = np.random.default_rng(1)
    values = rng.normal(size=50_000)
    keep = set(downsample(np.arange(50_000), values, max_points).tolist())
    assert len(keep) <= max_points
    size = -(-50_000 // (max_points // 5))
    for start in range(0, 50_000, size):
        chunk = values[start:start + size]
        assert start + int(np.argmin(chunk)) in keep and start + int(np.argmax(chunk)) in keep


def blocks_of(values):
    """The per-block summaries the store keeps of a series logged at steps 0, 1, 2, ..."""
    rows = summarise(("r", "x", step, step, 1000.0 + step, value) for step, value in enumerate(values.tolist()))
    table = np.array(sorted(rows, key=lambda row: row[2]), dtype=object)[:, 3:].astype(np.float64)
    return {column: table[:, i] for i, column in enumerate(BLOCK_COLUMNS)}


def test_a_series_read_as_blocks_keeps_at_most_the_limit_with_its_ends_spikes_nan_and_infinity():
    rng = np.random.default_rng(2)
    n = 200_000
    values = rng.normal(size=n)
    values[[12_345, 150_000]] = (50.0, math.nan)
    values[180_000] = -math.inf
    kept = downsample_blocks(blocks_of(values), MAX_POINTS)
    steps = kept["step"].tolist()
    assert len(steps) <= MAX_POINTS and steps == sorted(set(steps))
    assert {0, 12_345, 150_000, 180_000, n - 1} <= set(steps)
    assert np.array_equal(kept["value"], values[kept["step"]], equal_nan=True)
    assert np.array_equal(kept["wall"], 1000.0 + kept["step"])


def test_a_series_read_as_blocks_keeps_the_min_and_max_of_every_bucket_of_blocks():
    rng = np.random.default_rng(3)
    values = rng.normal(size=64 * BLOCK_STEPS)
    kept = set(downsample_blocks(blocks_of(values), 100)["step"].tolist())  # 20 buckets of 4 blocks
    size = 4 * BLOCK_STEPS
    for start in range(0, len(values), size):
        chunk = values[start:start + size]
        assert start + int(np.argmin(chunk)) in kept and start + int(np.argmax(chunk)) in kept


def test_rows_chosen_by_several_key_columns_keep_each_ones_extremes_within_the_limit():
    rng = np.random.default_rng(4)
    high, low = rng.normal(size=5000), rng.normal(size=5000)
    high[1234], low[4321] = 99.0, -99.0
    keep = downsample_rows(np.arange(5000), [high, low], 300)
    assert len(keep) <= 300 and {1234, 4321, 0, 4999} <= set(keep.tolist())
    assert downsample_rows(np.arange(50), [high[:50]], 300).tolist() == list(range(50))
