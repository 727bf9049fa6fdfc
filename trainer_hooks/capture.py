"""One sampled step's statistics: collected on the device, packed into one tensor.

Hooks add reductions as they fire; at the end of the step :meth:`StepCapture.pack`
stacks every 0-d result and concatenates every vector into a single 1-d tensor, the one
device-to-host copy of the step (done later by the writer thread, so the training thread
never waits for it). The layout, a list of :class:`Item`, says which slice is what;
:func:`decode` turns the copied numbers back into schema payloads.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from monitor.events import InputStats, LayerStats, Signal, TensorSummary
from trainer_hooks import decode as host
from trainer_hooks.reduce import Reduced


@dataclass(frozen=True)
class Item:
    kind: str  # "tensor", "param_pre", "param_post", "input", "filters"
    meta: dict[str, Any]
    scalars: tuple[int, int]  # start, count in the scalar region
    vectors: tuple[tuple[int, int], ...]  # (offset, length) in the vector region


@dataclass
class StepCapture:
    step: int
    items: list[Item] = field(default_factory=list)
    scalars: list[torch.Tensor] = field(default_factory=list)
    vectors: list[torch.Tensor] = field(default_factory=list)
    vector_length: int = 0
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)  # backward hooks may run on autograd threads

    def add(self, kind: str, meta: dict[str, Any], scalars: list[torch.Tensor],
            vectors: list[torch.Tensor]) -> bool:
        with self.lock:
            if self.closed:  # a late hook (e.g. a backward after the step was packed)
                return False
            spans = []
            for v in vectors:
                spans.append((self.vector_length, v.numel()))  # numel is metadata: no sync
                self.vector_length += v.numel()
            self.items.append(Item(kind, meta, (len(self.scalars), len(scalars)), tuple(spans)))
            self.scalars.extend(scalars)
            self.vectors.extend(v.reshape(-1) for v in vectors)
            return True

    def add_reduced(self, kind: str, meta: dict[str, Any], reduced: Reduced,
                    scalars: list[torch.Tensor] = (), vectors: list[torch.Tensor] = ()) -> bool:
        """A reduced tensor (its moments, then ``scalars``; its sample, then ``vectors``)."""
        meta = {**meta, "numel": reduced.numel, "counted": reduced.counted or reduced.whole,
                "whole": reduced.whole}
        return self.add(kind, meta, reduced.moments + list(scalars), [reduced.sample, *vectors])

    def pack(self) -> torch.Tensor | None:
        """Everything as one 1-d float64 tensor (float32 on MPS), still on the device."""
        with self.lock:
            self.closed = True
            if not self.items:
                return None
            parts = ([torch.stack(self.scalars)] if self.scalars else []) + self.vectors
            # Several devices (model parallel) cannot share one cat; bring them to the first.
            device = parts[0].device
            parts = [p if p.device == device else p.to(device, non_blocking=True) for p in parts]
            dtype = torch.float32 if device.type == "mps" else torch.float64
            return torch.cat(parts).to(dtype)


@dataclass(frozen=True)
class Decoded:
    layer_stats: LayerStats | None
    input_stats: InputStats | None
    filters: Any  # monitor.events.Filters | None


def decode(values: np.ndarray, items: list[Item]) -> Decoded:
    """Turn one packed step back into payloads (runs on the writer thread)."""
    n_scalars = sum(item.scalars[1] for item in items)
    scalar_region, vector_region = values[:n_scalars], values[n_scalars:]
    summaries: list[TensorSummary] = []
    params_after: dict[str, tuple[np.ndarray, float]] = {}
    pending_params = []
    inputs = filters = None
    for item in items:
        start, count = item.scalars
        scalars = scalar_region[start:start + count]
        vectors = [vector_region[o:o + n] for o, n in item.vectors]
        meta = item.meta
        if item.kind == "tensor":
            units = meta.get("units")
            summaries.append(host.tensor_summary(
                layer=meta["layer"], signal=meta["signal"], module=meta["module"],
                numel=meta["numel"], raw=_raw(meta, scalars, vectors[0]), counted=meta["counted"],
                sample=vectors[0], units=units, dead=scalars[-1] if units else None, window=meta.get("window")))
        elif item.kind == "param_pre":
            pending_params.append((meta, scalars, vectors))
        elif item.kind == "param_post":
            params_after[meta["layer"]] = (vectors[0], float(scalars[0]))
        elif item.kind == "input":
            inputs = host.input_stats(meta["shape"], meta["numel"], _raw(meta, scalars, vectors[0]),
                                      meta["counted"],
                                      *(vectors[1:3] if len(vectors) == 3 else (np.empty(0), np.empty(0))))
        elif item.kind == "filters":
            filters = host.filter_grid(meta["layer"], vectors[0].reshape(meta["shape"]))
    for meta, scalars, (grad_sample, before) in pending_params:
        after, weight_norm = params_after.get(meta["layer"], (None, None))
        summaries.append(host.tensor_summary(
            layer=meta["layer"], signal=Signal.PARAM_GRAD, module=meta["module"],
            numel=meta["numel"], raw=_raw(meta, scalars, grad_sample), counted=meta["counted"],
            sample=grad_sample,
            weight_norm=weight_norm,
            update_ratio=None if after is None else host.update_ratio(before, after)))
    return Decoded(LayerStats(tuple(summaries)) if summaries else None, inputs, filters)


def _raw(meta: dict, scalars: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The device's moments, or for a tensor that travelled whole, the same computed here."""
    return host.raw_moments(sample) if meta.get("whole") else scalars
