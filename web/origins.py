"""Which browser pages may open a socket to the server, and which host names it answers to.

A browser sends the page's ``Origin`` on every WebSocket handshake and cross-origin
request; a page on any other site would otherwise reach the dashboard's sockets (join a
run's room, read its events, press its stop button) and ``/ingest``. python-engineio checks
origins only when ``cors_allowed_origins`` is None, a list of names or a callable (an empty
list turns the check off), so the app passes :func:`origin_check`, which accepts:

- the server's own origin: ``scheme://Host`` of the request itself, and
- the origins the operator lists (``babysit serve --allowed-origin``, e.g. the public
  address of a reverse proxy).

Same origin alone does not stop DNS rebinding: a page on ``evil.example`` whose name is
re-pointed at 127.0.0.1 is "same origin" with a Host of ``evil.example``. So a server bound
to a loopback address answers only to loopback names (``localhost``, ``127.0.0.1``,
``[::1]``, this machine's own name) and to the hosts of the listed origins, on its
sockets and on every HTTP route (:func:`host_allowed`). Clients that are not browsers (a
trainer's python-socketio) send no Origin and are judged by the token alone.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from urllib.parse import urlsplit

log = logging.getLogger("babysit.server")

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def check_origin(text: str) -> str:
    """An operator-listed origin as ``scheme://host[:port]``; a ValueError says what is wrong."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        raise ValueError(f"allowed origin {text!r}: expected scheme://host[:port] as a browser sends it, "
                         "e.g. https://babysit.example.com or http://127.0.0.1:5000 (no path)")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _hostname(netloc: str) -> str:
    return (urlsplit(f"//{netloc}").hostname or "").lower()


def host_allowed(host_header: str | None, config) -> bool:
    """Whether a request's ``Host`` is one this server answers to (see the module doc)."""
    if not is_loopback(config.host):
        return True  # reachable from elsewhere by any name: the token guards what matters
    name = _hostname(host_header or "")
    if is_loopback(name) or name == socket.gethostname().lower():
        return True
    return name in {_hostname(urlsplit(o).netloc) for o in config.allowed_origins}


def origin_allowed(origin: str | None, environ: dict, config) -> bool:
    """engine.io's check of a browser's ``Origin`` (None: not a browser, nothing to check)."""
    if origin is None:
        return True
    origin = origin.lower()
    if origin in config.allowed_origins:
        return True
    host = environ.get("HTTP_HOST", "")
    own = f"{environ.get('wsgi.url_scheme', 'http')}://{host}".lower()
    # X-Forwarded-* headers are not trusted: any client can send them. Behind a reverse
    # proxy, forward Host (nginx: proxy_set_header Host $host) or list the public origin.
    if origin == own and host_allowed(host, config):
        return True
    log.warning("babysit: refused a browser socket from origin %r (this server is %s; list other "
                "origins with --allowed-origin)", origin[:200], own[:200])
    return False


def origin_check(config):
    """The callable engine.io calls as ``check(origin, environ)``."""
    return lambda origin, environ: origin_allowed(origin, environ, config)


class HostCheck:
    """WSGI middleware: a request whose Host this server does not answer to gets 421
    Misdirected Request, before Flask or Socket.IO see it (DNS rebinding, see above)."""

    def __init__(self, app, config):
        self.app, self.config = app, config

    def __call__(self, environ, start_response):
        host = environ.get("HTTP_HOST")
        if host_allowed(host, self.config):
            return self.app(environ, start_response)
        log.warning("babysit: refused a request for host %r", (host or "")[:200])
        body = (f"This babysit server does not answer to the host {host!r}: open it as 127.0.0.1 or "
                "localhost, or list the origin with --allowed-origin.\n").encode()
        start_response("421 Misdirected Request", [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(body)))])
        return [body]
