"""Storage faults: the store's disk full or read-only, the trainer's spool during a long
outage or on a full disk. Real faults where the machine allows them (a size-limited
tmpfs, an ext4 image that the kernel remounts read-only after an error; they need root,
as in CI, and are skipped naming why elsewhere), and SQLite's own equivalents injected
into the server's store connection, which always run. Real servers on loopback, real
tiny trainings; nothing acknowledged may be lost, nothing stored twice."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from monitor import codec
from monitor.events import Kind
from monitor.store import RunStore
from monitor.store.faults import StoreUnavailable
from servers import serving, serving_app
from test_stream import assert_complete, free_port, stored, tiny, train
from trainer_hooks import BabysitWarning, handle, spool, stream, watch
from trainer_hooks import writer as writer_module
from web.app import ServerConfig, create_app


# ------------------------------------------------------------------ real faults: mounts

def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


def _umount(folder: Path) -> None:
    if _run("umount", str(folder)).returncode != 0:
        _run("umount", "-l", str(folder))  # still busy: detach it, never leave it behind


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A size-limited file system at ``folder`` for the block (a real full disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command here; the injected faults cover the store")
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip()}: it needs root); "
                    "the injected faults cover the store")
    try:
        yield folder
    finally:
        _umount(folder)


def fill(folder: Path) -> Path:
    """Fill the disk under ``folder`` to the last page; remove the returned file to free it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, bytes(chunk))
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    return filler


class Ext4:
    """An ext4 image mounted with ``errors=remount-ro``: an error (triggered through sysfs,
    as a failing disk would) makes the kernel remount it read-only under the open store."""

    def __init__(self, image: Path, folder: Path):
        self.image, self.folder = image, folder

    def trigger_error(self) -> None:
        device = next(line.split()[0] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1] == str(self.folder))
        Path(f"/sys/fs/ext4/{Path(device).name}/trigger_fs_error").write_text("babysit test\n")

    def repair(self) -> None:
        """What an operator does: unmount, check, mount again."""
        _umount(self.folder)
        _run("e2fsck", "-fy", str(self.image))  # exits 1 when it fixed something
        assert _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.folder)).returncode == 0


@contextlib.contextmanager
def ext4(tmp_path: Path):
    image, folder = tmp_path / "disk.img", tmp_path / "ext4"
    folder.mkdir()
    if shutil.which("mkfs.ext4") is None or shutil.which("e2fsck") is None:
        pytest.skip("no mkfs.ext4/e2fsck here; the injected read-only fault covers the store")
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    assert _run("mkfs.ext4", "-q", str(image)).returncode == 0
    done = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here ({done.stderr.strip()}: it needs root and "
                    "loop devices); the injected read-only fault covers the store")
    disk = Ext4(image, folder)
    try:
        if not any(Path("/sys/fs/ext4").glob("loop*/trigger_fs_error")):
            pytest.skip("this kernel has no ext4 trigger_fs_error; the injected read-only fault covers the store")
        yield disk
    finally:
        _umount(folder)


# ------------------------------------------------------------------ injected faults: SQLite's own

def on_server_store(app, sql: str):
    """Run a pragma on the server's own store connection (these hold per connection)."""
    with app.store._lock:
        return app.store._db.execute(sql).fetchall()


class Fault:
    """A way for the server's store to stop taking writes, and to take them again."""

    def __init__(self, state: str, words: str, start, end):
        self.state, self.words, self.start, self.end = state, words, start, end


def real_full_disk(folder: Path) -> Fault:
    filler: list[Path] = []
    return Fault("full", "disk is full", lambda app: filler.append(fill(folder)),
                 lambda app: filler.pop().unlink())


def capped_pages() -> Fault:
    """``max_page_count``: SQLite answers "database or disk is full" exactly as for a full disk."""
    return Fault("full", "disk is full",
                 lambda app: on_server_store(app, "PRAGMA max_page_count = "
                                             f"{on_server_store(app, 'PRAGMA page_count')[0][0]}"),
                 lambda app: on_server_store(app, "PRAGMA max_page_count = 1073741823"))


def query_only() -> Fault:
    """``query_only``: SQLite answers "attempt to write a readonly database" (root ignores chmod)."""
    return Fault("read_only", "read-only", lambda app: on_server_store(app, "PRAGMA query_only = 1"),
                 lambda app: on_server_store(app, "PRAGMA query_only = 0"))


# ------------------------------------------------------------------ checks

def health(http_get, url: str) -> tuple[int, dict]:
    status, _, body = http_get(f"{url}/api/health")
    return status, codec.loads(body)


def assert_derived_agree(logdir: Path, run: str) -> None:
    """The run's derived rows (scalars, its row in runs) are exactly those of its events."""
    with RunStore(logdir) as store:
        events = store.events(run)
        assert len({e.seq for e in events}) == len(events)
        expected = sorted((e.step, e.seq, name) for e in events if e.kind is Kind.SCALARS for name in e.data.values)
        assert sorted((step, name) for step, _, name, _ in store.scalars(run)) == [(s, n) for s, _, n in expected]
        info = store.run_info(run)
        assert info.last_step == max(e.step for e in events)
        assert info.flags == sum(e.kind is Kind.FLAG for e in events)
        assert info.status == [e for e in events if e.kind in (Kind.STATUS, Kind.RUN_END)][-1].data.state.value


def spooled_bytes(trainer_logdir: Path, run: str) -> int:
    path = trainer_logdir / "spool" / f"{run}.jsonl"
    return path.stat().st_size if path.exists() else 0


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(stream, "RETRY_SECONDS", 0.1)
    monkeypatch.setattr(handle, "CLOSE_SEND_SECONDS", 5.0)


# ------------------------------------------------------------------ the server's store

@pytest.mark.parametrize("kind", ["full disk (tmpfs)", "full disk (max_page_count)", "read-only (query_only)"])
def test_a_store_that_cannot_write_refuses_batches_for_now_and_every_event_arrives_once_it_can(
        kind, tmp_path, quick_retries, caplog, http_get):
    with contextlib.ExitStack() as stack:
        if kind == "full disk (tmpfs)":
            disk = stack.enter_context(tmpfs(tmp_path / "disk", "8m"))
            fault, logdir = real_full_disk(disk), disk / "store"
        else:
            fault, logdir = (capped_pages() if "max_page_count" in kind else query_only()), tmp_path / "store"
        trainer = tmp_path / "trainer"
        with serving_app(logdir) as (running, app):
            model, opt = tiny()
            mon = watch(model, opt, every=2, server=running.url, logdir=trainer)
            train(model, opt, mon, 10)
            assert mon.flush() and spooled_bytes(trainer, mon.run_id) == 0  # all acknowledged
            with caplog.at_level(logging.WARNING, logger="babysit"):
                fault.start(app)
                train(model, opt, mon, 10, start=10)
                assert mon.flush()
                assert spooled_bytes(trainer, mon.run_id) > 0  # refused, so the trainer keeps it
                status, during = health(http_get, running.url)
                fault.end(app)
                train(model, opt, mon, 10, start=20)
                mon.close()
            status_after, after = health(http_get, running.url)
        assert status == 503 and during["ok"] is False and during["store"]["state"] == fault.state
        assert fault.words in during["store"]["message"] and str(app.store.path) in during["store"]["message"]
        assert during["refusals"]["transient"] >= 1 and during["store"]["refused"] >= 1
        assert status_after == 200 and after["store"]["state"] == "ok"
        store_lines = [r.getMessage() for r in caplog.records if r.name == "babysit.store"]
        assert len(store_lines) == 2, store_lines  # one when it began, one when it ended: not one per batch
        assert fault.words in store_lines[0] and "takes writes again" in store_lines[1]
        assert not [r for r in caplog.records if r.name.startswith("babysit.server") and r.levelno >= logging.WARNING]
        assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere
        assert_complete(stored(logdir, mon.run_id), 30)  # every event once: nothing acknowledged lost
        assert_derived_agree(logdir, mon.run_id)


def test_a_store_the_kernel_remounts_read_only_refuses_batches_and_after_repair_every_event_arrives_once(
        tmp_path, quick_retries, http_get):
    with ext4(tmp_path) as disk:
        logdir, trainer = disk.folder / "store", tmp_path / "trainer"
        port = free_port()
        with serving_app(logdir, port) as (running, app):
            model, opt = tiny()
            mon = watch(model, opt, every=2, server=running.url, logdir=trainer)
            train(model, opt, mon, 10)
            assert mon.flush() and spooled_bytes(trainer, mon.run_id) == 0
            # The error strikes once the kernel wrote the store out: what the page cache still
            # held would be lost with the disk, as on a power cut (synchronous=NORMAL).
            os.sync()
            disk.trigger_error()
            train(model, opt, mon, 10, start=10)
            assert mon.flush() and spooled_bytes(trainer, mon.run_id) > 0
            status, during = health(http_get, running.url)
        assert status == 503 and during["store"]["state"] == "read_only", during
        assert "read-only" in during["store"]["message"]
        disk.repair()
        with serving(logdir, port):  # the operator restarts the server on the repaired disk
            train(model, opt, mon, 10, start=20)
            mon.close()
        assert_complete(stored(logdir, mon.run_id), 30)
        assert_derived_agree(logdir, mon.run_id)


def test_a_server_on_a_read_only_disk_does_not_start_and_names_the_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        RunStore(disk / "store").close()
        assert _run("mount", "-o", "remount,ro", str(disk)).returncode == 0
        with pytest.raises(StoreUnavailable, match=r"read-only \(.*babysit.sqlite3\).*another logdir"):
            create_app(ServerConfig(logdir=disk / "store"))


def test_a_local_run_on_a_full_disk_trains_on_and_stores_everything_once_space_returns(
        tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(writer_module, "RETRY_FIRST", 0.05)
    monkeypatch.setattr(writer_module, "RETRY_MAX", 0.2)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        model, opt = tiny()
        with caplog.at_level(logging.WARNING, logger="babysit"):
            mon = watch(model, opt, every=2, logdir=disk / "runs")
            train(model, opt, mon, 10)
            assert mon.flush()
            filler = fill(disk)
            train(model, opt, mon, 10, start=10)  # the training goes on; the writer keeps the records
            assert not mon.flush(timeout=1.0) and mon.store.health.snapshot().state == "full"
            filler.unlink()
            train(model, opt, mon, 10, start=20)
            mon.close()
        assert_complete(stored(disk / "runs", mon.run_id), 30)
        assert_derived_agree(disk / "runs", mon.run_id)
        store_lines = [r.getMessage() for r in caplog.records if r.name == "babysit.store"]
        assert len(store_lines) == 2 and "disk is full" in store_lines[0], store_lines


# ------------------------------------------------------------------ the trainer's spool

def test_during_a_long_outage_the_spool_stays_within_its_bound_dropping_bulk_first_and_keeping_the_run_end(
        tmp_path, quick_retries, monkeypatch, caplog):
    monkeypatch.setattr(handle, "CLOSE_SEND_SECONDS", 0.3)  # nothing answers: do not wait at close
    limit = 64 << 10
    monkeypatch.setenv(spool.SPOOL_LIMIT_ENV, "64K")
    url = f"http://127.0.0.1:{free_port()}"  # nothing answers there for the whole run
    trainer = tmp_path / "trainer"
    model, opt = tiny()
    with caplog.at_level(logging.WARNING, logger="babysit"):
        with pytest.warns(BabysitWarning, match="kept in"):
            with watch(model, opt, every=1, server=url, logdir=trainer) as mon:
                for start in range(0, 300, 100):
                    train(model, opt, mon, 100, start=start)
                    assert mon.flush()
                    assert spooled_bytes(trainer, mon.run_id) <= limit
    assert limit - 2048 < spooled_bytes(trainer, mon.run_id) <= limit + 2048  # + the run's status and end
    said = [r.getMessage() for r in caplog.records if "spool of run" in r.getMessage()]
    assert len(said) == 2 and "layer statistics" in said[0] and "at its bound" in said[1]  # once each
    with serving(tmp_path / "server", int(url.rsplit(":", 1)[1])):
        assert stream.replay_spools(url, trainer / "spool") == {mon.run_id: True}
    events = stored(tmp_path / "server", mon.run_id)
    kinds = [e.kind for e in events]
    assert kinds[0] is Kind.RUN_START and kinds[-2:] == [Kind.STATUS, Kind.RUN_END]
    assert events[-1].data.state.value == "finished"
    bulk_steps = sorted({e.step for e in events if e.kind is Kind.LAYER_STATS})
    loss_steps = [e.step for e in events if e.kind is Kind.SCALARS and "loss" in e.data.values]
    assert bulk_steps == list(range(len(bulk_steps)))  # the oldest are kept, in full
    assert loss_steps == list(range(len(loss_steps)))
    assert len(bulk_steps) < len(loss_steps) < 300  # the bulk went first, the losses later
    gaps = events[-1].seq + 1 - len(events)
    assert gaps > 0 and events[-1].data.dropped == gaps  # the run's end counts every dropped event


def test_a_trainer_whose_spool_disk_is_full_keeps_its_batches_and_delivers_each_once_when_space_returns(
        tmp_path, quick_retries):
    with tmpfs(tmp_path / "disk", "4m") as disk:
        trainer = disk / "trainer"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        model, opt = tiny()
        mon = watch(model, opt, every=2, server=url, logdir=trainer)  # the server is down at first
        train(model, opt, mon, 10)
        assert mon.flush() and spooled_bytes(trainer, mon.run_id) > 0
        filler = fill(disk)
        train(model, opt, mon, 10, start=10)
        assert mon.flush()  # the writer is not stuck on the disk: the batches wait in memory
        filler.unlink()
        train(model, opt, mon, 10, start=20)
        with serving(tmp_path / "server", port):
            mon.close()
        assert_complete(stored(tmp_path / "server", mon.run_id), 30)
        assert not (trainer / "spool" / f"{mon.run_id}.refused.jsonl").exists()  # no corrupt batch


def test_with_its_spool_disk_full_a_trainer_still_streams_to_a_server_that_answers(tmp_path, quick_retries):
    with tmpfs(tmp_path / "disk", "4m") as disk, serving(tmp_path / "server") as running:
        model, opt = tiny()
        mon = watch(model, opt, every=2, server=running.url, logdir=disk / "trainer")
        train(model, opt, mon, 5)
        assert mon.flush()
        filler = fill(disk)
        try:
            train(model, opt, mon, 10, start=5)
            assert mon.flush()
            losses = {e.step for e in stored(tmp_path / "server", mon.run_id)
                      if e.kind is Kind.SCALARS and "loss" in e.data.values}
            assert losses == set(range(15))  # sent from memory while the disk takes nothing
        finally:
            filler.unlink()
        mon.close()
    assert_complete(stored(tmp_path / "server", mon.run_id), 15)


def test_a_bad_spool_limit_is_refused_with_what_to_give_instead(monkeypatch, tmp_path):
    monkeypatch.setenv(spool.SPOOL_LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=r"BABYSIT_SPOOL_LIMIT: expected a number of bytes such as 500M"):
        stream.SocketSink("http://127.0.0.1:9", "r", tmp_path)
    assert spool.spool_limit("2G") == 2 << 30 and spool.spool_limit("1048576") == 1 << 20
