"""babysit sync: runs recorded offline (a store, a spool, both) reach a real server exactly once."""
import json
import shutil

import pytest
import torch
from torch import nn

from monitor import codec
from monitor.cli import main
from monitor.store import RunStore
from monitor.sync import Batch, batches
from trainer_hooks import watch
from trainer_hooks.spool import Spool
from trainer_hooks.upload import Uploader, UploadError
from servers import serving

TOKEN = "s3cret"


def record(logdir, name, steps):
    """A tiny training recorded offline (no server): its run id."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with watch(model, opt, run=name, every=2, server=None, logdir=logdir) as mon:
        for i in range(steps):
            loss = model(torch.randn(16, 4, generator=torch.Generator().manual_seed(i))).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.log(loss=loss)
    return mon.run_id


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """A logdir holding two runs recorded offline, ``alpha`` and ``beta``: (logdir, {name: run id})."""
    logdir = tmp_path_factory.mktemp("offline")
    return logdir, {"alpha": record(logdir, "alpha", 6), "beta": record(logdir, "beta", 4)}


@pytest.fixture
def logdir(offline, tmp_path):
    """A copy of the offline logdir, for a test that adds to it."""
    copy = tmp_path / "offline"
    shutil.copytree(offline[0], copy)
    return copy


def rows(logdir, runs=None):
    """Every stored event as (run, seq, kind, step, payload text), the NaN-safe text exact."""
    with RunStore(logdir) as store:
        runs = sorted(info.run for info in store.runs()) if runs is None else runs
        return [(e.run, e.seq, e.kind.value, e.step, codec.encode_payload(e.data))
                for run in runs for e in store.events(run)]


def sync(*args, server=None, token=TOKEN):
    options = [str(a) for a in args] + (["--server", server.url] if server is not None else [])
    return main(["sync", *options] + (["--token", token] if token else []))


def spool(folder, events):
    """A spool as the trainer's sender leaves it while the server is unreachable: two batches."""
    sink = Spool(folder, events[0].run)
    half = len(events) // 2
    for part in (events[:half], events[half:]):
        sink.add(part, [codec.encode_payload(e.data) for e in part])
    return sink.path


def test_a_run_recorded_offline_reaches_the_server_with_exactly_its_events(offline, tmp_path, capsys, http_get):
    logdir, runs = offline
    with serving(tmp_path / "server", token=TOKEN) as server:
        assert sync(logdir, server=server) == 0
        status, _, body = http_get(f"{server.url}/api/runs")
    assert rows(tmp_path / "server") == rows(logdir)
    assert status == 200 and sorted(r["run"] for r in json.loads(body)) == sorted(runs.values())
    out = capsys.readouterr().out
    count = len(rows(logdir, [runs["alpha"]]))
    assert f"{runs['alpha']}  alpha: {count} events read, {count} new on the server, 0 already there" in out
    assert f"total: 2 runs, {len(rows(logdir))} events read, {len(rows(logdir))} new on the server" in out


def test_a_second_sync_sends_again_and_stores_nothing_new(offline, tmp_path, capsys):
    logdir, _ = offline
    with serving(tmp_path / "server", token=TOKEN) as server:
        assert sync(logdir, server=server) == 0
        before = rows(tmp_path / "server")
        capsys.readouterr()
        assert sync(logdir, server=server) == 0
        after = rows(tmp_path / "server")
    total = len(rows(logdir))
    assert after == before
    assert f"total: 2 runs, {total} events read, 0 new on the server, {total} already there" in capsys.readouterr().out


def test_a_spool_file_is_uploaded_and_left_as_it_was(tmp_path, make_events, capsys):
    events = make_events("spooled-run")
    path = spool(tmp_path / "spool", events)
    content = path.read_bytes()
    with serving(tmp_path / "server", token=TOKEN) as server:
        assert sync(path, server=server) == 0
    assert [r[:4] for r in rows(tmp_path / "server")] == [(e.run, e.seq, e.kind.value, e.step) for e in events]
    assert rows(tmp_path / "server") == [(e.run, e.seq, e.kind.value, e.step, codec.encode_payload(e.data))
                                         for e in events]  # NaN and ±Inf exactly
    assert path.read_bytes() == content
    assert "spooled-run  digits: 10 events read, 10 new on the server, 0 already there" in capsys.readouterr().out


def test_remove_spool_deletes_a_spool_only_once_every_event_in_it_was_acknowledged(tmp_path, make_events):
    path = spool(tmp_path / "spool", make_events("spooled-run"))
    with serving(tmp_path / "server", token=TOKEN) as server:
        assert main(["sync", str(tmp_path / "spool"), "--remove-spool", "--server", "http://127.0.0.1:9"]) == 1
        assert path.exists()  # nothing acknowledged: kept
        assert sync(tmp_path / "spool", "--remove-spool", server=server) == 0
    assert not path.exists() and not path.with_suffix(".sent").exists()
    assert len(rows(tmp_path / "server")) == 10


def test_a_logdir_with_a_store_and_a_spool_uploads_both_each_event_once(logdir, offline, tmp_path, make_events,
                                                                         capsys):
    alpha = offline[1]["alpha"]
    with RunStore(logdir) as store:  # the embedded dashboard's case: the same events in its store and spool
        spool(logdir / "spool", store.events(alpha))
    spool(logdir / "spool", make_events("only-spooled"))
    with serving(tmp_path / "server", token=TOKEN) as server:
        assert sync(logdir, server=server) == 0
    assert rows(tmp_path / "server") == sorted(rows(logdir) + rows_of(make_events("only-spooled")))
    out = capsys.readouterr().out
    assert "only-spooled  digits: 10 events read, 10 new" in out
    assert f"{alpha}  alpha: {len(rows(logdir, [alpha]))} events read" in out


def rows_of(events):
    return [(e.run, e.seq, e.kind.value, e.step, codec.encode_payload(e.data)) for e in events]


def test_the_run_option_uploads_only_the_runs_it_names_by_id_or_name(offline, tmp_path):
    logdir, runs = offline
    with serving(tmp_path / "server", token=TOKEN) as server:
        assert sync(logdir, "--run", "beta", server=server) == 0
        assert {r[0] for r in rows(tmp_path / "server")} == {runs["beta"]}
        assert sync(logdir, "--run", runs["alpha"], "--run", "beta", server=server) == 0
    assert rows(tmp_path / "server") == rows(logdir)


def test_an_unknown_run_is_a_plain_error_naming_the_runs_there(offline, capsys):
    assert main(["sync", str(offline[0]), "--run", "gamma", "--server", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--run gamma: no run of that id or name here" in err and "alpha" in err and "Traceback" not in err


def test_a_wrong_token_is_a_plain_error_and_nothing_is_stored(offline, tmp_path, capsys):
    with serving(tmp_path / "server", token=TOKEN) as server:
        assert sync(offline[0], server=server, token="wrong") == 1
    err = capsys.readouterr().err
    assert "refused the connection with the token given" in err and "--token" in err and "Traceback" not in err
    assert rows(tmp_path / "server") == []


def test_an_unreachable_server_is_a_plain_error(offline, capsys):
    assert main(["sync", str(offline[0]), "--server", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the server at http://127.0.0.1:9" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["missing", "empty", "file"])
def test_a_path_with_no_store_and_no_spool_is_a_plain_error(tmp_path, capsys, where):
    path = tmp_path / where
    if where == "empty":
        path.mkdir()
    if where == "file":
        path.write_text("hello")
    assert main(["sync", str(path), "--server", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("babysit sync: error: ") and str(path) in err and "Traceback" not in err
    assert not (tmp_path / where / "babysit.sqlite3").exists()  # nothing created where nothing was


def test_a_dry_run_lists_the_runs_and_sends_nothing(offline, capsys):
    logdir, runs = offline
    assert main(["sync", str(logdir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{runs['beta']}  beta: {len(rows(logdir, [runs['beta']]))} events (seqs 0.." in out
    assert "in 1 batches, from store" in out and "nothing sent" in out


def test_batches_respect_the_most_events_and_characters_a_message_may_hold():
    items = [(seq, f'{{"seq":{seq},"pad":"{"x" * 10}"}}') for seq in range(10)]
    by_count = list(batches("r", items, 10_000, 4))
    assert [(b.first_seq, b.last_seq, b.count) for b in by_count] == [(0, 3, 4), (4, 7, 4), (8, 9, 2)]
    by_size = list(batches("r", items, 2 + 3 * (len(items[0][1]) + 1), 100))
    assert [b.count for b in by_size] == [3, 3, 3, 1]
    assert all(len(b.text) <= 2 + 3 * (len(items[0][1]) + 1) for b in by_size)
    assert [e["seq"] for b in by_size for e in json.loads(b.text)] == list(range(10))


def test_a_batch_refused_for_good_stops_the_upload_naming_the_run_and_seqs(tmp_path):
    with serving(tmp_path / "server", token=TOKEN) as server:
        uploader = Uploader(server.url, TOKEN)
        try:
            with pytest.raises(UploadError, match=r"refused run r1, seqs 5\.\.9 for good"):
                uploader.send("r1", Batch('[{"run": "r1"}]', 5, 9, 5))
        finally:
            uploader.close()
