"""One rank of a two-process DDP job (gloo, CPU) under ``torchrun``, for tests/test_ddp_job.py.

Arguments: the server's URL (``-`` for the local store) and a directory. ``--mode stop``
trains up to ``MAX_STEPS`` steps, paced so that a test can press Stop on the dashboard;
``--mode desync``: rank 1 adds noise to its gradients after DDP averaged them, so the
replicas no longer apply the same update. Each rank writes where it left its loop, its run
id and its flags to ``<dir>/rank<r>.json``."""
import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainer_hooks import watch

MAX_STEPS = {"stop": 600, "desync": 60}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server")
    parser.add_argument("out", type=Path)
    parser.add_argument("--mode", choices=tuple(MAX_STEPS), default="stop")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)
    server = None if args.server == "-" else args.server
    left_at = None
    with watch(model, opt, run="ddp-job", server=server, logdir=args.out / f"rank{rank}", every=2) as mon:
        for _ in range(MAX_STEPS[args.mode]):
            x = torch.randn(16, 8, generator=gen)
            loss = F.cross_entropy(model(x), (x[:, 0] > 0).long())
            opt.zero_grad()
            loss.backward()
            if args.mode == "desync" and rank == 1:
                for p in model.parameters():
                    p.grad.add_(torch.randn(p.grad.shape, generator=gen))
            opt.step()
            mon.log(loss=loss)
            if mon.should_stop:
                left_at = mon.step
                break
            if args.mode == "stop":
                time.sleep(0.02)
    reason = mon.stop_reason
    (args.out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "left_at": left_at, "run": mon.run_id, "cause": reason.cause.value if reason else None,
        "flags": [f.kind for f in mon.flags], "evidence": [f.evidence for f in mon.flags]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
