"""Field checks shared by the schema: each failure names the field, what was expected and what came."""
from __future__ import annotations

import re
from dataclasses import MISSING, fields
from enum import Enum
from typing import Any, Mapping

#: Run ids become file names, URLs and SQL values: keep them to a safe alphabet.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Metric names are keys in URLs and columns in exports.
SCALAR_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$")
MAX_LABEL_LENGTH = 512  # layer and parameter names: free text, escaped wherever shown
#: Integers the stores hold (SQLite's and PostgreSQL's are signed 64-bit): larger ones are
#: refused where they enter, not found by the database mid-transaction.
INT_LIMIT = 2**63


#: Per payload class, its fields and defaults in order (for Payload.unchecked).
_DEFAULTS: dict[type, tuple[tuple[str, Any], ...]] = {}


class SchemaError(ValueError):
    """An event or payload that does not match the schema; the message names the field."""


def fail(where: str, expected: str, value: Any) -> SchemaError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SchemaError(f"{where}: expected {expected}, got {shown}")


#: Most names an error lists (unknown fields, say): it names the problem, it does not echo the input.
MAX_NAMES_SHOWN = 8


def shown_names(names) -> str:
    """Some of ``names``, sorted, for an error: ``['a', 'b']``, or with ``... and 992 more``."""
    ordered = sorted(names, key=lambda n: (not isinstance(n, str), str(n)))
    shown = [repr(n) if len(repr(n)) <= 60 else repr(n)[:57] + "..." for n in ordered[:MAX_NAMES_SHOWN]]
    more = len(ordered) - len(shown)
    return "[" + ", ".join(shown) + (f", ... and {more} more" if more else "") + "]"


def is_text(value: str) -> bool:
    """Whether a str is text that UTF-8 can hold: a lone surrogate (``"\\ud800"``, which
    JSON escapes allow) cannot be stored, shown or sent on."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_label(where: str, value: Any) -> str:
    """Free-text names (layers, parameters, modules): any text without NUL, bounded."""
    if not isinstance(value, str) or not value or len(value) > MAX_LABEL_LENGTH or "\x00" in value \
            or not is_text(value):
        raise fail(where, f"a non-empty string of at most {MAX_LABEL_LENGTH} characters without NUL "
                          "or lone surrogates", value)
    return value


#: Names already matched, so that the same few run ids and metric names are not matched
#: again on every event (bounded: past the limit names are simply matched each time).
_ACCEPTED: dict[re.Pattern, set[str]] = {}
_ACCEPTED_LIMIT = 10_000


def _matches(pattern: re.Pattern, value: Any) -> bool:
    """The whole of ``value`` matches (``fullmatch``: a ``$`` alone lets a final newline in)."""
    accepted = _ACCEPTED.setdefault(pattern, set())
    if type(value) is str and value in accepted:
        return True
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return False
    if len(accepted) < _ACCEPTED_LIMIT and type(value) is str:
        accepted.add(value)
    return True


#: The run ids and scalar names accepted so far (read by the ingest's fast path, :mod:`monitor.events`).
ACCEPTED_RUN_IDS: set[str] = _ACCEPTED.setdefault(RUN_ID_PATTERN, set())
ACCEPTED_SCALAR_NAMES: set[str] = _ACCEPTED.setdefault(SCALAR_NAME_PATTERN, set())


def is_run_id(value: Any) -> bool:
    return _matches(RUN_ID_PATTERN, value)


def is_scalar_name(value: Any) -> bool:
    return _matches(SCALAR_NAME_PATTERN, value)


def check_run_id(value: Any) -> str:
    if not _matches(RUN_ID_PATTERN, value):
        raise fail("run", "1-128 characters from A-Z a-z 0-9 . _ - starting with a letter or digit", value)
    return value


def check_scalar_name(value: Any) -> str:
    if not _matches(SCALAR_NAME_PATTERN, value):
        raise fail("scalar name", "1-128 characters from A-Z a-z 0-9 _ . : / -", value)
    return value


def as_float(where: str, value: Any) -> float:
    if type(value) is float:  # the common case, checked first: summaries hold hundreds
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(where, "a number (NaN and Inf allowed)", value)
    try:
        return float(value)
    except OverflowError:  # an integer past float's range
        raise fail(where, "a number within float range (NaN and Inf allowed)", value) from None


def as_int(where: str, value: Any, minimum: int | None = 0) -> int:
    if type(value) is int and (minimum is None or value >= minimum) and -INT_LIMIT <= value < INT_LIMIT:
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum) \
            or not -INT_LIMIT <= value < INT_LIMIT:
        low = -INT_LIMIT if minimum is None else minimum
        raise fail(where, f"an integer in {low}..2**63-1", value)
    return value


def as_str(where: str, value: Any, limit: int = 4096) -> str:
    if not isinstance(value, str) or len(value) > limit or not is_text(value):
        raise fail(where, f"a string of at most {limit} characters without lone surrogates", value)
    return value


def as_enum(enum: type[Enum], where: str, value: Any) -> Any:
    try:
        return enum(value)
    except ValueError:
        raise fail(where, "one of " + ", ".join(m.value for m in enum), value) from None


#: Longest string inside config and evidence values.
MAX_JSON_STRING = 65_536


def json_like(where: str, value: Any, depth: int = 0) -> Any:
    """Config and evidence values: JSON data (NaN allowed), bounded in depth."""
    if depth > 16:
        raise fail(where, "JSON data nested at most 16 deep", "...")
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):  # any size: config and evidence are stored as JSON text (a 64-bit
        return value            # seed like 2**64 - 1 is a fine hyper-parameter)
    if isinstance(value, str):
        return as_str(where, value, MAX_JSON_STRING)
    if isinstance(value, (list, tuple)):
        return tuple(json_like(where, v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return {as_str(where + " key", k, 256): json_like(where, v, depth + 1) for k, v in value.items()}
    raise fail(where, "JSON data (null, bool, number, string, list, mapping)", value)


class Payload:
    """Shared construction from plain mappings: unknown keys and missing fields are errors."""

    @classmethod
    def from_dict(cls, raw: Any):
        if type(raw) is not dict and not isinstance(raw, Mapping):  # typing's isinstance is slow: dict first
            raise fail(cls.__name__, "a mapping", raw)
        names, required = _field_names(cls)
        unknown = raw.keys() - names
        if unknown:
            raise SchemaError(f"{cls.__name__}: unknown field(s) {shown_names(unknown)}; expected {sorted(names)}")
        missing = sorted(name for name in required if name not in raw)
        if missing:
            raise SchemaError(f"{cls.__name__}: missing field(s) {missing}")
        return cls(**decode_nested(cls, raw))

    @classmethod
    def unchecked(cls, **values: Any):
        """Build without validating: only for payloads babysit's own code computes, with
        the schema's types, on a hot path (the writer's); tests hold that those validate.
        Everything that arrives from elsewhere goes through the constructor."""
        defaults = _DEFAULTS.get(cls)
        if defaults is None:
            defaults = _DEFAULTS[cls] = tuple((f.name, f.default) for f in fields(cls))
        obj = object.__new__(cls)
        obj.__dict__.update({name: values[name] if name in values else default for name, default in defaults})
        return obj

    def to_dict(self) -> dict[str, Any]:
        # The instance dict holds exactly the fields, in order (dataclasses without slots):
        # reading it beats dataclasses.fields(), which the writer would pay per summary.
        out = dict(self.__dict__)
        for name, value in out.items():
            if isinstance(value, Enum):
                out[name] = value.value
            elif type(value) is tuple and value and isinstance(value[0], Payload):
                out[name] = [v.to_dict() for v in value]
        return out  # tuples and mappings: the codec writes them as JSON lists and objects


#: Per payload class, its field names and the names of those without a default (for from_dict).
_NAMES: dict[type, tuple[frozenset[str], tuple[str, ...]]] = {}


def _field_names(cls) -> tuple[frozenset[str], tuple[str, ...]]:
    known = _NAMES.get(cls)
    if known is None:
        known = _NAMES[cls] = (frozenset(f.name for f in fields(cls)),
                               tuple(f.name for f in fields(cls)
                                     if f.default is MISSING and f.default_factory is MISSING))
    return known


def decode_nested(cls, raw: Mapping) -> Mapping[str, Any]:
    nested = getattr(cls, "_nested", None)
    if not nested:  # most payloads (scalars among them): the mapping as it came, for cls(**raw)
        return raw
    return {k: tuple(nested[k].from_dict(v) for v in as_list(f"{cls.__name__}.{k}", raw[k]))
            if k in nested else raw[k] for k in raw}


def as_list(where: str, value: Any) -> list:
    if not isinstance(value, (list, tuple)):
        raise fail(where, "a list", value)
    return list(value)


def floats(where: str, value: Any) -> tuple[float, ...]:
    if type(value) is tuple and all(type(v) is float for v in value):
        return value
    return tuple(as_float(where, v) for v in as_list(where, value))


def convert_fields(obj: Any, convert, names: tuple[str, ...], *, optional: bool = False) -> None:
    """Check and normalise the named fields with ``convert(name, value)``; None passes
    when ``optional``. A field is written only when conversion changed it, which keeps
    payloads built by our own code (already exact types) cheap to validate."""
    for name in names:
        value = getattr(obj, name)
        if value is None and optional:
            continue
        converted = convert(name, value)
        if converted is not value:
            set_field(obj, name, converted)


def set_field(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising fields of a frozen dataclass


