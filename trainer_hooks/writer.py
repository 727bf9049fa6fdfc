"""The writer thread: the only place where device values reach the host and records
become events.

The training thread hands over records with :meth:`Writer.put`, which never blocks
and never wakes the thread: a deque append, while the thread wakes on its own every
``FLUSH_SECONDS`` and commits what has accumulated in one transaction. When the
bounded buffer is full the record is dropped and counted (TensorBoard's blocking put
stalls training instead). The thread copies tensors to the host (the
one copy per sampled step, and one per batch of logged losses), decodes statistics,
stamps events with the run's sequence numbers and appends them to the sink in batches.
A failing sink is retried with back-off; it never raises into training.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from monitor import codec
from monitor.events import Event, Kind, Scalars
from trainer_hooks.capture import Packed, decode

log = logging.getLogger("babysit")

#: Records the queue may hold before new ones are dropped (each is small: a few
#: numbers, or one packed tensor of a sampled step).
QUEUE_LIMIT = 100_000
#: Sampled steps waiting for the writer beyond which no new sample is taken: each holds
#: its packed statistics (a few hundred kB), so this bounds memory when the writer
#: cannot keep up, and makes the sampling back off instead of the training.
CAPTURE_BACKLOG_LIMIT = 32
#: Most records turned into events and committed in one batch.
BATCH_LIMIT = 2_000
#: How long the thread waits for more records before committing what it has: a local
#: store commits four times a second; a stream to a dashboard (``watch(server=...)``)
#: every 20 ms, so that a logged loss reaches the browser within about 50 ms.
FLUSH_SECONDS = 0.25
LIVE_FLUSH_SECONDS = 0.02
#: Recent sampled steps whose host-side cost :meth:`Writer.capture_cost` reports.
CAPTURE_COSTS_KEPT = 5
#: Back-off for a failing sink: first wait, and the most it waits between tries.
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


class Sink(Protocol):
    def append(self, events: Sequence[Event], texts: Sequence[str]) -> int: ...


@dataclass(frozen=True)
class ScalarRecord:
    step: int
    wall: float
    values: dict[str, Any]  # floats, or 0-d tensors still on their device


@dataclass(frozen=True)
class CaptureRecord:
    step: int
    wall: float
    packed: Packed


@dataclass(frozen=True)
class EventRecord:
    step: int
    wall: float
    kind: Kind
    data: Any


class Writer:
    def __init__(self, run: str, sink: Sink, *, first_seq: int = 0,
                 on_events: Callable[[list[Event]], None] | None = None, flush_seconds: float = FLUSH_SECONDS):
        self.run = run
        self.flush_seconds = flush_seconds
        self.sink = sink
        self.seq = first_seq
        self.dropped = 0
        self.failed = 0  # records that could not be decoded (a bug, logged)
        self.cpu_seconds = 0.0  # CPU time this thread has spent on records (retry waits excluded)
        self.on_events = on_events
        self._records: deque = deque()
        self._limit = QUEUE_LIMIT
        self._accepted = 0  # records put; compared with _done by flush()
        self._done = 0
        self._captures_put = 0
        self._captures_done = 0
        self._stopping = False
        self._wake = threading.Event()
        self._progress = threading.Condition()  # notified whenever records are done
        self._finished = False
        self._capture_seconds: deque[float] = deque(maxlen=CAPTURE_COSTS_KEPT)
        self._thread = threading.Thread(target=self._loop, name=f"babysit-writer-{run}", daemon=True)
        self._thread.start()

    def put(self, record, wait: bool = False) -> bool:
        """Hand a record over; when the buffer is full, drop and count it, unless ``wait``
        (used by close, whose lifecycle records must land and which may take its time)."""
        while len(self._records) >= self._limit:
            if not wait or not self._thread.is_alive():
                self.dropped += 1
                return False
            self._wake.set()
            time.sleep(0.01)
        self._accepted += 1
        if isinstance(record, CaptureRecord):
            self._captures_put += 1
        self._records.append(record)  # atomic under the GIL; no lock, no wake-up
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything put so far is committed and its listener (the detectors)
        has run, or ``timeout`` passes."""
        target = self._accepted
        self._wake.set()
        with self._progress:
            self._progress.wait_for(lambda: self._done >= target or self._finished or not self._thread.is_alive(),
                                    timeout)
        return self._done >= target

    @property
    def idle(self) -> bool:
        """Whether everything put so far is done."""
        return self._done >= self._accepted

    def close(self, timeout: float = 60.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("babysit: the writer did not finish within %.0f s; some events may be missing", timeout)

    # ------------------------------------------------------------------ thread side

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stopping  # read before draining: nothing put before close is missed
            while self._records:
                started = time.thread_time()
                records = [self._records.popleft() for _ in range(min(len(self._records), BATCH_LIMIT))]
                try:
                    batch = self._to_events(records)
                except Exception:  # e.g. a device error while reading values: count, never die
                    self.failed += len(records)
                    log.exception("babysit: could not read a batch of %d records", len(records))
                    batch = ([], [])
                self._commit(batch)
                self.cpu_seconds += time.thread_time() - started
                self._captures_done += sum(isinstance(r, CaptureRecord) for r in records)  # stored or failed
                with self._progress:
                    self._done += len(records)
                    self._progress.notify_all()
            if stopping:
                with self._progress:
                    self._finished = True  # a flush waiting on a writer that ends returns now
                    self._progress.notify_all()
                return

    def _to_events(self, records: list) -> tuple[list[Event], list[str]]:
        """Events (stamped with the run's next seqs) and their encoded payloads."""
        scalar_values = _resolve_scalars([r for r in records if isinstance(r, ScalarRecord)])
        events, texts = [], []
        for record in records:
            started = time.thread_time() if isinstance(record, CaptureRecord) else 0.0
            try:
                made = [Event(self.run, self.seq + i, record.step, record.wall, kind, data)
                        for i, (kind, data) in enumerate(self._payloads(record, scalar_values))]
                encoded = [codec.encode_payload(event.data) for event in made]
            except Exception:  # a bug or a hostile name must not stop the other records
                self.failed += 1
                log.exception("babysit: could not record a %s at step %s", type(record).__name__, record.step)
                continue
            self.seq += len(made)
            events += made
            texts += encoded
            if isinstance(record, CaptureRecord):
                self._capture_seconds.append(time.thread_time() - started)
                # Hand the GIL over after each sampled step's long decode: a training
                # thread waiting for it would otherwise wait out the interpreter's switch
                # interval (5 ms). (A sleep costs a system call: not after cheap records.)
                time.sleep(0)
        return events, texts

    @property
    def capture_backlog(self) -> int:
        """Sampled steps handed over and not yet turned into events."""
        return self._captures_put - self._captures_done

    def capture_cost(self) -> float:
        """Median CPU seconds this thread spent turning a recent sampled step into stored
        text: the part of a sample's cost the training thread does not see (the
        automatic schedule adds it to what it measures)."""
        recent = list(self._capture_seconds)
        return statistics.median(recent) if recent else 0.0

    def _payloads(self, record, scalar_values):
        if isinstance(record, ScalarRecord):
            yield Kind.SCALARS, Scalars(scalar_values[id(record)])
        elif isinstance(record, CaptureRecord):
            decoded = decode(record.packed)
            if decoded.input_stats is not None:
                yield Kind.INPUT_STATS, decoded.input_stats
            if decoded.layer_stats is not None:
                yield Kind.LAYER_STATS, decoded.layer_stats
            if decoded.filters is not None:
                yield Kind.FILTERS, decoded.filters
        else:
            yield record.kind, record.data

    def _commit(self, batch: tuple[list[Event], list[str]]) -> None:
        events, texts = batch
        wait = RETRY_FIRST
        while True:
            try:
                self.sink.append(events, texts)
                break
            except Exception as exc:  # disk full, locked database, ...: keep the batch
                log.warning("babysit: could not store %d events (%s); retrying in %.1f s", len(events), exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, RETRY_MAX)
        if self.on_events is not None:
            try:
                self.on_events(events)
            except Exception:
                log.exception("babysit: an event listener failed")


def _resolve_scalars(records: list[ScalarRecord]) -> dict[int, dict[str, float]]:
    """Bring every tensor value of a batch to the host: CPU values are read directly,
    accelerator values with one copy per device and dtype (never one sync per value)."""
    groups: dict[tuple, list[tuple[dict, str, torch.Tensor]]] = {}
    out: dict[int, dict[str, float]] = {}
    for record in records:
        values = out[id(record)] = dict(record.values)  # keeps the user's order of names
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                if value.device.type == "cpu":
                    values[name] = float(value)
                else:
                    groups.setdefault((value.device, value.dtype), []).append((values, name, value))
    for (device, _), entries in groups.items():
        host = torch.float32 if device.type == "mps" else torch.float64
        numbers = torch.stack([v.reshape(()) for _, _, v in entries]).to(host).cpu().tolist()
        for (values, name, _), number in zip(entries, numbers):
            values[name] = number
    return out
