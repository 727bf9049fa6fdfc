"""babysit as a Hugging Face ``TrainerCallback``: ``Trainer(..., callbacks=[BabysitCallback()])``.

It watches the Trainer's model with its optimizer (under accelerate's wrapper) when
training begins, records each optimizer step's training loss (the mean of the losses the
model returned for the step's micro-batches, read from its output's ``loss`` as it runs
forward in training mode; a model whose loss the Trainer computes itself is recorded at
the Trainer's logging steps instead), the evaluation metrics (``eval_loss``,
``eval_accuracy`` -> ``val_loss``, ``val_accuracy``) at the step they follow, and turns
babysit's stop into ``control.should_training_stop``. The learning rate comes from the
optimizer. The Trainer's hyper-parameters (learning rate, batch size, accumulation,
schedule, seed, ...) are the run's config.

Needs the ``huggingface`` extra: ``pip install 'babysit[huggingface]'``.
"""
from __future__ import annotations

from typing import Any, Mapping

try:
    from transformers import TrainerCallback
except ImportError as exc:
    raise ImportError("babysit's Hugging Face callback needs transformers: pip install 'babysit[huggingface]' "
                      "(or pip install transformers accelerate)") from exc

import torch
from torch.nn.modules import module as module_hooks

from trainer_hooks.handle import Monitor, unwrap, watch
from trainer_hooks.integrations.common import StepLoss, numbers_of, torch_optimizer, validation_name

#: TrainingArguments recorded as the run's config (what a sweep varies and a reader compares).
HYPERPARAMETERS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
                   "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                   "lr_scheduler_type", "warmup_ratio", "warmup_steps", "seed", "fp16", "bf16", "optim")


class BabysitCallback(TrainerCallback):
    """Watch a Hugging Face Trainer's training. ``options`` are :func:`trainer_hooks.watch`'s;
    the handle is :attr:`monitor` once training begins."""

    def __init__(self, **options: Any):
        self.options = options
        self.monitor: Monitor | None = None
        self._loss = StepLoss(divided=False)
        self._model = None
        self._hook = None
        self._losses_seen = False

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or self.monitor is not None:
            return
        config = {k: _plain(getattr(args, k)) for k in HYPERPARAMETERS if hasattr(args, k)}
        options = {**self.options, "config": {**config, **dict(self.options.get("config") or {})}}
        options.setdefault("run", type(unwrap(model)).__name__.lower())
        self.monitor = watch(model, torch_optimizer(optimizer) if optimizer is not None else None, **options)
        self._model = unwrap(model)
        # Process-wide and filtered, as babysit's own hooks are: nothing is set on the model.
        self._hook = module_hooks.register_module_forward_hook(self._forward)

    def _forward(self, module, args, output) -> None:
        if module is self._model and module.training and torch.is_grad_enabled():
            loss = output.get("loss") if isinstance(output, Mapping) else None
            if loss is not None:
                self._loss.add(loss)
                self._losses_seen = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.monitor is None:
            return
        loss = self._loss.take()
        if loss is not None:
            self.monitor.log_after_step(loss=loss)  # the step just taken
        self._stop_if_asked(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is not None and logs and not self._losses_seen and "loss" in logs:
            self.monitor.log_after_step(loss=float(logs["loss"]))  # averaged over the logging steps

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.monitor is None or not metrics:
            return
        named = {validation_name(k): v for k, v in numbers_of(metrics).items()}
        named = {k: v for k, v in named.items() if k is not None and not k.endswith(("_runtime", "_per_second"))}
        if named:
            self.monitor.log_after_step(**named, epoch=float(state.epoch or 0.0))
        self._stop_if_asked(control)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()

    def _stop_if_asked(self, control) -> None:
        if self.monitor.should_stop:
            control.should_training_stop = True


def _plain(value):
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)
