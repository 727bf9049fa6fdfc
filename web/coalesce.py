"""The runs index told what changed at most every half second, not once a batch.

Why: the index page (``runs_changed`` on ``/dashboard``) reloads its list at most every
500 ms whatever it is told, while a busy server stores hundreds of batches a second, and
with a message queue every notice is also a message to Redis and to each other server
process. So the runs named by the batches of one interval go out together: the first
notice after a quiet interval at once, the rest at the end of the interval it falls in.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

#: Seconds between two notices at most (the index page's own reload interval).
INTERVAL_SECONDS = 0.5


class Coalesced:
    """``send(runs)`` at most every ``interval`` seconds with every run noted meanwhile.
    ``start_later(fn)`` runs ``fn`` in the background (the server's ``start_background_task``:
    a thread, or a greenlet under gevent); ``sleep`` is the matching sleep."""

    def __init__(self, send: Callable[[list[str]], None], start_later: Callable, sleep: Callable[[float], None],
                 interval: float = INTERVAL_SECONDS):
        self._send, self._start_later, self._sleep, self.interval = send, start_later, sleep, interval
        self._lock = threading.Lock()
        self._pending: dict[str, None] = {}  # runs in the order they were noted
        self._last = -float("inf")  # when the last notice went
        self._scheduled = False

    def note(self, runs: Iterable[str]) -> None:
        with self._lock:
            self._pending.update(dict.fromkeys(runs))
            if self._scheduled or not self._pending:
                return
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                self._scheduled = True
            else:
                runs, self._pending, self._last = list(self._pending), {}, time.monotonic()
        if wait > 0:
            self._start_later(self._later, wait)
        else:
            self._send(runs)

    def _later(self, wait: float) -> None:
        self._sleep(wait)
        with self._lock:
            runs, self._pending, self._last, self._scheduled = list(self._pending), {}, time.monotonic(), False
        if runs:
            self._send(runs)
