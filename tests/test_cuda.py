"""On a GPU the hooks add no host synchronisation (runs only where CUDA is available)."""
import contextlib
import warnings

import pytest
import torch
from torch import nn

import monitor
from trainer_hooks import watch
from trainer_hooks import writer as writer_module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@contextlib.contextmanager
def synchronisation_raises():
    """Any synchronising CUDA call in the block raises (torch's sync debug mode, which is
    process-wide: keep babysit's writer, which copies to the host by design, asleep)."""
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "a prototype feature"
            torch.cuda.set_sync_debug_mode("error")
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_sampled_and_plain_steps_on_cuda_never_synchronise_the_training_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "FLUSH_SECONDS", 60.0)  # keep the writer's own copies out of the window
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 8 * 8, 10)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(16, 3, 8, 8, device="cuda")
    y = torch.randint(0, 10, (16,), device="cuda")
    x[0, 0, 0, 0] = float("nan")  # the masked (non-finite) path too
    mon = watch(model, opt, every=2, logdir=tmp_path)
    for _ in range(3):  # warm-up: lazy CUDA initialisation may synchronise
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.log(loss=loss)
    with synchronisation_raises():
        for _ in range(4):  # two sampled, two plain
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.log(loss=loss)
    mon.close()
    frames = monitor.load_run(mon.run_id, tmp_path)
    assert frames.series("loss").index.tolist() == list(range(7))
    assert sorted(frames.layer_stats.step.unique()) == [0, 2, 4, 6]
    conv = frames.layer_stats[(frames.layer_stats.layer == "0") & (frames.layer_stats.signal == "activation")]
    assert (conv.nan > 0).all()


def test_statistics_reduced_on_the_gpu_equal_plain_torch_with_nan_and_inf_counted():
    from tests.test_statistics_oracle import oracle, summarize

    torch.manual_seed(0)
    for x in (torch.randn(64, 16, 32, 32, device="cuda") * 2 + 1,  # sampled: the masked path on the device
              torch.randn(7, 5, device="cuda")):  # small: travels whole
        x.view(-1)[::97] = float("nan")
        x.view(-1)[1::89] = float("inf")
        s, o = summarize(x), oracle(x.cpu())
        assert (s.numel, s.nan, s.inf) == (o["numel"], o["nan"], o["inf"])
        for key in ("mean", "std", "min", "max", "norm"):
            assert getattr(s, key) == pytest.approx(o[key], rel=1e-4, abs=1e-5), key


def test_bf16_autocast_on_the_gpu_is_watched_without_sync(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "FLUSH_SECONDS", 60.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 10)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 256, device="cuda"), torch.randint(0, 10, (64,), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.log(loss=loss)

    with watch(model, opt, every=1, logdir=tmp_path) as mon:
        for _ in range(2):
            step()
        with synchronisation_raises():
            for _ in range(2):
                step()
    stats = monitor.load_run(mon.run_id, tmp_path).layer_stats
    assert sorted(stats.step.unique()) == [0, 1, 2, 3]
    assert stats[["mean", "std", "min", "max"]].notna().all().all()


def test_early_stopping_on_cuda_restores_the_best_weights_and_stops_on_divergence(tmp_path):
    from monitor.early_stopping import EarlyStopping, StopCause

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 8, device="cuda")
    y = (x[:, 0] > 0).long()
    with watch(model, opt, every=2, logdir=tmp_path,
               early_stopping=EarlyStopping(patience=1, restore_best_weights=True)) as mon:
        best = None
        for epoch, val in enumerate([1.0, 0.5, 0.7]):  # scripted evaluations: the best is the second
            for _ in range(3):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                mon.log(loss=loss)
            if epoch == 1:
                best = {k: v.clone() for k, v in model.state_dict().items()}
            mon.log(val_loss=torch.tensor(val, device="cuda"))  # a CUDA tensor is read once per evaluation
        assert mon.should_stop and mon.stop_reason.cause is StopCause.EARLY_STOPPING
    assert all(torch.equal(v, best[k]) and v.is_cuda for k, v in model.state_dict().items())

    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    with watch(model, opt, every=2, logdir=tmp_path, early_stopping=EarlyStopping()) as mon:
        for _ in range(100):
            loss = model(x).pow(2).mean() * 1e3
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
            if mon.should_stop:
                break
    assert mon.stop_reason is not None and mon.stop_reason.flag == "divergence" and mon.step < 100
