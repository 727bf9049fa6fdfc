"""What a client might send on ``/ingest``, as hypothesis strategies: valid batches shaped like
the sample run (``conftest.make_run``), then mutated anywhere or broken in a known way and
written as a client might write them; raw bytes and malformed JSON; argument lists; and
heartbeats. Used by tests/test_property_ingest.py.

Strategies are module-level and draws are few: hypothesis validates every strategy built
afresh, and with the base events' values picked by a seeded random (the seed is part of
the case) most of a case's time goes to the server, not to making the case.
"""
from __future__ import annotations

import base64
import copy
import json
import math
import random
import re

from hypothesis import note
from hypothesis import strategies as st

from conftest import make_run
from fuzzing import any_text
from monitor import codec
from monitor.validation import SCALAR_NAME_PATTERN
from web.live import MAX_HEARTBEAT_RUNS

EVENT_FIELDS = ("run", "seq", "step", "wall", "kind", "data")
#: Placeholders the strategies use for run ids; each case swaps in fresh ones.
RUN_SLOTS = ("RUN-0", "RUN-1")

#: The sample run's events (every kind, NaN and ±Inf in them) as the codec's JSON text, what
#: a trainer sends; each case decodes its own copies (dicts, lists, NaN floats, bytes) to mutate.
TEMPLATES = [codec.encode_event(e) for e in make_run(RUN_SLOTS[0])]
#: Each kind's first event in TEMPLATES.
KINDS = {kind: TEMPLATES.index(next(t for t in TEMPLATES if f'"kind":"{kind}"' in t)) for kind in
         dict.fromkeys(e.kind.value for e in make_run())}

#: One strategy for every choice among n things (taken modulo n): strategies built afresh
#: per case cost hypothesis a validation each, which would be most of a case's time.
INDEX = st.integers(0, 2**16)
SEED = st.integers(0, 2**32 - 1)
BOOL = st.booleans()


def pick(draw, items):
    return items[draw(INDEX) % len(items)]


PAST_64_BITS = st.one_of(st.integers(2**63, 2**64 + 8), st.integers(-(2**64), -(2**63) - 1),
                         st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**30, -(10**30)]))
NEGATIVE = st.integers(-(2**63), -1)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
ANY_FLOAT = st.one_of(st.floats(), NON_FINITE, st.sampled_from([-0.0, 5e-324, 1.7976931348623157e308]))

# Valid values the base events take, chosen by a seeded random (cheap, and the seed is
# part of the case): the edges of each field's range.
SEQS = [0, 1, 2, 7, 40, 255, 256, 4096, 2**31, 2**32, 2**53, 2**53 + 1, 2**62, 2**63 - 1]
WALLS = [0.0, -1.0, 5e-324, 1e-300, 1.5e9, 1_700_000_000.123456, 1e308, -1e308]
FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, -1e-310, 0.1, 2.5, -3e38]
SCALAR_NAMES = ["loss", "val_loss", "a" * 128, "0", "_", "x:y/z.w-v", "lr", "grad_norm", "val_acc", "epoch"]
#: Labels (layer, module, run and host names) may hold any text but NUL and lone surrogates.
LABELS = ["<script>alert(1)</script>", "a,b", "层.😀", "x" * 512, "NaN", "e\u0301", "\u202eevil", " ", "conv1",
          "layer.0.attn/q-proj", "\"'&<>", "\ufeff", "a\u2028b", "\U0010ffff", "%00", "../etc"]
assert all(SCALAR_NAME_PATTERN.fullmatch(n) for n in SCALAR_NAMES)

#: Placeholders swapped for text the encoder cannot write itself: an integer literal of
#: 5,000 digits (past Python's 4,300-digit parsing limit) and arrays nested N deep.
BIG_DIGITS, DEEP = "\x00big-int\x00", "\x00deep:"
_PLACEHOLDER = re.compile(r'"\\u0000(big-int|deep:(\d+))\\u0000"')
NOT_TEXT = st.one_of(st.none(), st.booleans(), st.integers(), PAST_64_BITS, ANY_FLOAT)
JSON_SCALARS = st.one_of(NOT_TEXT, any_text, st.binary(max_size=24))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=6)
HUGE = st.one_of(st.integers(10_000, 400_000).map(lambda n: "x" * n),
                 st.integers(1_000, 20_000).map(lambda n: "\ud800" * n),
                 st.integers(1_000, 60_000).map(lambda n: [0.5] * n),
                 st.integers(100, 4_000).map(lambda n: {f"k{i}": i for i in range(n)}),
                 st.just(BIG_DIGITS),
                 st.integers(20, 3_000).map(lambda n: f"{DEEP}{n}\x00"))
ANY_VALUE = st.one_of(JSON_VALUES, JSON_VALUES, JSON_VALUES, HUGE)


def fill_placeholders(text: str) -> str:
    def swap(m: re.Match) -> str:
        if m.group(2) is None:
            return "9" * 5_000
        n = int(m.group(2))
        return "[" * n + "]" * n

    return _PLACEHOLDER.sub(swap, text) if "\\u0000" in text else text


CHOSEN = st.lists(st.integers(0, len(TEMPLATES) - 1), min_size=1, max_size=8)


@st.composite
def valid_events(draw, slot: str) -> list[dict]:
    """Events of one run shaped like the sample run's: any of its kinds (repeats allowed),
    with seqs, steps and walls, scalar names and values, and labels from the edges of their ranges."""
    chosen, rng = draw(CHOSEN), random.Random(draw(SEED))
    renumber = rng.random() < 0.3
    events = []
    for n, i in enumerate(chosen):
        e = codec.loads(TEMPLATES[i])
        e["run"], e["seq"] = slot, rng.choice(SEQS) if renumber else n
        if rng.random() < 0.25:
            e["step"], e["wall"] = rng.choice(SEQS), rng.choice(WALLS)
        data = e["data"]
        if e["kind"] == "scalars" and rng.random() < 0.5:
            data["values"] = {rng.choice(SCALAR_NAMES): rng.choice(FLOATS) for _ in range(rng.randint(1, 4))}
        elif e["kind"] == "layer_stats" and rng.random() < 0.5:
            summary = data["summaries"][rng.randrange(len(data["summaries"]))]
            summary["layer"], summary["mean"] = rng.choice(LABELS), rng.choice(FLOATS)
            summary["hist"] = [rng.choice(SEQS) for _ in range(rng.randint(0, 6))]
        elif e["kind"] in ("run_start", "flag") and rng.random() < 0.5:
            data["name" if e["kind"] == "run_start" else "layer"] = rng.choice(LABELS)
        events.append(e)
    return events


def positions(tree, limit: int = 100):
    """Every (container, key) in a JSON tree: where a mutation can strike (long lists: their first items)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree[:limit])
    for key, value in items:
        yield tree, key
        if isinstance(value, (dict, list)):
            yield from positions(value, limit)


MUTATIONS = st.integers(0, 3)
OPS = st.sampled_from(["value", "value", "non-finite", "past-64-bits", "text", "huge", "drop", "add", "rename",
                       "duplicate", "shuffle"])
REPLACEMENTS = {"non-finite": NON_FINITE, "past-64-bits": PAST_64_BITS, "text": any_text, "huge": HUGE}


@st.composite
def mutated(draw, batch: list) -> str:
    """Change one thing anywhere in the batch, leaving it valid or not; returns what was done."""
    op = draw(OPS)
    if op == "duplicate" and batch:
        batch.insert(draw(INDEX) % (len(batch) + 1), copy.deepcopy(pick(draw, batch)))
        return op
    if op == "shuffle":
        random.Random(draw(SEED)).shuffle(batch)
        return op
    where = list(positions(batch))
    container, key = pick(draw, where) if where else (batch, None)
    if op == "add" and isinstance(container, dict):
        container[draw(any_text)] = draw(ANY_VALUE)
    elif op == "add" or key is None:
        container.append(draw(ANY_VALUE))
    elif op == "drop":
        del container[key]
    elif op == "rename" and isinstance(container, dict):
        container[draw(any_text)] = container.pop(key)
    else:
        container[key] = draw(REPLACEMENTS.get(op, ANY_VALUE))
    return f"{op} at {key!r:.40}"


def _any_event(draw, batch: list) -> dict:
    """An event of the batch (any kind, perhaps mutated already); one added if it has none."""
    found = [e for e in batch if isinstance(e, dict)]
    return pick(draw, found) if found else _new_event(draw, batch, "scalars")


def _new_event(draw, batch: list, kind: str) -> dict:
    """A fresh event of ``kind`` from the sample run, put anywhere in the batch."""
    e = codec.loads(TEMPLATES[KINDS[kind]])
    batch.insert(draw(INDEX) % (len(batch) + 1), e)
    return e


BREAKS = st.sampled_from(["past-64-bits", "negative", "wall", "missing", "unknown-field", "unknown-kind", "run",
                          "surrogate-label", "surrogate-scalar-name", "scalar-value", "bare-nan", "not-utf8"])
UNKNOWN_FIELDS = any_text.map(lambda k: k if k not in EVENT_FIELDS else k + "?")
UNKNOWN_KINDS = st.one_of(st.sampled_from(["scalar", "Scalars", "layer-stats", "", " flag", "run_end\x00"]),
                          any_text.map(lambda k: k if k not in KINDS else k + "?"))
BAD_RUNS = st.one_of(st.sampled_from(["", ".hidden", "-x", "a/b", "../etc", "a" * 129, "r\n", "r\ud800", "层", "a b"]),
                     any_text.map(lambda r: "/" + r), NOT_TEXT)
SURROGATE_LABELS = st.tuples(st.text(max_size=6), st.sampled_from(["\ud800", "\udfff", "\udc00", "\ud83d"]),
                             st.text(max_size=6)).map("".join)
BAD_SCALAR_VALUES = st.one_of(st.none(), st.booleans(), any_text, st.lists(st.floats(), max_size=2),
                              st.integers(2**1024, 2**1100), st.dictionaries(any_text, st.floats(), max_size=2))
LABEL_SLOTS = st.sampled_from(["layer_stats.layer", "layer_stats.module", "run_start.model", "filters", "flag"])


@st.composite
def broken(draw, batch: list) -> tuple[str, str]:
    """Make the batch invalid in one known way; returns (what, writer) where writer may
    have to change for it (bare NaN tokens, bytes that are not UTF-8)."""
    what, writer = draw(BREAKS), None
    if what in ("past-64-bits", "negative", "wall", "missing", "unknown-field", "unknown-kind", "run"):
        e = _any_event(draw, batch)
        field = pick(draw, ["seq", "step"])
        if what in ("past-64-bits", "negative"):
            e[field] = draw(PAST_64_BITS if what == "past-64-bits" else NEGATIVE)
        elif what == "wall":
            e["wall"] = draw(NON_FINITE)
        elif what == "missing":
            e.pop(pick(draw, EVENT_FIELDS), None)
        elif what == "unknown-field":
            e[draw(UNKNOWN_FIELDS)] = draw(ANY_VALUE)
        elif what == "unknown-kind":
            e["kind"] = draw(UNKNOWN_KINDS)
        else:
            e["run"] = draw(BAD_RUNS)
    elif what == "surrogate-label":
        slot = draw(LABEL_SLOTS)
        data, label = _new_event(draw, batch, slot.split(".")[0])["data"], draw(SURROGATE_LABELS)
        if slot.startswith("layer_stats"):
            data["summaries"][0][slot.split(".")[1]] = label
        elif slot == "run_start.model":
            data["model"][0]["name"] = label
        else:
            data["layer"] = label
    elif what in ("surrogate-scalar-name", "scalar-value", "bare-nan"):
        values = _new_event(draw, batch, "scalars")["data"]["values"] = {"loss": 0.5}
        if what == "surrogate-scalar-name":
            values[draw(SURROGATE_LABELS)] = 1.0
        elif what == "scalar-value":
            values["loss"] = draw(BAD_SCALAR_VALUES)
        else:
            values["loss"], writer = draw(NON_FINITE), "bare"
    else:
        writer = "not-utf8"
    return what, writer


def _tagged(tree):
    """The tree with non-finite floats and bytes tagged as the codec tags them."""
    if isinstance(tree, float) and not math.isfinite(tree):
        return {"$float": "nan" if math.isnan(tree) else ("inf" if tree > 0 else "-inf")}
    if isinstance(tree, bytes):
        return {"$bytes": base64.b64encode(tree).decode("ascii")}
    if isinstance(tree, list):
        return [_tagged(v) for v in tree]
    if isinstance(tree, dict):
        return {k: _tagged(v) for k, v in tree.items()}
    return tree


def write(batch, writer: str):
    """The batch as a client might send it: the codec's JSON text (NaN tagged), raw Unicode
    text, bare NaN tokens, UTF-8 bytes, bytes that are not UTF-8, or the list itself."""
    if writer == "object":
        return batch
    if writer == "bare":
        text = json.dumps(batch, default=lambda b: {"$bytes": base64.b64encode(b).decode("ascii")})
    elif writer == "unicode":
        text = json.dumps(_tagged(batch), ensure_ascii=False, allow_nan=False)
    else:
        text = codec.dumps(batch)
    text = fill_placeholders(text)
    if writer == "bytes":
        return text.encode("utf-8", "surrogatepass")  # a lone surrogate so encoded is not UTF-8
    if writer == "not-utf8":
        raw = text.encode("utf-8", "surrogatepass")
        cut = len(raw) // 2
        return raw[:cut] + b"\xff\xc0" + raw[cut:]
    return text


WRITERS = st.sampled_from(["codec"] * 6 + ["unicode", "unicode", "bare", "bytes", "object"])


@st.composite
def fuzzed_batches(draw) -> tuple[object, str | None]:
    """(payload, what broke it or None): valid events of one or two runs, mutated 0-3 times,
    broken in a known way half of the time, written by one of :func:`write`'s writers."""
    batch = draw(valid_events(RUN_SLOTS[0]))
    if draw(BOOL):  # a second run's events among the first's
        batch += draw(valid_events(RUN_SLOTS[1]))
        random.Random(draw(SEED)).shuffle(batch)
    done = [draw(mutated(batch)) for _ in range(draw(MUTATIONS))]
    writer, breakage = draw(WRITERS), None
    if draw(BOOL):
        breakage, forced = draw(broken(batch))
        writer = forced or ("codec" if writer in ("object", "bare") else writer)
        done.append(f"broken: {breakage}")
    note(f"mutations: {done}; writer: {writer}")
    return write(batch, writer), breakage


EDITS = st.sampled_from(["cut", "drop", "double", "swap"])


@st.composite
def malformed(draw) -> str:
    """A valid batch's text with one edit: truncated, a character cut, a piece doubled or one swapped."""
    text = codec.dumps(draw(valid_events(RUN_SLOTS[0])))
    i, edit = draw(INDEX) % len(text), draw(EDITS)
    if edit == "cut":
        return text[:i]
    if edit == "drop":
        return text[:i] + text[i + 1:]
    if edit == "double":
        return text[:i] + text[i:i + 8] + text[i:]
    return text[:i] + draw(any_text) + text[i + 1:]


RAW = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=40).map(lambda b: b"[" + b + b"]"),
    st.sampled_from([b"[\x80\x81]", b"\xff\xfe[\x00]\x00", b"\xef\xbb\xbf[]", "\ufeff[]", "[\ud800]", '["\\ud800"]']),
    st.text(max_size=200), any_text,
    JSON_VALUES.map(lambda v: fill_placeholders(codec.dumps(v))),
    JSON_VALUES.map(lambda v: fill_placeholders(codec.dumps([v]))),
    malformed(),
    NOT_TEXT,
    st.lists(JSON_VALUES, max_size=4), st.dictionaries(any_text, JSON_VALUES, max_size=4),
)
#: The batch event's arguments: one (null included), none, or several.
ARGUMENTS = st.one_of(RAW.map(lambda v: (v,)), RAW.map(lambda v: (v,)), RAW.map(lambda v: (v,)),
                      st.just(()), st.just((None,)), st.lists(RAW, min_size=2, max_size=4).map(tuple))


def _versions() -> list[tuple[str, str]]:
    """For each seq of the sample run (and six more scalars, steps apart), two versions of its
    event as JSON text: a trainer's replay sends the same one, a second process using the
    same run id another."""
    events = [codec.loads(t) for t in TEMPLATES]
    for seq in range(len(TEMPLATES), len(TEMPLATES) + 6):
        events.append({**codec.loads(TEMPLATES[2]), "seq": seq, "step": seq * 300})  # several scalar blocks
    out = []
    for e in events:
        other = copy.deepcopy(e)
        other["step"] += 1
        other["wall"] += 0.5
        if e["kind"] == "scalars":
            other["data"]["values"] = {"loss": -1.0, "new": math.nan}
        elif e["kind"] in ("status", "run_end"):
            other["data"]["state"] = "finished" if e["data"]["state"] != "finished" else "crashed"
        elif e["kind"] == "run_start":
            other["data"]["host"] = "gpu-2"
        out.append((codec.dumps(e), codec.dumps(other)))
    return out


VERSIONS = _versions()
#: Batches of (run, seq, version) picks, numbered: two runs x seqs x two versions.
PLANS = st.lists(st.lists(st.integers(0, 2 * len(VERSIONS) * 2 - 1), min_size=1, max_size=12), min_size=1,
                 max_size=6)


HEARTBEAT_RUNS = st.lists(st.one_of(st.sampled_from(["p0-0", "digits-cnn", "a" * 128]), BAD_RUNS), max_size=4)
HEARTBEATS = st.one_of(
    st.builds(lambda runs: ({"runs": runs},), HEARTBEAT_RUNS),
    st.builds(lambda runs, extra: ({"runs": runs, **extra},), HEARTBEAT_RUNS, st.dictionaries(any_text, JSON_VALUES)),
    st.sampled_from([({"runs": []},), ({"runs": ["r"] * (MAX_HEARTBEAT_RUNS + 1)},),
                     ({"runs": ["r"] * MAX_HEARTBEAT_RUNS},), (), ({"runs": "p0-0"},)]),
    ARGUMENTS)
