"""``babysit run``: an unmodified script run as ``__main__``, watched by :mod:`trainer_hooks.attach`.

The script sees what ``python SCRIPT ARGS`` (or ``python -m MODULE ARGS``) would give it:
``sys.argv``, ``sys.path[0]`` (the script's directory, symlinks resolved, or for a
module the working directory), the working directory itself, ``__name__ ==
"__main__"``. Its output, exceptions and exit status pass through: ``sys.exit(N)``
exits with N, an exception prints its traceback (from the script's own frames, through
``sys.excepthook``) and exits with 1, Ctrl-C ends the process as an unhandled
``KeyboardInterrupt`` would. Each run ends as what happened: finished, crashed (with
the exception), interrupted, or diverged. A stop the script does not read (it never looks
at ``should_stop``: the dashboard's button, a sweep pruning its trial) ends it at the next
optimizer step, the run ``stopped`` (or ``diverged``) with its reason, exit status 0.
"""
from __future__ import annotations

import builtins
import importlib.machinery
import io
import os
import runpy
import signal
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor.sweeps.trial import TrialSpec
from trainer_hooks.attach import Attacher, RunStopped
from trainer_hooks.sweep import outcome_of, trial_policy
from trainer_hooks.endings import ending


@dataclass(frozen=True)
class Target:
    """What to run: a script path, or with ``module`` set, ``-m MODULE``; and its arguments."""

    path: str | None = None
    module: str | None = None
    args: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.module if self.module is not None else self.path

    def default_name(self) -> str:
        """The run name when none is given: the script's stem, or the module's last part."""
        stem = self.module.rpartition(".")[2] if self.module is not None else Path(self.path).stem
        return stem.lstrip("._-") or "run"


@dataclass(frozen=True)
class RunOptions:
    """The options of ``babysit run`` (``watch`` keywords: logdir, server, every, ...)."""

    run: str | None = None
    sweep: str | None = None
    dashboard: bool = False
    watch: dict[str, Any] = field(default_factory=dict)


def run(target: Target, options: RunOptions) -> int:
    """Run the target watched; return its exit status (an exit with a message raises
    ``SystemExit`` as the script did, and Ctrl-C ends the process as Python would)."""
    config = {"script": target.label, "args": list(target.args)}
    if options.sweep is not None:
        config["sweep"] = options.sweep
    watch_options = dict(options.watch)
    trial = TrialSpec.from_env()
    if trial is not None:  # a trial of `babysit sweep`: tagged, and pruned by its policy
        config.update(trial.config())
        watch_options["early_stopping"] = trial_policy(trial)
    server = None
    if options.dashboard:
        from monitor.cli import start_dashboard  # the composition root joins web to us

        server = start_dashboard(watch_options.get("logdir", "runs"))
        watch_options["server"] = server.url
        print(f"babysit: live dashboard at {server.url}/", file=sys.stderr, flush=True)
    attacher = Attacher(options.run or target.default_name(), config, watch_options)
    if trial is not None and trial.outcome:  # written as the runs close: before a Ctrl-C's exit, too
        started = time.monotonic()

        def hand_back() -> None:
            first = next((t.monitor for t in attacher.trained.values() if t.monitor is not None), None)
            outcome_of(first, time.monotonic() - started, attacher.closed_as).write(trial.outcome)
        attacher.on_close = hand_back
    try:
        return _run_as_main(target, attacher)
    finally:
        if server is not None:
            server.stop()


def _run_as_main(target: Target, attacher: Attacher) -> int:
    argv, path0 = list(sys.argv), sys.path[0] if sys.path else None
    if target.module is not None:
        sys.argv = [target.module, *target.args]  # runpy puts the module's file in argv[0]
        _set_path0(os.getcwd())
    else:
        sys.argv = [target.path, *target.args]
        _set_path0(os.path.dirname(os.path.realpath(target.path)))
    try:
        if target.module is not None:
            runpy.run_module(target.module, run_name="__main__", alter_sys=True)
        else:
            _run_script(target.path)
    except SystemExit as exc:
        code = exc.code
        failed = code not in (None, 0)
        attacher.close(*((("crashed", f"exited with status {code}") if failed else (None, ""))))
        raise
    except RunStopped as stop:  # a stop the script does not read (should_stop): it ends here
        attacher.close()
        print(f"babysit: {stop}; the script was ended at that step", file=sys.stderr, flush=True)
        return 0
    except BaseException as exc:  # noqa: BLE001 - the script's, passed on as Python would
        attacher.close(*ending(type(exc), exc))
        exc.with_traceback(_script_frames(exc.__traceback__))
        sys.excepthook(type(exc), exc, exc.__traceback__)
        if isinstance(exc, KeyboardInterrupt):
            sys.stdout.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)  # the exit status of an unhandled Ctrl-C (130 in a shell)
        return 1
    else:
        attacher.close()
        return 0
    finally:
        sys.argv = argv
        if path0 is not None:
            _set_path0(path0)


def _run_script(path: str) -> None:
    """Run a file as ``python path`` does: as module ``__main__`` with an absolute
    ``__file__``, ``sys.argv`` left as it is (runpy.run_path would set ``argv[0]`` to the
    path it was given), the module in ``sys.modules`` while it runs, so that pickles and
    multiprocessing find the script's classes."""
    path = os.path.abspath(path)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __builtins__=builtins,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    with io.open_code(path) as source:
        code = compile(source.read(), path, "exec", dont_inherit=True)
    previous = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:
        if previous is not None:
            sys.modules["__main__"] = previous


def _set_path0(entry: str) -> None:
    if sys.path:
        sys.path[0] = entry
    else:
        sys.path.insert(0, entry)


def _script_frames(tb):
    """The traceback from the script's first frame on: ours and runpy's are not the script's."""
    here = {os.path.realpath(__file__), os.path.realpath(runpy.__file__), "<frozen runpy>"}
    while tb is not None and (tb.tb_frame.f_code.co_filename in here
                              or os.path.realpath(tb.tb_frame.f_code.co_filename) in here):
        tb = tb.tb_next
    return tb
