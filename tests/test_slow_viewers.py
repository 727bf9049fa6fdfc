"""Viewers that stop reading do not grow the server, and do not hold back anyone else
(:mod:`web.fanout`).

A real ``babysit serve`` (gunicorn, threaded worker) in its own process, so the worker's
memory can be read from ``/proc``; a busy run streamed into it over ``/ingest`` by a real
python-socketio client that checks every acknowledgement; raw WebSocket viewers (a TCP
socket with a tiny receive buffer that completes the engine.io and socket.io handshakes,
joins the run's room, then never reads again) and one healthy python-socketio viewer.
The drop itself (``resync``, then a close) is read by a raw viewer of the embedded
(Werkzeug) server, and the pages' answer to ``resync`` is checked in chromium.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import socketio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage

from browser import source_length, wait_until
from monitor import codec, protocol
from monitor.events import Event, Kind, LayerStats, QUANTILE_LEVELS, RunStart, Scalars, Signal, TensorSummary
from monitor.protocol import DASHBOARD_NAMESPACE, INDEX_ROOM, INGEST_NAMESPACE, room
from servers import serving_app
from trainer_hooks import stream
from web import fanout

pytestmark = [pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc"),
              pytest.mark.usefixtures("calm_cores")]  # viewers' deadlines

#: Viewers that join and never read, as in the report that found the leak.
STUCK_VIEWERS = 5
#: Seconds the server has to drop them all (in practice a few: its backlog fills, then the grace).
DROP_DEADLINE_SECONDS = 25.0
#: Seconds the run goes on streaming after they are dropped, to see memory level off.
LATE_SECONDS = 4.0
#: Most the worker's resident memory may grow while they are connected: their backlogs
#: (at most 2 x fanout.MAX_PENDING_BYTES each, and shared, as they watch one run) and the
#: server's own warm-up (about 20 MB with no stuck viewer at all); without the bound it grows
#: by several MB every second.
GROWTH_BOUND_MB = 48.0
#: Most it may still grow over the last seconds, once the stuck viewers have been dropped.
LATE_GROWTH_BOUND_MB = 12.0


# ------------------------------------------------------------------ the pieces

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class Served:
    """``babysit serve`` on a free loopback port; ``worker`` is the gunicorn worker's pid."""

    def __init__(self, logdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve", "--port", str(self.port),
                                         "--logdir", str(logdir)], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, f"babysit serve exited: {self.process.stdout.read()}"
            assert time.monotonic() < deadline, "babysit serve did not answer in time"
            try:
                with urllib.request.urlopen(self.url + "/api/runs", timeout=1) as response:
                    response.read()
                break
            except OSError:
                time.sleep(0.1)
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, f"expected one gunicorn worker, found {children}"
        self.worker = int(children[0])

    def stop(self) -> str:
        self.process.terminate()
        try:
            return self.process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.communicate()[0]


def summary(layer: str, signal: Signal, value: float) -> TensorSummary:
    bins = 64
    return TensorSummary(layer=layer, signal=signal, module="Linear", numel=4096, nan=0, inf=0, mean=value,
                         std=1.0 + value, min=-3.0, max=3.0, norm=10.0 + value, sample=4096,
                         quantiles=tuple(value + q for q in QUANTILE_LEVELS),
                         hist=tuple(range(1000, 1000 + bins)), hist_lo=-3.0, hist_hi=3.0, zero_frac=0.01)


def busy_batch(run: str, first_seq: int, events: int) -> str:
    """``events`` layer-stats events (eight layers, two signals: about 10 kB each) as a batch."""
    return codec.dumps([
        Event(run, seq, seq, 1_700_000_000.0 + seq, Kind.LAYER_STATS,
              LayerStats(tuple(summary(f"layer{i}", s, seq / 1000) for i in range(8)
                               for s in (Signal.ACTIVATION, Signal.PARAM_GRAD)))).to_dict()
        for seq in range(first_seq, first_seq + events)])


class Trainer(threading.Thread):
    """Streams batches of a busy run until ``stop``; every batch must be acknowledged."""

    def __init__(self, url: str, run: str, *, events_per_batch: int = 20):
        super().__init__(name="busy-trainer", daemon=True)
        self.client = socketio.Client()
        self.client.connect(url, namespaces=[INGEST_NAMESPACE], transports=["websocket"], wait_timeout=5)
        self.run_id, self.per_batch = run, events_per_batch
        self.next_seq = 0
        self.acks: list[dict] = []
        self.slowest_ack = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def send_one(self) -> dict:
        text = busy_batch(self.run_id, self.next_seq, self.per_batch)
        started = time.monotonic()
        ack = self.client.call(protocol.BATCH, text, namespace=INGEST_NAMESPACE, timeout=10)
        self.slowest_ack = max(self.slowest_ack, time.monotonic() - started)
        assert ack["ok"] and ack["last_seq"] == self.next_seq + self.per_batch - 1, ack
        self.acks.append(ack)
        self.next_seq += self.per_batch
        return ack

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.send_one()
        except BaseException as exc:  # surfaced by the test
            self.error = exc
        finally:
            self.client.disconnect()


class HealthyViewer:
    """A python-socketio client on /dashboard that joins the run's room and keeps every seq."""

    def __init__(self, url: str, run: str):
        self.seqs: list[int] = []
        self.resyncs: list[dict] = []
        self.client = socketio.Client()
        self.client.on(protocol.EVENTS, self._events, namespace=DASHBOARD_NAMESPACE)
        self.client.on(protocol.RESYNC, self.resyncs.append, namespace=DASHBOARD_NAMESPACE)
        self.client.connect(url, namespaces=[DASHBOARD_NAMESPACE], transports=["websocket"], wait_timeout=5)
        assert self.client.call(protocol.JOIN, run, namespace=DASHBOARD_NAMESPACE, timeout=5)["ok"]

    def _events(self, batch: dict) -> None:
        self.seqs.extend(event["seq"] for event in codec.loads(batch["events"]))


class RawViewer:
    """A WebSocket to /dashboard on a bare TCP socket, read only when the test says so.

    Its receive buffer is as small as the kernel allows, so once it stops reading the
    server's writes back up at once, as with a browser tab that froze."""

    def __init__(self, url: str, run: str, *, rcvbuf: int = 4096):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.texts: list[str] = []
        self.closed = False
        self._parts: list[str] = []
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}",
                                                target="/socket.io/?EIO=4&transport=websocket")))
        self._read_until(lambda: self.accepted)
        self._read_until(lambda: any(t.startswith("0{") for t in self.texts))  # engine.io OPEN
        self.send(f"40{DASHBOARD_NAMESPACE},")
        self._read_until(lambda: any(t.startswith(f"40{DASHBOARD_NAMESPACE},") for t in self.texts))
        self.send(f"42{DASHBOARD_NAMESPACE},1{json.dumps([protocol.JOIN, run])}")
        self._read_until(lambda: any(t.startswith(f"43{DASHBOARD_NAMESPACE},1") for t in self.texts))

    accepted = False

    def send(self, text: str) -> None:
        self.sock.sendall(self.ws.send(Message(data=text)))

    def read_some(self, most: int = 65536) -> bool:
        """Read what has arrived (at most ``most`` bytes); False once the server closed the connection."""
        try:
            data = self.sock.recv(most)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self.texts.append("".join(self._parts))
                    self._parts.clear()
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.closed = True
        return not self.closed

    def _read_until(self, done, seconds: float = 10.0) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            assert time.monotonic() < deadline, f"raw viewer: no answer in time, got {self.texts[-3:]}"
            assert self.read_some(), f"raw viewer: the server closed the connection, got {self.texts[-3:]}"

    def read_to_the_end(self, seconds: float = 10.0, *, most: int = 65536, pause: float = 0.0) -> bool:
        """Read until the server closes the connection, ``most`` bytes at a time with ``pause``
        seconds between reads (a slow reader); False if it is still open at the deadline."""
        deadline = time.monotonic() + seconds
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                if not self.read_some(most):
                    return True
            except TimeoutError:
                continue
            time.sleep(pause)
        return False

    def resyncs(self) -> list[str]:
        return [t for t in self.texts if t.startswith(f"42{DASHBOARD_NAMESPACE},") and protocol.RESYNC in t]

    def close(self) -> None:
        self.sock.close()


#: TCP states (linux/tcp_states.h) of a socket whose peer has closed (FIN) or reset it.
PEER_GONE = {7, 8}  # TCP_CLOSE, TCP_CLOSE_WAIT


def disconnect_all(*clients: socketio.Client) -> None:
    """Disconnect python-socketio clients side by side (Werkzeug's server makes each close wait)."""
    closing = [threading.Thread(target=c.disconnect) for c in clients]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join(10)


def closed_by_the_server(viewer: RawViewer) -> bool:
    """Whether the server ended the viewer's connection, seen without reading from it."""
    return viewer.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] in PEER_GONE


# ------------------------------------------------------------------ the tests

@pytest.mark.skipif(sys.platform == "win32", reason="gunicorn is POSIX only")
def test_viewers_that_never_read_are_dropped_with_the_memory_bounded_while_others_get_every_event(tmp_path):
    served = Served(tmp_path)
    trainer = viewers = healthy = None
    try:
        trainer = Trainer(served.url, "busy")
        trainer.send_one()  # the run exists: its room can be joined
        healthy = HealthyViewer(served.url, "busy")
        viewers = [RawViewer(served.url, "busy") for _ in range(STUCK_VIEWERS)]
        before = rss_mb(served.worker)
        trainer.start()
        started = time.monotonic()
        peak = before
        while not all(closed_by_the_server(v) for v in viewers):
            peak, elapsed = max(peak, rss_mb(served.worker)), time.monotonic() - started
            assert peak - before < GROWTH_BOUND_MB, (
                f"the server grew {before:.0f} -> {peak:.0f} MB in {elapsed:.1f} s "
                f"({(peak - before) / elapsed:.1f} MB/s) with {STUCK_VIEWERS} stuck viewers, more than "
                f"{GROWTH_BOUND_MB} MB: their backlogs are not bounded")
            assert elapsed < DROP_DEADLINE_SECONDS, (
                f"{sum(not closed_by_the_server(v) for v in viewers)} of {STUCK_VIEWERS} stuck viewers still "
                f"connected after {elapsed:.0f} s (the server grew {before:.0f} -> {peak:.0f} MB)")
            assert trainer.error is None, trainer.error
            time.sleep(0.25)
        dropped, elapsed = rss_mb(served.worker), time.monotonic() - started
        time.sleep(LATE_SECONDS)  # the run goes on streaming
        late = rss_mb(served.worker)
        print(f"\nworker memory: {before:.1f} MB before, peak {peak:.1f} MB (+{peak - before:.1f}); all "
              f"{STUCK_VIEWERS} stuck viewers dropped after {elapsed:.1f} s at {dropped:.1f} MB; "
              f"{late:.1f} MB {LATE_SECONDS:.0f} s later ({(late - dropped) / LATE_SECONDS:+.2f} MB/s); "
              f"{len(trainer.acks)} batches acked, slowest in {trainer.slowest_ack:.2f} s")
        trainer.stop.set()
        trainer.join(15)
        assert trainer.error is None and not trainer.is_alive(), trainer.error
        sent = trainer.next_seq
        deadline = time.monotonic() + 15
        while len(healthy.seqs) < sent - trainer.per_batch and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for v in viewers or ():
            v.close()
        if healthy is not None:
            healthy.client.disconnect()
        output = served.stop()
    assert late - dropped < LATE_GROWTH_BOUND_MB, (
        f"the server went on growing after the stuck viewers were dropped: {dropped:.0f} -> {late:.0f} MB "
        f"in {LATE_SECONDS} s")
    assert sorted(healthy.seqs) == list(range(trainer.per_batch, sent)), "the healthy viewer missed events"
    assert healthy.resyncs == []
    assert len(trainer.acks) == sent // trainer.per_batch  # every batch acknowledged, each within its timeout
    assert output.count("dropped a live viewer") == STUCK_VIEWERS, output[-3000:]


def send_until_dropped(trainer: Trainer, live, what: str = "the slow viewer",
                       keeping_up: HealthyViewer | None = None) -> None:
    """Send batches until the server drops a viewer (the slow one reads nothing meanwhile).
    With ``keeping_up``, each batch waits until that viewer (joined after the first batch)
    has it: a viewer starved of CPU on a loaded machine must not fall behind the bound
    itself, which is the slow viewer's part to play."""
    deadline = time.monotonic() + 20
    while live.dropped == 0:
        assert time.monotonic() < deadline, f"{what} was never dropped"
        trainer.send_one()
        if keeping_up is not None:
            wanted = trainer.next_seq - trainer.per_batch
            wait_until(lambda wanted=wanted: len(keeping_up.seqs) >= wanted, timeout=20, interval=0.002,
                       what="the healthy viewer to get the batch")


def test_a_viewer_that_falls_behind_is_told_to_resync_then_closed_and_the_others_are_not(tmp_path):
    with serving_app(tmp_path) as (running, app):
        live = fanout.for_server(app.socketio)
        live.max_bytes, live.grace = 256 * 1024, 30.0  # falls behind within a few batches; no cut here
        trainer = Trainer(running.url, "slow", events_per_batch=40)
        trainer.send_one()
        healthy = HealthyViewer(running.url, "slow")
        slow = RawViewer(running.url, "slow")
        try:
            send_until_dropped(trainer, live, keeping_up=healthy)
            trainer.send_one()  # after the drop: to the healthy viewer only
            assert slow.read_to_the_end(), "the dropped viewer's connection stayed open"
        finally:
            slow.close()
        resyncs = slow.resyncs()
        assert len(resyncs) == 1, slow.texts[-3:]
        name, message = json.loads(resyncs[0].removeprefix(f"42{DASHBOARD_NAMESPACE},"))
        assert name == protocol.RESYNC and "fell behind" in message["reason"] and "REST" in message["reason"]
        after = slow.texts[slow.texts.index(resyncs[0]) + 1:]
        assert after == ["1"], after  # nothing but engine.io's close after it: the backlog was freed
        deadline = time.monotonic() + 10
        while len(healthy.seqs) < trainer.next_seq - trainer.per_batch and time.monotonic() < deadline:
            time.sleep(0.05)
        disconnect_all(healthy.client, trainer.client)
        assert sorted(healthy.seqs) == list(range(trainer.per_batch, trainer.next_seq)) and healthy.resyncs == []
        assert live.dropped == 1


def test_a_dropped_viewer_reading_slowly_gets_to_its_resync_before_its_socket_is_cut(tmp_path):
    """The resync waits behind what the server's writer had already taken for the viewer (a
    batch of 400 kB here). The socket of a dropped viewer was cut 2 s after the drop, reading
    or not: a slow reader on a loaded machine lost the events and the word that it had (a
    viewer of 60,000 events/s got 88,000 of 200,000 and no resync). It is cut only once it
    stops taking bytes; this one reads 32 kB every 20 ms, its grace is 0.6 s (a reader the host
    keeps off the CPU longer than that is rightly cut: a loaded 2-core CI machine did so for
    0.3 s)."""
    with serving_app(tmp_path) as (running, app):
        live = fanout.for_server(app.socketio)
        live.max_bytes, live.grace = 256 * 1024, 0.6
        trainer = Trainer(running.url, "trickle", events_per_batch=40)
        trainer.send_one()
        slow = RawViewer(running.url, "trickle", rcvbuf=65536)
        try:
            send_until_dropped(trainer, live)
            started = time.monotonic()
            ended = slow.read_to_the_end(30, most=32768, pause=0.02)
            took = time.monotonic() - started
        finally:
            slow.close()
        disconnect_all(trainer.client)
    assert ended, "the dropped viewer's connection stayed open"
    assert len(slow.resyncs()) == 1 and slow.texts[-1] == "1", (  # the resync, then engine.io's close
        f"the slow viewer was cut after {took:.1f} s without its resync: {[t[:40] for t in slow.texts[-3:]]}")
    assert took > 2 * live.grace, f"read to the end in {took:.2f} s: the test did not make the viewer slow"


# ------------------------------------------------------------------ the page's side

@pytest.fixture
def page(browser):
    """A fresh tab; a script error on it fails the test (not the 404s of a run with no layer
    statistics and no filters yet, which the page reads as "none yet")."""
    context = browser.new_context()
    tab = context.new_page()
    problems = []
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    tab.on("console", lambda m: problems.append(m.text)
           if m.type == "error" and "status of 404" not in m.text else None)
    yield tab
    context.close()
    assert not problems, problems


def stored_run(app, run: str, steps: range) -> None:
    """Events put in the store directly: no viewer is told of them."""
    start = [Event(run, 0, 0, 1_700_000_000.0, Kind.RUN_START,
                   RunStart(name=run, config={}, model=(), host="h", pid=1, rank=0, world=1, versions={},
                            sampling={}))] if steps.start == 0 else []
    app.store.append(start + [Event(run, 1 + s, s, 1_700_000_001.0 + s, Kind.SCALARS, Scalars({"loss": 1 / (1 + s)}))
                              for s in steps])


def joined(app, room_name: str) -> bool:
    return bool(list(app.socketio.server.manager.get_participants(DASHBOARD_NAMESPACE, room_name)))


def resync(app, room_name: str) -> None:
    app.socketio.emit(protocol.RESYNC, {"reason": "this viewer fell behind (a test)"}, to=room_name,
                      namespace=DASHBOARD_NAMESPACE)


def test_told_to_resync_the_run_page_reloads_what_it_missed_from_the_store(tmp_path, page):
    with serving_app(tmp_path) as (running, app):
        stored_run(app, "missed", range(5))
        page.goto(f"{running.url}/runs/missed")
        page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=20_000)
        wait_until(lambda: joined(app, room("missed")), what="the page to join the run's room")
        assert source_length(page, "loss_train") == 5
        stored_run(app, "missed", range(5, 12))  # what the page missed
        resync(app, room("missed"))
        wait_until(lambda: source_length(page, "loss_train") == 12, timeout=10, what="the page to reload")
        page.close()


def test_told_to_resync_the_runs_index_reloads_the_list(tmp_path, page):
    with serving_app(tmp_path) as (running, app):
        stored_run(app, "first", range(3))
        page.goto(running.url + "/")
        page.wait_for_selector("#runs tbody tr >> text=first")
        wait_until(lambda: joined(app, INDEX_ROOM), what="the index to join its room")
        stored_run(app, "second", range(3))  # a run the index was not told of
        resync(app, INDEX_ROOM)
        page.wait_for_selector("#runs tbody tr >> text=second", timeout=10_000)
        page.close()


@pytest.mark.skipif(sys.platform == "win32", reason="gunicorn is POSIX only")
def test_a_viewer_of_a_server_ingesting_as_fast_as_it_can_gets_every_event_or_is_told_to_resync(tmp_path):
    """Two trainers send batches of 2,000 scalars as fast as they are acknowledged (some
    60,000 events a second); a viewer of both runs receives them all, or is told to resync
    if it fell behind. A frame the socket took only part of once broke the viewer's stream
    with no resync, and a fifth of the events went missing (web.fanout.WholeSends)."""
    served = Served(tmp_path)
    per_trainer, batch = 100_000, 2000
    received, resyncs = [0], []
    viewer = socketio.Client(reconnection=False)
    viewer.on(protocol.EVENTS, lambda m: received.__setitem__(0, received[0] + m["events"].count('"seq":')),
              namespace=DASHBOARD_NAMESPACE)  # one a event: a quote inside a JSON string is escaped
    viewer.on(protocol.RESYNC, resyncs.append, namespace=DASHBOARD_NAMESPACE)
    trainers = []
    try:
        for i in range(2):
            trainer = socketio.Client()
            trainer.connect(served.url, namespaces=[INGEST_NAMESPACE], transports=["websocket"], wait_timeout=5)
            trainer.call(protocol.BATCH, scalars_batch(f"fast-{i}", 0, 1), namespace=INGEST_NAMESPACE, timeout=10)
            trainers.append(trainer)
        viewer.connect(served.url, namespaces=[DASHBOARD_NAMESPACE], transports=["websocket"], wait_timeout=5)
        for i in range(2):
            assert viewer.call(protocol.JOIN, f"fast-{i}", namespace=DASHBOARD_NAMESPACE, timeout=5)["ok"]

        def send(i):
            for first in range(1, per_trainer + 1, batch):
                ack = trainers[i].call(protocol.BATCH, scalars_batch(f"fast-{i}", first, batch),
                                       namespace=INGEST_NAMESPACE, timeout=60)
                assert ack["ok"], ack

        senders = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(120)
        deadline = time.monotonic() + 30
        while received[0] < 2 * per_trainer and not resyncs and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for c in [viewer, *trainers]:
            stream.quietly_disconnect(c)  # its socket too, if the server cut it
        output = served.stop()
    assert received[0] == 2 * per_trainer or resyncs, (
        f"the viewer got {received[0]} of {2 * per_trainer} events and was never told to resync; "
        f"server said: {output[-1500:]}")


def scalars_batch(run: str, first: int, count: int) -> str:
    return codec.dumps([Event(run, seq, seq, 1_700_000_000.0 + seq, Kind.SCALARS,
                              Scalars({"loss": 1.0 / (seq + 1)})).to_dict() for seq in range(first, first + count)])
