"""Browser sockets only from the server's own origin (and listed ones); a loopback server
answers to loopback host names only (DNS rebinding). Regression tests of issue 9, item 1:
python-engineio read ``cors_allowed_origins=[]`` as "no check" and any page could stop a run."""
from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from browser import Training, wait_until
from monitor.store import RunStore
from servers import serving
from web.app import ServerConfig
from web.origins import host_allowed, origin_allowed

HANDSHAKE = ("GET /socket.io/?EIO=4&transport={transport} HTTP/1.1\r\nHost: {host}\r\n{extra}"
             "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def status_line(url: str, *, origin: str | None = None, host: str | None = None, transport="websocket") -> str:
    """The first line of the server's answer to a raw Socket.IO handshake."""
    address = url.removeprefix("http://")
    ip, port = address.split(":")
    extra = f"Origin: {origin}\r\n" if origin is not None else ""
    with socket.create_connection((ip, int(port)), timeout=10) as s:
        s.sendall(HANDSHAKE.format(transport=transport, host=host or address, extra=extra).encode())
        return s.recv(4096).split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"])
def test_a_websocket_handshake_from_another_origin_is_refused(tmp_path, origin):
    with serving(tmp_path) as server:
        assert " 400 " in status_line(server.url, origin=origin) + " "
        assert " 400 " in status_line(server.url, origin=origin, transport="polling") + " "


def test_the_servers_own_origin_and_a_client_without_origin_are_accepted(tmp_path):
    with serving(tmp_path) as server:
        assert " 101 " in status_line(server.url, origin=server.url)
        assert " 101 " in status_line(server.url.replace("127.0.0.1", "localhost"),
                                      origin=server.url.replace("127.0.0.1", "localhost"),
                                      host=server.url.replace("http://127.0.0.1", "localhost"))
        assert " 101 " in status_line(server.url)  # a trainer's python-socketio sends no Origin


def test_a_listed_origin_is_accepted(tmp_path):
    with serving(tmp_path, allowed_origins=["https://Babysit.Example.com"]) as server:
        assert " 101 " in status_line(server.url, origin="https://babysit.example.com")
        assert " 400 " in status_line(server.url, origin="https://other.example.com")


def test_a_loopback_server_refuses_requests_for_a_foreign_host_name(tmp_path, http_get):
    """DNS rebinding: a page on evil.example re-pointed at 127.0.0.1 is 'same origin' with
    Host evil.example; the server does not answer to that name, on REST or on its socket."""
    with serving(tmp_path) as server:
        port = server.url.rsplit(":", 1)[1]
        assert " 421 " in status_line(server.url, origin=f"http://evil.example:{port}", host=f"evil.example:{port}")
        with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
            s.sendall(f"GET /api/runs HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n".encode())
            answer = b"".join(iter(lambda: s.recv(4096), b"")).decode()
        assert answer.startswith("HTTP/1.1 421") and "--allowed-origin" in answer
        assert http_get(f"{server.url}/api/runs")[0] == 200


def test_host_and_origin_rules_follow_the_bind_address():
    loopback = ServerConfig(host="127.0.0.1")
    assert host_allowed("localhost:5000", loopback) and host_allowed("[::1]:5000", loopback)
    assert not host_allowed("evil.example:5000", loopback)
    assert host_allowed(socket.gethostname() + ":5000", loopback)
    exposed = ServerConfig(host="0.0.0.0", token="t")
    assert host_allowed("gpu-box:5000", exposed)  # reachable by any name; the token guards writes
    environ = {"HTTP_HOST": "gpu-box:5000", "wsgi.url_scheme": "http"}
    assert origin_allowed("http://gpu-box:5000", environ, exposed)
    assert not origin_allowed("http://evil.example", environ, exposed)
    assert origin_allowed(None, environ, exposed)


@pytest.mark.parametrize("bad", ["evil.example", "http://x/path", "ftp://x", "https://", "http://u@x"])
def test_an_allowed_origin_that_a_browser_never_sends_is_refused_naming_the_form(bad):
    with pytest.raises(ValueError, match="scheme://host"):
        ServerConfig(allowed_origins=[bad])


# ----------------------------------------------------------------------- a real hostile page

HOSTILE_PAGE = """<!doctype html><title>evil</title><script>
window.report = {opened: false, messages: [], closed: false, read: "not tried"};
const ws = new WebSocket("ws://%(server)s/socket.io/?EIO=4&transport=websocket");
ws.onopen = () => { window.report.opened = true; };
ws.onmessage = (m) => {
  window.report.messages.push(m.data);
  if (m.data.startsWith("0{")) ws.send("40/dashboard,");
  if (m.data.startsWith("40/dashboard")) {
    ws.send('42/dashboard,1["join","%(run)s"]');
    ws.send('42/dashboard,2["stop",{"run":"%(run)s","reason":"stopped by evil.example"}]');
  }
  if (m.data === "2") ws.send("3");
};
ws.onclose = () => { window.report.closed = true; };
fetch("http://%(server)s/api/runs").then(r => r.text()).then(t => { window.report.read = t; },
                                                            e => { window.report.read = "blocked"; });
</script>"""


class PageServer:
    """Another local origin: a plain HTTP server on its own port serving ``html``."""

    def __init__(self):
        holder = self

        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = holder.html.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.html = ""
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def hostile_visit(browser, pages: PageServer, server, run_id) -> dict:
    """Open the hostile page from another origin; what it managed, once its socket settled."""
    pages.html = HOSTILE_PAGE % {"server": server.url.removeprefix("http://"), "run": run_id}
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(pages.origin + "/")
        page.wait_for_function("() => window.report.closed || window.report.messages.length >= 4",
                               timeout=15_000)
        page.wait_for_function("() => window.report.read !== 'not tried'", timeout=15_000)
        time.sleep(0.5)  # a stop, had it gone through, reaches the trainer within a step
        return page.evaluate("() => window.report")
    finally:
        context.close()


@pytest.fixture
def pages():
    server = PageServer()
    yield server
    server.close()


def test_a_page_on_another_origin_cannot_join_a_room_stop_a_run_or_read_it(browser, pages, tmp_path):
    with serving(tmp_path / "server") as server:
        training = Training(server.url, tmp_path / "trainer", steps=10_000, delay=0.02)
        training.start()
        run_id = training.started()
        wait_until(lambda: training.steps_done >= 5, what="the training to stream")
        report = hostile_visit(browser, pages, server, run_id)
        assert report["opened"] is False and report["messages"] == [] and report["closed"] is True
        assert report["read"] == "blocked"  # no CORS header: the browser keeps the answer from the page
        steps = training.steps_done
        wait_until(lambda: training.steps_done >= steps + 5, what="the training to go on")
        assert not training.stopped_by_request
        import socketio  # end it from a client without an Origin (as a trainer's): the run's own stop path

        client = socketio.Client()
        client.connect(server.url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=5)
        try:
            assert client.call("stop", {"run": run_id, "reason": "test over"}, namespace="/dashboard",
                               timeout=5)["ok"]
        finally:
            client.disconnect()
        training.finish()
    store = RunStore(tmp_path / "server")
    reasons = [e.data.reason for e in store.events(run_id, kinds=["status"])]
    store.close()
    assert "stopped by evil.example" not in reasons and "test over" in reasons


def test_the_same_page_on_a_listed_origin_reaches_the_server(browser, pages, tmp_path):
    """The control: the hostile page's script works, so the refusal above is the server's."""
    with serving(tmp_path / "server", allowed_origins=[pages.origin]) as server:
        report = hostile_visit(browser, pages, server, "some-run")
    assert report["opened"] is True
    assert any(m.startswith('43/dashboard,2[{"ok":true') for m in report["messages"]), report["messages"]
