"""babysit's training side: the only package that imports torch.

``watch(model, optimizer)`` attaches hooks that reduce activations, gradients and
updates to a few numbers on the device, on sampled steps only, and a writer thread
that turns them into events for the run store (or, later, a dashboard server).
"""
from monitor.early_stopping import EarlyStopping
from trainer_hooks.config import WatchConfig
from trainer_hooks.handle import BabysitWarning, Monitor, watch
from trainer_hooks.sweep import sweep

__all__ = ["BabysitWarning", "EarlyStopping", "Monitor", "WatchConfig", "sweep", "watch"]
