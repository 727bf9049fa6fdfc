"""The diagnosis benchmark's zoo: small, realistic trainings with measured ground truth.

Each :class:`ZooEntry` is a training as a user would write it (a family, an optimizer, a
schedule, a step count) and the pathology it is meant to have (``primary``; None for a
healthy run), with the healthy ``twin`` it differs from in one setting. What a run really
had is not taken from the entry: :mod:`zoo.measure` measures it with raw torch and
:mod:`zoo.truth` derives it, and ``benchmarks/diagnosis.py --check-zoo`` checks that a
healthy run measures nothing and a sick one measures its primary kind. Nobody tuned
babysit's detectors on these runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import trainings as t


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    build: Callable
    primary: str | None = None  # babysit's flag kind the run is meant to show; None: healthy
    at_init: bool = False  # the primary problem is there from step 0 (init or data)
    twin: str | None = None  # the healthy run it differs from in one setting
    change: str = ""  # that setting, in words
    quick: bool = False  # part of the CI short form (--quick)
    kwargs: dict = field(default_factory=dict)

    def training(self):
        return self.build(**self.kwargs)

    @property
    def optimizer(self) -> str:
        return self.kwargs.get("optimizer", _default(self.build, "optimizer"))

    @property
    def schedule(self) -> str:
        return self.kwargs.get("schedule", _default(self.build, "schedule")) or "constant"


def _default(build, name):
    import inspect
    return inspect.signature(build).parameters[name].default


def entry(name, family, build, primary=None, *, at_init=False, twin=None, change="", quick=False, **kwargs):
    return ZooEntry(name, family, build, primary, at_init, twin, change, quick, kwargs)


ZOO: tuple[ZooEntry, ...] = (
    # --- healthy runs (each the twin of one or more pathological runs below)
    entry("mlp-digits", "mlp", t.mlp_digits, quick=True, schedule="step"),
    entry("mlp-digits-adam-cosine", "mlp", t.mlp_digits, optimizer="adam", schedule="cosine", epochs=10),
    entry("mlp-digits-tanh", "mlp", t.mlp_digits, activation="tanh", quick=True),
    entry("mlp-blobs", "mlp", t.mlp_blobs, schedule="step"),
    entry("mlp-deep-relu", "mlp", t.mlp_blobs, quick=True, hidden=(32,) * 8, kaiming=1.0, lr=0.02, epochs=8),
    entry("mlp-deep-relu-adam", "mlp", t.mlp_blobs, optimizer="adam", hidden=(32,) * 8, kaiming=1.0, epochs=8),
    entry("cnn-digits", "cnn", t.cnn_digits, quick=True, schedule="cosine"),
    entry("cnn-images-warmup", "cnn", t.cnn_images, schedule="warmup"),
    entry("regression", "regression", t.regression, activation="tanh", schedule="cosine"),
    entry("lstm-text", "lstm", t.lstm),
    entry("lstm-text-sgd", "lstm", t.lstm, optimizer="sgd", lr=0.3),
    entry("gpt-text", "transformer", t.gpt),
    entry("gpt-text-sgd", "transformer", t.gpt, optimizer="sgd", lr=0.3),
    # --- long healthy runs: >= 5,000 steps, schedules, noisy small batches, converged ones
    entry("long-mlp-blobs-batch4-cosine", "mlp", t.mlp_blobs, schedule="cosine", batch=4, epochs=20, lr=0.01),
    entry("long-regression-batch8-cyclical", "regression", t.regression, optimizer="sgd", lr=0.01,
          schedule="cyclical", batch=8, epochs=20),
    entry("long-cnn-digits-batch8-step", "cnn", t.cnn_digits, optimizer="adamw", schedule="step", batch=8,
          epochs=28),
    entry("long-mlp-blobs-converged", "mlp", t.mlp_blobs, optimizer="adam", batch=16, epochs=80),
    entry("long-mlp-digits-converged", "mlp", t.mlp_digits, batch=20, epochs=100),
    # --- pathologies, each beside its healthy twin
    entry("mlp-digits-dead-bias", "mlp", t.mlp_digits, "dead_relu", at_init=True, twin="mlp-digits",
          change="hidden biases -4", quick=True, schedule="step", bias=-4.0),
    entry("mlp-blobs-dead-lr", "mlp", t.mlp_blobs, "dead_relu", twin="mlp-blobs", change="lr 1.0 (20x)",
          schedule="step", lr=1.0),
    entry("mlp-digits-tanh-saturated", "mlp", t.mlp_digits, "saturation", at_init=True, twin="mlp-digits-tanh",
          change="hidden weights x10", quick=True, activation="tanh", weight_scale=10.0),
    entry("regression-tanh-saturated", "regression", t.regression, "saturation", at_init=True, twin="regression",
          change="hidden weights x10", activation="tanh", weight_scale=10.0, schedule="cosine"),
    entry("mlp-deep-sigmoid", "mlp", t.mlp_blobs, "vanishing_gradient", at_init=True, twin="mlp-deep-relu",
          change="sigmoid instead of ReLU", quick=True, hidden=(32,) * 8, activation="sigmoid", lr=0.02, epochs=8),
    entry("mlp-deep-relu-3x-kaiming", "mlp", t.mlp_blobs, "exploding_gradient", at_init=True,
          twin="mlp-deep-relu-adam", change="init std 3x Kaiming", quick=True, optimizer="adam", hidden=(32,) * 8,
          kaiming=3.0, epochs=8),
    entry("mlp-digits-raw", "mlp", t.mlp_digits, "input_not_normalized", at_init=True, twin="mlp-digits",
          change="raw pixels 0..16", quick=True, schedule="step", normalize=False),
    entry("cnn-images-raw", "cnn", t.cnn_images, "input_not_normalized", at_init=True, twin="cnn-images-warmup",
          change="raw pixels 0..255", schedule="warmup", normalize=False),
    entry("mlp-blobs-column-thousands", "mlp", t.mlp_blobs, "input_not_normalized", at_init=True,
          twin="mlp-blobs", change="one column in thousands (and Adam)", schedule="step", optimizer="adam",
          column_scale=1000.0),
    entry("mlp-digits-output-x50", "mlp", t.mlp_digits, "initial_loss", at_init=True, twin="mlp-digits",
          change="output layer x50", quick=True, schedule="step", output_scale=50.0),
    entry("cnn-digits-output-x50", "cnn", t.cnn_digits, "initial_loss", at_init=True, twin="cnn-digits",
          change="output layer x50", schedule="cosine", output_scale=50.0),
    entry("mlp-digits-overfit", "mlp", t.mlp_digits, "overfitting", twin="long-mlp-digits-converged",
          change="100 training images", quick=True, train_size=100, batch=20, epochs=100),
    entry("regression-overfit", "regression", t.regression, "overfitting", twin="regression",
          change="64 training points", activation="tanh", n=64, batch=16, epochs=300, schedule="cosine"),
    entry("regression-sgd-lr-high", "regression", t.regression, "divergence", twin="regression",
          change="SGD lr far too high", activation="tanh", optimizer="sgd", lr=0.3, epochs=6, schedule="cosine"),
    entry("mlp-digits-nan", "mlp", t.mlp_digits, "divergence", twin="mlp-digits", change="lr 20 (400x): NaN",
          quick=True, schedule="step", lr=20.0),
    entry("lstm-text-sgd-lr30x", "lstm", t.lstm, "divergence", twin="lstm-text-sgd", change="lr 30x",
          optimizer="sgd", lr=9.0),
    entry("gpt-text-sgd-lr30x", "transformer", t.gpt, "divergence", twin="gpt-text-sgd", change="lr 30x",
          optimizer="sgd", lr=9.0),
    entry("gpt-text-lr300x", "transformer", t.gpt, "divergence", twin="gpt-text", change="lr 300x", lr=0.9),
    entry("mlp-digits-plateau", "mlp", t.mlp_digits, "plateau", twin="mlp-digits", change="lr 1000x too low",
          quick=True, schedule="step", lr=5e-5),
    entry("cnn-images-plateau", "cnn", t.cnn_images, "plateau", twin="cnn-images-warmup", change="lr 1000x too low",
          schedule="warmup", lr=1e-6),
)

BY_NAME = {e.name: e for e in ZOO}
QUICK = tuple(e.name for e in ZOO if e.quick)


def run_entry(name: str, *, logdir: str, every: int | None = None, early_stopping: bool = False) -> dict:
    """Train zoo entry ``name`` watched by babysit (in this process; one torch thread, as
    a worker of the benchmark) and return :func:`zoo.loop.run`'s result with the entry's
    declarations beside it."""
    import torch

    from .loop import run

    torch.set_num_threads(1)  # two workers on two cores: one thread each
    e = BY_NAME[name]
    result = run(e.training(), name=e.name, logdir=logdir, every=every, early_stopping=early_stopping)
    return {**result, "family": e.family, "primary": e.primary, "at_init": e.at_init, "twin": e.twin,
            "change": e.change, "optimizer": e.optimizer, "schedule": e.schedule}
