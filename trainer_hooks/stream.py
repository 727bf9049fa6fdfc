"""Streaming a run to ``babysit serve``: a sink for the writer thread, with a spool.

Every batch the writer hands over is first appended to a spool file (one JSON line per
batch, flushed and fsync'd; bounded, and held in memory while its disk fails: what is
dropped at the bound is stated in :mod:`trainer_hooks.spool`), then the spool is sent in order over a python-socketio
connection, each batch waiting for the server's acknowledgement, which comes only after
the server committed it. The spool's read position is saved after each acknowledged
batch, so a batch is re-sent only if its acknowledgement was lost, and the server's
``(run, seq)`` key stores it once. While the server is unreachable, or refuses a batch
for now (a transient refusal: its disk is full), the batches simply stay in the spool (the
writer never blocks on the network: a connection is tried at most every
``RETRY_SECONDS``), and they are replayed in order once it answers again. A batch the
server refuses for good (a permanent refusal, :mod:`monitor.protocol`) is moved to
``<run>.refused.jsonl`` beside the spool, reported once, and the rest goes on: one bad
batch never holds back the spool behind it. The training thread never sees any of this.

From the first connection on, a daemon thread sends a heartbeat every ``heartbeat``
seconds (:data:`monitor.protocol.HEARTBEAT_SECONDS`, or ``$BABYSIT_HEARTBEAT_SECONDS``),
also through a long step that logs nothing, so that the server can tell a quiet run from
a dead one (:mod:`web.liveness`). It never waits for the writer: while the writer holds the
connection (connecting, or waiting for an acknowledgement) the beat goes out on the open
connection beside it (python-socketio's emits are thread-safe) or, with none open, is
skipped; with the writer idle, it reconnects a dropped connection and sends what the spool
holds, so a restarted server hears from a quiet run within a heartbeat.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from monitor import protocol
from monitor.events import Event
from monitor.validation import is_run_id
from trainer_hooks.spool import Spool

log = logging.getLogger("babysit")

#: Seconds between attempts to reach an unreachable server.
RETRY_SECONDS = 2.0
#: Seconds close() waits for the connection to close (the data is acknowledged by then).
CLOSE_WAIT_SECONDS = 0.5
#: Characters of batch text sent as one message: the server's limit less room for
#: Socket.IO's framing (spooled text is ASCII: JSON escapes the rest, so characters are bytes).
WIRE_LIMIT = protocol.MAX_MESSAGE_BYTES - 64 * 1024
#: Seconds to wait for a connection, and for one batch's acknowledgement.
CONNECT_TIMEOUT, ACK_TIMEOUT = 3.0, 30.0
#: How often a wait for an acknowledgement checks that the connection is still up.
ACK_POLL_SECONDS = 0.05
#: The variable that sets the heartbeat's interval in seconds (0: no heartbeat).
HEARTBEAT_ENV = "BABYSIT_HEARTBEAT_SECONDS"
#: Longest one call of the writer's spends sending the spool (then it returns to its batches).
DRAIN_SECONDS = 1.0


def heartbeat_seconds(value: float | str | None = None) -> float:
    """The heartbeat interval: ``value``, else ``$BABYSIT_HEARTBEAT_SECONDS``, else
    :data:`monitor.protocol.HEARTBEAT_SECONDS`; 0 turns it off (the server then marks a run
    that logs nothing for its timeout lost). A ValueError names what to pass."""
    source = "heartbeat"
    if value is None:
        value, source = os.environ.get(HEARTBEAT_ENV), HEARTBEAT_ENV
    if value is None or value == "":
        return protocol.HEARTBEAT_SECONDS
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{source}: expected seconds between heartbeats, a number of 0 or more (0: none; default "
                         f"{protocol.HEARTBEAT_SECONDS:g}), got {value!r}")
    return seconds


class SocketSink:
    """``append(events, texts)`` for :class:`trainer_hooks.writer.Writer`: spool, then send."""

    def __init__(self, url: str, run: str, spool_dir: str | os.PathLike, token: str | None = None,
                 on_stop: Callable[[str, str], None] | None = None, heartbeat: float | None = None):
        self.url = url.rstrip("/")
        self.run = run
        self.on_stop = on_stop  # (reason, by): a stop command from the server for this run
        self.token = token
        spool_dir = Path(spool_dir)
        self._spool = Spool(spool_dir, run)  # bounded: trainer_hooks.spool says what it drops at the bound
        self.spool = self._spool.path
        self.refused_file = spool_dir / f"{run}.refused.jsonl"
        self.refused = 0  # batches the server refused for good: kept in refused_file, reported once
        self._client = None
        self._next_try = 0.0
        self._unreachable = False
        self._lock = threading.Lock()
        self.heartbeat = heartbeat_seconds(heartbeat)  # seconds; 0: none
        self._beating: threading.Thread | None = None
        self._quiet = threading.Event()  # set by close: no more heartbeats
        self._beat_refused = False

    # The writer calls append; close is called once the writer has stopped.
    def append(self, events: Sequence[Event], texts: Sequence[str]) -> int:
        """Spool the batch (what the bound admits) and send what the server takes; never
        raises for a full or failing disk (:mod:`trainer_hooks.spool`), so the writer's
        thread, and the detectors behind it, go on."""
        with self._lock:
            if events:
                self._spool.add(events, texts)
            self._drain()
        return len(events)

    def pending(self) -> int:
        """Bytes not yet acknowledged by the server (spooled, or held in memory while the
        spool's disk fails)."""
        return self._spool.pending()

    @property
    def dropped(self) -> int:
        """Events not spooled because the spool was at its bound (also in the run_end)."""
        return self._spool.dropped_total

    @property
    def held_bytes(self) -> int:
        """Unsent bytes held in memory because the spool's disk would not take them."""
        return self._spool.held_bytes

    def flush(self, timeout: float = 30.0) -> bool:
        """Try to send everything spooled (at close); True when nothing is left."""
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            with self._lock:
                self._next_try = 0.0
                self._drain()
            if self.pending():
                time.sleep(0.2)
        return not self.pending()

    def close(self) -> None:
        self._quiet.set()
        if self._beating is not None:
            self._beating.join(CONNECT_TIMEOUT + 1.0)  # a beat may be connecting
        with self._lock:
            client, self._client = self._client, None
        if client is not None:  # everything sent was acknowledged: the close need not be waited
            # for (websocket-client waits up to 3 s for a server that keeps the connection open after it)
            closing = threading.Thread(target=quietly_disconnect, args=(client,), daemon=True)
            closing.start()
            closing.join(CLOSE_WAIT_SECONDS)

    # ------------------------------------------------------------------ internals

    def _drain(self) -> None:
        """Send the spool, oldest first, for at most ``DRAIN_SECONDS`` per call: this runs on
        the writer's thread, and a long spool after an outage goes out over many calls rather
        than holding back the writer's next batch (and its detectors) for minutes."""
        if not self.pending() or not self._connected():
            return
        deadline = time.monotonic() + DRAIN_SECONDS
        while (line := self._spool.peek()) is not None:
            try:
                text = line.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError:  # a damaged spool line: no server could ever read it
                self._set_aside(line, "the spooled line is not UTF-8 text")
            else:
                if not self._send(text):
                    return
            self._spool.ack()
            if time.monotonic() > deadline:
                return

    def _send(self, text: str) -> bool:
        """Send one spooled batch; True when it is done with (stored, or set aside for good).
        A batch larger than the server reads in one message (engine.io would drop the
        connection and the batch would be resent for ever) goes out in pieces; the server's
        ``(run, seq)`` key stores each event once if a piece has to be sent again."""
        if len(text) <= WIRE_LIMIT and text.count('"seq":') <= protocol.MAX_BATCH_EVENTS:
            return self._send_one(text)
        try:
            pieces, oversized = split_for_wire(text, WIRE_LIMIT)
        except ValueError:
            self._set_aside(text, "a spooled batch too large for one message that is not a JSON list of events")
            return True
        for event in oversized:
            self._set_aside(event, f"one event of more than {WIRE_LIMIT} bytes, the most the server reads at once")
        return all(self._send_one(piece) for piece in pieces)

    def _send_one(self, text: str) -> bool:
        try:
            ack = self._call(text)
        except Exception as exc:  # disconnected, timed out: keep the batch, try again later
            log.warning("babysit: the server at %s did not acknowledge a batch (%s); keeping it in %s",
                        self.url, type(exc).__name__, self.spool)
            self._drop_client()
            return False
        ack = protocol.Ack.from_reply(ack)
        if ack.ok:
            return True
        if not ack.permanent:  # the server could not store it now: keep it, try again later
            log.warning("babysit: the server at %s could not take a batch now (%s); keeping it in %s",
                        self.url, ack.error[:300], self.spool)
            self._drop_client()
            return False
        self._set_aside(text, ack.error)
        return True

    def _set_aside(self, line: str | bytes, error: str) -> None:
        """A batch the server will never store: kept on disk for a person, reported once."""
        raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape") + b"\n"
        try:
            with open(self.refused_file, "ab") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # the spool's disk is full too: the batch is lost, said, not raised
            log.error("babysit: could not keep a batch the server refused for good in %s (%s): %s",
                      self.refused_file, exc, error[:300])
        self.refused += 1
        if self.refused == 1:
            log.error("babysit: the server at %s refused a batch for good: %s. It is kept in %s; the rest of "
                      "the run is sent as usual (further refusals are counted, not reported)",
                      self.url, error[:500], self.refused_file)

    def _call(self, text: str):
        return send_batch(self._client, text)

    def _connected(self) -> bool:
        self._start_heartbeat()
        if self._client is not None and self._client.connected:
            return True
        if time.monotonic() < self._next_try:
            return False
        self._next_try = time.monotonic() + RETRY_SECONDS
        try:
            client = connect(self.url, self.token, on_stop=self._stop_command)
        except Exception as exc:
            if not self._unreachable:  # once per outage, not every retry
                log.warning("babysit: cannot reach the server at %s (%s: %s); spooling to %s until it answers",
                            self.url, type(exc).__name__, str(exc)[:200] or "no detail", self.spool)
            self._unreachable = True
            return False
        if self._unreachable:
            log.warning("babysit: reached the server at %s again; replaying the spool", self.url)
        self._unreachable = False
        self._client = client
        return True

    # ------------------------------------------------------------------ heartbeat

    def _start_heartbeat(self) -> None:
        if self._beating is None and self.heartbeat > 0 and not self._quiet.is_set():
            self._beating = threading.Thread(target=self._beat_loop, name=f"babysit-heartbeat-{self.run}",
                                             daemon=True)
            self._beating.start()

    def _beat_loop(self) -> None:
        while not self._quiet.wait(self.heartbeat):
            try:
                self._beat()
            except Exception as exc:  # never let the heartbeat die of one failure
                log.debug("babysit: a heartbeat failed (%s: %s)", type(exc).__name__, exc)

    def _beat(self) -> None:
        """One heartbeat (see the module doc); never waits for the writer."""
        client = self._client
        if client is None or not client.connected:
            if not self._lock.acquire(blocking=False):
                return  # the writer is connecting: its batches will speak for the run
            try:
                if self._quiet.is_set():
                    return
                self._drain()  # what an outage left in the spool goes out now, not at the next log
                if not self._connected():
                    return
                client = self._client
            finally:
                self._lock.release()
        try:
            client.emit(protocol.HEARTBEAT, {"runs": [self.run]}, namespace=protocol.INGEST_NAMESPACE,
                        callback=self._beat_answered)
        except Exception:  # it dropped meanwhile: the next beat or batch reconnects
            pass

    def _beat_answered(self, *args) -> None:
        ack = protocol.Ack.from_reply(args[0] if args else None)
        if not ack.ok and not self._beat_refused:  # once: a server that refuses one refuses them all
            self._beat_refused = True
            log.warning("babysit: the server at %s refused a heartbeat (%s); it may mark run %s lost while "
                        "it logs nothing", self.url, ack.error[:300], self.run)

    def _stop_command(self, message) -> None:
        if self.on_stop is not None and isinstance(message, dict) and message.get("run") == self.run:
            self.on_stop(str(message.get("reason", "stopped from the dashboard")), str(message.get("by", "dashboard")))

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            threading.Thread(target=quietly_disconnect, args=(client,), daemon=True).start()  # may take seconds
        self._next_try = time.monotonic() + RETRY_SECONDS


def connect(url: str, token: str | None = None, on_stop: Callable | None = None):
    """A python-socketio client connected to ``url``'s ingest namespace (``on_stop``: the
    handler of the server's stop commands). Raises python-socketio's ConnectionError:
    "One or more namespaces failed to connect" when the server refused the token."""
    import socketio

    client = socketio.Client(reconnection=False)
    if on_stop is not None:
        client.on(protocol.STOP, on_stop, namespace=protocol.INGEST_NAMESPACE)
    client.connect(url, namespaces=[protocol.INGEST_NAMESPACE], transports=["websocket"],
                   auth={"token": token} if token else None, wait_timeout=CONNECT_TIMEOUT)
    return client


def send_batch(client, text: str):
    """Emit a batch and wait for its acknowledgement (the server's raw reply, read it with
    :meth:`monitor.protocol.Ack.from_reply`), giving up as soon as the connection drops
    (python-socketio's ``call`` would wait out its whole timeout: a server that went away
    mid-batch would hold the sender back for ``ACK_TIMEOUT``)."""
    answered = threading.Event()
    reply: list = []

    def acknowledged(*args):
        reply.append(args[0] if args else None)
        answered.set()

    client.emit(protocol.BATCH, text, namespace=protocol.INGEST_NAMESPACE, callback=acknowledged)
    deadline = time.monotonic() + ACK_TIMEOUT
    while not answered.wait(ACK_POLL_SECONDS):
        if not client.connected:
            raise ConnectionError("the connection dropped before the acknowledgement")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no acknowledgement within {ACK_TIMEOUT:g} s")
    return reply[0]


def quietly_disconnect(client) -> None:
    """Disconnect ``client`` and close its WebSocket, also when the server ended the connection
    first: python-engineio (4.x) then ends its read loop without closing the socket, and its
    ``disconnect()`` does nothing once disconnected, so the socket stayed open until garbage
    collection (a file descriptor per server restart, and a ResourceWarning at a random later
    moment)."""
    try:
        client.disconnect()
    except Exception:  # a connection that is already gone
        pass
    ws = getattr(getattr(client, "eio", None), "ws", None)
    if ws is not None:
        try:
            ws.shutdown()  # websocket-client: close the socket now (nothing when already closed)
        except Exception:  # noqa: BLE001 - it is being closed either way
            pass


def split_for_wire(text: str, limit: int) -> tuple[list[str], list[str]]:
    """A batch's JSON list as pieces of at most ``limit`` characters and
    :data:`~monitor.protocol.MAX_BATCH_EVENTS` events each, in order, and the events that are
    larger than ``limit`` on their own (as one-event batches). The events' own text is kept
    as it was (tags, integers), so each piece is stored as the whole would be."""
    events = json.loads(text)
    if not isinstance(events, list):
        raise ValueError("not a list of events")
    pieces, oversized, current, size = [], [], [], 2
    for event in events:
        part = json.dumps(event, separators=(",", ":"))
        if len(part) + 2 > limit:
            oversized.append(f"[{part}]")
            continue
        if current and (size + len(part) + 1 > limit or len(current) == protocol.MAX_BATCH_EVENTS):
            pieces.append("[" + ",".join(current) + "]")
            current, size = [], 2
        current.append(part)
        size += len(part) + 1
    if current:
        pieces.append("[" + ",".join(current) + "]")
    return pieces, oversized


def replay_spools(url: str, spool_dir: str | os.PathLike, token: str | None = None,
                  timeout: float = 60.0) -> dict[str, bool]:
    """Send what processes that ended before the server answered left in ``spool_dir``.

    Returns, per run with something spooled, whether all of it was acknowledged. Safe to
    repeat: each spool resumes at its saved position and the server stores each event once.
    """
    results = {}
    for spool in sorted(Path(spool_dir).glob("*.jsonl")):
        run = spool.stem
        if not is_run_id(run) or run.endswith(".refused"):  # set aside for a person, never resent
            continue
        sink = SocketSink(url, run, spool_dir, token=token, heartbeat=0)  # its process is gone: no heartbeat
        if not sink.pending():
            continue
        results[run] = sink.flush(timeout)
        sink.close()
    return results
