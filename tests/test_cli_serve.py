"""``babysit serve``: the production server (gunicorn, threaded worker) as a user starts it."""
from monitor.protocol import PROTOCOL_VERSION
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import socketio

from monitor import cli, codec
from monitor.events import Event, Kind, Scalars
from monitor.store import RunStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, process, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"babysit serve exited: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/api/runs", timeout=1) as response:
                response.read()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("babysit serve did not answer in time")


@pytest.mark.skipif(sys.platform == "win32", reason="gunicorn is POSIX only")
def test_serve_ingests_over_a_websocket_and_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "monitor.cli", "serve", "--port", str(port),
                                "--logdir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        wait_until_serving(url, process)
        client = socketio.Client()
        client.connect(url, namespaces=["/ingest"], transports=["websocket"], wait_timeout=5)
        assert client.transport() == "websocket"
        text = codec.dumps([Event("served", 0, 0, 1.0, Kind.SCALARS, Scalars({"loss": 2.5})).to_dict()])
        assert client.call("batch", text, namespace="/ingest", timeout=5) == {
            "ok": True, "stored": 1, "last_seq": 0, "protocol": PROTOCOL_VERSION}
        started = time.monotonic()
        client.disconnect()
        assert time.monotonic() - started < 1.0  # a clean WebSocket close, unlike the development server
        with urllib.request.urlopen(url + "/api/runs", timeout=5) as response:
            runs = codec.loads(response.read())
        assert [r["run"] for r in runs] == ["served"] and runs[0]["last_loss"] == 2.5
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output
    with RunStore(tmp_path) as store:
        assert len(store.events("served")) == 1


def test_serving_beyond_loopback_needs_a_token_and_says_how_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BABYSIT_TOKEN", raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0", "--logdir", str(tmp_path)]) == cli.USAGE_ERROR
    assert "give a token (--token or BABYSIT_TOKEN)" in capsys.readouterr().err
