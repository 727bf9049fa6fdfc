"""REST routes: JSON written by ``monitor.codec`` (NaN and ±Inf tagged, never bare)."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
from flask import Blueprint, Response, request

from monitor import codec
from monitor.validation import SchemaError, check_run_id, check_scalar_name
from web.downsample import MAX_POINTS, downsample


def json_response(value, status: int = 200) -> Response:
    return Response(codec.dumps(value), status=status, mimetype="application/json")


def api_blueprint(app) -> Blueprint:
    api = Blueprint("api", __name__, url_prefix="/api")

    @api.get("/runs")
    def runs():
        return json_response([asdict(info) for info in app.store.runs()])

    @api.get("/runs/<run>/series")
    def series(run: str):
        """``?names=loss,val_loss&max_points=2000``: each named scalar (all when no names)
        as ``{"step": [...], "wall": [...], "value": [...]}``, downsampled keeping extremes."""
        try:
            check_run_id(run)
            names = [check_scalar_name(n) for n in request.args.get("names", "").split(",") if n] or None
            max_points = int(request.args.get("max_points", MAX_POINTS))
            if not 10 <= max_points <= 100_000:
                raise ValueError("max_points: expected 10 to 100000")
        except (SchemaError, ValueError) as exc:
            return json_response({"error": str(exc)}, 400)
        if app.store.run_info(run) is None:
            return json_response({"error": f"no run {run!r}"}, 404)
        columns: dict[str, tuple[list, list, list]] = {}
        for step, wall, name, value in app.store.scalars(run, names):
            column = columns.setdefault(name, ([], [], []))
            column[0].append(step)
            column[1].append(wall)
            column[2].append(value)
        out = {}
        for name, (steps, walls, values) in columns.items():
            keep = downsample(np.asarray(steps), np.asarray(values, dtype=np.float64), max_points)
            out[name] = {"step": np.asarray(steps)[keep].tolist(), "wall": np.asarray(walls)[keep].tolist(),
                         "value": np.asarray(values, dtype=np.float64)[keep].tolist(), "total": len(steps)}
        return json_response(out)

    return api
