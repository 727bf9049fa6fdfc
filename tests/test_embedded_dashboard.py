"""The embedded dashboard: ``babysit demo`` and ``watch(dashboard=True)`` serve the same
server from the training process, print its URL, and the demo keeps serving until Ctrl-C."""
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from monitor import codec
from monitor.events import Flag
from trainer_hooks import watch


def read_until(process, pattern: str, timeout: float = 120.0) -> re.Match:
    """Read the process's stdout line by line until ``pattern`` matches one (or fail)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def test_the_demo_serves_its_run_live_and_keeps_serving_until_ctrl_c(tmp_path, http_get):
    demo = subprocess.Popen([sys.executable, "-m", "monitor.cli", "demo", "--epochs", "1", "--train-size", "64",
                             "--logdir", str(tmp_path), "--step-delay", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = read_until(demo, r"live dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
        run_url = read_until(demo, r"watch it live: (\S+)").group(1)
        read_until(demo, r"dashboard stays up")
        status, _, body = http_get(run_url)
        assert status == 200 and b'data-run="digits-cnn-' in body
        runs = codec.loads(http_get(url + "/api/runs")[2])
        assert [r["status"] for r in runs] == ["finished"]
        assert runs[0]["last_step"] == 2  # 64 images in batches of 32: two steps; the end is stamped at 2
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=20) == 0
        assert "stopped" in demo.stdout.read()
    finally:
        demo.kill()
        demo.wait()
        demo.stdout.close()


def test_watch_with_dashboard_serves_the_run_and_prints_its_url(tmp_path, http_get, capsys):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = watch(model, optimizer, run="embedded", logdir=tmp_path, every=1, dashboard=True)
    try:
        printed = capsys.readouterr().err
        assert f"babysit: watching run {mon.run_id}, stored in {tmp_path / 'babysit.sqlite3'}; live dashboard: " \
               f"{mon.dashboard_url}\n" in printed and mon.dashboard_url.startswith("http://127.0.0.1:")
        for _ in range(5):
            loss = model(torch.randn(16, 4)).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            mon.log(loss=loss)
        mon.close()
        base = mon.dashboard_url.split("/runs/")[0]
        series = codec.loads(http_get(f"{base}/api/runs/{mon.run_id}/series?names=loss")[2])
        assert series["loss"]["step"] == [0, 1, 2, 3, 4]
        assert mon.store_path == tmp_path / "babysit.sqlite3" and mon.store_path.exists()
    finally:
        mon.close()
        mon.dashboard.stop()


def test_watch_refuses_a_server_and_a_dashboard_together(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        watch(nn.Linear(2, 2), run="both", logdir=tmp_path, server="http://127.0.0.1:9", dashboard=True)


def test_a_flag_added_to_the_handle_is_kept_and_stored(tmp_path):
    import dataclasses

    from monitor.store import RunStore

    flag = Flag(kind="plateau", severity="warning", message="the loss has not improved for 500 steps",
                advice="lower the learning rate", evidence={"steps": 500})
    with watch(nn.Linear(2, 2), run="flagged", logdir=tmp_path) as mon:
        mon.add_flag(flag)
        with pytest.raises(TypeError, match="Flag"):
            mon.add_flag({"kind": "plateau"})
    stamped = dataclasses.replace(flag, step=0)  # the step it was added at
    assert mon.flags == [stamped]
    with RunStore(tmp_path) as store:
        [event] = store.events(mon.run_id, kinds=["flag"])
        assert event.data == stamped and event.step == 0
