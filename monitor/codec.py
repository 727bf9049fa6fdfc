"""JSON codec for events that round-trips NaN, +Inf, -Inf and bytes exactly.

JSON has no NaN or Infinity, and Python's ``json`` writes them as bare tokens that
browsers and other parsers reject. We encode each non-finite float as a tagged object,
``{"$float": "nan" | "inf" | "-inf"}``, and bytes as ``{"$bytes": "<base64>"}``; the
decoder turns the tags back and validates the result against the schema.
"""
from __future__ import annotations

import base64
import json
import math
from typing import Any

from monitor.events import Event
from monitor.validation import SchemaError

_FLOAT_TAG = "$float"
_BYTES_TAG = "$bytes"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def to_jsonable(value: Any) -> Any:
    """Plain JSON data with non-finite floats and bytes tagged."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {_FLOAT_TAG: "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    return value


def from_jsonable(value: Any) -> Any:
    """Undo :func:`to_jsonable`; a malformed tag raises :class:`SchemaError`."""
    if isinstance(value, dict):
        if len(value) == 1 and _FLOAT_TAG in value:
            tag = value[_FLOAT_TAG]
            if tag not in _NON_FINITE:
                raise SchemaError(f"{_FLOAT_TAG}: expected one of nan, inf, -inf, got {tag!r}")
            return _NON_FINITE[tag]
        if len(value) == 1 and _BYTES_TAG in value:
            try:
                return base64.b64decode(value[_BYTES_TAG], validate=True)
            except (ValueError, TypeError):
                raise SchemaError(f"{_BYTES_TAG}: expected base64 text") from None
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), allow_nan=False, separators=(",", ":"))


def loads(text: str | bytes) -> Any:
    try:
        return from_jsonable(json.loads(text, parse_constant=_reject_constant))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"not valid JSON: {exc}") from None


def _reject_constant(token: str) -> Any:
    raise SchemaError(f"bare {token} is not JSON; encode it as {{\"{_FLOAT_TAG}\": ...}}")


def encode_event(event: Event) -> str:
    return dumps(event.to_dict())


def decode_event(text: str | bytes) -> Event:
    """Parse and validate one event; raises :class:`SchemaError` naming the problem."""
    return Event.from_dict(loads(text))
