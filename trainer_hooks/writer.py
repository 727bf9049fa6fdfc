"""The writer: a pipeline of pure stages between the training thread and the sink.

    training thread --put--> records --[detect stage: decode, detect, decide]--> events --[sink stage: commit]

The training thread hands over records with :meth:`Writer.put`, a deque append that
never blocks and never waits; when the bounded buffer is full the record is dropped and
counted (TensorBoard's blocking put stalls training instead). Every
:data:`NUDGE_STEPS` steps it also nudges the detect stage (:meth:`Writer.nudge`, a flag
set), which otherwise wakes every :data:`DETECT_SECONDS`.

* The **detect stage** (one thread) is the only place where device values reach the
  host: one copy per sampled step, one per device for the batch's losses and vital
  signs. It decodes statistics, stamps events with the run's sequence numbers and runs
  the detectors and the stop decision on each event (``detect``); the flags they raise
  are stamped right after the event that raised them and join the same outgoing batch.
* The **sink stage** (another thread) commits those batches, every ``flush_seconds``
  (a local store four times a second; a stream to a dashboard every 20 ms). A failing
  sink is retried with back-off; it never raises into training and never holds up the
  detect stage, so a locked SQLite file or a server that is down delays no flag and no
  stop. What waits for it is bounded (:data:`OUTBOX_LIMIT` events; beyond, dropped and
  counted).

The bound between evidence and ``mon.should_stop``: a record put at step ``s`` is seen
by the detect stage at most :data:`NUDGE_STEPS` steps (or :data:`DETECT_SECONDS`) later,
plus the time it spends on the records queued ahead of it (each sampled step's decode, a
few milliseconds); a stop it decides is visible to the very next read of
``should_stop``. The training thread never waits for either stage.
"""
from __future__ import annotations

import functools
import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from monitor import codec
from monitor.early_stopping import StopReason
from monitor.events import Event, Flag, Kind, Scalars, Vitals
from trainer_hooks.capture import Packed, decode

log = logging.getLogger("babysit")

#: Records the queue may hold before new ones are dropped (each is small: a few
#: numbers, or one packed tensor of a sampled step).
QUEUE_LIMIT = 100_000
#: Sampled steps waiting for the detect stage beyond which no new sample is taken: each
#: holds its packed statistics (a few hundred kB), so this bounds memory when the writer
#: cannot keep up, and makes the sampling back off instead of the training.
CAPTURE_BACKLOG_LIMIT = 32
#: Most records turned into events in one batch of the detect stage.
BATCH_LIMIT = 2_000
#: Seconds between two wake-ups of the detect stage when the training thread does not
#: nudge it (slow steps): a flag is raised within this of its evidence being put. (Each
#: wake-up costs the stage its batch overheads; fast steps are nudged instead.)
DETECT_SECONDS = 0.25
#: Steps between two nudges of the detect stage by the training thread (fast steps): the
#: bound, in steps, on how long the evidence of a flag waits before the detectors see it.
NUDGE_STEPS = 8
#: How long the sink stage waits for more events before committing what it has: a local
#: store commits four times a second; a stream to a dashboard (``watch(server=...)``)
#: every 20 ms, so that a logged loss reaches the browser within about 50 ms.
FLUSH_SECONDS = 0.25
LIVE_FLUSH_SECONDS = 0.02
#: Events decoded and waiting for the sink beyond which new ones are dropped and counted
#: (a sink stuck for good must not grow memory without bound; detection goes on).
OUTBOX_LIMIT = 200_000
#: Most events committed in one transaction.
COMMIT_LIMIT = 5_000
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


@dataclass(frozen=True)
class VitalsRecord:
    """A block of steps' gradient norms: ``norms[i]`` holds the ``i``-th step's
    (``steps[i]``) L2 norm of each parameter's gradient (on an accelerator, still on the
    device; on the CPU, already squared), ``rows[j]`` the model-summary row of parameter
    ``j``'s layer (-1: none), the same for the block."""

    step: int  # the block's first
    wall: float
    steps: tuple[int, ...]
    norms: list  # per step: a 1-d tensor on an accelerator; on the CPU a list of squared norms (floats)
    rows: tuple[int, ...]


class VitalsBlock:
    """The training thread's block of vital signs, handed over as one record every
    :data:`NUDGE_STEPS` steps (or sooner, :meth:`take`): one record per block instead of
    one per step, so the writer's cost per step is a small share of a record's."""

    def __init__(self):
        self.steps: list[int] = []
        self.norms: list = []
        self.rows: tuple[int, ...] | None = None
        self.wall = 0.0

    def add(self, step: int, norms, rows: tuple[int, ...]) -> VitalsRecord | None:
        """Add a step's signs; the block taken before them when their layers differ."""
        taken = self.take() if self.rows is not None and rows != self.rows else None
        if not self.steps:
            self.rows, self.wall = rows, time.time()
        self.steps.append(step)
        self.norms.append(norms)
        return taken

    def take(self) -> VitalsRecord | None:
        """The block so far as a record (None when empty), and a fresh block."""
        if not self.steps:
            return None
        record = VitalsRecord(self.steps[0], self.wall, tuple(self.steps), self.norms, self.rows)
        self.steps, self.norms, self.rows = [], [], None
        return record


@dataclass(frozen=True)
class StopRecord:
    """The run was asked to stop: once the detect stage has seen everything before, the
    detectors say why from their own evidence (``explain``)."""

    step: int
    wall: float
    reason: StopReason


class Writer:
    def __init__(self, run: str, sink: Sink, *, first_seq: int = 0,
                 detect: Callable[[Event], list[Flag]] | None = None,
                 explain: Callable[[StopReason], list[Flag]] | None = None,
                 flush_seconds: float = FLUSH_SECONDS, detect_seconds: float = DETECT_SECONDS):
        self.run = run
        self.flush_seconds = flush_seconds
        self.detect_seconds = detect_seconds
        self.sink = sink
        self.seq = first_seq
        self.dropped = 0
        self.failed = 0  # records that could not be decoded (a bug, logged)
        self.detect = detect
        self.explain = explain
        self._records: deque = deque()
        self._limit = QUEUE_LIMIT
        self._accepted = 0  # records put; compared with _detected and _done
        self._detected = 0  # records through the detect stage
        self._done = 0  # records whose events are committed (or dropped)
        self._captures_put = 0
        self._captures_done = 0
        self._outbox: deque[tuple[list[Event], list[str], int]] = deque()  # (events, texts, records)
        self._outbox_events = 0
        self._flush_target = 0  # records a flush() waits to see committed: the sink is woken for them
        self._stopping = False
        self._detect_finished = False
        self._finished = False
        self._wake = threading.Event()  # the detect stage's
        self._sink_wake = threading.Event()
        self._progress = threading.Condition()  # notified whenever records are detected or done
        self._capture_seconds: deque[float] = deque(maxlen=CAPTURE_COSTS_KEPT)
        self._cpu = {"detect": 0.0, "sink": 0.0}
        self._detect_thread = threading.Thread(target=self._detect_loop, name=f"babysit-detect-{run}", daemon=True)
        self._sink_thread = threading.Thread(target=self._sink_loop, name=f"babysit-sink-{run}", daemon=True)
        self._detect_thread.start()
        self._sink_thread.start()

    # ------------------------------------------------------------------ training thread side

    def put(self, record, wait: bool = False) -> bool:
        """Hand a record over; when the buffer is full, drop and count it, unless ``wait``
        (used by close, whose lifecycle records must land and which may take its time)."""
        while len(self._records) >= self._limit:
            if not wait or not self._detect_thread.is_alive():
                self.dropped += 1
                return False
            self._wake.set()
            time.sleep(0.01)
        self._accepted += 1
        if isinstance(record, CaptureRecord):
            self._captures_put += 1
        self._records.append(record)  # atomic under the GIL; no lock, no wake-up
        return True

    def nudge(self) -> None:
        """Wake the detect stage if it sleeps (a flag read, and a set only when it is clear)."""
        if not self._wake.is_set():
            self._wake.set()

    def detected(self, timeout: float = 30.0) -> bool:
        """Wait until the detect stage has seen everything put so far (the sink may lag)."""
        return self._wait(lambda: self._detected, lambda: self._detect_finished, self._detect_thread, timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything put so far is detected and committed, or ``timeout`` passes."""
        self._flush_target = max(self._flush_target, self._accepted)  # the detect stage wakes the sink for it
        self._sink_wake.set()
        return self._wait(lambda: self._done, lambda: self._finished, self._sink_thread, timeout)

    def _wait(self, count: Callable[[], int], finished: Callable[[], bool], thread: threading.Thread,
              timeout: float) -> bool:
        target = self._accepted
        self._wake.set()
        with self._progress:
            self._progress.wait_for(lambda: count() >= target or finished() or not thread.is_alive(), timeout)
        return count() >= target

    @property
    def cpu_seconds(self) -> float:
        """CPU time both stages have spent on records (the sink's retry waits excluded)."""
        return self._cpu["detect"] + self._cpu["sink"]

    @property
    def capture_backlog(self) -> int:
        """Sampled steps handed over and not yet decoded."""
        return self._captures_put - self._captures_done

    def capture_cost(self) -> float:
        """Median CPU seconds the detect stage spent turning a recent sampled step into
        events and text: the part of a sample's cost the training thread does not see (the
        automatic schedule adds it to what it measures)."""
        recent = list(self._capture_seconds)
        return statistics.median(recent) if recent else 0.0

    def close(self, timeout: float = 60.0) -> None:
        self._stopping = True
        self._wake.set()
        self._sink_wake.set()
        deadline = time.monotonic() + timeout
        self._detect_thread.join(timeout)
        self._sink_thread.join(max(deadline - time.monotonic(), 0.0))
        if self._detect_thread.is_alive() or self._sink_thread.is_alive():
            log.warning("babysit: the writer did not finish within %.0f s; some events may be missing", timeout)

    # ------------------------------------------------------------------ detect stage

    def _detect_loop(self) -> None:
        while True:
            self._wake.wait(self.detect_seconds)
            self._wake.clear()
            stopping = self._stopping  # read before draining: nothing put before close is missed
            while self._records:
                started = time.thread_time()
                records = [self._records.popleft() for _ in range(min(len(self._records), BATCH_LIMIT))]
                try:
                    events, texts = self._to_events(records)
                except Exception:  # e.g. a device error while reading values: count, never die
                    self.failed += len(records)
                    log.exception("babysit: could not read a batch of %d records", len(records))
                    events, texts = [], []
                self._captures_done += sum(isinstance(r, CaptureRecord) for r in records)  # decoded or failed
                self._to_outbox(events, texts, len(records))
                self._cpu["detect"] += time.thread_time() - started
                with self._progress:
                    self._detected += len(records)
                    self._progress.notify_all()
                if self._done < self._flush_target:
                    self._sink_wake.set()
            if stopping:
                with self._progress:
                    self._detect_finished = True
                    self._progress.notify_all()
                self._sink_wake.set()
                return

    def _to_outbox(self, events: list[Event], texts: list[str], records: int) -> None:
        if self._outbox_events + len(events) > OUTBOX_LIMIT:  # the sink is stuck: keep detecting
            self.dropped += len(events)
            events, texts = [], []
        self._outbox_events += len(events)
        self._outbox.append((events, texts, records))

    def _to_events(self, records: list) -> tuple[list[Event], list[str]]:
        """Events (stamped with the run's next seqs), each followed by the flags the
        detectors raise on it, and their encoded payloads."""
        host = _to_host(records)
        events, texts = [], []
        for record in records:
            started = time.thread_time() if isinstance(record, CaptureRecord) else 0.0
            try:
                # the writer's own records are stamped unchecked (every step pays for this);
                # an event handed over by a caller (a flag of the user's) is checked
                make = Event if isinstance(record, EventRecord) else Event.unchecked
                made = [make(self.run, self.seq + i, record.step, record.wall, kind, data)
                        for i, (kind, data) in enumerate(self._payloads(record, host))]
                encoded = [codec.encode_payload(event.data) for event in made]
            except Exception:  # a bug or a hostile name must not stop the other records
                self.failed += 1
                log.exception("babysit: could not record a %s at step %s", type(record).__name__, record.step)
                continue
            self.seq += len(made)
            events += made
            texts += encoded
            for flag in self._flags(record, made):
                events.append(Event(self.run, self.seq, flag.step, time.time(), Kind.FLAG, flag))
                self.seq += 1
                texts.append(codec.encode_payload(flag))
            if isinstance(record, CaptureRecord):
                self._capture_seconds.append(time.thread_time() - started)
                # Hand the GIL over after each sampled step's long decode: a training
                # thread waiting for it would otherwise wait out the interpreter's switch
                # interval (5 ms). (A sleep costs a system call: not after cheap records.)
                time.sleep(0)
        return events, texts

    def _flags(self, record, made: list[Event]) -> list[Flag]:
        """What the detectors and the stop decision say about one record's events."""
        flags: list[Flag] = []
        try:
            if isinstance(record, StopRecord):
                if self.explain is not None:
                    flags += self.explain(record.reason)
            elif self.detect is not None:
                for event in made:
                    flags += self.detect(event)
        except Exception:
            log.exception("babysit: a detector failed at step %s", record.step)
        return flags

    def _payloads(self, record, host: dict[int, Any]):
        if isinstance(record, ScalarRecord):
            yield Kind.SCALARS, Scalars(host[id(record)])
        elif isinstance(record, VitalsRecord):
            yield Kind.VITALS, _vitals(host[id(record)], record.rows, record.steps)
        elif isinstance(record, CaptureRecord):
            decoded = decode(record.packed)
            if decoded.input_stats is not None:
                yield Kind.INPUT_STATS, decoded.input_stats
            if decoded.layer_stats is not None:
                yield Kind.LAYER_STATS, decoded.layer_stats
            if decoded.filters is not None:
                yield Kind.FILTERS, decoded.filters
        elif isinstance(record, EventRecord):
            yield record.kind, record.data

    # ------------------------------------------------------------------ sink stage

    def _sink_loop(self) -> None:
        while True:
            self._sink_wake.wait(self.flush_seconds)
            self._sink_wake.clear()
            finished = self._detect_finished  # read before draining: nothing detected before is missed
            while self._outbox:
                started = time.thread_time()
                events, texts, records = [], [], 0
                while self._outbox and (not events or len(events) + len(self._outbox[0][0]) <= COMMIT_LIMIT):
                    more, more_texts, count = self._outbox.popleft()
                    events += more
                    texts += more_texts
                    records += count
                self._cpu["sink"] += time.thread_time() - started
                self._commit(events, texts)
                self._outbox_events -= len(events)
                with self._progress:
                    self._done += records
                    self._progress.notify_all()
            if finished:
                with self._progress:
                    self._finished = True  # a flush waiting on a writer that ends returns now
                    self._progress.notify_all()
                return

    def _commit(self, events: list[Event], texts: list[str]) -> None:
        wait = RETRY_FIRST
        while True:
            started = time.thread_time()
            try:
                self.sink.append(events, texts)
                self._cpu["sink"] += time.thread_time() - started
                return
            except Exception as exc:  # disk full, locked database, ...: keep the batch
                self._cpu["sink"] += time.thread_time() - started
                log.warning("babysit: could not store %d events (%s); retrying in %.1f s", len(events), exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, RETRY_MAX)


def _vitals(squares: np.ndarray, rows: tuple[int, ...], steps: tuple[int, ...]) -> Vitals:
    """A block's :class:`Vitals` from its steps' squared parameter gradient norms (a steps
    x parameters matrix, float64): the global norm over all of them, and per layer the
    norm of its own (added per layer, so an Inf stays in its own layer)."""
    position, keep, layers, every = _layout(rows)
    per_layer = np.zeros((len(layers), squares.shape[0]))
    np.add.at(per_layer, position, squares[:, keep].T)
    offsets = tuple(s - steps[0] for s in steps)
    return Vitals.unchecked(grad_norm=tuple(np.sqrt(squares.sum(axis=1)).tolist()),
                            norms=tuple(map(tuple, np.sqrt(per_layer.T).tolist())),
                            layers=() if every else layers,
                            offsets=() if offsets[-1] == len(offsets) - 1 else offsets)


@functools.lru_cache(maxsize=64)
def _layout(rows: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], bool]:
    """For the parameters' rows of a block (the same from block to block): the position
    among the layers present of each parameter in a layer, which parameters those are,
    the layers present, and whether that is every row up to the last (then the payload
    need not name them)."""
    index = np.asarray(rows, dtype=np.int64)
    keep = index >= 0
    layers = tuple(sorted(set(index[keep].tolist())))
    position = np.searchsorted(np.asarray(layers, dtype=np.int64), index[keep])
    return position, keep, layers, layers == tuple(range(len(layers)))


def _to_host(records: list) -> dict[int, Any]:
    """Every device value of a batch on the host, by record: CPU tensors are read directly,
    accelerator ones with one copy per device and dtype (never one sync per value). A
    scalar record becomes its dict of floats, a vitals record a steps x parameters matrix
    of squared norms (the CPU's come squared; the sums of squares are what the layers need)."""
    groups: dict[tuple, list[tuple[int, str | None, torch.Tensor]]] = {}
    out: dict[int, Any] = {}
    for record in records:
        if isinstance(record, ScalarRecord):
            values = out[id(record)] = dict(record.values)  # keeps the user's order of names
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    if value.device.type == "cpu":
                        values[name] = float(value)
                    else:
                        groups.setdefault((value.device, value.dtype), []).append((id(record), name, value))
        elif isinstance(record, VitalsRecord):
            steps = out[id(record)] = [None] * len(record.norms)
            for i, norms in enumerate(record.norms):
                if isinstance(norms, list):  # CPU squared norms, read on the training thread
                    steps[i] = norms
                elif norms.device.type == "cpu":
                    steps[i] = np.square(norms.detach().numpy().astype(np.float64))
                else:
                    groups.setdefault((norms.device, norms.dtype), []).append((id(record), i, norms.detach()))
    for (device, _), entries in groups.items():
        host_dtype = torch.float32 if device.type == "mps" else torch.float64
        flat = torch.cat([v.reshape(-1) for _, _, v in entries]).to(host_dtype).cpu().numpy()
        offset = 0
        for key, name, value in entries:
            n = value.numel()
            if isinstance(name, int):  # a step of a vitals record
                out[key][name] = np.square(flat[offset:offset + n].astype(np.float64))
            else:
                out[key][name] = float(flat[offset])
            offset += n
    for record in records:
        if isinstance(record, VitalsRecord):
            out[id(record)] = np.array(out[id(record)], dtype=np.float64)  # steps x parameters, squared
    return out
