"""The search engine is Optuna's: its study (trial numbers, samplers, pruners) kept in a
storage that several ``babysit sweep`` processes, on one machine or many, share. This
module is the one that imports it (the ``sweep`` extra: ``pip install 'babysit[sweep]'``).

* **Random search by default**, as the notes recommend, with a sampler seeded by the
  trial's *number* (:func:`numbered_random_sampler`): processes that join one study never
  draw the same trials, and ``--seed`` makes a sweep reproducible however many processes
  ran it. ``tpe`` is Optuna's TPE; ``grid`` Optuna's grid over :data:`GRID_POINTS` values
  per numeric dimension (log-spaced on a log scale), allowed with a warning.
* **Storage**: an SQLite file by default (``<logdir>/sweeps.sqlite3``), or any URL Optuna's
  RDB storage takes (``postgresql://...``); SQLite waits up to :data:`SQLITE_TIMEOUT` for
  another process's write instead of failing.
* **Pruners** on the objective (``median``, ``halving``), asked from the trial's own
  process at each evaluation (:func:`pruner_ask`), beside babysit's pruning by diagnosis.
"""
from __future__ import annotations

import functools
import math
import random
import secrets
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from monitor.sweeps.space import Dimension
from monitor.sweeps.trial import TrialSpec

SAMPLERS = ("random", "tpe", "grid")
#: Values per numeric dimension on a grid.
GRID_POINTS = 4
#: Seconds a process waits for another's write to the SQLite study before giving up.
SQLITE_TIMEOUT = 60.0
#: Tries to open a storage (another process may be creating its tables), and the pause
#: before the second (growing by as much for each next).
STORAGE_TRIES = 4
STORAGE_RETRY_SECONDS = 0.2
#: The study's user attribute that records its space, so that a process joining with another is refused.
SPACE_ATTR = "babysit_space"
EXTRA = "babysit sweep searches with Optuna, which is not installed: pip install 'babysit[sweep]'"


def optuna():
    try:
        import optuna as module
    except ImportError:
        raise ImportError(EXTRA) from None
    module.logging.set_verbosity(module.logging.WARNING)  # the sweep prints its own line per trial
    return module


class StudyError(ValueError):
    """A study that cannot be opened or joined as asked."""


def storage_url(text: str | None, logdir: str | Path) -> str:
    """The study's storage: a URL as given, a file path as an SQLite URL, or the default file."""
    if not text:
        return f"sqlite:///{(Path(logdir) / 'sweeps.sqlite3').resolve()}"
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).resolve()}"


def storage(url: str, tries: int = STORAGE_TRIES):
    """Optuna's RDB storage at ``url``. Processes that open a new one at the same moment race
    to create its tables (one of them meets "table studies already exists" or the schema
    version row the other wrote): a failure is tried again, ``tries`` times in all, after
    which it is a StudyError naming the URL and the cause."""
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else None
    module = optuna()
    for attempt in range(tries):
        try:
            return module.storages.RDBStorage(url, engine_kwargs=engine)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and the driver's errors, named
            if attempt + 1 < tries:
                time.sleep(STORAGE_RETRY_SECONDS * (attempt + 1))
                continue
            raise StudyError(f"--storage {url}: cannot open the study's storage ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def distributions(space: Sequence[Dimension]) -> dict[str, Any]:
    dist = optuna().distributions
    out = {}
    for d in space:
        if d.distribution == "choice":
            out[d.name] = dist.CategoricalDistribution(d.choices)
        elif d.distribution in ("int", "logint"):
            out[d.name] = dist.IntDistribution(int(d.low), int(d.high), log=d.log)
        else:
            out[d.name] = dist.FloatDistribution(d.low, d.high, log=d.log)
    return out


def grid_values(d: Dimension, points: int = GRID_POINTS) -> list:
    """A dimension's values on a grid: its choices, or ``points`` values spread evenly on its scale."""
    if d.distribution == "choice":
        return list(d.choices)
    if d.log:
        low, high = math.log10(d.low), math.log10(d.high)
        values = [10 ** (low + (high - low) * i / (points - 1)) for i in range(points)]
    else:
        values = [d.low + (d.high - d.low) * i / (points - 1) for i in range(points)]
    if d.distribution in ("int", "logint"):
        return sorted({int(round(v)) for v in values})
    return [float(f"{v:.6g}") for v in values]


def grid_size(space: Sequence[Dimension], points: int = GRID_POINTS) -> int:
    return math.prod(len(grid_values(d, points)) for d in space)


def sampler(name: str, space: Sequence[Dimension], seed: int | None = None, points: int = GRID_POINTS):
    samplers = optuna().samplers
    if name == "random":
        return numbered_random_sampler(seed)
    if name == "tpe":
        return samplers.TPESampler(seed=seed)
    if name == "grid":
        return samplers.GridSampler({d.name: grid_values(d, points) for d in space}, seed=seed)
    raise StudyError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {name!r}")


def open_study(name: str, url: str, direction: str, space: Sequence[Dimension], search) -> Any:
    """Create the study, or join it if it exists: with the same space and direction only."""
    study = optuna().create_study(study_name=name, storage=storage(url), sampler=search, direction=direction,
                                  load_if_exists=True)
    specs = [d.spec() for d in space]
    recorded = study.user_attrs.get(SPACE_ATTR)
    if recorded is None:
        study.set_user_attr(SPACE_ATTR, specs)
    elif sorted(recorded) != sorted(specs):
        raise StudyError(f"--sweep {name}: the study in {url} searches {', '.join(recorded)}; this process was "
                         f"given {', '.join(specs)}: join it with the same --space, or name a new sweep")
    if study.direction.name.lower() != direction:
        raise StudyError(f"--sweep {name}: the study in {url} is to {study.direction.name.lower()} its objective; "
                         f"this process was asked to {direction} it")
    return study


def pruner(name: str):
    pruners = optuna().pruners
    if name == "median":
        return pruners.MedianPruner()
    if name == "halving":
        return pruners.SuccessiveHalvingPruner()
    raise StudyError(f"--pruner: expected median or halving, got {name!r}")


def pruner_ask(spec: TrialSpec) -> Callable[[int, float], str | None]:
    """For the trial's own process: report each evaluation of the objective to the study,
    and answer a reason when Optuna's pruner says the trial is behind the others."""
    study = optuna().load_study(study_name=spec.study, storage=storage(spec.storage), pruner=pruner(spec.pruner))
    trial = optuna().trial.Trial(study, spec.trial_id)

    def ask(step: int, value: float) -> str | None:
        if not math.isfinite(value):
            return None
        trial.report(value, step)
        if trial.should_prune():
            return (f"Optuna's {spec.pruner} pruner: {spec.objective} {value:.4g} at step {step} is behind "
                    "the study's other trials at that step")
        return None
    return ask


def numbered_random_sampler(seed: int | None = None):
    """Random search whose draws depend on the seed and the trial's number only, not on the
    process that asks: two processes of one study never repeat each other's trials, and
    ``seed`` reproduces a sweep whatever its layout. Independent draws on each dimension's
    own scale (log-uniform on a log dimension), as Optuna's RandomSampler makes them."""
    return _numbered_random_class()(seed)


@functools.lru_cache(maxsize=1)
def _numbered_random_class():
    class NumberedRandomSampler(optuna().samplers.BaseSampler):
        def __init__(self, seed: int | None):
            self.seed = secrets.randbits(63) if seed is None else int(seed)

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            return _draw(random.Random(f"{self.seed}:{trial.number}:{param_name}"), param_distribution)
    return NumberedRandomSampler


def _draw(rng: random.Random, dist) -> Any:
    choices = getattr(dist, "choices", None)
    if choices is not None:
        return choices[rng.randrange(len(choices))]
    low, high, log = dist.low, dist.high, getattr(dist, "log", False)
    integer = type(dist).__name__ == "IntDistribution"
    if integer:
        low, high = low - 0.5, high + 0.5  # each whole number gets its share of the scale
        if log:
            low = max(low, 0.5)
    x = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
    return int(min(max(round(x), dist.low), dist.high)) if integer else min(max(x, low), high)
