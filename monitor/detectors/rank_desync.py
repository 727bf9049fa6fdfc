"""Rank desynchronisation: one rank of a distributed run no longer trains with the others.

Data-parallel replicas start from the same weights and apply the same averaged gradient,
so they must stay identical; what may differ is only each rank's own batch. Two signals,
read at each round of the ranks' stop agreement (every ``agree_every`` steps, all ranks at
the same step, :mod:`trainer_hooks.agreement`):

* **Gradient norms.** Under ``DistributedDataParallel`` the gradients the optimizer reads
  are the all-reduced average, the same tensor on every rank: their norms agree to float
  rounding. A rank whose global gradient norm differs from rank 0's by more than
  ``grad_tolerance`` (1e-3, relative) for ``rounds`` (3) rounds in a row is not averaging
  with the others: gradients computed under ``no_sync()`` and never synchronised, a
  parameter the DDP wrapper does not know (created after wrapping, or used on one rank
  only), or ranks stepping at different steps. Read only when the model is wrapped in DDP:
  sharded training (FSDP) has per-rank gradient shards of different norms by design.
* **Losses.** Batches differ, so losses scatter around a common level; a rank whose loss,
  smoothed over rounds (exponential, weight ``smoothing`` 0.5 on the newest), stays above
  ``loss_ratio`` (2) times, or below 1 / ``loss_ratio`` times, the median of all ranks'
  (with two ranks, rank 0's: two cannot say which is wrong) for ``rounds`` rounds, or is
  not finite while the others' are, trains on something
  else: a corrupt or mislabelled shard, a rank reading another split, a replica whose
  weights drifted.

Flagged once per rank (warning), on the run of rank 0, whose page is the job's. Sample
flag: ``rank_desync (warning) at step 60: rank 1 is out of step with the others: its
gradient norm (0.91) differs from rank 0's (0.47) by 94 % for 3 rounds; DDP's replicas
share one averaged gradient``.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence

from monitor.events import Flag, Severity

GRAD_ADVICE = ("Data-parallel replicas must apply the same averaged gradient. Look for gradients computed "
               "under model.no_sync() that are never synchronised, a parameter created after the model was "
               "wrapped in DistributedDataParallel or used on one rank only, or a rank that skips or repeats "
               "optimizer steps (a rank-dependent condition around backward() or step()).")
LOSS_ADVICE = ("Check that rank's data: its shard (DistributedSampler with the right rank and world size, "
               "set_epoch each epoch), its labels and its preprocessing; if the data are alike, compare the "
               "ranks' weights: a replica whose weights drifted no longer trains the same model.")


@dataclass
class RankDesync:
    """Compare the ranks at each agreement round (see the module docstring)."""

    grad_tolerance: float = 1e-3
    loss_ratio: float = 2.0
    rounds: int = 3
    smoothing: float = 0.5
    _smoothed: list[float] = field(default_factory=list)
    _grad_streak: dict[int, int] = field(default_factory=dict)
    _loss_streak: dict[int, int] = field(default_factory=dict)
    _flagged: set[int] = field(default_factory=set)

    def update(self, step: int, losses: Sequence[float], grad_norms: Sequence[float], *,
               shared_gradients: bool) -> list[Flag]:
        """One round: each rank's last loss and global gradient norm (NaN: none yet)."""
        flags = []
        self._smooth(losses)
        for rank in range(1, len(grad_norms)) if shared_gradients else ():
            flags += self._grads(step, rank, grad_norms)
        for rank in range(len(losses)):
            flags += self._losses(step, rank, losses)
        return flags

    def _smooth(self, losses: Sequence[float]) -> None:
        if len(self._smoothed) != len(losses):
            self._smoothed = [float(v) for v in losses]
            return
        w = self.smoothing
        self._smoothed = [float(new) if not math.isfinite(old) else w * float(new) + (1 - w) * old
                          for old, new in zip(self._smoothed, losses)]

    def _grads(self, step: int, rank: int, norms: Sequence[float]) -> list[Flag]:
        ours, reference = float(norms[rank]), float(norms[0])
        apart = (math.isfinite(ours) and math.isfinite(reference) and reference > 0
                 and abs(ours - reference) / reference > self.grad_tolerance)
        streak = self._grad_streak[rank] = self._grad_streak.get(rank, 0) + 1 if apart else 0
        if streak < self.rounds or rank in self._flagged:
            return []
        self._flagged.add(rank)
        gap = abs(ours - reference) / reference
        return [Flag(
            kind="rank_desync", severity=Severity.WARNING, step=step,
            message=f"rank {rank} is out of step with the others: its gradient norm ({ours:.3g}) differs from "
                    f"rank 0's ({reference:.3g}) by {gap:.0%} for {streak} rounds; DDP's replicas share one "
                    "averaged gradient",
            advice=GRAD_ADVICE,
            evidence={"rank": rank, "signal": "grad_norm", "grad_norms": [float(v) for v in norms],
                      "relative_gap": gap, "rounds": streak})]

    def _losses(self, step: int, rank: int, losses: Sequence[float]) -> list[Flag]:
        finite = [v for v in self._smoothed if math.isfinite(v)]
        if len(self._smoothed) == 2:  # two ranks cannot say which one is wrong: rank 0 is the job's reference
            if rank == 0 or not math.isfinite(self._smoothed[0]):
                return []
            level = self._smoothed[0]
        elif len(finite) > 1:
            level = statistics.median(finite)
        else:
            return []
        ours = self._smoothed[rank]
        broken = not math.isfinite(float(losses[rank])) and all(
            math.isfinite(float(v)) for r, v in enumerate(losses) if r != rank)
        apart = broken or (level > 0 and math.isfinite(ours) and ours > 0
                           and max(ours / level, level / ours) > self.loss_ratio)
        streak = self._loss_streak[rank] = self._loss_streak.get(rank, 0) + 1 if apart else 0
        if (streak < self.rounds and not broken) or rank in self._flagged:
            return []
        self._flagged.add(rank)
        what = (f"its loss is {float(losses[rank])} while the others' are finite" if broken else
                f"its smoothed loss ({ours:.4g}) is {max(ours / level, level / ours):.1f} times "
                f"{'above' if ours > level else 'below'} the ranks' level ({level:.4g}) for {streak} rounds")
        return [Flag(
            kind="rank_desync", severity=Severity.WARNING, step=step,
            message=f"rank {rank} is out of step with the others: {what}",
            advice=LOSS_ADVICE,
            evidence={"rank": rank, "signal": "loss", "losses": [float(v) for v in losses],
                      "smoothed": list(self._smoothed), "rounds": streak})]
