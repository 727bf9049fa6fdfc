"""``babysit run`` on the unmodified scripts of examples/unmodified/, one shape each.

Every script runs twice, side by side: ``python SCRIPT`` and ``babysit run SCRIPT``. The
script's stdout and exit status must be the same; the stored run must have the loss of
each step (as the script computed it), layer statistics, the step count and the status.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import monitor
from monitor.store import RunStore
from trainer_hooks.schedule import MAX_VITALS_EVERY, VITALS_START_STEPS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "unmodified"
BABYSIT_LINE = re.compile(r"^babysit: .*\n", re.MULTILINE)


@dataclass
class Both:
    bare: subprocess.CompletedProcess
    watched: subprocess.CompletedProcess
    logdir: Path

    def run(self, name: str):
        return monitor.load_run(name, logdir=self.logdir)

    @property
    def babysit_lines(self) -> list[str]:
        return [line for line in self.watched.stderr.splitlines() if line.startswith("babysit: ")]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


#: Bare runs of the example scripts, by (script, args): a script run again with other babysit
#: options prints the same (the examples are seeded, hashing and threads fixed by _env).
_bare_runs: dict[tuple, subprocess.CompletedProcess] = {}


def run_both(tmp_path: Path, script: str | Path, *args: str, babysit: tuple[str, ...] = (),
             cwd: Path = ROOT, timeout: float = 240) -> Both:
    """``python script args`` and ``babysit run script args`` at the same time (the bare run
    once per example script and arguments)."""
    logdir = tmp_path / "runs"
    key = (str(script), args) if cwd == ROOT else None
    bare = _bare_runs.get(key)
    bare_process = None if bare is not None else subprocess.Popen(
        [sys.executable, str(script), *args], cwd=cwd, env=_env(), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    watched = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "--logdir", str(logdir), *babysit,
                                str(script), *args], cwd=cwd, env=_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if bare is None:
        bare = _finished(bare_process, [script, *args], timeout)
        if key is not None:
            _bare_runs[key] = bare
    return Both(bare, _finished(watched, ["babysit run", script, *args], timeout), logdir)


def _finished(process: subprocess.Popen, argv: list, timeout: float) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def printed(stdout: str, pattern: str) -> list[float]:
    return [float(v) for v in re.findall(pattern, stdout)]


def assert_same_output(both: Both) -> None:
    assert both.watched.returncode == both.bare.returncode, both.watched.stderr[-3000:]
    assert both.watched.stdout == both.bare.stdout
    assert BABYSIT_LINE.sub("", both.watched.stderr) == both.bare.stderr


def assert_layer_statistics(frames, layers: set[str]) -> None:
    stats = frames.layer_stats
    for signal in ("activation", "output_grad", "param_grad"):
        assert not stats[stats.signal == signal].empty, signal
    params = stats[stats.signal == "param_grad"]
    assert {layer.rpartition(".")[0] for layer in params.layer} >= layers  # "fc.weight": layer "fc"
    assert (params.update_ratio > 0).all() and params.update_ratio.notna().all()


def test_a_plain_loop_with_a_criterion_module_and_dataloader_workers_is_recorded_step_by_step(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "cross_entropy_loop.py", "--epochs", "2", "--workers", "2")
    assert_same_output(both)
    frames = both.run("cross_entropy_loop")
    loss = frames.series("loss")
    assert list(loss.index) == list(range(2 * 24))  # 1500 images in batches of 64, two epochs
    assert loss.iloc[-1] == pytest.approx(printed(both.bare.stdout, r"train loss ([\d.]+)")[-1], abs=1e-4)
    # The evaluation under no_grad, in eval mode, through the criterion: logged as val_loss.
    assert list(frames.series("val_loss").round(4)) == printed(both.bare.stdout, r"val loss ([\d.]+)")
    assert_layer_statistics(frames, {"features.0", "classifier.1", "classifier.3"})
    assert frames.status.state.iloc[-1] == "finished"
    config = frames.info["config"]
    assert config["optimizer"] == "Adam" and config["lr"] == 1e-3
    assert config["script"].endswith("cross_entropy_loop.py") and config["args"] == ["--epochs", "2", "--workers", "2"]


def test_a_functional_loss_and_a_learning_rate_schedule_are_recorded(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "mse_with_scheduler.py")
    assert_same_output(both)
    frames = both.run("mse_with_scheduler")
    loss = frames.series("loss")
    assert len(loss) == 120
    assert list(loss.loc[[0, 40, 80]].round(4)) == printed(both.bare.stdout, r"mse ([\d.]+), lr")
    assert sorted(set(frames.series("lr").round(6))) == [0.0125, 0.025, 0.05]
    assert_layer_statistics(frames, {"0", "2"})


def test_weights_updated_by_hand_with_no_optimizer_count_a_step_per_backward_pass(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "manual_sgd.py")
    assert_same_output(both)
    frames = both.run("manual_sgd")
    loss = frames.series("loss")
    assert list(loss.index) == list(range(60))
    assert list(loss.loc[[0, 20, 40]].round(4)) == printed(both.bare.stdout, r"loss ([\d.]+)")
    # One nn.Linear, and no optimizer: still its activations, output gradients, parameter
    # gradients and update ratios (the weights' change from one step to the next).
    assert_layer_statistics(frames, {"Linear"})
    # Known to be trained by hand at the second backward pass (the gradients were cleared
    # and no optimizer stepped): the vital signs start with step 1, the loss with step 0.
    read = sorted(set(frames.vitals.step))
    assert read[0] == 1 and set(range(1, VITALS_START_STEPS)) <= set(read)  # then as their budget allows
    assert max(b - a for a, b in zip(read, read[1:])) <= MAX_VITALS_EVERY


def test_lbfgs_counts_optimizer_steps_not_closure_evaluations_and_records_the_closures_first_loss(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "lbfgs_rnn.py")
    assert_same_output(both)
    frames = both.run("lbfgs_rnn")
    loss = frames.series("loss")
    assert list(loss.index) == list(range(6))
    assert list(loss.round(5)) == printed(both.bare.stdout, r"loss ([\d.]+)")  # what step() returned
    stats = frames.layer_stats
    # The cell runs 59 times per forward pass: recorded at its 1st, 2nd, 4th, ... 32nd call.
    assert set(stats[stats.signal == "activation"].layer) == {
        f"{name}{suffix}" for name in ("cell", "head") for suffix in ("", "#2", "#4", "#8", "#16", "#32")}
    assert_layer_statistics(frames, {"cell", "head"})


def test_a_model_returning_logits_and_loss_with_accumulation_and_clipping_logs_one_loss_per_step(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "logits_and_loss.py")
    assert_same_output(both)
    frames = both.run("logits_and_loss")
    loss = frames.series("loss")
    assert list(loss.index) == list(range(40))  # optimizer steps, not the 160 backward passes
    assert 3.0 < loss.iloc[0] < 4.0  # the four scaled micro-batch losses add up to their mean
    vitals = frames.vitals
    assert (vitals[vitals.layer == "(global)"].grad_norm <= 1.0 + 1e-4).all()  # what the step used: clipped
    assert_layer_statistics(frames, {"embed", "mlp.0", "head"})


def test_an_optimizer_made_late_inside_a_trainer_class_is_found(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "trainer_class.py")
    assert_same_output(both)
    frames = both.run("trainer_class")
    assert len(frames.series("loss")) == 80
    assert frames.series("loss").iloc[-1] == pytest.approx(printed(both.bare.stdout, r"final loss ([\d.]+)")[0],
                                                           abs=1e-4)
    assert_layer_statistics(frames, {"0", "2"})


def test_two_models_trained_one_after_the_other_are_two_runs(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "two_models.py")
    assert_same_output(both)
    first, second = both.run("two_models"), both.run("two_models-sequential")
    assert len(first.series("loss")) == 50 and len(second.series("loss")) == 30
    assert second.series("loss").iloc[-1] == pytest.approx(printed(both.bare.stdout, r"classifier: loss ([\d.]+)")[0],
                                                           abs=1e-4)
    # The encoder runs under no_grad in the second part: it is not part of the classifier's run.
    assert set(second.layer_stats.layer) == {"0", "1", "2", "0.weight", "0.bias", "2.weight", "2.bias"}


def test_a_model_pickled_whole_and_loaded_back_with_weights_only_continues_its_run(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "pickle_model.py", str(tmp_path))
    assert_same_output(both)
    frames = both.run("pickle_model")
    assert list(frames.series("loss").index) == list(range(60))
    assert frames.series("loss").iloc[-1] == pytest.approx(printed(both.bare.stdout, r"second half: loss ([\d.]+)")[0],
                                                           abs=1e-4)
    assert any("loaded back from a checkpoint" in line for line in both.babysit_lines)
    assert frames.status.state.iloc[-1] == "finished"


def test_a_crash_passes_through_with_its_traceback_and_exit_status_and_is_stored_as_crashed(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "crash_midway.py")
    assert both.bare.returncode == 1
    assert_same_output(both)  # the same traceback, from the script's own frames
    frames = both.run("crash_midway")
    assert list(frames.series("loss").index) == list(range(25))
    end = frames.status.iloc[-1]
    assert end.state == "crashed" and end.reason == "ValueError: corrupt record at step 25"


SHAPE = """
import sys, os, json
print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
                  "file": __file__, "spec": repr(__spec__)}))
"""


def test_the_script_sees_argv_path_cwd_and_name_as_python_gives_them(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "shape.py").write_text(SHAPE)
    both = run_both(tmp_path, "sub/shape.py", "a", "--lr", "3", cwd=tmp_path)
    assert_same_output(both)
    seen = json.loads(both.watched.stdout)
    assert seen["argv"] == ["sub/shape.py", "a", "--lr", "3"] and seen["path0"] == str(tmp_path / "sub")
    assert any("found no model being trained" in line for line in both.babysit_lines)  # one line, and it ran on


def test_a_module_run_with_dash_m_sees_what_python_dash_m_gives_it(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "shape.py").write_text(SHAPE)
    bare = subprocess.run([sys.executable, "-m", "pkg.shape", "x"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=60)
    watched = subprocess.run([sys.executable, "-m", "trainer_hooks", "--logdir", str(tmp_path / "runs"),
                              "-m", "pkg.shape", "x"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                             timeout=120)
    assert watched.returncode == bare.returncode == 0, watched.stderr
    address = re.compile(r" at 0x[0-9a-f]+")
    assert address.sub("", watched.stdout) == address.sub("", bare.stdout)
    assert json.loads(watched.stdout)["argv"][0] == str(tmp_path / "pkg" / "shape.py")


EXITING = """
import sys, torch
from torch import nn
model = nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(5):
    loss = model(torch.ones(4, 3)).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
print("done", flush=True)
{ending}
"""


@pytest.mark.parametrize("ending, status, state", [
    ("sys.exit(3)", 3, "crashed"), ("sys.exit(0)", 0, "finished"), ("raise KeyboardInterrupt", -2, "interrupted")])
def test_the_exit_status_passes_through_and_decides_how_the_run_ended(tmp_path, ending, status, state):
    script = tmp_path / "exiting.py"
    script.write_text(EXITING.format(ending=ending))
    both = run_both(tmp_path, script)
    assert both.bare.returncode == status
    assert_same_output(both)
    frames = both.run("exiting")
    assert len(frames.series("loss")) == 5 and frames.status.state.iloc[-1] == state


def test_a_script_that_watches_its_model_itself_is_left_to_it(tmp_path):
    # The script stores into ./runs (its own watch()), as does babysit here: one store for both processes.
    both = run_both(tmp_path, ROOT / "examples" / "train_mnist_like.py", cwd=tmp_path, timeout=400)
    assert both.watched.returncode == 0, both.watched.stderr[-2000:]
    run_id = re.compile(r"digits-mlp-\d{8}-\d{6}-[0-9a-f]{4}")  # the script prints its run's id
    assert run_id.sub("ID", both.watched.stdout) == run_id.sub("ID", both.bare.stdout)
    with RunStore(both.logdir) as store:
        names = [info.name for info in store.runs()]
    assert names == ["digits-mlp", "digits-mlp"]  # the bare run's and the watched one's: no second run of babysit's
    assert any("the script watches Sequential itself" in line for line in both.babysit_lines)


def test_run_name_and_sampling_interval_are_babysit_options_and_the_rest_is_the_scripts(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "mse_with_scheduler.py", babysit=("--run", "regression", "--every", "10"))
    assert_same_output(both)
    frames = both.run("regression")
    # Found at its first optimizer step, after step 0's forward pass: sampled from step 10 on.
    assert set(frames.layer_stats.step) == set(range(10, 120, 10))


def test_babysit_run_streams_to_a_server_and_records_the_sweep_it_belongs_to(tmp_path):
    from servers import serving

    with serving(tmp_path / "server") as running:
        both = run_both(tmp_path, EXAMPLES / "manual_sgd.py",
                        babysit=("--server", running.url, "--sweep", "lr-coarse", "--run", "streamed"))
    assert_same_output(both)
    frames = monitor.load_run("streamed", logdir=tmp_path / "server")  # in the server's store
    assert len(frames.series("loss")) == 60 and frames.status.state.iloc[-1] == "finished"
    assert frames.info["config"]["sweep"] == "lr-coarse" and frames.info["config"]["optimizer"] is None
    assert any(f"streamed to {running.url}" in line for line in both.babysit_lines)


def test_babysit_run_with_its_own_dashboard_serves_it_while_the_script_runs(tmp_path):
    both = run_both(tmp_path, EXAMPLES / "trainer_class.py", babysit=("--dashboard",))
    assert_same_output(both)
    assert any(line.startswith("babysit: live dashboard at http://127.0.0.1:") for line in both.babysit_lines)
    frames = both.run("trainer_class")
    assert len(frames.series("loss")) == 80 and frames.status.state.iloc[-1] == "finished"


def test_babysit_run_refuses_what_it_cannot_run_in_one_line(tmp_path):
    for args, problem in ((["no-such.py"], "no script at 'no-such.py'"), ([], "give the script to run"),
                          (["--run", "bad name", "x.py"], "--run: expected")):
        done = subprocess.run([sys.executable, "-m", "monitor.cli", "run", *args], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and problem in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


ENDLESS = """
import sys, time, torch
from torch import nn
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, 4), torch.randn(64, 1)
try:
    for step in range(100_000):
        try:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        except Exception as exc:  # a script that swallows its errors must not swallow the stop
            print("swallowed", exc)
        time.sleep(0.005)
finally:
    print(f"finally after {step} steps", flush=True)
print("the loop ran to its end")
"""


def test_a_stop_from_the_dashboard_ends_a_script_that_never_reads_should_stop(tmp_path):
    from servers import serving, stop_from_dashboard

    script = tmp_path / "endless.py"
    script.write_text(ENDLESS)
    with serving(tmp_path / "server") as running:
        job = subprocess.Popen([sys.executable, "-m", "monitor.cli", "run", "--server", running.url, "--run",
                                "endless", str(script)], env=_env(), text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        try:
            deadline, runs = time.monotonic() + 60, []
            while time.monotonic() < deadline and not any((r.last_step or 0) >= 10 for r in runs):
                time.sleep(0.2)
                with RunStore(tmp_path / "server") as store:
                    runs = list(store.runs())
            assert runs, job.stderr.read() if job.poll() is not None else "no run stored"
            stop_from_dashboard(running.url, runs[0].run, "enough")
            out, err = job.communicate(timeout=60)
        finally:
            if job.poll() is None:
                job.kill()
    assert job.returncode == 0, err[-3000:]
    assert "finally after" in out and "swallowed" not in out and "ran to its end" not in out
    left_at = int(re.search(r"finally after (\d+) steps", out).group(1))
    assert left_at < 1000
    assert any(line.startswith("babysit: run endless") and "stopped at step" in line and "(dashboard): enough" in line
               for line in err.splitlines()), err[-2000:]
    frames = monitor.load_run("endless", logdir=tmp_path / "server")
    assert frames.status.state.iloc[-1] == "stopped" and "enough" in frames.status.reason.iloc[-2]
