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
asked for, at a cost of one tiny all-reduce every ``AGREE_EVERY`` steps.
"""
from __future__ import annotations

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

    def exchange(self, wanted: bool) -> bool:
        """Read the round in flight, then launch the next one with this rank's wish."""
        agreed = self._result()
        value = torch.tensor([1 if wanted else 0], dtype=torch.int32, device=self.device)
        work = dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        host = event = None
        if value.is_cuda:
            work.wait()  # orders the copy after the collective on the current stream; the host goes on
            host = torch.empty_like(value, device="cpu").pin_memory()
            host.copy_(value, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (work, value, host, event)
        return agreed

    def finish(self) -> bool:
        """Complete the round in flight (at close: every rank launched it at the same step)."""
        return self._result()

    def _result(self) -> bool:
        if self._pending is None:
            return False
        work, value, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
            return bool(host.item())
        work.wait()
        return bool(value.item())
