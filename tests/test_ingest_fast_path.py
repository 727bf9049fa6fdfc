"""The ingest's shortcuts give exactly what the general code gives: the scalars fast path of
``Event.from_dict``, the C encoder behind ``codec.dumps``, and a live batch as one text."""
from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fuzzing import any_text, property_settings
from monitor import codec
from monitor.events import Event, Flag, Kind, RunEnd, RunState, Scalars, Severity, _plain_scalars
from monitor.validation import SchemaError

floats = st.floats(allow_nan=True, allow_infinity=True)
#: What a field may hold in a hostile batch: the plain types and their near misses.
near_numbers = st.one_of(floats, st.integers(min_value=-2**64, max_value=2**64), st.booleans(), st.none(),
                         st.sampled_from(["1", [], {}]))
names = st.one_of(st.sampled_from(["loss", "val_loss", "lr", "acc/top1"]), any_text)
raw_scalars = st.fixed_dictionaries({
    "run": st.one_of(st.sampled_from(["fast-1", "fast-2"]), any_text, near_numbers),
    "seq": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), near_numbers),
    "step": st.one_of(st.integers(min_value=0, max_value=2**63 - 1), near_numbers),
    "wall": st.one_of(st.floats(min_value=0, max_value=2e9), near_numbers),
    "kind": st.just("scalars"),
    "data": st.one_of(st.fixed_dictionaries({"values": st.dictionaries(names, st.one_of(floats, near_numbers),
                                                                        max_size=4)}),
                      st.dictionaries(st.sampled_from(["values", "other"]), st.just({"loss": 1.0})), near_numbers),
})


@property_settings(600)
@given(raw_scalars)
def test_the_scalars_fast_path_accepts_only_what_the_general_path_accepts_and_builds_the_same(raw):
    try:
        general = Event._checked(raw)
    except (SchemaError, TypeError, ValueError, OverflowError):
        general = None  # refused: the fast path must refuse it too (its caches hold only accepted names)
    fast = _plain_scalars(raw)
    if general is None:
        assert fast is None
    elif fast is not None:
        assert fast == general and codec.encode_event(fast) == codec.encode_event(general)
        assert all(type(v) is float for v in fast.data.values.values())


def test_a_plain_scalars_event_takes_the_fast_path_once_its_run_and_names_were_checked():
    raw = {"run": "fast-path-run", "seq": 3, "step": 3, "wall": 1.7e9, "kind": "scalars",
           "data": {"values": {"loss": 0.5, "fast_metric": math.nan}}}
    assert _plain_scalars(raw) is None  # never seen: the general path checks the run id and names first
    assert Event.from_dict(raw) == Event("fast-path-run", 3, 3, 1.7e9, Kind.SCALARS,
                                         Scalars({"loss": 0.5, "fast_metric": math.nan}))
    fast = _plain_scalars(raw)
    assert fast is not None and fast.data.values["loss"] == 0.5 and math.isnan(fast.data.values["fast_metric"])
    for near_miss in ({"seq": -1}, {"step": 2**63}, {"wall": math.inf}, {"wall": 1_700_000_000},
                      {"data": {"values": {"loss": 1}}}, {"data": {"values": {"loss": True}}}):
        assert _plain_scalars({**raw, **near_miss}) is None, near_miss


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), floats, st.integers(min_value=-2**70, max_value=2**70), any_text,
              st.binary(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=20)


@property_settings(400)
@given(json_values)
def test_the_c_encoder_writes_what_the_public_encoder_writes(value):
    assert codec._encode(value) == codec._ENCODER.encode(value)


def test_a_live_batch_is_one_text_that_decodes_to_each_event_with_its_payload():
    events = [Event("live", 0, 0, 1.7e9, Kind.SCALARS, Scalars({"loss": math.nan, "lr": -math.inf})),
              Event("live", 1, 0, 1.7e9 + 0.25, Kind.FLAG, Flag(kind="divergence", severity=Severity.CRITICAL,
                                                                 message="NaN <b>loss</b>", advice="lower the lr",
                                                                 evidence={"loss": math.nan})),
              Event("live", 2, 12, 1.7e9 + 1, Kind.RUN_END, RunEnd(state=RunState.FINISHED, steps=12, duration=3.5))]
    texts = [codec.encode_payload(e.data) for e in events]
    decoded = codec.loads(codec.live_events(events, texts))
    assert [codec.dumps(d) for d in decoded] == [
        codec.dumps({"seq": e.seq, "step": e.step, "wall": e.wall, "kind": e.kind.value, "data": e.data.to_dict()})
        for e in events]
