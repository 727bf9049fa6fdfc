"""What the framework callbacks share: metric names, one loss per optimizer step, the
optimizer under a wrapper."""
from __future__ import annotations

import numbers
import re
from typing import Any, Mapping

import torch

#: Prefixes frameworks give validation metrics, and babysit's (``val_``, see ``mon.log``).
VALIDATION_PREFIXES = ("val_", "val/", "valid_", "valid/", "validation_", "validation/", "eval_", "eval/")


def validation_name(name: str) -> str | None:
    """babysit's name for a framework's validation metric (``eval_loss``, ``val/acc`` ->
    ``val_loss``, ``val_acc``); None when the metric is not a validation one."""
    for prefix in VALIDATION_PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return "val_" + re.sub(r"[^A-Za-z0-9_.:-]+", "_", name[len(prefix):])
    return None


def numbers_of(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The entries that are one number (a float, an int, a one-element tensor)."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() == 1 and value.is_floating_point():
                out[name] = value.detach()
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            out[name] = float(value)  # NaN and Inf included: a diverged metric is news
    return out


def torch_optimizer(optimizer):
    """The torch optimizer under a framework's wrapper (accelerate's, Lightning's)."""
    seen = 0
    while not _is_plain_torch(optimizer) and hasattr(optimizer, "optimizer") and seen < 4:
        optimizer, seen = optimizer.optimizer, seen + 1
    return optimizer


def _is_plain_torch(optimizer) -> bool:
    return isinstance(optimizer, torch.optim.Optimizer) and type(optimizer).__module__.startswith("torch.")


class StepLoss:
    """The loss of one optimizer step from the losses of its micro-batches: their sum when
    the framework has divided each by the accumulation count (Lightning), their mean
    when it has not (a model's own output)."""

    def __init__(self, divided: bool):
        self.divided = divided
        self._values: list[torch.Tensor] = []

    def add(self, loss) -> None:
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._values.append(loss.detach().reshape(()))

    def take(self) -> torch.Tensor | None:
        values, self._values = self._values, []
        if not values:
            return None
        total = values[0] if len(values) == 1 else torch.stack(values).sum()
        return total if self.divided or len(values) == 1 else total / len(values)
