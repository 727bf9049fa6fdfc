"""A trial for the sweep tests: a small MLP on a linear regression, plain PyTorch, evaluated
after each epoch in two batches with a loss module in eval mode (``babysit run`` records it
as ``val_loss``). A learning rate of about 1 or more diverges; one of 1e-4 barely learns.

Each step takes ``--step-ms`` at least, as a real one does: the detectors that prune a
diverging trial run on babysit's writer thread, which a loaded host can keep off the CPU
for tens of milliseconds, and a sub-millisecond step would end all 48 steps before them."""
import argparse
import time

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--hidden", type=int, default=16)
parser.add_argument("--step-ms", type=float, default=5.0)
args = parser.parse_args()

torch.manual_seed(0)
x = torch.randn(640, 8)
y = x @ torch.randn(8, 1) + 0.1 * torch.randn(640, 1)
model = nn.Sequential(nn.Linear(8, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
criterion = nn.MSELoss()
for epoch in range(args.epochs):
    model.train()
    for i in range(0, 512, 32):
        optimizer.zero_grad()
        criterion(model(x[i:i + 32]), y[i:i + 32]).backward()
        optimizer.step()
        time.sleep(args.step_ms / 1000)
    model.eval()
    with torch.no_grad():
        val = [criterion(model(x[i:i + 64]), y[i:i + 64]).item() for i in (512, 576)]
    print(f"epoch {epoch + 1}: val_loss {sum(val) / 2!r} batches {val[0]!r} {val[1]!r}", flush=True)
