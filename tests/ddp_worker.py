"""One rank of a two-process DDP training (gloo, CPU) under ``torchrun``, for
tests/test_early_stopping_ddp.py. Argument: a directory. One rank (``STOP_RANK``) alone
asks to stop at ``STOP_STEP`` (``--how user``: ``mon.stop()``; ``--how flag``: it logs a
NaN loss, which the divergence detector flags and the early-stopping policy stops on).
Each rank writes the step at which it left its loop to ``<dir>/rank<r>.json``."""
import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from monitor.early_stopping import EarlyStopping
from trainer_hooks import watch

STOP_RANK, STOP_STEP, MAX_STEPS = 1, 13, 200
#: Seconds each step lasts at least. A flag's stop waits for the writer's detect stage, a
#: thread of its own: within the test's bound of 20 steps it must get a core, which a loaded
#: host (the suite's other worker, the other rank) does not promise within 20 steps of a
#: fraction of a millisecond each; real steps last milliseconds and more.
STEP_SECONDS = 0.005


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--how", choices=("user", "flag"), default="user")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)
    left_at = None
    with watch(model, opt, run=f"ddp-rank{rank}", logdir=args.out / f"rank{rank}", every=2,
               early_stopping=EarlyStopping()) as mon:
        for step in range(MAX_STEPS):
            x = torch.randn(16, 8, generator=gen)
            loss = F.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            time.sleep(STEP_SECONDS)
            if rank == STOP_RANK and step == STOP_STEP:
                if args.how == "user":
                    mon.stop("rank 1 asks")
                else:
                    mon.log(loss=math.nan)
            else:
                mon.log(loss=loss)
            if mon.should_stop:
                left_at = mon.step
                break
    reason = mon.stop_reason
    (args.out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "left_at": left_at, "pid": os.getpid(),
        "cause": reason.cause.value if reason else None, "flags": [f.kind for f in mon.flags]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
