"""The hooks: what runs inside the user's forward, backward and optimizer step.

Forward hooks are registered process-wide (``register_module_forward_hook``) and filter
on the watched modules, instead of living in each module's hook dictionaries. So no
babysit object is pickled by ``torch.save(model)``, a saved model loads without babysit
(also with ``weights_only=True``), ``copy.deepcopy`` copies no hooks, and no attribute
is ever set on a user's module. On a step that is not sampled every forward hook returns
after one attribute test, and the optimizer's pre-step hook takes the vital signs only
(the gradients' norms, one multi-tensor kernel: :meth:`Probe._vitals`). Gradients with
respect to layer outputs come from tensor hooks
placed on the outputs of the sampled forward pass only, so no backward hook exists on
other steps, and in-place activations that follow a layer are handled by autograd
(the hook sees the gradient of the value the layer produced). Output gradients are
taken at parametrised layers only: an activation's output gradient is the next layer's
input gradient, and the flow is read at the layers that learn.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from monitor.events import Signal
from trainer_hooks.by_hand import HandUpdates
from trainer_hooks.capture import StepCapture
from trainer_hooks.compiled import EagerStep, compiling, expect_wrapper_hooks, holds_compiled
from trainer_hooks.params import add_params_after, add_params_before, has_dense_grad, l2_norms, squares
from trainer_hooks.reduce import (
    DEAD_SPAN_STEPS, SAMPLE_SIZE, SamplePositions, UnitWindow, channel_moments, flat_tail_start, reduce_tensor,
    unit_maxima,
)

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.Hardtanh,
    nn.Hardsigmoid, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
)
#: Smooth activations with a flat negative tail: almost no gradient passes where their input
#: is far below zero, yet their output is rarely exactly zero, so "dead" does not apply; the
#: share of inputs in the tail is their saturation (trainer_hooks.reduce.flat_tail_start).
FLAT_TAILED = (nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Hardswish)
#: Modules whose input is ids (token or category indices): integer input statistics are read there.
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
#: Channels of the model input above which only whole-tensor input statistics are kept.
MAX_INPUT_CHANNELS = 64
#: Filters shown in the first-layer grid (an 8 x 8 tile).
MAX_FILTERS = 64


@dataclass(frozen=True)
class Watched:
    name: str
    module: str  # class name
    activation: bool


def root_label(model: nn.Module) -> str:
    """The name the model itself goes by where it owns parameters (``named_modules`` calls
    it ""): its class, as in ``Linear`` for a model that is one ``nn.Linear``, unless a
    submodule already has that name."""
    name = type(model).__name__
    return name if name not in dict(model.named_modules()) else "(model)"


def named_modules(model: nn.Module):
    """``model.named_modules()`` with the model itself named by :func:`root_label`."""
    root = root_label(model)
    return ((name or root, m) for name, m in model.named_modules())


def parameter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that own parameters themselves, named (the model too, when it does)."""
    return [(name, m) for name, m in named_modules(model) if any(True for _ in m.parameters(recurse=False))]


def watched_modules(model: nn.Module) -> dict[int, Watched]:
    """Every activation module and every leaf that owns parameters, by ``id`` (the model
    itself when it is such a leaf: one ``nn.Linear`` gets its statistics too)."""
    found = {}
    for name, m in named_modules(model):
        is_activation = isinstance(m, ACTIVATIONS)
        is_param_leaf = not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False))
        if is_param_leaf or (is_activation and m is not model):
            found[id(m)] = Watched(name, type(m).__name__, is_activation)
    return found


def first_layer(model: nn.Module, input_shape: tuple[int, ...] | None):
    """(name, module, image shape) of the layer whose weights are worth looking at.

    The first Conv2d; failing that, the first Linear that reads a flattened image
    (in_features == C*H*W of a 4-d input), whose rows are then shown as images.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m, None
    if input_shape is not None and len(input_shape) == 4:
        c, h, w = input_shape[1:]
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and m.in_features == c * h * w:
                return name, m, (c, h, w)
    return None


def flat_tail_input(module: nn.Module, args) -> torch.Tensor | None:
    """For a smooth activation with a flat tail: how many of its inputs lie in that tail
    (a 0-d count on the device). The input is read, not the output: GELU's output is near
    zero both deep in its tail (no gradient) and near x = 0 (half the gradient). An
    in-place module's input is its output by the time the hook runs: not judged."""
    if not isinstance(module, FLAT_TAILED) or getattr(module, "inplace", False):
        return None
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if x is None or not x.is_floating_point() or x.numel() == 0:
        return None
    start = flat_tail_start(module)
    return None if start is None else (x.detach() < start).sum()


def record_ids(capture: StepCapture, embedding: nn.Module, args) -> None:
    """The token (or category) ids a model embeds, as integer input statistics: their
    range, how many distinct ones the batch holds (the sorted ids' changes: on the device,
    no sync), and the share of the embedding's ``padding_idx`` when it declares one
    (padding cannot be told from text otherwise). Read at the model's first embedding
    because that is where ids meet the model, however they were passed to it (keyword
    arguments of a Hugging Face model too)."""
    ids = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if ids is None or ids.is_floating_point() or ids.is_complex() or ids.dtype is torch.bool or ids.numel() == 0:
        return
    flat = ids.detach().reshape(-1)
    ordered = flat.sort().values
    distinct = (ordered[1:] != ordered[:-1]).sum() + 1
    as_float = flat.double()
    pad = getattr(embedding, "padding_idx", None)
    scalars = [ordered[0], ordered[-1], distinct, as_float.mean(), as_float.std() if flat.numel() > 1
               else torch.zeros((), dtype=torch.float64, device=flat.device)]
    if pad is not None:
        scalars.append((flat == pad).sum())
    capture.add("ids", {"shape": tuple(ids.shape), "numel": flat.numel(), "vocab": embedding.num_embeddings,
                        "pad_id": pad}, scalars, [])


class Probe:
    """Registers the hooks and fills a :class:`StepCapture` while one is open."""

    def __init__(self, model: nn.Module, optimizer, *, sample_size: int = SAMPLE_SIZE,
                 dead_window: int = 8, dead_span: int = DEAD_SPAN_STEPS, entry: nn.Module | None = None):
        self.root = model
        # The module whose call begins a forward pass: the model, or the wrapper torch.compile
        # made of it, whose hooks run outside the graph (trainer_hooks.compiled).
        self.entry = model if entry is None else entry
        self._entry_id = id(self.entry)  # by id: dynamo traces this hook; no module of ours enters its graph
        self._eager = EagerStep()
        self.compiled = holds_compiled(model, self.entry)  # else the stance is never taken (trainer_hooks.compiled)
        self.optimizer = optimizer
        self.sample_size = sample_size
        self.dead_window = dead_window
        self.dead_span = dead_span  # steps back a unit window's batches may reach (reduce.dead_span)
        self.modules = watched_modules(model)
        own = {id(p) for p in model.parameters(recurse=False)}  # the model's own: named after it, as a layer
        self.param_names = {id(p): (f"{root_label(model)}.{n}" if id(p) in own else n,
                                    type(model.get_submodule(n.rpartition(".")[0])).__name__)
                            for n, p in model.named_parameters()}
        self.capture: StepCapture | None = None
        self.capturing = False  # inside the first forward pass of a sampled step
        self.calls: dict[str, int] = {}
        self.windows: dict[str, UnitWindow] = {}
        self.generators: dict[torch.device, torch.Generator] = {}
        self.param_indices: dict[int, torch.Tensor] = {}  # sample positions of large parameters
        self.positions = SamplePositions(sample_size, self._generator)  # the sampled step's draws (begin)
        self.stepped: list[tuple[torch.Tensor, str, str]] = []  # parameters the current step updates
        self.grad_squares: dict[int, float] = {}  # a sampled CPU step's squared gradient norms, by parameter id
        self.input_shape: tuple[int, ...] | None = None
        self._ids_pending = False
        # The vital signs of the step being taken (see _vitals), for the Monitor to hand on.
        self.vitals: tuple[torch.Tensor | list[float], tuple[int, ...]] | None = None
        self.vitals_due = True  # whether this step reads them (the Monitor's trainer_hooks.schedule.VitalsCadence)
        self.vitals_seconds: float | None = None  # what reading them took this step (None: not read)
        self.param_rows: dict[int, int] = {}  # parameter -> the row of its module in the vitals
        for row, (_, m) in enumerate(parameter_modules(model)):
            for p in m.parameters(recurse=False):
                self.param_rows.setdefault(id(p), row)  # a tied weight counts with its first owner
        self._layout: tuple | None = None  # the optimizer's shape, its parameters and their rows
        self.on_root_forward = lambda args: None  # set by the Monitor
        self.on_optimizer_step = lambda: None
        # The forward hook exists only while a sampled forward pass runs (see begin): with
        # none, unsampled calls skip it, and a recurrent cell may be called thousands of times a step.
        self._handles = [module_hooks.register_module_forward_pre_hook(self._forward_pre)]
        expect_wrapper_hooks()
        self._forward_handle = None
        self.by_hand = None  # without an optimizer: the gradients read as they arrive (trainer_hooks.by_hand)
        if optimizer is not None:
            self._handles += [optimizer.register_step_pre_hook(self._step_pre),
                              optimizer.register_step_post_hook(self._step_post)]
        else:
            self.by_hand = HandUpdates(model, self.param_names, self.param_rows, sample_size, self._generator)
            self._handles.append(self.by_hand)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.stop_capturing()

    def stop_capturing(self) -> None:
        """The sampled forward pass is over (or never ended: an exception, a closed run)."""
        self.capturing = False
        self._eager.release()
        if self._forward_handle is not None:
            self._forward_handle.remove()
            self._forward_handle = None

    # ------------------------------------------------------------------ forward

    def _forward_pre(self, module, args):
        # Traced into a compiled graph, nothing: a decision per step would be baked into the
        # graph or break it (trainer_hooks.compiled); the Monitor finds out and prepares.
        if id(module) == self._entry_id and not compiling():
            self.on_root_forward(args)

    def eager_next(self, eager: bool = True) -> None:
        """Run the next forward pass eagerly (or no longer): for a model compiled where the
        entry's hooks are traced, a sampled step's forward must be eager from its start."""
        if eager:
            self.compiled = True  # the Monitor found the model traced: compiled around it
            self._eager.hold()
        elif not self.capturing:
            self._eager.release()

    def begin(self, capture: StepCapture, args) -> None:
        """Open a capture for the forward pass that is starting."""
        self.capture = capture
        self.capturing = True
        self.positions = SamplePositions(self.sample_size, self._generator)
        eager = self.compiled and self._eager.hold()  # a compiled model's sampled forward runs eagerly, hooks and all
        if not eager and self.entry is not self.root:
            return  # torch < 2.6, a compiled model: its graph stays as it is, the parameters are still read
        if self._forward_handle is None:  # the root's own forward hooks are read after its forward: it sees it
            self._forward_handle = module_hooks.register_module_forward_hook(self._forward)
        if self.by_hand is not None:
            self.by_hand.capture, self.by_hand.positions = capture, self.positions
        self.calls = {}
        self._ids_pending = True  # the first embedding's input, once per sampled pass (record_ids)
        x = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
        if x is not None:
            self.input_shape = tuple(x.shape)
            channels = channel_moments(x, MAX_INPUT_CHANNELS)
            reduced = reduce_tensor(x, sample_size=self.sample_size, indices=self.positions(x.numel(), x.device),
                                    precise=True, sums=(channels[0].sum(), channels[1].sum()) if channels else None)
            if reduced is not None:
                capture.add_reduced("input", {"shape": tuple(x.shape)}, reduced, vectors=channels)

    def _forward(self, module, args, output):
        if not self.capturing:
            return  # not a sampled step: nothing else runs
        info = self.modules.get(id(module))
        if module is self.entry:
            self.stop_capturing()  # the forward pass is over; the model itself is recorded if it is one layer
            if info is None:
                return
        elif info is None:
            return
        if self._ids_pending and isinstance(module, EMBEDDINGS):
            self._ids_pending = False
            record_ids(self.capture, module, args)
        x = output if isinstance(output, torch.Tensor) else next(
            (o for o in output if isinstance(o, torch.Tensor)), None) if isinstance(output, (tuple, list)) else None
        if x is None or not x.is_floating_point():
            return
        count = self.calls[info.name] = self.calls.get(info.name, 0) + 1
        if count & (count - 1):
            return  # a module reused in one forward pass (a recurrent cell): its 1st, 2nd, 4th, 8th ... call
        label = info.name if count == 1 else f"{info.name}#{count}"
        tail = flat_tail_input(module, args) if info.activation else None
        self._record(self.capture, label, info.module, Signal.ACTIVATION, x, units=info.activation, tail=tail)
        if x.requires_grad and not info.activation:
            capture = self.capture
            x.register_hook(lambda grad: self._record(capture, label, info.module, Signal.OUTPUT_GRAD, grad))

    def _record(self, capture, label, module, signal, x, units=False, tail=None) -> None:
        maxima = unit_maxima(x) if units and tail is None else None  # a flat tail is judged instead of zeros
        reduced = reduce_tensor(x, sample_size=self.sample_size, indices=self.positions(x.numel(), x.device),
                                maxima=maxima)
        if reduced is None:
            return
        meta = {"layer": label, "module": module, "signal": signal}
        extra = []
        if maxima is not None:
            active = maxima > 0
            window = self.windows.get(label)
            if window is None or not window.fits(active):
                window = self.windows[label] = UnitWindow(active.shape[0], self.dead_window, active.device,
                                                           self.dead_span)
            extra.append(window.add(active, capture.step))
            meta.update(units=int(active.shape[0]), window=window.filled)
        if tail is not None:
            extra.append(tail)
            meta["tail"] = True
        capture.add_reduced("tensor", meta, reduced, scalars=extra)
        return None  # as a tensor hook: leave the gradient untouched

    def _generator(self, device: torch.device) -> torch.Generator:
        """Our own random stream per device: drawing samples never moves the user's RNG."""
        gen = self.generators.get(device)
        if gen is None:
            gen = self.generators[device] = torch.Generator(device=device)
            gen.manual_seed(0x5EED)
        return gen

    # ------------------------------------------------------------------ optimizer

    def _params(self):
        for i, group in enumerate(self.optimizer.param_groups):
            for j, p in enumerate(group["params"]):
                yield p, self.param_names.get(id(p), (f"group{i}.param{j}", "Parameter"))

    def _vitals(self) -> tuple[torch.Tensor | list[float], tuple[int, ...]] | None:
        """Every step's vital signs, and the model-summary row of each parameter's layer.

        On an accelerator: the L2 norm of each parameter's gradient, by one multi-tensor
        kernel into one small vector that stays on the device (the writer copies a block
        of them with the losses; this thread never syncs). On the CPU, where that kernel
        is a loop of norms: the squared norms as floats, a BLAS dot product each for
        float32 and float64 gradients (twice as fast as a norm, and as exact)."""
        groups = self.optimizer.param_groups
        shape = tuple(len(g["params"]) for g in groups)
        if self._layout is None or self._layout[0] != shape:
            params = [p for g in groups for p in g["params"]]
            self._layout = (shape, params, [self.param_rows.get(id(p), -1) for p in params])
        _, params, param_rows = self._layout
        grads, rows, kept = [], [], []
        for p, row in zip(params, param_rows):
            g = p.grad
            if g is not None and not g.is_sparse and g.is_floating_point() and g.numel():
                grads.append(g.detach() if g.requires_grad else g)  # (a gradient of create_graph=True)
                rows.append(row)
                kept.append(p)
        if not grads:
            return None
        if all(g.is_cpu for g in grads):
            found = squares(grads)
            if self.capture is not None:  # a sampled step reads the same sums of squares again: not twice
                self.grad_squares = dict(zip(map(id, kept), found))
            return found, tuple(rows)
        norms = l2_norms(grads)
        device = norms[0].device
        if any(n.device != device for n in norms):  # model parallel: bring them to the first device
            norms = [n.to(device, non_blocking=True) for n in norms]
        return torch.stack(norms), tuple(rows)  # one vector, one copy later

    def _step_pre(self, optimizer, args, kwargs):
        closure = step_closure(args, kwargs)
        if closure is None:
            self._before_update()
            return None
        # A step that evaluates a closure (LBFGS) has no gradient yet: read it once the
        # closure's first evaluation made it, with the weights the step starts from.
        done = []

        def first_then_read():
            value = closure()
            if not done:
                done.append(True)
                self._before_update()
            return value
        return with_closure(args, kwargs, first_then_read)

    def _before_update(self) -> None:
        """The step's vital signs when they are due or it is sampled, and then its
        gradients and weights."""
        capture = self.capture
        if capture is not None or self.vitals_due:
            started = time.perf_counter()
            self.vitals = self._vitals()
            self.vitals_seconds = time.perf_counter() - started
        if capture is None:
            return
        self.stepped = [(p, name, module) for p, (name, module) in self._params() if has_dense_grad(p)]
        self.param_indices = add_params_before(capture, self.stepped, self.sample_size, self.positions,
                                               self.grad_squares)
        self.grad_squares = {}

    def _step_post(self, optimizer, args, kwargs):
        if self.capture is not None and self.stepped:
            add_params_after(self.capture, self.stepped, self.param_indices)
        self.stepped, self.param_indices = [], {}
        self.on_optimizer_step()

    # ------------------------------------------------------------------ filters

    def add_filters(self, capture: StepCapture) -> None:
        found = first_layer(self.root, self.input_shape)
        if found is None:
            return
        name, layer, image = found
        w = layer.weight.detach()[:MAX_FILTERS]
        if image is not None:
            w = w.reshape(w.shape[0], *image)
        if w.dim() != 4:
            return
        w = w[:, :3] if w.shape[1] == 3 else w[:, :1]  # RGB when the input is RGB, else the first channel
        w = w.float()
        low = w.amin(dim=(1, 2, 3), keepdim=True)
        high = w.amax(dim=(1, 2, 3), keepdim=True)
        scaled = (w - low) / (high - low).clamp_min(1e-12)
        capture.add("filters", {"layer": name, "shape": tuple(scaled.shape)}, [], [scaled])



def step_closure(args: tuple, kwargs: dict):
    """The closure an ``optimizer.step`` call was given (None: none). A step hook's
    ``args`` start with the optimizer itself."""
    return kwargs.get("closure", args[1] if len(args) > 1 else None)


def with_closure(args: tuple, kwargs: dict, closure) -> tuple[tuple, dict]:
    """The step's arguments with its closure replaced (what a pre-step hook returns)."""
    if "closure" in kwargs or len(args) < 2:
        return args, {**kwargs, "closure": closure}
    return (args[0], closure, *args[2:]), kwargs
