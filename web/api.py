"""REST routes: JSON written by ``monitor.codec`` (NaN and ±Inf tagged, never bare)."""
from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, Response

from monitor import codec


def json_response(value, status: int = 200) -> Response:
    return Response(codec.dumps(value), status=status, mimetype="application/json")


def api_blueprint(app) -> Blueprint:
    api = Blueprint("api", __name__, url_prefix="/api")

    @api.get("/runs")
    def runs():
        return json_response([asdict(info) for info in app.store.runs()])

    return api
