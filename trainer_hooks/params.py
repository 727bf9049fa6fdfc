"""Parameters' gradients and weights, read the same way with an optimizer and without.

The readers of :mod:`trainer_hooks.probe` (an optimizer's pre- and post-step hooks) and
of :mod:`trainer_hooks.by_hand` (a model updated by hand) share these: which gradients
count, how a gradient and its weights are recorded before an update and the weights
after it, and the norms of the vital signs.
"""
from __future__ import annotations

import math

import torch

from trainer_hooks.capture import StepCapture
from trainer_hooks.reduce import Reduced, reduce_tensor


def has_dense_grad(p: torch.Tensor) -> bool:
    """A parameter whose gradient babysit reads (dense, floating point, not empty)."""
    g = p.grad
    return g is not None and not g.is_sparse and g.is_floating_point() and g.numel() > 0


def add_params_before(capture: StepCapture, entries: list[tuple], sample_size: int, positions,
                      grad_squares: dict[int, float] | None = None) -> dict:
    """Each parameter's gradient and its weights before the update (``param_pre``), for
    ``entries`` of (parameter, layer name, module class). Small parameters (biases, norms)
    travel whole: their gradients and weights are copied in one kernel per device each,
    not one per parameter; large ones by a random sample, whose positions are returned
    (by parameter id) so that :func:`add_params_after` reads the same elements after;
    ``positions`` draws them (:class:`~trainer_hooks.reduce.SamplePositions`).
    ``grad_squares``: the gradients' sums of squares the vital signs read this step (CPU),
    by parameter id: a pass over each gradient saved."""
    indices = {}
    for group in _by_device([e for e in entries if e[0].numel() <= sample_size]):
        grads = _joined([p.grad for p, _, _ in group])
        weights = _joined([p for p, _, _ in group])
        for (_, name, module), grad, weight in zip(group, grads, weights):
            reduced = Reduced(numel=grad.numel(), moments=[], counted=False, sample=grad, whole=True)
            capture.add_reduced("param_pre", {"layer": name, "module": module}, reduced, vectors=[weight])
    for p, name, module in entries:
        if p.numel() <= sample_size:
            continue
        idx = indices[id(p)] = positions(p.numel(), p.device)
        reduced = reduce_tensor(p.grad, indices=idx, squares=None if grad_squares is None else grad_squares.get(id(p)))
        capture.add_reduced("param_pre", {"layer": name, "module": module}, reduced,
                            vectors=[p.detach().reshape(-1).index_select(0, idx)])
    return indices


def add_params_after(capture: StepCapture, entries: list[tuple], indices: dict) -> None:
    """The same parameters' weights after the update and their norms (``param_post``):
    with the ``param_pre`` record, the update/weight ratio."""
    after = {}
    for group in _by_device([e for e in entries if id(e[0]) not in indices]):
        after.update(zip((id(p) for p, _, _ in group), _joined([p for p, _, _ in group])))
    weights = [p.detach() for p, _, _ in entries]
    if all(w.is_cpu for w in weights):  # read at once, a BLAS dot each (a tenth of _foreach_norm's time there)
        metas = [{"layer": name, "norm": math.sqrt(s)} for (_, name, _), s in zip(entries, squares(weights))]
        norms = [[] for _ in entries]
    else:  # kept on the device, copied with the rest of the step
        metas = [{"layer": name} for _, name, _ in entries]
        norms = [[n] for n in l2_norms(weights)]
    for (p, _, _), meta, norm in zip(entries, metas, norms):
        idx = indices.get(id(p))
        w = after[id(p)] if idx is None else p.detach().reshape(-1).index_select(0, idx)
        capture.add("param_post", meta, norm, [w])


def _by_device(entries: list[tuple]) -> list[list[tuple]]:
    groups: dict[torch.device, list[tuple]] = {}
    for entry in entries:
        groups.setdefault(entry[0].device, []).append(entry)
    return list(groups.values())


def _joined(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Copies of several tensors (one device) made by a single kernel, as flat views."""
    flat = [t.detach().reshape(-1) for t in tensors]
    return torch.cat(flat).split([t.numel() for t in flat])


def squares(tensors: list[torch.Tensor]) -> list[float]:
    """The squared L2 norm of each CPU tensor: ``dot(t, t)`` for contiguous float32 and
    float64 ones (BLAS, summed in blocks: as exact as a norm and twice as fast), else a
    float64 norm squared (half precision, strided views). Read at once: on the CPU that
    is no sync, and a small tensor per step held until the writer reads it fragments the
    heap between the gradients freed each step (the resident set grew 20 MiB in 200 steps)."""
    out = []
    for t in tensors:
        if t.dtype in _BLAS_DTYPES and t.is_contiguous():
            flat = t.view(-1)
            out.append(torch.dot(flat, flat).item())
        else:
            out.append(torch.linalg.vector_norm(t, dtype=torch.float64).square().item())
    return out


_BLAS_DTYPES = (torch.float32, torch.float64)


def l2_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The L2 norm of each tensor, in float32 or wider: one multi-tensor kernel where torch
    has it (``_foreach_norm`` with a dtype, torch >= 2.3), else one norm each."""
    try:
        return list(torch._foreach_norm(tensors, 2, dtype=torch.float32))
    except (AttributeError, TypeError, RuntimeError):
        return [torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors]
