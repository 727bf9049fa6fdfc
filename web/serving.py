"""Serving an app from a background thread (the embedded server and the tests).

Werkzeug's threaded WSGI server carries Socket.IO's WebSocket transport in threading
mode (through simple-websocket) and can be shut down from another thread; its request
log is silenced (a browser tab polling all day would flood the training's terminal).
``babysit serve`` uses a production server instead (see the README).

Werkzeug's handler speaks HTTP/1.1 and, once a request ends, waits on the connection for
the next one; a WebSocket's request ends with its closing handshake, after which RFC 6455
(section 7.1.1) has the server close the TCP connection first. Left open, every client
that closes waits for it: python-socketio's ``disconnect()`` took websocket-client's whole
3 s close timeout (its reading thread takes the server's closing frame, and the closing
call then waits for an end of stream that never came), and a server thread stayed parked
on each closed WebSocket until its client gave up. :class:`ClosingWebSocketHandler` closes it.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from werkzeug.serving import WSGIRequestHandler, make_server

from web.fanout import for_server


#: How often the serving loop looks for a stop: ``stop()`` waits up to this long (socketserver's
#: default, 0.5 s, held every script that ends with its embedded dashboard for half a second).
POLL_SECONDS = 0.05


class ClosingWebSocketHandler(WSGIRequestHandler):
    """Werkzeug's request handler, closing the connection after a WebSocket's request (the
    closing handshake is done by then) instead of waiting on it for a next request."""

    def run_wsgi(self) -> None:
        super().run_wsgi()
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.close_connection = True


@dataclass
class RunningServer:
    url: str
    _server: object
    _thread: threading.Thread
    _app: object = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening and close every Socket.IO connection: Werkzeug's shutdown alone
        leaves open WebSockets served by their threads, which would outlive the server."""
        self._server.shutdown()
        if self._app is not None and self._app.liveness is not None:
            self._app.liveness.stop()
        if self._app is not None:  # every client, so they reconnect elsewhere (web.fanout)
            for_server(self._app.socketio).close_all(timeout)
            close = getattr(self._app.socketio.server.manager, "close", None)  # the message queue's threads
            if close is not None:
                close()
            self._app.socketio.server.eio.shutdown()  # its ping-timeout sweep, which would run for good
        self._thread.join(timeout)


def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve ``app`` (a :class:`web.app.App`) on ``host:port`` (0: a free port) in a daemon thread."""
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)  # its request log, and a dropped client's noise
    server = make_server(host, port, app.flask, threaded=True, request_handler=ClosingWebSocketHandler)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, args=(POLL_SECONDS,), name=f"babysit-server-{port}",
                              daemon=True)
    thread.start()
    return RunningServer(f"http://{host}:{port}", server, thread, app)
