"""Serving an app from a background thread (the embedded server and the tests).

Werkzeug's threaded WSGI server carries Socket.IO's WebSocket transport in threading
mode (through simple-websocket) and can be shut down from another thread; its request
log is silenced (a browser tab polling all day would flood the training's terminal).
``babysit serve`` uses a production server instead (see the README).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from werkzeug.serving import make_server

from web.fanout import for_server


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
    # ERROR too: a Socket.IO client closing its WebSocket leaves a frame that Werkzeug's HTTP
    # parser then reports as a "bad request" (harmless; see babysit serve for a clean close).
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    server = make_server(host, port, app.flask, threaded=True)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, name=f"babysit-server-{port}", daemon=True)
    thread.start()
    return RunningServer(f"http://{host}:{port}", server, thread, app)
