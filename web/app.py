"""The app factory: Flask for pages and REST, Flask-SocketIO for the two live channels.

``create_app(config)`` builds everything and starts nothing, so the same app serves under
``babysit serve`` and inside a training process (``watch(dashboard=True)``, the demo).
Socket.IO runs in ``threading`` mode: inside a training process the monkey patching that
eventlet or gevent need is not acceptable, and one mode everywhere keeps one code path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from flask_socketio import SocketIO

from monitor.alert_config import AlertConfig
from monitor.mailer import AlertMailer
from monitor.protocol import DASHBOARD_NAMESPACE, INGEST_NAMESPACE, LOST_AFTER_SECONDS, MAX_MESSAGE_BYTES
from monitor.store import Store, is_database_url, open_store
from web import message_queue
from web.committer import GroupCommitter
from web.fanout import for_server
from web.liveness import Liveness, check_lost_after
from web.origins import HostCheck, check_origin, is_loopback, origin_check


@dataclass(frozen=True)
class ServerConfig:
    """What a server needs to know. ``token`` guards ingest and stop; it is required as
    soon as ``host`` is not a loopback address (anyone on the network could write).
    ``alerts``: where alert emails go (``monitor.alert_config.alert_config``), None for none.
    ``allowed_origins``: browser origins besides the server's own that may open its sockets
    (``scheme://host[:port]``, e.g. a reverse proxy's public address; see :mod:`web.origins`).
    ``lost_after``: seconds of silence from a run's training process after which the run is
    marked lost (:mod:`web.liveness`).
    ``store``: a ``postgresql://`` URL to keep the runs in PostgreSQL (shared by several
    server processes); None keeps them in SQLite under ``logdir``.
    ``message_queue``: a ``redis://host:port/N`` URL through which several server processes
    share their live channels (:mod:`web.message_queue`, docs/scale-out.md); None: this process alone."""

    logdir: Path = Path("runs")
    host: str = "127.0.0.1"
    token: str | None = None
    alerts: AlertConfig | None = None
    allowed_origins: tuple[str, ...] = ()
    lost_after: float = LOST_AFTER_SECONDS
    store: str | None = None
    message_queue: str | None = None

    def __post_init__(self):
        if self.store is not None and not is_database_url(self.store):
            raise ValueError(f"store: expected a postgresql://user:password@host:port/database URL, got "
                             f"{self.store!r} (for SQLite give the logdir instead)")
        if self.message_queue is not None:
            object.__setattr__(self, "message_queue", message_queue.check_url(self.message_queue))
        object.__setattr__(self, "lost_after", check_lost_after(self.lost_after))
        object.__setattr__(self, "logdir", Path(self.logdir))
        if isinstance(self.allowed_origins, str):
            raise ValueError("allowed_origins: expected a list of origins, got one string "
                             f"{self.allowed_origins!r} (pass [{self.allowed_origins!r}])")
        object.__setattr__(self, "allowed_origins", tuple(check_origin(o) for o in self.allowed_origins))
        if self.alerts is not None and not isinstance(self.alerts, AlertConfig):
            raise ValueError(f"alerts: expected a monitor.alert_config.AlertConfig or None, "
                             f"got {type(self.alerts).__name__}")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(f"serving on {self.host!r} exposes babysit beyond this machine: give a token "
                             "(--token or BABYSIT_TOKEN) so that only your training processes can write "
                             "and stop runs, or bind to 127.0.0.1")


@dataclass
class App:
    """The built application: the Flask app, its Socket.IO server, the store they share,
    the alert mailer (None without alerts; its thread starts at the first alert) and the
    liveness of runs (its task starts at first use: a trainer's connection, a request)."""

    flask: Flask
    socketio: SocketIO
    store: Store
    config: ServerConfig
    alerts: AlertMailer | None = None
    liveness: Liveness | None = None
    #: Commits the ingest's batches, those that arrive together in one transaction (web.committer).
    committer: GroupCommitter | None = None


def create_app(config: ServerConfig | None = None, async_mode: str = "threading") -> App:
    """The app of ``config``. With a message queue, Redis must answer now: a
    :class:`web.message_queue.MessageQueueError` says what failed (its package, or Redis).
    ``async_mode``: ``threading`` where the app shares a process (a training process's
    dashboard), ``gevent`` in a process of its own whose standard library gevent patched
    (``babysit serve``: :mod:`web.production`)."""
    from web.api import api_blueprint
    from web.live import DashboardNamespace, IngestNamespace
    from web.pages import pages_blueprint

    config = config or ServerConfig()
    flask = Flask(__name__)
    flask.config["BABYSIT"] = config
    # Browser sockets from the page's own origin (and the listed ones) only; an empty
    # list would switch engine.io's origin check off (web.origins). The client manager
    # bounds what each viewer of this process may have waiting (web.fanout), and shares
    # every emit with the other server processes through the message queue, if any.
    # async_handlers=False: an event's handler runs on its connection's own thread, not on
    # a new one per event (a thread start per batch, and one more handoff on a batch's way
    # to its ack); a trainer has one batch in flight, and the other handlers return at once.
    socketio = SocketIO(flask, async_mode=async_mode, async_handlers=False, max_http_buffer_size=MAX_MESSAGE_BYTES,
                        cors_allowed_origins=origin_check(config),
                        client_manager=message_queue.client_manager(config.message_queue))
    flask.wsgi_app = HostCheck(flask.wsgi_app, config)  # around Socket.IO's middleware too
    for_server(socketio)  # the bounded fan-out, made before any viewer connects (web.fanout)
    store = open_store(config.store or config.logdir)
    app = App(flask, socketio, store, config, AlertMailer(config.alerts) if config.alerts else None)
    app.committer = GroupCommitter(store)
    # Several server processes (a queue, a database store) judge silence by what all of them heard.
    app.liveness = Liveness(app, config.lost_after,
                            shared=config.message_queue is not None or config.store is not None)
    flask.before_request(app.liveness.start)  # a page or REST request is a first use too
    socketio.on_namespace(IngestNamespace(INGEST_NAMESPACE, app))
    socketio.on_namespace(DashboardNamespace(DASHBOARD_NAMESPACE, app))
    flask.register_blueprint(api_blueprint(app))
    flask.register_blueprint(pages_blueprint(app))
    return app
