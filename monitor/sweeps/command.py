"""The trial's command: ``-- python train.py --lr {lr}`` filled in with its parameters and
run under ``babysit run``.

Every ``{name}`` must name a dimension of the space and every dimension must appear: a
typo would otherwise run every trial with the same setting, and the search would rank
noise. ``{{`` and ``}}`` stand for braces. Values are written exactly (``repr`` of a
float), so the script trains with the value the study records.
"""
from __future__ import annotations

import re
import string
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from monitor.sweeps.space import Dimension

#: Options whose value is the number of epochs a trial trains (the first-stage advice reads it).
EPOCH_OPTIONS = ("--epochs", "--epoch", "--num-epochs", "--num_epochs", "--max-epochs", "--max_epochs",
                 "--num-train-epochs", "--num_train_epochs", "--n-epochs", "--n_epochs")
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")


class CommandError(ValueError):
    """A trial command that cannot run the sweep's trials."""


def placeholders(argv: Sequence[str]) -> list[str]:
    """The ``{name}`` fields of the command, in order, each once."""
    names: list[str] = []
    for token in argv:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(token) if f is not None]
        except ValueError as exc:
            raise CommandError(f"the trial command's argument {token!r} is not a template ({exc}); write "
                               "{name} for a parameter and {{ }} for braces") from None
        for field in fields:
            if not field.isidentifier() and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", field):
                raise CommandError(f"the trial command's argument {token!r}: {{{field}}} is not a parameter's name")
            if field not in names:
                names.append(field)
    return names


def check(argv: Sequence[str], space: Sequence[Dimension]) -> None:
    """Every placeholder a dimension, every dimension a placeholder, and a Python script to run."""
    if not argv:
        raise CommandError("give the trial command after --, e.g. -- python train.py --lr {lr}")
    used = placeholders(argv)
    names = [d.name for d in space]
    unknown = [n for n in used if n not in names]
    if unknown:
        raise CommandError(f"the trial command uses {', '.join('{' + n + '}' for n in unknown)}, which no --space "
                           f"defines (the space has {', '.join(names)})")
    unused = [n for n in names if n not in used]
    if unused:
        raise CommandError(f"--space {', '.join(unused)} never reaches the trial command: put "
                           f"{' '.join('{' + n + '}' for n in unused)} where the script takes "
                           f"{'it' if len(unused) == 1 else 'them'}, or every trial would train alike")
    script_of(argv)


def script_of(argv: Sequence[str]) -> list[str]:
    """What ``babysit run`` takes from the command: ``SCRIPT ARGS`` or ``-m MODULE ARGS``
    (``python`` in front, if any, is the one babysit runs under)."""
    rest = list(argv)
    if _PYTHON.match(Path(rest[0]).name) or rest[0] == sys.executable:
        rest = rest[1:]
    if rest[:1] == ["-m"] and len(rest) >= 2:
        return rest
    if rest and rest[0].endswith(".py"):
        return rest
    raise CommandError(f"the trial command must run a Python script or module (python train.py ..., or "
                       f"python -m pkg.train ...), which babysit run watches; got {' '.join(argv)!r}")


def fill(argv: Sequence[str], params: Mapping[str, Any]) -> list[str]:
    """The command with the trial's values in place."""
    shown = {name: _exact(value) for name, value in params.items()}
    return [token.format_map(shown) for token in argv]


def _exact(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def epochs(argv: Sequence[str], params: Mapping[str, Any]) -> float | None:
    """The epochs a trial trains, where its command or parameters say (:data:`EPOCH_OPTIONS`)."""
    for name, value in params.items():
        if f"--{name}" in EPOCH_OPTIONS and isinstance(value, (int, float)):
            return float(value)
    for i, token in enumerate(argv):
        option, eq, value = token.partition("=")
        if option in EPOCH_OPTIONS:
            text = value if eq else argv[i + 1] if i + 1 < len(argv) else ""
            try:
                return float(text)
            except ValueError:
                return None
    return None
