"""RunStore: exactly-once appends, exact round trips and run counters, on real SQLite files."""
from __future__ import annotations

import math
import sqlite3
import threading

import pytest

from monitor.codec import encode_event
from monitor.events import Event, Flag, Kind, Scalars, Status
from monitor.store import DB_FILENAME, RunStore
from monitor.validation import SchemaError


def encoded(events):
    return [encode_event(e) for e in events]  # NaN != NaN: compare the exact encoding


def scalars(run, seq, step, wall=2000.0, **values):
    return Event(run=run, seq=seq, step=step, wall=wall, kind=Kind.SCALARS, data=Scalars(values))


def test_the_logdir_is_created_and_the_database_is_in_wal_mode(tmp_path):
    with RunStore(tmp_path / "nested" / "runs") as store:
        assert store.path == tmp_path / "nested" / "runs" / DB_FILENAME
    db = sqlite3.connect(tmp_path / "nested" / "runs" / DB_FILENAME)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_run_round_trips_exactly_nan_inf_and_bytes_included(tmp_path, make_events):
    events = make_events()
    with RunStore(tmp_path) as store:
        assert store.append(events) == len(events)
    with RunStore(tmp_path) as store:  # a fresh connection reads what was committed
        assert encoded(store.events("digits-cnn")) == encoded(events)


def test_appending_the_same_batch_twice_stores_it_once_and_counters_do_not_double(tmp_path, make_events):
    events = make_events()
    with RunStore(tmp_path) as store:
        store.append(events)
        before = store.run_info("digits-cnn")
        assert store.append(events) == 0
        assert store.append(events[3:] + [scalars("digits-cnn", 10, 3, loss=1.0)]) == 1
        assert len(store.events("digits-cnn")) == len(events) + 1
        assert len(store.scalars("digits-cnn", ["loss"])) == 4
        after = store.run_info("digits-cnn")
    assert after.flags == before.flags == 1
    assert after.last_step == 3 and after.last_loss == 1.0


def test_a_batch_with_a_non_event_in_the_middle_stores_nothing(tmp_path, make_events):
    events = make_events()
    with RunStore(tmp_path) as store:
        with pytest.raises(TypeError, match="item 4 of the batch is a dict"):
            store.append(events[:4] + [events[4].to_dict()] + events[4:])
        assert store.events("digits-cnn") == []
        assert store.runs() == []
        assert store.scalars("digits-cnn") == []
        assert store.append(events) == len(events)  # the retry goes through whole


def test_runs_reflect_name_status_last_loss_flags_and_config(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        store.append(make_events("older", wall=1000.0))
        store.append(make_events("newer", wall=5000.0)[:3])
        older, = [r for r in store.runs() if r.run == "older"]
        assert [r.run for r in store.runs()] == ["newer", "older"]
        newer = store.run_info("newer")
    assert (older.name, older.status, older.flags, older.last_step) == ("digits", "diverged", 1, 2)
    assert math.isnan(older.last_loss) and older.loss_step == 2  # a NaN loss is reported, not hidden
    assert (older.host, older.rank, older.world, older.started, older.updated) == ("gpu-1", 0, 1, 1000.0, 1009.0)
    assert older.config["sizes"] == [1, 2] and math.isnan(older.config["eps"])
    assert (newer.status, newer.last_loss, newer.flags) == ("running", 2.5, 0)


def test_status_events_and_flags_update_the_run_as_they_arrive(tmp_path, make_events):
    start = make_events("r")[:1]
    with RunStore(tmp_path) as store:
        store.append(start)
        store.append([Event("r", 1, 5, 1001.0, Kind.STATUS, Status("stopping", "user asked", "dashboard"))])
        assert store.run_info("r").status == "stopping"
        flag = Flag(kind="dead_units", severity="warning", message="m", advice="a")
        store.append([Event("r", seq, 6, 1002.0, Kind.FLAG, flag) for seq in (2, 3)])
        assert store.run_info("r").flags == 2


def test_a_late_replay_of_an_older_step_does_not_overwrite_the_last_loss(tmp_path):
    with RunStore(tmp_path) as store:
        store.append([scalars("r", 1, 20, loss=0.5)])
        store.append([scalars("r", 0, 10, loss=9.0)])
        info = store.run_info("r")
    assert (info.last_loss, info.loss_step, info.last_step) == (0.5, 20, 20)


def test_infinities_are_stored_natively_and_nan_as_null(tmp_path):
    with RunStore(tmp_path) as store:
        store.append([scalars("r", 0, 0, a=math.inf, b=-math.inf, c=math.nan)])
        values = {name: value for _, _, name, value in store.scalars("r")}
    assert values["a"] == math.inf and values["b"] == -math.inf and math.isnan(values["c"])
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    raw = dict(db.execute("SELECT name, value FROM scalars ORDER BY name").fetchall())
    db.close()
    assert raw == {"a": math.inf, "b": -math.inf, "c": None}


def test_events_filter_by_kind_resume_after_a_seq_and_stop_at_a_limit(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        store.append(make_events())
        assert [e.seq for e in store.events("digits-cnn", kinds=["scalars"])] == [2, 5, 6]
        assert [e.seq for e in store.events("digits-cnn", kinds=[Kind.FLAG, Kind.STATUS])] == [7, 8]
        assert [e.seq for e in store.events("digits-cnn", after_seq=6, limit=2)] == [7, 8]
        assert store.events("digits-cnn", kinds=[]) == []
        with pytest.raises(SchemaError, match="kinds: expected one of"):
            store.events("digits-cnn", kinds=["losses"])


def test_scalars_come_ordered_by_name_then_step_and_names_are_listed(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        store.append(make_events())
        rows = store.scalars("digits-cnn")
        assert [(name, step) for step, _, name, _ in rows] == [
            ("grad_norm", 1), ("loss", 0), ("loss", 1), ("loss", 2), ("lr", 0), ("val_acc", 2)]
        assert store.scalar_names("digits-cnn") == ["grad_norm", "loss", "lr", "val_acc"]
        assert [name for _, _, name, _ in store.scalars("digits-cnn", names=["lr", "val_acc"])] == ["lr", "val_acc"]


def test_next_seq_is_zero_for_a_new_run_and_one_past_the_last_stored(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        assert store.next_seq("digits-cnn") == 0
        store.append(make_events())
        assert store.next_seq("digits-cnn") == 10
        assert store.run_info("other") is None and store.scalar_names("other") == []


def test_two_stores_on_one_file_interleave_appends_like_two_processes(tmp_path):
    first, second = RunStore(tmp_path), RunStore(tmp_path)
    try:
        for seq in range(3):
            first.append([scalars("a", seq, seq, loss=float(seq))])
            second.append([scalars("b", seq, seq, loss=-float(seq))])
            second.append([scalars("a", seq, seq, loss=99.0)])  # the other writer's replay is ignored
        assert [v for *_, v in second.scalars("a")] == [0.0, 1.0, 2.0]
        assert [v for *_, v in first.scalars("b")] == [0.0, -1.0, -2.0]
        assert {r.run for r in first.runs()} == {"a", "b"}
    finally:
        first.close()
        second.close()


def test_concurrent_writers_on_one_file_wait_for_each_other_instead_of_failing(tmp_path):
    def write(run):
        with RunStore(tmp_path) as store:
            for seq in range(40):
                store.append([scalars(run, seq, seq, loss=1.0), scalars(run, seq + 1000, seq, acc=0.5)])

    threads = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with RunStore(tmp_path) as store:
        assert [store.next_seq(f"w{i}") for i in range(4)] == [1040] * 4
        assert all(len(store.scalars(f"w{i}")) == 80 for i in range(4))


def test_one_store_serves_a_writer_thread_and_a_reader_thread(tmp_path):
    seen = []
    with RunStore(tmp_path) as store:
        writer = threading.Thread(target=lambda: [store.append([scalars("r", s, s, loss=1.0)]) for s in range(100)])
        writer.start()
        while writer.is_alive() or not seen or seen[-1] < 100:
            seen.append(len(store.events("r")))
        writer.join()
    assert seen == sorted(seen) and seen[-1] == 100


@pytest.mark.parametrize("run", ["../etc/passwd", "a b", "x'; DROP TABLE events;--", "", ".hidden", "r\x00"])
def test_a_hostile_run_id_is_rejected_with_a_clear_error(tmp_path, run):
    with RunStore(tmp_path) as store:
        for call in (store.events, store.scalars, store.run_info, store.scalar_names, store.next_seq):
            with pytest.raises(SchemaError, match="run: expected 1-128 characters from A-Z"):
                call(run)


def test_a_corrupt_row_raises_a_schema_error_naming_run_and_seq(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        store.append(make_events()[:3])
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.execute("UPDATE events SET data = ? WHERE seq = 1", ('{"shape": [1], "mean": "high"}',))
    db.commit()
    db.close()
    with RunStore(tmp_path) as store:
        with pytest.raises(SchemaError, match=r"run 'digits-cnn' seq 1: stored input_stats event does not decode"):
            store.events("digits-cnn")
        assert len(store.events("digits-cnn", kinds=["scalars"])) == 1  # the rest stays readable
