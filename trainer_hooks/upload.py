"""Sending ``babysit sync``'s runs to a server: every event once, in seq order, each batch acknowledged.

One python-socketio connection (the trainer's own client code, :func:`trainer_hooks.stream.connect`
and :func:`~trainer_hooks.stream.send_batch`) carries a run's batches
(:func:`monitor.sync.batches`) one at a time, each waiting for its :class:`~monitor.protocol.Ack`,
which the server sends only after it committed the batch and which says how many events
were new. A transient refusal (the server's disk is full, its database locked) or a
dropped connection is retried after ``BACKOFF_SECONDS``, doubled each time, up to
``TRIES`` tries; a permanent refusal stops the upload with an :class:`UploadError` naming
the run and the seqs. Sending a batch again is safe: the server's ``(run, seq)`` key
stores each event once, so an interrupted sync is simply run again.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from monitor import codec, protocol
from monitor.sync import Batch, RunPlan, batches
from trainer_hooks import stream
from trainer_hooks.spool import event_text

#: Tries of one batch the server refuses for now, or whose connection drops.
TRIES = 6
#: Seconds before the second try, doubled for each next (0.5 + 1 + ... + 8: 15.5 s in all).
BACKOFF_SECONDS = 0.5


class UploadError(Exception):
    """The upload cannot go on (server unreachable, token refused, a batch refused for
    good); the message says which run and seqs, and what to do."""


class TokenRefused(UploadError):
    """The server refused the connection: a wrong or missing token (retrying cannot help)."""


@dataclass(frozen=True)
class Uploaded:
    """One run's upload: events read (and sent), and how many of them the server newly stored."""

    run: str
    name: str
    read: int
    new: int

    @property
    def already(self) -> int:
        """Events the server held before (an earlier sync, or the trainer's own stream)."""
        return self.read - self.new


class Uploader:
    """One connection to ``url`` for every run's batches; :meth:`close` when done."""

    def __init__(self, url: str, token: str | None = None, tries: int = TRIES,
                 backoff: float = BACKOFF_SECONDS, sleep: Callable[[float], None] = time.sleep):
        self.url = url.rstrip("/")
        self.token = token
        self.tries = tries
        self.backoff = backoff
        self._sleep = sleep
        self._client = None

    def connect(self) -> None:
        """Connect, or :class:`UploadError` saying whether the server is unreachable or refused the token."""
        if self._client is not None and self._client.connected:
            return
        self.close()
        try:
            self._client = stream.connect(self.url, self.token)
        except Exception as exc:
            if "namespaces failed to connect" in str(exc):  # python-socketio's word for on_connect -> False
                given = "the token given" if self.token else "no token"
                raise TokenRefused(f"the server at {self.url} refused the connection with {given}: pass its "
                                  "token with --token or $BABYSIT_TOKEN (the one `babysit serve` was given)") from None
            raise UploadError(f"cannot reach the server at {self.url} ({type(exc).__name__}: {exc}): is "
                              "`babysit serve` running there? Nothing was lost: sync again once it is") from None

    def send(self, run: str, batch: Batch) -> int:
        """Send one batch until it is acknowledged; the number of events newly stored."""
        what = f"run {run}, seqs {batch.first_seq}..{batch.last_seq}"
        problem = ""
        for attempt in range(self.tries):
            if attempt:
                self._sleep(self.backoff * 2 ** (attempt - 1))
            try:
                self.connect()
                ack = protocol.Ack.from_reply(stream.send_batch(self._client, batch.text))
            except TokenRefused:
                raise
            except UploadError as exc:  # unreachable now (it restarts?): try again after the backoff
                problem = str(exc)
                continue
            except Exception as exc:  # the connection dropped, or no ack in time: the batch is sent again
                problem = f"no acknowledgement ({type(exc).__name__}: {exc})"
                self.close()
                continue
            if ack.ok:
                return ack.stored
            if ack.permanent:
                raise UploadError(f"the server refused {what} for good: {ack.error[:500]}; the events "
                                  "before them are stored, these and the rest of the run are not")
            problem = f"the server could not store it now: {ack.error[:300]}"
        raise UploadError(f"{what} not sent after {self.tries} tries: {problem}. The events before them are "
                          "stored; sync again later to send the rest")

    def upload(self, entry: RunPlan) -> Uploaded:
        """Every event of ``entry``, in seq order, in batches the server reads in one message."""
        read = new = 0
        for batch in run_batches(entry):
            new += self.send(entry.run, batch)
            read += batch.count
        return Uploaded(entry.run, entry.name, read, new)

    def close(self) -> None:
        """Disconnect. Everything sent was acknowledged, so the close is not waited for
        (websocket-client waits up to 3 s for a server that keeps the connection open after it)."""
        client, self._client = self._client, None
        if client is not None:
            closing = threading.Thread(target=stream.quietly_disconnect, args=(client,), daemon=True)
            closing.start()
            closing.join(stream.CLOSE_WAIT_SECONDS)


def run_batches(entry: RunPlan):
    """A run's events encoded as the trainer's spool encodes them (the server reads them
    the same way), in batches within :data:`~trainer_hooks.stream.WIRE_LIMIT` characters
    (the text is ASCII: JSON escapes the rest) and :data:`~monitor.protocol.MAX_BATCH_EVENTS` events."""
    items = ((e.seq, event_text(e, codec.encode_payload(e.data))) for e in entry.events())
    return batches(entry.run, items, stream.WIRE_LIMIT, protocol.MAX_BATCH_EVENTS)
