"""How a run's end is stored whatever the script does (issue 11: the status is right, and
``watch`` says where the run is): a script that never closes its run and dies of an
exception, or of Ctrl-C, and a run whose loss went NaN that nothing stopped. Real tiny
trainings, real SQLite files, the scripts in their own interpreters."""
from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from monitor import load_run
from monitor.cli import main as cli
from monitor.frames import SeveralRunsWarning
from trainer_hooks import watch

ROOT = Path(__file__).resolve().parent.parent

#: A script in the ordinary style: watch() without ``with`` and no close(), then ``ending``.
SCRIPT = """
import sys, torch
from torch import nn
from trainer_hooks import watch
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
mon = watch(model, optimizer, run="script", logdir=sys.argv[1])
for step in range(12):
    loss = model(torch.randn(16, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    mon.log(loss=loss)
print("the script's own output")
{ending}
"""


def run_script(tmp_path: Path, ending: str) -> subprocess.CompletedProcess:
    path = tmp_path / "train.py"
    path.write_text(SCRIPT.format(ending=ending))
    return subprocess.run([sys.executable, str(path), str(tmp_path / "runs")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                       "PATH": "/usr/bin:/bin"})


def test_a_script_that_dies_of_an_exception_without_closing_its_run_stores_it_crashed_with_the_exception(tmp_path):
    done = run_script(tmp_path, 'raise RuntimeError("CUDA out of memory <simulated>")')
    assert done.returncode == 1 and done.stdout == "the script's own output\n"
    assert "Traceback" in done.stderr and "RuntimeError: CUDA out of memory <simulated>" in done.stderr
    run = load_run("script", tmp_path / "runs")
    assert run.info["status"] == "crashed" and run.status["state"].iloc[-1] == "crashed"
    assert run.status["reason"].iloc[-1].startswith("RuntimeError: CUDA out of memory <simulated>; closed at "
                                                    "interpreter exit")
    assert len(run.series("loss")) == 12


def test_a_script_interrupted_without_closing_its_run_stores_it_interrupted(tmp_path):
    done = run_script(tmp_path, "raise KeyboardInterrupt")
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    assert load_run("script", tmp_path / "runs").info["status"] == "interrupted"


def test_a_script_that_ends_without_closing_its_run_stores_it_finished_and_said_where_it_was(tmp_path):
    done = run_script(tmp_path, "")
    assert done.returncode == 0 and done.stdout == "the script's own output\n"
    run = load_run("script", tmp_path / "runs")
    assert run.info["status"] == "finished"
    first = done.stderr.splitlines()[0]
    assert first == f"babysit: watching run {run.run}, stored in {tmp_path / 'runs' / 'babysit.sqlite3'}"


def nan_run(tmp_path: Path, run: str = "nan") -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with watch(model, optimizer, run=run, logdir=tmp_path, every=2) as mon:  # no early stopping: nothing stops it
        for step in range(10):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            mon.log(loss=math.nan if step == 5 else loss)
    assert mon.stop_reason is None
    return mon.run_id


def test_a_run_whose_loss_went_nan_and_was_never_stopped_ends_diverged(tmp_path):
    run = load_run(nan_run(tmp_path), tmp_path)
    assert run.info["status"] == "diverged" and list(run.flags["kind"]) == ["divergence"]


def test_a_run_is_found_by_its_name_the_newest_of_several_with_a_note(tmp_path, capsys):
    older, newer = nan_run(tmp_path, "twice"), nan_run(tmp_path, "twice")
    with pytest.warns(SeveralRunsWarning, match=f"2 runs are named 'twice'; reading the newest, {newer}"):
        assert load_run("twice", tmp_path).run == newer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # by its id: no note
        assert load_run(older, tmp_path).run == older
    capsys.readouterr()
    assert cli(["export", "twice", "--logdir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    folder = tmp_path / f"{newer}-export"
    tables = ("scalars", "layer_stats", "flags", "input_stats", "status")
    assert out.splitlines() == [str(folder / f"{name}.csv") for name in tables]
    assert f"2 runs are named 'twice'; reading the newest, {newer}" in err
    assert f"babysit: run {newer} has no filters: not written" in err  # an MLP: no first-layer filters


def test_an_unknown_run_name_lists_the_known_runs(tmp_path):
    run = nan_run(tmp_path)
    with pytest.raises(KeyError, match=f"no run 'other' in .*known runs: {run}"):
        load_run("other", tmp_path)
