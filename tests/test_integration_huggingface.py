"""The Hugging Face callback, training a tiny BERT through the Trainer.

What the callback records is checked against what the Trainer itself computed (its own
log history); a stop babysit asks for must end training through the Trainer's control.
"""
from __future__ import annotations

import pytest
import torch

import monitor
from frameworks import framework

transformers = framework("transformers", "huggingface")

class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 40, (n, 6), generator=g)
        self.labels = (self.ids[:, 0] > 20).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": self.labels[i]}


def _hf_train(tmp_path, *callbacks, **arguments):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=8, per_device_eval_batch_size=16,
        num_train_epochs=2, learning_rate=1e-3, logging_steps=1, eval_strategy="epoch", save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, **arguments)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(16),
                                   callbacks=list(callbacks))
    trainer.train()
    return trainer


def test_the_hugging_face_callback_records_each_steps_loss_the_evaluation_and_the_layers(tmp_path):
    from trainer_hooks.integrations.huggingface import BabysitCallback

    trainer = _hf_train(tmp_path, BabysitCallback(logdir=tmp_path, run="hf", every=1))
    run = monitor.load_run("hf", logdir=tmp_path)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]  # the Trainer's own, each step
    loss = run.series("loss")
    assert list(loss.index) == list(range(8))  # 32 examples in batches of 8, two epochs
    assert loss.tolist() == pytest.approx([entry["loss"] for entry in logged], rel=1e-4, abs=1e-4)
    evaluated = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert run.series("val_loss").tolist() == pytest.approx(evaluated, rel=1e-6)
    assert list(run.series("val_loss").index) == [3, 7]
    stats = run.layer_stats
    assert "classifier" in set(stats[stats.signal == "activation"].layer)
    assert "classifier.weight" in set(stats[stats.signal == "param_grad"].layer)
    assert run.info["config"]["learning_rate"] == 1e-3 and run.info["config"]["per_device_train_batch_size"] == 8
    assert run.status.state.iloc[-1] == "finished"


def test_a_babysit_stop_ends_hugging_face_training_through_its_control(tmp_path):
    from trainer_hooks.integrations.huggingface import BabysitCallback

    babysit = BabysitCallback(logdir=tmp_path, run="hf-stop")

    class StopAtThree(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 3:
                babysit.monitor.stop("enough", by="test")

    trainer = _hf_train(tmp_path, StopAtThree(), babysit)
    assert trainer.state.global_step == 4  # the step under way finishes, then the Trainer stops
    run = monitor.load_run("hf-stop", logdir=tmp_path)
    assert run.status.state.iloc[-1] == "stopped" and len(run.series("loss")) == 4


