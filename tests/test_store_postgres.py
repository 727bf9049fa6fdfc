"""The PostgreSQL store against a real PostgreSQL server (tests/services.py): the same REST
answers as SQLite, exactly once with several writers at once, versioned migrations, and a
database that goes away and comes back. The calls both backends share are in test_store.py."""
from __future__ import annotations

import io
import math
import random
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import summary
from services import postgres_server

from monitor.events import Event, Flag, Kind, LayerStats, Scalars, Status
from monitor.store import StoreUnavailable, open_store
from monitor.store.postgres import PostgresStore, redact
from web.app import ServerConfig, create_app


def scalars(run, seq, step, **values):
    return Event(run=run, seq=seq, step=step, wall=1000.0 + seq, kind=Kind.SCALARS, data=Scalars(values))


def long_run(run: str = "long", steps: int = 700) -> list[Event]:
    """A run over several scalar blocks and layer samples, NaN and ±Inf included, flagged."""
    events, seq = [], 0
    for step in range(steps):
        loss = math.nan if step == 333 else (math.inf if step == 444 else 2.0 / (1 + step))
        events.append(scalars(run, seq, step, loss=loss, lr=0.1))
        seq += 1
        if step % 50 == 0:
            events.append(Event(run=run, seq=seq, step=step, wall=1000.0 + seq, kind=Kind.LAYER_STATS,
                                data=LayerStats((summary("conv1", mean=float(step)),
                                                 summary("fc", signal="param_grad", update_ratio=math.nan)))))
            seq += 1
        if step % 100 == 0:
            events.append(Event(run=run, seq=seq, step=step, wall=1000.0 + seq, kind=Kind.SCALARS,
                                data=Scalars({"val_loss": 1.0 / (1 + step)})))
            seq += 1
    events.append(Event(run=run, seq=seq, step=steps, wall=1000.0 + seq, kind=Kind.FLAG,
                        data=Flag(kind="plateau", severity="warning", message="m", advice="a")))
    events.append(Event(run=run, seq=seq + 1, step=steps, wall=1000.0 + seq + 1, kind=Kind.STATUS,
                        data=Status(state="finished", reason="done")))
    return events


ROUTES = ["/api/runs", "/api/runs/{run}", "/api/runs/{run}/series", "/api/runs/{run}/series?max_points=50",
          "/api/runs/{run}/series?names=loss&last=30", "/api/runs/{run}/flags", "/api/runs/{run}/incidents",
          "/api/runs/{run}/ranks", "/api/runs/{run}/layers?signal=activation",
          "/api/runs/{run}/layers?signal=param_grad",
          "/api/runs/{run}/inputs", "/api/runs/{run}/latest/scalars", "/api/runs/{run}/latest/run_start",
          "/api/runs/{run}/export", "/api/runs/{run}/filters.png", "/api/runs/nope/series"]


def body(response) -> bytes | dict:
    """A response's bytes; a zip's members (its bytes hold the time each was written)."""
    if response.mimetype != "application/zip":
        return response.get_data()
    with zipfile.ZipFile(io.BytesIO(response.get_data())) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_rest_answers_are_the_same_on_sqlite_and_postgresql(tmp_path, postgres_url, make_events):
    events = make_events() + long_run()
    answers = {}
    for backend, config in (("sqlite", ServerConfig(logdir=tmp_path)),
                            ("postgresql", ServerConfig(logdir=tmp_path / "unused", store=postgres_url))):
        app = create_app(config)
        try:
            assert app.store.append(events) == len(events)
            client = app.flask.test_client()
            answers[backend] = {route.format(run=run): (r.status_code, body(r))
                                for run in ("digits-cnn", "long") for route in ROUTES
                                for r in [client.get(route.format(run=run))]}
        finally:
            app.store.close()
    assert {status for status, _ in answers["sqlite"].values()} == {200, 404}
    assert sum(status == 200 for status, _ in answers["sqlite"].values()) >= 25
    differing = [route for route in answers["sqlite"] if answers["sqlite"][route] != answers["postgresql"][route]]
    assert differing == []


def test_the_same_batches_replayed_by_several_writers_at_once_are_stored_once(postgres_url):
    """Several servers given the same spool replay at once (a trainer that reconnected to
    another process): each (run, seq) once, the run's counters counted once."""
    batches = [[scalars(run, seq, seq, loss=1.0 / (1 + seq)) for seq in range(start, start + 20)]
               + [Event(run=run, seq=start + 20, step=start, wall=1.0, kind=Kind.FLAG,
                        data=Flag(kind="k", severity="warning", message="m", advice="a"))]
               for run in ("a", "b") for start in range(0, 210, 21)]
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    new = []
    barrier = threading.Barrier(len(stores))

    def replay(store, order):
        barrier.wait()
        for batch in order:
            new.append(store.append(batch))

    threads = [threading.Thread(target=replay, args=(store, batches[i::1] if i % 2 else batches[::-1]))
               for i, store in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sum(new) == sum(map(len, batches))
        store = stores[0]
        for run in ("a", "b"):
            assert [e.seq for e in store.events(run)] == list(range(210))
            assert store.run_info(run).flags == 10 and len(store.scalars(run)) == 200
            assert store.scalar_totals(run) == {"loss": (200, 1)}
    finally:
        for store in stores:
            store.close()


def test_many_openers_of_a_new_database_all_get_the_store(postgres_url):
    opened, errors = [], []

    def open_one():
        try:
            opened.append(PostgresStore(postgres_url))
        except Exception as exc:  # noqa: BLE001 - the failure is the test's finding
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and len(opened) == 8
        opened[0].append([scalars("r", 0, 0, loss=1.0)])
        assert [e.seq for e in opened[-1].events("r")] == [0]
    finally:
        for store in opened:
            store.close()


def test_a_version_1_database_is_migrated_and_a_newer_one_refused(postgres_url, make_events):
    import psycopg

    events = make_events() + long_run(steps=120)
    with open_store(postgres_url) as store:
        store.append(events)
        fresh = store.layer_points("long", "activation")[0].columns["mean"].tolist()
        totals = store.scalar_totals("long")
    with psycopg.connect(postgres_url, autocommit=True) as db:  # back to version 1: its tables, its number
        for table in ("layer_points", "layers", "input_points", "scalar_blocks"):
            db.execute(f"DROP TABLE {table}")
        db.execute("DROP INDEX events_by_kind")
        db.execute("UPDATE babysit_store SET version = 1")
    with open_store(postgres_url) as store:
        assert store.layer_points("long", "activation")[0].columns["mean"].tolist() == fresh
        assert store.scalar_totals("long") == totals
    with psycopg.connect(postgres_url, autocommit=True) as db:
        assert db.execute("SELECT version FROM babysit_store").fetchall() == [(2,)]
        db.execute("UPDATE babysit_store SET version = 3")
    with pytest.raises(RuntimeError, match=r"store version 3, this babysit reads version 2 \(or older\)"):
        open_store(postgres_url)


def test_the_password_never_shows_in_messages():
    assert redact("postgresql://ann:s3cret@db.example:5432/runs") == "postgresql://ann:***@db.example:5432/runs"
    assert redact("postgresql://ann@db/runs") == "postgresql://ann@db/runs"


def test_a_database_that_goes_away_refuses_writes_as_transient_and_they_succeed_when_it_is_back():
    with postgres_server(fsync="off") as server:
        url = server.create_database()
        store = open_store(url)
        store.append([scalars("r", 0, 0, loss=1.0)])
        port = server.port
    # the server is stopped: a write is refused in plain words, nothing of it stored
    try:
        with pytest.raises(StoreUnavailable, match="cannot reach the database postgresql://babysit@127.0.0.1"):
            store.append([scalars("r", 1, 1, loss=0.5)])
        assert store.health.snapshot().state == "unreachable"
    finally:
        store.close()
    with pytest.raises(StoreUnavailable, match="cannot open the store: cannot reach the database"):
        open_store(f"postgresql://babysit@127.0.0.1:{port}/nothing")


def test_a_database_restarted_under_an_open_store_takes_its_writes_again(tmp_path):
    """The same cluster stopped and started again under an open store: the store reconnects."""
    with postgres_server(fsync="off") as server:
        url = server.create_database()
        with open_store(url) as store:
            store.append([scalars("r", 0, 0, loss=1.0)])
            server.restart()
            assert store.append([scalars("r", 0, 0, loss=1.0), scalars("r", 1, 1, loss=0.5)]) == 1
            assert [e.seq for e in store.events("r")] == [0, 1] and store.health.snapshot().ok


def test_a_training_streams_into_a_postgresql_store_through_a_real_server(tmp_path, postgres_url):
    from servers import serving
    from test_stream import assert_complete, tiny, train

    from trainer_hooks import watch

    random.seed(7)
    state = random.getstate()
    with serving(tmp_path / "server", store=postgres_url) as running:
        model, opt = tiny()
        with watch(model, opt, every=2, server=running.url, logdir=tmp_path / "trainer") as mon:
            train(model, opt, mon, 12)
    # The server ran in this process: its connection pool's jitter must not come from the user's stream.
    assert random.getstate() == state, "the store's connection pool drew from the global random stream"
    with open_store(postgres_url) as store:
        assert_complete(store.events(mon.run_id), 12)
        assert store.run_info(mon.run_id).status == "finished"
    assert not (tmp_path / "server").exists() or not list((tmp_path / "server").glob("*.sqlite3"))


def test_babysit_runs_and_export_read_a_postgresql_store(tmp_path, postgres_url, make_events, capsys):
    from monitor.cli import main

    with open_store(postgres_url) as store:
        store.append(make_events())
    assert main(["runs", "--store", postgres_url]) == 0
    listed = capsys.readouterr().out
    assert "digits-cnn" in listed and "diverged" in listed
    assert main(["export", "digits", "--store", postgres_url, "--out", str(tmp_path / "out")]) == 0
    written = capsys.readouterr().out.split()
    assert {Path(p).name for p in written} >= {"scalars.csv", "flags.csv"} and all(Path(p).exists() for p in written)
    assert main(["export", "digits", "--store", postgres_url]) == 2
    assert "give the folder to write into with --out" in capsys.readouterr().err
    assert main(["runs", "--store", "mysql://x"]) == 2
    assert "expected a postgresql://" in capsys.readouterr().err
