"""Watching a model that runs under ``torch.compile``.

A compiled model's forward is one graph: the module calls inside it are traced once, so
the hooks that read activations cannot run there, and a hook that decides per step
(sample this step or not) would be baked into the graph, break it, or recompile it each
time its answer changes. So nothing of babysit's runs in the graph, and a sampled step's
forward runs eagerly, with the compiler's stance ``force_eager`` (:class:`EagerStep`,
``torch.compiler.set_stance``, torch >= 2.6): the same modules as written, with the hooks
of an uncompiled model, and a backward that follows that eager graph. The other steps
run the compiled graph untouched: no graph break, no recompilation.

* ``watch(torch.compile(model))``: the wrapper's own hooks run outside the graph, so each
  step is decided where its call enters, as for an uncompiled model.
* A model compiled with its hooks traced (``model.compile()``, or ``torch.compile`` of a
  module around the watched one): the hook at the model's entry sees it is being traced
  (:func:`compiling`, a constant in the graph) and does nothing. The Monitor notices a
  step whose forward it never saw and from then on stances each due step eager before its
  forward begins (:meth:`trainer_hooks.probe.Probe.eager_next`).

A sampled step costs what it costs eagerly, plus the difference between the eager and the
compiled step on that one step; the automatic interval charges it like any other cost.
"""
from __future__ import annotations

import warnings

import torch

try:  # torch >= 2.6
    from torch.compiler import set_stance as _set_stance
except ImportError:  # pragma: no cover - older torch: a compiled model's sampled steps run compiled
    _set_stance = None


def compiling() -> bool:
    """Whether dynamo is tracing the code that calls this (a constant in the traced graph)."""
    return torch.compiler.is_compiling()


def outside_graph(fn):
    """``fn`` run eagerly even when called from code that dynamo traces (a graph break there)."""
    return torch.compiler.disable(fn, recursive=True)


class EagerStep:
    """While held, compiled functions run eagerly (the compiler's ``force_eager`` stance,
    process-wide: held only for a model that needs it, see :func:`holds_compiled`).

    Held and released where the hooks run, which may be inside a compiled function's call
    (a model compiled in place): the stance is set outside dynamo's reach there, as torch
    allows it only outside a compiled region."""

    def __init__(self):
        self._held = None
        # Made at the first hold: torch.compiler.disable imports dynamo (1.2 s of CPU), which
        # a script that trains by hand, with no torch.optim optimizer, never imports otherwise.
        self._set = self._unset = None

    def hold(self) -> bool:
        """Whether compiled functions now run eagerly (False on torch without stances)."""
        if _set_stance is None:
            return False
        if self._set is None:
            self._set, self._unset = outside_graph(self._set_now), outside_graph(self._unset_now)
        if self._held is None:
            self._set()
        return True

    def release(self) -> None:
        if self._held is not None:
            self._unset()

    def _set_now(self) -> None:
        self._held = _set_stance("force_eager")  # set at once; its exit restores the stance before

    def _unset_now(self) -> None:
        held, self._held = self._held, None
        held.__exit__(None, None, None)


def compiled_wrapper(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module ``torch.compile(model)`` returned, when the model given is one (or wraps
    one, as a DistributedDataParallel around it): its call is where a forward pass enters."""
    while isinstance(model, torch.nn.Module):
        if isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            return model
        model = getattr(model, "module", None) if isinstance(
            model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else None
    return None


def holds_compiled(model: torch.nn.Module, entry: torch.nn.Module) -> bool:
    """Whether a sampled forward of ``model`` (entered at ``entry``) may run compiled code:
    the model is the one ``torch.compile`` returned, or holds a module compiled as a wrapper
    or in place (``module.compile()``). Only then is the stance taken: it is process-wide,
    and taken for an eager model it would run every other compiled function of the process
    eagerly meanwhile (another thread's training, a compiled loss, an evaluation)."""
    return entry is not model or any(isinstance(getattr(m, "_orig_mod", None), torch.nn.Module)
                                     or getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def expect_wrapper_hooks() -> None:
    """Silence torch's warning, at every call of a compiled module while global module hooks
    exist, that those hooks also fire for the wrapper: babysit's do, and that call is where
    it decides the step (the wrapper's hooks run outside the graph)."""
    warnings.filterwarnings("ignore", message=r"Using `torch\.compile\(module\)` when there are global hooks",
                            category=UserWarning)
