"""Property-based tests of the ingest protocol, through a real server and client.

Whatever a client sends as a ``batch`` on ``/ingest`` (events built from the schema and
then mutated: fields dropped, added, renamed or of the wrong type, unknown kinds, huge
strings and lists, integers past 64 bits, NaN and ±Inf anywhere, names in any Unicode
with lone surrogates, duplicate and out-of-order seqs, several runs; or raw bytes,
malformed JSON, values that are no text, no argument or several), these hold:

- every batch is answered with an acknowledgement before the timeout;
- an accepted batch is stored exactly once per ``(run, seq)`` (the first version wins),
  and the derived tables (scalars and their blocks, runs, layers, inputs) agree with the
  stored events; a valid batch is never refused;
- a refused batch leaves nothing of itself in the store, is refused as permanent with an
  error that names the problem, and costs the log one line, never a traceback;
- no server error is logged, and the server still serves afterwards.

One server per module (``served``); each case writes to fresh run ids.
"""
from __future__ import annotations

import itertools
import json
import math
import sqlite3
from dataclasses import dataclass

import pytest
import socketio
from hypothesis import event as tally, given

from fuzz_batches import (ARGUMENTS, HEARTBEATS, KINDS, PLANS, RUN_SLOTS, TEMPLATES, VERSIONS, fuzzed_batches)
from fuzzing import ServerErrors, property_settings
from monitor import codec
from monitor.store import blocks as store_blocks
from monitor.events import Kind
from monitor.protocol import BATCH, HEARTBEAT, INGEST_NAMESPACE, PROTOCOL_VERSION
from monitor.store import DB_FILENAME
from monitor.store.reads import decode
from monitor.validation import SchemaError, is_run_id
from servers import serving_app
from web.live import MAX_HEARTBEAT_RUNS, parse_batch

#: Seconds a batch may take to be answered; past it, the batch counts as unanswered (the
#: machine is shared and slow at times: generous, and still far below a trainer's 30 s).
ACK_TIMEOUT = 20.0
#: Cases per property: 3,200 here, and 2,592 in tests/test_property_rest.py: about 5,800 in all
#: (twice as many took two and a half minutes of the suite's 15 in CI; more: tests/fuzzing.py).
MUTATED_CASES, RAW_CASES, ORDER_CASES, HEARTBEAT_CASES = 1_200, 1_200, 400, 400
#: The error of the handler's last-resort branch: validation met a value no check foresaw.
UNFORESEEN = "could not read it"
#: Longest error a refusal may carry: it names the problem, it does not echo the batch.
MAX_ERROR = 1_000
TABLES = ("events", "scalars", "runs", "layer_points", "layers", "input_points", "scalar_blocks")

_fresh = itertools.count()


@dataclass
class Served:
    url: str
    client: socketio.Client
    db: sqlite3.Connection  # our own connection to the server's store file, for the checks
    log: ServerErrors


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("ingest")
    with ServerErrors() as log, serving_app(logdir) as (running, _app):
        client = socketio.Client(reconnection=False)
        client.connect(running.url, namespaces=[INGEST_NAMESPACE], transports=["websocket"], wait_timeout=10)
        db = sqlite3.connect(logdir / DB_FILENAME, isolation_level=None)  # autocommit: each read sees the latest commit
        try:
            yield Served(running.url, client, db, log)
        finally:
            client.disconnect()
            db.close()


def fresh_runs(payload):
    """The payload with the run placeholders swapped for ids no earlier case used."""
    n = next(_fresh)
    swaps = {slot: f"p{n}-{i}" for i, slot in enumerate(RUN_SLOTS)}
    if isinstance(payload, list):
        for e in payload:
            if isinstance(e, dict) and isinstance(e.get("run"), str) and e["run"] in swaps:
                e["run"] = swaps[e["run"]]
        return payload
    for slot, run in swaps.items():
        quoted = json.dumps(run)
        payload = payload.replace(json.dumps(slot), quoted) if isinstance(payload, str) else \
            payload.replace(json.dumps(slot).encode(), quoted.encode())
    return payload


# ---------------------------------------------------------------------- checks

def call(served: Served, args: tuple):
    """Send a ``batch`` with these arguments (usually one) and return the answer."""
    try:  # python-socketio sends a tuple's items as the event's arguments
        return served.client.call(BATCH, args, namespace=INGEST_NAMESPACE, timeout=ACK_TIMEOUT)
    except socketio.exceptions.TimeoutError:
        pytest.fail(f"the batch was not answered within {ACK_TIMEOUT:g} s: {args!r:.300}")


def named_runs(payload) -> list[str]:
    """The run ids a payload's events name (where it parses as a list of mappings)."""
    try:
        raw = codec.loads(payload) if isinstance(payload, (str, bytes)) else None
    except SchemaError:
        return []
    items = raw if isinstance(raw, list) else []
    return list(dict.fromkeys(e["run"] for e in items if isinstance(e, dict) and is_run_id(e.get("run"))))


def footprint(db, runs: list[str]) -> dict[str, int]:
    """Rows of these runs in every table, and the newest rowid of the two rowid tables (which
    moves with any insert, under any run id): index look-ups, cheap on a big store."""
    marks = {f"{t} rowid": db.execute(f"SELECT coalesce(max(rowid), 0) FROM {t}").fetchone()[0]
             for t in ("events", "scalars")}
    if not runs:
        return marks
    where = f"run IN ({', '.join('?' * len(runs))})"
    return marks | {table: db.execute(f"SELECT count(*) FROM {table} WHERE {where}", runs).fetchone()[0]
                    for table in TABLES}


def stored_row(db, run: str, seq: int):
    return db.execute("SELECT step, wall, kind, data FROM events WHERE run = ? AND seq = ?", (run, seq)).fetchone()


def expect(payload):
    """The events the server must store for this payload, or the SchemaError it must refuse it with."""
    try:
        return parse_batch(payload)
    except SchemaError as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - the point: anything else is a defect of validation
        pytest.fail(f"validation raised {type(exc).__name__} instead of a SchemaError naming the problem: {exc}")


def check_answer(served: Served, payload, breakage: str | None = None, *, args: tuple | None = None) -> dict:
    """Send ``payload`` (or these ``args``: none, or several) and check the properties of
    the module doc for its answer; ``breakage``: how the batch was made invalid, if it was."""
    args = (payload,) if args is None else args
    expected = expect(args[0]) if len(args) == 1 else SchemaError(f"{len(args)} arguments")
    valid = not isinstance(expected, SchemaError)
    if breakage is not None:
        assert not valid, f"validation accepted a batch broken by {breakage}"
    runs = named_runs(args[0]) if len(args) == 1 else []
    before = footprint(served.db, runs)
    first: dict[tuple[str, int], object] = {}
    for event in expected if valid else ():
        first.setdefault((event.run, event.seq), event)
    already = {key: stored_row(served.db, *key) for key in first}
    refusals, logged = len(served.log.refusals), len(served.log.errors)

    ack = call(served, args)

    assert len(served.log.errors) == logged, "\n".join(served.log.shown()[logged:])
    assert isinstance(ack, dict) and ack.get("protocol") == PROTOCOL_VERSION, ack
    if not valid:
        assert ack["ok"] is False and ack["permanent"] is True, (ack, expected)
        assert ack["error"] and UNFORESEEN not in ack["error"], ack
        assert len(ack["error"]) <= MAX_ERROR, f"an error of {len(ack['error'])} characters: {ack['error'][:300]}"
        tally("refused")
        assert footprint(served.db, runs) == before, "a refused batch left rows in the store"
        assert len(served.log.refusals) == refusals + 1, "a refusal is one log line"
        return ack
    assert ack["ok"] is True, (ack, "a valid batch was refused")
    tally("accepted" if expected else "accepted, empty")
    new = [key for key, row in already.items() if row is None]
    assert ack["stored"] == len(new) and ack.get("last_seq") == (max(e.seq for e in expected) if expected else None)
    for key, event in first.items():
        want = already[key] or (event.step, event.wall, event.kind.value, codec.encode_payload(event.data))
        assert stored_row(served.db, *key) == want, f"{key}: stored once, the first version"
    after = footprint(served.db, runs)
    assert after.get("events", 0) == before.get("events", 0) + len(new)
    assert after.get("scalars", 0) == before.get("scalars", 0) + sum(len(first[k].data.values) for k in new
                                                       if first[k].kind is Kind.SCALARS)
    for run in dict.fromkeys(e.run for e in expected):
        check_derived(served.db, run)
    return ack


def _nan_none(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _rows(rows) -> list[tuple]:
    """Rows comparable whatever their order, NaN and NULL both as None (SQLite stores NaN as NULL)."""
    return sorted((tuple(_nan_none(v) for v in row) for row in rows), key=repr)


def check_derived(db, run: str) -> None:
    """Every derived table of ``run`` agrees with its stored events, whatever order they came in."""
    events = [decode(run, *row) for row in  # decode: no stored row is corrupt
              db.execute("SELECT seq, step, wall, kind, data FROM events WHERE run = ? ORDER BY seq", (run,))]
    scalars = [(run, name, e.step, e.seq, e.wall, value) for e in events if e.kind is Kind.SCALARS
               for name, value in e.data.values.items()]
    assert _rows(db.execute("SELECT run, name, step, seq, wall, value FROM scalars WHERE run = ?", (run,))) \
        == _rows(scalars), "scalars rows"
    assert _rows(db.execute(f"SELECT run, name, block, {', '.join(store_blocks.BLOCK_COLUMNS)} FROM scalar_blocks "
                            "WHERE run = ?", (run,))) == _rows(store_blocks.summarise(scalars)), "scalar blocks"
    summaries = [(e, pos, s) for e in events if e.kind is Kind.LAYER_STATS for pos, s in enumerate(e.data.summaries)]
    points = {}
    for e, _, s in summaries:
        points.setdefault((s.signal.value, s.layer, e.step, e.seq), (s.mean, s.max, s.nan, s.inf))
    assert _rows(db.execute("SELECT signal, layer, step, seq, mean, max, nan, inf FROM layer_points WHERE run = ?",
                            (run,))) == _rows(k + v for k, v in points.items()), "layer points"
    layers = {}
    for _, _, s in sorted(summaries, key=lambda t: (t[0].seq, t[1])):
        layers.setdefault((s.signal.value, s.layer), s.module)
    assert _rows(db.execute("SELECT signal, layer, module FROM layers WHERE run = ?", (run,))) \
        == _rows((*k, v) for k, v in layers.items()), "layers"
    inputs = [(e.step, e.seq, e.wall, e.data.mean, e.data.max, e.data.nan) for e in events
              if e.kind is Kind.INPUT_STATS]
    assert _rows(db.execute("SELECT step, seq, wall, mean, max, nan FROM input_points WHERE run = ?", (run,))) \
        == _rows(inputs), "input points"
    check_run_row(db, run, events)


def check_run_row(db, run: str, events: list) -> None:
    row = db.execute("SELECT name, status, updated, last_step, last_loss, loss_step, flags, host FROM runs "
                     "WHERE run = ?", (run,)).fetchone()
    if not events:
        assert row is None, "a run row without events"
        return
    name, status, updated, last_step, last_loss, loss_step, flags, host = row
    assert (updated, last_step) == (max(e.wall for e in events), max(e.step for e in events))
    assert flags == sum(e.kind is Kind.FLAG for e in events)
    losses = [(e.step, e.data.values["loss"]) for e in events if e.kind is Kind.SCALARS and "loss" in e.data.values]
    if losses:
        assert loss_step == max(step for step, _ in losses)
        assert _nan_none(last_loss) in {_nan_none(v) for step, v in losses if step == loss_step}
    else:
        assert (loss_step, last_loss) == (None, None)
    lifecycle = [e for e in events if e.kind in (Kind.RUN_START, Kind.STATUS, Kind.RUN_END)]
    latest = lifecycle[-1] if lifecycle else None  # the highest seq: what the run's row must say
    want = "running" if latest is None or latest.kind is Kind.RUN_START else latest.data.state.value
    # "lost": the server's own verdict on a silent run (web.liveness), undone when it is heard again
    assert status == want or (status == "lost" and want in ("running", "stopping")), \
        f"status {status!r}, but the latest lifecycle event (seq {latest and latest.seq}) says {want!r}"
    starts = [e for e in lifecycle if e.kind is Kind.RUN_START]
    if starts:
        assert (name, host) == (starts[-1].data.name, starts[-1].data.host), "the run's name and host: its latest start"


# ---------------------------------------------------------------------- properties

@property_settings(MUTATED_CASES)
@given(case=fuzzed_batches())
def test_every_mutated_batch_is_answered_and_stored_exactly_once_or_refused_leaving_nothing(served, case):
    payload, breakage = case
    check_answer(served, fresh_runs(payload), breakage)


@property_settings(RAW_CASES)
@given(args=ARGUMENTS)
def test_raw_bytes_malformed_json_values_that_are_no_text_and_wrong_arguments_are_each_answered(served, args):
    args = tuple(fresh_runs(a) if isinstance(a, (str, bytes)) else a for a in args)
    check_answer(served, None, args=args)


@property_settings(ORDER_CASES)
@given(plan=PLANS)
def test_out_of_order_and_duplicate_seqs_of_several_runs_are_stored_once_each_whatever_the_order(served, plan):
    runs = [f"p{next(_fresh)}-order", f"p{next(_fresh)}-order"]
    batches = [[(runs[k // (2 * len(VERSIONS))], k // 2 % len(VERSIONS), k % 2) for k in picks] for picks in plan]
    for batch in batches:
        payload = codec.dumps([{**codec.loads(VERSIONS[seq][version]), "run": run} for run, seq, version in batch])
        assert check_answer(served, payload)["ok"]
    arrived = {}
    for run, seq, version in itertools.chain.from_iterable(batches):
        arrived.setdefault((run, seq), version)
    for run in runs:
        seqs = [seq for (r, seq), _ in sorted(arrived.items()) if r == run]
        stored = [s for (s,) in served.db.execute("SELECT seq FROM events WHERE run = ? ORDER BY seq", (run,))]
        assert stored == seqs, "each seq stored once"
        check_derived(served.db, run)


@property_settings(HEARTBEAT_CASES)
@given(args=HEARTBEATS)
def test_every_heartbeat_is_answered_whatever_it_carries(served, args):
    logged = len(served.log.errors)
    try:
        ack = served.client.call(HEARTBEAT, args, namespace=INGEST_NAMESPACE, timeout=ACK_TIMEOUT)
    except socketio.exceptions.TimeoutError:
        pytest.fail(f"the heartbeat was not answered within {ACK_TIMEOUT:g} s: {args!r:.300}")
    assert len(served.log.errors) == logged, "\n".join(served.log.shown()[logged:])
    runs = args[0].get("runs") if len(args) == 1 and isinstance(args[0], dict) else None
    valid = isinstance(runs, list) and 0 < len(runs) <= MAX_HEARTBEAT_RUNS and all(map(is_run_id, runs))
    assert isinstance(ack, dict) and ack.get("protocol") == PROTOCOL_VERSION and ack["ok"] is valid, ack
    if not valid:
        assert ack["permanent"] is True and ack["error"] and len(ack["error"]) <= MAX_ERROR, ack


def test_the_server_still_serves_and_logged_no_error_after_the_properties(served, http_get):
    ok = codec.dumps([codec.loads(t) | {"run": "after-the-properties"} for t in TEMPLATES])
    assert call(served, (ok,))["stored"] == len(TEMPLATES)
    status, _, body = http_get(f"{served.url}/api/runs")
    assert status == 200 and "after-the-properties" in {r["run"] for r in codec.loads(body)}
    assert not served.log.errors, "\n".join(served.log.shown())


# ---------------------------------------------------------------------- defects the properties found

def _refusal(served: Served, text: str) -> str:
    ack = call(served, (text,))
    assert ack["ok"] is False and ack["permanent"] is True, ack
    return ack["error"]


def test_an_integer_literal_of_5000_digits_is_refused_as_malformed_json_saying_so(served):
    error = _refusal(served, "[" + "9" * 5_000 + "]")
    assert "integer literal of more than" in error and UNFORESEEN not in error


def test_a_float_tag_holding_a_list_is_refused_naming_the_tag(served):
    error = _refusal(served, '[{"run": "r", "seq": 0, "step": 0, "wall": 1, "kind": "scalars", '
                             '"data": {"values": {"loss": {"$float": ["nan"]}}}}]')
    assert error.startswith("$float: expected one of nan, inf, -inf, got ['nan']") and UNFORESEEN not in error


def test_a_refusal_names_a_few_of_thousands_of_unknown_fields_not_all(served):
    event = codec.loads(TEMPLATES[2]) | {f"extra{i}": i for i in range(5_000)}
    error = _refusal(served, codec.dumps([event]))
    assert len(error) <= MAX_ERROR and "'extra0'" in error and "... and 4998 more" in error


def _run_row(served: Served, run: str) -> tuple:
    return served.db.execute("SELECT status, host FROM runs WHERE run = ?", (run,)).fetchone()


def _sent(served: Served, run: str, *picks: tuple[int, dict]) -> None:
    """Send the sample run's events at these positions, each with its changes, one batch."""
    batch = [codec.loads(TEMPLATES[i]) | {"run": run} | changes for i, changes in picks]
    assert call(served, (codec.dumps(batch),))["ok"]


def test_a_late_replay_of_an_earlier_start_leaves_the_run_with_the_status_of_its_latest_seq(served):
    _sent(served, "late-start", (KINDS["status"], {"seq": 8}))  # diverged
    _sent(served, "late-start", (KINDS["run_start"], {"seq": 0}))  # a replay of seq 0 comes late
    assert _run_row(served, "late-start")[0] == "diverged"


def test_a_late_replay_of_an_earlier_start_leaves_the_run_with_the_host_of_its_latest_start(served):
    restarted = codec.loads(TEMPLATES[KINDS["run_start"]])["data"] | {"host": "gpu-2"}
    _sent(served, "late-host", (KINDS["run_start"], {"seq": 20, "data": restarted}))
    _sent(served, "late-host", (KINDS["run_start"], {"seq": 0}))  # gpu-1, the first process
    assert _run_row(served, "late-host") == ("running", "gpu-2")
