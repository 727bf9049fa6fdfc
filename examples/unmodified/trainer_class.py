"""The optimizer is made inside a small trainer class, at the start of ``Trainer.fit``
(as libraries do): the script never holds it.

    babysit run examples/unmodified/trainer_class.py
"""
import torch
import torch.nn.functional as F
from torch import nn


class Trainer:
    def __init__(self, model, lr=0.1, steps=80):
        self.model, self.lr, self.steps = model, lr, steps

    def fit(self, x, y):
        optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        for _ in range(self.steps):
            idx = torch.randint(0, len(x), (64,))
            loss = F.cross_entropy(self.model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()


torch.manual_seed(0)
x = torch.randn(1000, 10)
y = (x[:, 0] * x[:, 1] > 0).long()
model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
print(f"final loss {Trainer(model).fit(x, y):.4f}")
