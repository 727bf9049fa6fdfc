"""All ranks of a distributed run stop at the same step, or none does.

Under DDP every rank must run the same collectives: a rank that leaves its loop alone
leaves the others waiting in their next gradient all-reduce forever. A stop can start on
one rank only (its detectors saw its own batch, the dashboard's button reached its run,
its validation metric stopped improving), so the wish is shared: every
``AGREE_EVERY`` steps each rank contributes 0 or 1 to a MAX all-reduce of one number, and
every rank acts on the same result at the same step.

The collective is launched asynchronously and read one round later, when it finished
long ago: with NCCL its result is copied to pinned host memory behind a CUDA event, so
reading it never stalls the GPU's queue; with gloo (CPU) it is waited for. A stop is
therefore agreed between ``AGREE_EVERY`` and ``2 * AGREE_EVERY`` steps after it was
asked for, at a cost of one tiny all-gather (three numbers a rank) every ``AGREE_EVERY`` steps.

A distributed run is one job: rank 0's run id is the job's, broadcast to every rank at
``watch()``, and rank r's run is ``<job>.r<r>`` (:func:`job_run_id`).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

#: Steps between two rounds of the stop agreement.
AGREE_EVERY = 10


def distributed_world() -> int:
    """Ranks of the default process group (1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class StopAgreement:
    """One round every ``every`` steps: :meth:`exchange` returns whether any rank asked to
    stop by the previous round (the same answer on every rank, at the same step)."""

    def __init__(self, every: int = AGREE_EVERY, group=None):
        if every < 1:
            raise ValueError(f"agree_every: expected at least 1 step, got {every!r}")
        self.every = every
        self.group = group
        cuda = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self._pending = None  # (work, tensor, host copy, event) of the round in flight

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def exchange(self, wanted: bool, loss=math.nan, grad_norm=math.nan) -> tuple[bool, list | None]:
        """Read the round in flight, then launch the next one with this rank's wish and
        evidence (floats, or one-element tensors on the run's device: never read here).
        Returns (any rank wished to stop, each rank's (loss, gradient norm) of that round)."""
        agreed, gathered = self._result()
        parts = [torch.as_tensor(v, dtype=torch.float32).reshape(1).to(self.device)
                 for v in (float(wanted), loss, grad_norm)]
        value = torch.cat(parts)
        slots = [torch.empty_like(value) for _ in range(dist.get_world_size(self.group))]
        work = dist.all_gather(slots, value, group=self.group, async_op=True)
        host = event = None
        if value.is_cuda:
            work.wait()  # orders the copy after the collective on the current stream; the host goes on
            host = torch.empty((len(slots), 3), dtype=torch.float32).pin_memory()
            host.copy_(torch.stack(slots), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (work, slots, host, event)
        return agreed, gathered

    def finish(self) -> bool:
        """Complete the round in flight (at close: every rank launched it at the same step)."""
        return self._result()[0]

    def _result(self) -> tuple[bool, list | None]:
        if self._pending is None:
            return False, None
        work, slots, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
            rows = host.tolist()
        else:
            work.wait()
            rows = [slot.tolist() for slot in slots]
        return any(row[0] > 0 for row in rows), [(row[1], row[2]) for row in rows]


def job_run_id(run_id: str, group=None) -> str:
    """This rank's run id in a distributed job: rank 0's own (the job's, sent to every
    rank: a collective, which every rank's ``watch()`` takes part in), ``<job>.r<rank>``
    on the others; the id unchanged outside one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) < 2:
        return run_id
    shared = [run_id]
    dist.broadcast_object_list(shared, src=0, group=group)
    rank = dist.get_rank(group)
    return shared[0] if rank == 0 else f"{shared[0]}.r{rank}"
