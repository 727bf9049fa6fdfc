"""Export a stored run to files other tools read: CSV or Parquet, plus the filter images.

Why both: CSV opens anywhere (spreadsheets, R, awk) but has no lists, so list and dict
cells are written as :func:`monitor.codec.dumps` JSON (NaN tagged, exact) and missing or
NaN numbers as ``nan``, which ``pandas.read_csv`` reads back as NaN. Parquet keeps
types and lists natively; only ``evidence`` (free-form JSON) is stored as JSON text.
Filter images are pixels, not table cells: they go to ``filters.npz``, one array per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitor import codec
from monitor.frames import RunFrames, read_run
from monitor.store import Store, is_database_url

FORMATS = ("csv", "parquet")
#: The tabular frames written, in this order; ``filters`` goes to ``filters.npz``.
TABLES = ("scalars", "layer_stats", "flags", "input_stats", "status")


@dataclass(frozen=True)
class Exported:
    """What :func:`export` did: the run read (its id), the files written, the tables left
    out because the run has none of them, and a note when the run was named by a name
    that several runs share (the newest was read)."""

    run: str
    paths: tuple[Path, ...]
    empty: tuple[str, ...]
    note: str | None = None


def export(run: str, logdir: str | Path | Store = "runs", fmt: str = "csv",
           out: str | Path | None = None) -> Exported:
    """Write each non-empty frame of ``run`` (its id, or its name: the newest run of that
    name) to ``<out>/<frame>.<fmt>``.

    ``logdir``: an SQLite store's folder, a ``postgresql://`` URL or an open store (see
    :func:`monitor.frames.read_run`). ``out`` defaults to ``<logdir>/<run id>-export``, and
    must be given for a store that is not a folder. An unknown run raises KeyError (from
    :func:`monitor.frames.load_run`), an unknown ``fmt`` ValueError, before anything is written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not supported; use one of: {', '.join(FORMATS)}")
    if out is None and (isinstance(logdir, Store) or is_database_url(logdir)):
        raise ValueError("export: give the folder to write to (out) for a store that is not a folder")
    frames, note = read_run(run, logdir)
    folder = Path(out) if out is not None else Path(logdir) / f"{frames.run}-export"
    folder.mkdir(parents=True, exist_ok=True)
    written, empty = [], []
    for name in TABLES:
        frame = getattr(frames, name)
        if frame.empty:
            empty.append(name)
            continue
        path = folder / f"{name}.{fmt}"
        if fmt == "csv":
            _json_cells(frame, lambda v: isinstance(v, (list, tuple, dict))).to_csv(path, index=False, na_rep="nan")
        else:
            _json_cells(frame, lambda v: isinstance(v, dict)).to_parquet(path, engine="pyarrow", index=False)
        written.append(path)
    if frames.filters.empty:
        empty.append("filters")
    else:
        written.append(_write_filters(frames, folder / "filters.npz"))
    return Exported(frames.run, tuple(written), tuple(empty), note)


def export_run(run: str, logdir: str | Path | Store = "runs", fmt: str = "csv",
               out: str | Path | None = None) -> list[Path]:
    """:func:`export`'s paths written."""
    return list(export(run, logdir, fmt, out).paths)


def _json_cells(frame: pd.DataFrame, as_json) -> pd.DataFrame:
    """A copy with every column holding ``as_json`` cells encoded as JSON text."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(as_json).any():
            frame[column] = frame[column].map(_dumps)
    return frame


def _dumps(value: Any) -> Any:
    return codec.dumps(list(value) if isinstance(value, tuple) else value) if value is not None else None


def _write_filters(frames: RunFrames, path: Path) -> Path:
    """One array per filters event, keyed ``step_<step>`` (``_<n>`` added if a step repeats)."""
    images: dict[str, np.ndarray] = {}
    for step, image in zip(frames.filters["step"], frames.filters["image"]):
        key, n = f"step_{step}", 1
        while key in images:
            key, n = f"step_{step}_{n}", n + 1
        images[key] = image
    np.savez(path, **images)
    return path
