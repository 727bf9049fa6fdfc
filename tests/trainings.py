"""Real tiny trainings for the detector tests: healthy ones that must raise no flag, and
knobs that provoke each pathology. Everything runs on CPU in a second or two."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer_hooks import watch
from trainer_hooks.demo import (PATHOLOGIES, DemoOptions, evaluate, load_digits_split, make_optimizer, model_for,
                                with_pathology)


def train_demo_cnn(logdir, detectors=None, *, epochs: int = 3, every: int = 2, **demo_options):
    """The demo's ConvNet on the digits (``DemoOptions`` fields change it: ``lr``,
    ``init_bias``, ``normalize``, ``train_size``, ``optimizer``, ``activation``, ``batchnorm``,
    ``depth``, ``init_scale``, ``output_scale``...), validation logged each
    epoch. Returns the closed handle (``mon.flags``, ``mon.run_id``)."""
    options = DemoOptions(epochs=epochs, logdir=str(logdir), every=every, **demo_options)
    torch.manual_seed(options.seed)
    x_train, y_train, x_val, y_val = load_digits_split(options)
    model = model_for(options)
    optimizer = make_optimizer(options, model)
    shuffle = torch.Generator().manual_seed(options.seed)
    with watch(model, optimizer, run="cnn", logdir=logdir, every=every, detectors=detectors) as mon:
        for epoch in range(epochs):
            model.train()
            for idx in torch.randperm(len(y_train), generator=shuffle).split(options.batch_size):
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                loss.backward()
                optimizer.step()
                mon.log(loss=loss)
            val_loss, val_acc = evaluate(model, x_val, y_val)
            mon.log(val_loss=val_loss, val_acc=val_acc, epoch=epoch)
    return mon


#: Epochs each demo pathology preset needs to show its flag, where one is not enough (the
#: plateau needs 200 logged steps; the overfitting preset brings its own 60, and early
#: stopping ends it).
PATHOLOGY_EPOCHS = {"plateau": 6, "dead_relu": 2, "overfitting": None}
PATHOLOGY_NAMES = tuple(PATHOLOGIES)


def pathology_options(name: str, **options):
    """The demo's options for pathology ``name``, as short as shows its flag."""
    epochs = PATHOLOGY_EPOCHS.get(name, 1)
    return with_pathology(name, **({"epochs": epochs} if epochs else {}), **options)


def make_mlp(inputs: int = 20, hidden: int = 64, classes: int = 4, activation=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), activation(), nn.Linear(hidden, hidden), activation(),
                         nn.Linear(hidden, classes))


def blobs(n: int = 512, inputs: int = 20, classes: int = 4, seed: int = 0, draw: int = 0,
          scale: float = 1.0, shift: float = 0.0):
    """A learnable classification problem: Gaussian clusters around random centres (fixed by
    ``seed``); ``draw`` picks an independent sample of the same problem (validation)."""
    centres = torch.randn(classes, inputs, generator=torch.Generator().manual_seed(seed)) * 2
    gen = torch.Generator().manual_seed(seed * 1000 + draw + 1)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centres[y] + torch.randn(n, inputs, generator=gen)
    return (x - x.mean(0)) / x.std(0) * scale + shift, y


def train_mlp(logdir, detectors=None, *, model=None, lr: float = 0.05, epochs: int = 5, batch: int = 32,
              every: int = 2, optimizer: str = "sgd", data=None, val_data=None, seed: int = 0):
    """A small MLP trained on :func:`blobs` (or ``data``), validation logged each epoch.
    Returns the closed handle."""
    torch.manual_seed(seed)
    model = model or make_mlp()
    x, y = data if data is not None else blobs(seed=seed)
    xv, yv = val_data if val_data is not None else blobs(n=256, seed=seed, draw=1)  # the same task, unseen points
    opt = (torch.optim.Adam(model.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9))
    shuffle = torch.Generator().manual_seed(seed)
    with watch(model, opt, run="mlp", logdir=logdir, every=every, detectors=detectors) as mon:
        for epoch in range(epochs):
            model.train()
            for idx in torch.randperm(len(y), generator=shuffle).split(batch):
                opt.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                mon.log(loss=loss)
            model.eval()
            with torch.no_grad():
                val_loss = F.cross_entropy(model(xv), yv).item()
            mon.log(val_loss=val_loss, epoch=epoch)
    return mon
