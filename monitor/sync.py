"""What ``babysit sync`` uploads: the runs a logdir's store and spools hold, in seq order, in batches.

A run recorded offline lives in a logdir's store (``<logdir>/babysit.sqlite3``), in a
trainer's spool (``<logdir>/spool/<run>.jsonl``: the batches its server never
acknowledged, one JSON list of events per line, :mod:`trainer_hooks.spool`), or in both
(a run streamed to an embedded dashboard). Both hold the same ``(run, seq)`` events, so
they are merged by seq and each event is read once; the server's ``(run, seq)`` key
stores each once however often they are sent. This module finds the sources, plans the
runs and cuts their encoded events into batches; it sends nothing
(:mod:`trainer_hooks.upload` does) and never writes to what it reads.
"""
from __future__ import annotations

import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from monitor import codec
from monitor.events import Event, Kind
from monitor.store import DB_FILENAME, RunStore
from monitor.validation import SchemaError, is_run_id

#: Where a trainer that streams to a server keeps its spool, under its logdir (trainer_hooks.handle).
SPOOL_FOLDER = "spool"
#: Events read from the store at a time: a run of millions of events never sits in memory whole.
STORE_PAGE = 2000
#: What to give, said by every error about the path.
_GIVE = ("give a logdir (holding babysit.sqlite3 and/or spool/), a spool folder, or a spool file "
         "(<run>.jsonl)")


class SyncError(Exception):
    """A problem the user can fix (a path with nothing to upload, an unknown run, a
    damaged spool line), said in one line."""


@dataclass(frozen=True)
class Sources:
    """Where the runs are: a logdir with a store (or None) and spool files, oldest name first."""

    store: Path | None
    spools: tuple[Path, ...]


def find_sources(path: str | os.PathLike) -> Sources:
    """The store and spools at ``path``: a logdir (its store and its ``spool/``), a spool
    folder, or one spool file. :class:`SyncError` when it holds neither."""
    place = Path(path)
    if not place.exists():
        raise SyncError(f"no such file or directory: {str(path)!r}: {_GIVE}")
    if place.is_file():
        if not _is_spool_file(place):
            raise SyncError(f"{str(path)!r} is not a spool file (<run>.jsonl, as a trainer leaves in "
                            f"LOGDIR/spool): {_GIVE}")
        return Sources(None, (place,))
    store = place if (place / DB_FILENAME).is_file() else None
    spools = tuple(_spool_files(place / SPOOL_FOLDER)) + tuple(_spool_files(place))
    if store is None and not spools:
        raise SyncError(f"nothing to upload in {str(path)!r}: no run store ({DB_FILENAME}) and no spool "
                        f"(<run>.jsonl, or {SPOOL_FOLDER}/<run>.jsonl) in it: {_GIVE}")
    return Sources(store, spools)


def _spool_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.jsonl") if _is_spool_file(p)) if folder.is_dir() else []


def _is_spool_file(path: Path) -> bool:
    """``<run>.jsonl``; ``<run>.refused.jsonl`` holds batches the server refused for good,
    set aside for a person, never resent."""
    return path.suffix == ".jsonl" and is_run_id(path.stem) and not path.stem.endswith(".refused")


def read_spool(path: Path) -> list[Event]:
    """Every event of a spool file, validated as the server's ``batch`` handler validates
    them (:func:`monitor.codec.loads`, :meth:`Event.from_dict`). A last line without its
    newline is a write its process did not finish (never acknowledged, and the trainer's
    :class:`~trainer_hooks.spool.Spool` cuts it off too): skipped. The file is not changed."""
    events: list[Event] = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                break
            try:
                batch = codec.loads(line)
                if not isinstance(batch, list):
                    raise SchemaError(f"expected a JSON list of events, got {type(batch).__name__}")
                events += (Event.from_dict(item) for item in batch)
            except (SchemaError, TypeError, ValueError, OverflowError) as exc:
                raise SyncError(f"{path}, line {number}: not a batch of events ({exc}); move the file "
                                "aside, or fix the line, and sync again") from None
    return events


@dataclass
class RunPlan:
    """One run to upload: its events in the store (``store``, or None) and in spool files."""

    run: str
    name: str
    store: RunStore | None = None
    spooled: list[Event] = field(default_factory=list)  # sorted by seq
    spools: list[Path] = field(default_factory=list)

    def events(self) -> Iterator[Event]:
        """Every event once, in seq order: the store's and the spools' merged (the same
        ``(run, seq)`` in both is the same event; the store's copy is taken)."""
        last = None
        for event in heapq.merge(self._stored(), self.spooled, key=lambda e: e.seq):
            if event.seq != last:
                last = event.seq
                yield event

    def _stored(self) -> Iterator[Event]:
        if self.store is None:
            return
        after = -1
        while page := self.store.events(self.run, after_seq=after, limit=STORE_PAGE):
            yield from page
            after = page[-1].seq


def plan(sources: Sources, store: RunStore | None) -> list[RunPlan]:
    """Every run the sources hold (``store``: the opened store of ``sources.store``), in
    the order the store lists them (newest first), then the spool-only ones."""
    plans: dict[str, RunPlan] = {}
    if store is not None:
        for info in store.runs():
            plans[info.run] = RunPlan(info.run, info.name, store)
    for path in sources.spools:
        by_run: dict[str, list[Event]] = {}
        for event in read_spool(path):
            by_run.setdefault(event.run, []).append(event)
        for run, events in by_run.items():
            entry = plans.setdefault(run, RunPlan(run, _name(events) or run))
            entry.spooled.extend(events)
            entry.spools.append(path)
        if not by_run:  # an empty spool (everything acknowledged): its run may still be asked for
            plans.setdefault(path.stem, RunPlan(path.stem, path.stem)).spools.append(path)
    for entry in plans.values():
        entry.spooled.sort(key=lambda e: e.seq)
        if entry.name == entry.run:
            entry.name = _name(entry.spooled) or entry.run
    return list(plans.values())


def _name(events: Iterable[Event]) -> str | None:
    return next((e.data.name for e in events if e.kind is Kind.RUN_START), None)


def select(plans: list[RunPlan], wanted: Sequence[str]) -> list[RunPlan]:
    """The plans ``wanted`` names by run id or name (a name selects every run of that name);
    all of them when ``wanted`` is empty; :class:`SyncError` for a key that matches none."""
    if not wanted:
        return plans
    for key in wanted:
        if not any(key in (p.run, p.name) for p in plans):
            known = ", ".join(f"{p.run} ({p.name})" for p in plans[:10]) + (", ..." if len(plans) > 10 else "")
            raise SyncError(f"--run {key}: no run of that id or name here; the runs are: {known or 'none'}")
    return [p for p in plans if p.run in wanted or p.name in wanted]


@dataclass(frozen=True)
class Batch:
    """Events of one run as the JSON text of one ``batch`` message, and which seqs it holds."""

    text: str
    first_seq: int
    last_seq: int
    count: int


def batches(run: str, items: Iterable[tuple[int, str]], max_chars: int, max_events: int) -> Iterator[Batch]:
    """``(seq, event text)`` pairs (in seq order) packed into batches of at most
    ``max_chars`` characters of JSON and ``max_events`` events. One event longer than
    ``max_chars`` on its own can never be sent: :class:`SyncError` naming it."""
    texts: list[str] = []
    first = last = 0
    size = 2  # the list's brackets; each event adds its comma
    for seq, text in items:
        if len(text) + 2 > max_chars:
            raise SyncError(f"run {run}, seq {seq}: one event of {len(text)} bytes, more than the "
                            f"{max_chars} the server reads in one message; it cannot be uploaded")
        if texts and (size + len(text) + 1 > max_chars or len(texts) == max_events):
            yield Batch("[" + ",".join(texts) + "]", first, last, len(texts))
            texts, size = [], 2
        if not texts:
            first = seq
        texts.append(text)
        size += len(text) + 1
        last = seq
    if texts:
        yield Batch("[" + ",".join(texts) + "]", first, last, len(texts))
