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
import re
import sys
from enum import Enum
from typing import Any, Mapping, Sequence

from monitor.events import Event
from monitor.validation import Payload, SchemaError, fail

_FLOAT_TAG = "$float"
_BYTES_TAG = "$bytes"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_TOKENS = {"NaN": '{"%s":"nan"}' % _FLOAT_TAG, "Infinity": '{"%s":"inf"}' % _FLOAT_TAG,
           "-Infinity": '{"%s":"-inf"}' % _FLOAT_TAG}
# A JSON string (left as it is) or one of the bare tokens json.dumps writes for NaN/Inf.
_STRING_OR_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?Infinity|NaN')
#: Longest integer literal Python's parser reads (3.11+: ``sys.get_int_max_str_digits``).
_MAX_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 4300)()


def dumps(value: Any) -> str:
    """JSON text with non-finite floats and bytes tagged.

    The C encoder writes NaN/Infinity as bare tokens; one regular-expression pass then
    swaps them for tags, skipping quoted strings (a layer may well be named "NaN").
    This keeps encoding at C speed, which matters on the writer thread.
    """
    text = _encode(value)
    if "NaN" not in text and "Infinity" not in text:
        return text
    return _STRING_OR_TOKEN.sub(lambda m: _TOKENS.get(m.group(0), m.group(0)), text)


def _default(value: Any) -> Any:
    if isinstance(value, Payload):  # nested (a layer's summaries): its fields, as encode_payload writes them
        return value.__dict__
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot encode a {type(value).__name__} as JSON")


# Made once: json.dumps with any option builds a new encoder on every call, a cost the
# server's ingest pays per event (it is stateless, so one serves every thread).
_ENCODER = json.JSONEncoder(allow_nan=True, default=_default, separators=(",", ":"))


def _c_encode():
    """The C encoder behind ``_ENCODER``, made once, or None. ``JSONEncoder.encode`` makes a new
    one on every call, half the cost of encoding a small payload (the server encodes one per
    event). It is CPython's internal (``json.encoder.c_make_encoder``): where it is missing or
    its signature differs, ``_ENCODER.encode`` is used. No circular-reference check (markers
    None): events are trees."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder = make(None, _default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
        sample = {"a": [1, 2.5, math.nan, "é"], "b": None}
        if "".join(encoder(sample, 0)) != _ENCODER.encode(sample):
            return None
    except Exception:  # noqa: BLE001 - another Python's internals: the public encoder then
        return None
    return lambda value: "".join(encoder(value, 0))


_encode = _c_encode() or _ENCODER.encode


def loads(text: str | bytes) -> Any:
    """Parse JSON written by :func:`dumps`; malformed input raises :class:`SchemaError`.

    A text with no ``$`` (written plainly or as the escape ``\\u0024``) holds no tag, so it is
    parsed without the per-object hook: a batch of finite losses, the common case on the
    server's ingest path, decodes at the C parser's speed."""
    hook = _untag if not isinstance(text, str) or "$" in text or "\\u0024" in text else None
    try:
        return json.loads(text, object_hook=hook, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # bytes that are not UTF-8 (or -16, -32) text
        raise SchemaError(f"not JSON text: the bytes are not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise SchemaError("JSON nested too deeply") from None
    except SchemaError:  # a tag's own message (a ValueError too: let it through as it is)
        raise
    except ValueError:  # Python's guard against integer literals of thousands of digits
        raise SchemaError(f"not valid JSON for babysit: an integer literal of more than {_MAX_DIGITS} digits "
                          "(no number the schema holds is that long)") from None


def _untag(obj: dict) -> Any:
    if len(obj) != 1:
        return obj
    if _FLOAT_TAG in obj:
        tag = obj[_FLOAT_TAG]
        if not isinstance(tag, str) or tag not in _NON_FINITE:  # a list or object is unhashable
            raise fail(_FLOAT_TAG, "one of nan, inf, -inf", tag)
        return _NON_FINITE[tag]
    if _BYTES_TAG in obj:
        try:
            return base64.b64decode(obj[_BYTES_TAG], validate=True)
        except (ValueError, TypeError):
            raise SchemaError(f"{_BYTES_TAG}: expected base64 text") from None
    return obj


def _reject_constant(token: str) -> Any:
    raise SchemaError(f"bare {token} is not JSON; encode it as {{\"{_FLOAT_TAG}\": ...}}")


def encode_payload(payload: Payload) -> str:
    """An event's ``data`` as stored and sent: the text of ``dumps(payload.to_dict())``,
    written from the payload's own fields (its instance dict holds exactly them, in order)
    without building that dict: the encoder writes the str enums as their values and asks
    :func:`_default` for nested payloads. The writer encodes some thirty layer summaries
    per sampled step; building their dicts was a third of the encoding's time."""
    return dumps(payload.__dict__)


_LIVE_EVENT = '{"seq":%d,"step":%d,"wall":%r,"kind":"%s","data":%s}'


def live_events(events: Sequence[Event], texts: Sequence[str]) -> str:
    """Events of one run as the page receives them live (``protocol.EVENTS``): one JSON text
    of a list of ``{seq, step, wall, kind, data}``, each ``data`` the stored text of its
    payload (``texts``, from :func:`encode_payload`) embedded as it is.

    Why one text: a fan-out emits each batch to every server process (through the message
    queue) and to each of their viewers; as a list of objects, it was encoded to JSON by the
    emitting process, decoded and encoded again by each other one, a cost per event per
    process; as one string, each of those steps copies it at C speed. Validated events make
    it JSON by construction: ints, a finite float, a kind's name, and codec text."""
    return "[" + ",".join([_LIVE_EVENT % (e.seq, e.step, e.wall, e.kind.value, text)
                           for e, text in zip(events, texts)]) + "]"


def encode_event(event: Event) -> str:
    return dumps(event.to_dict())


def decode_event(text: str | bytes) -> Event:
    """Parse and validate one event; raises :class:`SchemaError` naming the problem."""
    return Event.from_dict(loads(text))
