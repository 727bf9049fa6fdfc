"""``babysit sweep`` end to end: real trial processes under ``babysit run``, a real Optuna
study in an SQLite file, and two sweep processes sharing it; its refusals in one line."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import monitor
from monitor.cli import main
from monitor.store import RunStore

TRIAL = Path(__file__).with_name("sweep_trial.py")
COMMAND = ["--", "python", str(TRIAL), "--lr", "{lr}", "--epochs", "3"]


@pytest.mark.parametrize("args, words", [
    (["--space", "lr=loguniform(0,1)", *COMMAND], "--space lr: a log scale needs low > 0"),
    (["--space", "lr=loguniform(1e-3,1)", "--", "python", str(TRIAL), "--lr", "{rate}"],
     "uses {rate}, which no --space defines"),
    (["--space", "lr=loguniform(1e-3,1)", "--space", "wd=uniform(0,1)", *COMMAND],
     "--space wd never reaches the trial command"),
    (["--space", "lr=loguniform(1e-3,1)", "--", "bash", "train.sh", "{lr}"], "must run a Python script"),
    (["--space", "lr=loguniform(1e-3,1)"], "give the trial command after --"),
    (["--space", "lr=loguniform(1e-3,1)", "--sweep", "no spaces", *COMMAND], "--sweep: expected 1-90 characters"),
    (["--space", "lr=loguniform(1e-3,1)", "--dashboard", "--server", "http://127.0.0.1:9", *COMMAND],
     "cannot be combined with --server"),
])
def test_a_sweep_that_cannot_run_is_refused_in_one_line_before_any_trial(tmp_path, capsys, args, words):
    assert main(["sweep", "--logdir", str(tmp_path / "runs"), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.splitlines()) == 1 and err.startswith("babysit sweep: error: "), err
    assert not (tmp_path / "runs" / "sweeps").exists()


def sweep_process(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "monitor.cli", "sweep", "--logdir", str(tmp_path / "runs"),
                             *args, *COMMAND], cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def test_two_sweep_processes_sharing_one_storage_run_one_study_without_duplicating_a_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    common = ("--sweep", "shared", "--storage", storage, "--trials", "4", "--seed", "5",
              "--space", "lr=loguniform(1e-3,30)")
    first, second = sweep_process(tmp_path, *common), sweep_process(tmp_path, *common)
    outs = [p.communicate(timeout=240)[0] for p in (first, second)]
    assert first.returncode == second.returncode == 0, outs
    ran = [sorted(int(n) for n in re.findall(r"^babysit sweep: trial (\d+) \(.*\) (?:complete|pruned|diverged|"
                                               r"failed) after", out, re.M)) for out in outs]
    assert sorted(ran[0] + ran[1]) == list(range(4)), outs  # each trial once, by one of the two
    with RunStore(tmp_path / "runs") as store:
        runs = [r for r in store.runs() if r.config.get("sweep") == "shared"]
    assert sorted(r.config["trial"] for r in runs) == list(range(4))
    assert len({r.config["params"]["lr"] for r in runs}) == 4  # the same seed, yet no trial drawn twice
    assert all(r.config["space"] == ["lr=loguniform(0.001,30)"] and r.name == f"shared-{r.config['trial']:03d}"
               for r in runs)
    # Both report the whole study: every trial, whichever process ran it.
    for out in outs:
        assert re.search(r"^(complete|pruned)[^\n]* of 4 trials$", out, re.M), out
        assert re.search(r"^best: trial \d \(lr=[0-9.e-]+\): val_loss [0-9.e-]+, run shared-\d{3}-", out, re.M), out
    for r in runs:  # the truth from the raw loss: a trial whose loss blew up was pruned for it, at once
        frames = monitor.load_run(r.run, logdir=tmp_path / "runs")
        loss, ended = frames.series("loss"), frames.status.iloc[-1]
        blew_up = not loss.map(math.isfinite).all() or loss.max() > 100 * loss.iloc[0]
        if blew_up:
            assert ended.state == "diverged" and ended.by == "pruned", (r.config, ended)
            # in the report of the process that ended last (the other may have ended while it ran)
            assert any(re.search(rf"^{r.config['trial']}\s.*\spruned\s", out, re.M) for out in outs), outs
            assert len(loss) < 48  # 3 epochs of 16 steps: it did not run them
        else:
            assert ended.state == "finished" and len(frames.series("val_loss")) == 3, (r.config, ended)
            # each evaluation's standard error over its two batches, as the script's own numbers give it
            log = (tmp_path / "runs" / "sweeps" / "shared" / f"trial-{r.config['trial']:03d}.log").read_text()
            batches = [(float(a), float(b)) for a, b in re.findall(r"batches (\S+) (\S+)", log)]
            assert list(frames.series("val_loss_se")) == pytest.approx([abs(a - b) / 2 for a, b in batches],
                                                                       rel=1e-5)
    assert any(r.config["params"]["lr"] > 3 for r in runs) and any(r.config["params"]["lr"] < 0.03 for r in runs)


def test_a_trial_that_crashes_fails_with_its_error_and_the_sweep_goes_on(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import argparse\np = argparse.ArgumentParser(); p.add_argument('--lr', type=float)\n"
                      "args = p.parse_args()\nraise ValueError(f'no data for lr {args.lr:.3g}')\n")
    done = subprocess.run([sys.executable, "-m", "monitor.cli", "sweep", "--logdir", str(tmp_path / "runs"),
                           "--space", "lr=loguniform(1e-3,1)", "--trials", "2", "--parallel", "2", "--sweep", "broken",
                           "--", "python", str(script), "--lr", "{lr}"], cwd=tmp_path, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    failed = re.findall(r"^babysit sweep: trial (\d) \(lr=\S+\) failed after [\d.]+ s: (.*)$", done.stdout, re.M)
    assert sorted(n for n, _ in failed) == ["0", "1"], done.stdout
    assert all(why.startswith("ValueError: no data for lr ") for _, why in failed), failed
    assert "failed 2 of 2 trials" in done.stdout and "best:" not in done.stdout


def test_ctrl_c_ends_the_running_trials_and_prints_the_report_of_those_so_far(tmp_path):
    import signal
    import time

    sweep = subprocess.Popen([sys.executable, "-m", "monitor.cli", "sweep", "--logdir", str(tmp_path / "runs"),
                              "--space", "lr=loguniform(1e-3,1e-2)", "--trials", "4", "--sweep", "stopped",
                              "--", "python", str(TRIAL), "--lr", "{lr}", "--epochs", "100000"],
                             cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = tmp_path / "runs" / "sweeps" / "stopped" / "trial-000.log"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and "epoch 2:" in log.read_text()):
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)  # the terminal's Ctrl-C, to the sweep (its trials have their own sessions)
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, out
    assert "babysit sweep: interrupted; the trials so far:" in out
    assert re.search(r"^0\s.*\sfailed\s.*interrupted", out, re.M), out  # trial 0, ended as Ctrl-C would
    assert "trial 1 " not in out  # no trial asked for after the interrupt
