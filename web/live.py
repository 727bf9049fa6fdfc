"""The two Socket.IO namespaces: ``/ingest`` for training processes, ``/dashboard`` for
browsers. Names, shapes and the meaning of an answer are in :mod:`monitor.protocol`.

Ingest: a training process sends ``batch`` with one JSON text (``monitor.codec``, so NaN
and ±Inf travel exactly) holding a list of events. The batch is validated as a whole,
committed to the store in one transaction, and only then acknowledged (the ack is the
event handler's return value), so an acknowledged event is never lost; a batch that was
already stored (a replay from the trainer's spool) is acknowledged again and stored
nothing. Every batch gets an answer, whatever arrives: a batch that can never be stored
(malformed, or values the store cannot hold) is refused as permanent, one the store cannot
take now (disk full, read-only) as transient, and either way the server logs one line and
counts it (:class:`Refusals`), and stays as it was. After the commit the events go to the
browsers that joined the run's room on ``/dashboard`` (with a message queue, those of every
server process: :mod:`web.message_queue`; a live fan-out that fails is said once and never
holds back the ack, the events are stored), and to the alert policy
(``monitor.mailer``: it decides under a lock and returns; emails are sent from its own
thread, so the ack never waits). A batch, and a ``heartbeat`` naming runs whose trainers
have nothing to send, tell :mod:`web.liveness` that those runs are alive.
"""
from __future__ import annotations

import hmac
import logging
import threading
from collections import Counter

from flask import request
from flask_socketio import Namespace, join_room, leave_room

from monitor import codec, protocol
from monitor.events import Event
from monitor.protocol import INDEX_ROOM, room, trainer_room
from monitor.store.faults import StoreUnavailable
from monitor.validation import SchemaError, check_run_id
from web.coalesce import Coalesced

log = logging.getLogger("babysit.server")

#: Most runs one heartbeat may name (a trainer's sender names its one run).
MAX_HEARTBEAT_RUNS = 1000


class Refusals:
    """Counts of refused batches by kind (``permanent``, ``transient``), for the operator:
    each refusal is one log line with its reason and the running count, never a traceback."""

    def __init__(self):
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def refuse(self, error: str, *, permanent: bool, quiet: bool = False) -> dict:
        """Count a refusal and log its line; ``quiet`` when its cause was already logged once
        (the store's disk fault: one line when it begins, not one per batch refused meanwhile)."""
        kind = "permanent" if permanent else "transient"
        with self._lock:
            self._counts[kind] += 1
            count = self._counts[kind]
        if not quiet:
            log.warning("babysit: refused a batch from %s (%s, %d so far): %s",
                        _peer(), kind, count, error[:500])
        return protocol.refused(error, permanent=permanent)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"permanent": self._counts["permanent"], "transient": self._counts["transient"]}


def _shape(args: tuple) -> str:
    """What a message held, for an error (never its whole content)."""
    if len(args) != 1:
        return f"{len(args)} arguments"
    return f"{type(args[0]).__name__} {args[0]!r:.100}"


def _peer() -> str:
    try:
        return request.remote_addr or "?"
    except RuntimeError:  # outside a request (a test calling the handler directly)
        return "?"


class IngestNamespace(Namespace):
    def __init__(self, namespace: str, app):
        super().__init__(namespace)
        self.app = app
        self.refusals = Refusals()
        self._fan_out_failing = False  # said once per failure, not once per batch
        self._index = Coalesced(self._tell_index, app.socketio.start_background_task, app.socketio.sleep)

    def on_connect(self, auth=None):
        token = self.app.config.token
        if token is not None:
            given = auth.get("token") if isinstance(auth, dict) else None
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), token.encode()):
                log.warning("babysit: refused an ingest connection from %s: wrong or missing token",
                            request.remote_addr)
                return False  # Socket.IO refuses the connection
        self.app.liveness.start()  # at first use, not in the app factory
        return True

    def on_heartbeat(self, *args):
        """``{"runs": [run ids]}``: these runs' trainers are alive though they have nothing to
        send (:mod:`web.liveness`); a lost one is running again. Joins their trainer rooms, so
        that a trainer reconnected to a restarted server still gets a stop. Always answered."""
        message = args[0] if len(args) == 1 else None
        runs = message.get("runs") if isinstance(message, dict) else None
        if not isinstance(runs, list) or not 0 < len(runs) <= MAX_HEARTBEAT_RUNS:
            return protocol.refused(f"heartbeat: expected one argument {{\"runs\": [1 to {MAX_HEARTBEAT_RUNS} run "
                                    f"ids]}}, got {_shape(args)}", permanent=True)
        try:
            runs = [check_run_id(run) for run in runs]
        except SchemaError as exc:
            return protocol.refused(f"heartbeat: {exc}", permanent=True)
        for run in dict.fromkeys(runs):
            join_room(trainer_room(run))
        self.app.liveness.heard(runs, request.host_url)
        return protocol.accepted()

    def on_batch(self, *args):
        """One batch (see the module doc); every call is answered, none raises."""
        if len(args) != 1:
            return self.refusals.refuse(f"batch: expected one argument (the events as JSON text), "
                                        f"got {len(args)}", permanent=True)
        try:
            events = parse_batch(args[0])
            texts = [codec.encode_payload(event.data) for event in events]
        except SchemaError as exc:
            return self.refusals.refuse(str(exc), permanent=True)
        except Exception as exc:  # validation met a value no check foresaw: still the batch's fault
            return self.refusals.refuse(f"batch: could not read it ({type(exc).__name__}: {exc})"[:1000],
                                        permanent=True)
        if not events:
            return protocol.accepted()
        for run in dict.fromkeys(event.run for event in events):
            join_room(trainer_room(run))  # where a stop for this run is sent
        self.app.liveness.heard((event.run for event in events), request.host_url)  # even if the store fails now
        try:
            stored = self.app.committer.append(events, texts)  # with the batches arriving meanwhile
        except StoreUnavailable as exc:  # the disk is full or read-only: the store logged it once
            return self.refusals.refuse(f"the server could not store the batch now: {exc}; the sender "
                                        "keeps it and sends it again", permanent=False, quiet=True)
        except Exception as exc:  # anything else the store met: the sender keeps it
            return self.refusals.refuse(f"the server could not store the batch now ({type(exc).__name__}: "
                                        f"{exc}); it is kept by the sender and sent again", permanent=False)
        self._fan_out_safely(events, texts)
        if stored and self.app.alerts is not None:  # a replay (stored == 0) was alerted on the first time
            # the policy only: sending happens on the mailer's thread; the link defaults to the address
            # this training process reached us at
            self.app.alerts.observe(events, base_url=request.host_url)
        return protocol.accepted(stored, max(event.seq for event in events))

    def fan_out(self, events: list[Event], texts: list[str]) -> None:
        """The committed events to the browsers watching their runs, and the index told
        (within half a second: :mod:`web.coalesce`).
        Each viewer's backlog is bounded (:mod:`web.fanout`): one that falls behind is told
        to resync and dropped, without holding up the others or this batch's ack. With a
        message queue the emits also go to the other server processes' viewers."""
        by_run: dict[str, tuple[list[Event], list[str]]] = {}  # a trainer's batch holds one run
        for event, text in zip(events, texts):
            mine = by_run.setdefault(event.run, ([], []))
            mine[0].append(event)
            mine[1].append(text)
        for run, (run_events, run_texts) in by_run.items():
            self.app.socketio.emit(protocol.EVENTS, {"run": run, "events": codec.live_events(run_events, run_texts)},
                                   to=room(run), namespace=protocol.DASHBOARD_NAMESPACE)
        self._index.note(list(by_run))

    def _tell_index(self, runs: list[str]) -> None:
        """The runs index's notice (``runs_changed``, coalesced: :mod:`web.coalesce`); a failure
        costs the index pages a reload they would have made, nothing else."""
        try:
            self.app.socketio.emit(protocol.RUNS_CHANGED, {"runs": runs}, to=INDEX_ROOM,
                                   namespace=protocol.DASHBOARD_NAMESPACE)
        except Exception as exc:  # noqa: BLE001 - on a background task: say it, never raise
            log.warning("babysit: could not tell the runs index what changed (%s: %s)", type(exc).__name__, exc)

    def _fan_out_safely(self, events: list[Event], texts: list[str]) -> None:
        """:meth:`fan_out`, whose failure costs the viewers their live events (they reload
        from REST), never the batch: it is stored, and acknowledged all the same."""
        try:
            self.fan_out(events, texts)
        except Exception as exc:  # noqa: BLE001 - the batch is committed: nothing may undo its ack
            if not self._fan_out_failing:
                log.warning("babysit: could not send live events to the viewers (%s: %s); the batches are stored "
                            "and acknowledged, pages show them on reload", type(exc).__name__, exc)
            self._fan_out_failing = True
        else:
            self._fan_out_failing = False


class DashboardNamespace(Namespace):
    """Browsers: thin handlers that validate, act and answer with a :class:`monitor.protocol.Ack`."""

    def __init__(self, namespace: str, app):
        super().__init__(namespace)
        self.app = app

    def on_join(self, run=None):
        try:
            join_room(room(check_run_id(run)))
        except SchemaError as exc:
            return protocol.refused(str(exc), permanent=True)
        return protocol.accepted()

    def on_watch_runs(self, _message=None):
        """The runs index: told (``runs_changed``) whenever a batch of any run is stored."""
        join_room(INDEX_ROOM)
        return protocol.accepted()

    def on_stop(self, message=None):
        """``{"run": id, "reason": text, "token": ...}`` from the stop button: forwarded to the
        run's training processes, whose ``should_stop`` turns true at their next step. Needs
        the server's token when it has one."""
        if not isinstance(message, dict):
            return protocol.refused("stop: expected {run, reason, token}", permanent=True)
        token = self.app.config.token
        given = message.get("token")
        if token is not None and not (isinstance(given, str)
                                      and hmac.compare_digest(given.encode(), token.encode())):
            return protocol.refused("stop: wrong or missing token", permanent=True)
        try:
            run = check_run_id(message.get("run"))
        except SchemaError as exc:
            return protocol.refused(str(exc), permanent=True)
        reason = message.get("reason")
        reason = reason[:500] if isinstance(reason, str) and reason.strip() else "stopped from the dashboard"
        self.app.socketio.emit(protocol.STOP, {"run": run, "reason": reason, "by": "dashboard"},
                               to=trainer_room(run), namespace=protocol.INGEST_NAMESPACE)
        log.warning("babysit: stop sent to run %s (%r)", run, reason[:200])
        return protocol.accepted()

    def on_leave(self, run=None):
        if isinstance(run, str):
            leave_room(room(run))
        return protocol.accepted()


def parse_batch(text) -> list[Event]:
    """A batch's JSON text as validated events; :class:`SchemaError` names what is wrong."""
    if not isinstance(text, (str, bytes)):
        raise SchemaError(f"batch: expected the events as JSON text, got {type(text).__name__}")
    raw = codec.loads(text)
    if not isinstance(raw, list):
        raise SchemaError(f"batch: expected a list of events, got {type(raw).__name__}")
    if len(raw) > protocol.MAX_BATCH_EVENTS:
        raise SchemaError(f"batch: {len(raw)} events, at most {protocol.MAX_BATCH_EVENTS} per batch")
    events = []
    for position, item in enumerate(raw):
        try:
            events.append(Event.from_dict(item))
        except (SchemaError, TypeError, ValueError, OverflowError) as exc:  # a constructor's own check
            raise SchemaError(f"batch event {position}: {exc}") from None
    return events
