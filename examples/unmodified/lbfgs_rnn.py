"""Sine-wave prediction with a recurrent cell, trained by LBFGS (in the style of PyTorch's
time-sequence example): each optimizer step evaluates the closure up to 20 times, and each
evaluation runs the cell once per time step.

    babysit run examples/unmodified/lbfgs_rnn.py
"""
import torch
from torch import nn

torch.manual_seed(0)
t = torch.arange(0, 60, dtype=torch.float32)
waves = torch.sin((t + torch.randint(-40, 40, (16, 1))) / 4.0)
inputs, targets = waves[:, :-1], waves[:, 1:]


class Sequence(nn.Module):
    def __init__(self, hidden=24):
        super().__init__()
        self.cell = nn.LSTMCell(1, hidden)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        c = torch.zeros(x.shape[0], self.hidden)
        outputs = []
        for i in range(x.shape[1]):
            h, c = self.cell(x[:, i:i + 1], (h, c))
            outputs.append(self.head(h))
        return torch.cat(outputs, dim=1)


model = Sequence()
criterion = nn.MSELoss()
optimizer = torch.optim.LBFGS(model.parameters(), lr=0.8, max_iter=20)

for step in range(6):
    def closure():
        optimizer.zero_grad()
        loss = criterion(model(inputs), targets)
        loss.backward()
        return loss
    loss = optimizer.step(closure)
    print(f"step {step}: loss {loss.item():.5f}")
