"""The server's ingest and dashboard channels, end to end: a real Flask-SocketIO server on a
loopback port, a real python-socketio client, a real SQLite store."""
import json
import logging
import math
import threading

import pytest
import socketio

from monitor import codec
from monitor.events import Event, Kind, Scalars
from monitor.protocol import PROTOCOL_VERSION
from monitor.store import RunStore
from web.app import ServerConfig
from servers import serving, serving_app


@pytest.fixture
def server(tmp_path):
    with serving_app(tmp_path) as served:
        yield served


def client(url, namespace="/ingest", auth=None):
    c = socketio.Client()
    c.connect(url, namespaces=[namespace], transports=["websocket"], auth=auth, wait_timeout=5)
    return c


def batch(run="r1", seqs=range(3), loss=0.5):
    return codec.dumps([Event(run, seq, seq, 1000.0 + seq, Kind.SCALARS, Scalars({"loss": loss})).to_dict()
                        for seq in seqs])


def test_a_batch_is_committed_before_it_is_acknowledged_and_a_replay_stores_nothing(server, tmp_path):
    running, _ = server
    c = client(running.url)
    try:
        ack = c.call("batch", batch(), namespace="/ingest", timeout=5)
        assert ack == {"ok": True, "stored": 3, "last_seq": 2, "protocol": PROTOCOL_VERSION}
        with RunStore(tmp_path) as store:  # another connection sees the commit once the ack is back
            assert [e.seq for e in store.events("r1")] == [0, 1, 2]
        assert c.call("batch", batch(), namespace="/ingest", timeout=5)["stored"] == 0
    finally:
        c.disconnect()
    with RunStore(tmp_path) as store:
        assert len(store.scalars("r1")) == 3


def test_nan_and_inf_arrive_exactly(server, tmp_path):
    running, _ = server
    c = client(running.url)
    try:
        text = codec.dumps([Event("r2", 0, 0, 1.0, Kind.SCALARS,
                                  Scalars({"loss": math.nan, "lr": math.inf, "g": -math.inf})).to_dict()])
        assert c.call("batch", text, namespace="/ingest", timeout=5)["ok"]
    finally:
        c.disconnect()
    with RunStore(tmp_path) as store:
        values = store.events("r2")[0].data.values
    assert math.isnan(values["loss"]) and values["lr"] == math.inf and values["g"] == -math.inf


@pytest.mark.parametrize("text, problem", [
    ("not json", "not valid JSON"),
    ('{"run": "r"}', "expected a list of events"),
    ('[{"run": "r", "seq": 0}]', "batch event 0"),
    ('[{"run": "../etc", "seq": 0, "step": 0, "wall": 1, "kind": "scalars", "data": {"values": {"x": 1}}}]',
     "run"),
    ('[{"run": "r", "seq": 0, "step": 0, "wall": 1, "kind": "scalars", "data": {"values": {"x": NaN}}}]',
     "bare NaN"),
    (12, "expected the events as JSON text"),
    (b"[\x80\x81]", "not UTF-8"),
    (("one", "two"), "expected one argument"),
    (_NO_ARGUMENT := object(), "expected one argument"),
    ('[{"run": "r", "seq": %d, "step": 0, "wall": 1, "kind": "scalars", "data": {"values": {"x": 1}}}]' % 2**63,
     "2**63-1"),
    ('[{"run": "r", "seq": 0, "step": 0, "wall": 1, "kind": "flag", "data": {"kind": "k", "severity": '
     '"warning", "message": "m", "advice": "a", "layer": "\\ud800"}}]', "lone surrogates"),
    ('[{"run": "r", "seq": 0, "step": 0, "wall": 1, "kind": "scalars", "data": {"values": {"x": 1%s}}}]'
     % ("0" * 400), "float range"),
])
def test_a_malformed_batch_is_refused_for_good_with_the_reason_and_the_server_carries_on(
        server, tmp_path, text, problem, caplog):
    running, _ = server
    c = client(running.url)
    try:
        with caplog.at_level(logging.WARNING, logger="babysit.server"):
            if text is _NO_ARGUMENT:
                ack = c.call("batch", namespace="/ingest", timeout=5)
            else:
                ack = c.call("batch", text, namespace="/ingest", timeout=5)
        assert ack["ok"] is False and ack["permanent"] is True and problem in ack["error"]
        [line] = [r for r in caplog.records if r.name == "babysit.server"]  # one line, no traceback
        assert "permanent, 1 so far" in line.getMessage() and line.exc_info is None
        assert c.call("batch", batch("ok"), namespace="/ingest", timeout=5)["stored"] == 3
    finally:
        c.disconnect()
    with RunStore(tmp_path) as store:
        assert [info.run for info in store.runs()] == ["ok"]


def test_browsers_in_a_runs_room_receive_its_events_after_the_commit(server):
    running, _ = server
    browser = client(running.url, "/dashboard")
    received, arrived = [], threading.Event()

    @browser.on("events", namespace="/dashboard")
    def on_events(message):
        received.append(message)
        arrived.set()

    trainer = client(running.url)
    try:
        assert browser.call("join", "r3", namespace="/dashboard", timeout=5) == {
            "ok": True, "stored": 0, "protocol": PROTOCOL_VERSION}
        trainer.call("batch", batch("other"), namespace="/ingest", timeout=5)  # another run: not sent here
        trainer.call("batch", batch("r3", seqs=[7]), namespace="/ingest", timeout=5)
        assert arrived.wait(5)
    finally:
        trainer.disconnect()
        browser.disconnect()
    assert [m["run"] for m in received] == ["r3"]
    (event,) = codec.loads(received[0]["events"])  # one codec text per batch, each payload inside it
    assert (event["seq"], event["kind"]) == (7, "scalars") and event["data"] == {"values": {"loss": 0.5}}


def test_with_a_token_ingest_refuses_connections_without_it(tmp_path):
    with serving(tmp_path, token="s3cret") as running:
        with pytest.raises(socketio.exceptions.ConnectionError):
            client(running.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client(running.url, auth={"token": "guess"})
        c = client(running.url, auth={"token": "s3cret"})
        assert c.call("batch", batch(), namespace="/ingest", timeout=5)["ok"]
        c.disconnect()


def test_serving_beyond_loopback_without_a_token_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="give a token"):
        ServerConfig(logdir=tmp_path, host="0.0.0.0")


def test_the_run_list_is_served_as_json_with_nan_tagged(server, http_get):
    running, _ = server
    c = client(running.url)
    try:
        c.call("batch", batch("r4", loss=math.nan), namespace="/ingest", timeout=5)
    finally:
        c.disconnect()
    body = http_get(f"{running.url}/api/runs")[2].decode()
    runs = codec.loads(body)
    assert [r["run"] for r in runs] == ["r4"] and math.isnan(runs[0]["last_loss"])
    json.loads(body)  # strict JSON: no bare NaN for browsers to choke on


def test_a_long_series_comes_back_downsampled_with_its_spike_and_nan(server, tmp_path, http_get):
    running, app = server
    n = 100_000
    events = [Event("long", i, i, 1000.0 + i, Kind.SCALARS,
                    Scalars({"loss": 50.0 if i == 31_337 else (math.nan if i == 77_000 else 1.0 / (1 + i))}))
              for i in range(n)]
    for start in range(0, n, 10_000):
        app.store.append(events[start:start + 10_000])
    series = codec.loads(http_get(f"{running.url}/api/runs/long/series?names=loss", 30)[2])["loss"]
    assert series["total"] == n and len(series["step"]) <= 2000
    assert 31_337 in series["step"] and 77_000 in series["step"] and series["step"][-1] == n - 1
    assert max(v for v in series["value"] if not math.isnan(v)) == 50.0
    assert math.isnan(series["value"][series["step"].index(77_000)])


@pytest.mark.parametrize("path, status", [("/api/runs/nope/series", 404), ("/api/runs/bad%0Aname/series", 400),
                                          ("/api/runs/r1/series?names=a%20b", 400),
                                          ("/api/runs/r1/series?max_points=5", 400)])
def test_a_bad_series_request_gets_a_clear_error(server, path, status, http_get):
    running, _ = server
    c = client(running.url)
    try:
        c.call("batch", batch(), namespace="/ingest", timeout=5)
    finally:
        c.disconnect()
    code, _, body = http_get(running.url + path)
    assert code == status and "error" in codec.loads(body)


def test_flags_and_an_export_zip_are_served_for_a_run(server, http_get):
    import io
    import zipfile

    from monitor.events import Flag

    running, _ = server
    flag = Event("r5", 3, 3, 1003.0, Kind.FLAG, Flag(kind="divergence", severity="critical", message="loss is NaN",
                                                     advice="lower the learning rate",
                                                     evidence={"loss": math.nan}))
    c = client(running.url)
    try:
        c.call("batch", batch("r5"), namespace="/ingest", timeout=5)
        assert c.call("batch", codec.dumps([flag.to_dict()]), namespace="/ingest", timeout=5)["ok"]
    finally:
        c.disconnect()
    flags = codec.loads(http_get(f"{running.url}/api/runs/r5/flags")[2])
    assert [(f["seq"], f["kind"], f["severity"]) for f in flags] == [(3, "divergence", "critical")]
    assert math.isnan(flags[0]["evidence"]["loss"])
    code, headers, body = http_get(f"{running.url}/api/runs/r5/export?format=csv")
    assert code == 200 and headers["Content-Type"] == "application/zip"
    assert {"r5/scalars.csv", "r5/flags.csv"} <= set(zipfile.ZipFile(io.BytesIO(body)).namelist())
    assert http_get(f"{running.url}/api/runs/r5/export?format=xlsx")[0] == 400
