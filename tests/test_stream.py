"""watch(server=URL): a real server on a loopback port, a real tiny training streaming to
it; every event lands exactly once and in order, also across an outage."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch
from torch import nn

from monitor import codec, protocol
from monitor.events import Event, Kind, RunStart, Scalars
from monitor.protocol import PROTOCOL_VERSION
from monitor.store import RunStore
from trainer_hooks import stream, watch
from servers import serving


class _Disconnecting:
    """A Socket.IO client that ``contextlib.closing`` disconnects (if it connected)."""

    def __init__(self, client):
        self.client = client

    def close(self):
        if self.client.connected:
            self.client.disconnect()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def train(model, opt, mon, steps, start=0):
    for i in range(start, start + steps):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(i))
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)


def stored(logdir, run):
    with RunStore(logdir) as store:
        return store.events(run)


def assert_complete(events, steps):
    assert [e.seq for e in events] == list(range(len(events)))  # every seq once, none missing
    kinds = [e.kind.value for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    losses = [e.step for e in events if e.kind.value == "scalars" and "loss" in e.data.values]
    assert sorted(losses) == list(range(steps))


def test_a_run_streams_to_the_server_exactly_once(tmp_path):
    with serving(tmp_path / "server") as running:
        model, opt = tiny()
        with watch(model, opt, every=2, server=running.url, logdir=tmp_path / "trainer") as mon:
            train(model, opt, mon, 12)
    assert mon.store_path is None
    events = stored(tmp_path / "server", mon.run_id)
    assert_complete(events, 12)
    assert {"layer_stats", "input_stats", "filters"} & {e.kind.value for e in events}
    assert not list((tmp_path / "trainer" / "spool").glob("*.jsonl")) or \
        (tmp_path / "trainer" / "spool" / f"{mon.run_id}.jsonl").read_text() == ""


def test_while_the_server_is_down_events_are_spooled_and_replayed_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "RETRY_SECONDS", 0.2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model, opt = tiny()
    mon = watch(model, opt, every=3, server=url, logdir=tmp_path / "trainer")
    train(model, opt, mon, 10)  # no server yet: the training never notices
    mon.flush()
    spool = tmp_path / "trainer" / "spool" / f"{mon.run_id}.jsonl"
    assert spool.stat().st_size > 0
    with serving(tmp_path / "server", port):
        train(model, opt, mon, 5, start=10)
        mon.close()
    assert_complete(stored(tmp_path / "server", mon.run_id), 15)


def test_a_server_restart_mid_run_loses_nothing_and_duplicates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "RETRY_SECONDS", 0.2)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model, opt = tiny()
    mon = watch(model, opt, every=4, server=url, logdir=tmp_path / "trainer")
    with serving(tmp_path / "server", port):
        train(model, opt, mon, 6)
        mon.flush()
    # the server went away mid-run
    train(model, opt, mon, 6, start=6)
    mon.flush()
    time.sleep(0.3)
    with serving(tmp_path / "server", port):  # and comes back, on the same store
        train(model, opt, mon, 3, start=12)
        mon.close()
    assert_complete(stored(tmp_path / "server", mon.run_id), 15)


def test_a_stop_from_the_dashboard_reaches_the_training_process(tmp_path):
    import socketio

    browser = socketio.Client()
    with serving(tmp_path / "server") as running, contextlib.closing(_Disconnecting(browser)):
        model, opt = tiny()
        with watch(model, opt, every=5, server=running.url, logdir=tmp_path / "trainer") as mon:
            train(model, opt, mon, 3)
            mon.flush()  # the trainer is connected and known to the server
            browser.connect(running.url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=5)
            assert browser.call("stop", {"run": mon.run_id, "reason": "loss looks wrong"},
                                namespace="/dashboard", timeout=5)["ok"] is True
            deadline = time.monotonic() + 10
            steps = 3
            while not mon.should_stop and time.monotonic() < deadline:
                train(model, opt, mon, 1, start=steps)
                steps += 1
                time.sleep(0.05)
            assert mon.should_stop
    assert mon.stop_reason.cause.value == "dashboard" and mon.stop_reason.message == "loss looks wrong"
    events = stored(tmp_path / "server", mon.run_id)
    statuses = [(e.data.state.value, e.data.by, e.data.reason) for e in events if e.kind.value == "status"]
    assert ("stopping", "dashboard", "loss looks wrong") in statuses
    assert statuses[-1][:2] == ("stopped", "dashboard")


def test_with_a_token_a_stop_without_it_is_refused(tmp_path):
    import socketio

    browser = socketio.Client()
    with serving(tmp_path, token="t0k") as running, contextlib.closing(_Disconnecting(browser)):
        browser.connect(running.url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=5)
        refused = browser.call("stop", {"run": "r1"}, namespace="/dashboard", timeout=5)
        accepted = browser.call("stop", {"run": "r1", "token": "t0k"}, namespace="/dashboard", timeout=5)
        hostile = browser.call("stop", {"run": "../x", "token": "t0k"}, namespace="/dashboard", timeout=5)
    assert refused == {"ok": False, "error": "stop: wrong or missing token", "permanent": True,
                       "protocol": PROTOCOL_VERSION}
    assert accepted["ok"] is True and hostile["ok"] is False and "run" in hostile["error"]


def train_offline(tmp_path, monkeypatch):
    """A run of 8 steps streaming to a server that is not up while it lives: its spool is
    left under ``tmp_path / "trainer"``. Returns the handle and the server's port."""
    import pytest

    from trainer_hooks import BabysitWarning
    from trainer_hooks import handle

    monkeypatch.setattr(stream, "RETRY_SECONDS", 0.1)
    monkeypatch.setattr(handle, "CLOSE_SEND_SECONDS", 0.5)
    port = free_port()
    model, opt = tiny()
    with pytest.warns(BabysitWarning, match="kept in"):
        with watch(model, opt, every=4, server=f"http://127.0.0.1:{port}", logdir=tmp_path / "trainer") as mon:
            train(model, opt, mon, 8)
    return mon, port


def test_a_spool_left_by_a_process_that_ended_offline_is_replayed_by_babysit_replay(tmp_path, monkeypatch, capsys):
    from monitor import cli

    mon, port = train_offline(tmp_path, monkeypatch)
    url = f"http://127.0.0.1:{port}"
    with serving(tmp_path / "server", port):
        assert cli.main(["replay", "--server", url, "--logdir", str(tmp_path / "trainer")]) == 0
        assert cli.main(["replay", "--server", url, "--logdir", str(tmp_path / "trainer")]) == 0  # idempotent
    assert f"{mon.run_id}: sent" in capsys.readouterr().out
    assert_complete(stored(tmp_path / "server", mon.run_id), 8)


def test_a_batch_refused_for_good_is_set_aside_once_and_everything_after_it_is_delivered(
        tmp_path, monkeypatch, caplog):
    """Issue 9, item 3: a refusal used to read "retry", and the sender resent it for ever,
    holding back the whole spool behind it."""
    import logging

    mon, port = train_offline(tmp_path, monkeypatch)
    url = f"http://127.0.0.1:{port}"
    spool = tmp_path / "trainer" / "spool" / f"{mon.run_id}.jsonl"
    first, *rest = spool.read_bytes().splitlines(keepends=True)
    unstorable = ('[{"run":"%s","seq":%d,"step":0,"wall":1.0,"kind":"scalars","data":{"values":{"loss":1.0}}}]\n'
                  % (mon.run_id, 2**63)).encode()
    damaged = b'[\x80\x81]\n'
    spool.write_bytes(first + unstorable + damaged + b"".join(rest))
    with serving(tmp_path / "server", port), caplog.at_level(logging.WARNING):
        assert stream.replay_spools(url, spool.parent, timeout=20) == {mon.run_id: True}
        assert stream.replay_spools(url, spool.parent, timeout=20) == {}  # what was set aside is not resent
    assert_complete(stored(tmp_path / "server", mon.run_id), 8)
    assert (spool.parent / f"{mon.run_id}.refused.jsonl").read_bytes() == unstorable + damaged
    reports = [r for r in caplog.records if r.name == "babysit" and "refused a batch for good" in r.getMessage()]
    assert len(reports) == 1 and "2**63" in reports[0].getMessage()
    server_lines = [r.getMessage() for r in caplog.records if r.name == "babysit.server"]
    assert len(server_lines) == 1 and "permanent" in server_lines[0]  # the damaged line never left the trainer
    assert not any(r.exc_info for r in caplog.records)  # one line each, no traceback


def open_sockets() -> set[str]:
    """The inodes of this process's open sockets (Linux's /proc)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    return inodes


def sockets_to(port: int) -> set[str]:
    """The inodes of this process's TCP sockets connected to loopback ``port``."""
    ours = open_sockets()
    return {fields[9] for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
            if int(fields[2].split(":")[1], 16) == port and fields[9] in ours}


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_a_connection_whose_server_was_killed_leaves_no_socket_open_in_the_trainer(tmp_path):
    """python-engineio ends the read loop of a connection the server reset without closing its
    socket, and then does nothing on disconnect: the trainer kept a descriptor per server crash
    until garbage collection, whose ResourceWarning once failed an unrelated test."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve", "--port", str(port),
                               "--logdir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # its gunicorn worker dies with it
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = stream.connect(f"http://127.0.0.1:{port}")
                break
            except Exception:  # not up yet
                assert time.monotonic() < deadline and server.poll() is None, "babysit serve did not start"
                time.sleep(0.2)
        connection = sockets_to(port)
        assert len(connection) == 1
        os.killpg(server.pid, signal.SIGSTOP)  # killed mid-batch: what it had not read makes its end a reset
        client.emit(protocol.BATCH, "[]", namespace=protocol.INGEST_NAMESPACE)
        time.sleep(0.3)
        os.killpg(server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while client.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not client.connected, "the client did not notice its server died"
        stream.quietly_disconnect(client)
        assert not connection & open_sockets(), "the reset connection's socket is still open"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


def test_a_batch_split_for_the_wire_keeps_every_event_in_order_and_names_the_oversized_ones():
    events = [{"run": "r", "seq": i, "data": {"x": "a" * (10 if i != 3 else 500)}} for i in range(8)]
    pieces, oversized = stream.split_for_wire(json.dumps(events), limit=120)
    assert all(len(p) <= 120 for p in pieces) and len(pieces) > 1
    assert [e["seq"] for p in pieces for e in json.loads(p)] == [0, 1, 2, 4, 5, 6, 7]
    assert [json.loads(o)[0]["seq"] for o in oversized] == [3]


def test_a_spooled_batch_larger_than_the_server_reads_at_once_is_delivered_in_pieces(tmp_path, monkeypatch):
    """Engine.io drops a connection whose message passes its limit: the batch got no answer
    and was resent for ever, holding back the spool behind it (found by the property tests)."""
    import web.app

    monkeypatch.setattr(web.app, "MAX_MESSAGE_BYTES", 200_000)
    monkeypatch.setattr(stream, "WIRE_LIMIT", 150_000)
    run = "big-batch"
    scalars = [Event(run, seq, seq, 1000.0 + seq, Kind.SCALARS, Scalars({"loss": 1.0 / (seq + 1)}))
               for seq in range(4000)]  # about 400 kB as one line
    config = {f"note{i}": "x" * 60_000 for i in range(3)}  # one event of about 180 kB: never sendable
    start = Event(run, 4000, 4000, 5000.0, Kind.RUN_START, RunStart(
        name=run, config=config, model=(), host="h", pid=1, rank=0, world=1, versions={}, sampling={}))
    events = [*scalars, start]
    spool_dir = tmp_path / "trainer"
    with serving(tmp_path / "server") as running:
        sink = stream.SocketSink(running.url, run, spool_dir, heartbeat=0)
        try:
            sink.append(events, [codec.encode_payload(e.data) for e in events])
            assert sink.flush(30)
        finally:
            sink.close()
    assert [e.seq for e in stored(tmp_path / "server", run)] == list(range(4000))
    assert sink.refused == 1 and '"seq":4000' in (spool_dir / f"{run}.refused.jsonl").read_text()
