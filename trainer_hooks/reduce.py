"""On-device reductions: a tensor becomes a few numbers and a fixed-size sample.

Nothing here reads a value back to the host on an accelerator: every result stays a
tensor on the tensor's device, to be packed with the rest of the step and copied in one
go (see :mod:`trainer_hooks.capture`). The work per tensor is four full passes on CPU
(sum, sum of squares, min, max; reading the sum of squares, free there, says whether a
NaN or Inf needs the masked passes) and eight sync-free kernels on an accelerator, plus a
gather of ``sample_size`` random elements; quantiles, the histogram and the zero and
saturation fractions are computed from that sample on the host, off the training thread.
Tensors no larger than the sample travel whole. A full 64-bin histogram of every tensor
costs far more and shows the same distribution.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: Elements gathered per tensor for quantiles and histogram. With 2048 draws the
#: empirical CDF is within 0.03 of the true one with 95 % confidence (DKW bound).
SAMPLE_SIZE = 2048

#: A unit is a channel of a conv feature map (N, C, ...) or a feature of a dense output
#: (N, F); for (N, T, F) sequences it is the last axis.
def unit_dim(ndim: int) -> int | None:
    if ndim < 2:
        return None
    return ndim - 1 if ndim == 3 else 1


@dataclass
class Reduced:
    """The on-device results for one tensor, in the order the host decodes them."""

    numel: int
    moments: list[torch.Tensor]  # 0-d: sum, sum of squares, min, max [, NaN count, non-finite count]
    counted: bool  # whether the counts are in ``moments`` (else there is no NaN or Inf)
    sample: torch.Tensor  # 1-d, at most SAMPLE_SIZE elements, may hold non-finite values
    whole: bool = False  # the sample is the whole tensor, and the host computes everything


def sample_indices(numel: int, size: int, device: torch.device, generator: torch.Generator | None):
    """Random positions (with replacement) drawn on the device, or None for 'all of it'."""
    if numel <= size:
        return None
    return torch.randint(0, numel, (size,), device=device, generator=generator)


class SamplePositions:
    """A sampled step's random positions, one draw per tensor size and device. Tensors of
    one size (a layer's output, the activation after it, their gradients; the hidden
    layers' weights) share a draw: each is still a uniform sample of its own tensor, while
    a draw of :data:`SAMPLE_SIZE` positions costs more than a small tensor's reductions
    (11 to 18 us on the CPU). Made afresh for each sampled step."""

    def __init__(self, size: int, generator):
        self.size = size
        self.generator = generator  # device -> torch.Generator (babysit's own streams)
        self.drawn: dict[tuple[int, torch.device], torch.Tensor] = {}

    def __call__(self, numel: int, device: torch.device) -> torch.Tensor | None:
        """Positions for a tensor of ``numel`` elements on ``device`` (None: it travels whole)."""
        if numel <= self.size:
            return None
        key = (numel, device)
        drawn = self.drawn.get(key)
        if drawn is None:
            drawn = self.drawn[key] = sample_indices(numel, self.size, device, self.generator(device))
        return drawn


def reduce_tensor(x: torch.Tensor, *, sample_size: int = SAMPLE_SIZE,
                  generator: torch.Generator | None = None,
                  indices: torch.Tensor | None = None,
                  maxima: torch.Tensor | None = None,
                  precise: bool = False,
                  sums: tuple[torch.Tensor, torch.Tensor] | None = None,
                  squares: float | None = None) -> Reduced | None:
    """Moments over the finite elements, exact NaN/Inf counts, and a uniform sample.

    Returns None for empty or non-floating tensors. ``indices`` reuses positions drawn
    by the caller (a parameter's weights before and after the step must match).
    ``maxima``, per-unit maxima the caller reduced already (an activation's, for its
    dead units), give the tensor's maximum without another pass when all is finite.
    ``precise`` accumulates in float64 (several times slower): for the model input,
    whose mean may sit far above its spread (raw pixels, years), where the variance
    from float32 sums of squares cancels. ``sums``, the sum and sum of squares the
    caller has already (the input's, from its per-channel sums), save two passes;
    ``squares``, the sum of squares alone as a float (a gradient's, from the vital signs), one.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return None
    flat = x.detach().reshape(-1)
    numel = flat.numel()
    if numel <= sample_size and indices is None:
        # Small tensors (biases, small layers) travel whole: no reduction kernels at all.
        # A copy, not a view: an in-place op later in the step (ReLU(inplace=True)) would
        # otherwise rewrite the values before the step's single packed copy reads them.
        return Reduced(numel=numel, moments=[], counted=False, sample=flat.clone(), whole=True)
    accumulate = torch.float64 if precise or flat.dtype == torch.float64 else torch.float32
    moments = None
    if flat.device.type == "cpu":
        # On CPU reading a value costs nothing: the masked passes below run only when
        # the sum of squares (NaN or Inf as soon as one element is) says so.
        if sums is not None:
            total, squares = sums
        elif squares is not None and not precise and flat.dtype == accumulate:
            total, squares = flat.sum(), torch.tensor(squares, dtype=accumulate)
        elif precise:
            total, squares = precise_sums(flat)
        else:
            total = flat.sum(dtype=accumulate)
            wide = flat if flat.dtype == accumulate else flat.to(accumulate)  # half types
            squares = torch.dot(wide, wide)
        if math.isfinite(float(squares)):
            if maxima is None:
                moments = [total, squares, *cpu_bounds(flat)]
            else:  # the maximum from the units' maxima, reduced already
                moments = [total, squares, flat.amin(), maxima.amax()]
    # On an accelerator we never branch on a value (that would sync), so we always count.
    counted = moments is None
    if counted:
        moments = _masked_moments(flat, accumulate)
    if indices is None:
        indices = sample_indices(numel, sample_size, flat.device, generator)
    # index_select, not advanced indexing: the same gather without the general machinery.
    sample = flat if indices is None else flat.index_select(0, indices)
    return Reduced(numel=numel, moments=moments, counted=counted, sample=sample)


#: Elements below which ``torch.aminmax`` beats ``amin`` then ``amax`` on the CPU, with
#: more than one thread: one parallel dispatch instead of two. Above, its kernel is the
#: slower pass while the tensor stays in cache for the second one (torch 2.13, float32, 2
#: threads: 5.8 vs 8.1 us at 32k elements, 11.6 vs 12.9 at 128k, 79 vs 56 at 1M).
AMINMAX_BELOW = 1 << 17
#: The last-level cache assumed where it cannot be read (:func:`cache_bytes`).
FALLBACK_CACHE_BYTES = 8 << 20


@functools.lru_cache(maxsize=1)
def cache_bytes() -> int:
    """The CPU's largest cache in bytes (Linux sysfs), else :data:`FALLBACK_CACHE_BYTES`."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = entry.read_text().strip().upper()
            sizes.append(int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1:], 0))
        except (OSError, ValueError):
            continue
    return max(sizes, default=FALLBACK_CACHE_BYTES)


def cpu_bounds(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The least and greatest element of a CPU tensor by the faster of torch's two ways:
    ``amin`` then ``amax`` while the tensor fits in half the last-level cache (the second
    pass reads it from there), one ``aminmax`` pass for small tensors on several threads
    (one dispatch) and for tensors beyond the cache (a pass over memory is the cost: 1.9 vs
    2.6 ms at 25M elements, 2 threads, a 32 MiB cache; on one thread 3.7 vs 5.2)."""
    numel = flat.numel()
    if (numel < AMINMAX_BELOW and torch.get_num_threads() > 1) or numel * flat.element_size() > cache_bytes() // 2:
        return torch.aminmax(flat)
    return flat.amin(), flat.amax()


#: Elements converted to float64 at a time by :func:`precise_sums` (a 2 MiB copy).
PRECISE_CHUNK = 1 << 18


def precise_sums(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and sum of squares of a CPU tensor, accumulated in float64, by chunks converted
    to float64 (a bounded copy, never the whole tensor's): a float32 tensor summed with
    ``dtype=torch.float64`` or normed in float64 takes torch's unvectorised path (20 ms for
    4M elements, 1.2 ms this way; 1.5x faster at 50k). The same sums to float64 rounding."""
    return float64_sums(flat.split(PRECISE_CHUNK))


def float64_sums(parts, dims: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and sum of squares over the ``parts`` of one tensor, each converted to float64 in
    turn and reduced over ``dims`` (None: over all of it), the parts' results added."""
    total = squares = None
    for part in parts:
        wide = part.double()
        if dims is None:
            part_total, part_squares = wide.sum(), torch.dot(wide, wide)
        else:
            part_total, part_squares = wide.sum(dim=dims), (wide * wide).sum(dim=dims)
        total, squares = (part_total, part_squares) if total is None else (total + part_total, squares + part_squares)
    return total, squares


def _masked_moments(flat: torch.Tensor, accumulate: torch.dtype) -> list[torch.Tensor]:
    """Moments over the finite elements, the NaN count and the non-finite count, in
    eight kernels and without a branch (an accelerator's launches, not its arithmetic,
    are the cost of a sampled step).

    Non-finite elements become zeros, which leaves the sums over the finite elements
    exact. The min and max of the zero-filled tensor are the finite ones unless the
    finite values all lie on one side of zero; the host then takes that bound from the
    sample (:func:`trainer_hooks.decode.finite_bounds`).
    """
    zeroed = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    if accumulate == torch.float64 and flat.dtype != torch.float64:
        total = zeroed.sum(dtype=torch.float64)
        squares = torch.linalg.vector_norm(zeroed, dtype=torch.float64) ** 2  # no float64 copy
    else:
        wide = zeroed if zeroed.dtype == accumulate else zeroed.to(accumulate)
        total, squares = wide.sum(), torch.dot(wide, wide)
    if flat.device.type == "cuda":
        low, high = torch.aminmax(zeroed)  # one kernel there
    else:
        low, high = zeroed.amin(), zeroed.amax()
    return [total, squares, low, high, torch.isnan(flat).sum(), (zeroed != flat).sum()]


def unit_maxima(x: torch.Tensor) -> torch.Tensor | None:
    """Per unit (channel or feature): its largest value in this batch (on the device).

    A unit is active when its maximum is positive; the maxima also give the tensor's
    maximum for free.
    """
    dim = unit_dim(x.dim())
    if dim is None or not x.is_floating_point() or x.numel() == 0:
        return None
    if dim == 1 and x.dim() > 2:
        # (N, C, ...): over the trailing dims first, then the batch; one reduction over
        # dims (0, 2, 3) takes 1.8x longer (419 vs 236 us for a 32x64x56x56 map, 2 threads).
        return x.detach().amax(dim=tuple(range(2, x.dim()))).amax(dim=0)
    others = tuple(d for d in range(x.dim()) if d != dim)
    return x.detach().amax(dim=others)


def active_units(x: torch.Tensor) -> torch.Tensor | None:
    """Per unit: was it positive anywhere in this batch? (bool, on the device)."""
    maxima = unit_maxima(x)
    return None if maxima is None else maxima > 0


#: Steps back from the newest sampled batch beyond which a batch no longer counts in a
#: unit window under automatic sampling: a unit alive a few dozen steps ago says little of
#: whether it is dead now (a layer dying under a learning rate too high goes from half to
#: two thirds dead in 30 steps), and the verdict should rest on the evidence ``every=1``
#: would have, the window's batches taken one after another (twice the window: the
#: detector's closer look samples consecutive steps, with the odd gap).
DEAD_SPAN_STEPS = 16


def dead_span(window: int, every: int | None) -> int:
    """The span of a unit window: :data:`DEAD_SPAN_STEPS` under automatic sampling (which
    samples closely when a layer looks dead); with a fixed ``every`` the window's batches
    are necessarily ``every`` steps apart, so the span covers them all."""
    return DEAD_SPAN_STEPS if every is None else max(DEAD_SPAN_STEPS, window * every)


class UnitWindow:
    """Which units were active in any of the last ``window`` sampled batches of the last
    :data:`DEAD_SPAN_STEPS` steps.

    A ReLU unit that never fires on any input of several batches receives no gradient
    and will not recover: that is a dead unit. One batch is not enough evidence (a rare
    feature may simply be absent), hence the window; and only recent batches are
    evidence of the present, hence the span: older rows are cleared, so ``filled`` falls
    back when sampling is sparse, and the dead-unit detector asks for a closer look (the
    next steps sampled one after another) before it judges a layer on a full window.
    A ring of boolean rows, kept on an accelerator (clearing one is a fill, no sync; the
    count of units active in the window is a 0-d tensor packed with the other statistics)
    and on the host for a CPU model (the count an int). Dead = units - active.
    """

    def __init__(self, units: int, window: int, device: torch.device, span: int = DEAD_SPAN_STEPS):
        # On the CPU the ring is a numpy array: reading the batch's active units costs
        # nothing there, and numpy's row write and count take a tenth of torch's calls.
        self.host = device.type == "cpu"
        self.device = device
        self.ring = np.zeros((window, units), dtype=bool) if self.host else \
            torch.zeros((window, units), dtype=torch.bool, device=device)
        self.steps = [None] * window  # the step of each row's batch (None: empty)
        self.span = span
        self.position = 0
        self.filled = 0

    @property
    def window(self) -> int:
        return self.ring.shape[0]

    def fits(self, active: torch.Tensor) -> bool:
        """Whether ``active`` (one batch's units) belongs in this ring: the same units, on its device."""
        return self.ring.shape[1] == active.shape[0] and active.device == self.device

    def add(self, active: torch.Tensor, step: int = 0) -> torch.Tensor | int:
        """Add one batch's active units; the count of units active in the window (an int on
        the CPU, a 0-d tensor on an accelerator)."""
        slot = self.position % self.window
        self.ring[slot] = active.numpy() if self.host else active
        self.steps[slot] = step
        self.position += 1
        for i, taken in enumerate(self.steps):
            if taken is not None and taken < step - self.span:
                self.ring[i] = False
                self.steps[i] = None
        self.filled = sum(taken is not None for taken in self.steps)
        if self.host:
            return int(np.count_nonzero(self.ring.any(axis=0)))
        return self.ring.any(dim=0).sum()


def channel_moments(x: torch.Tensor, max_channels: int) -> list[torch.Tensor]:
    """Per-channel sum and sum of squares of a model input (N, C, ...), in float64.

    Float64 because raw inputs (pixels in 0..255) have a mean far above their spread,
    where sum-of-squares arithmetic in float32 would cancel.
    """
    if x.dim() < 2 or x.shape[1] > max_channels:
        return []
    dims = tuple(d for d in range(x.dim()) if d != 1)
    xd = x.detach()
    if xd.numel() > CHANNEL_CHUNK and xd.shape[0] > 1:
        # A large batch by slices converted to float64: the float64-accumulating reductions
        # along several dims below take torch's slow path (23.5 ms for a 32x3x224x224 batch,
        # 3.7 ms this way; below about half a million elements they are the faster).
        rows = max(1, CHANNEL_CHUNK // max(1, xd[0].numel()))
        return list(float64_sums(xd.split(rows, dim=0), dims))
    # Squares in the input's precision, summed in float64: rounding each product to
    # float32 is unbiased and averages out (relative error ~1e-7 / sqrt(n)), while the
    # float64 sum keeps the cancellation in var = E[x^2] - mean^2 harmless; half the
    # time of a float64 norm along dims, a tenth of squaring a float64 copy.
    wide = xd if xd.dtype in (torch.float32, torch.float64) else xd.float()
    return [xd.sum(dim=dims, dtype=torch.float64), (wide * wide).sum(dim=dims, dtype=torch.float64)]


#: Elements of a model input above which :func:`channel_moments` reduces it by slices of
#: the batch converted to float64 (a 4 MiB copy at a time).
CHANNEL_CHUNK = 1 << 19


#: A unit passes "almost no gradient" where its activation's slope is below this share of
#: the activation's steepest slope: the bar tanh and sigmoid meet at the saturation margin
#: (trainer_hooks.decode.SATURATION_MARGIN: tanh at |y| = 0.98 has slope 0.04, sigmoid at
#: 0.99 has 0.0099 of its 0.25), so one word, "saturated", means the same for every activation.
FLAT_SLOPE_SHARE = 0.04
_tail_starts: dict[str, float | None] = {}


def flat_tail_start(module: torch.nn.Module) -> float | None:
    """The input below which ``module`` (an elementwise activation) stays flat: every
    slope to the left is under :data:`FLAT_SLOPE_SHARE` of its steepest. Found numerically
    on a grid, once per configuration (``repr``: GELU's tanh form, ELU's alpha and
    Softplus's beta move it), so any smooth activation is judged by one rule. None when
    the far left is not flat (a leaky unit always passes some gradient)."""
    key = f"{type(module).__module__}.{type(module).__qualname__}:{module!r}"
    if key not in _tail_starts:
        _tail_starts[key] = _find_tail_start(module)
    return _tail_starts[key]


def _find_tail_start(module: torch.nn.Module) -> float | None:
    grid = torch.linspace(-40.0, 40.0, 16001, dtype=torch.float64)  # steps of 0.005; once per configuration
    x = grid.clone().requires_grad_(True)
    with torch.enable_grad():
        y = module.forward(x)  # not module(x): no hook sees the grid (ours would record it as a call)
        (slope,) = torch.autograd.grad(y.sum(), x)
    slope = slope.abs()
    flat = slope < FLAT_SLOPE_SHARE * slope.max()
    if not bool(flat[0]):
        return None
    steep = torch.nonzero(~flat)
    return None if steep.numel() == 0 else float(grid[int(steep[0])])
