"""The zoo's models, small and built the way tutorials build them (PyTorch's default
init unless a run asks for another); the keyword arguments make the sick variants."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def mlp(inputs: int, hidden: list[int], outputs: int, *, activation: str = "relu", kaiming: float | None = None,
        bias: float | None = None, weight_scale: float = 1.0, output_scale: float = 1.0) -> nn.Sequential:
    """Linear-activation blocks then a linear output. ``kaiming`` re-initialises every
    hidden Linear with Kaiming-normal std times this factor (biases zero); ``bias`` fills
    the hidden biases; ``weight_scale`` multiplies the hidden weights; ``output_scale``
    multiplies the output layer's weights."""
    layers: list[nn.Module] = []
    sizes = [inputs, *hidden]
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(sizes[-1], outputs))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for layer in model[:-1]:
            if not isinstance(layer, nn.Linear):
                continue
            if kaiming is not None:
                nn.init.normal_(layer.weight, std=kaiming * math.sqrt(2.0 / layer.in_features))
                nn.init.zeros_(layer.bias)
            layer.weight.mul_(weight_scale)
            if bias is not None:
                layer.bias.fill_(bias)
        model[-1].weight.mul_(output_scale)
    return model


def cnn(channels: int, size: int, classes: int, *, widths: tuple[int, int] = (8, 16),
        output_scale: float = 1.0) -> nn.Sequential:
    """Conv-BatchNorm-ReLU twice, max-pool, a hidden Linear-ReLU of 32, then the output."""
    w1, w2 = widths
    model = nn.Sequential(
        nn.Conv2d(channels, w1, 3, padding=1), nn.BatchNorm2d(w1), nn.ReLU(),
        nn.Conv2d(w1, w2, 3, padding=1), nn.BatchNorm2d(w2), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(w2 * (size // 2) ** 2, 32), nn.ReLU(),
        nn.Linear(32, classes))
    with torch.no_grad():
        model[-1].weight.mul_(output_scale)
    return model


class CharLSTM(nn.Module):
    """Character-level next-token model: embedding, one LSTM layer, linear head."""

    def __init__(self, vocab: int, embed: int = 16, hidden: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.head(out)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a GELU MLP (nanoGPT's)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.gelu = nn.GELU()
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.out(self.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Token and position embeddings, two blocks, a final LayerNorm and a linear head."""

    def __init__(self, vocab: int, block: int, dim: int = 32, heads: int = 2, layers: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(block, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        for module in self.modules():  # nanoGPT's init: normal(0, 0.02) weights, zero biases
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x):
        positions = torch.arange(x.shape[1], device=x.device)
        return self.head(self.ln(self.blocks(self.tok(x) + self.pos(positions))))
