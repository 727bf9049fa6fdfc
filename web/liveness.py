"""Liveness: a run whose training process went silent is marked ``lost``; heard again, it is back.

A trainer that dies without a word (SIGKILL, out of memory, its machine gone) sends no
``run_end``, so without this its run would show ``running`` for ever. Every trainer's
sender sends a heartbeat (:data:`monitor.protocol.HEARTBEAT`) every
:data:`~monitor.protocol.HEARTBEAT_SECONDS` even when it has nothing to log; a batch counts
as well. A background task checks every :data:`CHECK_SECONDS`: a running or stopping run
not heard from for ``lost_after`` seconds (``babysit serve --lost-after``, default
:data:`~monitor.protocol.LOST_AFTER_SECONDS`) is marked lost in the store
(:meth:`monitor.store.RunStore.mark_lost`: the row's status, when and why; no event, the
seqs are the trainer's), and its room, the index and the alerts are told. When the run is
heard from again it gets back the status it had, and its room and the index are told.

Since when a run is silent:

* a run heard by this server: since its last batch or heartbeat;
* one not heard since this server started (the server restarted; a process that writes
  straight into the store, with no server): since the server started, so that its trainer
  has ``lost_after`` to reconnect. A process writing straight into the store has no
  heartbeat to send, so when its ``run_start`` says it runs on this machine, its process
  is asked instead: while that pid is alive (not a zombie), the run is not lost.

An open connection alone is not counted as life: a connection whose peer vanished stays
open until engine.io's ping times out (45 s by default), and a wedged sender's client
threads still answer pings; the heartbeat is what the trainer's sender itself says.

What was heard is kept in this server process: several server processes behind a proxy
(ARCHITECTURE.md, scaling out) would have to share it through the store.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from typing import Iterable

from monitor import protocol
from monitor.events import Kind
from web import fanout

log = logging.getLogger("babysit.server")

#: Seconds between two checks for silent runs at most (a quarter of ``lost_after`` when
#: that is shorter): a run is marked at most this long after its timeout ran out.
CHECK_SECONDS = 1.0


class Liveness:
    """When each run was last heard from, and the task that marks silent runs lost.

    ``heard(runs)`` from the ingest handlers; :meth:`start` at first use (a trainer's
    connection, a page or REST request: the app factory starts nothing); :meth:`stop`
    with the server. ``clock``: monotonic seconds (for a test that wants its own)."""

    def __init__(self, app, lost_after: float, *, clock=time.monotonic):
        self.app = app
        self.lost_after = lost_after
        self.host = socket.gethostname()
        self._clock = clock
        self._born = clock()  # runs not heard since are silent since then
        self._heard: dict[str, tuple[float, str | None]] = {}  # run -> (when, the address it reached us at)
        self._lost: set[str] = set()  # runs marked lost, here or by this server's previous life
        self._processes: dict[str, tuple[float, str, int]] = {}  # run -> (started, host, pid) of its run_start
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._task = None
        self._last_error = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the checking task once (cheap when it runs already)."""
        if self._task is not None or self._stopping.is_set():
            return
        with self._lock:
            if self._task is not None or self._stopping.is_set():
                return
            try:
                self._lost = set(self.app.store.lost_runs())
            except Exception as exc:  # an unreadable store: the checks will say so
                log.warning("babysit: could not read the lost runs (%s: %s)", type(exc).__name__, exc)
            self._task = self.app.socketio.start_background_task(self._loop)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the checking task (with the server)."""
        self._stopping.set()
        task = self._task
        if task is not None and task is not threading.current_thread():
            task.join(timeout)

    # ------------------------------------------------------------------ evidence

    def heard(self, runs: Iterable[str], base_url: str | None = None) -> None:
        """A batch or a heartbeat named these runs: their trainers are alive; a lost one is back."""
        self.start()
        now = self._clock()
        runs = list(dict.fromkeys(runs))
        with self._lock:
            for run in runs:
                self._heard[run] = (now, base_url)
            back = [run for run in runs if run in self._lost]
            self._lost.difference_update(back)
        for run in back:
            self._revive(run)

    # ------------------------------------------------------------------ checking

    def _loop(self) -> None:
        interval = min(CHECK_SECONDS, self.lost_after / 4)
        while not self._stopping.wait(interval):
            if self.app.store.closed:  # the server is gone
                return
            try:
                self.check()
            except Exception as exc:  # a store that fails now (disk, lock): said once, tried again
                error = f"{type(exc).__name__}: {exc}"
                if error != self._last_error:
                    log.warning("babysit: could not check for lost runs (%s); trying again", error)
                self._last_error = error

    def check(self) -> list[str]:
        """Mark the runs that fell silent lost; return them."""
        now = self._clock()
        active = self.app.store.active_runs()
        silent = []
        with self._lock:
            for run, host, started in active:
                when, _ = self._heard.get(run, (None, None))
                quiet = now - (self._born if when is None else when)
                if quiet >= self.lost_after:
                    silent.append((run, host, started, quiet, when is not None))
            names = {run for run, _, _ in active}  # forget what no longer matters
            self._heard = {run: v for run, v in self._heard.items() if run in names or now - v[0] < self.lost_after}
            self._processes = {run: v for run, v in self._processes.items() if run in names}
        marked = []
        for run, host, started, quiet, streamed in silent:
            if streamed:
                reason = f"no heartbeat for {quiet:.0f} s"
            elif host == self.host:
                alive, pid = self._process(run, started)
                if alive:
                    continue  # a process writing straight into the store, still running
                reason = (f"its process (pid {pid}) ended without ending the run" if pid else
                          f"no heartbeat in the {quiet:.0f} s since the server started")
            else:
                reason = f"no heartbeat in the {quiet:.0f} s since the server started"
            at = time.time()
            if not self.app.store.mark_lost(run, reason, at):
                continue  # it ended meanwhile
            with self._lock:
                when, base_url = self._heard.get(run, (None, None))
                back = when is not None and now - when < self.lost_after  # heard while we marked it
                if not back:
                    self._lost.add(run)
            if back:
                self._revive(run)
                continue
            marked.append(run)
            self._announce_lost(run, reason, at, base_url)
        return marked

    def _process(self, run: str, started: float) -> tuple[bool, int]:
        """Whether the process of the run's ``run_start`` on this machine is alive, and its pid."""
        cached = self._processes.get(run)
        if cached is None or cached[0] != started:  # a resumed run has a new start, and a new process
            start = self.app.store.latest(run, Kind.RUN_START)
            cached = (started, start.data.host, start.data.pid) if start is not None else (started, "", 0)
            self._processes[run] = cached
        _, host, pid = cached
        return host == self.host and pid_alive(pid), pid

    # ------------------------------------------------------------------ telling

    def _announce_lost(self, run: str, reason: str, at: float, base_url: str | None) -> None:
        log.warning("babysit: run %s is lost: %s", run, reason)
        self._tell(run, "lost", reason, at)
        if self.app.alerts is not None:
            info = self.app.store.run_info(run)
            self.app.alerts.lost(run, info.last_step if info else 0, at, reason, base_url,
                                 info.name if info else None, info.host if info else None)

    def _revive(self, run: str) -> None:
        try:
            back = self.app.store.mark_alive(run)
            info = self.app.store.run_info(run) if back else None
        except Exception as exc:  # the store cannot take it now: the next heartbeat tries again
            with self._lock:
                self._lost.add(run)
            log.warning("babysit: run %s was heard again but could not be marked so (%s: %s)",
                        run, type(exc).__name__, exc)
            return
        if info is not None:
            log.warning("babysit: run %s is back (%s)", run, info.status)
            self._tell(run, info.status, "", time.time())

    def _tell(self, run: str, status: str, reason: str, at: float) -> None:
        """The run's room and the index, through the same bounded fan-out as its events."""
        live = fanout.for_server(self.app.socketio)
        live.emit(protocol.RUN_STATUS, {"run": run, "status": status, "reason": reason, "at": at},
                  to=protocol.room(run), namespace=protocol.DASHBOARD_NAMESPACE)
        live.emit(protocol.RUNS_CHANGED, {"runs": [run]}, to=protocol.INDEX_ROOM,
                  namespace=protocol.DASHBOARD_NAMESPACE)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running. A zombie (killed, not yet reaped
    by its parent) is not. On Windows, where ``os.kill(pid, 0)`` would end the process,
    False: such runs get the timeout like any other."""
    if pid <= 0 or sys.platform == "win32":
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether it exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rpartition(")")[2].split()[0]  # after "pid (command)"
    except (OSError, IndexError):
        return True  # no /proc (macOS): it exists
    return state not in ("Z", "X")


def check_lost_after(value) -> float:
    """``lost_after`` as seconds, or a ValueError that says what to pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"lost_after: expected the seconds of silence after which a run is marked lost, a number "
                         f"above 0 (default {protocol.LOST_AFTER_SECONDS:g}; a few heartbeats of "
                         f"{protocol.HEARTBEAT_SECONDS:g} s), got {value!r}")
    return float(value)
