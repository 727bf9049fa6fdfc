"""The two Socket.IO namespaces: ``/ingest`` for training processes, ``/dashboard`` for
browsers.

Ingest: a training process sends ``batch`` with one JSON text (``monitor.codec``, so NaN
and ±Inf travel exactly) holding a list of events. The batch is validated as a whole,
committed to the store in one transaction, and only then acknowledged (the ack is the
event handler's return value), so an acknowledged event is never lost; a batch that was
already stored (a replay from the trainer's spool) is acknowledged again and stored
nothing. A malformed batch gets ``{"ok": False, "error": ...}`` naming the problem and
leaves the server as it was. After the commit the events go to the browsers that joined
the run's room on ``/dashboard``, and to the alert policy (``monitor.mailer``: it decides
under a lock and returns; emails are sent from its own thread, so the ack never waits).
"""
from __future__ import annotations

import hmac
import logging

from flask import request
from flask_socketio import Namespace, join_room, leave_room

from monitor import codec
from monitor.events import Event
from monitor.validation import SchemaError, check_run_id

log = logging.getLogger("babysit.server")

#: Most events one batch may hold (a trainer's writer sends at most 2000).
MAX_BATCH_EVENTS = 20_000


def room(run: str) -> str:
    """Browsers watching a run."""
    return f"run:{run}"


#: Browsers on the runs index, told when any run changes.
INDEX_ROOM = "index"


def trainer_room(run: str) -> str:
    """The training process(es) streaming a run (every DDP rank, when they all stream)."""
    return f"trainer:{run}"


class IngestNamespace(Namespace):
    def __init__(self, namespace: str, app):
        super().__init__(namespace)
        self.app = app

    def on_connect(self, auth=None):
        token = self.app.config.token
        if token is not None:
            given = (auth or {}).get("token") if isinstance(auth, dict) else None
            if not isinstance(given, str) or not hmac.compare_digest(given, token):
                log.warning("babysit: refused an ingest connection from %s: wrong or missing token",
                            request.remote_addr)
                return False  # Socket.IO refuses the connection
        return True

    def on_batch(self, text):
        try:
            events = parse_batch(text)
        except SchemaError as exc:
            return {"ok": False, "error": str(exc)}
        if not events:
            return {"ok": True, "stored": 0}
        for run in dict.fromkeys(event.run for event in events):
            join_room(trainer_room(run))  # where a stop for this run is sent
        texts = [codec.encode_payload(event.data) for event in events]
        try:
            stored = self.app.store.append(events, texts)
        except Exception as exc:  # disk full, locked database: the sender keeps the batch and retries
            log.exception("babysit: could not store a batch of %d events", len(events))
            return {"ok": False, "error": f"the server could not store the batch ({type(exc).__name__}); retry"}
        for run in dict.fromkeys(event.run for event in events):
            batch = [{"seq": e.seq, "step": e.step, "wall": e.wall, "kind": e.kind.value, "data": t}
                     for e, t in zip(events, texts) if e.run == run]
            self.app.socketio.emit("events", {"run": run, "events": batch}, to=room(run), namespace="/dashboard")
        self.app.socketio.emit("runs_changed", {"runs": list(dict.fromkeys(e.run for e in events))},
                               to=INDEX_ROOM, namespace="/dashboard")
        if stored and self.app.alerts is not None:  # a replay (stored == 0) was alerted on the first time
            # the policy only: sending happens on the mailer's thread; the link defaults to the address
            # this training process reached us at
            self.app.alerts.observe(events, base_url=request.host_url)
        return {"ok": True, "stored": stored, "last_seq": max(event.seq for event in events)}


class DashboardNamespace(Namespace):
    def __init__(self, namespace: str, app):
        super().__init__(namespace)
        self.app = app

    def on_join(self, run):
        try:
            join_room(room(check_run_id(run)))
        except SchemaError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True}

    def on_watch_runs(self, _message=None):
        """The runs index: told (``runs_changed``) whenever a batch of any run is stored."""
        join_room(INDEX_ROOM)
        return {"ok": True}

    def on_stop(self, message):
        """``{"run": id, "reason": text, "token": ...}`` from the stop button: forwarded to the
        run's training processes, whose ``should_stop`` turns true at their next step. Needs
        the server's token when it has one."""
        if not isinstance(message, dict):
            return {"ok": False, "error": "stop: expected {run, reason, token}"}
        token = self.app.config.token
        given = message.get("token")
        if token is not None and not (isinstance(given, str) and hmac.compare_digest(given, token)):
            return {"ok": False, "error": "stop: wrong or missing token"}
        try:
            run = check_run_id(message.get("run"))
        except SchemaError as exc:
            return {"ok": False, "error": str(exc)}
        reason = message.get("reason")
        reason = reason[:500] if isinstance(reason, str) and reason.strip() else "stopped from the dashboard"
        self.app.socketio.emit("stop", {"run": run, "reason": reason, "by": "dashboard"},
                               to=trainer_room(run), namespace="/ingest")
        log.warning("babysit: stop sent to run %s (%s)", run, reason)
        return {"ok": True}

    def on_leave(self, run):
        if isinstance(run, str):
            leave_room(room(run))
        return {"ok": True}


def parse_batch(text) -> list[Event]:
    """A batch's JSON text as validated events; :class:`SchemaError` names what is wrong."""
    if not isinstance(text, (str, bytes)):
        raise SchemaError(f"batch: expected the events as JSON text, got {type(text).__name__}")
    raw = codec.loads(text)
    if not isinstance(raw, list):
        raise SchemaError(f"batch: expected a list of events, got {type(raw).__name__}")
    if len(raw) > MAX_BATCH_EVENTS:
        raise SchemaError(f"batch: {len(raw)} events, at most {MAX_BATCH_EVENTS} per batch")
    events = []
    for position, item in enumerate(raw):
        try:
            events.append(Event.from_dict(item))
        except SchemaError as exc:
            raise SchemaError(f"batch event {position}: {exc}") from None
        except TypeError as exc:  # a payload missing a field fails in its constructor
            raise SchemaError(f"batch event {position}: {exc}") from None
    return events
