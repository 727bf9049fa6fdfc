"""The benchmarks' training workloads, defined once for overhead.py and vs_peers.py.

Each is a model, its optimizer and four fixed batches (inputs, integer targets) for a
cross-entropy loss; a step is zero_grad, forward, loss, backward, optimizer step.

* The CPU reference (issue 2, item 7), batches of 64, SGD with momentum 0.9: ``cnn`` (two
  conv-ReLU-pool blocks on synthetic 3x32x32 images, then a 2048-128-10 MLP head) and
  ``mlp`` (784 -> 512 five times with ReLU, -> 10).
* Issue 15's further shapes, sized to steps of tens of ms on 2 cores: a causal
  ``transformer`` (vocabulary 256, learned positions, 2 pre-norm blocks of width 128 with 4
  heads and a 4x GELU MLP, 8 sequences of 64 tokens, AdamW) and an ``lstm`` (embedding 256
  -> 128, 2 layers of 256, 16 sequences of 32 tokens, Adam), both predicting the next of
  random tokens.
* The GPU sizes of issue 15, item 3 (for ``--device cuda``): ``resnet18`` (the ResNet-18 of
  He et al. 2016 for 32x32 inputs: 3x3 stem, four stages of two basic blocks, 64 to 512
  channels, 11.2M parameters, batches of 128, SGD) and ``gpt2`` (GPT-2 small's shape:
  vocabulary 50,257, 1,024 positions, 12 blocks of width 768 with 12 heads, 124M
  parameters, 8 sequences of 1,024 tokens, AdamW).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Batches = list[tuple[torch.Tensor, torch.Tensor]]
BATCH = 64  # the CPU reference's batch (overhead.py --batch changes it for cnn and mlp)


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))


def mlp() -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(784, 512), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(512, 10))


class CausalBlock(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a 4x GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(width), nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.norm2, self.up, self.act = nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU()
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, seq, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, seq, width))
        return x + self.down(self.act(self.up(self.norm2(x))))


class Transformer(nn.Module):
    """Token and learned position embeddings, causal blocks, a final norm and the head."""

    def __init__(self, seq: int, vocab: int = 256, width: int = 128, heads: int = 4, depth: int = 2):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(vocab, width), nn.Embedding(seq, width)
        self.blocks = nn.Sequential(*(CausalBlock(width, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x) + self.positions(torch.arange(x.shape[1], device=x.device))
        return self.head(self.norm(self.blocks(h))).flatten(0, 1)  # logits of every position


class LSTMModel(nn.Module):
    def __init__(self, vocab: int = 256, width: int = 128, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.lstm = nn.LSTM(width, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x))
        return self.head(out).flatten(0, 1)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv-BN layers and the identity (or a 1x1 projection)."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(outputs), nn.ReLU()
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Identity() if stride == 1 and inputs == outputs else nn.Sequential(
            nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


def resnet18(classes: int = 10) -> nn.Module:
    stages, inputs = [], 64
    for outputs, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages += [BasicBlock(inputs, outputs, stride), BasicBlock(outputs, outputs, 1)]
        inputs = outputs
    return nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(), *stages,
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))


def image_batches(shape: tuple[int, ...], batch: int, classes: int = 10) -> Callable[[], Batches]:
    """4 batches of standard normal inputs and random labels."""
    return lambda: [(torch.randn(batch, *shape), torch.randint(0, classes, (batch,))) for _ in range(4)]


def token_batches(batch: int, seq: int, vocab: int = 256) -> Callable[[], Batches]:
    """Random token sequences; the target of each position is the next token."""
    def make() -> Batches:
        tokens = [torch.randint(0, vocab, (batch, seq + 1)) for _ in range(4)]
        return [(t[:, :-1], t[:, 1:].flatten()) for t in tokens]
    return make


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def adamw(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    return lambda model: torch.optim.AdamW(model.parameters(), lr=lr)


@dataclass(frozen=True)
class Workload:
    build: Callable[[], nn.Module]
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    batches: Callable[[], Batches]


TRANSFORMER_BATCH, TRANSFORMER_SEQ = 8, 64  # steps of 20 to 30 ms on 2 cores
LSTM_BATCH, LSTM_SEQ = 16, 32
GPT2_VOCAB, GPT2_SEQ, GPT2_BATCH = 50_257, 1024, 8


def workloads(batch: int = BATCH) -> dict[str, Workload]:
    """Every workload by name; ``batch`` for the CPU reference's two."""
    return {
        "cnn": Workload(cnn, sgd, image_batches((3, 32, 32), batch)),
        "mlp": Workload(mlp, sgd, image_batches((784,), batch)),
        "transformer": Workload(lambda: Transformer(TRANSFORMER_SEQ), adamw(3e-4),
                                token_batches(TRANSFORMER_BATCH, TRANSFORMER_SEQ)),
        "lstm": Workload(LSTMModel, lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
                         token_batches(LSTM_BATCH, LSTM_SEQ)),
        "resnet18": Workload(resnet18, sgd, image_batches((3, 32, 32), 128)),
        "gpt2": Workload(lambda: Transformer(GPT2_SEQ, GPT2_VOCAB, width=768, heads=12, depth=12), adamw(3e-4),
                         token_batches(GPT2_BATCH, GPT2_SEQ, GPT2_VOCAB)),
    }


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor]):
    """One step as every benchmark takes it: zero_grad, forward, cross-entropy, backward,
    optimizer step. Returns the loss (a tensor, as a script hands it to its monitor)."""
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


#: The CPU reference and issue 15's CPU shapes; resnet18 and gpt2 are for a GPU.
CPU_WORKLOADS = ("cnn", "mlp", "transformer", "lstm")
GPU_WORKLOADS = ("resnet18", "gpt2")
