"""Saves the whole model with ``torch.save(model)`` halfway through training, loads it back
with ``weights_only=True`` (allowing the script's own classes) and trains the copy on.

    babysit run examples/unmodified/pickle_model.py CHECKPOINT_DIR
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.body(x)


def train(model, steps):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


torch.manual_seed(0)
x = torch.randn(256, 4)
y = x.sum(1, keepdim=True)
checkpoint = Path(sys.argv[1] if len(sys.argv) > 1 else ".") / "model.pt"
model = Regressor()
print(f"first half: loss {train(model, 30):.4f}")
torch.save(model, checkpoint)
safe = [Regressor, nn.Sequential, nn.Linear, nn.ReLU]
with torch.serialization.safe_globals(safe):
    model = torch.load(checkpoint, weights_only=True)
print(f"second half: loss {train(model, 30):.4f}")
