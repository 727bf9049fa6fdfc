"""The peers benchmark's smoke form (``benchmarks/vs_peers.py --quick``): one worker process
per config, driven in rounds, prints a row per config with its step time and ratio to bare.
Only babysit and the plain-hooks floor run here, so the test needs neither wandb nor
TensorBoard; the names of configs and the skipping of a peer not installed are checked
in-process."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cores import all_cores

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import vs_peers  # noqa: E402

#: Three workers start in parallel and train 2 rounds of 5 steps: about 30 s on 2 cores.
#: This bounds a hung worker, not its speed.
QUICK_DEADLINE_SECONDS = 150
CONFIGS = ("bare", "babysit every=1", "hooks floor every=1")


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The table's mlp rows, by config: the cells after the config's name."""
    rows = {}
    for line in stdout.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == "mlp" and len(cells) > 2:
            rows[cells[1]] = cells[2:]
    return rows


@pytest.mark.timeout(QUICK_DEADLINE_SECONDS + 30)
def test_the_quick_form_prints_a_row_per_config_with_bare_as_the_unit():
    with all_cores():  # three worker processes
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_peers.py"), "--quick", "--workload",
                               "mlp", "--configs", ",".join(CONFIGS)], cwd=ROOT, capture_output=True, text=True,
                              timeout=QUICK_DEADLINE_SECONDS)
    assert done.returncode == 0, f"vs_peers.py --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    rows = table_rows(done.stdout)
    assert set(rows) == set(CONFIGS), done.stdout
    for config, (median_ms, ratio, *_) in rows.items():
        assert float(median_ms) > 0 and float(ratio) > 0, (config, done.stdout)
    assert rows["bare"][1] == "1.000"
    assert re.search(r"^mlp, every 1 step\(s\): babysit every=1 [\d.]+x vs hooks floor every=1 [\d.]+x: ",
                     done.stdout, re.MULTILINE), done.stdout


def test_every_default_config_name_parses_to_its_tool_and_cadence():
    parsed = {name: vs_peers.Config.parse(name) for name in vs_peers.CONFIGS}
    assert {c.tool for c in parsed.values()} == set(vs_peers.MONITORS)
    assert parsed["babysit auto"].every is None and parsed["wandb log=all freq=100"].every == 100
    assert vs_peers.parse_configs("babysit every=1, hooks floor every=1")[0].name == "bare"  # always the unit
    with pytest.raises(ValueError, match="unknown config"):
        vs_peers.Config.parse("wandb every=1")


def test_a_peer_not_installed_is_skipped_by_name(monkeypatch, capsys):
    """wandb taken away and every other peer made present, whatever this machine has."""
    present = importlib.util.find_spec("json")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else present)
    kept = vs_peers.available(vs_peers.parse_configs(",".join(vs_peers.CONFIGS)))
    assert "wandb: not installed (pip install 'babysit[bench]')" in capsys.readouterr().out
    assert [c.name for c in kept] == [name for name in vs_peers.CONFIGS if not name.startswith("wandb")]
