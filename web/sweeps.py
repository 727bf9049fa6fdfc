"""The sweep page's data: ``GET /api/sweeps/<name>``, a sweep as the run store holds it.

Each trial is the run ``babysit sweep`` tagged (``monitor.sweeps.runs``); the answer is the
trials (parameters, state, value, reason, run), the best, what pruning saved and the
search's advice, the same report the command prints (``monitor.sweeps.report``), with the
space its trials recorded. Pruned, diverged and failed trials are listed and marked, and
left out of the advice.
"""
from __future__ import annotations

from dataclasses import asdict

from monitor.events import Kind
from monitor.sweeps.report import report
from monitor.sweeps.runs import by_sweep, sweep_trial
from monitor.sweeps.space import SpaceError, parse_all
from monitor.validation import SchemaError, check_run_id
from web.api import json_response


def add_sweep_routes(api, app) -> None:
    @api.get("/sweeps/<name>")
    def sweep(name: str):
        try:
            check_run_id(name)
        except SchemaError as exc:
            return json_response({"error": str(exc).replace("run id", "sweep name")}, 400)
        sweeps = by_sweep(app.store.runs())
        if name not in sweeps:
            known = ", ".join(sorted(sweeps)) or "none"
            return json_response({"error": f"no sweep {name!r} (known sweeps: {known})"}, 404)
        return json_response(sweep_view(app.store, name, sweeps[name]))


def dimension_json(d) -> dict:
    """A dimension as the page reads it (the figures are built from the same)."""
    return {"name": d.name, "distribution": d.distribution, "low": d.low, "high": d.high, "log": d.log,
            "choices": list(d.choices), "spec": d.spec()}


def _pairs(store, run: str, name: str) -> list[tuple[int, float]]:
    columns = store.scalar_columns(run, name)
    return list(zip(columns["step"].tolist(), columns["value"].tolist()))


def sweep_view(store, name: str, runs: list) -> dict:
    """The sweep's trials, report and space, as the page reads them."""
    config = max(runs, key=lambda info: info.started).config
    objective = config.get("objective", "val_loss")
    direction = config.get("direction", "minimize")
    sampler = config.get("sampler", "random")
    try:
        space = parse_all(config.get("space") or ())
        note = ""
    except SpaceError as exc:
        space, note = (), f"the trials recorded no usable space ({exc}): no advice on ranges"
    trials = []
    for info in runs:
        statuses = store.events(info.run, kinds=[Kind.STATUS])
        last = statuses[-1].data if statuses else None
        totals = store.scalar_totals(info.run)
        values, errors = (_pairs(store, info.run, name) if name in totals else []
                          for name in (objective, f"{objective}_se"))
        trials.append(sweep_trial(info, last.reason if last else "", last.by if last else "", values, errors))
    rep = report(trials, space, direction, sampler)
    return {
        "name": name, "objective": objective, "direction": direction, "sampler": sampler, "note": note,
        "space": [dimension_json(d) for d in space],
        "trials": [{"number": t.number, "run": t.run, "params": dict(t.params), "state": t.state, "value": t.value,
                    "reason": t.reason, "seconds": t.seconds, "noise": t.noise, **t.extra} for t in rep.trials],
        "best": rep.best.number if rep.best is not None else None,
        "saved": asdict(rep.saved),
        "advice": [{"kind": a.kind, "message": a.message, "dimension": a.dimension, "space": list(a.space)}
                   for a in rep.advice],
    }
