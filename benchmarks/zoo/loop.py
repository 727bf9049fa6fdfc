"""The one training loop every zoo run goes through: a plain loop as a user writes it,
watched by babysit through its public API only, and measured by :mod:`zoo.measure`.

When babysit asks to stop (``mon.should_stop``, with an early-stopping policy attached)
the loop closes the handle, as a user's ``break`` would end what babysit sees, but goes on
training unwatched to the planned end: the ground truth is a property of the training, and
must not depend on when babysit stopped it (a divergence stopped at its first sign must
still be measured as one). ``stopped_at`` records where babysit's run ended.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from trainer_hooks import EarlyStopping, watch

from .measure import Recorder
from .truth import derive

#: Early stopping as the benchmark's --early-stopping attaches it (the issue's setting).
PATIENCE = 5


@dataclass
class Training:
    """What a zoo entry builds: the model and optimizer, how to batch, what to measure."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # epoch -> its batches
    epochs: int
    probe: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    scheduler: object | None = None  # stepped after every optimizer step
    inputs: torch.Tensor | None = None  # the training inputs, for their statistics
    layout: str | None = None  # "image" or "features" (None: token ids, no input statistics)
    chance_loss: float | None = None  # the loss of an input-blind prediction (ln C; Var(y))
    config: dict = field(default_factory=dict)


def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classes or for next tokens (``out`` B x T x V)."""
    return F.cross_entropy(out.flatten(0, -2) if out.ndim > 2 else out, target.flatten() if out.ndim > 2 else target)


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, target)


def shuffled(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> Callable[[int], list]:
    """An epoch's batches: the data in a fresh order from a private generator (seeded per
    epoch), so nothing else that draws random numbers can change the batches."""
    def epoch_batches(epoch: int):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        return [(x[i], y[i]) for i in order.split(batch)]
    return epoch_batches


def tenfold_step(loss: list[float]) -> int | None:
    """The first step whose raw loss is at least 10x the lowest before it, or not finite:
    where a climb has become a blow-up (issue 10 asks divergence to be flagged before)."""
    lowest = math.inf
    for step, value in enumerate(loss):
        if not math.isfinite(value) or value >= 10 * lowest:
            return step
        lowest = min(lowest, value)
    return None


def run(training: Training, *, name: str, logdir: Path, every: int | None, early_stopping: bool,
        quiet: bool = True) -> dict:
    """Train, watched and measured; returns babysit's flags, the truth and what happened."""
    model, optimizer = training.model, training.optimizer
    recorder = Recorder(model, loss_fn=training.loss_fn, probe=training.probe, inputs=training.inputs,
                        layout=training.layout)
    extra = {}
    if early_stopping and training.validation is not None:
        extra["early_stopping"] = EarlyStopping(monitor="val_loss", patience=PATIENCE)
    started = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext():
        mon = watch(model, optimizer, run=name, logdir=logdir, every=every, config=training.config, **extra)
        watched, stopped_at, step = mon, None, 0

        def babysit_says_stop() -> None:
            nonlocal mon, stopped_at
            if mon is not None and mon.should_stop:
                stopped_at = step
                mon.close()
                mon = None  # a user's loop would break here; see the module docstring

        for epoch in range(training.epochs):
            model.train()
            epoch_losses = []
            for x, y in training.batches(epoch):
                recorder.before_step(step)
                optimizer.zero_grad()
                loss = training.loss_fn(model(x), y)
                loss.backward()
                recorder.after_backward(loss)
                optimizer.step()
                recorder.after_step()
                if training.scheduler is not None:
                    training.scheduler.step()
                epoch_losses.append(recorder.series.loss[-1])
                if mon is not None:
                    mon.log(loss=loss)
                step += 1
                babysit_says_stop()
            if training.validation is not None:
                model.eval()
                with torch.no_grad():
                    val_loss = float(training.loss_fn(model(training.validation[0]), training.validation[1]))
                model.train()
                recorder.validation(step - 1, val_loss, epoch_losses)
                if mon is not None:
                    mon.log(val_loss=val_loss, epoch=epoch)
                babysit_says_stop()
        if mon is not None:
            mon.close()
    seconds = time.perf_counter() - started
    truth = derive(recorder.series, chance_loss=training.chance_loss)
    flags = [{"kind": f.kind, "step": f.step, "layer": f.layer, "severity": f.severity.value, "message": f.message}
             for f in watched.flags]
    loss = recorder.series.loss
    finite = [v for v in loss if math.isfinite(v)]
    return {"name": name, "steps": step, "stopped_at": stopped_at, "seconds": round(seconds, 2),
            "truth": [t.as_dict() for t in truth], "flags": flags,
            "loss": {"first": loss[0] if loss else None, "min": min(finite) if finite else None,
                     "last": loss[-1] if loss else None, "tenfold_step": tenfold_step(loss)},
            "val_last": recorder.series.validation[-1][1] if recorder.series.validation else None}
