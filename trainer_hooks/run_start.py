"""What a run records about itself when it starts: its id, its name, its config, the
model's summary, where it runs (host, process, rank) and with what versions."""
from __future__ import annotations

import os
import re
import secrets
import socket
import sys
import time
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from monitor.events import ModuleInfo, RunStart
from monitor.validation import is_run_id
from trainer_hooks.config import RUN_NAME_LENGTH
from trainer_hooks.probe import parameter_modules


def run_id(name: str) -> str:
    """The stored id: the (checked) name, the time and a tag, so that runs of one name differ."""
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def default_run_name(model: nn.Module) -> str:
    """The model's class name as a run name: it was not chosen by the user, so it is made
    usable (``_Net`` -> ``net``) rather than refused."""
    name = re.sub(r"[^a-z0-9._-]+", "-", type(model).__name__.lower()).lstrip("._-")[:RUN_NAME_LENGTH]
    return name if is_run_id(name) else "run"


def plain_config(config: Mapping[str, Any] | None) -> dict:
    """Hyper-parameters as JSON data; values JSON cannot hold are kept as their repr."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        return repr(v)
    return {} if config is None else plain(dict(config))  # a mapping: checked by WatchConfig


def model_summary(model: nn.Module) -> tuple[ModuleInfo, ...]:
    rows = []
    for name, m in parameter_modules(model):
        own = list(m.parameters(recurse=False))
        rows.append(ModuleInfo(name=name, module=type(m).__name__, params=sum(p.numel() for p in own),
                               trainable=sum(p.numel() for p in own if p.requires_grad),
                               shape=", ".join("x".join(map(str, p.shape)) for p in own)))
    everything = list(model.parameters())
    rows.append(ModuleInfo(name="(total)", module=type(model).__name__, params=sum(p.numel() for p in everything),
                           trainable=sum(p.numel() for p in everything if p.requires_grad)))
    return tuple(rows)


def run_start(run_id, model, config, schedule, sample_size) -> RunStart:
    rank, world = rank_world()
    return RunStart(
        name=run_id.rsplit("-", 3)[0], config=plain_config(config), model=model_summary(model),
        host=socket.gethostname(), pid=os.getpid(), rank=rank, world=world,
        versions={"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__,
                  "babysit": babysit_version()},
        sampling={**schedule.describe(), "sample_size": sample_size})


def rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), max(int(os.environ.get("WORLD_SIZE", 1)), 1)


def babysit_version() -> str:
    try:
        from importlib.metadata import version
        return version("babysit")
    except Exception:
        return "unknown"
