"""The Lightning callback, training a tiny model through Lightning.

What the callback records is checked against what the framework itself computed (an
oracle callback beside ours, or the Trainer's own log history); a stop babysit asks for
must end training through the framework's own mechanism.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import monitor
from frameworks import framework

# The frameworks' own warnings under this torch, about their code, not ours.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
]

# --------------------------------------------------------------------------- Lightning

L = framework("lightning.pytorch", "lightning")


class Classifier(L.LightningModule):
    """Calls its submodule, not itself: babysit must sample the step from the batch."""

    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class Oracle(L.Callback):
    """What Lightning itself hands over: each batch's loss output and each validation's metrics."""

    def __init__(self, stop_at: int | None = None, babysit=None):
        self.losses, self.val_losses, self.stop_at, self.babysit = [], [], stop_at, babysit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())
        if self.stop_at is not None and trainer.global_step == self.stop_at:
            self.babysit.monitor.stop("enough", by="test")

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_losses.append(trainer.callback_metrics["val_loss"].item())


def _loaders():
    torch.manual_seed(0)
    x, y = torch.randn(96, 8), torch.randint(0, 3, (96,))
    data = torch.utils.data.TensorDataset(x, y)
    return (torch.utils.data.DataLoader(data, batch_size=16, shuffle=True),
            torch.utils.data.DataLoader(data, batch_size=48))


def _fit(tmp_path, *callbacks, **trainer_options):
    from lightning.pytorch import Trainer

    train, val = _loaders()
    trainer = Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                      default_root_dir=tmp_path, **trainer_options)
    trainer.fit(Classifier(), train, val)
    return trainer


def test_the_lightning_callback_records_each_steps_loss_the_validation_metrics_and_the_layers(tmp_path):
    from trainer_hooks.integrations.lightning import BabysitCallback

    babysit, oracle = BabysitCallback(logdir=tmp_path, run="lit", every=1), Oracle()
    _fit(tmp_path, babysit, oracle)
    run = monitor.load_run("lit", logdir=tmp_path)
    loss = run.series("loss")
    assert list(loss.index) == list(range(18))  # 6 batches, 3 epochs
    assert loss.tolist() == pytest.approx(oracle.losses, rel=1e-6)
    assert run.series("val_loss").tolist() == pytest.approx(oracle.val_losses, rel=1e-6)
    assert list(run.series("val_loss").index) == [5, 11, 17]
    assert len(run.series("val_acc")) == 3
    stats = run.layer_stats
    assert {"net.0", "net.1", "net.2"} <= set(stats[stats.signal == "activation"].layer)
    assert set(stats[stats.signal == "activation"].step) == set(range(18))  # sampled from the batch
    assert {"net.0.weight", "net.2.bias"} <= set(stats[stats.signal == "param_grad"].layer)
    assert run.info["config"]["lr"] == 0.1
    assert run.series("lr").iloc[0] == 0.1
    assert run.status.state.iloc[-1] == "finished"


def test_with_accumulation_the_lightning_loss_of_a_step_is_its_micro_batches_mean(tmp_path):
    from trainer_hooks.integrations.lightning import BabysitCallback

    babysit, oracle = BabysitCallback(logdir=tmp_path, run="lit-acc"), Oracle()
    _fit(tmp_path, babysit, oracle, accumulate_grad_batches=2)
    loss = monitor.load_run("lit-acc", logdir=tmp_path).series("loss")
    assert list(loss.index) == list(range(9))
    pairs = [oracle.losses[i] + oracle.losses[i + 1] for i in range(0, 18, 2)]  # each already halved by Lightning
    assert loss.tolist() == pytest.approx(pairs, rel=1e-6)


def test_a_babysit_stop_ends_the_lightning_fit_through_trainer_should_stop(tmp_path):
    from trainer_hooks.integrations.lightning import BabysitCallback

    babysit = BabysitCallback(logdir=tmp_path, run="lit-stop")
    trainer = _fit(tmp_path, Oracle(stop_at=4, babysit=babysit), babysit)  # asked before babysit looks
    assert trainer.global_step == 4
    run = monitor.load_run("lit-stop", logdir=tmp_path)
    assert run.status.state.iloc[-1] == "stopped" and run.status.by.iloc[-1] == "test"


def test_an_exception_in_a_lightning_fit_ends_the_run_crashed(tmp_path):
    from trainer_hooks.integrations.lightning import BabysitCallback

    class Breaks(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                raise RuntimeError("out of memory, say")

    with pytest.raises(RuntimeError, match="out of memory"):
        _fit(tmp_path, BabysitCallback(logdir=tmp_path, run="lit-crash"), Breaks())
    end = monitor.load_run("lit-crash", logdir=tmp_path).status.iloc[-1]
    assert end.state == "crashed" and "out of memory, say" in end.reason


def test_a_missing_framework_is_named_with_the_extra_to_install(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['lightning'] = None; sys.modules['pytorch_lightning'] = None\n"
            "import trainer_hooks.integrations.lightning")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "pip install 'babysit[lightning]'" in done.stderr.splitlines()[-1]
