"""Logistic regression trained by hand: no optimizer, the weights updated with
``p.data.add_`` and the gradients zeroed by hand. The model is one nn.Linear.

    babysit run examples/unmodified/manual_sgd.py
"""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
x = torch.randn(400, 20)
y = (x[:, :5].sum(1) > 0).long()
model = nn.Linear(20, 2)
lr = 0.5

for step in range(60):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
        p.grad.zero_()
    if step % 20 == 0:
        print(f"step {step}: loss {loss.item():.4f}")
print(f"accuracy {(model(x).argmax(1) == y).float().mean().item():.3f}")
