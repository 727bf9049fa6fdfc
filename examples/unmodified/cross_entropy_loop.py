"""A plain classification loop: nn.CrossEntropyLoss, Adam, a DataLoader with two worker
processes, and a validation pass under no_grad in eval mode each epoch.

    python examples/unmodified/cross_entropy_loop.py --epochs 3
    babysit run examples/unmodified/cross_entropy_loop.py --epochs 3
"""
import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--workers", type=int, default=2)
args = parser.parse_args()

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
x = (x - x.mean()) / x.std()
y = torch.tensor(digits.target)
train = DataLoader(TensorDataset(x[:1500], y[:1500]), batch_size=64, shuffle=True, num_workers=args.workers,
                   generator=torch.Generator().manual_seed(0))
val = DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=100)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def main():
    model = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        model.eval()
        total, correct, losses = 0, 0, []
        with torch.no_grad():
            for images, labels in val:
                logits = model(images)
                losses.append(criterion(logits, labels).item())
                correct += (logits.argmax(1) == labels).sum().item()
                total += len(labels)
        print(f"epoch {epoch}: train loss {loss.item():.4f}, val loss {sum(losses) / len(losses):.4f}, "
              f"val acc {correct / total:.3f}")


if __name__ == "__main__":
    main()
