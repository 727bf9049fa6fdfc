"""The growth benchmark's smoke form (``benchmarks/growth.py --quick``): both tables print, with
positive figures where they cannot be anything else (step times, the writer's CPU, operator
counts, the isolated cost of a module call under a global hook) and a sampled step that
dispatches more operators than a bare one, more with more layers, and by a constant per
recorded call of a reused module. The training steps' timing differences are not checked: on
a busy machine three short rounds are noise."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cores import all_cores

ROOT = Path(__file__).resolve().parent.parent
#: The quick form takes about 30 s on 2 busy cores; this bounds a hang, not its speed.
DEADLINE_SECONDS = 180

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("growth") / "quick.json"
    with all_cores():  # a benchmark: alone, and nothing starved beside it
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "growth.py"), "--quick", "--json", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_SECONDS)
    assert done.returncode == 0, f"growth.py --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(out.read_text())
    report["table"] = done.stdout
    return report


def test_both_tables_print_with_a_header(quick):
    table = quick["table"]
    assert "threads" in table and "CPUs" in table
    assert "\nlayers: " in table and "+us/layer" in table and "ops every=1" in table
    assert "\ncalls: " in table and "unsampled +us/call" in table and "+ops sampled" in table
    assert "isolated, nn.Identity called in a loop" in table


def test_the_layers_table_has_positive_times_and_more_operators_when_sampled(quick):
    rows = quick["layers"]
    assert len(rows) >= 2
    for r in rows:
        assert r["rounds"] >= 3 and r["finite"]
        assert r["bare_ms"] > 0 and r["every1_ms"] > 0 and r["writer_cpu_ms"] > 0, r
        assert 0 < r["ops_bare"] < r["ops_unsampled"] < r["ops_every1"], r
    deep, shallow = max(rows, key=lambda r: r["depth"]), min(rows, key=lambda r: r["depth"])
    assert deep["ops_every1"] - deep["ops_bare"] > shallow["ops_every1"] - shallow["ops_bare"]


def test_the_calls_table_has_positive_times_and_sampled_operators_growing_with_log2_of_the_calls(quick):
    rows = sorted(quick["calls"], key=lambda r: r["calls"])
    assert len(rows) >= 3
    for r in rows:
        assert r["rounds"] >= 3 and r["finite"]
        assert r["bare_ms"] > 0 and r["every1_ms"] > 0 and r["writer_cpu_ms"] > 0, r
        assert 0 < r["ops_bare"] < r["ops_unsampled"] < r["ops_every1"], r
    # idle: the same few operators per step (the vital signs) whatever the calls
    assert len({r["ops_unsampled"] - r["ops_bare"] for r in rows}) == 1
    # sampled: the same number more per recorded call (1st, 2nd, 4th ...), not per call
    added = [r["ops_every1"] - r["ops_unsampled"] for r in rows]
    per_record = [(b - a) / (rb["records"] - ra["records"]) for a, b, ra, rb in zip(added, added[1:], rows, rows[1:])]
    assert len(set(per_record)) == 1 and per_record[0] > 0, per_record


def test_the_isolated_call_cost_is_positive_for_any_process_wide_hook(quick):
    isolated = quick["isolated"]
    assert isolated["bare"] > 0 and isolated["no-op hook"] > 0 and isolated["unsampled"] > 0, isolated
