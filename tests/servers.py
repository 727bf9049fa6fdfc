"""A real babysit server on a loopback port, for the tests that need one."""
import contextlib
import socket

from web.app import ServerConfig, create_app
from web.serving import serve_in_thread


@contextlib.contextmanager
def serving_app(logdir, port: int = 0, token=None, **config):
    """A real server on a loopback port for the block, as ``(RunningServer, App)``; stopped
    and its store closed after. ``config``: more :class:`ServerConfig` fields."""
    app = create_app(ServerConfig(logdir=logdir, token=token, **config))
    running = serve_in_thread(app, port=port)
    try:
        yield running, app
    finally:
        running.stop()
        app.store.close()


@contextlib.contextmanager
def serving(logdir, port: int = 0, token=None, **config):
    """:func:`serving_app`'s server alone."""
    with serving_app(logdir, port, token, **config) as (running, _):
        yield running


def stop_from_dashboard(url: str, run: str, reason: str, token: str | None = None) -> None:
    """Press a page's Stop button, as a real python-socketio client on ``/dashboard`` does
    (``token``: the server's, which the page asks for when the server has one)."""
    import socketio

    browser = socketio.Client()
    browser.connect(url, namespaces=["/dashboard"], transports=["websocket"], wait_timeout=5)
    message = {"run": run, "reason": reason, **({"token": token} if token is not None else {})}
    try:
        assert browser.call("stop", message, namespace="/dashboard", timeout=5)["ok"] is True
    finally:
        browser.disconnect()


def hang_up(client) -> None:
    """Drop a python-socketio client's connection as a dying process does: the socket closed,
    no WebSocket close (whose wait for the server's close frame can take websocket-client's
    3 s timeout), and no reconnecting after, as a dead process does not: a client left to
    reconnect to a server the test has stopped tries for the life of the test process (and
    draws its jitter from the global ``random``, which a later hypothesis test sees)."""
    client.reconnection = False
    client.eio.ws.sock.shutdown(socket.SHUT_RDWR)
    client.eio.disconnect(abort=True)
