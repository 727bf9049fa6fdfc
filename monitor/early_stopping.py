"""Early stopping: when to end a run, decided from the numbers alone (no torch).

"Early stopping almost always" (CS231n): keep the model of the best validation epoch
instead of the last. The policy carries the names users know from Keras and Lightning:
``EarlyStopping(monitor="val_loss", mode="min", patience=3, min_delta=0.0,
restore_best_weights=False, stop_on=("divergence",))``.

* Every logged value of ``monitor`` is an evaluation. It improves when it beats the best
  so far by more than ``min_delta`` (lower with ``mode="min"``, higher with ``"max"``);
  the ``patience``-th evaluation in a row without improvement stops the run (Keras and
  Lightning count the same way; ``patience=0`` stops at the first one, like 1). A NaN or
  Inf value stops at once (Lightning's ``check_finite``): the metric will not come back.
* A flag whose kind is in ``stop_on`` stops the run too: by default a diverged run
  (NaN or exploding loss) is ended at once instead of burning the rest of its budget.

The decision is data, :class:`StopReason` (a :class:`StopCause` and a message), the same
shape whichever way a stop comes: the user, the dashboard's button, this policy, a flag,
or another rank of a distributed run. The training process acts on it
(``trainer_hooks``: ``mon.should_stop``, the restore of the best weights, the agreement of
all ranks); :meth:`EarlyStopping.replay` asks where a stored run would have stopped.
"""
from __future__ import annotations

import difflib
import importlib
import math
import numbers
import pkgutil
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any, Iterable

from monitor.events import Event, Flag, Kind, RunState
from monitor.validation import is_scalar_name

#: Evaluations without improvement before stopping (Lightning's default; Keras's is 0).
PATIENCE = 3
MODES = ("min", "max")


class StopCause(str, Enum):
    """Who or what ended the run early (``Status.by`` of the run's ``stopping`` event)."""

    USER = "user"  # mon.stop() in the training script
    DASHBOARD = "dashboard"  # the stop button
    EARLY_STOPPING = "early_stopping"  # the monitored metric stopped improving, or is not finite
    FLAG = "flag"  # a detector's flag whose kind is in stop_on
    PEER = "peer"  # another rank of a distributed run asked to stop
    PRUNED = "pruned"  # a sweep ended a hopeless trial (monitor.sweeps.pruning)


@dataclass(frozen=True)
class StopReason:
    """Why a run stops: the cause, a plain message, the step it was decided at and, for a
    stop on a flag, the flag's kind."""

    cause: StopCause
    message: str
    step: int
    flag: str | None = None

    @property
    def end_state(self) -> RunState:
        """How the run ends: a stop on a divergence flag is a diverged run, any other stop a stopped one."""
        return RunState.DIVERGED if self.flag == "divergence" else RunState.STOPPED


@dataclass
class EarlyStopping:
    """The early-stopping policy; see the module. ``update_metric`` and ``update_flag``
    are what the training process calls; the state is the best value, its step, and the
    evaluations waited since."""

    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = PATIENCE
    min_delta: float = 0.0
    restore_best_weights: bool = False
    stop_on: tuple[str, ...] = ("divergence",)
    check_finite: bool = True
    best: float | None = field(default=None, init=False)
    best_step: int | None = field(default=None, init=False)
    wait: int = field(default=0, init=False)

    def __post_init__(self):
        """Each option that cannot work is a ValueError naming it, what came and what to
        pass instead. A negative ``min_delta`` is taken as its size, as Keras does: the
        direction comes from ``mode``."""
        if not isinstance(self.monitor, str) or not is_scalar_name(self.monitor):
            raise _refused("monitor", "the name of a metric given to mon.log (1-128 characters from "
                           "A-Z a-z 0-9 _ . : / -)", self.monitor, "pass e.g. monitor='val_loss' and log it "
                           "with mon.log(val_loss=...) after each validation")
        if self.mode not in MODES:
            given = self.mode.lower() if isinstance(self.mode, str) else ""
            close = [m for m in MODES if given.startswith(m)] or difflib.get_close_matches(given, MODES, n=1)
            raise _refused("mode", "'min' (a loss, lower is better) or 'max' (an accuracy)", self.mode,
                           f"pass mode={close[0]!r}" if close else "pass mode='min' or mode='max'")
        if isinstance(self.patience, bool) or not isinstance(self.patience, numbers.Integral) or self.patience < 0:
            raise _refused("patience", "a whole number >= 0 of evaluations of the metric without improvement "
                           "(validation checks, not epochs)", self.patience, f"pass e.g. patience={PATIENCE}")
        self.patience = int(self.patience)
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, numbers.Real) \
                or not math.isfinite(self.min_delta):
            raise _refused("min_delta", "a finite number, the least change of the metric that counts as an "
                           "improvement, in its units (mode gives the direction)", self.min_delta,
                           "pass e.g. min_delta=0.001, or 0")
        self.min_delta = abs(float(self.min_delta))  # the sign comes from the mode, as in Keras
        for name in ("restore_best_weights", "check_finite"):
            if not isinstance(getattr(self, name), bool):
                raise _refused(name, "True or False", getattr(self, name), f"pass {name}=True or {name}=False")
        self.stop_on = _flag_kinds(self.stop_on)

    def improves(self, value: float) -> bool:
        """Whether ``value`` beats the best so far by more than ``min_delta``."""
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update_metric(self, step: int, value: float) -> StopReason | None:
        """One evaluation of ``monitor`` at ``step``: a :class:`StopReason` when the run should stop."""
        if not math.isfinite(value):
            if not self.check_finite:
                return self._wait(step, value)
            return StopReason(StopCause.EARLY_STOPPING, f"{self.monitor} is {value} at step {step}: "
                              "the monitored metric is not finite", step)
        if self.improves(value):
            self.best, self.best_step, self.wait = value, step, 0
            return None
        return self._wait(step, value)

    def _wait(self, step: int, value: float) -> StopReason | None:
        self.wait += 1
        if self.wait < self.patience:
            return None
        best = "none finite" if self.best is None else f"best {self.best:.4g} at step {self.best_step}"
        delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return StopReason(StopCause.EARLY_STOPPING,
                          f"{self.monitor} has not improved{delta} for {self.wait} evaluations "
                          f"({best}, now {value:.4g} at step {step})", step)

    @property
    def improved_last(self) -> bool:
        """Whether the last evaluation set a new best (the moment to keep the weights)."""
        return self.wait == 0 and self.best is not None

    def update_flag(self, flag: Flag, step: int) -> StopReason | None:
        if flag.kind not in self.stop_on:
            return None
        where = f" [{flag.layer}]" if flag.layer else ""
        return StopReason(StopCause.FLAG, f"{flag.kind}{where}: {flag.message}", step, flag.kind)

    def update(self, event: Event) -> StopReason | None:
        """The decision for one stored event (scalars with ``monitor``, or a flag)."""
        if event.kind is Kind.SCALARS and self.monitor in event.data.values:
            return self.update_metric(event.step, event.data.values[self.monitor])
        if event.kind is Kind.FLAG:
            return self.update_flag(event.data, event.step)
        return None

    def replay(self, events: Iterable[Event]) -> StopReason | None:
        """Where a stored run would have stopped under this policy (None: it would have run on)."""
        for event in events:
            reason = self.update(event)
            if reason is not None:
                return reason
        return None


def _refused(option: str, expected: str, value: Any, hint: str) -> ValueError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return ValueError(f"EarlyStopping: {option} must be {expected}; got {shown}: {hint}")


@lru_cache(maxsize=1)
def known_flag_kinds() -> tuple[str, ...]:
    """The flag kinds the detectors raise: each detector module of :mod:`monitor.detectors`
    names its own ``KIND``, so this list is not kept by hand."""
    import monitor.detectors as package

    modules = (importlib.import_module(f"{package.__name__}.{info.name}")
               for info in pkgutil.iter_modules(package.__path__))
    return tuple(sorted({module.KIND for module in modules if isinstance(getattr(module, "KIND", None), str)}))


def _flag_kinds(stop_on: Any) -> tuple[str, ...]:
    """``stop_on`` as a tuple of known flag kinds (one kind alone, or None for none, too): a
    misspelt kind would never match a flag and the run would never stop on it."""
    kinds = (stop_on,) if isinstance(stop_on, str) else () if stop_on is None else stop_on
    known = known_flag_kinds()
    expected = f"flag kinds among {', '.join(known)}"
    try:
        kinds = tuple(kinds)
    except TypeError:
        raise _refused("stop_on", expected, stop_on, "pass e.g. stop_on=('divergence',), or () for none") from None
    for kind in kinds:
        if not isinstance(kind, str):
            raise _refused("stop_on", expected, stop_on, f"{kind!r} is not a kind's name: pass names such as "
                           "stop_on=('divergence',)")
        if kind not in known:
            close = difflib.get_close_matches(kind, known, n=1)
            raise _refused("stop_on", expected, stop_on, f"no detector raises {kind!r}: "
                           + (f"did you mean {close[0]!r}?" if close else "pass one of the kinds above"))
    return kinds
