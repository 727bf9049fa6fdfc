"""A run's spool: the batches a server has not acknowledged yet, on disk, in order, bounded.

One JSON line per batch in ``<spool>/<run>.jsonl``, fsync'd, and the byte position up to
which the server acknowledged them in ``<run>.sent``, so a batch is sent again only if
its acknowledgement was lost. The file returns to empty whenever everything in it is
acknowledged.

**The bound.** During a long outage the spool would grow with the run, so it holds at
most ``SPOOL_LIMIT_BYTES`` (1 GiB per run; ``BABYSIT_SPOOL_LIMIT=500M`` overrides it, in
bytes or with a K, M or G suffix). What it keeps at the bound is the oldest, in full:
a replay is in order, and a run's start and early history are what a reader needs to
make sense of the rest. Past ``BULK_SHARE`` (80 %) of the bound, new layer statistics,
filter images and input statistics (the bulk: tens of kB per sampled step) are dropped;
the vital signs (losses and other scalars, flags; 100 to 200 bytes each) go on into the
last 20 %, which holds over a million losses at the default bound; at the bound they are
dropped too. A run's ``run_start``, ``status`` and ``run_end`` (one start, a few status
changes and one end per process) are always kept, so the server learns how the run ended. Every dropped
event is counted by kind, said once in the log, and added to the ``dropped`` count of the
run's ``run_end``. Dropped events leave gaps in the run's seqs; nothing already spooled
is ever dropped, and nothing blocks or raises into the training.

**A spool whose own disk fails** (full, read-only): a line that could not be written is
cut off again (a partial line would corrupt the batch after it) and the batches are held
in memory, at most ``SPOOL_MEMORY_BYTES`` (the same bound and order of dropping apply),
in order after the spooled ones. They are sent from memory when the server takes them,
and written to the spool as soon as the disk takes them again. Said once per outage.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter, deque
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from monitor import codec
from monitor.events import Event, Kind

log = logging.getLogger("babysit")

#: Most bytes one run's spool file holds (un-acknowledged batches); env BABYSIT_SPOOL_LIMIT.
SPOOL_LIMIT_BYTES = 1 << 30
SPOOL_LIMIT_ENV = "BABYSIT_SPOOL_LIMIT"
#: Share of the bound up to which bulky events are spooled; the rest is for the vital signs.
BULK_SHARE = 0.8
#: Most bytes of batches held in memory while the spool's disk cannot be written.
SPOOL_MEMORY_BYTES = 64 << 20

#: Large per event, and not needed to tell whether a run is healthy: dropped first.
BULK_KINDS = frozenset({Kind.LAYER_STATS, Kind.FILTERS, Kind.INPUT_STATS})
#: A few per process, and needed to know how a run started and ended: never dropped.
LIFECYCLE_KINDS = frozenset({Kind.RUN_START, Kind.STATUS, Kind.RUN_END})

_SIZE = re.compile(r"\s*(\d+)\s*([kmg]?)i?b?\s*", re.IGNORECASE)


def spool_limit(value: str | int | None = None) -> int:
    """The bound in bytes: ``value``, else ``$BABYSIT_SPOOL_LIMIT``, else the default."""
    if value is None:
        value = os.environ.get(SPOOL_LIMIT_ENV) or SPOOL_LIMIT_BYTES
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = _SIZE.fullmatch(str(value))
        if match is None:
            raise ValueError(f"{SPOOL_LIMIT_ENV}: expected a number of bytes such as 500M, 2G or 1048576, "
                             f"got {value!r}")
        number = int(match[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[match[2].lower()]
    if number <= 0:
        raise ValueError(f"{SPOOL_LIMIT_ENV}: expected a positive number of bytes such as 500M, got {value!r}")
    return number


def event_text(event: Event, text: str) -> str:
    """One event as the server's ``batch`` handler reads it, its payload spliced in as encoded."""
    return ('{"run":%s,"seq":%d,"step":%d,"wall":%s,"kind":"%s","data":%s}'
            % (json.dumps(event.run), event.seq, event.step, json.dumps(event.wall), event.kind.value, text))


class Spool:
    """The un-acknowledged batches of one run: :meth:`add` new ones, :meth:`peek` the oldest
    unsent one and :meth:`ack` it once the server has; see the module doc for the bound."""

    def __init__(self, folder: str | os.PathLike, run: str, limit: int | str | None = None,
                 memory_limit: int = SPOOL_MEMORY_BYTES):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.run = run
        self.path = folder / f"{run}.jsonl"
        self.position_file = folder / f"{run}.sent"
        self.limit = spool_limit(limit)
        self.memory_limit = memory_limit
        self.position = int(self.position_file.read_text() or 0) if self.position_file.exists() else 0
        self.dropped: Counter[str] = Counter()  # events not spooled at the bound, by kind
        self._size = _cut_torn_line(self.path)
        self._held: deque[bytes] = deque()  # lines the disk did not take yet, in order
        self._held_bytes = 0
        self._peeked: tuple[bytes, bool] | None = None  # the line peek returned, and whether it was held
        self._said: set[str] = set()

    def pending(self) -> int:
        """Bytes not acknowledged yet: the spool file's unsent part and the lines held in memory."""
        return max(self._size - self.position, 0) + self._held_bytes

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def held_bytes(self) -> int:
        """Bytes held in memory because the spool's disk did not take them (lost if the
        process ends before the server or the disk takes them)."""
        return self._held_bytes

    def add(self, events: Sequence[Event], texts: Sequence[str]) -> None:
        """Spool a batch, or what of it the bound admits; never raises for the disk."""
        pieces: list[str] = []
        added = 2  # the line's brackets; each piece adds its comma or the newline
        for event, text in zip(events, texts):
            if event.kind is Kind.RUN_END and self.dropped_total:  # the run's end tells the user
                text = codec.encode_payload(replace(event.data, dropped=event.data.dropped + self.dropped_total))
            piece = event_text(event, text)
            cost = len(piece.encode("utf-8")) + 1
            if event.kind in LIFECYCLE_KINDS or self._fill(added + cost) <= (
                    BULK_SHARE if event.kind in BULK_KINDS else 1.0):
                pieces.append(piece)
                added += cost
            else:
                self._drop(event.kind)
        if pieces:
            line = ("[" + ",".join(pieces) + "]\n").encode("utf-8")
            self._held.append(line)
            self._held_bytes += len(line)
        self._persist()

    def peek(self) -> bytes | None:
        """The oldest batch not acknowledged yet (its line, JSON text as UTF-8), or None."""
        if self.position < self._size:
            with open(self.path, "rb") as f:
                f.seek(self.position)
                line = f.readline()
            self._peeked = (line, False)
            return line
        if self._held:
            self._peeked = (self._held[0], True)
            return self._held[0]
        return None

    def ack(self) -> None:
        """The batch :meth:`peek` returned is acknowledged: move past it."""
        line, held = self._peeked
        self._peeked = None
        if held:
            self._held.popleft()
            self._held_bytes -= len(line)
            return
        self.position += len(line)
        if self.position >= self._size:  # all acknowledged: start afresh
            try:
                os.truncate(self.path, 0)
                self._size = self.position = 0
            except OSError:
                pass
        self._save_position()

    # ------------------------------------------------------------------ internals

    def _fill(self, extra: int) -> float:
        """How full the spool would be with ``extra`` more bytes (1.0: at the bound)."""
        fill = (self._size + self._held_bytes + extra) / self.limit
        if self._held:  # the disk failed: memory is the bound now
            fill = max(fill, (self._held_bytes + extra) / min(self.limit, self.memory_limit))
        return fill

    def _drop(self, kind: Kind) -> None:
        self.dropped[kind.value] += 1
        tier = "bulk" if kind in BULK_KINDS else "vital"
        if tier in self._said:
            return
        self._said.add(tier)
        where = "memory (its disk fails)" if self._held else f"{self.path}"
        if tier == "bulk":
            log.warning("babysit: the spool of run %s is %.0f%% full (bound %s in %s, %s) while the server "
                        "does not take it: new layer statistics, filters and input statistics are dropped; "
                        "losses, flags and the run's status are still kept; the run's end counts what was "
                        "dropped", self.run, 100 * BULK_SHARE, _size(self.limit), where, SPOOL_LIMIT_ENV)
        else:
            log.warning("babysit: the spool of run %s is at its bound (%s in %s, %s): every new event but the "
                        "run's start, status and end is dropped until the server takes the spool; the run's "
                        "end counts what was dropped", self.run, _size(self.limit), where, SPOOL_LIMIT_ENV)

    def _persist(self) -> None:
        """Write the held lines to the spool file, all or none (a failed write is cut off)."""
        if not self._held:
            return
        start = self._size
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            return self._unwritable(exc)
        try:
            for line in self._held:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, start)  # no partial line: it would corrupt the next batch
            except OSError:
                pass
            return self._unwritable(exc)
        finally:
            os.close(fd)
        self._size = start + self._held_bytes
        self._held.clear()
        self._held_bytes = 0
        if "disk" in self._said:
            self._said.discard("disk")
            log.warning("babysit: the spool %s takes writes again; what was held in memory is in it", self.path)

    def _unwritable(self, exc: OSError) -> None:
        if "disk" not in self._said:
            self._said.add("disk")
            log.warning("babysit: cannot write the spool %s (%s): holding up to %s of batches in memory, "
                        "sent from there when the server takes them and written when the disk does",
                        self.path, exc.strerror or exc, _size(min(self.limit, self.memory_limit)))

    def _save_position(self) -> None:
        """The acknowledged position, for a process that resumes the spool; when the disk does
        not take it the position in memory still holds (a restart would only resend batches
        the server stores once)."""
        tmp = self.position_file.with_suffix(".tmp")
        try:
            tmp.write_text(str(self.position))
            os.replace(tmp, self.position_file)
        except OSError:
            pass


def _cut_torn_line(path: Path) -> int:
    """The spool's size after cutting off a line a process that died mid-write left torn
    (never acknowledged, and it would corrupt the batch written after it)."""
    try:
        f = open(path, "rb+")
    except FileNotFoundError:
        return 0
    except OSError:  # a read-only spool: read as it is (sending needs no writing)
        return path.stat().st_size
    with f:
        end = keep = f.seek(0, os.SEEK_END)
        while keep > 0:  # back to the last newline, 4 kB at a time
            start = max(keep - 4096, 0)
            f.seek(start)
            chunk = f.read(keep - start)
            if b"\n" in chunk:
                keep = start + chunk.rindex(b"\n") + 1
                break
            keep = start
        if keep < end:
            f.truncate(keep)
        return keep


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"
