"""Find the models a script trains, and watch each one, with no line of babysit in it.

``babysit run`` attaches through PyTorch's process-wide hooks only: nothing is set on the
user's modules or optimizers, so pickling, ``deepcopy`` and ``torch.compile`` see them as
they are.

* **Models:** a module whose forward pass runs in training mode with gradients enabled,
  that has trainable parameters and is not inside another such module (a global forward
  hook; evaluation and ``no_grad`` calls are not training).
* **The loss:** the scalar ``backward()`` is called on (``torch.autograd.backward``
  is wrapped while the script runs), counted for each model whose output the backward
  pass reaches (a tensor hook on the model's first output after each backward). The loss
  of a step is the objective whose gradient the step follows: the sum of those scalars
  since the last step (gradient accumulation over micro-steps, whose losses the script
  scales), or for a step that evaluates a closure (LBFGS), the closure's first value,
  the loss at the weights the step starts from. Through a ``GradScaler``, the loss before
  scaling.
* **Steps:** a model is watched with the first optimizer that steps its parameters, at
  that first step (also one made late, inside a library); failing that, once a backward
  pass starts after the gradients were cleared with no optimizer step between, the model
  is trained by hand and each backward pass is a step (:mod:`trainer_hooks.by_hand`).
* **Evaluation loss:** the scalar a loss module returns under ``no_grad`` while the
  model is in eval mode (or the loss in what the model returns, ``(logits, loss)`` or a
  ``loss`` entry) is averaged over the evaluation and logged as ``val_loss`` when
  training resumes. A functional loss (``F.cross_entropy``) under ``no_grad`` is not seen.

A failure in this bookkeeping never reaches the script: babysit says so in one line and
stops watching, and the training runs on.
"""
from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.nn.modules.loss import _Loss
from torch.optim import optimizer as optimizer_hooks

from trainer_hooks.handle import Monitor, unwrap, watch, watching
from trainer_hooks.probe import step_closure, with_closure


class RunStopped(BaseException):
    """A stop the script cannot hear (it never reads ``should_stop``): raised out of the
    optimizer step after the one at which the stop was asked for (the dashboard's button,
    a flag in ``stop_on``, a sweep pruning its trial), so that the script ends there as it
    would at Ctrl-C: its ``finally`` blocks run, its ``except Exception`` blocks do not
    swallow it (like ``KeyboardInterrupt``, it is no ``Exception``)."""

    def __init__(self, monitor: Monitor):
        reason = monitor.stop_reason
        super().__init__(f"run {monitor.run_id} stopped at step {reason.step if reason else '?'}"
                         f" ({reason.cause.value if reason else 'stop'}): {reason.message if reason else ''}")
        self.monitor = monitor


@dataclass(eq=False)
class Trained:
    """One model the script trains, and what is known of it so far."""

    model: nn.Module
    name: str
    monitor: Monitor | None = None
    optimizer: Any = None
    hooked: bool = False  # a tensor hook waits on the model's last output
    reached: bool = False  # the running backward pass reached that output
    loss: torch.Tensor | None = None  # the sum of this step's backward scalars
    closure_loss: torch.Tensor | None = None  # a closure step's first value
    backwards: int = 0
    cleared: tuple | None = None  # how the gradient looked after the last backward (see Attacher._cleared)
    eval_losses: list = field(default_factory=list)  # the evaluation's, since the last training forward


class Attacher:
    """The process-wide hooks of ``babysit run`` (see the module docstring).

    ``options`` are :func:`~trainer_hooks.watch`'s, without ``run``; ``name`` the run name
    of the first model (later ones add their class); ``config`` what every run records. A
    stop policy (``early_stopping``, which keeps state) is the first model's alone."""

    def __init__(self, name: str, config: Mapping[str, Any], options: Mapping[str, Any],
                 say: Callable[[str], None] | None = None):
        self.name = name
        self.config = dict(config)
        self.options = dict(options)
        self.say = say or (lambda line: print(f"babysit: {line}", file=sys.stderr, flush=True))
        self.trained: dict[int, Trained] = {}  # by id of the model's module
        self._settled: set[int] = set()  # modules already accounted for (inside a model, or without parameters)
        self._optimizers: "weakref.WeakSet" = weakref.WeakSet()
        self._unscaled: dict[int, torch.Tensor] = {}
        self._stepping = 0  # optimizer steps running (a closure's backward passes run inside one)
        self._depth = 0  # backward passes running (checkpointing runs one inside another)
        self._said: set[str] = set()
        self._broken = False
        self.closed_as: tuple = (None, "")  # how close() was told the script ended (state, reason)
        self.on_close: Callable[[], None] | None = None  # called once the runs are closed (a sweep's outcome)
        self._backward = torch.autograd.backward
        self._scale = getattr(torch.amp, "GradScaler", None)
        self._handles = [
            module_hooks.register_module_forward_hook(self._forward),
            optimizer_hooks.register_optimizer_step_pre_hook(self._step_pre),
            optimizer_hooks.register_optimizer_step_post_hook(self._step_post),
        ]
        self._wrapper = self._wrapped_backward  # one bound method, to tell it apart when restoring
        torch.autograd.backward = self._wrapper
        if self._scale is not None:
            self._scale_method = self._scale.scale
            self._scale.scale = self._wrapped_scale(self._scale_method)

    # ------------------------------------------------------------------ lifecycle

    def detach(self) -> None:
        """Remove every hook and wrapper (the monitors stay open; see :meth:`close`)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if torch.autograd.backward is self._wrapper:
            torch.autograd.backward = self._backward
        if self._scale is not None and "_babysit" in getattr(self._scale.scale, "__dict__", {}):
            self._scale.scale = self._scale_method

    def close(self, state=None, reason: str = "") -> list[Monitor]:
        """End every run (``state``/``reason`` as :meth:`Monitor.close` takes them) and
        say in one line what was not found; returns the monitors."""
        self.closed_as = (state, reason)
        self.detach()
        monitors = [t.monitor for t in self.trained.values() if t.monitor is not None]
        for trained in self.trained.values():
            if trained.monitor is not None:
                self._log_eval(trained)
                trained.monitor.close(state, reason)
        if not monitors and not self._broken:
            found = [t for t in self.trained.values() if t.backwards]
            if found:
                names = ", ".join(type(t.model).__name__ for t in found)
                self.say(f"found {names} trained by backward(), but no optimizer step and no update by hand "
                         "between two backward passes; nothing was recorded")
            else:
                self.say("found no model being trained (no module with trainable parameters ran forward in "
                         "training mode before a backward()); nothing was recorded")
        if self.on_close is not None:
            try:
                self.on_close()
            except Exception as exc:  # noqa: BLE001 - ours; the script's end is its own
                self._failed(exc)
        return monitors

    def _failed(self, exc: BaseException) -> None:
        """A bug of ours: say it once, stop watching, and let the training run on."""
        self._broken = True
        self.say(f"internal error ({type(exc).__name__}: {exc}); babysit stops watching, the script runs on")
        self.detach()

    def _say_once(self, key: str, line: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.say(line)

    # ------------------------------------------------------------------ forward

    def _forward(self, module, args, output):
        trained = self.trained.get(id(module))
        if trained is not None:
            if trained.model is module:
                self._forwarded(trained, output)
            return
        if not torch.is_grad_enabled():
            if isinstance(module, _Loss):
                self._eval_loss(output)
            return
        if not module.training or id(module) in self._settled:
            return
        try:
            self._discover(module, output)
        except Exception as exc:  # noqa: BLE001 - never the script's problem
            self._failed(exc)

    def _discover(self, module: nn.Module, output) -> None:
        """A module seen for the first time in a training forward pass."""
        if not any(p.requires_grad for p in module.parameters()):
            self._settled.add(id(module))  # an activation, a loss, a frozen part: not a model
            return
        inner = {id(m) for m in module.modules()}
        for key in [k for k in self.trained if k in inner]:  # a part of it was called on its own before
            if self.trained[key].monitor is None:
                del self.trained[key]
        self._settled |= inner
        model = unwrap(module)
        name = self.name if not self.trained else f"{self.name}-{type(model).__name__.lower()}"[:100]
        self.trained[id(module)] = trained = Trained(module, name)
        self._forwarded(trained, output)

    def _forwarded(self, trained: Trained, output) -> None:
        """The model ran forward: in training, wait for the backward pass to reach its
        output (once per backward pass: a recurrent cell may run thousands of times); in
        evaluation, keep the loss it returns."""
        if not torch.is_grad_enabled():
            if not trained.model.training:
                loss = _returned_loss(output)
                if loss is not None:
                    self._eval_loss(loss, trained)
            return
        if trained.eval_losses:
            self._log_eval(trained)
        if trained.hooked:
            return
        tensor = _first_grad_tensor(output)
        if tensor is not None:
            trained.hooked = True
            tensor.register_hook(lambda grad, t=trained: _reach(t))

    # ------------------------------------------------------------------ backward

    def _wrapped_backward(self, tensors, *args, **kwargs):
        outermost = self._depth == 0
        if outermost and not self._broken:
            try:
                self._before_backward()
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
        self._depth += 1
        try:
            result = self._backward(tensors, *args, **kwargs)
        finally:
            self._depth -= 1
        if outermost and not self._broken:
            try:
                self._after_backward(tensors)
            except Exception as exc:  # noqa: BLE001
                self._failed(exc)
        return result

    def _before_backward(self) -> None:
        """A backward pass starts: a model whose gradients were cleared since its last one,
        with no optimizer step between, is trained by hand: watch it now (not inside an
        optimizer's step: a closure clears and computes gradients many times in one)."""
        if self._stepping:
            return
        for trained in self.trained.values():
            if trained.monitor is None and trained.backwards and trained.hooked and self._cleared(trained):
                self._watch(trained, None)
                if trained.loss is not None:  # the first step's loss, from before it was watched
                    trained.monitor.log(loss=trained.loss)
                    trained.loss = None

    def _after_backward(self, tensors) -> None:
        loss = tensors if isinstance(tensors, torch.Tensor) else None
        if loss is not None and loss.numel() == 1:
            loss = self._unscaled.pop(id(loss), loss).detach().reshape(())
        else:
            loss = None
        self._unscaled.clear()
        for trained in self.trained.values():
            if not trained.reached:
                continue
            trained.reached = trained.hooked = False
            trained.backwards += 1
            if loss is not None:
                trained.loss = loss if trained.loss is None else trained.loss + loss
            if trained.monitor is None:
                trained.cleared = _gradient_state(trained.model)
            elif trained.monitor.optimizer is None:  # trained by hand: a backward pass is a step
                if trained.loss is not None:
                    trained.monitor.log(loss=trained.loss)
                trained.loss = None

    def _cleared(self, trained: Trained) -> bool:
        """The model's gradients were zeroed or dropped since its last backward pass."""
        return trained.cleared is not None and _gradient_state(trained.model) != trained.cleared

    def _wrapped_scale(self, scale):
        def wrapped(scaler, outputs):
            scaled = scale(scaler, outputs)
            if isinstance(scaled, torch.Tensor) and isinstance(outputs, torch.Tensor):
                self._unscaled[id(scaled)] = outputs  # cleared after the next backward pass
            return scaled
        wrapped._babysit = True
        return wrapped

    # ------------------------------------------------------------------ optimizer

    def _step_pre(self, optimizer, args, kwargs):
        self._stepping += 1
        try:
            if optimizer not in self._optimizers:
                self._optimizers.add(optimizer)
                self._adopt(optimizer)
            closure = step_closure(args, kwargs)
            trained = self._of(optimizer)
            if closure is None:
                for t in trained:
                    if t.loss is not None:
                        t.monitor.log(loss=t.loss)
                    t.loss = None
                return None
            for t in trained:
                t.closure_loss = None
            first = []

            def counted():
                value = closure()
                if not first:  # the loss at the weights the step starts from
                    first.append(value)
                    if not self._of(optimizer):  # its model ran for the first time inside the closure
                        self._adopt(optimizer)
                    if isinstance(value, torch.Tensor) and value.numel() == 1:
                        for t in self._of(optimizer):
                            t.closure_loss = value.detach().reshape(())
                return value
            return with_closure(args, kwargs, counted)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
            return None

    def _step_post(self, optimizer, args, kwargs):
        self._stepping -= 1
        stopped = None
        try:
            trained = self._of(optimizer)
            if not trained:
                self._say_once(f"optimizer{id(optimizer)}",
                               f"{type(optimizer).__name__} steps parameters of no module seen in a training "
                               "forward pass (a functional model, or one run with model.forward()); its steps "
                               "are not recorded")
            for t in trained:
                if t.closure_loss is not None:
                    t.monitor.log(loss=t.closure_loss)
                    t.closure_loss = t.loss = None
            stopped = next((t.monitor for t in trained if t.monitor.should_stop), None)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
        if stopped is not None:
            raise RunStopped(stopped)

    def _of(self, optimizer) -> list[Trained]:
        """The watched models this optimizer steps."""
        return [t for t in self.trained.values() if t.optimizer is optimizer and t.monitor is not None]

    def _adopt(self, optimizer) -> None:
        """An optimizer's first step: watch every model whose parameters it steps."""
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for trained in list(self.trained.values()):
            if trained.monitor is None and any(id(p) in params for p in trained.model.parameters()):
                self._watch(trained, optimizer)

    def _watch(self, trained: Trained, optimizer) -> None:
        model = unwrap(trained.model)
        previous = watching(model)
        if previous is not None:  # the script watches it itself
            trained.optimizer = optimizer
            self._say_once(f"own{id(model)}", f"the script watches {type(model).__name__} itself "
                                              f"(run {previous.run_id}); babysit run leaves it to it")
            return
        trained.optimizer = optimizer
        saved = self._saved_from(trained)
        if saved is not None:  # the same model loaded back from a checkpoint: its run goes on
            del self.trained[id(saved.model)]
            trained.monitor, trained.name = saved.monitor, saved.name
            trained.monitor.continue_with(trained.model, optimizer)
            self.say(f"run {trained.monitor.run_id} goes on with {type(model).__name__} loaded back from a "
                     "checkpoint (the same weights)")
            return
        config = {**self.config, **_optimizer_config(optimizer)}
        options = self.options
        if any(t.monitor is not None for t in self.trained.values()):
            options = {k: v for k, v in options.items() if k != "early_stopping"}
        trained.monitor = watch(trained.model, optimizer, run=trained.name, config=config, **options)

    def _saved_from(self, trained: Trained) -> Trained | None:
        """A watched model that this new one is a copy of (``torch.save(model)`` and
        ``torch.load``): the same class, parameters and weights. A fresh model of the same
        architecture (the next fold of a cross-validation) has other weights: a new run."""
        state = unwrap(trained.model).state_dict()
        for other in self.trained.values():
            if other is trained or other.monitor is None:
                continue
            theirs = unwrap(other.model).state_dict()
            if type(unwrap(other.model)) is type(unwrap(trained.model)) and theirs.keys() == state.keys() and all(
                    theirs[k].shape == v.shape and theirs[k].dtype == v.dtype and torch.equal(theirs[k].cpu(), v.cpu())
                    for k, v in state.items()):
                return other
        return None

    # ------------------------------------------------------------------ evaluation

    def _eval_loss(self, output, trained: Trained | None = None) -> None:
        if not isinstance(output, torch.Tensor) or output.numel() != 1 or not output.is_floating_point():
            return
        targets = [trained] if trained is not None else [
            t for t in self.trained.values() if t.monitor is not None and not t.model.training]
        for t in targets:
            t.eval_losses.append(output.detach().reshape(()))

    def _log_eval(self, trained: Trained) -> None:
        """The evaluation since the last training forward pass, as ``val_loss`` (one read),
        and over two or more batches its standard error as ``val_loss_se``."""
        values, trained.eval_losses = trained.eval_losses, []
        if values and trained.monitor is not None:
            losses = torch.stack([v.float().cpu() for v in values])
            if len(values) < 2:
                trained.monitor.log_after_step(val_loss=losses.mean())
                return
            # Its standard error over the evaluation's batches: the noise the validation set's
            # size leaves in it, which says whether two runs' values can be told apart.
            error = float(losses.std()) / math.sqrt(len(values))
            trained.monitor.log_after_step(val_loss=losses.mean(), val_loss_se=error)
            note = getattr(trained.monitor.early_stopping, "note_standard_error", None)  # a sweep trial's policy
            if note is not None:
                note(error)


def _reach(trained: Trained) -> None:
    trained.reached = True


def _first_grad_tensor(output) -> torch.Tensor | None:
    """The first tensor of a model's output that the backward pass can reach."""
    if isinstance(output, torch.Tensor):
        return output if output.requires_grad else None
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    for value in values:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            return value
    return None


def _returned_loss(output) -> torch.Tensor | None:
    """The loss in what a model returns: a ``loss`` entry, or a one-element tensor beside
    the outputs (``(logits, loss)``)."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
        return loss if isinstance(loss, torch.Tensor) else None
    if isinstance(output, (tuple, list)) and len(output) > 1:
        return next((o for o in output if isinstance(o, torch.Tensor) and o.numel() == 1
                     and o.is_floating_point()), None)
    return None


def _gradient_state(model: nn.Module) -> tuple | None:
    """How the first trainable parameter's gradient looks, without reading it: absent,
    or which tensor at which version (``zero_()`` and ``p.grad = None`` both change it,
    accumulation by autograd happens inside the backward pass)."""
    p = next((p for p in model.parameters() if p.requires_grad), None)
    if p is None:
        return None
    g = p.grad
    return None if g is None else (id(g), g._version)


def _optimizer_config(optimizer) -> dict:
    """The optimizer and its first group's hyper-parameters (numbers, flags, pairs)."""
    if optimizer is None:
        return {"optimizer": None}
    config = {"optimizer": type(optimizer).__name__}
    for key, value in optimizer.param_groups[0].items():
        if key == "params":
            continue
        if isinstance(value, (bool, int, float, str)) or (
                isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value)):
            config[key] = list(value) if isinstance(value, tuple) else value
    return config
