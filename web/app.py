"""The app factory: Flask for pages and REST, Flask-SocketIO for the two live channels.

``create_app(config)`` builds everything and starts nothing, so the same app serves under
``babysit serve`` and inside a training process (``watch(dashboard=True)``, the demo).
Socket.IO runs in ``threading`` mode: inside a training process the monkey patching that
eventlet or gevent need is not acceptable, and one mode everywhere keeps one code path.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from flask_socketio import SocketIO

from monitor.alert_config import AlertConfig
from monitor.mailer import AlertMailer
from monitor.store import RunStore

#: Largest Socket.IO message the server accepts (a batch of events as JSON text).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """What a server needs to know. ``token`` guards ingest and stop; it is required as
    soon as ``host`` is not a loopback address (anyone on the network could write).
    ``alerts``: where alert emails go (``monitor.alert_config.alert_config``), None for none."""

    logdir: Path = Path("runs")
    host: str = "127.0.0.1"
    token: str | None = None
    alerts: AlertConfig | None = None

    def __post_init__(self):
        object.__setattr__(self, "logdir", Path(self.logdir))
        if self.alerts is not None and not isinstance(self.alerts, AlertConfig):
            raise ValueError(f"alerts: expected a monitor.alert_config.AlertConfig or None, "
                             f"got {type(self.alerts).__name__}")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(f"serving on {self.host!r} exposes babysit beyond this machine: give a token "
                             "(--token or BABYSIT_TOKEN) so that only your training processes can write "
                             "and stop runs, or bind to 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


@dataclass
class App:
    """The built application: the Flask app, its Socket.IO server, the store they share and
    the alert mailer (None without alerts; its thread starts at the first alert)."""

    flask: Flask
    socketio: SocketIO
    store: RunStore
    config: ServerConfig
    alerts: AlertMailer | None = None


def create_app(config: ServerConfig | None = None) -> App:
    from web.api import api_blueprint
    from web.live import DashboardNamespace, IngestNamespace
    from web.pages import pages_blueprint

    config = config or ServerConfig()
    flask = Flask(__name__)
    flask.config["BABYSIT"] = config
    socketio = SocketIO(flask, async_mode="threading", max_http_buffer_size=MAX_MESSAGE_BYTES,
                        cors_allowed_origins=[])  # same origin only: pages are ours
    store = RunStore(config.logdir)
    app = App(flask, socketio, store, config, AlertMailer(config.alerts) if config.alerts else None)
    socketio.on_namespace(IngestNamespace("/ingest", app))
    socketio.on_namespace(DashboardNamespace("/dashboard", app))
    flask.register_blueprint(api_blueprint(app))
    flask.register_blueprint(pages_blueprint(app))
    return app
