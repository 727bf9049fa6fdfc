"""``babysit serve``: the app under gunicorn, a server fit for runs that last for days.

Why gunicorn with its ``gthread`` worker: Flask-SocketIO runs in threading mode (the same
app is embedded in training processes, where eventlet or gevent monkey patching is not
acceptable), and gunicorn's threaded worker carries its WebSockets properly (a clean close,
where Werkzeug's development server leaves the client waiting), restarts a crashed worker,
and handles signals. One worker, because Socket.IO sessions must stick to one process;
more processes are several ``babysit serve --message-queue`` behind a reverse proxy with
sticky sessions (docs/scale-out.md, :mod:`web.message_queue`). Each open WebSocket (a
training process, a browser tab) holds one of the worker's threads for its lifetime,
hence ``threads``. On Windows, where gunicorn does not run, Werkzeug's threaded server
stands in, with a warning.
"""
from __future__ import annotations

import gc
import sys

from web.app import ServerConfig, create_app

#: Worker threads: open connections (trainers, browser tabs) plus room for REST requests.
DEFAULT_THREADS = 64
#: Allocations between two young-generation collections in the server process (CPython's
#: default: 700). See :func:`tune_gc`.
GC_YOUNG_THRESHOLD = 100_000


def tune_gc() -> None:
    """Fit CPython's cyclic collector to a server that decodes big batches.

    Why: a trainer's batch of 2,000 events decodes into some 8,000 new dicts and lists, and
    at the default threshold the collector runs a dozen times while it is built, each time
    walking the objects not yet freed: it doubled the cost of reading a batch (measured on
    a batch of 1,650 scalars: 7.9 us an event, 4.2 at this threshold, 4.2 with no collector).
    What a server allocates is nearly all freed by reference counting; the collector is
    only for cycles, which a collection every :data:`GC_YOUNG_THRESHOLD` allocations (a few
    a second under load) still finds. ``gc.freeze`` first moves what the server holds for
    its lifetime (modules, the app) out of the collector's sight. Only ``babysit serve``:
    an in-process dashboard lives in the user's training process, whose collector is theirs."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def serve(config: ServerConfig, port: int, threads: int = DEFAULT_THREADS) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import time
        import warnings

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
    _Gunicorn(config, port, threads).run()


def _gunicorn_base():
    from gunicorn.app.base import BaseApplication
    return BaseApplication


class _Gunicorn(_gunicorn_base()):
    def __init__(self, config: ServerConfig, port: int, threads: int):
        self.babysit = config
        self.options = {"bind": f"{config.host}:{port}", "workers": 1, "worker_class": "gthread",
                        "threads": threads, "timeout": 0,  # a WebSocket may stay quiet for hours
                        "graceful_timeout": 10, "accesslog": None, "errorlog": "-", "loglevel": "warning"}
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        app = create_app(self.babysit).flask
        tune_gc()  # in the worker, which loads the app after the fork
        return app
