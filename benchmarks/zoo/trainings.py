"""Builders of the zoo's trainings, one per family; keywords make a run's one difference
from its healthy twin. Each returns a :class:`zoo.loop.Training`, seeded, on the CPU."""
from __future__ import annotations

import math

import torch
from torch import nn

from . import data, models
from .loop import Training, cross_entropy, mse, shuffled

#: Learning rates a tutorial would start from, per optimizer.
DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}
#: Share of the run spent in linear warm-up by the "warmup" schedule.
WARMUP_FRACTION = 0.1
#: Step decay: the learning rate halves every this many epochs (the practice notes' "by
#: half every 5 epochs").
STEP_DECAY_EPOCHS = 5


def optimizer_for(name: str, model: nn.Module, lr: float | None) -> torch.optim.Optimizer:
    lr = DEFAULT_LR[name] if lr is None else lr
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def scheduler_for(name: str | None, optimizer, total: int, per_epoch: int):
    """The practice notes' schedules, stepped once per optimizer step: ``step`` (halve
    every 5 epochs), ``cosine`` (to 0 over the run), ``warmup`` (linear warm-up over the
    first 10 %, then cosine), ``cyclical`` (triangular between lr/10 and lr, 5 cycles)."""
    if name is None:
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEP_DECAY_EPOCHS * per_epoch, gamma=0.5)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if name == "warmup":
        warm = max(1, int(WARMUP_FRACTION * total))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "cyclical":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=lr / 10, max_lr=lr,
                                                 step_size_up=max(1, total // 10),
                                                 cycle_momentum=isinstance(optimizer, torch.optim.SGD))
    raise ValueError(f"schedule: expected step, cosine, warmup or cyclical, got {name!r}")


def _classification(model, x, y, xv, yv, *, optimizer, lr, schedule, epochs, batch, seed, layout, classes,
                    config) -> Training:
    opt = optimizer_for(optimizer, model, lr)
    per_epoch = math.ceil(len(y) / batch)
    return Training(model, opt, cross_entropy, shuffled(x, y, batch, seed), epochs, probe=(x, y),
                    validation=(xv, yv), scheduler=scheduler_for(schedule, opt, epochs * per_epoch, per_epoch),
                    inputs=x, layout=layout, chance_loss=math.log(classes),
                    config={"optimizer": optimizer, "schedule": schedule,
                            "lr": opt.param_groups[0].get("initial_lr", opt.param_groups[0]["lr"]),
                            "batch": batch, "epochs": epochs, **config})


def mlp_digits(*, optimizer: str = "sgd", lr: float | None = None, schedule: str | None = None, epochs: int = 12,
               batch: int = 32, train_size: int | None = None, normalize: bool = True, activation: str = "relu",
               hidden=(64, 64), bias: float | None = None, weight_scale: float = 1.0, output_scale: float = 1.0,
               seed: int = 0) -> Training:
    """An MLP on the flattened 8x8 digits (64 features, 10 classes)."""
    torch.manual_seed(seed)
    x, y, xv, yv = data.digits(seed=seed, train_size=train_size, normalize=normalize)
    model = models.mlp(64, list(hidden), 10, activation=activation, bias=bias, weight_scale=weight_scale,
                       output_scale=output_scale)
    return _classification(model, x, y, xv, yv, optimizer=optimizer, lr=lr, schedule=schedule, epochs=epochs,
                           batch=batch, seed=seed, layout="features", classes=10,
                           config={"activation": activation, "train_size": train_size, "normalize": normalize})


def mlp_blobs(*, optimizer: str = "sgd", lr: float | None = None, schedule: str | None = None, epochs: int = 10,
              batch: int = 32, n: int = 1024, hidden=(64, 64), activation: str = "relu", kaiming: float | None = None,
              column_scale: float = 1.0, seed: int = 0) -> Training:
    """An MLP on tabular Gaussian blobs (16 features, 4 classes)."""
    torch.manual_seed(seed)
    x, y, xv, yv = data.blobs(n=n, seed=seed, column_scale=column_scale)
    model = models.mlp(16, list(hidden), 4, activation=activation, kaiming=kaiming)
    return _classification(model, x, y, xv, yv, optimizer=optimizer, lr=lr, schedule=schedule, epochs=epochs,
                           batch=batch, seed=seed, layout="features", classes=4,
                           config={"depth": len(hidden), "activation": activation, "kaiming": kaiming})


def cnn_digits(*, optimizer: str = "sgd", lr: float | None = None, schedule: str | None = None, epochs: int = 8,
               batch: int = 32, train_size: int | None = None, output_scale: float = 1.0, seed: int = 0) -> Training:
    """Conv-BN-ReLU x2 on the digits as 1x8x8 images."""
    torch.manual_seed(seed)
    x, y, xv, yv = data.digits(seed=seed, train_size=train_size, flat=False)
    model = models.cnn(1, 8, 10, output_scale=output_scale)
    return _classification(model, x, y, xv, yv, optimizer=optimizer, lr=lr, schedule=schedule, epochs=epochs,
                           batch=batch, seed=seed, layout="image", classes=10, config={"train_size": train_size})


def cnn_images(*, optimizer: str = "adamw", lr: float | None = None, schedule: str | None = None, epochs: int = 8,
               batch: int = 32, n: int = 1024, normalize: bool = True, seed: int = 0) -> Training:
    """Conv-BN-ReLU x2 on synthetic 3x16x16 colour images (4 classes)."""
    torch.manual_seed(seed)
    x, y, xv, yv = data.images(n=n, seed=seed, normalize=normalize)
    model = models.cnn(3, 16, 4)
    return _classification(model, x, y, xv, yv, optimizer=optimizer, lr=lr, schedule=schedule, epochs=epochs,
                           batch=batch, seed=seed, layout="image", classes=4, config={"normalize": normalize})


def _text(seed: int, block: int):
    ids, vocab = data.encode(data.text(seed=seed))
    split = int(0.9 * len(ids))
    train, val = ids[:split], ids[split:]
    g = torch.Generator().manual_seed(seed + 1)
    val_windows = data.windows(val, torch.randint(0, len(val) - block - 1, (64,), generator=g), block)
    probe = data.windows(train, torch.randint(0, len(train) - block - 1, (64,), generator=g), block)
    return train, vocab, val_windows, probe


def _language_model(model, train, vocab, val, probe, *, optimizer, lr, schedule, epochs, per_epoch, batch, block,
                    seed, config) -> Training:
    opt = optimizer_for(optimizer, model, lr)

    def epoch_batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        starts = torch.randint(0, len(train) - block - 1, (per_epoch, batch), generator=g)
        return [data.windows(train, s, block) for s in starts]
    return Training(model, opt, cross_entropy, epoch_batches, epochs, probe=probe, validation=val,
                    scheduler=scheduler_for(schedule, opt, epochs * per_epoch, per_epoch),
                    chance_loss=math.log(vocab),
                    config={"optimizer": optimizer, "lr": lr, "schedule": schedule, "batch": batch,
                            "block": block, **config})


def lstm(*, optimizer: str = "adam", lr: float = 3e-3, schedule: str | None = None, epochs: int = 12,
         per_epoch: int = 50, batch: int = 16, block: int = 32, seed: int = 0) -> Training:
    """A character-level LSTM on the synthetic grammar's text."""
    torch.manual_seed(seed)
    train, vocab, val, probe = _text(seed, block)
    model = models.CharLSTM(vocab)
    return _language_model(model, train, vocab, val, probe, optimizer=optimizer, lr=lr, schedule=schedule,
                           epochs=epochs, per_epoch=per_epoch, batch=batch, block=block, seed=seed, config={})


def gpt(*, optimizer: str = "adamw", lr: float = 3e-3, schedule: str | None = "warmup", epochs: int = 12,
        per_epoch: int = 50, batch: int = 16, block: int = 32, seed: int = 0) -> Training:
    """A tiny causal transformer (nanoGPT's shape) on the synthetic grammar's text."""
    torch.manual_seed(seed)
    train, vocab, val, probe = _text(seed, block)
    model = models.TinyGPT(vocab, block)
    return _language_model(model, train, vocab, val, probe, optimizer=optimizer, lr=lr, schedule=schedule,
                           epochs=epochs, per_epoch=per_epoch, batch=batch, block=block, seed=seed, config={})


def regression(*, optimizer: str = "adam", lr: float | None = None, schedule: str | None = None, epochs: int = 10,
               batch: int = 32, n: int = 2048, hidden=(64, 64), activation: str = "relu", weight_scale: float = 1.0,
               input_scale: float = 1.0, seed: int = 0) -> Training:
    """An MLP regression (MSE) of a nonlinear function of 8 inputs."""
    torch.manual_seed(seed)
    x, y, xv, yv = data.regression(n=n, seed=seed, input_scale=input_scale)
    model = models.mlp(8, list(hidden), 1, activation=activation, weight_scale=weight_scale)
    opt = optimizer_for(optimizer, model, lr)
    per_epoch = math.ceil(n / batch)
    return Training(model, opt, mse, shuffled(x, y, batch, seed), epochs, probe=(x, y), validation=(xv, yv),
                    scheduler=scheduler_for(schedule, opt, epochs * per_epoch, per_epoch), inputs=x,
                    layout="features", chance_loss=1.0,  # the target is standardised: predicting 0 costs Var(y) = 1
                    config={"optimizer": optimizer, "lr": opt.param_groups[0].get("initial_lr",
                                                                                   opt.param_groups[0]["lr"]),
                            "schedule": schedule, "batch": batch, "epochs": epochs, "activation": activation,
                            "n": n})
