"""A torchrun job of two ranks (gloo, CPU) is one job: both ranks stream to one server,
tagged with their rank; a Stop pressed on the dashboard stops both at the same step; a
rank out of step with the other is flagged."""
import json
import subprocess
import sys
import time
from pathlib import Path


import monitor
from monitor.store import RunStore
from servers import serving, stop_from_dashboard
from test_early_stopping_ddp import free_port
from trainer_hooks.agreement import AGREE_EVERY

WORKER = Path(__file__).with_name("ddp_job_worker.py")


def torchrun(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(WORKER), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_torchrun_ranks_stream_to_one_server_as_one_job_and_stop_together_from_the_dashboard(tmp_path):
    with serving(tmp_path / "server") as running:
        job = torchrun(running.url, str(tmp_path), "--mode", "stop")
        try:
            deadline, runs = time.monotonic() + 120, []
            while time.monotonic() < deadline:
                with RunStore(tmp_path / "server") as store:
                    runs = sorted(store.runs(), key=lambda info: info.rank)
                if len(runs) == 2 and min(info.last_step or 0 for info in runs) >= 10:
                    break
                time.sleep(0.2)
            assert len(runs) == 2, job.stderr.read() if job.poll() is not None else runs
            rank0, rank1 = runs
            assert (rank0.rank, rank1.rank, rank0.world, rank1.world) == (0, 1, 2, 2)
            assert rank1.run == f"{rank0.run}.r1"  # one job: rank 0's id, and its ranks'
            stop_from_dashboard(running.url, rank0.run, "from the test")
            out, err = job.communicate(timeout=120)
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode == 0, err[-3000:]
        ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["left_at"] == ranks[1]["left_at"] is not None  # the same step on both
        assert ranks[0]["left_at"] < 600 - AGREE_EVERY
        assert ranks[0]["cause"] == "dashboard" and ranks[1]["cause"] == "peer"
        first, second = (monitor.load_run(ranks[r]["run"], logdir=tmp_path / "server") for r in (0, 1))
        assert first.status.state.iloc[-1] == second.status.state.iloc[-1] == "stopped"
        assert first.info["rank"] == 0 and second.info["rank"] == 1
        assert not first.layer_stats.empty and second.layer_stats.empty  # rank 0 records the layers
        assert len(second.series("loss")) == len(first.series("loss")) and not second.vitals.empty
        assert second.info["sampling"]["mode"] == "none"


def test_a_rank_whose_gradients_are_not_averaged_is_flagged_on_the_jobs_run(tmp_path):
    job = torchrun("-", str(tmp_path), "--mode", "desync")
    out, err = job.communicate(timeout=180)
    assert job.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["flags"] == ["rank_desync"] and ranks[1]["flags"] == []
    evidence = ranks[0]["evidence"][0]
    assert evidence["rank"] == 1 and evidence["signal"] == "grad_norm"
