"""The event schema rejects malformed input with a message naming the field; the codec is NaN-exact."""
import math

import pytest

from monitor import codec
from monitor.codec import decode_event, dumps, encode_event, loads
from monitor.events import (Event, Filters, Kind, LayerStats, RunEnd, RunStart, Scalars, Status, TensorSummary,
                            Vitals)
from monitor.validation import SchemaError


def summary(**overrides):
    fields = dict(layer="conv1", signal="activation", module="Conv2d", numel=10, nan=1, inf=2,
                  mean=math.nan, std=1.0, min=-math.inf, max=math.inf, norm=3.0, sample=7,
                  quantiles=[0.0] * 7, hist=[1, 2, 4], hist_lo=0.0, hist_hi=1.0, zero_frac=0.5)
    return TensorSummary(**{**fields, **overrides})


def test_nan_and_infinities_round_trip_exactly_through_json():
    event = Event("r1", 3, 7, 1.5, Kind.LAYER_STATS, LayerStats([summary()]))
    text = encode_event(event)
    assert "NaN" not in text and "Infinity" not in text  # strict JSON that browsers accept
    back = decode_event(text).data.summaries[0]
    assert math.isnan(back.mean) and back.min == -math.inf and back.max == math.inf
    assert encode_event(decode_event(text)) == text


def test_a_string_that_reads_nan_stays_a_string():
    event = Event("r1", 0, 0, 1.0, Kind.LAYER_STATS, LayerStats([summary(layer="NaN -Infinity", mean=1.0)]))
    assert decode_event(encode_event(event)).data.summaries[0].layer == "NaN -Infinity"


def test_bytes_round_trip_as_tagged_base64():
    event = Event("r1", 0, 0, 1.0, Kind.FILTERS, Filters("conv1", 1, 1, 2, 1, b"\x00\xff"))
    assert decode_event(encode_event(event)).data.pixels == b"\x00\xff"


@pytest.mark.parametrize("text,message", [
    ('{"a": NaN}', "bare NaN is not JSON"),
    ('{"a": {"$float": "nope"}}', "expected one of nan, inf, -inf"),
    ("{not json", "not valid JSON"),
])
def test_malformed_json_raises_a_schema_error_naming_the_problem(text, message):
    with pytest.raises(SchemaError, match=message):
        loads(text)


@pytest.mark.parametrize("raw,message", [
    ({"run": "../etc", "seq": 0, "step": 0, "wall": 1.0, "kind": "scalars", "data": {"values": {"loss": 1}}}, "run:"),
    ({"run": "r", "seq": -1, "step": 0, "wall": 1.0, "kind": "scalars", "data": {"values": {"loss": 1}}}, "seq:"),
    ({"run": "r", "seq": 0, "step": 0, "wall": 1.0, "kind": "nope", "data": {}}, "kind: expected one of"),
    ({"run": "r", "seq": 0, "step": 0, "wall": 1.0, "kind": "scalars", "data": {"values": {"bad name": 1}}},
     "scalar name"),
    ({"run": "r", "seq": 0, "step": 0, "wall": 1.0, "kind": "scalars", "data": {"values": {"loss": "1"}}},
     "scalar 'loss': expected a number"),
    ({"run": "r", "seq": 0, "step": 0, "wall": 1.0, "kind": "scalars", "data": {}}, "missing field"),
    ({"run": "r", "seq": 0, "step": 0, "wall": 1.0, "kind": "scalars", "data": {"values": {"a": 1}, "x": 1}},
     "unknown field"),
    ({"run": "r", "seq": 0, "step": 0, "wall": math.nan, "kind": "scalars", "data": {"values": {"a": 1}}}, "wall"),
    ({"run": "r", "seq": 0, "step": 0, "wall": 1.0}, "expected fields"),
])
def test_malformed_events_are_rejected_with_the_field_named(raw, message):
    with pytest.raises(SchemaError, match=message):
        decode_event(dumps(raw))


def test_a_summary_claiming_more_non_finite_values_than_elements_is_rejected():
    with pytest.raises(SchemaError, match="nan \\+ inf"):
        summary(numel=2, nan=2, inf=1)


def test_a_layer_name_with_a_nul_byte_is_rejected_but_markup_is_kept_as_text():
    with pytest.raises(SchemaError, match="layer"):
        summary(layer="a\x00b")
    assert summary(layer="<script>alert(1)</script>").layer == "<script>alert(1)</script>"


def test_scalars_accept_nan_and_infinity_values():
    values = Scalars({"loss": math.nan, "grad": math.inf}).values
    assert math.isnan(values["loss"]) and values["grad"] == math.inf


def test_a_seed_past_64_bits_in_the_config_is_kept_as_it_was():
    start = RunStart(name="r", config={"seed": 2**64 - 1}, model=(), host="h", pid=1, rank=0, world=1,
                     versions={}, sampling={})
    assert codec.loads(codec.encode_payload(start))["config"]["seed"] == 2**64 - 1


@pytest.mark.parametrize("payload", [Status, lambda state: RunEnd(state, steps=1, duration=1.0)])
def test_a_training_process_cannot_report_its_run_lost(payload):
    with pytest.raises(SchemaError, match="lost is the server's verdict"):
        payload("lost")


def test_a_vitals_block_round_trips_with_its_steps_and_layers():
    block = Vitals((1.5, math.inf, 0.25), ((1.0, 1.1), (math.inf, 0.0), (0.2, 0.15)), layers=(0, 2), offsets=(0, 1, 3))
    event = Event("r", 4, 100, 1.0, Kind.VITALS, block)
    back = decode_event(encode_event(event))
    assert back.data == block
    assert back.data.steps(back.step) == (100, 101, 103)
    assert back.data.by_layer(("a", "b", "c"), 1) == {"a": math.inf, "c": 0.0}


def test_the_one_step_vitals_of_the_first_v2_runs_read_as_a_block_of_one():
    text = ('{"run": "r", "seq": 3, "step": 7, "wall": 1.0, "kind": "vitals", '
            '"data": {"grad_norm": 0.5, "norms": [0.3, 0.4], "layers": []}}')
    vitals = decode_event(text).data
    assert vitals.grad_norm == (0.5,) and vitals.norms == ((0.3, 0.4),) and vitals.steps(7) == (7,)


@pytest.mark.parametrize("fields, message", [
    ({"grad_norm": []}, "grad_norm"),
    ({"grad_norm": [1.0, 2.0], "norms": [[1.0]]}, "one row of layer norms per step"),
    ({"grad_norm": [1.0, 2.0], "norms": [[1.0], [1.0, 2.0]]}, "rows of one length"),
    ({"grad_norm": [1.0], "norms": [[1.0, 2.0]], "layers": [3]}, "rows of one length"),
    ({"grad_norm": [1.0, 2.0], "offsets": [0, 0]}, "increasing step offsets"),
    ({"grad_norm": [1.0, 2.0], "offsets": [0]}, "increasing step offsets"),
])
def test_a_malformed_vitals_block_is_rejected_naming_the_field(fields, message):
    with pytest.raises(SchemaError, match=message):
        Vitals.from_dict(fields)
