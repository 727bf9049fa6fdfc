"""A model that returns ``(logits, loss)`` (the style of nanoGPT and Hugging Face models),
with gradient accumulation over 4 micro-batches and gradient clipping.

    babysit run examples/unmodified/logits_and_loss.py
"""
import torch
import torch.nn.functional as F
from torch import nn

ACCUMULATE = 4
torch.manual_seed(0)
vocab, block = 32, 16
text = torch.randint(0, vocab, (4096,))
text[1::2] = (text[::2] + 1) % vocab  # every other token follows from the one before


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, 32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, vocab)

    def forward(self, idx, targets=None):
        h = self.embed(idx)
        h = self.norm(h + self.mlp(h))
        logits = self.head(h)
        loss = None if targets is None else F.cross_entropy(logits.view(-1, vocab), targets.view(-1))
        return logits, loss


def batch():
    starts = torch.randint(0, len(text) - block - 1, (8,))
    x = torch.stack([text[s:s + block] for s in starts])
    y = torch.stack([text[s + 1:s + block + 1] for s in starts])
    return x, y


model = TinyLM()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
for step in range(40):
    for _ in range(ACCUMULATE):
        x, y = batch()
        logits, loss = model(x, y)
        (loss / ACCUMULATE).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if step % 10 == 0:
        print(f"step {step}: loss {loss.item():.4f}")
