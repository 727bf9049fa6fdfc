"""Host side of the statistics: raw numbers from the device become schema payloads.

Runs on the writer thread, in numpy, so the training thread pays nothing for sorting,
histograms or building dataclasses. Everything here is a pure function of its inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from monitor.events import QUANTILE_LEVELS, Filters, InputStats, TensorSummary

#: Bins of the per-tensor histogram, spanning the tensor's exact min..max
#: (TensorBoard uses 30; a power of two keeps the page's bar widths even).
HIST_BINS = 32
#: A tanh/sigmoid output within this share of its range from a bound is saturated:
#: its local gradient is below about 2 % of the maximum, so it barely learns.
SATURATION_MARGIN = 0.01
#: mean^2 / variance above which a std from float32 sums is replaced by the sample's.
CANCELLATION_LIMIT = 1e4
#: mean^2 / variance (from the sums) above which the sample is asked: float32 sums of a
#: tensor whose true ratio passes CANCELLATION_LIMIT cannot look below this.
SUSPECT_LIMIT = 100.0
#: Output range per saturating module type.
SATURATING = {
    "Tanh": (-1.0, 1.0), "Hardtanh": (-1.0, 1.0), "Softsign": (-1.0, 1.0),
    "Sigmoid": (0.0, 1.0), "Hardsigmoid": (0.0, 1.0),
}


def raw_moments(values: np.ndarray) -> np.ndarray:
    """What the device computes (sum, sum of squares, min, max over the finite elements,
    the NaN count and the non-finite count), here on the host, exactly."""
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (math.nan, math.nan)
    return np.array([finite.sum(), np.dot(finite, finite), low, high,
                     np.count_nonzero(np.isnan(values)), values.size - finite.size])


def finite_bounds(raw: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Device moments of a tensor whose non-finite elements were zero-filled: where
    there were any, a bound at exactly zero may be the filling, not a value, and is
    taken from the sample's finite values instead (a bound the sample may miss by a
    little; the sums stay exact)."""
    if raw[5] == 0 or (raw[2] != 0.0 and raw[3] != 0.0):
        return raw
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return raw
    fixed = raw.copy()
    if raw[2] == 0.0:  # every finite value is >= 0: the sample's least is the best estimate
        fixed[2] = finite.min()
    if raw[3] == 0.0:
        fixed[3] = finite.max()
    return fixed


def moments(numel: int, raw: np.ndarray, counted: bool):
    """(mean, std, min, max, norm, nan, inf) over the finite elements.

    ``raw`` holds sum, sum of squares, min, max and, when ``counted``, the NaN count
    and the non-finite (NaN or ±Inf) count. ``std`` is the unbiased estimate, as
    ``torch.std`` computes it.
    """
    total, squares, low, high = (float(v) for v in raw[:4])
    nan, inf = (int(raw[4]), int(raw[5]) - int(raw[4])) if counted else (0, 0)
    finite = numel - nan - inf
    if finite == 0:
        return math.nan, math.nan, math.nan, math.nan, 0.0, nan, inf
    mean = total / finite
    spread = max(squares - finite * mean * mean, 0.0)
    std = math.sqrt(spread / (finite - 1)) if finite > 1 else 0.0
    return mean, std, low, high, math.sqrt(max(squares, 0.0)), nan, inf


_LEVELS = np.asarray(QUANTILE_LEVELS)


@dataclass(frozen=True)
class SortedSamples:
    """A step's samples (one per tensor, up to SAMPLE_SIZE values each) as one padded
    matrix: each row holds its finite values in order, then NaN (non-finite values and
    padding). One row-wise sort serves all the host statistics of the step. Batching is
    what keeps the writer thread's share of a core small: per-tensor numpy calls cost
    more in call overhead than in arithmetic."""

    rows: np.ndarray
    counts: np.ndarray  # finite values per row

    @classmethod
    def of(cls, samples: list[np.ndarray], wide: bool = True) -> "SortedSamples":
        """``wide``: some sample holds float64 values; else the rows are float32, which
        holds every value exactly and sorts twice as fast."""
        width = max((s.size for s in samples), default=0)
        rows = np.full((len(samples), width), np.nan, dtype=np.float64 if wide else np.float32)
        for i, s in enumerate(samples):
            rows[i, :s.size] = s
        sizes = np.array([s.size for s in samples], dtype=np.int64)
        padding = width - sizes
        missing = np.isnan(rows)
        # Per-row counts only when there is something to count (a healthy step has none).
        nan = np.count_nonzero(missing, axis=1) - padding if missing.sum() > padding.sum() else np.zeros_like(sizes)
        infinite = np.isinf(rows)
        inf = np.zeros_like(sizes)
        if infinite.any():
            inf = np.count_nonzero(infinite, axis=1)
            rows[infinite] = np.nan
        rows.sort(axis=1)  # NaN sorts last
        return cls(rows, sizes - nan - inf)


def whole_moments(samples: list[np.ndarray]) -> np.ndarray:
    """For tensors that travelled whole, what :func:`raw_moments` gives for each (one row
    each), computed for all at once: the values of one length are stacked and, when all
    are finite (a healthy step), reduced together in float64; a tensor holding NaN or Inf
    takes :func:`raw_moments`. A deep stack of small layers sends hundreds of them per step."""
    out = np.empty((len(samples), 6), dtype=np.float64)
    by_length: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        by_length.setdefault(sample.size, []).append(i)
    for length, members in by_length.items():
        block = np.stack([samples[i] for i in members]).astype(np.float64, copy=False)
        if length and np.isfinite(block).all():
            out[members] = np.stack([block.sum(axis=1), np.einsum("ij,ij->i", block, block), block.min(axis=1),
                                     block.max(axis=1), np.zeros(len(members)), np.zeros(len(members))], axis=1)
        else:
            out[members] = [raw_moments(samples[i]) for i in members]
    return out


def distributions(batch: SortedSamples, lows: list[float], highs: list[float],
                  modules: list[str], bins: int = HIST_BINS) -> list[dict]:
    """Quantiles, histogram and fractions of each sample's finite part, all at once.

    ``lows`` and ``highs`` are the exact extremes of each whole tensor (from the device),
    which the histogram spans. Quantiles by linear interpolation between order statistics
    (numpy's and torch's default), gathered for all rows at once; the counts below each
    bin edge by binary search in each sorted row.
    """
    rows, counts = batch.rows, batch.counts
    if not len(rows):
        return []
    last = np.maximum(counts - 1, 0)[:, None]
    position = _LEVELS[None, :] * last
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, last)
    lower = np.take_along_axis(rows, below, axis=1).astype(np.float64)
    upper = np.take_along_axis(rows, above, axis=1).astype(np.float64)
    quantiles = (lower + (upper - lower) * (position - below)).tolist()
    zeros = np.count_nonzero(rows == 0.0, axis=1).tolist()

    low, high = np.asarray(lows, dtype=np.float64), np.asarray(highs, dtype=np.float64)
    usable = (counts > 0) & np.isfinite(low) & np.isfinite(high)
    constant = high <= low  # one bin around the value
    low, high = np.where(constant, low - 0.5, low), np.where(constant, high + 0.5, high)
    with np.errstate(invalid="ignore"):  # rows that are not usable get NaN edges, never read
        edges = low[:, None] + (high - low)[:, None] * (np.arange(bins + 1) / bins)[None, :]
    under = np.zeros((len(rows), bins + 1), dtype=np.int64)
    for i in np.flatnonzero(usable):
        under[i, 1:-1] = np.searchsorted(rows[i, :counts[i]], edges[i, 1:-1], side="left")
        under[i, -1] = counts[i]  # the last bin is closed: it holds the maximum
    hists = np.diff(under, axis=1).tolist()

    out = []
    for i, (ok, n, lo, hi, module) in enumerate(zip(usable.tolist(), counts.tolist(), low.tolist(),
                                                    high.tolist(), modules)):
        if not ok:
            out.append({"sample": 0, "quantiles": (), "hist": (), "hist_lo": float(lows[i]),
                        "hist_hi": float(highs[i]), "zero_frac": math.nan, "sat_frac": None})
            continue
        out.append({"sample": n, "quantiles": tuple(quantiles[i]), "hist": tuple(hists[i]),
                    "hist_lo": lo, "hist_hi": hi, "zero_frac": zeros[i] / n,
                    "sat_frac": saturated_fraction(rows[i, :n], module)})
    return out


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


def tensor_summaries(specs: list[dict]) -> list[TensorSummary]:
    """Summaries of one step's tensors. Each spec holds ``raw`` (the device's moments;
    None for a tensor that travelled whole, whose moments are computed here), ``counted``,
    ``single`` (the moments were accumulated in float32), ``sample`` and the
    :class:`TensorSummary` fields known before the host work (layer, signal, module,
    numel and the optional unit and update fields).

    The summaries are built unchecked: every value here is computed by this module with
    the schema's types (a test holds that they validate).
    """
    if not specs:
        return []
    batch = SortedSamples.of([spec["sample"] for spec in specs], wide=any(spec["wide"] for spec in specs))
    which = [i for i, spec in enumerate(specs) if spec["raw"] is None]
    whole = dict(zip(which, whole_moments([specs[i]["sample"] for i in which]))) if which else {}
    rest = [{k: v for k, v in spec.items() if k not in ("raw", "counted", "single", "sample", "wide", "tail_frac")}
            for spec in specs]
    stats = [_guarded(moments(spec["numel"], whole[i], True) if spec["raw"] is None
                      else moments(spec["numel"], spec["raw"], spec["counted"]), spec)
             for i, spec in enumerate(specs)]
    shapes = distributions(batch, [m[2] for m in stats], [m[3] for m in stats], [spec["module"] for spec in specs])
    for spec, shape in zip(specs, shapes):
        if spec.get("tail_frac") is not None:  # a smooth activation: the exact share of inputs in its flat tail
            shape["sat_frac"] = spec["tail_frac"]
    return [
        TensorSummary.unchecked(**fields, nan=nan, inf=inf, mean=mean, std=std, min=low, max=high, norm=norm,
                                **shape)
        for fields, (mean, std, low, high, norm, nan, inf), shape in zip(rest, stats, shapes)
    ]


def _guarded(stats: tuple, spec: dict) -> tuple:
    """Replace a float32 std that cancellation has made meaningless by the sample's.

    The variance from sums, E[x^2] - mean^2, loses to float32 rounding about
    mean^2 / var times the relative error of E[x^2] (1e-7 to 1e-3: it grows with the
    tensor and with how sequentially the device summed it, e.g. on one CPU thread):
    beyond :data:`CANCELLATION_LIMIT` the std would be off by more than about 1 %, while
    the sample's two-pass std is within a few % whatever the mean. The ratio is judged on
    the sample's variance, as the one from sums is the number in doubt (a 1e4-mean,
    unit-std tensor summed on one thread gives a std of 190); the cheap test on the sums
    only picks the tensors worth that look (:data:`SUSPECT_LIMIT`).
    """
    mean, std, *rest = stats
    if spec.get("single") and math.isfinite(mean) and not SUSPECT_LIMIT * std * std >= mean * mean:
        sample = spec["sample"][np.isfinite(spec["sample"])]
        if sample.size > 1:
            sample_std = float(np.std(sample, ddof=1))
            if not CANCELLATION_LIMIT * sample_std * sample_std >= mean * mean:
                std = sample_std
    return (mean, std, *rest)


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


def id_stats(meta: dict, scalars: np.ndarray) -> InputStats:
    """Integer input from :func:`trainer_hooks.probe.record_ids`'s scalars: least and
    greatest id, distinct ids, mean, std, then (with a padding id) its count."""
    low, high, distinct, mean, std = (float(v) for v in scalars[:5])
    pad_id = meta["pad_id"]
    padding = float(scalars[5]) / meta["numel"] if pad_id is not None else None
    return InputStats(shape=meta["shape"], mean=mean, std=std, min=low, max=high, nan=0, inf=0, integer=True,
                      distinct=int(distinct), vocab=meta["vocab"], padding=padding, pad_id=pad_id)


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
