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

**Several server processes** (``shared``: a message queue or a database store, the
scaled-out shape of docs/scale-out.md) see each trainer on one process only, so they judge
by what all of them heard: each process writes when it last heard its runs into the
store's ``heard_runs`` (:meth:`monitor.store.Store.note_heard`), at most once per check and
in one transaction, and each check reads the table back (:meth:`~monitor.store.Store.last_heard`).
A run is silent since the latest hearing by any process (one before this process started
counts as none: the restart grace above holds). A run that another process marked lost is
revived by the process that hears its trainer again, at its next check. Which process
marks a run lost or back does not matter: the store lets one of them do it, and with a
message queue the run's viewers on every process are told. Alone (SQLite, no queue) a
process writes nothing of this.

Clocks: the shared times are unix seconds of the hearing process's clock, compared with
the judging process's. Server machines are assumed to keep their clocks in step (NTP, a
skew well under a second, against a timeout of half a minute); a skew of ``d`` seconds
makes one machine judge a run of the other ``d`` seconds early or late. Processes on one
machine share its clock.
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

log = logging.getLogger("babysit.server")

#: Seconds between two checks for silent runs at most (a quarter of ``lost_after`` when
#: that is shorter): a run is marked at most this long after its timeout ran out.
CHECK_SECONDS = 1.0


class Liveness:
    """When each run was last heard from, and the task that marks silent runs lost.

    ``heard(runs)`` from the ingest handlers; :meth:`start` at first use (a trainer's
    connection, a page or REST request: the app factory starts nothing); :meth:`stop`
    with the server. ``clock``: monotonic seconds (for a test that wants its own).
    ``shared``: several server processes share the store (see the module doc)."""

    def __init__(self, app, lost_after: float, *, clock=time.monotonic, shared: bool = False):
        self.app = app
        self.lost_after = lost_after
        self.shared = shared
        self.host = socket.gethostname()
        self._clock = clock
        self._born = clock()  # runs not heard since are silent since then
        self._heard: dict[str, tuple[float, str | None]] = {}  # run -> (when, the address it reached us at)
        self._unshared: dict[str, float] = {}  # shared: run -> unix time heard, not yet written to the store
        self._heard_at: dict[str, float] = {}  # shared: run -> unix time this process last heard it
        self._share_failing = False
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
        now, wall = self._clock(), time.time()
        runs = list(dict.fromkeys(runs))
        with self._lock:
            for run in runs:
                self._heard[run] = (now, base_url)
                if self.shared:
                    self._unshared[run] = self._heard_at[run] = wall
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
        elsewhere = self._share(now) if self.shared else {}
        active = self.app.store.active_runs()
        silent = []
        with self._lock:
            for run, host, started in active:
                when, _ = self._heard.get(run, (None, None))
                other = elsewhere.get(run)
                if other is not None and other > self._born and (when is None or other > when):
                    when = other  # heard by another process, later
                quiet = now - (self._born if when is None else when)
                if quiet >= self.lost_after:
                    silent.append((run, host, started, quiet, when is not None))
            names = {run for run, _, _ in active}  # forget what no longer matters
            self._heard = {run: v for run, v in self._heard.items() if run in names or now - v[0] < self.lost_after}
            self._heard_at = {run: v for run, v in self._heard_at.items() if run in self._heard}
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

    def _share(self, now: float) -> dict[str, float]:
        """With other server processes: write what this one heard since the last check (one
        transaction), revive the runs another marked lost that this one heard since, and
        return when any process last heard each active run, on this process's ``clock``."""
        with self._lock:
            heard, self._unshared = self._unshared, {}
        try:
            self.app.store.note_heard(heard)
        except Exception as exc:  # the store takes no writes now: judge by what can be read
            with self._lock:  # kept for the next check; a later hearing of the same run wins
                self._unshared = {**heard, **self._unshared}
            if not self._share_failing:
                log.warning("babysit: could not tell the other server processes which runs this one heard "
                            "(%s: %s); they may mark its runs lost until it can", type(exc).__name__, exc)
            self._share_failing = True
        else:
            self._share_failing = False
        wall = time.time()
        lost = self.app.store.lost_runs()
        with self._lock:
            back = [run for run, (at, _) in lost.items() if self._heard_at.get(run, -math.inf) > at]
            self._lost = set(lost).difference(back)
        for run in back:
            self._revive(run)
        return {run: now - (wall - at) for run, at in self.app.store.last_heard().items()}

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
        """The run's room and the index (of every server process, with a message queue),
        through the same bounded fan-out as its events (:mod:`web.fanout`)."""
        socketio = self.app.socketio
        socketio.emit(protocol.RUN_STATUS, {"run": run, "status": status, "reason": reason, "at": at},
                      to=protocol.room(run), namespace=protocol.DASHBOARD_NAMESPACE)
        socketio.emit(protocol.RUNS_CHANGED, {"runs": [run]}, to=protocol.INDEX_ROOM,
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
