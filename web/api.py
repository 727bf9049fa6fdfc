"""REST routes: JSON written by ``monitor.codec`` (NaN and ±Inf tagged, never bare).

The run page's routes (a run's overview, layers, inputs, latest events, filter image) and
the series downsampling live in :mod:`web.history`.
"""
from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from monitor import codec, protocol
from monitor.events import Kind
from monitor.export import FORMATS, export_run
from monitor.incidents import group_flags
from monitor.validation import SchemaError, check_run_id, check_scalar_name


def json_response(value, status: int = 200) -> Response:
    return Response(codec.dumps(value), status=status, mimetype="application/json")


def api_blueprint(app) -> Blueprint:
    from web.history import add_history_routes, max_points_arg, scalar_series  # it imports this module
    from web.ranks import loss_spread

    api = Blueprint("api", __name__, url_prefix="/api")

    @api.get("/health")
    def health():
        """Whether the server can store what trainers send: the store's state (``ok``, or
        ``full``, ``read_only``, ``busy``, ``io_error`` with the cause in ``message``, since
        when and how many writes were refused) and the ingest refusals by kind. 503 while the
        store refuses writes, so a probe or a proxy sees it; trainers keep their batches."""
        store = app.store.health.snapshot()
        ingest = app.socketio.server.namespace_handlers.get(protocol.INGEST_NAMESPACE)
        return json_response({"ok": store.ok, "store": asdict(store),
                              "refusals": ingest.refusals.counts() if ingest is not None else {},
                              "protocol": protocol.PROTOCOL_VERSION}, 200 if store.ok else 503)

    @api.get("/runs")
    def runs():
        return json_response([asdict(info) for info in app.store.runs()])

    @api.get("/runs/<run>/series")
    def series(run: str):
        """``?names=loss,val_loss&max_points=2000``: each named scalar (all when no names)
        as ``{"step": [...], "wall": [...], "value": [...]}``, downsampled keeping extremes."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        try:
            names = [check_scalar_name(n) for n in request.args.get("names", "").split(",") if n] or None
            max_points = max_points_arg()
        except (SchemaError, ValueError) as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(scalar_series(app.store, run, names, max_points))

    @api.get("/runs/<run>/ranks")
    def ranks(run: str):
        """``?max_points=2000``: the stored ranks of the run's distributed job and their loss as
        a band, ``{"ranks", "step", "low", "high"}`` (empty for a run of one process)."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        try:
            max_points = max_points_arg()
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        return json_response(loss_spread(app.store, run, max_points, scalar_series))

    @api.get("/runs/<run>/flags")
    def flags(run: str):
        """Every flag of the run, in order: ``[{"seq", "step", "wall", ...flag fields}]``."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        return json_response([{**e.data.to_dict(), "seq": e.seq, "step": e.step, "wall": e.wall}
                              for e in app.store.events(run, kinds=[Kind.FLAG])])

    @api.get("/runs/<run>/incidents")
    def incidents(run: str):
        """The run's flags grouped by cause (``monitor.incidents``), most severe first:
        ``[{"cause", "severity", "step", "layers", "symptoms", "message", "advice", "note",
        "flags": [seq, ...]}]``, the cause's flags first (``seq`` as ``/flags`` gives them)."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        events = app.store.events(run, kinds=[Kind.FLAG])
        seqs = {}
        flags = []
        for e in events:
            flag = e.data if e.data.step == e.step else replace(e.data, step=e.step)
            seqs[id(flag)] = e.seq
            flags.append(flag)
        return json_response([{
            "cause": i.cause, "severity": i.severity.value, "step": i.step, "layers": list(i.layers),
            "symptoms": list(i.symptoms), "message": i.message, "advice": i.advice, "note": i.note,
            "flags": [seqs[id(f)] for f in i.flags]} for i in group_flags(flags)])

    @api.get("/runs/<run>/export")
    def export(run: str):
        """``?format=csv|parquet``: the run's tables (and filter images) as one zip download."""
        problem = known_run(app, run)
        if problem is not None:
            return problem
        fmt = request.args.get("format", "csv")
        if fmt not in FORMATS:
            return json_response({"error": f"format: expected one of {', '.join(FORMATS)}"}, 400)
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory(prefix="babysit-export-") as folder:
            paths = export_run(run, app.store, fmt, Path(folder))
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in paths:
                    archive.write(path, f"{run}/{path.name}")
        return Response(buffer.getvalue(), mimetype="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{run}-{fmt}.zip"'})

    add_history_routes(api, app)
    from web.sweeps import add_sweep_routes  # it imports this module

    add_sweep_routes(api, app)
    api.app_errorhandler(HTTPException)(http_error)
    return api


#: Longest piece of a request an error quotes back (a path may be kilobytes long).
QUOTED_CHARS = 100


def http_error(exc: HTTPException):
    """An HTTP error (no such route, a method a route does not take) under ``/api`` as JSON
    naming the problem, like every other API error; a page's error stays Flask's HTML page."""
    if not (request.path == "/api" or request.path.startswith("/api/")):
        return exc
    path = request.path if len(request.path) <= QUOTED_CHARS else request.path[:QUOTED_CHARS] + "..."
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(set(exc.valid_methods or ()) - {"HEAD", "OPTIONS"})) or "GET"
        error = f"{request.method} is not allowed on {path!r}; use {allowed}"
    elif isinstance(exc, NotFound):
        error = f"no API route {path!r}; the routes are {', '.join(sorted(_api_routes()))}"
    else:
        error = f"{exc.name}: {exc.description}"
    return json_response({"error": error}, exc.code or 500)


def _api_routes() -> set[str]:
    return {rule.rule for rule in current_app.url_map.iter_rules() if rule.rule.startswith("/api/")}


def known_run(app, run: str) -> Response | None:
    """None when ``run`` names a stored run, else the error response (400 or 404)."""
    try:
        check_run_id(run)
    except SchemaError as exc:
        return json_response({"error": str(exc)}, 400)
    if app.store.run_info(run) is None:
        return json_response({"error": f"no run {run!r}"}, 404)
    return None
