"""The event schema (v2): the one record format between training, store, server and page.

Every event carries ``run``, ``seq`` (per-run, monotonic), ``step``, ``wall`` (unix
seconds), ``kind`` and a typed ``data`` payload. Payloads are frozen dataclasses, one per
kind, validated on construction, so a malformed event fails where it enters (the hooks,
the ingest namespace, the store loader) with a message that names the field. The JSON
codec that moves them lives in :mod:`monitor.codec`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from monitor.validation import (
    ACCEPTED_RUN_IDS, ACCEPTED_SCALAR_NAMES, INT_LIMIT, SchemaError, Payload, as_enum, as_float, as_int, as_list,
    as_str, fail, floats, json_like, set_field, convert_fields, check_label, check_run_id, check_scalar_name,
    shown_names,
)

SCHEMA_VERSION = 3
#: Schema versions this reader accepts in a run's ``run_start``: v2 added ``vitals`` events,
#: v3 the integer-input fields of ``input_stats``, so an older run is a newer one without them.
READABLE_SCHEMAS = (1, 2, 3)

#: TensorBoard's distribution bands: the normal CDF at -1.5, -1, -0.5, 0, 0.5, 1, 1.5 sigma.
#: Together with the exact min and max they draw the familiar percentile-band plot.
QUANTILE_LEVELS = (0.0668, 0.1587, 0.3085, 0.5, 0.6915, 0.8413, 0.9332)

class Kind(str, Enum):
    RUN_START = "run_start"
    SCALARS = "scalars"
    LAYER_STATS = "layer_stats"
    FILTERS = "filters"
    INPUT_STATS = "input_stats"
    FLAG = "flag"
    STATUS = "status"
    RUN_END = "run_end"
    VITALS = "vitals"


class Signal(str, Enum):
    """What a :class:`TensorSummary` describes."""

    ACTIVATION = "activation"  # a layer's output in the forward pass
    OUTPUT_GRAD = "output_grad"  # d loss / d (layer output): the gradient flowing back
    PARAM_GRAD = "param_grad"  # a parameter's gradient at the optimizer step


class RunState(str, Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FINISHED = "finished"
    DIVERGED = "diverged"
    CRASHED = "crashed"
    INTERRUPTED = "interrupted"  # Ctrl-C (KeyboardInterrupt) ended the training
    # The server heard nothing from the training process for its timeout (killed, machine
    # down, network cut). Set by the server on the run's row, never sent as an event: seqs
    # belong to the trainer (monitor.store.RunStore.mark_lost; web.liveness).
    LOST = "lost"


class Severity(str, Enum):
    WARNING = "warning"
    CRITICAL = "critical"


# ---------------------------------------------------------------------------- payloads

@dataclass(frozen=True)
class TensorSummary(Payload):
    """The distribution of one tensor at one sampled step.

    Exact over the whole tensor: ``numel``, ``nan``, ``inf``, ``mean``, ``std``, ``min``,
    ``max``, ``norm`` (moments over the finite elements) and the unit counts. From a
    uniform sample of ``sample`` finite elements (the whole tensor when it is small):
    ``quantiles`` at :data:`QUANTILE_LEVELS`, the ``hist`` counts over ``hist_lo..hist_hi``
    and the ``zero_frac`` and ``sat_frac`` fractions.
    """

    layer: str
    signal: Signal
    module: str
    numel: int
    nan: int
    inf: int
    mean: float
    std: float
    min: float
    max: float
    norm: float
    sample: int
    quantiles: tuple[float, ...]
    hist: tuple[int, ...]
    hist_lo: float
    hist_hi: float
    zero_frac: float
    # Saturating activations: the share of values where the slope is below 4 % of its peak
    # (tanh/sigmoid: sampled outputs near a bound; GELU, SiLU, ELU...: inputs in the flat tail, exact)
    sat_frac: float | None = None
    units: int | None = None  # channels (conv) or features (dense) of an activation
    dead_units: int | None = None  # units never positive over the last ``window`` sampled batches
    window: int | None = None
    weight_norm: float | None = None  # param_grad only: ||w|| after the step
    update_ratio: float | None = None  # param_grad only: ||w_after - w_before|| / ||w_before||

    def __post_init__(self):
        check_label("layer", self.layer)
        set_field(self, "signal", as_enum(Signal, "signal", self.signal))
        check_label("module", self.module)
        convert_fields(self, as_int, ("numel", "nan", "inf", "sample"))
        convert_fields(self, as_float, ("mean", "std", "min", "max", "norm", "hist_lo", "hist_hi", "zero_frac"))
        set_field(self, "quantiles", floats("quantiles", self.quantiles))
        if len(self.quantiles) not in (0, len(QUANTILE_LEVELS)):
            raise fail("quantiles", f"{len(QUANTILE_LEVELS)} values (or none)", self.quantiles)
        set_field(self, "hist", tuple(as_list("hist", self.hist)))
        if not (set(map(type, self.hist)) <= {int} and (not self.hist or min(self.hist) >= 0)):  # fast common case
            set_field(self, "hist", tuple(as_int("hist", v) for v in self.hist))
        convert_fields(self, as_float, ("sat_frac", "weight_norm", "update_ratio"), optional=True)
        convert_fields(self, as_int, ("units", "dead_units", "window"), optional=True)
        if self.nan + self.inf > self.numel:
            raise fail("nan + inf", f"at most numel={self.numel}", self.nan + self.inf)


@dataclass(frozen=True)
class LayerStats(Payload):
    summaries: tuple[TensorSummary, ...]
    _nested = {"summaries": TensorSummary}

    def __post_init__(self):
        set_field(self, "summaries", tuple(self.summaries))
        for s in self.summaries:
            if not isinstance(s, TensorSummary):
                raise fail("summaries", "TensorSummary items", s)


@dataclass(frozen=True)
class Scalars(Payload):
    """Loss and metrics of one step; names starting ``val_`` are validation metrics."""

    values: Mapping[str, float]

    def __post_init__(self):
        if not isinstance(self.values, Mapping) or not self.values:
            raise fail("values", "a non-empty mapping of name to number", self.values)
        values = dict(self.values)
        for name, value in values.items():
            check_scalar_name(name)
            if type(value) is not float:  # the message names the scalar only when it is needed
                values[name] = as_float(f"scalar {name!r}", value)
        set_field(self, "values", values)

    def to_dict(self):
        return {"values": dict(self.values)}


@dataclass(frozen=True)
class ModuleInfo(Payload):
    """One row of the model summary table."""

    name: str
    module: str
    params: int
    trainable: int
    shape: str = ""  # shapes of its own parameters, e.g. "16x3x3x3, 16"

    def __post_init__(self):
        check_label("model name", self.name)
        check_label("model module", self.module)
        set_field(self, "params", as_int("params", self.params))
        set_field(self, "trainable", as_int("trainable", self.trainable))
        as_str("shape", self.shape)


@dataclass(frozen=True)
class RunStart(Payload):
    name: str
    config: Mapping[str, Any]
    model: tuple[ModuleInfo, ...]
    host: str
    pid: int
    rank: int
    world: int
    versions: Mapping[str, Any]
    sampling: Mapping[str, Any]
    schema: int = SCHEMA_VERSION
    _nested = {"model": ModuleInfo}

    def __post_init__(self):
        check_label("name", self.name)
        config = dict(self.config) if isinstance(self.config, Mapping) else self.config
        set_field(self, "config", json_like("config", config))
        if not isinstance(self.config, Mapping):
            raise fail("config", "a mapping", self.config)
        set_field(self, "model", tuple(self.model))
        as_str("host", self.host, 256)
        convert_fields(self, as_int, ("pid", "rank"))
        set_field(self, "world", as_int("world", self.world, 1))
        set_field(self, "versions", json_like("versions", self.versions))
        set_field(self, "sampling", json_like("sampling", self.sampling))
        if self.schema not in READABLE_SCHEMAS:
            raise fail("schema", f"a version among {READABLE_SCHEMAS}", self.schema)


@dataclass(frozen=True)
class Filters(Payload):
    """The first layer's filters as one image grid: ``height x width x channels`` uint8 pixels."""

    layer: str
    count: int
    height: int
    width: int
    channels: int
    pixels: bytes

    def __post_init__(self):
        check_label("layer", self.layer)
        for name in ("count", "height", "width"):
            set_field(self, name, as_int(name, getattr(self, name), 1))
        set_field(self, "channels", as_int("channels", self.channels, 1))
        if self.channels not in (1, 3):
            raise fail("channels", "1 (grey) or 3 (RGB)", self.channels)
        if not isinstance(self.pixels, bytes) or len(self.pixels) != self.height * self.width * self.channels:
            raise fail("pixels", f"{self.height * self.width * self.channels} bytes", type(self.pixels).__name__)


@dataclass(frozen=True)
class InputStats(Payload):
    """The model's input batch. Floating point: is it zero-centred and of unit variance?
    Integer (``integer``: token or category ids, read where the model embeds them, the
    input of its first ``nn.Embedding``): which ids (``min``..``max`` of a vocabulary of
    ``vocab``), how many ``distinct`` ones in the batch, and the share of ``padding``
    (positions holding the embedding's ``padding_idx``, ``pad_id``; None when the
    embedding declares none, so padding cannot be told from text). Mean and std of ids
    mean nothing: the input-normalisation rule skips integer input."""

    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    nan: int
    inf: int
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()
    integer: bool = False
    distinct: int | None = None
    vocab: int | None = None
    padding: float | None = None
    pad_id: int | None = None

    def __post_init__(self):
        set_field(self, "shape", tuple(as_int("shape", v) for v in as_list("shape", self.shape)))
        convert_fields(self, as_float, ("mean", "std", "min", "max"))
        convert_fields(self, as_int, ("nan", "inf"))
        set_field(self, "channel_mean", floats("channel_mean", self.channel_mean))
        set_field(self, "channel_std", floats("channel_std", self.channel_std))
        if len(self.channel_mean) != len(self.channel_std):
            raise fail("channel_std", f"{len(self.channel_mean)} values like channel_mean", self.channel_std)
        if not isinstance(self.integer, bool):
            raise fail("integer", "true or false", self.integer)
        convert_fields(self, as_int, ("distinct", "vocab", "pad_id"), optional=True)
        convert_fields(self, as_float, ("padding",), optional=True)
        if self.padding is not None and not 0.0 <= self.padding <= 1.0:
            raise fail("padding", "a share between 0 and 1", self.padding)


@dataclass(frozen=True)
class Flag(Payload):
    """A diagnosis: what went wrong, the numbers that show it, and what to do. ``step`` is
    the step it was raised at (the event's; set by :func:`monitor.detectors.diagnose` and
    ``mon.add_flag``, so a flag held on its own still says when)."""

    kind: str
    severity: Severity
    message: str
    advice: str
    layer: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    step: int | None = None

    def __post_init__(self):
        as_str("kind", self.kind, 64)
        set_field(self, "severity", as_enum(Severity, "severity", self.severity))
        as_str("message", self.message)
        as_str("advice", self.advice)
        if self.layer is not None:
            check_label("layer", self.layer)
        set_field(self, "evidence", json_like("evidence", dict(self.evidence)))
        if self.step is not None:
            set_field(self, "step", as_int("step", self.step))


def reported_state(value: Any) -> RunState:
    """A state a training process reports. ``lost`` is the server's verdict on a silent
    run, never an event: a trainer that sent it would be saying it cannot be heard."""
    state = as_enum(RunState, "state", value)
    if state is RunState.LOST:
        raise fail("state", "a state a training process reports (lost is the server's verdict, not an event)",
                   value)
    return state


@dataclass(frozen=True)
class Status(Payload):
    state: RunState
    reason: str = ""
    by: str = ""  # who asked: "user", "dashboard", "early_stopping", ...

    def __post_init__(self):
        set_field(self, "state", reported_state(self.state))
        as_str("reason", self.reason)
        as_str("by", self.by, 256)


@dataclass(frozen=True)
class RunEnd(Payload):
    state: RunState
    steps: int
    duration: float
    dropped: int = 0  # events the training process could not hand on (queue full, spool at its bound)
    skipped: int = 0  # due samples not taken because the writer was behind (memory bound)

    def __post_init__(self):
        set_field(self, "state", reported_state(self.state))
        convert_fields(self, as_int, ("steps", "dropped", "skipped"))
        set_field(self, "duration", as_float("duration", self.duration))


@dataclass(frozen=True)
class Vitals(Payload):
    """Vital signs of training steps, taken on every step (not only sampled ones), so that
    what they show never depends on the sampling interval. One event carries a block of
    steps (the writer hands on a block every few steps: an event per step cost the writer
    more than taking the signs did).

    ``grad_norm[i]`` is the global L2 norm of the gradients the optimizer stepped with at
    the block's ``i``-th step (the number ``clip_grad_norm_`` reads); ``norms[i]`` the L2
    norm of each layer's own gradients (weights and biases together) at that step, in the
    order of the ``run_start`` model summary's rows that have parameters (its ``(total)``
    row left out); ``layers`` the indices of those rows when only some had a gradient in
    this block, and empty when all did (the usual case, so the names are not repeated);
    ``offsets[i]`` the ``i``-th step less the event's step, empty when the steps follow
    one another from the event's (the usual case). The one-step form of the first v2
    runs (``grad_norm`` a number, ``norms`` one row) reads as a block of one.
    """

    grad_norm: tuple[float, ...]
    norms: tuple[tuple[float, ...], ...] = ()
    layers: tuple[int, ...] = ()
    offsets: tuple[int, ...] = ()

    def __post_init__(self):
        if isinstance(self.grad_norm, (int, float)) and not isinstance(self.grad_norm, bool):  # one step
            set_field(self, "grad_norm", (self.grad_norm,))
            set_field(self, "norms", (self.norms,) if self.norms else ())
        set_field(self, "grad_norm", floats("grad_norm", self.grad_norm))
        set_field(self, "norms", tuple(floats("norms", row) for row in as_list("norms", self.norms)))
        set_field(self, "layers", tuple(as_int("layers", v, 0) for v in as_list("layers", self.layers)))
        set_field(self, "offsets", tuple(as_int("offsets", v, 0) for v in as_list("offsets", self.offsets)))
        steps = len(self.grad_norm)
        if not steps:
            raise fail("grad_norm", "the global gradient norm of at least one step", self.grad_norm)
        if self.norms and len(self.norms) != steps:
            raise fail("norms", f"one row of layer norms per step ({steps}), or none", self.norms)
        widths = {len(row) for row in self.norms}
        if len(widths) > 1 or (self.layers and widths and widths != {len(self.layers)}):
            raise fail("norms", f"rows of one length ({len(self.layers)}: the rows of layers)" if self.layers
                       else "rows of one length (a norm per layer)", self.norms)
        if self.offsets and (len(self.offsets) != steps
                             or any(b <= a for a, b in zip(self.offsets, self.offsets[1:]))):
            raise fail("offsets", f"{steps} increasing step offsets like grad_norm (or none: consecutive steps)",
                       self.offsets)

    def steps(self, step: int) -> tuple[int, ...]:
        """The block's steps, given the event's ``step``."""
        return tuple(step + o for o in self.offsets) if self.offsets else tuple(range(step, step + len(self.grad_norm)))

    @staticmethod
    def layer_names(model: tuple["ModuleInfo", ...]) -> tuple[str, ...]:
        """The names ``norms`` refer to, from the run's model summary (``RunStart.model``)."""
        return tuple(m.name for m in model if m.name != "(total)")

    def by_layer(self, rows: tuple[str, ...], i: int = 0) -> dict[str, float]:
        """The layer norms of the block's ``i``-th step by layer name, given
        :meth:`layer_names` of the run's model."""
        norms = self.norms[i] if self.norms else ()
        which = self.layers or range(len(norms))
        return {rows[r]: norm for r, norm in zip(which, norms) if r < len(rows)}


def _plain_scalars(raw: dict) -> "Event | None":
    """A scalars event in its plainest form, built without the general checks, or None.

    Why: scalars are most of what a busy server receives (every step of every run), and the
    general path (a dataclass built and checked field by field) cost a scaled-out server a
    quarter of its time. This accepts only what the full check accepts and builds what it
    builds: exact ints for ``seq`` and ``step`` in range, a finite float ``wall``, a run id and
    metric names the full check accepted before (its caches), float values (NaN and Inf
    included). Anything else, from an int-valued loss to a first sight of a run, returns None
    and goes the general way, which normalises it or names what is wrong."""
    run, seq, step, wall, data = raw["run"], raw["seq"], raw["step"], raw["wall"], raw["data"]
    if not (type(seq) is int and type(step) is int and type(wall) is float and type(data) is dict
            and 0 <= seq < INT_LIMIT and 0 <= step < INT_LIMIT and math.isfinite(wall)
            and len(data) == 1 and type(run) is str and run in ACCEPTED_RUN_IDS):
        return None
    values = data.get("values")
    if type(values) is not dict or not values:
        return None
    for name, value in values.items():
        if type(value) is not float or name not in ACCEPTED_SCALAR_NAMES:
            return None
    payload = object.__new__(Scalars)  # as Payload.unchecked, minus its generality (one field)
    payload.__dict__["values"] = values
    return Event.unchecked(run, seq, step, wall, Kind.SCALARS, payload)


PAYLOADS: dict[Kind, type[Payload]] = {
    Kind.RUN_START: RunStart,
    Kind.SCALARS: Scalars,
    Kind.LAYER_STATS: LayerStats,
    Kind.FILTERS: Filters,
    Kind.INPUT_STATS: InputStats,
    Kind.FLAG: Flag,
    Kind.STATUS: Status,
    Kind.RUN_END: RunEnd,
    Kind.VITALS: Vitals,
}


_EVENT_FIELDS = frozenset({"run", "seq", "step", "wall", "kind", "data"})


@dataclass(frozen=True)
class Event:
    run: str
    seq: int
    step: int
    wall: float
    kind: Kind
    data: Payload

    def __post_init__(self):
        check_run_id(self.run)
        convert_fields(self, as_int, ("seq", "step"))  # written only where conversion changed them
        convert_fields(self, as_float, ("wall",))
        if not math.isfinite(self.wall):
            raise fail("wall", "finite unix seconds", self.wall)
        if type(self.kind) is not Kind:
            set_field(self, "kind", as_enum(Kind, "kind", self.kind))
        expected = PAYLOADS[self.kind]
        if not isinstance(self.data, expected):
            raise fail(f"data of a {self.kind.value} event", expected.__name__, type(self.data).__name__)

    @classmethod
    def unchecked(cls, run: str, seq: int, step: int, wall: float, kind: Kind, data: Payload) -> "Event":
        """Build without validating: only for events babysit's writer stamps itself (its run
        id checked once, its seqs and steps its own counters), on the hot path of every step.
        Everything that arrives from elsewhere goes through the constructor."""
        event = object.__new__(cls)
        event.__dict__.update(run=run, seq=seq, step=step, wall=wall, kind=kind, data=data)
        return event

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "seq": self.seq, "step": self.step, "wall": self.wall,
                "kind": self.kind.value, "data": self.data.to_dict()}

    @classmethod
    def from_dict(cls, raw: Any) -> "Event":
        if type(raw) is not dict and not isinstance(raw, Mapping):  # typing's isinstance is slow: dict first
            raise fail("event", "a mapping", raw)
        if raw.keys() != _EVENT_FIELDS:
            raise SchemaError(f"event: expected fields {sorted(_EVENT_FIELDS)}, got {shown_names(raw)}")
        if raw["kind"] == "scalars":
            fast = _plain_scalars(raw)
            if fast is not None:
                return fast
        return cls._checked(raw)

    @classmethod
    def _checked(cls, raw: Mapping) -> "Event":
        """The general path of :meth:`from_dict`, for a mapping with exactly the event's fields."""
        kind = as_enum(Kind, "kind", raw["kind"])
        return cls(run=raw["run"], seq=raw["seq"], step=raw["step"], wall=raw["wall"], kind=kind,
                   data=PAYLOADS[kind].from_dict(raw["data"]))
