"""Group commit: the batches that arrive together are committed together, by one thread.

Why: a server with dozens of trainers receives dozens of batches at once, each on its own
handler thread. Each committing its own transaction costs a commit and a few round trips to
the database per batch, and in a threaded Python server every round trip also costs a wait
for the interpreter lock among all those threads (with 50 trainers on 2 processes a
handler spent most of its 400 ms waiting, on a server using half a core). So the handlers
hand their validated batches to one committer thread and wait; it takes everything waiting
(up to :data:`MAX_GROUP_EVENTS` events) and stores it in one transaction
(:meth:`monitor.store.interface.Store.append_batches`), then answers each handler with its
own count of new events. The guarantee is the store's, unchanged: a batch is acknowledged
only after the transaction holding it committed, and a replay stores nothing new.

A group that fails for a reason other than the store being unavailable (a value one batch
holds that the database refuses) is retried batch by batch, so one bad batch is refused
alone and the others are stored.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Sequence

from monitor.events import Event
from monitor.store import StoreUnavailable

#: Most events one group commit holds (a group of a few big batches stays one transaction of bounded size).
MAX_GROUP_EVENTS = 20_000
#: Seconds the committer waits for work before it looks whether its store was closed.
IDLE_POLL_SECONDS = 1.0


class GroupCommitter:
    """Commits batches for many handler threads through one thread (see the module doc)."""

    def __init__(self, store):
        self.store = store
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def append(self, events: Sequence[Event], texts: Sequence[str]) -> int:
        """Store one batch with whatever else is waiting; how many of its events were new.
        Raises what the store raised for it (:class:`StoreUnavailable` among them)."""
        done: Future = Future()
        self._inbox.put((events, texts, done))
        self._start()
        return done.result()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="babysit-group-commit", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                first = self._inbox.get(timeout=IDLE_POLL_SECONDS)
            except queue.Empty:
                if getattr(self.store, "closed", False):
                    return
                continue
            group, size = [first], len(first[0])
            while size < MAX_GROUP_EVENTS:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                group.append(item)
                size += len(item[0])
            self._commit(group)

    def _commit(self, group: list) -> None:
        try:
            counts = self.store.append_batches([(events, texts) for events, texts, _ in group])
        except StoreUnavailable as exc:  # the store cannot take any of them now
            for *_, done in group:
                done.set_exception(exc)
            return
        except BaseException as exc:  # noqa: BLE001 - one batch's value, perhaps: find which, alone
            if len(group) == 1:
                group[0][2].set_exception(exc)
                return
            for item in group:
                self._commit([item])
            return
        for (*_, done), count in zip(group, counts):
            done.set_result(count)
