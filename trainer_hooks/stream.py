"""Streaming a run to ``babysit serve``: a sink for the writer thread, with a spool.

Every batch the writer hands over is first appended to a spool file (one JSON line per
batch, flushed and fsync'd), then the spool is sent in order over a python-socketio
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
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from monitor import protocol
from monitor.events import Event

log = logging.getLogger("babysit")

#: Seconds between attempts to reach an unreachable server.
RETRY_SECONDS = 2.0
#: Seconds to wait for a connection, and for one batch's acknowledgement.
CONNECT_TIMEOUT, ACK_TIMEOUT = 3.0, 30.0
#: How often a wait for an acknowledgement checks that the connection is still up.
ACK_POLL_SECONDS = 0.05


def batch_text(events: Sequence[Event], texts: Sequence[str]) -> str:
    """The events as the JSON list the server's ``batch`` handler reads; the payloads are
    the writer's encodings, spliced in rather than encoded again."""
    return "[" + ",".join(
        '{"run":%s,"seq":%d,"step":%d,"wall":%s,"kind":"%s","data":%s}'
        % (json.dumps(e.run), e.seq, e.step, json.dumps(e.wall), e.kind.value, text)
        for e, text in zip(events, texts)) + "]"


class SocketSink:
    """``append(events, texts)`` for :class:`trainer_hooks.writer.Writer`: spool, then send."""

    def __init__(self, url: str, run: str, spool_dir: str | os.PathLike, token: str | None = None,
                 on_stop: Callable[[str, str], None] | None = None):
        self.url = url.rstrip("/")
        self.run = run
        self.on_stop = on_stop  # (reason, by): a stop command from the server for this run
        self.token = token
        spool_dir = Path(spool_dir)
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool = spool_dir / f"{run}.jsonl"
        self.position_file = spool_dir / f"{run}.sent"
        self.position = int(self.position_file.read_text()) if self.position_file.exists() else 0
        self.refused_file = spool_dir / f"{run}.refused.jsonl"
        self.refused = 0  # batches the server refused for good: kept in refused_file, reported once
        self._client = None
        self._next_try = 0.0
        self._unreachable = False
        self._lock = threading.Lock()

    # The writer calls append; close is called once the writer has stopped.
    def append(self, events: Sequence[Event], texts: Sequence[str]) -> int:
        with self._lock:
            if events:
                with open(self.spool, "a", encoding="utf-8") as f:
                    f.write(batch_text(events, texts) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            self._drain()
        return len(events)

    def pending(self) -> int:
        """Bytes of the spool not yet acknowledged by the server."""
        return max(self.spool.stat().st_size - self.position, 0) if self.spool.exists() else 0

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
        with self._lock:
            if self._client is not None:
                try:
                    self._client.disconnect()
                except Exception:
                    pass
                self._client = None

    # ------------------------------------------------------------------ internals

    def _drain(self) -> None:
        if not self.pending() or not self._connected():
            return
        with open(self.spool, "rb") as f:
            f.seek(self.position)
            for line in f:
                try:
                    text = line.decode("utf-8").rstrip("\n")
                except UnicodeDecodeError:  # a damaged spool line: no server could ever read it
                    self._set_aside(line, "the spooled line is not UTF-8 text")
                else:
                    if not self._send(text):
                        return
                self.position += len(line)
                self._save_position()
        if self.position >= self.spool.stat().st_size:  # all acknowledged: start afresh
            self.spool.write_text("")
            self.position = 0
            self._save_position()

    def _send(self, text: str) -> bool:
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
        with open(self.refused_file, "ab") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        self.refused += 1
        if self.refused == 1:
            log.error("babysit: the server at %s refused a batch for good: %s. It is kept in %s; the rest of "
                      "the run is sent as usual (further refusals are counted, not reported)",
                      self.url, error[:500], self.refused_file)

    def _call(self, text: str):
        """Emit a batch and wait for its acknowledgement, giving up as soon as the connection
        drops (python-socketio's ``call`` would wait out its whole timeout: a server that
        went away mid-batch would hold the spool back for ``ACK_TIMEOUT``)."""
        answered = threading.Event()
        reply: list = []

        def acknowledged(*args):
            reply.append(args[0] if args else None)
            answered.set()

        client = self._client
        client.emit(protocol.BATCH, text, namespace=protocol.INGEST_NAMESPACE, callback=acknowledged)
        deadline = time.monotonic() + ACK_TIMEOUT
        while not answered.wait(ACK_POLL_SECONDS):
            if not client.connected:
                raise ConnectionError("the connection dropped before the acknowledgement")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no acknowledgement within {ACK_TIMEOUT:g} s")
        return reply[0]

    def _connected(self) -> bool:
        if self._client is not None and self._client.connected:
            return True
        if time.monotonic() < self._next_try:
            return False
        self._next_try = time.monotonic() + RETRY_SECONDS
        import socketio

        client = socketio.Client(reconnection=False)
        client.on(protocol.STOP, self._stop_command, namespace=protocol.INGEST_NAMESPACE)
        try:
            client.connect(self.url, namespaces=[protocol.INGEST_NAMESPACE], transports=["websocket"],
                           auth={"token": self.token} if self.token else None, wait_timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            if not self._unreachable:  # once per outage, not every retry
                log.warning("babysit: cannot reach the server at %s (%s); spooling to %s until it answers",
                            self.url, type(exc).__name__, self.spool)
            self._unreachable = True
            return False
        if self._unreachable:
            log.warning("babysit: reached the server at %s again; replaying the spool", self.url)
        self._unreachable = False
        self._client = client
        return True

    def _stop_command(self, message) -> None:
        if self.on_stop is not None and isinstance(message, dict) and message.get("run") == self.run:
            self.on_stop(str(message.get("reason", "stopped from the dashboard")), str(message.get("by", "dashboard")))

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            threading.Thread(target=client.disconnect, daemon=True).start()  # a close may take seconds
        self._next_try = time.monotonic() + RETRY_SECONDS

    def _save_position(self) -> None:
        tmp = self.position_file.with_suffix(".tmp")
        tmp.write_text(str(self.position))
        os.replace(tmp, self.position_file)


def replay_spools(url: str, spool_dir: str | os.PathLike, token: str | None = None,
                  timeout: float = 60.0) -> dict[str, bool]:
    """Send what processes that ended before the server answered left in ``spool_dir``.

    Returns, per run with something spooled, whether all of it was acknowledged. Safe to
    repeat: each spool resumes at its saved position and the server stores each event once.
    """
    results = {}
    for spool in sorted(Path(spool_dir).glob("*.jsonl")):
        run = spool.stem
        sink = SocketSink(url, run, spool_dir, token=token)
        if not sink.pending():
            continue
        results[run] = sink.flush(timeout)
        sink.close()
    return results
