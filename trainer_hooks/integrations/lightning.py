"""babysit as a PyTorch Lightning callback: ``Trainer(callbacks=[BabysitCallback()])``.

It watches the LightningModule with the trainer's first optimizer when fitting starts,
records each optimizer step's training loss (the sum of the micro-batch losses Lightning
divided by ``accumulate_grad_batches``), the validation metrics the module logs
(``val_loss``, ``val/acc`` -> ``val_acc``) at the step they follow and the other epoch
metrics, and turns babysit's stop into ``trainer.should_stop`` (Lightning stops after the
batch; across ranks babysit's own agreement makes every rank stop at the same step). The
learning rate comes from the optimizer, as with ``watch``. An exception, Ctrl-C included,
ends the run as crashed or interrupted.

Needs the ``lightning`` extra: ``pip install 'babysit[lightning]'``.
"""
from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as exc:
        raise ImportError("babysit's Lightning callback needs PyTorch Lightning: pip install 'babysit[lightning]' "
                          "(or pip install lightning)") from exc

from trainer_hooks.endings import ending
from trainer_hooks.handle import Monitor, watch
from trainer_hooks.integrations.common import StepLoss, numbers_of, torch_optimizer, validation_name


class BabysitCallback(Callback):
    """Watch a Lightning fit. ``options`` are :func:`trainer_hooks.watch`'s (``run``,
    ``config``, ``every``, ``logdir``, ``server``, ``dashboard``, ``early_stopping``, ...);
    the module's ``hparams`` join ``config``. The handle is :attr:`monitor` once fitting starts."""

    def __init__(self, **options: Any):
        self.options = options
        self.monitor: Monitor | None = None
        self._loss = StepLoss(divided=True)
        self._global_step = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        optimizer = torch_optimizer(trainer.optimizers[0]) if trainer.optimizers else None
        config = {**_hparams(pl_module), **dict(self.options.get("config") or {})}
        options = {**self.options, "config": config}
        options.setdefault("run", type(pl_module).__name__.lower())
        self.monitor = watch(pl_module, optimizer, **options)
        self._global_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.monitor is not None:
            self.monitor.batch_starts(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None:
            return
        self._loss.add(outputs.get("loss") if isinstance(outputs, dict) else outputs)
        if trainer.global_step != self._global_step:  # this batch ended an optimizer step
            self._global_step = trainer.global_step
            loss = self._loss.take()
            if loss is not None:
                self.monitor.log(loss=loss)
        self._stop_if_asked(trainer)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        metrics = {validation_name(k): v for k, v in numbers_of(trainer.callback_metrics).items()}
        metrics = {k: v for k, v in metrics.items() if k is not None}
        if metrics:
            self.monitor.log_after_step(**metrics, epoch=trainer.current_epoch)
        self._stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.monitor is None:
            return
        metrics = {k.replace("/", "_"): v for k, v in numbers_of(trainer.callback_metrics).items()
                   if validation_name(k) is None and k not in ("loss", "epoch")}
        if metrics:
            self.monitor.log_after_step(**metrics)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.close(*ending(type(exception), exception))

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def _stop_if_asked(self, trainer) -> None:
        if self.monitor.should_stop and not trainer.should_stop:
            trainer.should_stop = True


def _hparams(pl_module) -> dict:
    hparams = getattr(pl_module, "hparams", None)
    try:
        return {str(k): v for k, v in dict(hparams or {}).items()
                if isinstance(v, (bool, int, float, str, type(None)))}
    except (TypeError, ValueError):
        return {}
