"""``babysit demo``: a small ConvNet trained on real images, watched, with pathologies on demand.

The data are scikit-learn's bundled digits (1797 grey 8x8 images of handwritten digits,
no download). A fixed validation split is held out first, so every option below changes
training only. The options exist to provoke what babysitting is for:

* ``lr=3``: divergence (the loss explodes by twenty orders of magnitude; ``lr=1e12``
  turns it NaN);
* ``init_bias=-5``: dead ReLUs (every unit before a ReLU starts far below zero);
* ``train_size=100, epochs=60``: memorising (the train loss falls to 1e-4 while the
  validation loss stops improving near 0.4 after a dozen epochs; without BatchNorm, the
  ``overfitting`` preset, it then climbs to twice its best);
* ``normalize=False``: raw 0..16 pixel values reach the first layer;
* ``pathology=NAME`` picks the options that provoke one detector's flag (see
  :data:`PATHOLOGIES`): the same as the options above, and model variants (``activation``
  tanh or sigmoid, ``batchnorm=False``, a deeper classifier ``depth``, weights scaled by
  ``init_scale``, the output layer's by ``output_scale``).

The run is deterministic given ``seed``: the model is initialised from the seed before
``watch`` attaches, and batches are shuffled by a private generator, so whatever random
numbers the statistics draw cannot change the training.
"""
from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from monitor.validation import is_run_id
from trainer_hooks import EarlyStopping, watch

OPTIMIZERS = ("sgd", "adam")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
#: ``--pathology`` presets: the options that make the demo show each detector's flag.
#: Every one is checked by tests/test_cli_demo.py against the flags the run raises.
PATHOLOGIES: dict[str, dict] = {
    "divergence": {"lr": 3.0},  # the loss explodes by orders of magnitude within a few steps
    "dead_relu": {"init_bias": -5.0},  # every unit before a ReLU starts far below zero
    # 100 images memorised; without BatchNorm's batch noise validation turns and climbs (0.4 to 0.8)
    "overfitting": {"train_size": 100, "epochs": 60, "batchnorm": False},
    "input_not_normalized": {"normalize": False},  # raw 0..16 pixels
    "saturation": {"activation": "tanh", "batchnorm": False, "init_scale": 5.0},  # tanh pinned at +-1
    "plateau": {"lr": 1e-5},  # the loss sits at ln 10
    "update_ratio": {"lr": 1e-6},  # updates a millionth of the weights
    "vanishing_gradient": {"activation": "sigmoid", "batchnorm": False, "depth": 6},  # a deep sigmoid stack
    "exploding_gradient": {"batchnorm": False, "depth": 6, "init_scale": 8.0, "lr": 1e-9},  # weights x8, 8 layers
    "initial_loss": {"output_scale": 50.0},  # confident random predictions at step 0
}
VAL_SIZE = 360  # held-out images (a fifth of the 1797); fixed, so train_size only shrinks training
TRAIN_MAX = 1797 - VAL_SIZE
#: The demo's steps take about 1.5 ms on 2 CPU cores, so the automatic interval (0.5 % of
#: step time as measured) would sample a handful of its 360 steps; every 5th step gives the charts a picture
#: of every epoch for about 0.6 s more in all.
DEMO_EVERY = 5
DEFAULT_LR = {"sgd": 0.05, "adam": 0.001}
#: Epochs without a better validation loss before the demo stops (and puts the best weights back).
DEMO_PATIENCE = 5  # both reach about 98 % validation accuracy in 8 epochs


@dataclass(frozen=True)
class DemoOptions:
    """What to train and how; every field is a ``babysit demo`` option of the same name.

    ``init_bias`` sets the bias of each layer that feeds a ReLU: the BatchNorm shifts after
    the convolutions (a conv bias before BatchNorm would be subtracted away again) and
    the hidden Linear layer. ``train_size`` None uses all 1437 training images.
    ``every`` is the sampling interval in steps; None lets ``watch`` choose. ``lr`` None
    is 0.05 for SGD (with momentum 0.9) and 0.001 for Adam.
    """

    lr: float | None = None
    optimizer: str = "sgd"
    epochs: int = 8
    batch_size: int = 32
    train_size: int | None = None
    init_bias: float | None = None
    normalize: bool = True
    activation: str = "relu"
    batchnorm: bool = True
    depth: int = 1
    init_scale: float = 1.0
    output_scale: float = 1.0
    seed: int = 0
    patience: int | None = DEMO_PATIENCE  # early stopping on val_loss (restoring the best weights); None: off
    every: int | None = DEMO_EVERY
    run: str = "digits-cnn"
    logdir: str = "runs"
    server: str | None = None  # stream to this dashboard server (babysit demo starts one)
    step_delay: float = 0.0  # seconds of pause after each step, so a person can watch live

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.depth < 1:
            raise ValueError(f"depth: expected at least 1 hidden layer, got {self.depth!r}")
        for name in ("init_scale", "output_scale"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name}: expected a positive finite factor, got {getattr(self, name)!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr: expected a positive finite learning rate, got {self.lr!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        if self.train_size is not None and not 1 <= self.train_size <= TRAIN_MAX:
            raise ValueError(f"train_size: expected 1..{TRAIN_MAX} images (the rest is validation), "
                             f"got {self.train_size!r}")
        if self.init_bias is not None and not math.isfinite(self.init_bias):
            raise ValueError(f"init_bias: expected a finite number, got {self.init_bias!r}")
        # The stored run id is this name plus a time stamp and a tag: it names files and URLs.
        if not is_run_id(self.run) or len(self.run) > 100:
            raise ValueError("run: expected a name of 1-100 characters from A-Z a-z 0-9 . _ - starting "
                             f"with a letter or digit, got {self.run!r}")
        if not (self.step_delay >= 0 and math.isfinite(self.step_delay)):
            raise ValueError(f"step_delay: expected seconds >= 0, got {self.step_delay!r}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience: expected epochs >= 0 (or None: no early stopping), got {self.patience!r}")
        if self.every is not None and self.every < 1:
            raise ValueError(f"every: expected a sampling interval of at least 1 step, "
                             f"got {self.every!r}")


@dataclass(frozen=True)
class DemoResult:
    """How the run ended and where it is stored (numbers are from the last epoch run)."""

    run_id: str
    store_path: Path
    steps: int
    epochs: int
    train_loss: float
    val_loss: float
    val_acc: float
    stopped_early: bool
    seconds: float


def load_digits_split(options: DemoOptions) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and validation tensors ``(x_train, y_train, x_val, y_val)``, images as N x 1 x 8 x 8.

    Normalisation uses the mean and std of the training split only, as one would in
    practice; the validation split is scaled with the same two numbers.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(options.seed))
    val, train = order[:VAL_SIZE], order[VAL_SIZE:]
    if options.train_size is not None:
        train = train[: options.train_size]
    x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
    if options.normalize:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    return x_train, y_train, x_val, y_val


def build_model(init_bias: float | None = None, *, activation: str = "relu", batchnorm: bool = True,
                depth: int = 1, init_scale: float = 1.0, output_scale: float = 1.0) -> nn.Sequential:
    """Conv-BN-ReLU twice, max-pool, then a small classifier for 10 classes (``depth``
    hidden layers of 64). The keywords make the sick variants of ``PATHOLOGIES``."""
    act = ACTIVATIONS[activation]

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), *([nn.BatchNorm2d(c_out)] if batchnorm else []), act()]

    head: list[nn.Module] = []
    for i in range(depth):
        head += [nn.Linear(32 * 4 * 4 if i == 0 else 64, 64), act()]
    model = nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), nn.Flatten(), *head, nn.Linear(64, 10))
    with torch.no_grad():
        if init_scale != 1.0:
            for layer in model:
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    layer.weight.mul_(init_scale)
        if output_scale != 1.0:
            model[-1].weight.mul_(output_scale)
        if init_bias is not None:
            for before, layer in zip(model, model[1:]):
                if isinstance(layer, act) and getattr(before, "bias", None) is not None:
                    before.bias.fill_(init_bias)
    return model


def model_for(options: DemoOptions) -> nn.Sequential:
    return build_model(options.init_bias, activation=options.activation, batchnorm=options.batchnorm,
                       depth=options.depth, init_scale=options.init_scale, output_scale=options.output_scale)


def with_pathology(name: str, **options) -> DemoOptions:
    """The demo's options with a ``PATHOLOGIES`` preset applied (explicit ``options`` win)."""
    if name not in PATHOLOGIES:
        raise ValueError(f"pathology: expected one of {', '.join(PATHOLOGIES)}, got {name!r}")
    return DemoOptions(**{**PATHOLOGIES[name], **options})


def make_optimizer(options: DemoOptions, model: nn.Module) -> torch.optim.Optimizer:
    if options.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=options.lr)
    return torch.optim.SGD(model.parameters(), lr=options.lr, momentum=0.9)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Validation loss and accuracy, in eval mode (BatchNorm uses its running statistics)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y).item()
        acc = (logits.argmax(1) == y).float().mean().item()
    model.train(was_training)
    return loss, acc


def run_demo(options: DemoOptions = DemoOptions(), echo: Callable[[str], None] = print) -> DemoResult:
    """Train the demo ConvNet under ``watch``, print one line per epoch, and say where the run is."""
    torch.manual_seed(options.seed)
    x_train, y_train, x_val, y_val = load_digits_split(options)
    model = model_for(options)
    optimizer = make_optimizer(options, model)
    shuffle = torch.Generator().manual_seed(options.seed)  # private: hooks may draw from the global one
    n = len(y_train)
    echo(f"babysit demo: digits {n} train / {len(y_val)} validation images, {options.optimizer} "
         f"lr={options.lr:g}, batch {options.batch_size}, {options.epochs} epochs")

    started = time.perf_counter()
    train_loss = val_loss = val_acc = math.nan
    epochs_run = 0
    config = {**asdict(options), "model": "digits-cnn", "train_images": n, "val_images": len(y_val)}
    config = {k: v for k, v in config.items() if k not in ("server", "logdir")}
    stopping = (None if options.patience is None
                else EarlyStopping("val_loss", patience=options.patience, restore_best_weights=True))
    with watch(model, optimizer, run=options.run, config=config, every=options.every,
               logdir=options.logdir, server=options.server, early_stopping=stopping) as mon:
        if mon.dashboard_url:
            echo(f"watch it live: {mon.dashboard_url}")
        for epoch in range(1, options.epochs + 1):
            epoch_start, step_start = time.perf_counter(), mon.step
            loss_sum, batches = torch.zeros(()), 0  # summed on the tensor side: no sync per step
            model.train()
            for idx in torch.randperm(n, generator=shuffle).split(options.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                loss.backward()
                optimizer.step()
                mon.log(loss=loss, lr=optimizer.param_groups[0]["lr"])
                loss_sum += loss.detach()
                batches += 1
                if options.step_delay:
                    time.sleep(options.step_delay)
                if mon.should_stop:
                    break
            train_loss = loss_sum.item() / max(batches, 1)  # the one sync of the epoch
            val_loss, val_acc = evaluate(model, x_val, y_val)
            mon.log(val_loss=val_loss, val_acc=val_acc, epoch=epoch)
            epochs_run = epoch
            rate = (mon.step - step_start) / max(time.perf_counter() - epoch_start, 1e-9)
            note = "" if math.isfinite(train_loss) else "  (loss is not finite: training diverged)"
            echo(f"epoch {epoch:3d}/{options.epochs}  train loss {_num(train_loss)}  val loss {_num(val_loss)}  "
                 f"val acc {val_acc:6.1%}  {rate:5.0f} steps/s{note}")
            if mon.should_stop:
                echo(f"stopping early after {mon.step} steps: {mon.stop_reason.message}")
                break
        stopped_early = bool(mon.should_stop)
    store_path = Path(mon.store_path) if mon.store_path else Path(options.logdir) / "babysit.sqlite3"
    result = DemoResult(run_id=mon.run_id, store_path=store_path, steps=mon.step,
                        epochs=epochs_run, train_loss=train_loss, val_loss=val_loss, val_acc=val_acc,
                        stopped_early=stopped_early, seconds=time.perf_counter() - started)
    echo(where_stored(result, options.logdir))
    return result


def _num(value: float) -> str:
    """Seven characters: fixed point for ordinary losses, exponent for exploding ones."""
    return f"{value:7.4f}" if abs(value) < 1e3 else f"{value:7.2g}"


def where_stored(result: DemoResult, logdir: str) -> str:
    """The closing lines: the run id, its file, and how to load or export it."""
    logdir_arg = "" if logdir == "runs" else ", " + json.dumps(str(logdir))
    export_arg = "" if logdir == "runs" else " --logdir " + shlex.quote(str(logdir))
    return "\n".join([
        f"run {result.run_id}: {result.steps} steps in {result.seconds:.1f} s, stored in {result.store_path}",
        f'  in Python:  import monitor; frames = monitor.load_run("{result.run_id}"{logdir_arg})',
        f"  as files:   babysit export {result.run_id}{export_arg}",
    ])
