"""The diagnosis benchmark's CI short form (``benchmarks/diagnosis.py --quick``): real small
trainings of the zoo, watched by babysit at its default settings, scored against ground
truth the zoo measures with raw torch. One run of the quick form (2 workers, under 3
minutes on 2 cores) serves every test here; the zoo's self-check is a test of its own, so
it passes or fails apart from babysit's detectors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cores import all_cores

ROOT = Path(__file__).resolve().parent.parent
#: The quick form takes under 3 minutes; this bounds a hung worker, not its speed.
QUICK_DEADLINE_SECONDS = 600
RECALL_TARGET = 0.95


#: Problems present at initialisation must be flagged within this many steps of the step by
#: which they are unambiguous (issue 10).
AT_INIT_STEPS = 20


def quick_form(tmp_path_factory, *options: str) -> list[dict]:
    """``diagnosis.py --quick`` with ``options``: its report per setting, the printed tables beside."""
    out = tmp_path_factory.mktemp("diagnosis") / "quick.json"
    with all_cores():  # two training processes on two cores
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "diagnosis.py"), "--quick", "--jobs", "2",
                               "--json", str(out), *options], cwd=ROOT, capture_output=True, text=True,
                              timeout=QUICK_DEADLINE_SECONDS)
    assert done.returncode == 0, f"diagnosis.py --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    written = json.loads(out.read_text())
    reports = written.get("reports", [written])
    for report in reports:
        report["table"] = done.stdout
    return reports


@pytest.fixture(scope="module")
def quick_forms(tmp_path_factory) -> dict[str, dict]:
    """The quick form at the default, every step and every tenth step, in one pool of two
    workers (one start-up, and the longest runs of all three first), by setting."""
    return {r["setting"]: r for r in quick_form(tmp_path_factory, "--every", "default", "1", "10")}


@pytest.fixture(scope="module")
def quick(quick_forms) -> dict:
    return quick_forms["every=default"]


@pytest.fixture(scope="module")
def every_step(quick_forms) -> dict:
    return quick_forms["every=1"]


@pytest.fixture(scope="module")
def every_tenth(quick_forms) -> dict:
    return quick_forms["every=10"]


#: Flags raised in the last share of a run are left out of the comparison across
#: intervals: a problem that begins there can outlast the run's end before a sparse
#: schedule has taken the samples that confirm it (the automatic interval is often a few
#: hundred steps by then).
LAST_STRETCH = 0.2


def verdicts(report: dict) -> dict[str, set]:
    """Per run, the flags raised before its last stretch, as (kind, layer). A divergence is
    compared by kind only: the layer it names is the first one seen holding NaN, which is
    where the sample fell, not a verdict."""
    return {r["name"]: {(f["kind"], None if f["kind"] == "divergence" else f["layer"]) for f in r["flags"]
                        if f["step"] < (1 - LAST_STRETCH) * r["steps"]}
            for r in report["results"]}


def test_the_zoo_measures_no_pathology_on_a_healthy_run_and_the_primary_kind_on_every_sick_run(quick):
    assert quick["zoo_problems"] == [], "\n".join(quick["zoo_problems"])


def test_the_quick_form_covers_every_kind_of_pathology_and_some_healthy_runs(quick):
    primaries = {r["primary"] for r in quick["results"]}
    assert primaries >= {"dead_relu", "saturation", "vanishing_gradient", "exploding_gradient",
                         "input_not_normalized", "initial_loss", "overfitting", "divergence", "plateau", None}
    assert sum(r["primary"] is None for r in quick["results"]) >= 3


def test_babysit_flags_at_least_95_percent_of_the_pathologies_at_default_settings(quick):
    score = quick["score"]
    missed = [r["name"] for r in quick["results"]
              if r["primary"] and r["primary_measured"] and not r["stopped_before_onset"]
              and r["primary"] not in r["detections"]]
    assert score["runs"] and score["found"] / score["runs"] >= RECALL_TARGET, (
        f"recall {score['found']}/{score['runs']}; missed: {', '.join(missed)}\n{quick['table']}")


def test_babysit_raises_no_flag_on_a_healthy_run_at_default_settings(quick):
    assert quick["score"]["healthy_flags"] == [], quick["table"]


def test_problems_present_at_initialisation_are_flagged_within_20_steps_at_default_settings(quick):
    late = []
    for r in quick["results"]:
        truth = next((t for t in r["truth"] if t["kind"] == r["primary"] and t["at_init"]), None)
        if truth is None:
            continue
        first = min((f["step"] for f in r["flags"] if f["kind"] == r["primary"]), default=None)
        if first is None or first > truth["unambiguous"] + AT_INIT_STEPS:
            late.append(f"{r['name']}: {r['primary']} unambiguous at {truth['unambiguous']}, flagged at {first}")
    assert not late, "\n".join(late)


def test_the_same_run_gets_the_same_flags_at_every_1_every_10_and_the_default(quick, every_step, every_tenth):
    default, one, ten = verdicts(quick), verdicts(every_step), verdicts(every_tenth)
    differ = [f"{name}: default {sorted(default[name], key=str)}, every=1 {sorted(one[name], key=str)}, "
              f"every=10 {sorted(ten[name], key=str)}" for name in default
              if not default[name] == one[name] == ten[name]]
    assert not differ, "\n".join(differ)


#: The zoo's real model shapes (issue 10): trained healthy, and at 30x their learning rate.
REAL_SHAPES = ("lstm-text-sgd", "gpt-text-sgd", "lstm-text-sgd-lr30x", "gpt-text-sgd-lr30x")


@pytest.fixture(scope="module")
def real_shapes(tmp_path_factory) -> dict:
    return {r["name"]: r for r in quick_form(tmp_path_factory, "--only", *REAL_SHAPES)[0]["results"]}


def test_the_lstm_and_the_tiny_transformer_raise_nothing_healthy_and_divergence_before_10x_at_30x(real_shapes):
    for healthy in REAL_SHAPES[:2]:
        assert real_shapes[healthy]["flags"] == [], (healthy, real_shapes[healthy]["flags"])
    for sick in REAL_SHAPES[2:]:
        r = real_shapes[sick]
        first = min((f["step"] for f in r["flags"] if f["kind"] == "divergence"), default=None)
        tenfold = r["loss"]["tenfold_step"]  # measured by the zoo on the raw losses
        assert first is not None and tenfold is not None and first < tenfold, (sick, first, tenfold, r["flags"])
