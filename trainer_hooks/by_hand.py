"""Parameter statistics of a model trained without an optimizer (weights updated by hand).

With an optimizer, the step's gradients and weights are read in its pre-step hook and
the weights again in its post-step hook. A script that updates the weights itself
(``p.data.add_(p.grad, alpha=-lr)``, ``p -= lr * p.grad`` under ``no_grad``) has no such
moment, so the gradients are read as autograd accumulates them (a
``register_post_accumulate_grad_hook`` on each trainable parameter: hooks live on the
tensor, are never pickled, and are removed by :meth:`HandUpdates.remove`) and the weights
after the update at the next training forward pass of the model, when the update is
surely done. The update/weight ratio is then the parameters' change between two steps.

Every step: each gradient's squared norm (CPU) or norm (accelerators, kept on the
device), as the vital signs. Sampled steps: each gradient and the weights it starts
from, as the optimizer path records them (:func:`trainer_hooks.probe.add_params_before`).
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from trainer_hooks.capture import StepCapture
from trainer_hooks.params import add_params_after, add_params_before, has_dense_grad, l2_norms, squares
from trainer_hooks.reduce import SamplePositions


class HandUpdates:
    """Reads a hand-trained model's gradients as they arrive (see the module docstring)."""

    def __init__(self, model: nn.Module, names: dict[int, tuple[str, str]], rows: dict[int, int],
                 sample_size: int, generator):
        self.names = names  # parameter id -> (name, module class)
        self.rows = rows  # parameter id -> its layer's row in the vitals
        self.sample_size = sample_size
        self.generator = generator
        self.capture: StepCapture | None = None  # the sampled step's, while its backward runs
        self.positions = SamplePositions(sample_size, generator)  # and its draws (set with it by the probe)
        self._norms: dict[int, tuple[int, object]] = {}  # this step's, by parameter id
        self.stepped: list[tuple] = []  # (parameter, name, module) read on the sampled step
        self.indices: dict = {}
        self._read: set[int] = set()  # ids of the parameters in stepped
        self.vitals_due = True  # whether this step reads the vital signs (set by the Monitor, as the probe's)
        self.vitals_seconds: float | None = None  # what they took this step (None: not read)
        self._handles = [p.register_post_accumulate_grad_hook(self._ready)
                         for p in model.parameters() if p.requires_grad]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _ready(self, p: torch.Tensor) -> None:
        if not has_dense_grad(p):
            return
        g = p.grad
        capture = self.capture
        if self.vitals_due or capture is not None:
            # Read now: the script may zero the gradient, and will change the weights, before the step ends.
            started = time.perf_counter()
            norm = squares([g])[0] if g.is_cpu else l2_norms([g])[0]
            self._norms[id(p)] = (self.rows.get(id(p), -1), norm)
            self.vitals_seconds = (self.vitals_seconds or 0.0) + time.perf_counter() - started
        if capture is None or id(p) in self._read:  # (accumulation: the first pass's)
            return
        name, module = self.names.get(id(p), (f"param{len(self.stepped)}", "Parameter"))
        entry = [(p, name, module)]
        self.indices.update(add_params_before(capture, entry, self.sample_size, self.positions))
        self.stepped += entry
        self._read.add(id(p))

    def take_vitals(self):
        """The step's vital signs as :meth:`Probe._vitals` gives them (None: no gradient came)."""
        if not self._norms:
            return None
        rows, norms = zip(*self._norms.values())
        self._norms = {}
        if all(isinstance(n, float) for n in norms):
            return list(norms), tuple(rows)
        device = next(n.device for n in norms if isinstance(n, torch.Tensor))
        return torch.stack([torch.tensor(math.sqrt(n), device=device) if isinstance(n, float)  # a CPU square
                            else n.to(device) for n in norms]), tuple(rows)

    def take_stepped(self) -> tuple[list[tuple], dict]:
        """What the sampled step read (for :func:`after`), and forget it."""
        taken = (self.stepped, self.indices)
        self.stepped, self.indices, self.capture, self._read = [], {}, None, set()
        return taken


def after(capture: StepCapture, stepped: tuple[list[tuple], dict]) -> None:
    """The weights after the hand update, once it is done (see the module docstring)."""
    entries, indices = stepped
    if entries:
        add_params_after(capture, entries, indices)
