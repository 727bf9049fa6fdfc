"""Raw torch measurements of a training, made by the zoo's own code at every step.

The :class:`Recorder` sits in the training loop of every zoo run, healthy or not, and
reads what a careful practitioner would read by hand: the loss of each step; for each
layer that holds a weight matrix (Linear, Conv, LSTM, Embedding), the norms of its
gradient, its weights and its update (the weights before and after ``optimizer.step()``);
on a fixed probe batch, with forward hooks of its own, how many ReLU units are never
positive and how many tanh/sigmoid outputs sit on their flat tails; the probe batch's loss
at step 0; per-channel and per-feature statistics of the training inputs; and each
validation. It never reads babysit's statistics: :mod:`zoo.truth` turns these series into
the ground truth the benchmark scores babysit's flags against.

The probe forward runs without gradient (babysit's hooks ignore it) and puts the
BatchNorm running statistics back afterwards, so measuring never changes the training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

#: Examples in the fixed probe batch (dead units and saturation are read on it).
PROBE_SIZE = 256
#: Steps from the start at which the probe runs on every step (init problems show here).
PROBE_DENSE_STEPS = 50
#: After the dense start, the probe runs every this many steps (the probe is the costly part).
PROBE_EVERY = 10
#: Activations whose outputs the probe reads, by the property it measures.
RECTIFIERS = (nn.ReLU, nn.ReLU6)
SQUASHERS = (nn.Tanh, nn.Sigmoid)
#: A tanh or sigmoid output counts as saturated where the activation's slope there is
#: below this share of its slope at 0 (tanh: |y| >= 0.97; sigmoid: y <= 0.016 or >= 0.984):
#: the gradient through it is cut by more than 15x (LeCun et al. 1998, "Efficient
#: BackProp", sec. 4.4; Glorot & Bengio 2010, sec. 3).
SATURATED_SLOPE = 0.06
#: Smooth activations whose negative tail is flat (GELU: Hendrycks & Gimpel 2016; SiLU):
#: an input there counts as saturated where the slope, by autograd at the input itself, is
#: below SATURATED_SLOPE of the steepest and the input is left of -2 (past the minimum of
#: GELU at -0.75 and of SiLU at -1.28, where the slope also passes through 0 but the
#: neighbourhood learns).
SMOOTH = (nn.GELU, nn.SiLU)
SMOOTH_TAIL_BELOW = -2.0


@dataclass
class Series:
    """What the recorder measured; plain lists of floats keyed by layer name."""

    loss: list[float] = field(default_factory=list)
    grad: dict[str, list[float]] = field(default_factory=dict)
    weight: dict[str, list[float]] = field(default_factory=dict)
    update: dict[str, list[float]] = field(default_factory=dict)
    probe_steps: list[int] = field(default_factory=list)
    dead: dict[str, list[float]] = field(default_factory=dict)  # share of units never positive on the probe
    saturated: dict[str, list[float]] = field(default_factory=dict)  # share of outputs on the flat tails
    initial_loss: float | None = None  # the probe batch's loss at step 0
    validation: list[tuple[int, float, float]] = field(default_factory=list)  # (step, val loss, epoch train loss)
    inputs: dict = field(default_factory=dict)  # statistics of the training inputs
    layer_groups: dict[str, list[str]] = field(default_factory=dict)  # activation -> modules that feed it


def weight_layers(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Modules with a weight matrix of their own (biases and norm scales are left out:
    their gradients say little about gradient flow), by their ``named_modules`` name."""
    found = {}
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.ndim >= 2 and p.requires_grad]
        if params and name:
            found[name] = params
    return found


def feeders(model: nn.Module, activation: str) -> list[str]:
    """The activation and the modules that feed it within its Sequential (back to the
    previous activation): the unit lives in all of them (a dead unit is also a row of the
    Linear before it, and a channel of the BatchNorm between)."""
    parent_name, _, child = activation.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    names = [activation]
    if isinstance(parent, nn.Sequential):
        keys = list(parent._modules)
        for key in reversed(keys[:keys.index(child)]):
            if isinstance(parent._modules[key], RECTIFIERS + SQUASHERS + SMOOTH):
                break
            names.append(f"{parent_name}.{key}" if parent_name else key)
    return names


def input_statistics(inputs: torch.Tensor, layout: str) -> dict:
    """Mean and std of the training inputs as a practitioner normalises them: per channel
    for images (N x C x H x W), globally and per feature for flat or tabular input."""
    x = inputs.double()
    stats = {"layout": layout, "mean": float(x.mean()), "std": float(x.std())}
    per = x.transpose(0, 1).flatten(1) if layout == "image" else x.flatten(1).T
    stats["unit_mean"] = per.mean(1).tolist()
    stats["unit_std"] = per.std(1).tolist()
    return stats


class Recorder:
    """Measures one training; call :meth:`before_step`, :meth:`after_backward`,
    :meth:`after_step` and :meth:`validation` from the loop (see :mod:`zoo.loop`)."""

    def __init__(self, model: nn.Module, *, loss_fn, probe: tuple[torch.Tensor, torch.Tensor],
                 inputs: torch.Tensor | None, layout: str | None):
        self.model, self.loss_fn = model, loss_fn
        self.probe_x, self.probe_y = probe[0][:PROBE_SIZE], probe[1][:PROBE_SIZE]
        self.layers = weight_layers(model)
        self.activations = {name: m for name, m in model.named_modules()
                            if isinstance(m, RECTIFIERS + SQUASHERS + SMOOTH)}
        self.series = Series(grad={n: [] for n in self.layers}, weight={n: [] for n in self.layers},
                             update={n: [] for n in self.layers},
                             dead={n: [] for n, m in self.activations.items() if isinstance(m, RECTIFIERS)},
                             saturated={n: [] for n, m in self.activations.items()
                                        if isinstance(m, SQUASHERS + SMOOTH)},
                             layer_groups={n: feeders(model, n) for n in self.activations})
        if inputs is not None and layout is not None:
            self.series.inputs = input_statistics(inputs, layout)
        self._before: list[list[torch.Tensor]] = []

    def before_step(self, step: int) -> None:
        """On probe steps, read dead units and saturation on the probe batch with the
        weights this step starts from (and at step 0, the probe batch's loss)."""
        if step == 0:
            self._probe(step, with_loss=True)
        elif self.activations and (step < PROBE_DENSE_STEPS or step % PROBE_EVERY == 0):
            self._probe(step, with_loss=False)

    def after_backward(self, loss: torch.Tensor) -> None:
        """The loss, and per layer the gradient and weight norms, before the optimizer moves them."""
        self.series.loss.append(_finite_or_inf(float(loss.detach())))
        grads, weights = [], []
        for params in self.layers.values():
            grads.append(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() if p.grad is not None else p.new_zeros(()) for p in params])))
            weights.append(torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in params])))
        if grads:
            for name, g, w in zip(self.layers, torch.stack(grads).tolist(), torch.stack(weights).tolist()):
                self.series.grad[name].append(_finite_or_inf(g))
                self.series.weight[name].append(_finite_or_inf(w))
        self._before = [[p.detach().clone() for p in params] for params in self.layers.values()]

    def after_step(self) -> None:
        """Per layer, the norm of what ``optimizer.step()`` changed."""
        if not self._before:
            return
        norms = torch.stack([
            torch.linalg.vector_norm(torch.stack([(p.detach() - b).norm() for p, b in zip(params, old)]))
            for params, old in zip(self.layers.values(), self._before)]).tolist()
        for name, u in zip(self.layers, norms):
            self.series.update[name].append(_finite_or_inf(u))
        self._before = []

    def validation(self, step: int, val_loss: float, train_losses: list[float]) -> None:
        """One validation: its loss and the mean training loss of the epoch it closes."""
        finite = [v for v in train_losses if math.isfinite(v)]
        train = sum(finite) / len(finite) if finite else math.inf
        self.series.validation.append((step, _finite_or_inf(val_loss), train))

    def _probe(self, step: int, with_loss: bool) -> None:
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        handles = [module.register_forward_hook(self._reader(name)) for name, module in self.activations.items()]
        try:
            with torch.no_grad():
                out = self.model(self.probe_x)
                if with_loss:
                    self.series.initial_loss = _finite_or_inf(float(self.loss_fn(out, self.probe_y)))
        finally:
            for h in handles:
                h.remove()
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])
        if self.activations:
            self.series.probe_steps.append(step)

    def _reader(self, name: str):
        def read(module, args, output):
            y = output.detach().float()
            if isinstance(module, RECTIFIERS):
                others = [d for d in range(y.ndim) if d != 1]
                alive = (y > 0).any(dim=others) if others else y > 0
                self.series.dead[name].append(1.0 - float(alive.float().mean()))
            elif isinstance(module, SMOOTH):
                x = args[0].detach().float()
                slope = _slope(module, x).abs()
                flat = (slope < SATURATED_SLOPE * _steepest(module)) & (x < SMOOTH_TAIL_BELOW)
                self.series.saturated[name].append(float(flat.float().mean()))
            elif isinstance(module, nn.Tanh):
                self.series.saturated[name].append(float((1 - y * y < SATURATED_SLOPE).float().mean()))
            else:  # sigmoid: slope y(1 - y), 0.25 at 0
                self.series.saturated[name].append(float((y * (1 - y) < SATURATED_SLOPE * 0.25).float().mean()))
        return read


def _finite_or_inf(value: float) -> float:
    """NaN becomes +inf, so that a blown-up value sorts above every finite one."""
    return math.inf if math.isnan(value) else value


def _slope(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation's derivative at each input, by autograd (``forward``: no hooks)."""
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        (slope,) = torch.autograd.grad(module.forward(x).sum(), x)
    return slope


_STEEPEST: dict[str, float] = {}


def _steepest(module: nn.Module) -> float:
    """The activation's steepest slope, found once per configuration (its ``repr``)."""
    key = f"{type(module).__qualname__}:{module!r}"
    if key not in _STEEPEST:
        _STEEPEST[key] = float(_slope(module, torch.linspace(-10.0, 10.0, 4001)).abs().max())
    return _STEEPEST[key]
