"""What ``babysit sweep`` hands each trial's process, and what the process hands back.

A trial runs as its own process (``babysit run SCRIPT ARGS``, the arguments filled in
with its parameters), so the sweep and the trial meet through two plain documents:

* :class:`TrialSpec`, in the environment variable :data:`TRIAL_ENV` (JSON): the sweep,
  the trial's number and parameters, the search space (recorded in the run's config, so
  that the run store alone can show the sweep and give its advice), the objective, and
  how to prune. ``babysit run`` reads it, tags the run and watches it with a
  :class:`monitor.sweeps.pruning.TrialPolicy`.
* :class:`Outcome`, written as JSON to ``spec.outcome`` when the run ends: its run id, how
  it ended (with the stop's reason for a pruned trial), and every value of the objective,
  which the sweep tells Optuna. It does not depend on where the run was stored (a local
  store, the sweep's dashboard, or a remote ``babysit serve``), and a trial that dies
  without writing it is a failed trial with its exit status.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

#: The environment variable that makes a ``babysit run`` process a sweep's trial.
TRIAL_ENV = "BABYSIT_TRIAL"
DIRECTIONS = ("minimize", "maximize")
PRUNERS = ("median", "halving")


@dataclass(frozen=True)
class TrialSpec:
    sweep: str
    number: int
    params: Mapping[str, Any]
    space: tuple[str, ...]  # the dimensions' --space specs
    objective: str = "val_loss"
    direction: str = "minimize"
    prune: bool = True  # by diagnosis (monitor.sweeps.pruning)
    pruner: str | None = None  # Optuna's, on the objective: median or halving
    storage: str | None = None  # the study's, where the Optuna pruner reads the other trials
    study: str | None = None
    trial_id: int | None = None
    outcome: str | None = None  # the file the Outcome is written to
    epochs: float | None = None  # from the command (--epochs N) where it says
    sampler: str = "random"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{TRIAL_ENV}: direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.pruner is not None and self.pruner not in PRUNERS:
            raise ValueError(f"{TRIAL_ENV}: pruner must be one of {', '.join(PRUNERS)} or null, got {self.pruner!r}")
        if self.pruner is not None and not (self.storage and self.study and self.trial_id is not None):
            raise ValueError(f"{TRIAL_ENV}: the {self.pruner} pruner needs the study's storage, name and trial id")

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def config(self) -> dict[str, Any]:
        """What the run's config records of the trial (the sweep page and its advice read it)."""
        return {"sweep": self.sweep, "trial": self.number, "params": dict(self.params), "space": list(self.space),
                "objective": self.objective, "direction": self.direction, "sampler": self.sampler}

    def to_env(self) -> str:
        return json.dumps({**asdict(self), "params": dict(self.params), "space": list(self.space)})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "TrialSpec | None":
        """The spec this process was started with, or None when it is no sweep's trial; a
        spec that cannot be read is a ValueError naming the variable."""
        text = (os.environ if environ is None else environ).get(TRIAL_ENV)
        if not text:
            return None
        try:
            data = json.loads(text)
            data["space"] = tuple(data.get("space", ()))
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{TRIAL_ENV}: not a trial of `babysit sweep` ({exc})") from None


@dataclass(frozen=True)
class Outcome:
    """How one trial ended. ``state``: the run's end (finished, stopped, diverged, crashed,
    interrupted); ``pruned``: the stop's reason when the sweep's policy ended it (None
    otherwise); ``values``: the objective at each evaluation, as (step, value)."""

    run: str | None
    state: str
    reason: str = ""
    pruned: str | None = None
    pruned_by: str | None = None  # the flag kind, or the Optuna pruner
    step: int | None = None
    values: tuple[tuple[int, float], ...] = ()
    seconds: float | None = None
    standard_errors: tuple[tuple[int, float], ...] = ()  # (step, error) of the evaluations that have one

    def best(self, maximize: bool = False) -> float | None:
        found = best_of(self.values, maximize)
        return found[1] if found else None

    def noise(self, maximize: bool = False) -> float | None:
        """The noise in the trial's value that comes from the validation set's size: the
        standard error of the evaluation its value comes from (its best), over that
        evaluation's batches; None when it ran over one batch only (a difference between
        evaluations would count the model's own progress as noise)."""
        return error_at_best(self.values, self.standard_errors, maximize)

    def write(self, path: str | Path) -> None:
        """Written whole or not at all (a rename), so that the sweep never reads half of it."""
        path = Path(path)
        part = path.with_suffix(path.suffix + ".part")
        part.write_text(json.dumps({**asdict(self), "values": [[s, _finite_or_text(v)] for s, v in self.values]}))
        os.replace(part, path)

    @classmethod
    def read(cls, path: str | Path) -> "Outcome | None":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        data["values"] = tuple((int(s), float(v)) for s, v in data.get("values", ()))
        data["standard_errors"] = tuple((int(s), float(e)) for s, e in data.get("standard_errors", ()))
        return cls(**data)


def best_of(values: Sequence[tuple[int, float]], maximize: bool = False) -> tuple[int, float] | None:
    """The (step, value) of the best finite value (the first of equals), None with none."""
    finite = [(s, v) for s, v in values if math.isfinite(v)]
    if not finite:
        return None
    return (max if maximize else min)(finite, key=lambda pair: pair[1])


def error_at_best(values: Sequence[tuple[int, float]], errors: Sequence[tuple[int, float]],
                  maximize: bool = False) -> float | None:
    """The standard error at the step of the best finite value, None where it has none."""
    best = best_of(values, maximize)
    found = [e for s, e in errors if best is not None and s == best[0] and math.isfinite(e)]
    return found[-1] if found else None


def _finite_or_text(value: float):
    return value if math.isfinite(value) else str(value)  # json has no NaN; float("nan") reads it back

