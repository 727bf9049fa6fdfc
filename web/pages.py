"""The dashboard's pages: the runs index, a run, and runs compared.

Pages are templates with empty Bokeh figures (:mod:`web.figures`); the page scripts
(``web/js``, bundled into ``static/dist``) load the data from the REST routes and then
stream live events from ``/dashboard``. BokehJS is served from the installed bokeh
package, and the scripts from this package: no CDN, so the dashboard works offline.
Every page carries a Content-Security-Policy that allows only our own scripts and the
one inline script Bokeh's embedding needs (by nonce), a second line of defence behind
the escaping of every name a training process sends.
"""
from __future__ import annotations

import functools
import secrets

import bokeh
from bokeh.embed import components
from bokeh.util.paths import bokehjs_path
from flask import Blueprint, abort, g, render_template, request, send_from_directory

from monitor.events import RunState
from monitor.validation import SchemaError, check_run_id
from web.figures import DEAD_THRESHOLDS, RATIO_PANEL, compare_figures, run_page_figures, sweep_figures

#: Runs the compare page overlays at most (one colour each in a 10-colour palette).
MAX_COMPARED = 10
#: BokehJS files the pages load (plain plots; our own HTML controls instead of widgets).
BOKEH_SCRIPTS = ("js/bokeh.min.js",)


@functools.lru_cache(maxsize=1)
def run_page_components() -> tuple[str, dict]:
    """The run page's figures as Bokeh's script and divs. They are empty and the same for
    every run, so they are built once: building and serialising them takes about half a
    second, which would otherwise be most of the time a page takes to open."""
    return components(run_page_figures(), wrap_script=False)


@functools.lru_cache(maxsize=32)
def sweep_components(specs: tuple[str, ...], direction: str) -> tuple[str, dict, list[dict]]:
    """A sweep page's figures (they depend on its space) as Bokeh's script and divs, and the space."""
    from monitor.sweeps.space import parse_all
    from web.sweeps import dimension_json

    space = [dimension_json(d) for d in parse_all(specs)]
    script, divs = components(sweep_figures(space, direction), wrap_script=False)
    return script, divs, space


@functools.lru_cache(maxsize=32)
def compare_components(runs: tuple[str, ...]) -> tuple[str, dict]:
    return components(compare_figures(list(runs)), wrap_script=False)


def pages_blueprint(app) -> Blueprint:
    pages = Blueprint("pages", __name__, template_folder="templates")

    @pages.before_app_request
    def _nonce():
        g.csp_nonce = secrets.token_urlsafe(16)

    @pages.after_app_request
    def _security_headers(response):
        nonce = getattr(g, "csp_nonce", "")
        response.headers.setdefault(
            "Content-Security-Policy",
            f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    def render(template: str, **context):
        return render_template(template, bokeh_scripts=[f"/bokeh/static/{p}?v={bokeh.__version__}"
                                                         for p in BOKEH_SCRIPTS],
                               nonce=g.csp_nonce, token_required=app.config.token is not None, **context)

    @pages.get("/")
    def index():
        return render("index.html", states=[state.value for state in RunState])

    @pages.get("/runs/<run>")
    def run_page(run: str):
        """A run, finished or live; a run id not stored yet shows a page that waits for it."""
        try:
            check_run_id(run)
        except SchemaError:
            abort(404)
        script, divs = run_page_components()
        return render("run.html", run=run, bokeh_script=script, plots=divs, dead=DEAD_THRESHOLDS,
                      ratio=RATIO_PANEL)

    @pages.get("/compare")
    def compare():
        runs = [r for r in request.args.get("runs", "").split(",") if r][:MAX_COMPARED]
        try:
            runs = [check_run_id(r) for r in runs]
        except SchemaError:
            abort(400)
        # no runs: the page only says how to pick some, and Bokeh warns about a legend of none
        script, divs = compare_components(tuple(runs)) if runs else ("", {})
        return render("compare.html", runs=runs, bokeh_script=script, plots=divs)

    @pages.get("/sweeps/<name>")
    def sweep_page(name: str):
        """A sweep, live as its trials stream; one whose first trial has not started yet
        shows a page that waits for it."""
        from monitor.sweeps.runs import by_sweep
        from monitor.sweeps.space import SpaceError

        try:
            check_run_id(name)
        except SchemaError:
            abort(404)
        runs = by_sweep(app.store.runs()).get(name)
        if not runs:
            return render("sweep.html", sweep=name, waiting=True, space=[], bokeh_script="", plots={})
        config = max(runs, key=lambda info: info.started).config
        direction = config.get("direction", "minimize")
        try:
            script, divs, space = sweep_components(tuple(config.get("space") or ()), direction)
        except SpaceError:  # the trials recorded no usable space: the curves and the table only
            script, divs = components(sweep_figures([], direction), wrap_script=False)
            space = []
        return render("sweep.html", sweep=name, waiting=False, space=space, bokeh_script=script, plots=divs,
                      objective=config.get("objective", "val_loss"))

    @pages.get("/favicon.ico")
    def favicon():
        return "", 204  # no icon; but no 404 in every page's console either

    @pages.get("/bokeh/static/<path:filename>")
    def bokehjs(filename: str):
        """BokehJS from the installed bokeh package, the version the figures were built with."""
        return send_from_directory(bokehjs_path(), filename, max_age=86400)

    return pages
