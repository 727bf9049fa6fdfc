"""Scaled out: several real ``babysit serve`` processes share one store (SQLite in WAL mode
here; PostgreSQL through the same interface) and their live channels through a real Redis
(``--message-queue``, :mod:`web.message_queue`), behind Debian's nginx with the shipped
template (docs/nginx/babysit.conf: ip_hash, WebSocket upgrade, TLS).

A trainer on one process and a viewer on another see the same run live; a stop pressed on
one reaches the trainer on the other; a process does not take a run heard by the other for
silent; and when the process a trainer streams to is killed with SIGKILL mid-run, the
trainer reconnects through the proxy to the other and finishes, with every event stored
exactly once, and the viewer resumes. Skipped without redis-server or nginx, unless
``BABYSIT_REQUIRE_SERVICES=1``.
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import socketio

from monitor import cli, codec, protocol
from monitor.events import Event, Kind, RunStart, Scalars, Status
from monitor.protocol import DASHBOARD_NAMESPACE, INGEST_NAMESPACE
from monitor.store import RunStore
from servers import hang_up, serving_app, stop_from_dashboard
from services import free_port, missing, redis_server
from web import fanout

#: The shipped reverse-proxy template (rendered by the nginx test).
TEMPLATE = Path(__file__).resolve().parent.parent / "docs" / "nginx" / "babysit.conf"
#: The pair's timeout for silent runs, and the test trainers' heartbeat (six per timeout, as by default).
LOST_AFTER, HEARTBEAT = 3.0, 0.3
TOKEN = "scale-out-secret"

pytestmark = pytest.mark.usefixtures("calm_cores")  # lost-run timeouts, viewers' deadlines


def eventually(predicate, what: str, timeout: float = 20.0, interval: float = 0.05):
    """Poll ``predicate`` until it is true (its value), or fail saying ``what`` never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ real processes

class Serve:
    """One ``babysit serve`` process (gunicorn's arbiter and worker, in a process group of their own)."""

    def __init__(self, logdir: Path, queue: str, *options: str, port: int | None = None):
        self.port = port or free_port()
        self.logdir = logdir
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir.parent / f"serve-{self.port}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "monitor.cli", "serve", "--port", str(self.port), "--logdir", str(logdir),
                 "--message-queue", queue, "--token", TOKEN, *options],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        def answers():
            assert self.process.poll() is None, f"babysit serve exited: {self.output()}"
            try:
                with urllib.request.urlopen(f"{self.url}/api/runs", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        eventually(answers, f"babysit serve on port {self.port}", timeout)

    def kill(self) -> None:
        """SIGKILL to the arbiter and its worker at once, as a machine that dies."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # a worker left behind
            os.killpg(self.process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serving_pair(logdir: Path, queue: str, *options: str):
    """Two processes on one logdir and one queue, started side by side."""
    logdir.mkdir(parents=True, exist_ok=True)
    pair = []
    try:
        pair = [Serve(logdir, queue, *options), Serve(logdir, queue, *options)]
        for served in pair:
            served.wait_ready()
        yield pair
    finally:
        for served in pair:
            served.stop()


@pytest.fixture(scope="module")
def pair(redis_url, tmp_path_factory):
    """Processes A and B: one store (a logdir), one Redis, a short timeout for silent runs."""
    logdir = tmp_path_factory.mktemp("scale-out") / "runs"
    with serving_pair(logdir, redis_url, "--lost-after", str(LOST_AFTER)) as (a, b):
        yield a, b


def client(url: str, namespace: str, **options) -> socketio.Client:
    sio = socketio.Client(reconnection=False)
    sio.connect(url, namespaces=[namespace], transports=["websocket"], wait_timeout=10, **options)
    return sio


def trainer_client(url: str) -> socketio.Client:
    return client(url, INGEST_NAMESPACE, auth={"token": TOKEN})


def batch(*events: Event) -> str:
    return codec.dumps([e.to_dict() for e in events])


def live_seqs(message: dict) -> list[int]:
    """The seqs of one live batch (``protocol.EVENTS``)."""
    return [e["seq"] for e in codec.loads(message["events"])]


def started(run: str) -> list[Event]:
    return [Event(run, 0, 0, time.time(), Kind.RUN_START,
                  RunStart(name=run, config={}, model=(), host="gpu-far-away", pid=1, rank=0, world=1,
                           versions={}, sampling={})),
            Event(run, 1, 0, time.time(), Kind.STATUS, Status("running"))]


def scalars(run: str, seqs) -> list[Event]:
    return [Event(run, seq, seq, time.time(), Kind.SCALARS, Scalars({"loss": 1.0 / seq})) for seq in seqs]


def send(sender: socketio.Client, *events: Event) -> dict:
    ack = sender.call("batch", batch(*events), namespace=INGEST_NAMESPACE, timeout=10)
    assert ack["ok"], ack
    return ack


def status_of(url: str, run: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/api/runs/{run}", timeout=5) as response:
            return codec.loads(response.read())["info"]["status"]
    except OSError:
        return None


# ------------------------------------------------------------------ across two processes

def test_a_viewer_on_one_process_sees_live_the_events_a_trainer_streams_to_another(pair):
    a, b = pair
    run = "across"
    trainer = trainer_client(a.url)
    viewer = client(b.url, DASHBOARD_NAMESPACE)
    seen, changed = [], []
    viewer.on("events", lambda m: seen.extend(live_seqs(m)) if m["run"] == run else None,
              namespace=DASHBOARD_NAMESPACE)
    viewer.on("runs_changed", lambda m: changed.extend(m["runs"]), namespace=DASHBOARD_NAMESPACE)
    try:
        send(trainer, *started(run))  # the run exists: its room can be joined
        assert viewer.call("join", run, namespace=DASHBOARD_NAMESPACE, timeout=10)["ok"]
        assert viewer.call("watch_runs", namespace=DASHBOARD_NAMESPACE, timeout=10)["ok"]
        for first in range(2, 32, 10):
            send(trainer, *scalars(run, range(first, first + 10)))
        # (the start may reach B after the join, as the queue carries it: seqs 0 and 1 may come too)
        eventually(lambda: set(range(2, 32)) <= set(seen), "the viewer on B to get seqs 2..31")
        eventually(lambda: run in changed, "the index on B told")
    finally:
        trainer.disconnect()
        viewer.disconnect()
    assert len(seen) == len(set(seen)), seen  # each once: B delivered what A published, and only that


def test_a_stop_pressed_on_one_process_reaches_the_trainer_on_another(pair):
    a, b = pair
    run = "stopped-across"
    stops = []
    trainer = socketio.Client(reconnection=False)
    trainer.on("stop", stops.append, namespace=INGEST_NAMESPACE)
    trainer.connect(a.url, namespaces=[INGEST_NAMESPACE], transports=["websocket"], wait_timeout=10,
                    auth={"token": TOKEN})
    try:
        send(trainer, *started(run))  # joins the run's trainer room on A
        stop_from_dashboard(b.url, run, "pressed on B", token=TOKEN)
        eventually(lambda: stops, "the stop to reach the trainer on A")
    finally:
        trainer.disconnect()
    assert stops == [{"run": run, "reason": "pressed on B", "by": "dashboard"}]


def test_a_run_heard_by_one_process_is_not_lost_on_the_other_while_a_vanished_one_is(pair):
    a, b = pair
    alive, vanished = trainer_client(a.url), trainer_client(a.url)
    beating = threading.Event()

    def beat():
        while not beating.wait(HEARTBEAT):
            alive.call("heartbeat", {"runs": ["beating"]}, namespace=INGEST_NAMESPACE, timeout=10)

    send(alive, *started("beating"))
    send(vanished, *started("vanished"))
    hang_up(vanished)  # and never heard from again
    heart = threading.Thread(target=beat, daemon=True)
    heart.start()
    statuses = []
    try:
        lost_at, deadline = None, time.monotonic() + LOST_AFTER + 15
        # B judges both (its REST requests start its checks): the beating run is heard on A only.
        # By the time the vanished run is lost, B has judged the beating one for as long; and as long again.
        while lost_at is None or time.monotonic() < lost_at + LOST_AFTER:
            status = status_of(b.url, "beating")
            if not statuses or statuses[-1] != status:
                statuses.append(status)
            if lost_at is None and status_of(b.url, "vanished") == "lost":
                lost_at = time.monotonic()
            assert lost_at is not None or time.monotonic() < deadline, "the vanished run was never marked lost"
            time.sleep(0.1)
    finally:
        beating.set()
        heart.join(10)
        alive.disconnect()
    assert statuses == ["running"], statuses
    with RunStore(a.logdir) as store:
        assert re.fullmatch(r"no heartbeat for \d s", store.run_info("vanished").lost_reason)


def test_each_process_drops_its_own_viewer_that_falls_behind_on_events_from_the_other(redis_url, tmp_path):
    """The bound of web.fanout holds with the queue in place: B delivers A's events to its
    viewers through its own bounded fan-out (in-process servers: the drop is B's to count)."""
    from test_slow_viewers import HealthyViewer, RawViewer, Trainer, send_until_dropped

    queue = redis_url.rsplit("/", 1)[0] + "/2"
    with serving_app(tmp_path, message_queue=queue) as (a, a_app), \
            serving_app(tmp_path, message_queue=queue) as (b, b_app):
        live = fanout.for_server(b_app.socketio)
        live.max_bytes, live.grace = 256 * 1024, 30.0  # falls behind within a few batches; no cut here
        trainer = Trainer(a.url, "slow-across", events_per_batch=40)
        trainer.send_one()
        healthy = HealthyViewer(b.url, "slow-across")
        slow = RawViewer(b.url, "slow-across")
        try:
            send_until_dropped(trainer, live, "the slow viewer on B", keeping_up=healthy)
            assert slow.read_to_the_end(), "the dropped viewer's connection stayed open"
            eventually(lambda: len(healthy.seqs) == trainer.next_seq - trainer.per_batch,
                       "the healthy viewer on B to get every batch")
        finally:
            slow.close()
            for sio in (healthy.client, trainer.client):
                hang_up(sio)  # Werkzeug's server makes a clean close wait seconds
        assert any(protocol.RESYNC in t for t in slow.texts)
        assert sorted(healthy.seqs) == list(range(trainer.per_batch, trainer.next_seq)) and healthy.resyncs == []
        assert live.dropped == 1 and fanout.for_server(a_app.socketio).dropped == 0


def test_while_redis_is_down_batches_are_stored_and_acked_at_once_it_is_said_once_and_viewers_resync_after(
        tmp_path, caplog):
    port = free_port()
    first_redis = redis_server(port)
    queue = first_redis.__enter__()  # stopped in the middle of the test: Redis goes down
    try:
        with serving_app(tmp_path, message_queue=queue) as (a, _), serving_app(tmp_path, message_queue=queue) as (b, _):
            trainer = trainer_client(a.url)
            viewer = client(b.url, DASHBOARD_NAMESPACE)
            seen, resyncs = [], []
            viewer.on("events", lambda m: seen.extend(live_seqs(m)), namespace=DASHBOARD_NAMESPACE)
            viewer.on("resync", resyncs.append, namespace=DASHBOARD_NAMESPACE)
            try:
                send(trainer, *started("outage"))
                assert viewer.call("join", "outage", namespace=DASHBOARD_NAMESPACE, timeout=10)["ok"]
                send(trainer, *scalars("outage", range(2, 5)))
                eventually(lambda: {2, 3, 4} <= set(seen), "live events before the outage")
                with caplog.at_level(logging.WARNING, logger="babysit"):
                    first_redis.__exit__(None, None, None)
                    first_redis = None
                    eventually(lambda: caplog.text.count("lost the message queue") == 2, "the listeners to notice")
                    for first in range(5, 35, 10):  # the ingest neither waits nor fails
                        sent = time.monotonic()
                        assert send(trainer, *scalars("outage", range(first, first + 10)))["stored"] == 10
                        assert time.monotonic() - sent < 2.0
                    with redis_server(port):  # Redis is back on its address
                        eventually(lambda: resyncs, "B's viewer told to resync once B listens again", 20)

                        more = iter(range(35, 1000))

                        def live_again():
                            send(trainer, *scalars("outage", [next(more)]))
                            return max(seen) >= 35
                        eventually(live_again, "live events again", 20, interval=0.2)
                        said = [r.getMessage() for r in caplog.records]  # before this Redis stops too
            finally:
                hang_up(trainer)
                hang_up(viewer)
    finally:
        if first_redis is not None:
            first_redis.__exit__(None, None, None)
    assert sum("cannot publish to the message queue" in m for m in said) == 1, said  # A's, once
    assert sum("lost the message queue" in m for m in said) == 2, said  # A's and B's listeners, once each
    assert sum("listening to the message queue" in m for m in said) == 2, said
    assert sum("answers again" in m for m in said) == 1, said
    with RunStore(tmp_path) as store:
        assert [e.seq for e in store.events("outage")][:35] == list(range(35))  # stored all along


def test_a_message_queue_that_is_not_redis_does_not_answer_or_lacks_its_package_is_refused_in_one_line(
        tmp_path, capsys, monkeypatch, redis_url):
    assert cli.main(["serve", "--logdir", str(tmp_path), "--message-queue", "amqp://127.0.0.1:5672"]) == 2
    error = capsys.readouterr().err
    assert "expected the URL of the Redis server the server processes share, redis://host:port/N" in error
    assert "got 'amqp://127.0.0.1:5672'" in error and "Traceback" not in error
    nobody = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    assert cli.main(["serve", "--logdir", str(tmp_path), "--message-queue", nobody]) == 2
    error = capsys.readouterr().err
    assert f"the message queue redis://:***@127.0.0.1:{nobody.rsplit(':', 1)[1]} does not answer" in error
    assert "hunter2" not in error and "start Redis there" in error and "Traceback" not in error
    monkeypatch.setitem(sys.modules, "redis", None)  # as if the scale extra were not installed
    assert cli.main(["serve", "--logdir", str(tmp_path), "--message-queue", redis_url]) == 2
    assert "--message-queue needs the redis package: pip install 'babysit[scale]'" in capsys.readouterr().err


# ------------------------------------------------------------------ behind nginx, one process killed

#: A tiny real training through the proxy; prints its run id, then "done <should_stop>" at the end.
TRAINER = r"""
import os, sys, time
import torch
from torch import nn
from trainer_hooks import watch

url, logdir, steps, finish = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
with watch(model, optimizer, run="behind-nginx", server=url, logdir=logdir, every=5, detectors=[]) as mon:
    print(mon.run_id, flush=True)
    step = 0
    while step < steps or (not os.path.exists(finish) and step < 100 * steps):  # until the test has seen enough
        step += 1
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mon.log(loss=loss)
        time.sleep(0.02)
print("done", mon.should_stop, flush=True)
"""
STEPS = 250


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        missing("nginx")
    return binary


@contextlib.contextmanager
def nginx(folder: Path, port: int, backends: list[str], cert: Path, key: Path):
    """Debian's nginx with the shipped template on loopback port ``port``, in the foreground
    with its own prefix, pid and logs under ``folder``; yields its https:// URL."""
    binary = nginx_binary()
    site = TEMPLATE.read_text()
    for placeholder, value in {"SERVER_NAME": "127.0.0.1", "LISTEN": f"127.0.0.1:{port}",
                               "HTTP_LISTEN": f"127.0.0.1:{free_port()}", "CERTIFICATE": str(cert),
                               "CERTIFICATE_KEY": str(key), "BACKEND_1": backends[0],
                               "BACKEND_2": backends[1]}.items():
        site = site.replace("{{" + placeholder + "}}", value)
    assert "{{" not in "".join(line for line in site.splitlines() if not line.startswith("#")), site
    folder.mkdir()
    (folder / "logs").mkdir()
    (folder / "babysit.conf").write_text(site)
    # What Debian's /etc/nginx/nginx.conf gives the site file, in a folder of the test's own;
    # one process (no workers to switch users), temporary files under the prefix.
    (folder / "nginx.conf").write_text(f"""
master_process off;
pid {folder}/nginx.pid;
error_log {folder}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy; fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
    include {folder}/babysit.conf;
}}
""")
    process = subprocess.Popen([binary, "-p", str(folder), "-e", str(folder / "logs" / "error.log"),
                                "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{port}"

    def answers():
        assert process.poll() is None, f"nginx exited: {process.stdout.read().decode(errors='replace')}"
        try:
            with urllib.request.urlopen(f"{url}/api/runs", timeout=2, context=context) as response:
                return response.status == 200
        except OSError:
            return False
    try:
        eventually(answers, "nginx to answer", 20)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def established_to(port: int) -> int:
    """Open TCP connections whose local end is ``port`` (/proc/net/tcp: state 01 is ESTABLISHED)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_behind_nginx_a_killed_process_loses_nothing_the_trainer_moves_to_the_other_and_the_viewer_resumes(
        redis_url, tmp_path):
    nginx_binary()  # skip before starting anything
    cert, key = self_signed(tmp_path)
    queue = redis_url.rsplit("/", 1)[0] + "/1"  # a group of its own: not the module's pair
    logdir = tmp_path / "runs"
    proxy_port = free_port()
    public = f"https://127.0.0.1:{proxy_port}"  # the address users (pages, trainers) are given
    with serving_pair(logdir, queue, "--allowed-origin", public, "--lost-after", "20") as servers:
        backends = [f"127.0.0.1:{s.port}" for s in servers]
        with nginx(tmp_path / "nginx", proxy_port, backends, cert, key) as url:
            environ = {**os.environ, "SSL_CERT_FILE": str(cert), "WEBSOCKET_CLIENT_CA_BUNDLE": str(cert),
                       "BABYSIT_TOKEN": TOKEN, "BABYSIT_HEARTBEAT_SECONDS": str(HEARTBEAT), "OMP_NUM_THREADS": "1"}
            finish = tmp_path / "finish"  # the trainer trains on until this exists: the viewer's resuming is seen live
            trainer = subprocess.Popen([sys.executable, "-c", TRAINER, url, str(tmp_path / "trainer"), str(STEPS),
                                        str(finish)],
                                       env=environ, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
            viewer = None
            try:
                lines = []
                while not (lines and lines[-1].startswith("behind-nginx")):
                    line = trainer.stdout.readline()
                    assert line, f"the trainer did not start: {''.join(lines)}"
                    lines.append(line)
                run = lines[-1].strip()
                viewer, seen, connects = page_socket(url, cert, run)
                eventually(lambda: seen and max(seen) >= 40, "the viewer to see the run live through nginx")
                home = max(servers, key=lambda s: established_to(s.port))  # ip_hash: the trainer's (and viewer's)
                assert established_to(home.port) > 0
                (other,) = [s for s in servers if s is not home]
                home.kill()
                before = max(seen)
                eventually(lambda: len(connects) >= 2 and max(seen) > before + 20,
                           "the viewer to reconnect and get events after the kill", timeout=60)
                finish.touch()
                output = trainer.communicate(timeout=90)[0]
                assert trainer.returncode == 0 and "done False" in output, output
            finally:
                if trainer.poll() is None:
                    trainer.kill()
                    trainer.communicate()
                if viewer is not None:
                    viewer.disconnect()
        assert "Traceback" not in other.output(), other.output()
    with RunStore(logdir) as store:
        events = store.events(run)
    seqs = [e.seq for e in events]
    assert seqs == list(range(len(seqs))), "an event missing or stored twice"
    assert events[-1].kind is Kind.RUN_END and events[-2].data.state.value == "finished"
    assert sum(e.kind is Kind.SCALARS for e in events) >= STEPS


def page_socket(url: str, cert: Path, run: str):
    """A page's socket through the proxy: it joins the run's room on every connection (the
    page does) and reconnects by itself. Its Origin is the proxy's https address, as a
    browser's on the page would be (websocket-client sends that)."""
    import requests

    session = requests.Session()
    session.verify = str(cert)
    seen, connects = [], []
    viewer = socketio.Client(reconnection=True, reconnection_delay=0.2, reconnection_delay_max=1.0,
                             http_session=session)

    def joined(*_):
        connects.append(time.monotonic())
        viewer.emit("join", run, namespace=DASHBOARD_NAMESPACE)

    viewer.on("connect", joined, namespace=DASHBOARD_NAMESPACE)
    viewer.on("events", lambda m: seen.extend(live_seqs(m)), namespace=DASHBOARD_NAMESPACE)
    viewer.connect(url, namespaces=[DASHBOARD_NAMESPACE], transports=["websocket"], wait_timeout=10)
    return viewer, seen, connects
