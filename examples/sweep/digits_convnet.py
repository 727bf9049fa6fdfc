"""The demo's ConvNet (conv-BN-ReLU twice, max-pool, a hidden layer of 64) on scikit-learn's
8x8 digits, as a plain PyTorch script with no line of babysit in it: the trial of a sweep.

    python examples/sweep/digits_convnet.py --lr 0.05 --epochs 4
    babysit sweep --space "lr=loguniform(1e-4,10)" --trials 8 -- \\
        python examples/sweep/digits_convnet.py --lr {lr} --epochs 4

It evaluates a held-out split after every epoch with a loss module under no_grad in eval
mode, which ``babysit run`` records as ``val_loss``: the sweep's objective.
"""
import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--weight-decay", type=float, default=0.0)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

torch.manual_seed(args.seed)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
y = torch.tensor(digits.target)
order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
val, train = order[:360], order[360:]
mean, std = x[train].mean(), x[train].std()
x = (x - mean) / std


def block(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


model = nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
criterion = nn.CrossEntropyLoss()
for epoch in range(args.epochs):
    model.train()
    for batch in torch.randperm(len(train)).split(args.batch_size):
        images, labels = x[train[batch]], y[train[batch]]
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():  # in batches, as a DataLoader gives them
        losses, right = [], 0
        for batch in val.split(args.batch_size):
            logits = model(x[batch])
            losses.append(criterion(logits, y[batch]))
            right += (logits.argmax(1) == y[batch]).sum().item()
    print(f"epoch {epoch + 1}: loss {loss.item():.4f}  val_loss {torch.stack(losses).mean().item():.4f}  "
          f"val_acc {right / len(val):.3f}", flush=True)
