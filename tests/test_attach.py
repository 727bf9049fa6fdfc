"""trainer_hooks.attach in this process: what ``babysit run`` finds in shapes the example
scripts do not cover (a GradScaler, an evaluation loss returned by the model, nothing to
find), with real tiny trainings."""
from __future__ import annotations

import torch
from torch import nn

import monitor
from trainer_hooks.attach import Attacher


def attacher(tmp_path, lines=None):
    return Attacher("attached", {"script": "test"}, {"logdir": tmp_path, "every": 1},
                    say=(lines.append if lines is not None else None))


def test_through_a_grad_scaler_the_loss_is_recorded_before_scaling(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    attached, losses = attacher(tmp_path), []
    try:
        for _ in range(4):
            loss = nn.functional.mse_loss(model(x), y)
            losses.append(loss.item())
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    finally:
        attached.close()
    run = monitor.load_run("attached", logdir=tmp_path)
    assert list(run.series("loss").round(5)) == [round(v, 5) for v in losses]
    assert torch.amp.GradScaler.scale.__name__ == "scale"  # the wrapper is gone


class ReturnsLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, y):
        logits = self.fc(x)
        return logits, nn.functional.cross_entropy(logits, y)


def test_an_evaluation_loss_the_model_returns_under_no_grad_in_eval_mode_is_the_val_loss(tmp_path):
    torch.manual_seed(0)
    model = ReturnsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 3), torch.randint(0, 2, (32,))
    attached, evaluations = attacher(tmp_path), []
    try:
        for _ in range(3):
            model.train()
            for _ in range(5):
                _, loss = model(x, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                values = [model(x[i:i + 8], y[i:i + 8])[1].item() for i in range(0, 32, 8)]
            evaluations.append(sum(values) / len(values))
            with torch.no_grad():
                model.train()
                model(x, y)  # in training mode: not an evaluation
    finally:
        attached.close()
    run = monitor.load_run("attached", logdir=tmp_path)
    assert list(run.series("val_loss").round(6)) == [round(v, 6) for v in evaluations]
    assert list(run.series("val_loss").index) == [4, 9, 14]  # at the step the evaluation followed
    assert len(run.series("loss")) == 15


def test_an_optimizer_of_parameters_no_module_owns_is_said_in_one_line_and_training_runs_on(tmp_path):
    w = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    lines = []
    attached = attacher(tmp_path, lines)
    try:
        for _ in range(3):
            loss = (w - 1).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        attached.close()
    assert w.detach().sub(1).abs().max() < 0.6  # it trained
    assert len(lines) == 2 and "SGD steps parameters of no module" in lines[0]
    assert "found no model being trained" in lines[1]


def test_a_bug_in_the_bookkeeping_stops_babysit_not_the_training(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lines = []
    attached = attacher(tmp_path, lines)

    def broken(*args):
        raise RuntimeError("a bug of ours")
    attached._adopt = broken
    try:
        for _ in range(3):
            loss = model(torch.ones(4, 2)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        attached.close()
    assert lines == ["internal error (RuntimeError: a bug of ours); babysit stops watching, the script runs on"]
    assert torch.autograd.backward.__module__ == "torch.autograd"
