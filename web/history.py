"""REST for the run page: what it loads when it opens a run, fast on runs of a million steps.

The page makes about ten calls before it streams live events, and a run of a million
steps and fifty layers must open in about a second, so every route reads a derived table
or one index entry (see :mod:`monitor.store.reads`), never the run's events one by one,
and sends at most ``max_points`` samples per series. Downsampling keeps what a person
babysitting must see:

- scalars (``/series``): per bucket the first, last, minimum, maximum and first NaN
  point (:mod:`web.downsample`); long series are read as per-block summaries;
- layers and inputs: rows are chosen by key columns, each with an equal share of
  ``max_points``: ``max`` and ``min`` when either is asked for (they bound every other
  statistic of the distribution), otherwise each asked value column; and always the
  count of non-finite elements (``nan + inf``), so the sample with the most NaN or Inf
  elements of each bucket is kept. Rows are kept whole: all columns of a kept sample.

Optional layer columns (quantiles, ``sat_frac``, ``dead_frac``, ``update_ratio``) are JSON
``null`` where the summary had no value and ``{"$float": "nan"}`` where it was NaN.
"""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
from flask import Blueprint, Response, request

from monitor.events import Kind, Signal
from monitor.store.layers import INPUT_FIELDS, LAYER_FIELDS
from monitor.validation import SchemaError, as_enum
from web.api import json_response, known_run
from web.downsample import KEPT_PER_BUCKET, MAX_POINTS, downsample, downsample_blocks, downsample_rows
from web.png import encode_png

MAX_POINTS_RANGE = (10, 100_000)  # fewer cannot show a bucket's extremes; more no chart needs
SPEED_WINDOW = 100  # the recent training speed is measured over the last this many loss rows
EPOCH_SCALAR = "epoch"  # the scalar the trainer logs the epoch number as
SPEED_SCALAR = "loss"  # logged every training step: its steps and walls give steps per second


def add_history_routes(api: Blueprint, app) -> None:
    """Register the run page's routes on the ``/api`` blueprint of ``app``."""

    @api.get("/runs/<run>")
    def run_overview(run: str):
        """Everything the page header needs: info, start, status, end, progress, layer list."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        return json_response(overview(app.store, run))

    @api.get("/runs/<run>/layers")
    def layers(run: str):
        """``?signal=activation|output_grad|param_grad[&layers=a,b][&layer=name...][&fields=step,max]
        [&max_points=2000]``: ``{"signal", "layers": {layer: {"module", "total", "step", <field>...}}}``."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        try:
            signal = as_enum(Signal, "signal", request.args.get("signal")).value
            fields = _fields(request.args.get("fields"))
            wanted = _layer_names()
            max_points = max_points_arg()
        except (SchemaError, ValueError) as exc:
            return json_response({"error": str(exc)}, 400)
        keys = _key_fields(fields)
        read = list(dict.fromkeys([*fields, *keys, "nan", "inf"]))  # keys and counts decide, asked or not
        found = app.store.layer_points(run, signal, wanted, read)
        missing = sorted(set(wanted or ()) - {c.layer for c in found})
        if missing:
            shown = ", ".join(repr(name[:64]) for name in missing[:5]) + (" ..." if len(missing) > 5 else "")
            return json_response({"error": f"no {signal} summaries of layer(s) {shown} "
                                           f"in run {run!r}"}, 404)
        out = {}
        for c in found:
            keep = _rows(c.columns, keys, max_points)
            out[c.layer] = {"module": c.module, "total": len(c.columns["step"]),
                            **{f: _json(c.columns[f][keep], c.absent.get(f), keep) for f in fields}}
        return json_response({"signal": signal, "layers": out})

    @api.get("/runs/<run>/inputs")
    def inputs(run: str):
        """``?max_points=2000``: the input batches' statistics, ``{<column>: [...], "total",
        "shape", "latest"}`` (``shape``: the latest batch's, ``latest``: its whole reading, with
        the id statistics of integer input; both null before the first)."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        try:
            max_points = max_points_arg()
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        columns = app.store.input_points(run)
        keep = _rows(columns, ["max", "min"], max_points)
        latest = app.store.latest(run, Kind.INPUT_STATS) if len(columns["step"]) else None
        return json_response({**{f: columns[f][keep].tolist() for f in INPUT_FIELDS}, "total": len(columns["step"]),
                              "shape": list(latest.data.shape) if latest is not None else None,
                              "latest": latest.data.to_dict() if latest is not None else None})

    @api.get("/runs/<run>/latest/<kind>")
    def latest(run: str, kind: str):
        """The run's last event of ``kind``: ``{"seq", "step", "wall", "kind", "data"}``, or
        ``null`` while the run has none (not an error: a transformer has no filter image, a
        run starts without layer statistics)."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        try:
            kind = as_enum(Kind, "kind", kind)
        except SchemaError as exc:
            return json_response({"error": str(exc)}, 400)
        event = app.store.latest(run, kind)
        if event is None:
            return json_response(None)
        return json_response({"seq": event.seq, "step": event.step, "wall": event.wall, "kind": kind.value,
                              "data": event.data.to_dict()})

    @api.get("/runs/<run>/filters.png")
    def filters_png(run: str):
        """``[?seq=N]``: the last (or that seq's) first-layer filter image as a PNG."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        seq = request.args.get("seq")
        if seq is None:
            event = app.store.latest(run, Kind.FILTERS)
            if event is None:
                return json_response({"error": f"no filters event in run {run!r}"}, 404)
        else:
            if not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
                return json_response({"error": f"seq: expected a non-negative integer, got {seq[:40]!r}"}, 400)
            event = app.store.event(run, int(seq))
            if event is None or event.kind is not Kind.FILTERS:
                what = "no event" if event is None else f"a {event.kind.value} event"
                return json_response({"error": f"seq {seq} of run {run!r} is {what}, not filters"}, 404)
        f = event.data
        return Response(encode_png(f.pixels, f.width, f.height, f.channels), mimetype="image/png",
                        headers={"Cache-Control": "no-cache"})  # a newer image may come any time

    @api.errorhandler(SchemaError)
    def undecodable(exc: SchemaError):
        """A stored event that no longer decodes: the server's data is at fault, not the request."""
        return json_response({"error": str(exc)}, 500)


def overview(store, run: str) -> dict:
    info = store.run_info(run)
    start, status, end = (store.latest(run, kind) for kind in (Kind.RUN_START, Kind.STATUS, Kind.RUN_END))
    return {
        "info": asdict(info),
        "start": start.data.to_dict() if start else None,
        "status": {**status.data.to_dict(), "step": status.step, "wall": status.wall} if status else None,
        "end": {**end.data.to_dict(), "step": end.step, "wall": end.wall} if end else None,
        "last_seq": store.next_seq(run) - 1,
        "progress": {"step": info.last_step, "epoch": store.last_scalar(run, EPOCH_SCALAR),
                     "steps_per_s": _speed(store, run),
                     "elapsed": (end.wall if end else info.updated) - info.started},
        "layers": [{"layer": layer, "signal": signal, "module": module}
                   for layer, signal, module in store.layer_index(run)],
    }


def _speed(store, run: str) -> float | None:
    """Training steps per second over the last :data:`SPEED_WINDOW` loss rows; None if unknown."""
    recent = store.scalar_columns(run, SPEED_SCALAR, last=SPEED_WINDOW)
    if len(recent["step"]) < 2:
        return None
    steps, seconds = recent["step"][-1] - recent["step"][0], recent["wall"][-1] - recent["wall"][0]
    return float(steps / seconds) if steps > 0 and seconds > 0 else None


def scalar_series(store, run: str, names: list[str] | None, max_points: int) -> dict:
    """``/series``: each scalar as ``{"step", "wall", "value", "total"}``, at most ``max_points``.

    A series long enough to fill every bucket with whole blocks is read as per-block
    summaries (a few thousand rows for a million points); a shorter one row by row.
    """
    totals = store.scalar_totals(run)
    out = {}
    for name in sorted(totals if names is None else set(names) & set(totals)):
        total, blocks = totals[name]
        if total > max_points and blocks >= max_points // KEPT_PER_BUCKET:
            columns = downsample_blocks(store.scalar_blocks(run, name), max_points)
        else:
            columns = store.scalar_columns(run, name)
            keep = downsample(columns["step"], columns["value"], max_points)
            columns = {k: v[keep] for k, v in columns.items()}
        out[name] = {**{k: columns[k].tolist() for k in ("step", "wall", "value")}, "total": total}
    return out


def max_points_arg() -> int:
    """``max_points`` of the request (default :data:`MAX_POINTS`); ValueError naming it when bad."""
    low, high = MAX_POINTS_RANGE
    text = request.args.get("max_points", str(MAX_POINTS))
    max_points = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else -1
    if not low <= max_points <= high:
        raise ValueError(f"max_points: expected {low} to {high}, got {text[:40]!r}")
    return max_points


def _fields(text: str | None) -> list[str]:
    if text is None:
        return list(LAYER_FIELDS)
    fields = [f for f in text.split(",") if f]
    unknown = [f for f in fields if f not in LAYER_FIELDS]
    if unknown:
        raise ValueError(f"fields: unknown {', '.join(repr(f[:64]) for f in unknown[:5])}; "
                         f"expected some of {', '.join(LAYER_FIELDS)}")
    return ["step", *(f for f in dict.fromkeys(fields) if f != "step")]


def _layer_names() -> list[str] | None:
    """``layers=a,b`` and/or ``layer=<name>`` (repeatable: for names with a comma); None: all."""
    names = [n for n in request.args.get("layers", "").split(",") if n] + request.args.getlist("layer")
    return list(dict.fromkeys(names)) or None


def _key_fields(fields: list[str]) -> list[str]:
    """The columns whose extremes decide which samples of a layer are sent (see the module doc)."""
    if {"max", "min"} & set(fields):
        return ["max", "min"]
    return [f for f in fields if f not in ("step", "nan", "inf")]


def _rows(columns: dict[str, np.ndarray], keys: list[str], max_points: int) -> np.ndarray:
    """Rows to send: the key columns' and the non-finite count's extremes (see the module doc)."""
    nonfinite = (columns["nan"] + columns["inf"]).astype(np.float64)
    return downsample_rows(columns["step"], [columns[k] for k in keys] + [nonfinite], max_points)


def _json(column: np.ndarray, absent: np.ndarray | None, keep: np.ndarray) -> list:
    values = column.tolist()
    if absent is not None:
        for i in np.flatnonzero(absent[keep]):
            values[i] = None
    return values
