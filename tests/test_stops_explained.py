"""A run that stops carries the flag that says why, whichever way it stopped (issue 10,
item 4): early stopping that ends an overfitting run leaves the ``overfitting`` flag with
its evidence, and a validation metric gone non-finite leaves ``divergence``; each is stored
before the run's end."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from monitor.early_stopping import EarlyStopping, StopCause
from monitor.store import RunStore
from trainer_hooks import watch



def overlapping_blobs(n: int, draw: int, seed: int = 3):
    """Four Gaussian classes whose centres sit half a noise std apart in 20 dimensions:
    learnable, but a few dozen points are memorised long before the task is."""
    centres = torch.randn(4, 20, generator=torch.Generator().manual_seed(seed)) * 0.5
    gen = torch.Generator().manual_seed(seed * 1000 + draw + 1)
    y = torch.randint(0, 4, (n,), generator=gen)
    return centres[y] + torch.randn(n, 20, generator=gen), y


def train_until_stopped(tmp_path, *, train_size: int, epochs: int, poison_at: int | None = None):
    """An MLP on a few points of the blobs task, validated each epoch on unseen points,
    with early stopping on val_loss; ``poison_at``: the epoch whose val_loss is NaN."""
    torch.manual_seed(0)
    x, y = overlapping_blobs(train_size, draw=0)
    xv, yv = overlapping_blobs(256, draw=1)
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Linear(128, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    stopping = EarlyStopping(monitor="val_loss", patience=5)
    with watch(model, opt, run="stops", logdir=tmp_path, early_stopping=stopping) as mon:
        for epoch in range(epochs):
            for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).split(8):
                opt.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
                mon.log(loss=loss)
            with torch.no_grad():
                val_loss = F.cross_entropy(model(xv), yv).item()
            mon.log(val_loss=math.nan if epoch == poison_at else val_loss, epoch=epoch)
            if mon.should_stop:
                break
    return mon


def stored_kinds(tmp_path, run) -> list[str]:
    with RunStore(tmp_path) as store:
        return [e.data.kind if e.kind.value == "flag" else e.kind.value for e in store.events(run)]


def test_early_stopping_that_ends_an_overfitting_run_leaves_the_overfitting_flag_before_the_end(tmp_path):
    mon = train_until_stopped(tmp_path, train_size=24, epochs=200)
    assert mon.stop_reason.cause is StopCause.EARLY_STOPPING
    [flag] = [f for f in mon.flags if f.kind == "overfitting"]
    evidence = flag.evidence
    assert evidence["value"] > evidence["best"] and evidence["train_loss"] < evidence["train_loss_at_best"]
    kinds = stored_kinds(tmp_path, mon.run_id)
    assert kinds.index("overfitting") < kinds.index("run_end")


def test_a_validation_metric_gone_non_finite_stops_the_run_and_leaves_the_divergence_flag(tmp_path):
    mon = train_until_stopped(tmp_path, train_size=256, epochs=6, poison_at=3)
    assert mon.stop_reason.cause is StopCause.EARLY_STOPPING and mon.step > 0
    assert [f.kind for f in mon.flags].count("divergence") == 1
    kinds = stored_kinds(tmp_path, mon.run_id)
    assert kinds.index("divergence") < kinds.index("run_end")
