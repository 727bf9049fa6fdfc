"""Liveness end to end: real trainer processes streaming to a real server on a loopback port;
a trainer killed with SIGKILL leaves its run ``lost`` within the timeout, shown so on the
index and the run page (Debian's chromium); a quiet trainer's heartbeat keeps its run
running; a trainer heard again gets its run back; a process writing straight into the
store on this machine is asked whether it lives; a lost run is emailed like a crash.

The server's timeout is short here (``LOST_AFTER`` s) and the trainers beat every
``HEARTBEAT`` s (``$BABYSIT_HEARTBEAT_SECONDS``): six beats per timeout, as by default.
"""
from __future__ import annotations

import contextlib
import email
import email.policy
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import socketio

from browser import wait_until
from servers import hang_up
from monitor import cli, codec
from monitor.alert_config import AlertConfig
from monitor.events import Event, Kind, RunStart, Scalars, Status
from monitor.store import RunStore
from trainer_hooks.stream import HEARTBEAT_ENV, SocketSink
from web.app import ServerConfig, create_app
from web.liveness import CHECK_SECONDS
from web.serving import serve_in_thread

LOST_AFTER, HEARTBEAT = 3.0, 0.5

#: A tiny real training streaming to argv[1]; at step ``quiet_at`` it flushes, says "quiet",
#: sleeps ``quiet`` seconds logging nothing (a long step), says "awake" and goes on.
TRAINER = r"""
import sys, time
import torch
from torch import nn
from trainer_hooks import watch

url, logdir, run, steps, quiet_at, quiet = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \
    int(sys.argv[5]), float(sys.argv[6])
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
with watch(model, optimizer, run=run, server=url, logdir=logdir, every=5, detectors=[]) as mon:
    print(mon.run_id, flush=True)
    for step in range(steps):
        if step == quiet_at:
            mon.flush()
            print("quiet", flush=True)
            time.sleep(quiet)
            print("awake", flush=True)
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mon.log(loss=loss)
        time.sleep(0.05)
"""


@contextlib.contextmanager
def serving(logdir, lost_after=LOST_AFTER, alerts=None):
    app = create_app(ServerConfig(logdir=logdir, lost_after=lost_after, alerts=alerts))
    running = serve_in_thread(app)
    try:
        yield running, app
    finally:
        running.stop()
        if app.alerts is not None:
            app.alerts.close(timeout=5.0)
        app.store.close()


@contextlib.contextmanager
def trainer(url, tmp_path, run, *, steps=100_000, quiet_at=-1, quiet=0.0, heartbeat=HEARTBEAT):
    """A trainer process; yields ``(process, run id)`` once it watches; killed after."""
    environ = {**os.environ, HEARTBEAT_ENV: str(heartbeat), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", TRAINER, url, str(tmp_path / run), run, str(steps),
                                str(quiet_at), str(quiet)], env=environ, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for _ in range(20):  # babysit's own lines (stderr is merged) come before the script's
            line = process.stdout.readline()
            seen.append(line)
            if not line or line.startswith(run):
                break
        run_id = seen[-1].strip()
        assert run_id.startswith(run), f"the trainer did not start: {''.join(seen)}"
        yield process, run_id
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        process.stdout.close()


def status_of(url, run, http_get) -> str | None:
    code, _, body = http_get(f"{url}/api/runs/{run}")
    return codec.loads(body)["info"]["status"] if code == 200 else None


def duration(seconds: float) -> str:
    """web/js/src/format.js's ``duration`` below an hour."""
    whole = math.floor(seconds + 0.5)
    return f"{whole // 60}m {whole % 60:02d}s" if whole >= 60 else f"{whole}s"


def run_start(run, host="gpu-far-away", pid=1) -> Event:
    return Event(run, 0, 0, time.time(), Kind.RUN_START,
                 RunStart(name=run, config={}, model=(), host=host, pid=pid, rank=0, world=1, versions={},
                          sampling={}))


def connected(url, *namespaces) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    client.connect(url, namespaces=list(namespaces), transports=["websocket"], wait_timeout=5)
    return client


def batch(*events) -> str:
    return codec.dumps([e.to_dict() for e in events])


# ---------------------------------------------------------------------- trainers

def test_a_sigkilled_trainers_run_is_marked_lost_within_the_timeout_and_shown_so_on_both_pages(
        tmp_path, http_get, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    with serving(tmp_path / "server") as (server, app), trainer(server.url, tmp_path, "doomed") as (process, run):
        page.goto(f"{server.url}/runs/{run}")
        page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=20_000)
        wait_until(lambda: page.locator("#status").inner_text() == "running", what="the run page says running")
        wait_until(lambda: (info := app.store.run_info(run)) is not None and info.last_step >= 5,
                   what="a few steps stored")
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        process.wait(10)
        wait_until(lambda: status_of(server.url, run, http_get) == "lost", timeout=LOST_AFTER + 10,
                   interval=0.05, what="the run marked lost")
        took = time.monotonic() - killed
        # the run page learns it live, without a reload
        page.wait_for_selector("#status.badge.lost", timeout=5_000)
        assert page.locator("#status").inner_text() == "lost"
        assert "no heartbeat for" in page.locator("#stopped-by").inner_text()
        assert page.locator("#stop").is_disabled()
        page.screenshot(path=tmp_path / "run-page-lost.png")
        page.goto(f"{server.url}/")
        row = page.locator(f'tr[data-run="{run}"]')
        row.locator(".badge.lost").wait_for(timeout=10_000)
        assert "no heartbeat for" in row.locator("td").nth(2).get_attribute("title")
        info = app.store.run_info(run)  # its duration stops at the last event, not at now
        assert row.locator("td").nth(7).inner_text() == duration(info.updated - info.started)
        page.screenshot(path=tmp_path / "index-lost.png")
    context.close()
    assert not problems, problems
    # within the timeout after its last heartbeat, plus one check; a heartbeat is at most
    # HEARTBEAT old at the kill
    assert took <= LOST_AFTER + CHECK_SECONDS + 2.0, took


def test_a_quiet_trainers_heartbeat_keeps_its_run_running_through_a_long_step_while_a_silent_run_is_lost(
        tmp_path, http_get):
    with serving(tmp_path / "server") as (server, app), \
            trainer(server.url, tmp_path, "quiet", steps=15, quiet_at=5, quiet=LOST_AFTER + 2) as (process, run):
        assert process.stdout.readline().strip() == "quiet"
        silent = connected(server.url, "/ingest")  # the control: a run whose sender says nothing from now on
        assert silent.call("batch", batch(run_start("silent")), namespace="/ingest", timeout=5)["ok"]
        hang_up(silent)
        seen = {run: [], "silent": []}  # each run's statuses in the order the index would have shown them
        awake = time.monotonic() + LOST_AFTER + 2
        while time.monotonic() < awake:  # the long step
            for name, statuses in seen.items():
                status = status_of(server.url, name, http_get)
                if not statuses or statuses[-1] != status:
                    statuses.append(status)
            time.sleep(0.1)
        assert process.poll() is None, process.stdout.read()
    assert seen == {run: ["running"], "silent": ["running", "lost"]}


# --------------------------------------------------------------- coming back


def test_a_lost_run_is_running_again_when_its_trainer_beats_or_sends_and_its_page_is_told(tmp_path, http_get):
    told = []
    with serving(tmp_path / "server", lost_after=1.0) as (server, app):
        viewer = socketio.Client(reconnection=False)
        viewer.on("run_status", told.append, namespace="/dashboard")
        viewer.connect(server.url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=5)
        assert viewer.call("join", "back", namespace="/dashboard", timeout=5)["ok"]
        sender = connected(server.url, "/ingest")
        ack = sender.call("batch", batch(run_start("back"), Event("back", 1, 0, time.time(), Kind.STATUS,
                                                                  Status("running"))), namespace="/ingest")
        assert ack["ok"] and ack["stored"] == 2
        wait_until(lambda: status_of(server.url, "back", http_get) == "lost", timeout=10, what="lost")
        assert sender.call("heartbeat", {"runs": ["back"]}, namespace="/ingest", timeout=5)["ok"]
        assert status_of(server.url, "back", http_get) == "running"
        wait_until(lambda: status_of(server.url, "back", http_get) == "lost", timeout=10, what="lost again")
        ack = sender.call("batch", batch(Event("back", 2, 3, time.time(), Kind.SCALARS, Scalars({"loss": 1.0}))),
                          namespace="/ingest")
        assert ack["ok"] and status_of(server.url, "back", http_get) == "running"
        wait_until(lambda: len(told) >= 4, timeout=5, what="the room told")
        hang_up(sender)
        hang_up(viewer)
        with RunStore(tmp_path / "server") as store:
            assert [e.seq for e in store.events("back")] == [0, 1, 2]  # no event of the server's
    assert [m["status"] for m in told[:4]] == ["lost", "running", "lost", "running"]
    assert re.fullmatch(r"no heartbeat for \d s", told[0]["reason"]) and told[0]["run"] == "back"


def test_a_malformed_heartbeat_is_refused_for_good_with_what_to_send(tmp_path):
    with serving(tmp_path / "server") as (server, _):
        sender = connected(server.url, "/ingest")
        answers = [sender.call("heartbeat", *args, namespace="/ingest", timeout=5)
                   for args in [(), ({"runs": "r1"},), ({"runs": []},), ({"runs": ["../etc"]},)]]
        hang_up(sender)
    assert all(a["ok"] is False and a["permanent"] is True for a in answers), answers
    assert 'expected one argument {"runs": [1 to 1000 run ids]}, got 0 arguments' in answers[0]["error"]
    assert "got dict {'runs': 'r1'}" in answers[1]["error"]
    assert answers[3]["error"].startswith("heartbeat: ")


# ------------------------------------------------------------ runs in the store

def test_of_runs_written_straight_into_the_store_only_those_whose_process_is_gone_are_marked_lost(
        tmp_path, http_get):
    here = socket.gethostname()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    runs = {"alive-here": (here, os.getpid()), "ended-here": (here, int(ended.stdout)),
            "elsewhere": ("gpu-far-away", os.getpid())}
    with RunStore(tmp_path) as store:  # a training process with the local store only (no server)
        for run, (host, pid) in runs.items():
            store.append([run_start(run, host, pid), Event(run, 1, 0, time.time(), Kind.STATUS, Status("running"))])
    with serving(tmp_path, lost_after=1.0) as (server, app):
        wait_until(lambda: {r: status_of(server.url, r, http_get) for r in runs} ==
                   {"alive-here": "running", "ended-here": "lost", "elsewhere": "lost"}, timeout=10,
                   what="the two runs without a live process marked lost")
        time.sleep(1.0)  # more checks: the live process keeps its run
        assert status_of(server.url, "alive-here", http_get) == "running"
        reasons = {r: app.store.run_info(r).lost_reason for r in runs}
    assert reasons["alive-here"] == ""
    assert reasons["ended-here"] == f"its process (pid {ended.stdout.strip()}) ended without ending the run"
    assert re.fullmatch(r"no heartbeat in the \d s since the server started", reasons["elsewhere"])


# ------------------------------------------------------------------- alerts

class _Inbox:
    def __init__(self):
        self.messages = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.arrived.set()
        return "250 OK"


def test_a_lost_run_is_emailed_like_a_crash_with_its_reason_and_link(tmp_path):
    from aiosmtpd.controller import Controller

    inbox = _Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    alerts = AlertConfig(smtp_host="127.0.0.1", smtp_port=port, smtp_security="none", mail_to=("ops@example.com",),
                         mail_from="babysit@example.com", alert_gather=0.05, alert_interval=0.0)
    try:
        with serving(tmp_path, lost_after=1.0, alerts=alerts) as (server, app):
            sender = connected(server.url, "/ingest")
            sender.call("batch", batch(run_start("gone"), Event("gone", 1, 7, time.time(), Kind.STATUS,
                                                                Status("running"))), namespace="/ingest")
            hang_up(sender)  # and never heard from again
            assert inbox.arrived.wait(15), "no email"
            assert app.alerts.flush(5)
    finally:
        controller.stop()
    (message,) = inbox.messages
    assert re.fullmatch(r"\[babysit\] run gone lost after 7 steps: no heartbeat for \d s", message["Subject"])
    text = message.get_body(("plain",)).get_content()
    assert "Run gone went silent: the server marked it lost." in text
    assert f"Run page: {server.url}/runs/gone" in text and "stopped talking to the server" in text


# ------------------------------------------------------------------- settings

def test_the_timeout_and_the_heartbeat_refuse_bad_values_saying_what_to_pass(tmp_path, capsys, monkeypatch):
    for bad in (0, -1.0, float("nan"), "30", True):
        with pytest.raises(ValueError, match="lost_after: expected the seconds of silence .* a number above 0"):
            ServerConfig(logdir=tmp_path, lost_after=bad)
    assert cli.main(["serve", "--logdir", str(tmp_path), "--lost-after", "-5"]) == cli.USAGE_ERROR
    assert "--lost-after: expected seconds above 0, e.g. 30; got '-5'" in capsys.readouterr().err
    monkeypatch.setenv(HEARTBEAT_ENV, "often")
    with pytest.raises(ValueError, match=f"{HEARTBEAT_ENV}: expected seconds between heartbeats.*got 'often'"):
        SocketSink("http://127.0.0.1:1", "r1", tmp_path)
    assert SocketSink("http://127.0.0.1:1", "r1", tmp_path, heartbeat=0).heartbeat == 0
