"""Host side of the statistics: raw numbers from the device become schema payloads.

Runs on the writer thread, in numpy, so the training thread pays nothing for sorting,
histograms or building dataclasses. Everything here is a pure function of its inputs.
"""
from __future__ import annotations

import math

import numpy as np

from monitor.events import QUANTILE_LEVELS, Filters, InputStats, Signal, TensorSummary

#: Bins of the per-tensor histogram, spanning the tensor's exact min..max
#: (TensorBoard uses 30; a power of two keeps the page's bar widths even).
HIST_BINS = 32
#: A tanh/sigmoid output within this share of its range from a bound is saturated:
#: its local gradient is below about 2 % of the maximum, so it barely learns.
SATURATION_MARGIN = 0.01
#: Output range per saturating module type.
SATURATING = {
    "Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0), "Softsign": (-1.0, 1.0),
    "Sigmoid": (0.0, 1.0), "Hardsigmoid": (0.0, 1.0),
}


def raw_moments(values: np.ndarray) -> np.ndarray:
    """What the device computes (sum, sum of squares, min, max, NaN and Inf counts), on the host."""
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (math.nan, math.nan)
    return np.array([finite.sum(), np.dot(finite, finite), low, high,
                     np.count_nonzero(np.isnan(values)), np.count_nonzero(np.isinf(values))])


def moments(numel: int, raw: np.ndarray, counted: bool):
    """(mean, std, min, max, norm, nan, inf) over the finite elements.

    ``raw`` holds sum, sum of squares, min, max and, when ``counted``, the NaN and Inf
    counts. ``std`` is the unbiased estimate, as ``torch.std`` computes it.
    """
    total, squares, low, high = (float(v) for v in raw[:4])
    nan, inf = (int(raw[4]), int(raw[5])) if counted else (0, 0)
    finite = numel - nan - inf
    if finite == 0:
        return math.nan, math.nan, math.nan, math.nan, 0.0, nan, inf
    mean = total / finite
    spread = max(squares - finite * mean * mean, 0.0)
    std = math.sqrt(spread / (finite - 1)) if finite > 1 else 0.0
    return mean, std, low, high, math.sqrt(max(squares, 0.0)), nan, inf


_LEVELS = np.asarray(QUANTILE_LEVELS)


def distribution(sample: np.ndarray, low: float, high: float, module: str, bins: int = HIST_BINS):
    """Quantiles, histogram and fractions from the finite part of a sample.

    One sort serves everything: quantiles by linear interpolation between order
    statistics (numpy's and torch's default), and counts below each bin edge, zero and
    the saturation bounds by binary search. About 30 us for 2048 values.
    """
    finite = np.sort(sample[np.isfinite(sample)])
    n = finite.size
    if n == 0 or not (math.isfinite(low) and math.isfinite(high)):
        return {"sample": 0, "quantiles": (), "hist": (), "hist_lo": low, "hist_hi": high,
                "zero_frac": math.nan, "sat_frac": None}
    position = _LEVELS * (n - 1)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, n - 1)
    quantiles = finite[below] + (finite[above] - finite[below]) * (position - below)
    lo, hi = (low - 0.5, high + 0.5) if high <= low else (low, high)
    under = np.searchsorted(finite, np.linspace(lo, hi, bins + 1), side="left")
    under[0], under[-1] = 0, n  # the last bin is closed: it holds the maximum
    zeros = np.searchsorted(finite, 0.0, side="right") - np.searchsorted(finite, 0.0, side="left")
    return {
        "sample": int(n),
        "quantiles": tuple(quantiles.tolist()),
        "hist": tuple(np.diff(under).tolist()),
        "hist_lo": float(lo),
        "hist_hi": float(hi),
        "zero_frac": float(zeros / n),
        "sat_frac": saturated_fraction(finite, module),
    }


def saturated_fraction(ordered: np.ndarray, module: str) -> float | None:
    """Share of (sorted) outputs within SATURATION_MARGIN of a bound of the module's range."""
    bounds = SATURATING.get(module)
    if bounds is None:
        return None
    low, high = bounds
    margin = SATURATION_MARGIN * (high - low)
    pinned = np.searchsorted(ordered, low + margin, side="right") + \
        ordered.size - np.searchsorted(ordered, high - margin, side="left")
    return float(pinned / ordered.size)


def tensor_summary(*, layer: str, signal: Signal, module: str, numel: int, raw: np.ndarray,
                   counted: bool, sample: np.ndarray, units: int | None = None,
                   dead: float | None = None, window: int | None = None,
                   weight_norm: float | None = None, update_ratio: float | None = None) -> TensorSummary:
    mean, std, low, high, norm, nan, inf = moments(numel, raw, counted)
    return TensorSummary(
        layer=layer, signal=signal, module=module, numel=numel, nan=nan, inf=inf,
        mean=mean, std=std, min=low, max=high, norm=norm,
        **distribution(sample, low, high, module),
        units=units, dead_units=None if dead is None else int(dead), window=window,
        weight_norm=weight_norm, update_ratio=update_ratio,
    )


def update_ratio(before: np.ndarray, after: np.ndarray) -> float:
    """||w_after - w_before|| / ||w_before|| on matching samples (exact when whole)."""
    base = float(np.linalg.norm(before))
    if base == 0.0:
        return math.inf if np.any(after != before) else 0.0
    return float(np.linalg.norm(after - before) / base)


def input_stats(shape: tuple[int, ...], numel: int, raw: np.ndarray, counted: bool,
                channel_sums: np.ndarray, channel_squares: np.ndarray) -> InputStats:
    mean, std, low, high, _, nan, inf = moments(numel, raw, counted)
    per_channel = numel // shape[1] if len(shape) > 1 and shape[1] else 0
    channel_mean, channel_std = (), ()
    if channel_sums.size and per_channel:
        cm = channel_sums / per_channel
        var = np.maximum(channel_squares - per_channel * cm * cm, 0.0) / max(per_channel - 1, 1)
        channel_mean, channel_std = tuple(cm.tolist()), tuple(np.sqrt(var).tolist())
    return InputStats(shape=shape, mean=mean, std=std, min=low, max=high, nan=nan, inf=inf,
                      channel_mean=channel_mean, channel_std=channel_std)


def filter_grid(layer: str, filters: np.ndarray) -> Filters:
    """Tile normalised filters (n, c, h, w in [0, 1]) into one image with 1-pixel gutters.

    Each filter is scaled by its own min..max (as in the CS231n visualisations), so a
    filter's structure shows whatever its magnitude; smooth, varied filters mean a
    healthy first layer, noisy or identical ones mean too high a learning rate or too
    little training.
    """
    n, c, h, w = filters.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 1) + 1, cols * (w + 1) + 1, c), dtype=np.uint8)
    tiles = np.nan_to_num(filters, nan=0.0).clip(0.0, 1.0).transpose(0, 2, 3, 1)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = \
            np.round(tiles[i] * 255).astype(np.uint8)
    return Filters(layer=layer, count=n, height=grid.shape[0], width=grid.shape[1],
                   channels=c, pixels=grid.tobytes())
