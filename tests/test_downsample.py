"""Downsampling keeps every extreme and every NaN a chart must show."""
import math

import numpy as np
import pytest

from web.downsample import MAX_POINTS, downsample


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
