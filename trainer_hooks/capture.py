"""One sampled step's statistics: collected on the device, packed into one tensor.

Hooks add reductions as they fire; at the end of the step :meth:`StepCapture.pack`
joins every result (0-d moments and counts, 1-d samples) into a single 1-d tensor, the
one device-to-host copy of the step (done later by the writer thread, so the training
thread never waits for it). Pieces are joined per dtype first (one stack or one cat
each, the kernels' fast path) and the groups converted once: a single cat of mixed
dtypes would copy piece by piece. On the CPU the pieces are host memory already: the 0-d
ones are read as numbers and the 1-d ones joined per dtype (:func:`_host_join`). They are
joined on the training thread all the same, not handed to the writer as they are: a
sampled step's hundred small tensors freed on another thread fragment the heap (the
trainer's peak memory rose by 16 MiB). The layout, a list of :class:`Item` plus each
piece's span, says which slice is what; :func:`decode` turns the numbers back into
schema payloads.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from monitor.events import InputStats, LayerStats, Signal
from trainer_hooks import decode as host
from trainer_hooks.reduce import Reduced


class Item(NamedTuple):  # a tuple: made per tensor on the training thread, it must be cheap
    kind: str  # "tensor", "param_pre", "param_post", "input", "ids", "filters"
    meta: dict[str, Any]
    scalars: range  # indices of its 0-d pieces
    vectors: range  # indices of its 1-d pieces


@dataclass(frozen=True)
class Packed:
    values: torch.Tensor | np.ndarray  # 1-d float64 (float32 on MPS), on the device; on the CPU a numpy array
    items: list[Item]
    spans: list[tuple[int, int]]  # (offset, length) of each piece in ``values``

    def host_values(self) -> np.ndarray:
        """Every number of the step as one array on the host (from an accelerator, the
        step's one copy)."""
        return self.values if isinstance(self.values, np.ndarray) else self.values.cpu().numpy()


#: torch dtypes that numpy reads as they are (bfloat16, for one, it does not).
_NUMPY_DTYPES = frozenset({torch.float16, torch.float32, torch.float64, torch.int64, torch.int32, torch.bool,
                           torch.uint8, torch.int8, torch.int16})


@dataclass
class StepCapture:
    step: int
    items: list[Item] = field(default_factory=list)
    pieces: list[torch.Tensor] = field(default_factory=list)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # backward hooks may run on autograd threads

    def add(self, kind: str, meta: dict[str, Any], scalars: list[torch.Tensor],
            vectors: list[torch.Tensor]) -> bool:
        with self.lock:
            if self.closed:  # a late hook (e.g. a backward after the step was packed)
                return False
            pieces = self.pieces
            first = len(pieces)
            pieces += scalars
            middle = len(pieces)
            pieces += [v if v.dim() == 1 else v.reshape(-1) for v in vectors]
            self.items.append(Item(kind, meta, range(first, middle), range(middle, len(pieces))))
            return True

    def add_reduced(self, kind: str, meta: dict[str, Any], reduced: Reduced,
                    scalars: list[torch.Tensor] = (), vectors: list[torch.Tensor] = ()) -> bool:
        """A reduced tensor (its moments, then ``scalars``; its sample, then ``vectors``).
        ``meta`` is a fresh dict of the caller's, completed here in place."""
        meta["numel"], meta["counted"] = reduced.numel, reduced.counted or reduced.whole
        meta["whole"], meta["wide"] = reduced.whole, reduced.sample.dtype == torch.float64
        return self.add(kind, meta, [*reduced.moments, *scalars], [reduced.sample, *vectors])

    def pack(self, join: bool | None = None) -> Packed | None:
        """Everything as one 1-d tensor on the device, with its layout; on the CPU (unless
        ``join``), as one numpy array."""
        with self.lock:
            self.closed = True
            if not self.items:
                return None
            pieces = self.pieces
            if not join and all(not isinstance(piece, torch.Tensor) or piece.is_cpu for piece in pieces):
                values, spans = _host_join(pieces)
                return Packed(values, self.items, spans)
            device = next(piece.device for piece in pieces if isinstance(piece, torch.Tensor))
            groups: dict[tuple, list[int]] = {}
            for i, piece in enumerate(pieces):
                if not isinstance(piece, torch.Tensor):  # a count read on the host (a CPU layer's, model parallel)
                    piece = pieces[i] = torch.tensor(float(piece), dtype=torch.float64, device=device)
                key = (piece.device, piece.dtype, piece.dim())
                members = groups.get(key)
                if members is None:
                    groups[key] = [i]
                else:
                    members.append(i)
            dtype = torch.float32 if device.type == "mps" else torch.float64
            parts, spans, offset = [], [None] * len(pieces), 0
            for (_, _, ndim), members in groups.items():
                tensors = [pieces[i] for i in members]
                joined = torch.cat(tensors) if ndim else torch.stack(tensors)
                # Several devices (model parallel) cannot share one cat; bring them to the first.
                parts.append(joined.to(device, dtype, non_blocking=True))
                for i, tensor in zip(members, tensors):
                    length = tensor.numel() if ndim else 1  # metadata: no sync
                    spans[i] = (offset, length)
                    offset += length
            values = parts[0] if len(parts) == 1 else torch.cat(parts)
            return Packed(values, self.items, spans)


def _host_join(pieces: list) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """CPU pieces as one float64 array and each one's span: the 0-d ones read as numbers
    (a read costs nothing on the host, and a float a tenth of a numpy view), the 1-d ones
    joined by one ``torch.cat`` per dtype and converted once, instead of a view of each
    (a sampled step of the reference MLP has some 150 pieces)."""
    spans: list[tuple[int, int]] = [(0, 0)] * len(pieces)
    numbers: list[float] = []
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, piece in enumerate(pieces):
        if isinstance(piece, torch.Tensor) and piece.dim():
            by_dtype.setdefault(piece.dtype, []).append(i)
        else:
            spans[i] = (len(numbers), 1)
            numbers.append(float(piece))
    parts = [np.array(numbers, dtype=np.float64)]
    offset = len(numbers)
    for dtype, members in by_dtype.items():
        tensors = [pieces[i] for i in members]
        joined = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
        parts.append((joined if dtype in _NUMPY_DTYPES else joined.double()).numpy())
        for i, tensor in zip(members, tensors):
            spans[i] = (offset, tensor.numel())
            offset += tensor.numel()
    return np.concatenate(parts, dtype=np.float64), spans


@dataclass(frozen=True)
class Decoded:
    layer_stats: LayerStats | None
    input_stats: InputStats | None
    filters: Any  # monitor.events.Filters | None


def decode(packed: Packed, values: np.ndarray | None = None) -> Decoded:
    """Turn one packed step back into payloads (runs on the writer thread, which makes
    the step's one device-to-host copy here unless ``values`` were copied already).

    NaN and ±Inf are data here (Inf - Inf in a variance is NaN, as it should be), so
    numpy's floating-point warnings are silenced rather than printed into the user's
    training log.
    """
    if values is None:
        values = packed.host_values()
    with np.errstate(all="ignore"):
        return _decode(packed, values)


def _decode(packed: Packed, values: np.ndarray) -> Decoded:
    pieces = [values[o:o + n] for o, n in packed.spans]
    items = packed.items
    specs: list[dict] = []
    params_after: dict[str, tuple[np.ndarray, float]] = {}
    pending_params = []
    inputs = filters = None
    for item in items:
        scalars = np.array([pieces[i][0] for i in item.scalars])
        vectors = [pieces[i] for i in item.vectors]
        meta = item.meta
        if item.kind == "tensor":
            units = meta.get("units")
            specs.append(dict(
                layer=meta["layer"], signal=meta["signal"], module=meta["module"], numel=meta["numel"],
                raw=None if meta["whole"] else _raw(meta, scalars, vectors[0]), counted=meta["counted"],
                single=not meta["whole"], sample=vectors[0], wide=meta["wide"],
                units=units, dead_units=units - int(scalars[-1]) if units else None, window=meta.get("window"),
                tail_frac=float(scalars[-1]) / meta["numel"] if meta.get("tail") else None))
        elif item.kind == "param_pre":
            pending_params.append((meta, scalars, vectors))
        elif item.kind == "param_post":
            params_after[meta["layer"]] = (vectors[0], meta["norm"] if "norm" in meta else float(scalars[0]))
        elif item.kind == "input":
            inputs = host.input_stats(meta["shape"], meta["numel"], _raw(meta, scalars, vectors[0]),
                                      meta["counted"],
                                      *(vectors[1:3] if len(vectors) == 3 else (np.empty(0), np.empty(0))))
        elif item.kind == "ids" and inputs is None:  # a float model input comes first and stays
            inputs = host.id_stats(meta, scalars)
        elif item.kind == "filters":
            filters = host.filter_grid(meta["layer"], vectors[0].reshape(meta["shape"]))
    for meta, scalars, (grad_sample, before) in pending_params:
        after, weight_norm = params_after.get(meta["layer"], (None, None))
        specs.append(dict(
            layer=meta["layer"], signal=Signal.PARAM_GRAD, module=meta["module"], numel=meta["numel"],
            raw=None if meta["whole"] else _raw(meta, scalars, grad_sample), counted=meta["counted"],
            single=not meta["whole"], sample=grad_sample, wide=meta["wide"],
            weight_norm=weight_norm,
            update_ratio=None if after is None else host.update_ratio(before, after)))
    summaries = host.tensor_summaries(specs)
    return Decoded(LayerStats(tuple(summaries)) if summaries else None, inputs, filters)


def _raw(meta: dict, scalars: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The device's moments, or for a tensor that travelled whole, the same computed here."""
    if meta.get("whole"):
        return host.raw_moments(sample)
    if meta["counted"]:
        return host.finite_bounds(scalars, sample)
    return scalars
