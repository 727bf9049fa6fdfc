"""Regression with F.mse_loss, SGD with momentum and a StepLR schedule.

    babysit run examples/unmodified/mse_with_scheduler.py
"""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
x = torch.randn(512, 8)
y = x @ torch.randn(8, 1) + 0.1 * torch.randn(512, 1)

model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5)

for step in range(120):
    idx = torch.randint(0, len(x), (32,))
    loss = F.mse_loss(model(x[idx]), y[idx])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    if step % 40 == 0:
        print(f"step {step}: mse {loss.item():.4f}, lr {scheduler.get_last_lr()[0]:.4f}")
print(f"final mse {F.mse_loss(model(x), y).item():.4f}")
