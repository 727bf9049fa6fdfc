"""Two models in one script: an autoencoder, then a classifier on its codes, each with its
own optimizer (the encoder is only used, not trained, by the second).

    babysit run examples/unmodified/two_models.py
"""
import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
x = torch.randn(600, 16)
y = (x[:, :4].sum(1) > 0).long()


class AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
        self.decoder = nn.Linear(8, 16)

    def forward(self, x):
        return self.decoder(self.encoder(x))


autoencoder = AutoEncoder()
optimizer = torch.optim.Adam(autoencoder.parameters(), lr=1e-2)
for _ in range(50):
    loss = F.mse_loss(autoencoder(x), x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"autoencoder: reconstruction {loss.item():.4f}")

classifier = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
optimizer = torch.optim.SGD(classifier.parameters(), lr=0.1)
for _ in range(30):
    with torch.no_grad():
        codes = autoencoder.encoder(x)
    loss = F.cross_entropy(classifier(codes), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"classifier: loss {loss.item():.4f}")
