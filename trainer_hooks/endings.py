"""How a run ends when the script does not say: an exception, Ctrl-C, or nothing.

A run left open (no ``close()``, no ``with``) is closed by an atexit handler; Python calls
``sys.excepthook`` before the atexit handlers, so a chained hook remembers the exception
that is ending the script, and the run ends ``crashed`` (or ``interrupted``) with it
instead of ``finished``.
"""
from __future__ import annotations

import sys

from monitor.events import RunState

#: The exception that is ending the interpreter, as (type, value), once sys.excepthook saw it.
uncaught: list[tuple[type, BaseException]] = []


def ending(exc_type: type | None, exc: BaseException | None) -> tuple[RunState | None, str]:
    """How an exception (or none) ends a run: (state, reason); None: from the run itself."""
    if exc_type is None:
        return None, ""
    if issubclass(exc_type, KeyboardInterrupt):
        return RunState.INTERRUPTED, "interrupted (Ctrl-C)"
    return RunState.CRASHED, f"{exc_type.__name__}: {exc}"[:4000]


def remember_uncaught() -> None:
    """Chain sys.excepthook (once) so that a run left open sees the exception that ends
    the script: Python calls the hook before the atexit handlers."""
    previous = sys.excepthook
    if getattr(previous, "_babysit", False):
        return

    def hook(exc_type, exc, tb):
        uncaught[:] = [(exc_type, exc)]  # the last one only: a REPL may see many
        previous(exc_type, exc, tb)
    hook._babysit = True
    sys.excepthook = hook
