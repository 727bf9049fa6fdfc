"""``babysit serve``: the app under gunicorn, a server fit for runs that last for days.

Why gunicorn with its ``gevent`` worker: in a process of its own the server can let gevent
patch the standard library, and then every connection is a greenlet of one thread instead
of an OS thread. Measured with 50 trainers and 100 viewers on 2 server processes of a
2-core machine (benchmarks/scale_out.py), gunicorn's threaded worker kept some 300 threads
a process, and a batch's way from its arrival to its ack to the viewers crossed five of
them, each handoff a wait for the interpreter lock among all the others: a group commit
held 3.6 ms of CPU and took 30 ms (log() -> viewer p95 about 150 ms at 5,000 events/s, 3.9 s at
50,000). As greenlets the same work waits for nothing but itself (76 ms and 0.89 s).
Flask-SocketIO, python-engineio (simple-websocket), redis-py and psycopg all run on gevent
as they are. The embedded dashboard stays in threading mode: it lives in a training
process, whose standard library no one may patch. gunicorn also carries WebSockets
properly (a clean close, where Werkzeug's development server leaves the client waiting),
restarts a crashed worker, and handles signals. One worker, because Socket.IO sessions
must stick to one process; more processes are several ``babysit serve --message-queue``
behind a reverse proxy with sticky sessions (docs/scale-out.md, :mod:`web.message_queue`).

What cooperative scheduling asks of the code: nothing may block the one thread without
yielding. The network does (patched sockets, psycopg's gevent-aware waits); SQLite's calls
do not, and are short (a group commit, a bounded read). On Windows, where neither gunicorn
nor this arrangement runs, Werkzeug's threaded server stands in, with a warning.
"""
from __future__ import annotations

import gc
import sys
import warnings

from web.app import ServerConfig, create_app

#: Connections served at once (trainers, browser tabs, REST requests): gunicorn's
#: ``worker_connections``, each a greenlet (a few tens of kB).
DEFAULT_CONNECTIONS = 1000


def freeze_what_lasts() -> None:
    """Move what the server holds for its lifetime (modules, the app: some 190,000
    objects) out of the cyclic collector's sight (``gc.freeze``).

    Why: a trainer's batch of 2,000 events decodes into some 8,000 dicts and lists that
    live until it is stored, long enough to be promoted to the old generation; each full
    collection they cause then walks the whole heap. Reading a batch of 1,650 scalars beside
    a heap of a million objects cost 6.1 us an event, 4.0 with the heap frozen (3.1 with no
    collector at all). The thresholds stay CPython's: raising them (10,000 or 100,000
    allocations for the young generation: 3.6 and 3.2 us) let a server streaming to dropped
    viewers grow by 8 MB/s (tests/test_slow_viewers.py), its cyclic garbage collected too late. Only
    ``babysit serve``: an in-process dashboard lives in the user's training process, whose
    collector is theirs."""
    gc.collect()
    gc.freeze()


def serve(config: ServerConfig, port: int, connections: int = DEFAULT_CONNECTIONS) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import time

        from web.serving import serve_in_thread

        warnings.warn("babysit serve: gunicorn does not run on Windows; using Werkzeug's threaded server",
                      stacklevel=2)
        running = serve_in_thread(create_app(config), config.host, port)
        try:
            while True:
                time.sleep(3600)
        finally:
            running.stop()
        return
    # gunicorn's gevent worker patches the standard library after its fork, before it loads
    # the app (:meth:`_Gunicorn.load`, where the server's locks, queues and sockets are
    # made). gevent then warns that ssl was imported before: by modules that import it
    # with the socket.io package (its asyncio client and Redis manager, aiohttp, urllib3),
    # none of which the server runs; its own TLS (SMTP, rediss://) goes through the patched
    # ssl module, and PostgreSQL's through libpq.
    warnings.filterwarnings("ignore", message="Monkey-patching ssl after ssl has already been imported")
    _Gunicorn(config, port, connections).run()


def _gunicorn_base():
    from gunicorn.app.base import BaseApplication
    return BaseApplication


class _Gunicorn(_gunicorn_base()):
    def __init__(self, config: ServerConfig, port: int, connections: int):
        self.babysit = config
        self.options = {"bind": f"{config.host}:{port}", "workers": 1, "worker_class": "gevent",
                        "worker_connections": connections,
                        "timeout": 0,  # a WebSocket may stay quiet for hours
                        "graceful_timeout": 10, "accesslog": None, "errorlog": "-", "loglevel": "warning"}
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        app = create_app(self.babysit, async_mode="gevent").flask
        freeze_what_lasts()  # in the worker, which loads the app after the fork
        return app
