"""Training that crashes: a bug in the data pipeline raises at step 25.

    babysit run examples/unmodified/crash_midway.py     # exits with status 1, as python does
"""
import torch
import torch.nn.functional as F
from torch import nn


def batches():
    for step in range(100):
        if step == 25:
            raise ValueError("corrupt record at step 25")
        x = torch.randn(32, 6)
        yield x, x.sum(1, keepdim=True)


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
for step, (x, y) in enumerate(batches()):
    loss = F.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 10 == 0:
        print(f"step {step}: loss {loss.item():.4f}")
