"""The run store's reads for the run page: latest events, layer and input columns, scalar blocks.

Why apart from :mod:`monitor.store`: that module owns the record and its writes; these
reads serve one page that must open a run of a million steps in about a second, so they go
to the derived tables (:mod:`monitor.store.layers`, :mod:`monitor.store.blocks`) or to one
index look-up, and hand back numpy columns rather than rows of Python objects.
:class:`RunPageReads` is mixed into :class:`monitor.store.interface.Store`, whose ``_query``
(one statement under the store's lock) it uses.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from monitor import codec
from monitor.store import blocks as store_blocks
from monitor.store import layers as store_layers
from monitor.events import Event, Kind, Signal
from monitor.validation import SchemaError, as_enum, check_run_id


class RunPageReads:
    """Read methods of every store (:class:`monitor.store.interface.Store`) for the run page; plain return types."""

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        raise NotImplementedError  # the backend's: one statement under its lock

    def latest(self, run: str, kind: Kind | str) -> Event | None:
        """The run's event of this kind with the highest seq (one index look-up), or None."""
        rows = self._query("SELECT seq, step, wall, kind, data FROM events WHERE run = ? AND kind = ? "
                           "ORDER BY seq DESC LIMIT 1", (check_run_id(run), as_enum(Kind, "kind", kind).value))
        return decode(run, *rows[0]) if rows else None

    def event(self, run: str, seq: int) -> Event | None:
        rows = self._query("SELECT seq, step, wall, kind, data FROM events WHERE run = ? AND seq = ?",
                           (check_run_id(run), int(seq)))
        return decode(run, *rows[0]) if rows else None

    def layer_index(self, run: str) -> list[tuple[str, str, str]]:
        """``(layer, signal, module)`` of every summarised tensor, in first-seen order."""
        return store_layers.layer_index(self._query, check_run_id(run))

    def layer_points(self, run: str, signal: Signal | str, layers: Iterable[str] | None = None,
                     fields: Iterable[str] | None = None) -> list[store_layers.LayerColumns]:
        """Each layer's samples of one signal as numpy columns (see :class:`monitor.store.layers.LayerColumns`).

        ``layers``: the names wanted (None: every layer of the signal, in first-seen order;
        names the run lacks are left out). ``fields``: columns of :data:`store_layers.LAYER_FIELDS`
        (None: all); ``step`` always comes first. An unknown signal or field raises SchemaError.
        """
        signal = as_enum(Signal, "signal", signal).value
        fields = store_layers.LAYER_FIELDS if fields is None else list(fields)
        unknown = [f for f in fields if f not in store_layers.LAYER_FIELDS]
        if unknown:
            raise SchemaError(f"fields: unknown {', '.join(map(repr, unknown))}; expected some of "
                              f"{', '.join(store_layers.LAYER_FIELDS)}")
        return store_layers.layer_points(self._query, check_run_id(run), signal,
                                         None if layers is None else list(layers), fields)

    def input_points(self, run: str) -> dict[str, np.ndarray]:
        """Every input_stats reading as columns :data:`store_layers.INPUT_FIELDS`, in step order."""
        return store_layers.input_points(self._query, check_run_id(run))

    def scalar_totals(self, run: str) -> dict[str, tuple[int, int]]:
        """``{name: (rows, blocks)}``: how long each scalar series is, without reading it."""
        return store_blocks.totals(self._query, check_run_id(run))

    def scalar_blocks(self, run: str, name: str) -> dict[str, np.ndarray]:
        """One series summarised per block of steps (see :mod:`monitor.store.blocks`)."""
        return store_blocks.blocks(self._query, check_run_id(run), name)

    def scalar_columns(self, run: str, name: str, last: int | None = None) -> dict[str, np.ndarray]:
        """One series as ``step`` (int64), ``wall`` and ``value`` (float64, NaN kept) arrays in
        step order; ``last``: only the rows of the highest steps, that many (an index range)."""
        sql = "SELECT step, wall, value FROM scalars WHERE run = ? AND name = ?"
        params: list[Any] = [check_run_id(run), name]
        if last is None:
            rows = self._query(sql + " ORDER BY step, seq", params)
        else:
            rows = self._query(sql + " ORDER BY step DESC, seq DESC LIMIT ?", params + [int(last)])[::-1]
        # steps as int64 straight from the rows: through float64 a step past 2**53 comes back
        # rounded, and one near 2**63 overflows
        steps = np.array([row[0] for row in rows], dtype=np.int64)
        table = np.array([row[1:] for row in rows], dtype=np.float64).reshape(len(rows), 2)
        return {"step": steps, "wall": table[:, 0], "value": table[:, 1]}

    def last_scalar(self, run: str, name: str) -> float | None:
        """The series' value at its highest step (NaN included), or None when there is none."""
        return store_blocks.last_value(self._query, check_run_id(run), name)


def decode_or_none(row: tuple) -> Event | None:
    """An ``events`` row ``(run, seq, step, wall, kind, data)`` decoded, or None if it no longer does."""
    try:
        return decode(*row)
    except SchemaError:
        return None


def decode(run: str, seq: int, step: int, wall: float, kind: str, data: str) -> Event:
    try:
        return Event.from_dict({"run": run, "seq": seq, "step": step, "wall": wall, "kind": kind,
                                "data": codec.loads(data)})
    except (SchemaError, TypeError, KeyError, ValueError) as exc:
        # TypeError: a payload missing a field fails in the dataclass constructor.
        raise SchemaError(f"run {run!r} seq {seq}: stored {kind} event does not decode: {exc}") from exc
