"""Two DDP ranks (torchrun, gloo, CPU): a stop asked by one rank stops both at the same step."""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_hooks.agreement import AGREE_EVERY

WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how, cause", [("user", "user"), ("flag", "flag")])
def test_one_rank_asks_to_stop_and_both_leave_their_loop_at_the_same_step(tmp_path, how, cause):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(WORKER), str(tmp_path), "--how", how]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["left_at"] == ranks[1]["left_at"] is not None
    asked_at = 13 + 1  # the step counter after the step the rank asked at
    assert asked_at < ranks[0]["left_at"] <= asked_at + 2 * AGREE_EVERY
    assert ranks[1]["cause"] == cause and ranks[0]["cause"] == "peer"
    if how == "flag":
        assert ranks[1]["flags"] == ["divergence"] and ranks[0]["flags"] == []
