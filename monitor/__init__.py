"""babysit's analysis side: event schema, codec, run store and CLI. No torch, no Flask.

The rule of this package: it computes on plain data (numbers, dataclasses, DataFrames)
and never imports torch or a web framework, so detectors and stores can be tested and
reused without a GPU or a server.
"""
from monitor.early_stopping import EarlyStopping, StopCause, StopReason
from monitor.events import SCHEMA_VERSION, Event, Kind, SchemaError

__all__ = ["SCHEMA_VERSION", "EarlyStopping", "Event", "Kind", "SchemaError", "StopCause", "StopReason", "load_run"]


def load_run(run: str, logdir: str = "runs"):
    """Load a stored run as pandas DataFrames (see :class:`monitor.frames.RunFrames`)."""
    from monitor.frames import load_run as _load_run

    return _load_run(run, logdir)
