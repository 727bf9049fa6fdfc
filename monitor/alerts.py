"""Alert policy: which stored events deserve an email, and when it goes out.

Pure decisions over events and a clock the caller passes in (no sockets, no sleeping), so
every rule is tested with scripted sequences; :mod:`monitor.mailer` acts on them.

Rules (thresholds in :mod:`monitor.alert_config`):

* a flag at or above ``alert_severity`` (default critical: an email should need action);
* a run that ends ``diverged`` or ``crashed`` (its ``status`` and ``run_end`` events become
  one alert, once per run: the ``status`` carries the reason, ``run_end`` the steps); a
  diverged end is not alerted again when a ``divergence`` flag of the run was: one story;
* a run the server marked ``lost`` (its training process went silent, :mod:`web.liveness`),
  like a crash, under the same switch; a run that keeps coming back and going silent
  again is alerted once per cool-down;
* one alert per (run, kind, layer) within ``alert_cooldown``: a detector that keeps
  firing, or every DDP rank reporting the same flag, sends one email, not hundreds;
* alerts gather for ``alert_gather`` seconds and go out together, and two emails are at
  least ``alert_interval`` apart: a burst (a divergence flags the loss, the first layer and
  the gradients at once) or a storm (a sweep of runs diverging together) is one digest.

Sample: ``[babysit] critical divergence in run digits-cnn-20250101-120000-ab12 at step 812:
loss is NaN (it was 2.31 at step 800)``.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping
from urllib.parse import quote

from monitor.alert_config import URL_PATTERN, AlertConfig
from monitor.events import Event, Flag, Kind, RunEnd, RunStart, RunState, Severity, Status

#: Alerts waiting for the next email at most; beyond, they are counted and the email says how many.
MAX_PENDING = 500
#: Runs remembered (their name, host, whether their end was alerted): enough for any server's
#: active runs; the oldest is forgotten first.
MAX_RUNS = 10_000
#: The kind of the alert for a run that ended diverged or crashed.
RUN_END = "run_end"
ABNORMAL_ENDS = (RunState.DIVERGED, RunState.CRASHED)
_RANK = {Severity.WARNING: 0, Severity.CRITICAL: 1}

END_ADVICE = {
    RunState.DIVERGED: "The run's divergence flags say where it started. Lower the learning rate (try 10x "
                       "lower) or add gradient clipping, and restart from a checkpoint before the divergence.",
    RunState.CRASHED: "The training process raised an exception: its traceback is in the process's output. "
                      "Everything recorded up to the crash is stored and shown on the run page.",
    RunState.LOST: "The training process stopped talking to the server without ending the run: it was killed "
                   "(out of memory, SIGKILL, a scheduler's time limit), its machine went down or the network "
                   "between them was cut. Check the process and its machine; the run is marked running again "
                   "if it comes back, and what it could not send is replayed from its spool.",
}


@dataclass(frozen=True)
class Alert:
    """One thing to tell a person: a flag, or a run's abnormal end."""

    run: str
    kind: str  # the flag's kind, or RUN_END
    severity: Severity
    step: int
    wall: float  # unix seconds of the event
    message: str
    advice: str
    layer: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    url: str | None = None  # the run's page
    name: str | None = None  # the run's name and host, when its start was seen
    host: str | None = None

    @property
    def key(self) -> tuple[str, str, str | None]:
        """What the cool-down counts per."""
        return (self.run, self.kind, self.layer)


def run_url(base: str | None, run: str) -> str | None:
    """The run page under ``base`` (``http://host:5000``), or None without a usable one."""
    if not base or not URL_PATTERN.fullmatch(base):
        return None
    return f"{base.rstrip('/')}/runs/{quote(run, safe='')}"


class Alerter:
    """The policy's state: cool-downs, pending alerts, runs whose end was alerted.

    ``observe(events, now)`` after each stored batch; ``due_at()`` says when the pending
    alerts should go out; ``take(now)`` hands them over (an email's worth). ``now`` is a
    monotonic clock in seconds; event times are only shown, never used for timing (a
    replayed spool carries old wall times).
    """

    def __init__(self, config: AlertConfig):
        self.config = config
        self.pending: list[Alert] = []
        self.overflow = 0  # alerts not kept because MAX_PENDING were waiting
        self.suppressed = 0  # alerts silenced by the cool-down
        self._last: dict[tuple, float] = {}  # key -> when it was last queued
        self._first_pending: float | None = None
        self._last_sent: float | None = None
        self._runs: OrderedDict[str, tuple[str, str]] = OrderedDict()  # run -> (name, host)
        self._ended: OrderedDict[str, bool] = OrderedDict()  # runs whose abnormal end was alerted
        self._diverged: OrderedDict[str, bool] = OrderedDict()  # runs whose divergence flag was alerted

    def observe(self, events: Iterable[Event], now: float, base_url: str | None = None) -> int:
        """Queue the alerts these stored events call for; return how many were queued."""
        base_url = self.config.public_url or base_url
        queued = 0
        for event in events:
            kind = event.kind
            if kind is Kind.FLAG:
                queued += self._flag(event, now, base_url)
            elif kind is Kind.STATUS or kind is Kind.RUN_END:
                queued += self._end(event, now, base_url)
            elif kind is Kind.RUN_START:
                self._remember(event.run, event.data)
        return queued

    def lost(self, run: str, step: int, wall: float, reason: str, now: float, base_url: str | None = None,
             name: str | None = None, host: str | None = None) -> int:
        """Queue the alert for a run the server marked lost at ``wall`` (unix seconds, shown),
        its last step ``step``; return how many were queued (0 or 1). ``name`` and ``host``
        stand in when its start was not seen (it started before this server did)."""
        if not self.config.alert_on_end:
            return 0
        key = (run, RunState.LOST.value, None)
        last = self._last.get(key)
        if last is not None and now - last < self.config.alert_cooldown:
            self.suppressed += 1
            return 0
        self._last[key] = now
        evidence = {"state": RunState.LOST.value, "reason": reason}
        name, host = self._runs.get(run, (name, host))
        return self._queue(Alert(run, RUN_END, Severity.CRITICAL, step, wall, _end_message(run, evidence, step),
                                 END_ADVICE[RunState.LOST], None, evidence,
                                 run_url(self.config.public_url or base_url, run), name, host), now)

    def due_at(self) -> float | None:
        """When the pending alerts should be sent (monotonic seconds), or None when none wait."""
        if not self.pending:
            return None
        due = self._first_pending + self.config.alert_gather
        if self._last_sent is not None:
            due = max(due, self._last_sent + self.config.alert_interval)
        return due

    def take(self, now: float, force: bool = False) -> tuple[list[Alert], int]:
        """The alerts due by ``now`` (all of them with ``force``) and how many more were
        dropped for lack of room; ``([], 0)`` when nothing is due. Counts as sent."""
        due = self.due_at()
        if due is None or (now < due and not force):
            return [], 0
        alerts, overflow = self.pending, self.overflow
        self.pending, self.overflow, self._first_pending = [], 0, None
        self._last_sent = now
        self._forget_expired(now)
        return alerts, overflow

    # ------------------------------------------------------------------ rules

    def _flag(self, event: Event, now: float, base_url: str | None) -> int:
        flag: Flag = event.data
        if _RANK[flag.severity] < _RANK[self.config.alert_severity]:
            return 0
        key = (event.run, flag.kind, flag.layer)
        last = self._last.get(key)
        if last is not None and now - last < self.config.alert_cooldown:
            self.suppressed += 1
            return 0
        self._last[key] = now
        if flag.kind == "divergence":
            self._diverged[event.run] = True
            _bound(self._diverged)
        name, host = self._runs.get(event.run, (None, None))
        return self._queue(Alert(event.run, flag.kind, flag.severity, event.step, event.wall, flag.message,
                                 flag.advice, flag.layer, flag.evidence, run_url(base_url, event.run), name, host),
                           now)

    def _end(self, event: Event, now: float, base_url: str | None) -> int:
        data: Status | RunEnd = event.data
        if not self.config.alert_on_end or data.state not in ABNORMAL_ENDS:
            return 0
        if data.state is RunState.DIVERGED and event.run in self._diverged:
            return 0  # its divergence flag told it
        evidence = ({"state": data.state.value, "reason": data.reason, "by": data.by} if isinstance(data, Status)
                    else {"state": data.state.value, "steps": data.steps, "duration_s": round(data.duration, 1)})
        evidence = {k: v for k, v in evidence.items() if v != ""}
        for i, waiting in enumerate(self.pending):  # its status and run_end: one alert, both facts
            if waiting.run == event.run and waiting.kind == RUN_END:
                merged = {**waiting.evidence, **evidence}
                self.pending[i] = replace(waiting, evidence=merged, message=_end_message(event.run, merged,
                                                                                         waiting.step))
                return 0
        if event.run in self._ended:
            return 0
        self._ended[event.run] = True
        _bound(self._ended)
        name, host = self._runs.get(event.run, (None, None))
        return self._queue(Alert(event.run, RUN_END, Severity.CRITICAL, event.step, event.wall,
                                 _end_message(event.run, evidence, event.step), END_ADVICE[data.state], None,
                                 evidence, run_url(base_url, event.run), name, host), now)

    def _remember(self, run: str, start: RunStart) -> None:
        self._runs[run] = (start.name, start.host)
        self._runs.move_to_end(run)
        _bound(self._runs)
        self._ended.pop(run, None)  # a run resumed under the same id may end badly again

    def _queue(self, alert: Alert, now: float) -> int:
        if len(self.pending) >= MAX_PENDING:
            self.overflow += 1
            return 0
        if self._first_pending is None:
            self._first_pending = now
        self.pending.append(alert)
        return 1

    def _forget_expired(self, now: float) -> None:
        """Cool-downs that have run out (keeps the table as small as the recent alerts)."""
        cooldown = self.config.alert_cooldown
        self._last = {k: t for k, t in self._last.items() if now - t < cooldown}


def _end_message(run: str, evidence: Mapping[str, Any], step: int) -> str:
    state = evidence.get("state", "ended")
    reason = evidence.get("reason")
    steps = evidence.get("steps", step)
    return f"run {run} {state} after {steps} steps" + (f": {reason}" if reason else "")


def _bound(table: OrderedDict) -> None:
    while len(table) > MAX_RUNS:
        table.popitem(last=False)
