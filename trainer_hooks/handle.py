"""``watch(model, optimizer)`` and the handle it returns.

The handle counts steps, decides (through the schedule) which steps are sampled,
opens and closes captures around them, and hands records to the writer thread. It
never waits on the disk or the network, and it never reads a device value.
"""
from __future__ import annotations

import atexit
import dataclasses
import math
import numbers
import re
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from monitor.detectors import default_detectors
from monitor.detectors.rank_desync import RankDesync
from monitor.diagnosis import Diagnosis
from monitor.early_stopping import StopCause, StopReason
from monitor.events import Flag, Kind, RunEnd, RunState, Status
from monitor.store import DB_FILENAME, RunStore
from monitor.validation import is_scalar_name
from trainer_hooks.agreement import StopAgreement, distributed_world, job_run_id
from trainer_hooks.by_hand import after as hand_update_done
from trainer_hooks.capture import StepCapture
from trainer_hooks.compiled import compiled_wrapper
from trainer_hooks.notebook import show_link
from trainer_hooks.config import WatchConfig, check_model, check_optimizer
from trainer_hooks.endings import ending, remember_uncaught, uncaught
from trainer_hooks.probe import Probe
from trainer_hooks.reduce import dead_span
from trainer_hooks.run_start import default_run_name, rank_world, run_id, run_start
from trainer_hooks.schedule import NoSamples, VitalsCadence, make_schedule
from trainer_hooks.stream import SocketSink
from trainer_hooks.writer import (CAPTURE_BACKLOG_LIMIT, FLUSH_SECONDS, LIVE_FLUSH_SECONDS, NUDGE_STEPS,
                                  CaptureRecord, EventRecord, ScalarRecord, StopRecord, VitalsBlock, VitalsRecord,
                                  Writer)

#: Seconds close() gives a server to take what is still spooled.
CLOSE_SEND_SECONDS = 15.0
#: Most seconds close() waits for the detectors to have seen the last records, so that
#: what they raise (and a stop it asks for) comes before the run's end. The detect stage
#: does not wait for the sink, so a stuck disk does not hold it; a detector that hangs
#: must not hold the end of a run for longer.
CLOSE_DETECT_SECONDS = 5.0
#: Scalar names that describe where training is, not how it goes: logging them alone
#: does not advance the step of a run without an optimizer.
POSITION_SCALARS = frozenset({"epoch"})
#: Optimizer steps running whose forward the hooks never saw, after which the model is taken
#: to run in a graph compiled with its hooks traced: two, because a watch that begins after
#: a step's forward (``babysit run`` attaching at the first optimizer step) misses one.
UNSEEN_FORWARDS_TRACED = 2

#: The open handle of each watched model (a weak reference: the handle holds the model).
_watched: "weakref.WeakKeyDictionary[nn.Module, weakref.ref]" = weakref.WeakKeyDictionary()


def watching(model: nn.Module) -> "Monitor | None":
    """The open handle that watches ``model`` (unwrapped), if one does."""
    model = unwrap(model)
    ref = _watched.get(model)
    return ref() if ref is not None else None


class BabysitWarning(UserWarning):
    """A problem babysit worked around without stopping training (the message says which)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The module that computes: DDP/DataParallel keep it in ``.module``, compile in ``._orig_mod``."""
    while True:
        inner = getattr(model, "module", None) if isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class Monitor:
    """The handle of one watched run (made by :func:`watch`, which checks its options into
    a :class:`~trainer_hooks.config.WatchConfig`). Use as a context manager, or call :meth:`close`."""

    def __init__(self, model: nn.Module, optimizer=None, options: WatchConfig | None = None):
        options = WatchConfig.from_options({}) if options is None else options  # the defaults and BABYSIT_*
        if not isinstance(options, WatchConfig):
            raise TypeError(f"Monitor: options must be a trainer_hooks.config.WatchConfig, got "
                            f"{type(options).__name__}: call watch(model, optimizer, **options) instead")
        self.model = unwrap(check_model(model))
        self._entry = compiled_wrapper(model)  # where a compiled model's forward enters (trainer_hooks.compiled)
        optimizer = check_optimizer(optimizer)
        previous = watching(self.model)
        if previous is not None:  # a notebook cell run again, or a close() forgotten: end that run first
            warnings.warn(f"babysit: this model was still watched by run {previous.run_id}, never closed; closing "
                          "it now (mon.close(), or `with watch(...) as mon:`, ends a run yourself)",
                          BabysitWarning, stacklevel=3)
            previous.close(reason="closed by a new watch() of the same model (it was never closed)")
        self.options = options  # what the run was watched with, checked
        self.optimizer = optimizer
        self.early_stopping = options.early_stopping
        self.rank, self.world = rank_world()
        # One job: rank 0's id, sent to every rank (a collective every rank's watch() joins).
        self.run_id = job_run_id(run_id(options.run or default_run_name(self.model)))
        if self.world > 1 and self.rank != 0 and options.ranks == "zero":
            self.schedule = NoSamples(f"rank {self.rank}: rank 0 records the layer statistics "
                                      "(watch(..., ranks='all') records every rank's)")
        else:
            self.schedule = make_schedule(options.every, options.overhead,
                                          background=lambda: self._writer.capture_cost())
        self.filters_every = options.filters_every
        self.flags: list = []
        self._step = 0
        self._forward_step: int | None = None
        self._traced = False  # the model's forward runs traced by torch.compile (see _found_traced)
        self._unseen_forwards = 0  # steps running that ended with no forward pass seen
        self._capture: StepCapture | None = None
        self._awaiting: tuple | None = None  # a hand-updated step's capture, until its weights are updated
        self._captured_step = -1
        self._samples = 0
        self.skipped_samples = 0  # due samples not taken because the writer was behind
        self._step_started = time.perf_counter()
        self._started = time.time()
        self._stop: Status | None = None
        self.stop_reason: StopReason | None = None  # why the run stops (None while it runs on)
        self.ended: RunState | None = None  # how the run ended, once closed
        self.duration: float | None = None  # and its seconds from watch() to the end
        self._stop_lock = threading.Lock()  # stops come from the training, writer and socket threads
        self._best_weights: dict | None = None  # restore_best_weights: a CPU copy of the best state
        self._restored = False
        self._agreement = StopAgreement(options.agree_every) if distributed_world() > 1 else None
        self._agreed = False
        # What the agreement rounds carry for the ranks' comparison (monitor.detectors.rank_desync).
        self._desync = RankDesync() if self._agreement is not None and self.rank == 0 else None
        self._shared_gradients = isinstance(model, nn.parallel.DistributedDataParallel)
        self._last_loss: Any = math.nan
        self._last_norms: Any = None
        self._round_step = 0
        self._warned: set[str] = set()
        self._lr_logged: Any = None  # the learning rate last recorded for the user (see _record_lr)
        self._lr_held: ScalarRecord | None = None
        self._user_logs_lr = False
        self._closed = False
        self.dashboard = None  # the in-process server of dashboard=True (web.serving.RunningServer)
        logdir, server = options.logdir, options.server  # BABYSIT_SERVER is in: WatchConfig.from_options
        if options.dashboard:
            from monitor.cli import start_dashboard  # the composition root joins web to us

            self.dashboard = start_dashboard(logdir)
            server = self.dashboard.url
        if server is None:  # the local store, in this process
            self.store = RunStore(logdir)
            self.store_path: Path | None = Path(self.store.path)
            self._sink = self.store
        else:  # the server's store, through a spool under logdir (our own when it runs in this process)
            self.store = None
            self.store_path = Path(logdir) / DB_FILENAME if self.dashboard is not None else None
            self._sink = SocketSink(server, self.run_id, Path(logdir) / "spool",
                                    token=options.token,
                                    on_stop=lambda reason, by: self.stop(reason, by))
        self.server = server
        self.detectors = default_detectors() if options.detectors is None else list(options.detectors)
        self._diagnosis = Diagnosis(self.detectors, self.early_stopping)
        self._writer = Writer(self.run_id, self._sink, detect=self._detect, explain=self._explain_stop,
                              first_seq=self.store.next_seq(self.run_id) if self.store is not None else 0,
                              flush_seconds=FLUSH_SECONDS if server is None else LIVE_FLUSH_SECONDS)
        self._emit(Kind.RUN_START, run_start(self.run_id, self.model, options.config, self.schedule,
                                              options.sample_size))
        self._emit(Kind.STATUS, Status(RunState.RUNNING))
        self._vitals = VitalsBlock()  # this step's vital signs join it; handed over every NUDGE_STEPS steps
        self._vitals_cadence = VitalsCadence()  # which steps read them, inside their own budget
        self.probe = self._probe()
        _watched[self.model] = weakref.ref(self)
        atexit.register(self._close_at_exit)
        remember_uncaught()
        print(f"babysit: {self.where()}", file=sys.stderr, flush=True)  # where to find the run, from the start
        if self.dashboard_url:
            show_link(self.dashboard_url, self.run_id)  # in a notebook, the page as a link in the cell's output

    def _probe(self) -> Probe:
        options = self.options
        probe = Probe(self.model, self.optimizer, sample_size=options.sample_size, dead_window=options.dead_window,
                      dead_span=dead_span(options.dead_window, options.every), entry=self._entry)
        probe.on_root_forward = self._on_root_forward
        probe.on_optimizer_step = self._end_step
        return probe

    def continue_with(self, model: nn.Module, optimizer=None) -> None:
        """Go on recording this run from another model object and its optimizer: the
        same model loaded back from a checkpoint (``torch.save(model)``, ``torch.load``).
        The steps count on; the hooks move to the new objects."""
        self._finish_capture()
        if self._awaiting is not None:
            self._seal_awaiting()
        self.probe.remove()
        self._unregister()
        self.model, self.optimizer = unwrap(check_model(model)), check_optimizer(optimizer)
        self._entry = compiled_wrapper(model)
        self._lr_logged, self._forward_step = None, None
        self.probe = self._probe()
        _watched[self.model] = weakref.ref(self)

    def _unregister(self) -> None:
        """Leave the registry of watched models (unless a later handle of the model took our place)."""
        if watching(self.model) is self:
            del _watched[self.model]

    def where(self) -> str:
        """One line naming the run, where it is stored, and its live page when there is one."""
        if self.store_path is not None:  # the local store, or the embedded dashboard's
            stored = f"stored in {self.store_path}"
        else:
            stored = f"streamed to {self.server} (spooled in {self._sink.spool} while it is unreachable)"
        live = f"; live dashboard: {self.dashboard_url}" if self.dashboard_url else ""
        return f"watching run {self.run_id}, {stored}{live}"

    @property
    def dashboard_url(self) -> str | None:
        """The run's page on the server it streams to (None with the local store only)."""
        return f"{self.server.rstrip('/')}/runs/{self.run_id}" if self.server else None

    # ------------------------------------------------------------------ user API

    @property
    def step(self) -> int:
        """Optimizer steps taken (or, without an optimizer, training logs made)."""
        return self._step

    @property
    def should_stop(self) -> bool:
        """True once a stop was asked for (:meth:`stop`, the dashboard, the early-stopping
        policy or a flag it stops on; :attr:`stop_reason` says which): the loop should
        break. In a distributed run, true on every rank at the same step (see
        :mod:`trainer_hooks.agreement`). With ``restore_best_weights`` the best weights are
        back in the model when this first reads true."""
        stopping = self._agreed if self._agreement is not None else self._stop is not None
        if stopping:
            self._restore_best_weights()
        return stopping

    def stop(self, reason: str = "stopped by the user", by: str = "user") -> None:
        """Ask the run to stop; ``by`` names who asks (``"dashboard"`` for the button)."""
        cause = StopCause.DASHBOARD if by == "dashboard" else StopCause.USER
        self._request_stop(StopReason(cause, reason, self._step), by)

    def _request_stop(self, reason: StopReason, by: str | None = None) -> None:
        """The one path of every stop: the first reason wins and is recorded as a
        ``stopping`` status (``by``: the cause, or the caller's own label for a user stop)."""
        with self._stop_lock:
            if self._stop is not None:
                return
            self.stop_reason = reason
            self._stop = Status(RunState.STOPPING, reason.message, by or reason.cause.value)
        print(f"babysit: stopping run {self.run_id} at step {reason.step} ({reason.cause.value}): {reason.message}",
              file=sys.stderr, flush=True)
        wall = time.time()
        self._put(StopRecord(reason.step, wall, reason))  # the detectors say why, before the status
        self._put(EventRecord(reason.step, wall, Kind.STATUS, self._stop))

    def add_flag(self, flag: Flag, step: int | None = None) -> None:
        """Record a diagnosis (at ``step``, default the flag's own, else the current one):
        kept in :attr:`flags`, printed as one line on stderr, stored and shown live on the
        dashboard like every event. The detectors report through here, from the writer thread."""
        if not isinstance(flag, Flag):
            raise TypeError(f"add_flag: expected a monitor.events.Flag, got {type(flag).__name__}")
        step = step if step is not None else flag.step if flag.step is not None else self._step
        if flag.step != step:
            flag = dataclasses.replace(flag, step=step)
        self._note(flag)
        self._put(EventRecord(step, time.time(), Kind.FLAG, flag))
        if self.early_stopping is not None:
            reason = self.early_stopping.update_flag(flag, step)
            if reason is not None:
                self._request_stop(reason)

    def _note(self, flag: Flag) -> None:
        """Keep a flag in :attr:`flags` and print it as one line on stderr."""
        self.flags.append(flag)
        where = f" [{flag.layer}]" if flag.layer else ""
        print(f"babysit: {flag.severity.value} {flag.kind}{where} at step {flag.step}: {flag.message}",
              file=sys.stderr, flush=True)

    def log(self, *unnamed: Any, **scalars: Any) -> None:
        """Record loss and metrics for the current step; tensors are read later, off this thread.

        Names starting ``val_`` are validation metrics. A name or value that cannot be
        recorded is skipped with a :class:`BabysitWarning` that says what to pass instead
        (once per name); the rest of the call is recorded and training goes on.
        """
        if unnamed:
            example = (f"mon.log(**{{{', '.join(f'{k!r}: ...' for k in list(unnamed[0])[:3])}}})"
                       if isinstance(unnamed[0], Mapping) else "mon.log(loss=loss)")
            self._warn("(unnamed)", f"babysit: not recording {len(unnamed)} unnamed value(s): mon.log takes "
                                    f"scalars by name: pass {example}")
        self._log(scalars)

    def batch_starts(self, batch: Any = None) -> None:
        """A training batch begins: for framework callbacks, so that the step is sampled
        (and its input recorded) also when the framework calls a part of the model rather
        than the watched module itself (a LightningModule that calls ``self.net(x)``)."""
        items = batch.values() if isinstance(batch, Mapping) else \
            batch if isinstance(batch, (tuple, list)) else (batch,)
        x = next((b for b in items if isinstance(b, torch.Tensor) and b.is_floating_point()), None)
        self._on_root_forward(() if x is None else (x,))

    def log_after_step(self, **scalars: Any) -> None:
        """Record scalars for the step just taken, also once the next one has begun: an
        evaluation that followed it, or a loss a framework hands over after its step
        (``babysit run`` and the framework callbacks do)."""
        self._log(scalars, at=max(self._step - 1, 0))

    def _log(self, scalars: Mapping[str, Any], at: int | None = None) -> None:
        values = {}
        for name, value in scalars.items():
            problem = _scalar_problem(name, value)
            if problem:
                self._warn(name, f"babysit: not recording scalar {name!r}: {problem}")
                continue
            values[name] = value.detach() if isinstance(value, torch.Tensor) else float(value)
        if not values or self._closed:
            return
        if "lr" in values:
            self._user_logs_lr = True
        if "loss" in values:
            self._last_loss = values["loss"]
        advances = at is None and self.optimizer is None and any(
            not n.startswith("val_") and n not in POSITION_SCALARS for n in values)
        step = at if at is not None else self._step if advances or self._forward_step is None else self._forward_step
        self._put(ScalarRecord(step, time.time(), values))
        if self.early_stopping is not None and self.early_stopping.monitor in values:
            self._evaluate(step, values[self.early_stopping.monitor])
        if advances:
            self._end_step()

    def _evaluate(self, step: int, value) -> None:
        """One evaluation of the early-stopping metric, decided at once on this thread (a
        tensor is read here: once per evaluation, not per step). A new best is copied to
        the CPU when weights are to be restored: once per improvement, off the step path."""
        reason = self.early_stopping.update_metric(step, float(value))
        if reason is not None:
            self._request_stop(reason)
        elif self.early_stopping.restore_best_weights and self.early_stopping.improved_last:
            self._best_weights = {name: t.detach().to("cpu", copy=True)
                                  for name, t in self.model.state_dict().items()}

    def _restore_best_weights(self) -> None:
        if self._best_weights is None or self._restored:
            return
        self._restored = True
        self.model.load_state_dict(self._best_weights)
        print(f"babysit: restored the weights of step {self.early_stopping.best_step} "
              f"({self.early_stopping.monitor} {self.early_stopping.best:.4g})", file=sys.stderr, flush=True)

    def close(self, state: RunState | str | None = None, reason: str = "") -> None:
        """Remove every hook, record how the run ended, and write out everything pending."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        self.probe.remove()
        self._unregister()
        self._capture = self.probe.capture = None  # a forward pass no step followed (an evaluation with grad on)
        if self._awaiting is not None:
            self._seal_awaiting()
        self._put_vitals(self._vitals.take())
        self._record_lr()  # hand over the one held back
        # The detectors run on the writer's detect stage: without this wait a flag raised
        # by the last records (the evaluation that stopped the run, and the flags that
        # explain the stop) landed after run_end or before it depending on when the stage
        # woke, and a stop it asked for came too late to decide how the run ended.
        self._writer.detected(CLOSE_DETECT_SECONDS)
        if self._agreement is not None:
            self._agreement.finish()  # every rank launched the round in flight: complete it
        if self._stop is not None:
            self._restore_best_weights()
        if state is None:  # a run whose loss diverged ends diverged, stopped for it or not
            state = (RunState.DIVERGED if any(f.kind == "divergence" for f in self.flags)
                     else self.stop_reason.end_state if self.stop_reason is not None else RunState.FINISHED)
        state = self.ended = RunState(state)
        reason = reason or (self._stop.reason if self._stop is not None else "")
        by = self._stop.by if self._stop is not None else ""
        self._emit(Kind.STATUS, Status(state, reason, by), wait=True)
        end = RunEnd(state, self._step, time.time() - self._started, self._writer.dropped, self.skipped_samples)
        self.duration = end.duration
        self._emit(Kind.RUN_END, end, wait=True)
        self._writer.close()
        if self.store is not None:
            self.store.close()
        else:
            if not self._sink.flush(CLOSE_SEND_SECONDS):
                held = self._sink.held_bytes  # lines its full disk could not take: they end with us
                where = f"the rest is kept in {self._sink.spool}" + (
                    f", except {held} bytes that its full disk could not take (lost)" if held else "")
                warnings.warn(f"babysit: the server at {self.server} did not take all of run {self.run_id} "
                              f"before close; {where}", BabysitWarning, stacklevel=2)
            self._sink.close()

    def flush(self, timeout: float = 30.0) -> bool:
        """Block until everything recorded so far is in the store, or with a server in the
        spool and sent as far as the server answers (for tests and notebooks)."""
        return self._writer.flush(timeout)

    @property
    def writer_seconds(self) -> float:
        """CPU seconds babysit's background writer has spent so far (decoding, encoding,
        storing): the part of babysit's cost that does not show in the step time."""
        return self._writer.cpu_seconds

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(*ending(exc_type, exc))

    # ------------------------------------------------------------------ hooks' side

    def _on_root_forward(self, args) -> None:
        if not torch.is_grad_enabled():
            self.probe.eager_next(False)  # validation or inference: compiled as it was, and no statistics
            return
        if self._awaiting is not None:
            self._seal_awaiting()  # the last step's hand update is done: its weights are read now
        self._forward_step = self._step
        if self._capture is None and self._captured_step != self._step and self.schedule.due(self._step):
            if self._writer.capture_backlog >= CAPTURE_BACKLOG_LIMIT:
                self.skipped_samples += 1  # the writer is behind: sample a later step instead
                return
            self._capture = StepCapture(self._step)
            self._captured_step = self._step
            self.probe.begin(self._capture, args)

    def _end_step(self) -> None:
        now = time.perf_counter()
        self._record_lr()
        reader = self.probe if self.probe.by_hand is None else self.probe.by_hand
        vitals = self.probe.vitals if self.probe.by_hand is None else self.probe.by_hand.take_vitals()
        if vitals is not None:
            self.probe.vitals = None
            self._last_norms = vitals[0]
            self._put_vitals(self._vitals.add(self._step, *vitals))
        sampled = self._finish_capture()
        self.schedule.observe(self._step, now - self._step_started, sampled)
        cost, reader.vitals_seconds = reader.vitals_seconds, None
        self._vitals_cadence.observe(self._step, now - self._step_started, cost)
        if self._forward_step == self._step or self._traced or self.probe.by_hand is not None:
            self._unseen_forwards = 0
        else:  # twice running: a watch that began after its first step's forward sees one
            self._unseen_forwards += 1
            if self._unseen_forwards == UNSEEN_FORWARDS_TRACED:
                self._found_traced()
        self._step += 1
        reader.vitals_due = self._vitals_cadence.due(self._step)
        if self._traced:
            self._forward_step = self._step - 1  # its forward will pass unseen: what is logged now is this step's
            if self.schedule.due(self._step):
                self.probe.eager_next()
        if self._step % NUDGE_STEPS == 0:
            self._put_vitals(self._vitals.take())
            self._writer.nudge()  # the detectors see this step's evidence within NUDGE_STEPS steps
        if self._agreement is not None and self._agreement.due(self._step):
            self._agree()
        self._step_started = time.perf_counter()  # the bookkeeping above is not the user's step

    def _found_traced(self) -> None:
        """Steps ended whose forward passes the hooks never saw: the model runs inside a
        graph compiled with its hooks traced (``model.compile()``, or ``torch.compile`` of a
        module that contains the watched one). From now on each due step's forward is made
        eager before it begins (trainer_hooks.compiled), so its statistics are read; a
        value logged between the forward and ``optimizer.step()`` counts one step early."""
        self._traced = True
        self._warn("traced", "babysit: this model's forward runs in a graph compiled with its hooks (model.compile() "
                   "or torch.compile of an enclosing module); sampled steps run eagerly. For exact steps, watch "
                   "what torch.compile returned: mon = watch(torch.compile(model), optimizer)")

    def _agree(self) -> None:
        """A round of the ranks' stop agreement; a stop another rank asked for becomes ours.
        The round also compares the ranks' last loss and gradient norm (rank 0 flags one
        out of step); nothing here is read from a device: the tensors travel as they are."""
        norms = self._last_norms
        grad_norm = math.nan if norms is None else math.sqrt(sum(norms)) if isinstance(norms, list) \
            else torch.linalg.vector_norm(norms.float())
        stop, evidence = self._agreement.exchange(self._stop is not None, self._last_loss, grad_norm)
        if stop and not self._agreed:
            self._request_stop(StopReason(StopCause.PEER, "another rank of this distributed run asked to stop",
                                          self._step))
            self._agreed = True
        if evidence is not None and self._desync is not None:
            losses, grads = zip(*evidence)
            for flag in self._desync.update(self._round_step, losses, grads, shared_gradients=self._shared_gradients):
                self.add_flag(flag)
        self._round_step = self._step - 1

    def _detect(self, event) -> list[Flag]:
        """The writer's detect stage, on each decoded event before it is committed: the
        flags join the event's batch; a stop and a closer look act at once."""
        verdict = self._diagnosis.event(event)
        for flag in verdict.flags:
            self._note(flag)
        if verdict.look:
            self.schedule.look(self._step, verdict.look)
        if verdict.stop is not None:
            self._request_stop(verdict.stop)
        return list(verdict.flags)

    def _explain_stop(self, reason: StopReason) -> list[Flag]:
        """The detect stage, once it has seen everything before a stop: the flags that say why."""
        flags = list(self._diagnosis.stopped(reason).flags)
        for flag in flags:
            self._note(flag)
        return flags

    def _record_lr(self) -> None:
        """The learning rate (first parameter group) as scalar ``lr``, whenever it changes:
        a schedule shows on the dashboard without the user logging it. The record is held
        back one step, so a user who logs ``lr`` after ``optimizer.step()`` (as most do)
        replaces it from the first step on. A tensor learning rate (capturable optimizers)
        is handed over as it is, on sampled steps only: the writer reads it, this thread
        never syncs."""
        held, self._lr_held = self._lr_held, None
        if held is not None and not self._user_logs_lr:
            self._put(held)
        if self._user_logs_lr or self.optimizer is None:
            return
        lr = self.optimizer.param_groups[0].get("lr")
        if isinstance(lr, torch.Tensor):
            if self._capture is not None:
                self._lr_held = ScalarRecord(self._step, time.time(), {"lr": lr.detach().clone()})
        elif isinstance(lr, (int, float)) and lr != self._lr_logged:
            self._lr_logged = lr
            self._lr_held = ScalarRecord(self._step, time.time(), {"lr": float(lr)})

    def _finish_capture(self) -> bool:
        capture, self._capture, self.probe.capture = self._capture, None, None
        self.probe.stop_capturing()
        if capture is None:
            return False
        by_hand = self.probe.by_hand
        if by_hand is not None:  # without an optimizer the update comes after the step: wait for it
            if self._awaiting is not None:
                self._seal_awaiting()
            self._awaiting = (capture, by_hand.take_stepped())
            return True
        self._seal(capture)
        return True

    def _seal_awaiting(self) -> None:
        """A hand-updated step's capture, completed with the weights as they are now."""

        (capture, stepped), self._awaiting = self._awaiting, None
        hand_update_done(capture, stepped)
        self._seal(capture)

    def _seal(self, capture: StepCapture) -> None:
        """Hand a finished capture (and every few samples, the filters) to the writer."""
        if self._samples % self.filters_every == 0:
            self.probe.add_filters(capture)
        self._samples += 1
        packed = capture.pack()
        if packed is not None:
            self._put(CaptureRecord(capture.step, time.time(), packed))

    def _emit(self, kind: Kind, data, wait: bool = False) -> None:
        self._put(EventRecord(self._step, time.time(), kind, data), wait)

    def _put_vitals(self, record: VitalsRecord | None) -> None:
        if record is not None:
            self._put(record)

    def _put(self, record, wait: bool = False) -> None:
        if not self._writer.put(record, wait):
            self._warn("queue", "babysit: the event queue is full; dropping records (counted in run_end)")

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, BabysitWarning, stacklevel=3)

    def _close_at_exit(self) -> None:
        """At interpreter exit without a ``close()``: the exception that ended the script, if
        one did (sys.excepthook ran before us), decides how the run ended."""
        state, reason = ending(*uncaught[-1]) if uncaught else (None, "")
        self.close(state, (reason + "; " if reason else "") + "closed at interpreter exit (mon.close() was not called)")


def watch(model: nn.Module, optimizer=None, **options: Any) -> Monitor:
    """Watch a model (and its optimizer) and record what a babysitter looks at.

    Options: ``run`` (name), ``config`` (hyper-parameters to record), ``every``
    (sampling interval in steps; None sizes it to ``overhead``, a share of step time,
    default 0.5 % as measured, about 1 % in fact), ``logdir`` (where the SQLite store
    lives, default ``runs``; with a server, where the spool lives), ``server`` (URL of
    ``babysit serve``, default ``$BABYSIT_SERVER``; None: the local store only), ``token``
    (the server's, default ``$BABYSIT_TOKEN``), ``dashboard`` (True: serve the live
    dashboard from this process on a free port of 127.0.0.1 and print the run's URL; it
    stores into ``logdir`` and lives as long as the process), ``detectors`` (what diagnoses
    the run as it goes: None, the default set of ``monitor.detectors``; ``[]``, none),
    ``early_stopping`` (a :class:`monitor.EarlyStopping` policy: ``mon.should_stop`` turns
    true when it says so), ``agree_every`` (steps between two rounds of the ranks' stop
    agreement in a distributed run), ``sample_size``, ``dead_window``, ``filters_every``:
    :class:`trainer_hooks.config.WatchConfig` gives each one's default and unit. Every
    option is checked here, once: an unknown or bad one is a TypeError or ValueError that
    says what to pass instead.
    """
    check_model(model)  # before the options: a wrong first argument is the likelier mistake
    check_optimizer(optimizer)
    return Monitor(model, optimizer, WatchConfig.from_options(options))


# ---------------------------------------------------------------------- helpers

def _scalar_problem(name: str, value: Any) -> str | None:
    """Why ``mon.log(name=value)`` cannot be recorded, and what to pass instead (None: it can)."""
    if not is_scalar_name(name):
        fixed = re.sub(r"[^A-Za-z0-9_.:/-]+", "_", name).lstrip(".:/-")[:128] or "loss"
        return (f"names may use 1-128 characters from A-Z a-z 0-9 _ . : / - (starting with a letter, digit "
                f"or _): pass it as mon.log(**{{{fixed!r}: ...}})")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return (f"expected one number, got a tensor of shape {tuple(value.shape)}: pass one element, "
                    f"e.g. {name}={name}.mean() (or log each element under its own name)")
        if value.is_complex() or value.dtype == torch.bool:
            return f"expected a real number, got a {value.dtype} tensor: pass {name}={name}.float()"
        return None
    if isinstance(value, bool):
        return f"expected a number, got bool: pass {name}=float({name}) to record it as 0 or 1"
    if not isinstance(value, (numbers.Real, np.number)) or isinstance(value, np.bool_):
        hint = f"pass {name}=float({name})" if isinstance(value, (str, np.ndarray)) else \
            f"pass a float, an int or a one-element tensor, e.g. {name}=0.5"
        return f"expected a number or a one-element tensor, got {type(value).__name__}: {hint}"
    return None
