"""A stored run as pandas DataFrames, for notebooks: ``monitor.load_run("digits-cnn")``.

One long-form frame per event kind, one row per reading, so ``groupby``, ``pivot`` and
plotting work without knowing the schema's nesting. NaN and ±Inf are kept as they were
logged (a NaN loss is the finding, not noise); optional summary fields that a layer does
not carry (``sat_frac``, ``units``, ...) are NaN too. The frames are read-only data: the
store stays the record, and nothing here writes to it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from monitor import codec
from monitor.events import QUANTILE_LEVELS, Event, Kind, Vitals
from monitor.store import DB_FILENAME, RunStore, Store, is_database_url, open_store
from monitor.validation import check_run_id

#: ``q0668`` ... ``q9332``: each quantile level of :data:`QUANTILE_LEVELS` in basis points.
QUANTILE_COLUMNS = tuple(f"q{round(level * 10_000):04d}" for level in QUANTILE_LEVELS)

_OPTIONAL = ("sat_frac", "units", "dead_units", "window", "weight_norm", "update_ratio")
_FLOATS = ("wall", "mean", "std", "min", "max", "norm", "zero_frac", "hist_lo", "hist_hi",
           "value", "grad_norm", *_OPTIONAL, *QUANTILE_COLUMNS)
_INTS = ("step", "numel", "nan", "inf", "sample")

COLUMNS = {
    "scalars": ("step", "wall", "name", "value"),
    "layer_stats": ("step", "wall", "layer", "signal", "module", "numel", "nan", "inf", "mean", "std",
                    "min", "max", "norm", "sample", "zero_frac", *_OPTIONAL, *QUANTILE_COLUMNS,
                    "hist", "hist_lo", "hist_hi"),
    "flags": ("step", "wall", "kind", "severity", "layer", "message", "advice", "evidence"),
    "input_stats": ("step", "wall", "shape", "mean", "std", "min", "max", "nan", "inf",
                    "channel_mean", "channel_std", "integer", "distinct", "vocab", "padding", "pad_id"),
    "filters": ("step", "wall", "layer", "image"),
    "status": ("step", "wall", "state", "reason", "by"),
    "vitals": ("step", "wall", "layer", "grad_norm"),
}


@dataclass(frozen=True)
class RunFrames:
    """Everything stored for one run; ``info`` is the run_start payload plus ``status``."""

    run: str
    info: dict[str, Any]
    scalars: pd.DataFrame
    layer_stats: pd.DataFrame
    flags: pd.DataFrame
    input_stats: pd.DataFrame
    filters: pd.DataFrame
    status: pd.DataFrame
    vitals: pd.DataFrame  # every step's gradient norms, long form: layer ``(global)`` is the global norm

    @property
    def incidents(self) -> list:
        """The run's flags grouped by cause (:func:`monitor.incidents.group_flags`): a list of
        :class:`monitor.incidents.Incident`, most severe first, then by the step each began at."""
        from monitor.events import Flag
        from monitor.incidents import group_flags

        return group_flags(Flag(kind=row.kind, severity=row.severity, step=int(row.step),
                                layer=row.layer if isinstance(row.layer, str) and row.layer else None,
                                message=row.message, advice=row.advice,
                                evidence=row.evidence if isinstance(row.evidence, dict) else {})
                           for row in self.flags.itertuples())

    def series(self, name: str) -> pd.Series:
        """One metric (``loss``, ``val_acc``, ...) as a float Series indexed by step."""
        rows = self.scalars[self.scalars["name"] == name]
        if rows.empty:
            known = ", ".join(sorted(self.scalars["name"].unique())) or "none"
            raise KeyError(f"run {self.run!r} has no scalar {name!r}; it has: {known}")
        return pd.Series(rows["value"].to_numpy(), index=pd.Index(rows["step"].to_numpy(), name="step"),
                         name=name, dtype="float64")


class SeveralRunsWarning(UserWarning):
    """A run was asked for by a name that several stored runs share; the newest was read."""


def resolve_run(store: Store, run: str) -> tuple[str, str | None]:
    """The id of ``run``, given as its id or its name (``watch(run=NAME)``): a name picks
    the newest run of that name. Returns ``(id, note)``, the note saying which run was
    picked when several share the name (None otherwise); an unknown one raises KeyError
    listing the known runs."""
    if store.run_info(run) is not None:
        return run, None
    runs = store.runs()  # newest first
    named = [r for r in runs if r.name == run]
    if not named:
        raise KeyError(_unknown_run(run, store.location, [r.run for r in runs]))
    if len(named) == 1:
        return named[0].run, None
    return named[0].run, (f"{len(named)} runs are named {run!r}; reading the newest, {named[0].run} "
                          f"(the others: {', '.join(r.run for r in named[1:4])}{' ...' if len(named) > 4 else ''})")


def load_run(run: str, logdir: str | Path = "runs") -> RunFrames:
    """Read one run from ``<logdir>/babysit.sqlite3``, by its id or its name (the newest run
    of that name, with a :class:`SeveralRunsWarning` when several share it); an unknown run
    raises KeyError listing known ones.

    A missing database is not created: reading must not leave files behind.
    """
    frames, note = read_run(run, logdir)
    if note is not None:
        warnings.warn(note, SeveralRunsWarning, stacklevel=2)
    return frames


def read_run(run: str, logdir: str | Path | Store = "runs") -> tuple[RunFrames, str | None]:
    """:func:`load_run`'s frames, and the note of :func:`resolve_run` instead of a warning.
    ``logdir``: the folder of an SQLite store, a ``postgresql://`` URL, or an open store."""
    check_run_id(run)
    if isinstance(logdir, Store):
        return _read(logdir, run)
    if is_database_url(logdir):
        with open_store(logdir) as store:
            return _read(store, run)
    path = Path(logdir) / DB_FILENAME
    if not path.exists():
        raise KeyError(f"no run {run!r}: {path} does not exist (known runs: none); "
                       "pass the logdir the training wrote to")
    with RunStore(logdir) as store:
        return _read(store, run)


def _read(store: Store, run: str) -> tuple[RunFrames, str | None]:
    run, note = resolve_run(store, run)
    info = store.run_info(run)
    scalars = store.scalars(run)
    events = store.events(run, kinds=[k for k in Kind if k is not Kind.SCALARS])
    by_kind: dict[Kind, list[Event]] = {kind: [] for kind in Kind}
    for event in events:
        by_kind[event.kind].append(event)
    start = by_kind[Kind.RUN_START]
    frames = RunFrames(
        run=run,
        info={**(_plain(start[0].data.to_dict()) if start else {}), "status": info.status},
        scalars=_frame("scalars", [dict(zip(COLUMNS["scalars"], row)) for row in scalars]),
        layer_stats=_frame("layer_stats", (_summary_row(e, s) for e in by_kind[Kind.LAYER_STATS]
                                           for s in e.data.summaries)),
        flags=_frame("flags", (_stamp(e, **_plain(e.data.to_dict())) for e in by_kind[Kind.FLAG])),
        input_stats=_frame("input_stats", (_stamp(e, **_plain(e.data.to_dict())) for e in by_kind[Kind.INPUT_STATS])),
        filters=_frame("filters", (_stamp(e, layer=e.data.layer, image=_image(e.data))
                                   for e in by_kind[Kind.FILTERS])),
        status=_frame("status", (_stamp(e, **e.data.to_dict()) for e in by_kind[Kind.STATUS])),
        vitals=_frame("vitals", _vitals_rows(by_kind[Kind.VITALS], start[0].data.model if start else ())),
    )
    return frames, note


def _unknown_run(run: str, path: str, known: list[str]) -> str:
    shown = ", ".join(known[:10]) or "none"
    more = f" and {len(known) - 10} more" if len(known) > 10 else ""
    return f"no run {run!r} in {path}; known runs: {shown}{more}"


def _plain(value: Any) -> Any:
    """Tuples inside config and evidence as lists: the JSON shapes the exports read back."""
    return codec.loads(codec.dumps(value))


def _stamp(event: Event, **fields: Any) -> dict[str, Any]:
    return {**fields, "step": event.step, "wall": event.wall}  # the event's own step and time win


def _summary_row(event: Event, summary) -> dict[str, Any]:
    row = _stamp(event, **_plain(summary.to_dict()))
    quantiles = row.pop("quantiles") or [np.nan] * len(QUANTILE_COLUMNS)  # none sampled: NaN bands
    row.update(zip(QUANTILE_COLUMNS, quantiles))
    return row


#: The ``layer`` of the global gradient norm's rows in the vitals frame.
GLOBAL = "(global)"


def _vitals_rows(events: list[Event], model) -> Iterable[dict[str, Any]]:
    rows = Vitals.layer_names(model)
    for e in events:
        for i, (step, total) in enumerate(zip(e.data.steps(e.step), e.data.grad_norm)):
            yield {"layer": GLOBAL, "grad_norm": total, "step": step, "wall": e.wall}
            for layer, norm in e.data.by_layer(rows, i).items():
                yield {"layer": layer, "grad_norm": norm, "step": step, "wall": e.wall}


def _image(filters) -> np.ndarray:
    pixels = np.frombuffer(filters.pixels, dtype=np.uint8)
    return pixels.reshape(filters.height, filters.width, filters.channels).copy()  # writable for the user


def _frame(name: str, rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows to a frame with the kind's columns and dtypes, empty or not (no dtype guessing)."""
    columns = COLUMNS[name]
    frame = pd.DataFrame.from_records(list(rows), columns=columns)
    frame = frame.astype({c: "float64" for c in columns if c in _FLOATS})
    return frame.astype({c: "int64" for c in columns if c in _INTS})
