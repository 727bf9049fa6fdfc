"""The ranks of a distributed job on the dashboard: rank 0's run id is the job's and rank
r's run is ``<job>.r<r>`` (``trainer_hooks.agreement.job_run_id``; the page's own copy of
the rule is ``web/js/src/ranks.js``). The run page draws the ranks' loss as a band, lowest
to highest, behind rank 0's curve."""
from __future__ import annotations

import re

import numpy as np

RANK_SUFFIX = re.compile(r"^(.+)\.r(\d+)$")


def job_of(run: str) -> tuple[str, int]:
    """(job, rank) of a run id; a run that is its own job is rank 0."""
    found = RANK_SUFFIX.match(run)
    return (found.group(1), int(found.group(2))) if found else (run, 0)


def rank_runs(job: str, world: int) -> list[str]:
    return [job if r == 0 else f"{job}.r{r}" for r in range(max(world, 1))]


def loss_spread(store, run: str, max_points: int, series) -> dict:
    """The loss of every stored rank of ``run``'s job, as its lowest and highest per stretch
    of steps (``max_points`` stretches: each rank's series is downsampled keeping its
    extremes, so the band's edges are the ranks' true extremes). ``series(store, run,
    names, max_points)`` reads one run's scalars (``web.history.scalar_series``).
    ``{"ranks": [run ids], "step": [...], "low": [...], "high": [...]}``."""
    info = store.run_info(run)
    job, _ = job_of(run)
    ranks = [r for r in rank_runs(job, info.world if info else 1) if store.run_info(r) is not None]
    losses = [series(store, r, ["loss"], max_points).get("loss") for r in ranks]
    losses = [(np.asarray(s["step"]), np.asarray(s["value"], dtype=float)) for s in losses if s and s["step"]]
    if len(losses) < 2:
        return {"ranks": ranks, "step": [], "low": [], "high": []}
    last = max(int(steps.max()) for steps, _ in losses)
    width = max(1, -(-(last + 1) // max_points))  # steps per stretch, rounded up
    buckets = np.arange(0, last + 1, width)
    low = np.full(len(buckets), np.inf)
    high = np.full(len(buckets), -np.inf)
    for steps, values in losses:
        finite = np.isfinite(values)
        where = steps[finite] // width
        np.minimum.at(low, where, values[finite])
        np.maximum.at(high, where, values[finite])
    seen = np.isfinite(low)
    return {"ranks": ranks, "step": buckets[seen].tolist(), "low": low[seen].tolist(), "high": high[seen].tolist()}
