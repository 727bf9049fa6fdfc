"""The wire protocol between training processes, the server and the page: defined once.

Both sides import this module (``trainer_hooks/stream.py``, ``web/live.py``), and the
page's scripts use ``web/js/src/protocol.js``, which is generated from it
(``python -m monitor.protocol > web/js/src/protocol.js``; a test checks it is current).

Two Socket.IO namespaces:

- ``/ingest`` (training processes): ``batch`` carries one JSON text (``monitor.codec``)
  holding a list of events and is answered with an :class:`Ack`; ``heartbeat`` says the
  runs it names are alive when there is nothing to send; the server sends ``stop``.
- ``/dashboard`` (browsers, same origin only): ``join`` / ``leave`` a run's room, which
  then receives ``events``; ``watch_runs`` joins the index, told ``runs_changed``; ``stop``
  asks a run's trainers to stop; ``resync`` tells a page that fell behind to reload from REST;
  ``run_status`` tells a run's room that the server marked it lost or running again.

Every answer is an :class:`Ack`. A refusal says in its ``permanent`` field what to do:
``True``, the batch can never be stored (malformed, or values the store cannot hold) and
resending it is pointless; ``False``, the server could not store it now (disk full, a
locked or read-only database) and the sender keeps it and sends it again later.
"""
from __future__ import annotations

import json
import sys
from urllib.parse import urlsplit
from dataclasses import dataclass
from typing import Any

#: Bumped when a message's shape changes incompatibly; sent by the trainer in its
#: connection's auth data and answered in every acknowledgement. 2: a live batch's events as one text.
PROTOCOL_VERSION = 2

INGEST_NAMESPACE = "/ingest"
DASHBOARD_NAMESPACE = "/dashboard"

# Events on /ingest.
BATCH = "batch"  # trainer -> server: JSON text of a list of events; answered with an Ack
HEARTBEAT = "heartbeat"  # trainer -> server: {"runs": [run ids]}; answered with an Ack
STOP = "stop"  # server -> trainer: {"run", "reason", "by"}; browser -> server on /dashboard

# Events on /dashboard.
JOIN = "join"  # browser -> server: a run id; the room then receives EVENTS
LEAVE = "leave"
WATCH_RUNS = "watch_runs"  # browser -> server: join the index, which receives RUNS_CHANGED
#: server -> browser: {"run", "events": codec JSON text of [{seq, step, wall, kind, data}]} (one
#: text, not a list: see monitor.codec.live_events)
EVENTS = "events"
RUNS_CHANGED = "runs_changed"  # server -> browser: {"runs": [run ids]}
RESYNC = "resync"  # server -> browser: {"reason"}: live events were dropped; reload from REST
#: server -> browser (the run's room): {"run", "status", "reason", "at"}: the server marked the
#: run lost (its trainer went silent) or running again (it came back); no event carries this
RUN_STATUS = "run_status"

#: Largest message the server reads (a batch of events as JSON text); a trainer's batch
#: of at most 2000 events stays far below it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Most events one batch may hold (a trainer's writer makes batches of at most 2000).
MAX_BATCH_EVENTS = 20_000

#: Seconds between two heartbeats of a trainer that has nothing else to send.
HEARTBEAT_SECONDS = 5.0
#: Seconds of silence (no heartbeat, no batch) after which the server marks a run ``lost``
#: (``babysit serve --lost-after``): six heartbeats, so that a trainer must miss five in a
#: row, which outlasts a garbage-collection pause, a saturated link or a server restart
#: (its trainers reconnect within a heartbeat or two), while a killed one shows within half a minute.
LOST_AFTER_SECONDS = 6 * HEARTBEAT_SECONDS


@dataclass(frozen=True)
class Ack:
    """The answer to every message that asks for one.

    ``ok``: accepted. ``stored``: events newly stored (0 for a replay). ``last_seq``: the
    highest seq of the batch. A refusal has ``ok=False``, an ``error`` naming the problem
    and ``permanent`` saying whether sending it again can ever help.
    """

    ok: bool
    error: str = ""
    permanent: bool = False
    stored: int = 0
    last_seq: int | None = None
    protocol: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        if self.ok:
            out: dict[str, Any] = {"ok": True, "stored": self.stored}
            if self.last_seq is not None:
                out["last_seq"] = self.last_seq
        else:
            out = {"ok": False, "error": self.error, "permanent": self.permanent}
        out["protocol"] = self.protocol
        return out

    @classmethod
    def from_reply(cls, reply: Any) -> "Ack":
        """Read a server's answer. Anything that is not an acknowledgement (no answer,
        another shape) reads as a transient refusal: the sender keeps the batch."""
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            return cls(False, f"not an acknowledgement: {reply!r:.200}", permanent=False)
        if reply["ok"]:
            stored, last = reply.get("stored", 0), reply.get("last_seq")
            return cls(True, stored=stored if isinstance(stored, int) else 0,
                       last_seq=last if isinstance(last, int) else None)
        return cls(False, str(reply.get("error", "")), permanent=reply.get("permanent") is True)


def accepted(stored: int = 0, last_seq: int | None = None) -> dict[str, Any]:
    return Ack(True, stored=stored, last_seq=last_seq).to_dict()


def refused(error: str, *, permanent: bool) -> dict[str, Any]:
    return Ack(False, error, permanent=permanent).to_dict()


def room(run: str) -> str:
    """Browsers watching a run."""
    return f"run:{run}"


#: Browsers on the runs index, told when any run changes.
INDEX_ROOM = "index"


def trainer_room(run: str) -> str:
    """The training process(es) streaming a run (every DDP rank, when they all stream)."""
    return f"trainer:{run}"


#: How a server's address looks in messages.
SERVER_EXAMPLE = "http://127.0.0.1:5000"


def server_url_problem(text: str) -> str | None:
    """What is wrong with ``text`` as the address of ``babysit serve``, said as what to give
    instead; None when it is ``http(s)://host[:port]`` with nothing after it (the client
    adds the Socket.IO path itself). The one rule for ``watch(server=...)``, ``BABYSIT_SERVER`` and ``--server``."""
    text = text.strip()
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:  # not a number, or past 65535
        port = 0
    if parts.scheme in ("http", "https") and parts.hostname and parts.path in ("", "/") and port != 0 \
            and not (parts.query or parts.fragment or parts.username or parts.password):
        return None
    if not text:
        return f"give the address `babysit serve` prints, e.g. {SERVER_EXAMPLE}"
    if "://" not in text:
        return f"add the scheme: http://{text}"
    if parts.scheme in ("ws", "wss"):
        return f"use {'https' if parts.scheme == 'wss' else 'http'}:// (Socket.IO upgrades to WebSocket itself)"
    if parts.scheme in ("http", "https") and parts.hostname and port == 0:
        return "the port must be a number in 1..65535, as `babysit serve` prints it"
    if parts.scheme in ("http", "https") and parts.hostname:
        return f"drop the path: give only scheme://host:port, e.g. {parts.scheme}://{parts.netloc}"
    return f"give the address `babysit serve` prints, e.g. {SERVER_EXAMPLE}"


# ------------------------------------------------------------------ the page's copy

#: What the page's scripts need, exported to ``web/js/src/protocol.js``.
_FOR_THE_PAGE = ("PROTOCOL_VERSION", "DASHBOARD_NAMESPACE", "JOIN", "LEAVE", "WATCH_RUNS", "EVENTS",
                 "RUNS_CHANGED", "RESYNC", "RUN_STATUS", "STOP")


def javascript() -> str:
    """The page's protocol module, generated from this one."""
    lines = ["// Generated from monitor/protocol.py by `python -m monitor.protocol > web/js/src/protocol.js`;",
             "// do not edit (tests/test_protocol.py checks that it is current)."]
    lines += [f"export const {name} = {json.dumps(globals()[name])};" for name in _FOR_THE_PAGE]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(javascript())
