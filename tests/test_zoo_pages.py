"""The run page in a real browser (Debian's chromium, driven by Playwright) on stored runs of the
zoo's real tiny trainings (benchmarks/zoo): a ConvNet, an MLP, an LSTM and a small transformer,
each healthy and with one pathology. The eight runs are trained once for the module into one
logdir, served by one server that only reads them.

On every page, checks that hold for any run: no script error or failed request; every panel
shows data or says why it shows none; no legend entry without a line; the validation loss
drawn as stored, unsmoothed; the incidents cause first. A full-page screenshot of each is saved
under ``$BABYSIT_ARTEFACTS/pages/<run name>.png`` (default: ``artefacts/`` in the repository).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from monitor.frames import load_run
from servers import serving
from browser import source_data
from zoo_pages import GLYPHS_JS, LEGEND_PROBLEMS_JS, PANEL_PROBLEMS_JS, ROOT, RUNS, settled, train_all

ARTEFACTS = Path(os.environ.get("BABYSIT_ARTEFACTS", ROOT / "artefacts")) / "pages"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The eight runs trained into one logdir: (logdir, {entry name: run id})."""
    logdir = tmp_path_factory.mktemp("zoo-runs")
    ids, seconds = train_all(logdir)
    print(f"zoo runs trained in {seconds:.1f} s")
    return logdir, ids


@pytest.fixture(scope="module")
def zoo_server(zoo):
    """One server over the stored runs, for the module (named before ``page`` by the tests, so
    each page is closed before it stops)."""
    logdir, _ = zoo
    with serving(logdir) as running:
        yield running


@pytest.fixture
def page(page):
    """The shared tab (tests/conftest.py), failing on any failed request or HTTP error too."""
    page.strict_network = True
    return page


def stored(logdir, run_id: str):
    """The run as the store holds it (monitor.frames), to compare the page with."""
    return load_run(run_id, logdir)


def test_each_pathological_zoo_run_really_raised_the_flag_it_is_meant_to_and_the_healthy_ones_none(zoo):
    logdir, ids = zoo
    for zoo_run in RUNS:
        frames = stored(logdir, ids[zoo_run.entry])
        kinds = set(frames.flags["kind"])
        if zoo_run.cause is None:
            assert not kinds, f"{zoo_run.entry}: a healthy run raised {sorted(kinds)}"
        else:
            assert zoo_run.cause in kinds, f"{zoo_run.entry}: no {zoo_run.cause} flag, only {sorted(kinds)}"
            assert frames.incidents[0].cause == zoo_run.cause, (zoo_run.entry, frames.incidents)
        if zoo_run.symptoms:
            assert kinds & set(zoo_run.symptoms), f"{zoo_run.entry}: none of its symptoms {zoo_run.symptoms}"


def _screenshot(page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTEFACTS / f"{name}.png", full_page=True)


def _check_panels(answer: dict, run: str) -> None:
    """Every card shows data (a plot that draws, a loaded image, a table or list with rows) or a
    visible note: ``answer`` is PANEL_PROBLEMS_JS's, settled."""
    assert not answer["problems"], f"{run}: {answer['problems']}\nwhat each card showed: {answer['cards']}"
    assert len(answer["cards"]) >= 10, answer["cards"]  # the walk found the page's cards


def _check_legends(answer: dict, run: str) -> None:
    """No shown legend entry whose glyphs draw nothing: ``answer`` is LEGEND_PROBLEMS_JS's, settled."""
    assert not answer["problems"], f"{run}: {answer['problems']} (shown entries: {answer['entries']})"
    assert "loss_linear: train" in answer["entries"], answer["entries"]


def _same(drawn: list, stored_values: list) -> bool:
    return len(drawn) == len(stored_values) and all(
        (math.isnan(a) and math.isnan(b)) if (math.isnan(a) or math.isnan(b)) else a == pytest.approx(b, rel=1e-12)
        for a, b in zip(drawn, stored_values))


def _check_validation(page, run: str, frames) -> None:
    """The page's validation source holds the stored val_loss points as they are, and the line
    and markers draw its raw values, not a smoothed column."""
    val = frames.series("val_loss")
    steps, values = [int(s) for s in val.index], [float(v) for v in val.to_numpy()]
    assert len(steps) >= 2, f"{run}: only {len(steps)} validation points stored"
    drawn = source_data(page, "loss_val")
    assert drawn is not None and drawn["step"] == steps, f"{run}: validation steps {drawn} != stored {steps}"
    assert _same(drawn["value"], values), f"{run}: validation values {drawn['value']} != stored {values}"
    assert _same(drawn["smooth"], values), f"{run}: validation smoothed {drawn['smooth']} != stored {values}"
    glyphs = page.evaluate(GLYPHS_JS, ["loss_linear", "loss_val"])
    assert glyphs and all(g["y"] == "value" for g in glyphs), f"{run}: the validation glyphs draw {glyphs}"


def _check_incidents(page, zoo_run, frames) -> None:
    """The incidents list, as the page renders it (web/js/src/flags.js: one ``li`` per incident,
    ``data-kind`` its cause, ``.flag-member`` per flag): the expected cause first, its symptoms
    folded into it."""
    items = page.locator("#flags > li")
    causes = [item.get_attribute("data-kind") for item in items.all()]
    assert page.locator("#flag-count").inner_text() == str(len(causes)), causes
    if zoo_run.cause is None:
        assert causes == [], f"{zoo_run.entry}: a healthy run lists incidents {causes}"
        assert page.locator("#no-flags").is_visible()
        return
    assert causes and causes[0] == zoo_run.cause, f"{zoo_run.entry}: incidents {causes}, expected {zoo_run.cause} first"
    assert page.locator("#no-flags").is_hidden()
    first = items.nth(0)
    assert zoo_run.cause in first.locator(".flag-meta").first.inner_text()
    members = [m.get_attribute("data-kind") for m in first.locator(".flag-member").all()]
    assert members and members[0] == zoo_run.cause, f"{zoo_run.entry}: first incident's flags {members}"
    raised = set(frames.flags["kind"]) & set(zoo_run.symptoms)
    for kind in sorted(raised):
        assert kind in members, f"{zoo_run.entry}: its {kind} flag is not folded into {zoo_run.cause}: {members}"
        assert kind not in causes, f"{zoo_run.entry}: {kind} listed as an incident of its own: {causes}"


@pytest.mark.parametrize("zoo_run", RUNS, ids=[r.entry for r in RUNS])
def test_the_run_page_of_a_real_training_shows_every_panel_and_its_incidents_cause_first(zoo, zoo_server, page,
                                                                                          zoo_run):
    logdir, ids = zoo
    run_id = ids[zoo_run.entry]
    frames = stored(logdir, run_id)
    page.goto(f"{zoo_server.url}/runs/{run_id}")
    page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=20_000)
    assert page.locator("#status").inner_text() in ("finished", "diverged", "stopped"), zoo_run.entry
    # Some panels fill a moment after the load (an image, a histogram) and legends follow their
    # sources once a second: read both once settled, or out of time, before the picture is taken.
    panels = settled(page, PANEL_PROBLEMS_JS, timeout=5.0)
    legends = settled(page, LEGEND_PROBLEMS_JS, timeout=5.0)
    _screenshot(page, zoo_run.entry)
    _check_validation(page, zoo_run.entry, frames)  # the checks of one part of the page first,
    _check_incidents(page, zoo_run, frames)
    _check_legends(legends, zoo_run.entry)
    _check_panels(panels, zoo_run.entry)  # and the walk over every card last
