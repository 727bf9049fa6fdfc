"""The options of ``watch()``: one frozen record, checked once, where it is made.

A wrong option fails at ``watch()``, with a message that names it, shows what came, says
what is expected and what to pass instead, rather than steps later inside a hook or the
writer thread. The field list is the list of options: an unknown keyword is refused with
the known ones and the closest match. After the arguments, ``BABYSIT_SERVER`` and
``BABYSIT_TOKEN`` fill in ``server`` and ``token`` when they are not given
(:meth:`WatchConfig.from_options`). The model and the optimizer are not options; their
checks live here too so that every message of ``watch`` is written in one place.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import os
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import nn

from monitor.early_stopping import EarlyStopping
from monitor.protocol import SERVER_EXAMPLE, server_url_problem
from monitor.validation import is_run_id
from trainer_hooks.agreement import AGREE_EVERY
from trainer_hooks.reduce import SAMPLE_SIZE
from trainer_hooks.schedule import OVERHEAD_BUDGET

#: Sampled steps between two pictures of the first-layer filters (they change slowly).
FILTERS_EVERY = 5
#: Sampled batches over which a unit must stay silent to count as dead.
DEAD_WINDOW = 8
#: Longest run name: the stored id adds a time stamp and a tag, and must stay within the
#: 128 characters of a run id (monitor.validation).
RUN_NAME_LENGTH = 100
#: What ``ranks`` may be: the ranks of a distributed run that record layer statistics.
RANKS = ("zero", "all")
#: The variables that stand in for options that are not given (an empty one counts as unset).
ENVIRONMENT = {"server": "BABYSIT_SERVER", "token": "BABYSIT_TOKEN"}


@dataclasses.dataclass(frozen=True)
class WatchConfig:
    """Every option of :func:`trainer_hooks.watch`, with its default and its unit.

    * ``run``: the run's name, 1-100 characters from ``A-Z a-z 0-9 . _ -`` (the stored
      id adds the time and a tag); None: the model's class name.
    * ``config``: the hyper-parameters to record with the run (a mapping).
    * ``every``: steps from one sampled step to the next; None: sized automatically to
      ``overhead``. Scalars are recorded on every step either way.
    * ``logdir``: the directory of the SQLite store, or with a server, of the spool of
      what it has not acknowledged yet (created if missing).
    * ``overhead``: the share of step time automatic sampling may spend, as measured
      (a fraction: 0.005 is 0.5 %); used only with ``every=None``.
    * ``sample_size``: elements drawn per tensor for its quantiles and histogram.
    * ``dead_window``: sampled batches a unit must stay silent for to count as dead.
    * ``filters_every``: sampled steps between two pictures of the first-layer filters.
    * ``server``: the URL of ``babysit serve`` (``http(s)://host:port``), default
      ``$BABYSIT_SERVER``; None: the local store only.
    * ``token``: the server's shared secret, default ``$BABYSIT_TOKEN``.
    * ``dashboard``: True serves the live dashboard from this process (not with ``server``).
    * ``detectors``: what diagnoses the run, objects with ``update(event) -> list[Flag]``;
      None: the default set of :mod:`monitor.detectors`; ``[]``: none.
    * ``early_stopping``: a :class:`monitor.EarlyStopping` policy, or None.
    * ``agree_every``: steps between two rounds of the ranks' stop agreement (distributed runs).
    * ``ranks``: in a distributed run, which ranks record layer statistics: ``"zero"``
      (rank 0, the default: the replicas hold the same weights) or ``"all"``. Every rank
      records its scalars and vital signs.
    """

    run: str | None = None
    config: Mapping[str, Any] | None = None
    every: int | None = None
    logdir: Path = Path("runs")
    overhead: float = OVERHEAD_BUDGET
    sample_size: int = SAMPLE_SIZE
    dead_window: int = DEAD_WINDOW
    filters_every: int = FILTERS_EVERY
    server: str | None = None
    token: str | None = None
    dashboard: bool = False
    detectors: tuple | None = None
    early_stopping: EarlyStopping | None = None
    agree_every: int = AGREE_EVERY
    ranks: str = "zero"

    def __post_init__(self):
        def set_(name: str, value: Any) -> None:  # frozen: the checked value replaces the given one
            object.__setattr__(self, name, value)

        set_("run", _run_name(self.run))
        set_("config", _hyper_parameters(self.config))
        set_("every", _count("every", self.every, 1, "steps", none="automatic sampling", example=10))
        set_("logdir", _directory("logdir", self.logdir))
        set_("overhead", _fraction("overhead", self.overhead))
        set_("sample_size", _count("sample_size", self.sample_size, 1, "elements per tensor", example=SAMPLE_SIZE))
        set_("dead_window", _count("dead_window", self.dead_window, 1, "sampled batches", example=DEAD_WINDOW))
        set_("filters_every", _count("filters_every", self.filters_every, 1, "sampled steps",
                                     example=FILTERS_EVERY))
        set_("agree_every", _count("agree_every", self.agree_every, 1, "steps", example=AGREE_EVERY))
        if not isinstance(self.dashboard, bool):
            raise TypeError(_message("dashboard", "True or False", self.dashboard,
                                     f"pass dashboard={bool(self.dashboard)}"))
        if self.server is not None:
            set_("server", check_server_url("server", self.server))
        if self.dashboard and self.server:
            raise ValueError("watch: give either server=URL (stream to `babysit serve`) or dashboard=True "
                             "(serve a dashboard from this process), not both: pass only one of them")
        if self.token is not None:
            check_token("token", self.token)
        if self.ranks not in RANKS:
            raise ValueError(_message("ranks", "'zero' or 'all' (the ranks that record layer statistics)",
                                      self.ranks, "pass ranks='zero' (the default) or ranks='all'"))
        set_("detectors", _detectors(self.detectors))
        _early_stopping(self.early_stopping)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> "WatchConfig":
        """The config of ``watch(model, optimizer, **options)``: unknown options are a
        TypeError naming the closest known one; ``server`` and ``token`` not given come
        from ``environ`` (default ``os.environ``), as they always have (no server
        variable with ``dashboard=True``: the dashboard is the server)."""
        unknown = [name for name in options if name not in OPTIONS]
        if unknown:
            guesses = [f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
                       for name in unknown for close in [difflib.get_close_matches(name, OPTIONS, n=1)]]
            raise TypeError(f"watch: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(guesses)}; "
                            f"the known options are {', '.join(map(repr, OPTIONS))}")
        environ = os.environ if environ is None else environ
        values = dict(options)
        for name, variable in ENVIRONMENT.items():
            if values.get(name) is None and environ.get(variable) and not (name == "server" and
                                                                           values.get("dashboard") is True):
                values[name] = environ[variable]
                if name == "server":  # named as the variable, so that the fix is found
                    check_server_url(variable, values[name])
        return cls(**values)


#: The known options: the fields, so that no list of names is kept by hand.
OPTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(WatchConfig))


# ----------------------------------------------------------------------- the model and optimizer

def check_model(model: Any) -> nn.Module:
    """``watch``'s first argument: the module being trained."""
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, type) and issubclass(model, nn.Module):
        hint = f"pass an instance, e.g. watch({model.__name__}(...), optimizer)"
    elif isinstance(model, Mapping):
        hint = "a state_dict holds weights only: build the model, load_state_dict() it, and pass the model"
    elif isinstance(model, torch.Tensor):
        hint = "pass the module that computes it, e.g. watch(model, optimizer)"
    else:
        hint = "pass the network itself, e.g. watch(model, optimizer)"
    raise TypeError(f"watch: model must be a torch.nn.Module, got {_kind(model)}: {hint}")


def check_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """``watch``'s second argument: the optimizer whose ``step()`` ends a training step, or None."""
    if optimizer is None or isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        hint = f"pass an instance, e.g. torch.optim.{optimizer.__name__}(model.parameters(), lr=...)"
    elif isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        hint = "that is a learning-rate scheduler: pass its optimizer (scheduler.optimizer)"
    elif isinstance(optimizer, str):
        hint = f"to name the run, pass it by keyword: run={optimizer!r}"
    elif inspect.isgenerator(optimizer) or isinstance(optimizer, (list, tuple)):
        hint = "pass the optimizer built on the parameters, e.g. torch.optim.SGD(model.parameters(), lr=0.1)"
    else:
        hint = "pass the optimizer you call step() on, or leave it out to count a step per mon.log(loss=...)"
    raise TypeError(f"watch: optimizer must be a torch.optim.Optimizer or None, got {_kind(optimizer)}: {hint}")


# ----------------------------------------------------------------------- one check per kind of option

def _kind(value: Any) -> str:
    """A type's name (``got function``), or for a class ``the class X``."""
    return f"the class {value.__name__}" if isinstance(value, type) else type(value).__name__


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _shown(value: Any) -> str:
    """What came, short: the value for plain ones, with its type where that is the surprise."""
    if value is None or isinstance(value, (bool, int, float, Path)):
        return repr(value)
    if isinstance(value, str):
        text = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
        return f"{text} (a str)"
    return _a(_kind(value)) if not isinstance(value, type) else _kind(value)


def _message(option: str, expected: str, value: Any, hint: str, shown: str | None = None) -> str:
    return f"watch: {option} must be {expected}; got {shown or _shown(value)}: {hint}"


def _count(option: str, value: Any, minimum: int, unit: str, *, example: int, none: str | None = None):
    """A whole number of ``unit`` >= ``minimum`` (numpy integers too, bools not); None
    where ``none`` says what None means."""
    if value is None and none:
        return None
    expected = f"a whole number of {unit} >= {minimum}" + (f", or None for {none}" if none else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, str) and value.strip().isdigit():
            hint = f"pass the number, not text: {option}={int(value)}"
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            hint = f"pass a whole number such as {option}={max(minimum, round(value))}"
        else:
            hint = f"pass a whole number such as {option}={example}"
        raise TypeError(_message(option, expected, value, hint))
    if value < minimum:
        raise ValueError(_message(option, expected, value, f"pass {option}={minimum} or more, e.g. {example}"))
    return int(value)


def _fraction(option: str, value: Any) -> float:
    expected = "a fraction of step time between 0 and 1 (0.005 is 0.5 %)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(_message(option, expected, value, f"pass a number such as {option}={OVERHEAD_BUDGET}"))
    if not 0 < value < 1:
        hint = (f"it is a fraction, not a per cent: for {value:g} % pass {option}={value / 100:g}"
                if 1 <= value < 100 else f"pass e.g. {option}={OVERHEAD_BUDGET} (0.5 %)")
        raise ValueError(_message(option, expected, value, hint))
    return float(value)


def _directory(option: str, value: Any) -> Path:
    """A directory path (created later if missing); an existing file on the way is refused now."""
    expected = "the path of a directory (created if missing)"
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise TypeError(_message(option, expected, value, f"pass a path such as {option}='runs'"))
    path = Path(value)
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "which is a file" if place == path else f"and {str(place)!r} on its way is a file"
                raise ValueError(_message(option, expected, value, f"pass a directory, e.g. {option}='runs'",
                                          shown=f"{str(path)!r}, {where}"))
            break
    return path


def _run_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(_message("run", "a name (a str) or None for the model's class name", value,
                                 "pass a name such as run='digits-cnn'"))
    if not is_run_id(value) or len(value) > RUN_NAME_LENGTH:
        shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
        raise ValueError(f"watch: run name {shown} is not usable: use 1-{RUN_NAME_LENGTH} characters from "
                         "A-Z a-z 0-9 . _ - starting with a letter or digit (it names files and URLs), "
                         "e.g. run='digits-cnn'")
    return value


def _hyper_parameters(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return MappingProxyType(dict(value))  # a copy: later edits by the caller do not change the record
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hint = "pass config=dataclasses.asdict(...)"
    elif hasattr(value, "__dict__") and not callable(value):
        hint = "pass config=vars(...) (an argparse.Namespace or a plain object)"
    else:
        hint = "pass a dict such as config={'lr': 0.1, 'batch_size': 32}"
    raise TypeError(_message("config", "a mapping of hyper-parameters, or None", value, hint))


def check_server_url(option: str, value: Any) -> str:
    """The address of ``babysit serve`` (see :func:`server_url_problem`); ``option`` names
    where it came from: the option, or its environment variable."""
    expected = "the URL of `babysit serve`, http(s)://host:port"
    where = f"watch: {option}" if option.islower() else f"watch: the environment variable {option}"
    if not isinstance(value, str):
        raise TypeError(f"{where} must be {expected}; got {_shown(value)}: pass e.g. server={SERVER_EXAMPLE!r}")
    problem = server_url_problem(value)
    if problem is None:
        return value.strip()
    shown = repr(value) if len(value) <= 80 else repr(value[:77]) + "..."
    fix = f"unset {option}" if option.isupper() else "leave server out (None)"
    raise ValueError(f"{where} must be {expected}; got {shown}: "
                     + (f"{fix} to use the local store" if not value.strip() else problem))


def check_token(option: str, value: Any) -> str:
    """The server's shared secret. Its value is never shown: messages reach logs."""
    expected = "the server's shared secret, a non-empty str"
    if not isinstance(value, str):
        raise TypeError(_message(option, expected, value, "pass the token given to `babysit serve` "
                                 "(--token or BABYSIT_TOKEN) as a str"))
    if not value:
        raise ValueError(_message(option, expected, value, "pass the token given to `babysit serve`, or leave "
                                  "token out (None) to use $BABYSIT_TOKEN", shown="an empty string"))
    return value


def _detectors(value: Any) -> tuple | None:
    expected = "a list of detectors (objects with update(event) -> list of flags), or None for the default set"
    if value is None:
        return None
    if callable(getattr(value, "update", None)) and not isinstance(value, (Mapping, set)):
        raise TypeError(_message("detectors", expected, value, f"pass a list: detectors=[{_name(value)}]"))
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise TypeError(_message("detectors", expected, value,
                                 "pass e.g. detectors=[Divergence()] (monitor.detectors), or [] for none"))
    items = tuple(value)
    for i, item in enumerate(items):
        if isinstance(item, type):
            raise TypeError(_message("detectors", expected, value, f"item {i} is the class {item.__name__}: "
                                     f"pass an instance, {item.__name__}()", shown="a class in the list"))
        if not callable(getattr(item, "update", None)):
            raise TypeError(_message("detectors", expected, value, f"item {i} is {_a(type(item).__name__)} with no "
                                     "update() method: pass detector objects such as Divergence() "
                                     "(monitor.detectors)", shown=f"a list holding {_a(type(item).__name__)}"))
    return items


def _name(detector: Any) -> str:
    return f"{type(detector).__name__}()"


def _early_stopping(value: Any) -> None:
    if value is None or isinstance(value, EarlyStopping):
        return
    expected = "a monitor.EarlyStopping policy, or None"
    if value is EarlyStopping:
        hint = "pass an instance, e.g. early_stopping=EarlyStopping(monitor='val_loss', patience=3)"
    elif isinstance(value, str):
        hint = f"to stop on that metric pass early_stopping=EarlyStopping(monitor={value!r})"
    else:
        hint = "pass e.g. early_stopping=EarlyStopping(monitor='val_loss', patience=3)"
    raise TypeError(_message("early_stopping", expected, value, hint))
