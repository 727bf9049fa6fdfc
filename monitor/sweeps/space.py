"""A search space as ``babysit sweep --space`` takes it: ``NAME=DIST(ARGS)``.

``loguniform(low, high)`` and ``logint(low, high)`` sample on a log scale, the practice
for learning rates and regularisation strengths, whose effect is multiplicative (CS231n:
"search for hyperparameters on log scale", ``10 ** uniform(-6, 1)``); ``uniform`` and
``int`` on a linear one; ``choice(a, b, ...)`` among values. Every bad spec fails here,
with a message that names the dimension and what was wrong.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from typing import Any

DISTRIBUTIONS = ("loguniform", "uniform", "logint", "int", "choice")
_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*=\s*([a-z]+)\s*\((.*)\)\s*$", re.S)


class SpaceError(ValueError):
    """A ``--space`` spec that cannot be a search dimension."""


@dataclass(frozen=True)
class Dimension:
    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def log(self) -> bool:
        return self.distribution in ("loguniform", "logint")

    @property
    def numeric(self) -> bool:
        return self.distribution != "choice"

    def position(self, value: float) -> float:
        """Where ``value`` sits in the range, 0 at ``low`` to 1 at ``high``, on the
        dimension's own scale (log for a log dimension)."""
        to = math.log10 if self.log else float
        return (to(value) - to(self.low)) / (to(self.high) - to(self.low))

    def spec(self) -> str:
        """The dimension as a ``--space`` option value (what :func:`parse` reads back)."""
        if not self.numeric:
            return f"{self.name}=choice({', '.join(map(repr, self.choices))})"
        if self.distribution in ("int", "logint"):
            return f"{self.name}={self.distribution}({int(self.low)},{int(self.high)})"
        return f"{self.name}={self.distribution}({_short(self.low)},{_short(self.high)})"


def _short(value: float) -> str:
    """Two significant digits, as a person writes a range: 3e-05, 0.0012, 0.5."""
    return f"{float(f'{value:.2g}'):g}"


def parse(text: str) -> Dimension:
    """One ``NAME=DIST(ARGS)`` spec, e.g. ``lr=loguniform(1e-5,1e-1)`` or ``bs=choice(32,64)``."""
    match = _SPEC.match(text) if isinstance(text, str) else None
    if match is None:
        raise SpaceError(f"--space {text!r}: expected NAME=DIST(ARGS) with DIST one of "
                         f"{', '.join(DISTRIBUTIONS)}, e.g. lr=loguniform(1e-5,1e-1)")
    name, distribution, body = match.groups()
    if distribution not in DISTRIBUTIONS:
        raise SpaceError(f"--space {name}: unknown distribution {distribution!r}; expected one of "
                         f"{', '.join(DISTRIBUTIONS)}")
    try:
        args = ast.literal_eval(f"({body},)") if body.strip() else ()
    except (ValueError, SyntaxError):
        raise SpaceError(f"--space {name}: the arguments {body!r} are not numbers or quoted strings") from None
    if distribution == "choice":
        if len(args) < 2 or len(set(map(repr, args))) != len(args):
            raise SpaceError(f"--space {name}: choice needs two or more distinct values, got {list(args)}")
        return Dimension(name, distribution, choices=tuple(args))
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SpaceError(f"--space {name}: {distribution} needs two numbers (low, high), got {list(args)}")
    low, high = (float(a) for a in args)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise SpaceError(f"--space {name}: expected low < high, both finite, got {low:g}, {high:g}")
    if distribution.startswith("log") and low <= 0:
        raise SpaceError(f"--space {name}: a log scale needs low > 0, got {low:g} "
                         f"(use uniform for a range that reaches 0)")
    if distribution in ("int", "logint") and not (low.is_integer() and high.is_integer()):
        raise SpaceError(f"--space {name}: {distribution} needs whole bounds, got {low:g}, {high:g}")
    return Dimension(name, distribution, low, high)


def parse_all(texts) -> tuple[Dimension, ...]:
    dims = tuple(parse(t) for t in texts)
    names = [d.name for d in dims]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpaceError(f"--space: {', '.join(repeated)} given more than once")
    if not dims:
        raise SpaceError("--space: give at least one dimension, e.g. --space 'lr=loguniform(1e-5,1e-1)'")
    return dims
