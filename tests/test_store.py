"""RunStore: exactly-once appends, exact round trips and run counters, on real SQLite files."""
from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import summary

from monitor.codec import encode_event
from monitor.events import Event, Flag, InputStats, Kind, LayerStats, Scalars, Status
from monitor.store import DB_FILENAME, STORE_VERSION, RunStore, open_store
from monitor.store.blocks import BLOCK_STEPS
from monitor.store.layers import LAYER_FIELDS
from monitor.validation import SchemaError


@pytest.fixture(params=["sqlite", "postgresql"])
def store_at(request, tmp_path):
    """Opens the test's store, on each backend: the same calls must give the same answers
    (a second call opens a second connection to the same store, as a reopen or another process would)."""
    if request.param == "sqlite":
        return lambda: RunStore(tmp_path)
    url = request.getfixturevalue("postgres_url")
    return lambda: open_store(url)


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


def test_a_run_round_trips_exactly_nan_inf_and_bytes_included(store_at, make_events):
    events = make_events()
    with store_at() as store:
        assert store.append(events) == len(events)
    with store_at() as store:  # a fresh connection reads what was committed
        assert encoded(store.events("digits-cnn")) == encoded(events)


def test_appending_the_same_batch_twice_stores_it_once_and_counters_do_not_double(store_at, make_events):
    events = make_events()
    with store_at() as store:
        store.append(events)
        before = store.run_info("digits-cnn")
        assert store.append(events) == 0
        assert store.append(events[3:] + [scalars("digits-cnn", 10, 3, loss=1.0)]) == 1
        assert len(store.events("digits-cnn")) == len(events) + 1
        assert len(store.scalars("digits-cnn", ["loss"])) == 4
        after = store.run_info("digits-cnn")
    assert after.flags == before.flags == 1
    assert after.last_step == 3 and after.last_loss == 1.0


def test_a_batch_with_a_non_event_in_the_middle_stores_nothing(store_at, make_events):
    events = make_events()
    with store_at() as store:
        with pytest.raises(TypeError, match="item 4 of the batch is a dict"):
            store.append(events[:4] + [events[4].to_dict()] + events[4:])
        assert store.events("digits-cnn") == []
        assert store.runs() == []
        assert store.scalars("digits-cnn") == []
        assert store.append(events) == len(events)  # the retry goes through whole


def test_runs_reflect_name_status_last_loss_flags_and_config(store_at, make_events):
    with store_at() as store:
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


def test_status_events_and_flags_update_the_run_as_they_arrive(store_at, make_events):
    start = make_events("r")[:1]
    with store_at() as store:
        store.append(start)
        store.append([Event("r", 1, 5, 1001.0, Kind.STATUS, Status("stopping", "user asked", "dashboard"))])
        assert store.run_info("r").status == "stopping"
        flag = Flag(kind="dead_units", severity="warning", message="m", advice="a")
        store.append([Event("r", seq, 6, 1002.0, Kind.FLAG, flag) for seq in (2, 3)])
        assert store.run_info("r").flags == 2


def test_a_late_replay_of_an_older_step_does_not_overwrite_the_last_loss(store_at):
    with store_at() as store:
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


def test_events_filter_by_kind_resume_after_a_seq_and_stop_at_a_limit(store_at, make_events):
    with store_at() as store:
        store.append(make_events())
        assert [e.seq for e in store.events("digits-cnn", kinds=["scalars"])] == [2, 5, 6]
        assert [e.seq for e in store.events("digits-cnn", kinds=[Kind.FLAG, Kind.STATUS])] == [7, 8]
        assert [e.seq for e in store.events("digits-cnn", after_seq=6, limit=2)] == [7, 8]
        assert store.events("digits-cnn", kinds=[]) == []
        with pytest.raises(SchemaError, match="kinds: expected one of"):
            store.events("digits-cnn", kinds=["losses"])


def test_scalars_come_ordered_by_name_then_step_and_names_are_listed(store_at, make_events):
    with store_at() as store:
        store.append(make_events())
        rows = store.scalars("digits-cnn")
        assert [(name, step) for step, _, name, _ in rows] == [
            ("grad_norm", 1), ("loss", 0), ("loss", 1), ("loss", 2), ("lr", 0), ("val_acc", 2)]
        assert store.scalar_names("digits-cnn") == ["grad_norm", "loss", "lr", "val_acc"]
        assert [name for _, _, name, _ in store.scalars("digits-cnn", names=["lr", "val_acc"])] == ["lr", "val_acc"]


def test_next_seq_is_zero_for_a_new_run_and_one_past_the_last_stored(store_at, make_events):
    with store_at() as store:
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


def test_many_openers_of_a_new_file_all_get_the_store(tmp_path):
    """Several processes (here threads) opening a store that does not exist yet: one creates
    it while the others' switch to WAL is answered "locked" at once, without the busy
    timeout; they wait and retry instead of failing (it failed about one start in 20)."""
    failed = []

    def opener(logdir):
        try:
            with RunStore(logdir):
                pass
        except Exception as exc:  # what the fix is about: no opener may fail
            failed.append(exc)

    for trial in range(40):
        threads = [threading.Thread(target=opener, args=(tmp_path / str(trial),)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failed == []


def test_one_store_serves_a_writer_thread_and_a_reader_thread(store_at):
    seen = []
    with store_at() as store:
        writer = threading.Thread(target=lambda: [store.append([scalars("r", s, s, loss=1.0)]) for s in range(100)])
        writer.start()
        while writer.is_alive() or not seen or seen[-1] < 100:
            seen.append(len(store.events("r")))
        writer.join()
    assert seen == sorted(seen) and seen[-1] == 100


@pytest.mark.parametrize("run", ["../etc/passwd", "a b", "x'; DROP TABLE events;--", "", ".hidden", "r\x00"])
def test_a_hostile_run_id_is_rejected_with_a_clear_error(store_at, run):
    with store_at() as store:
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


# ---------------------------------------------------------------------------- the run page's tables

def layer_event(run, seq, step, *summaries):
    return Event(run=run, seq=seq, step=step, wall=1000.0 + seq, kind=Kind.LAYER_STATS, data=LayerStats(summaries))


def input_event(run, seq, step, **overrides):
    fields = dict(shape=(8, 3), mean=0.0, std=1.0, min=-2.0, max=2.0, nan=0, inf=0)
    return Event(run=run, seq=seq, step=step, wall=1000.0 + seq, kind=Kind.INPUT_STATS,
                 data=InputStats(**{**fields, **overrides}))


def derived_tables(store):
    """Every row of the derived tables, for comparing two stores; NaN as None (SQLite's NULL),
    as PostgreSQL keeps NaN, which equals nothing."""
    if isinstance(store, Path):  # a file
        with RunStore(Path(store).parent) as opened:
            return derived_tables(opened)
    def row(values):
        return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)

    return {table: sorted(map(row, store._query(f"SELECT * FROM {table}")), key=repr)
            for table in ("layer_points", "layers", "input_points", "scalar_blocks")}


def test_each_stored_summary_becomes_one_row_of_layer_columns(store_at):
    with store_at() as store:
        store.append([layer_event("r", 0, 0, summary("conv1", mean=0.5, units=8, dead_units=2)),
                      layer_event("r", 1, 200, summary("conv1", mean=0.25, units=8, dead_units=4))])
        (conv1,) = store.layer_points("r", "activation")
    assert (conv1.layer, conv1.module) == ("conv1", "Conv2d")
    assert conv1.columns["step"].tolist() == [0, 200] and conv1.columns["step"].dtype == np.int64
    assert conv1.columns["mean"].tolist() == [0.5, 0.25]
    assert conv1.columns["dead_frac"].tolist() == [0.25, 0.5]  # dead_units / units
    assert conv1.columns["q3"].tolist() == [0.0, 0.0] and conv1.columns["nan"].tolist() == [1, 1]
    assert list(conv1.columns) == list(LAYER_FIELDS)


def test_layer_columns_tell_nan_from_absent_and_keep_infinities(store_at):
    nan_grad = summary("fc", signal="param_grad", module="Linear", quantiles=(), units=None, dead_units=None,
                       window=None, mean=math.nan, update_ratio=math.nan, max=math.inf, min=-math.inf)
    with store_at() as store:
        store.append([layer_event("r", 0, 0, nan_grad)])
        (fc,) = store.layer_points("r", "param_grad", fields=["mean", "max", "min", "q0", "update_ratio", "sat_frac"])
    assert math.isnan(fc.columns["mean"][0]) and math.isnan(fc.columns["update_ratio"][0])
    assert (fc.columns["max"][0], fc.columns["min"][0]) == (math.inf, -math.inf)
    assert set(fc.absent) == {"q0", "sat_frac"}  # no quantiles, no saturation: absent; the NaN ratio is not
    assert fc.absent["q0"].tolist() == [True]


def test_layer_points_select_layers_and_fields_and_refuse_unknown_ones(store_at):
    with store_at() as store:
        store.append([layer_event("r", 0, 0, summary("a"), summary("b"), summary("c"))])
        chosen = store.layer_points("r", "activation", layers=["c", "a", "missing"], fields=["norm"])
        assert [(c.layer, list(c.columns)) for c in chosen] == [("c", ["step", "norm"]), ("a", ["step", "norm"])]
        with pytest.raises(SchemaError, match="fields: unknown 'nrom'"):
            store.layer_points("r", "activation", fields=["nrom"])
        with pytest.raises(SchemaError, match="signal: expected one of activation, output_grad, param_grad"):
            store.layer_points("r", "weights")


def test_replaying_layer_stats_adds_no_layer_rows(store_at):
    events = [layer_event("r", 0, 0, summary("a"), summary("b", signal="output_grad")), input_event("r", 1, 0)]
    with store_at() as store:
        store.append(events)
        before = derived_tables(store)
        assert store.append(events) == 0
        assert derived_tables(store) == before
        assert len(store.layer_points("r", "activation")[0].columns["step"]) == 1


def test_the_layer_index_lists_layers_in_first_seen_order_even_after_a_late_replay(store_at):
    with store_at() as store:
        store.append([layer_event("r", 5, 50, summary("b"), summary("a"), summary("b", signal="output_grad"))])
        store.append([layer_event("r", 1, 10, summary("z", module="Linear"))])  # replayed late, seen first
        assert store.layer_index("r") == [("z", "activation", "Linear"), ("b", "activation", "Conv2d"),
                                          ("a", "activation", "Conv2d"), ("b", "output_grad", "Conv2d")]
        assert store.layer_index("other") == []


def test_input_stats_come_back_as_columns_in_step_order(store_at):
    with store_at() as store:
        store.append([input_event("r", 2, 20, mean=math.nan, nan=3), input_event("r", 1, 10, max=math.inf, inf=1)])
        columns = store.input_points("r")
    assert columns["step"].tolist() == [10, 20] and columns["max"][0] == math.inf
    assert math.isnan(columns["mean"][1]) and columns["nan"].tolist() == [0, 3] and columns["inf"].tolist() == [1, 0]


def test_latest_is_the_highest_seq_of_a_kind_found_through_the_kind_index(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        store.append(make_events())
        assert store.latest("digits-cnn", Kind.SCALARS).seq == 6
        assert store.latest("digits-cnn", "run_end").data.state.value == "diverged"
        assert store.latest("other", Kind.SCALARS) is None
        assert store.event("digits-cnn", 4).kind is Kind.FILTERS and store.event("digits-cnn", 99) is None
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    plan = db.execute("EXPLAIN QUERY PLAN SELECT seq FROM events WHERE run = 'r' AND kind = 'flag' "
                      "ORDER BY seq DESC LIMIT 1").fetchall()
    db.close()
    assert "events_by_kind" in str(plan) and "TEMP B-TREE" not in str(plan)


def test_scalar_columns_give_a_series_or_its_last_rows_as_arrays(store_at):
    with store_at() as store:
        store.append([scalars("r", s, s, wall=100.0 + s, loss=1.0 / (s + 1)) for s in range(10)])
        store.append([scalars("r", 10, 10, loss=math.nan, epoch=1.0)])
        tail = store.scalar_columns("r", "loss", last=3)
        assert tail["step"].tolist() == [8, 9, 10] and math.isnan(tail["value"][-1])
        assert len(store.scalar_columns("r", "loss")["step"]) == 11
        assert store.last_scalar("r", "epoch") == 1.0 and store.last_scalar("r", "nope") is None
        assert store.scalar_totals("r") == {"epoch": (1, 1), "loss": (11, 1)}


def test_scalar_blocks_hold_each_blocks_count_ends_extremes_and_first_nan_whatever_the_arrival_order(store_at):
    rng = np.random.default_rng(0)
    values = rng.normal(size=1000)
    values[[5, 300, 301]] = math.nan
    values[[7, 700]] = (math.inf, -math.inf)
    values[400] = values[420] = 9.0  # a tie: the earlier point is the block's maximum
    order = rng.permutation(1000)
    with store_at() as store:
        for chunk in np.array_split(order, 7):  # batches out of step order, as late replays arrive
            store.append([scalars("r", int(s), int(s), wall=float(s), x=float(values[s])) for s in chunk])
        blocks = store.scalar_blocks("r", "x")
    assert blocks["count"].tolist() == [256, 256, 256, 232]
    for b in range(4):
        chunk = values[b * BLOCK_STEPS:(b + 1) * BLOCK_STEPS]
        number = np.where(np.isnan(chunk), np.inf, chunk)
        assert blocks["first_step"][b] == b * BLOCK_STEPS and blocks["last_step"][b] == min(999, (b + 1) * 256 - 1)
        assert blocks["min_step"][b] == b * BLOCK_STEPS + np.argmin(number)
        assert blocks["max_step"][b] == b * BLOCK_STEPS + np.argmax(np.where(np.isnan(chunk), -np.inf, chunk))
        nan_at = np.flatnonzero(np.isnan(chunk))
        assert (blocks["nan_step"][b] == b * BLOCK_STEPS + nan_at[0]) if len(nan_at) else np.isnan(blocks["nan_seq"][b])
    assert blocks["max_value"][0] == math.inf and blocks["min_value"][2] == -math.inf
    assert (blocks["max_step"][1], blocks["max_value"][1]) == (400, 9.0)


def test_opening_a_version_1_file_derives_the_new_tables_from_its_events(tmp_path, make_events):
    events = make_events() + [layer_event("digits-cnn", 10 + i, 3 + i, summary("conv1", mean=float(i)),
                                          summary("fc", signal="param_grad", update_ratio=math.nan))
                              for i in range(3)] + [input_event("digits-cnn", 20, 9)]
    with RunStore(tmp_path / "fresh") as store:
        store.append(events)
    with RunStore(tmp_path / "old") as store:
        store.append(events)
    db = sqlite3.connect(tmp_path / "old" / DB_FILENAME)  # back to version 1: its tables, its number
    for table in ("layer_points", "layers", "input_points", "scalar_blocks"):
        db.execute(f"DROP TABLE {table}")
    db.execute("DROP INDEX events_by_kind")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with RunStore(tmp_path / "old") as store:
        assert [c.columns["mean"].tolist() for c in store.layer_points("digits-cnn", "activation")] == [
            [0.5, 0.0, 1.0, 2.0]]
    db = sqlite3.connect(tmp_path / "old" / DB_FILENAME)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    assert version == STORE_VERSION == 2 and "events_by_kind" in indexes
    assert derived_tables(tmp_path / "old" / DB_FILENAME) == derived_tables(tmp_path / "fresh" / DB_FILENAME)


def test_the_migration_skips_a_layer_stats_row_that_no_longer_decodes(tmp_path):
    with RunStore(tmp_path) as store:
        store.append([layer_event("r", 0, 0, summary("a")), layer_event("r", 1, 1, summary("a"))])
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.execute("UPDATE events SET data = '{\"summaries\": 3}' WHERE seq = 0")
    db.execute("DELETE FROM layer_points")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with RunStore(tmp_path) as store:
        assert store.layer_points("r", "activation")[0].columns["step"].tolist() == [1]


@pytest.mark.parametrize("run", ["../etc/passwd", "x'; DROP TABLE events;--", "", "r\x00"])
def test_the_run_page_reads_reject_a_hostile_run_id(store_at, run):
    with store_at() as store:
        for call in (lambda: store.latest(run, "flag"), lambda: store.event(run, 0), lambda: store.layer_index(run),
                     lambda: store.layer_points(run, "activation"), lambda: store.input_points(run),
                     lambda: store.scalar_totals(run), lambda: store.scalar_blocks(run, "loss"),
                     lambda: store.scalar_columns(run, "loss"), lambda: store.last_scalar(run, "loss")):
            with pytest.raises(SchemaError, match="run: expected 1-128 characters"):
                call()


def test_a_file_from_a_newer_babysit_is_refused_with_the_fix(tmp_path):
    db = sqlite3.connect(tmp_path / DB_FILENAME)
    db.execute("PRAGMA user_version = 3")
    db.close()
    with pytest.raises(RuntimeError,
                       match=r"store version 3, this babysit reads version 2 \(or older\); upgrade babysit"):
        RunStore(tmp_path)


# ---------------------------------------------------------------------- lost runs (web.liveness)

def test_a_running_run_marked_lost_keeps_when_and_why_across_a_reopen_and_gets_no_event(store_at, make_events):
    with store_at() as store:
        store.append(make_events("r")[:3])
        assert store.active_runs() == [("r", "gpu-1", 1000.0)]
        assert store.mark_lost("r", "no heartbeat for 31 s", at=1234.5)
    with store_at() as store:
        info = store.run_info("r")
        assert (info.status, info.lost_at, info.lost_reason) == ("lost", 1234.5, "no heartbeat for 31 s")
        assert store.runs()[0] == info and store.lost_runs() == {"r": (1234.5, "no heartbeat for 31 s")}
        assert store.active_runs() == [] and store.next_seq("r") == 3  # the trainer's seqs, untouched


def test_only_a_running_or_stopping_run_can_be_marked_lost(store_at, make_events):
    with store_at() as store:
        store.append(make_events("ended"))  # ends diverged
        store.append(make_events("stopping")[:1] + [Event("stopping", 1, 1, 1001.0, Kind.STATUS, Status("stopping"))])
        assert not store.mark_lost("ended", "silent") and not store.mark_lost("unknown", "silent")
        assert store.mark_lost("stopping", "silent") and not store.mark_lost("stopping", "again")
        assert store.run_info("ended").status == "diverged" and store.run_info("ended").lost_reason == ""
        assert store.mark_alive("stopping") and store.run_info("stopping").status == "stopping"  # what it had
        assert not store.mark_alive("stopping") and store.run_info("stopping").lost_at is None


def test_new_events_bring_a_lost_run_back_and_a_status_among_them_wins(store_at, make_events):
    with store_at() as store:
        store.append(make_events("back")[:3] + make_events("ends")[:3])
        store.mark_lost("back", "silent")
        store.mark_lost("ends", "silent")
        assert store.append([scalars("back", 3, 4, loss=1.0)]) == 1
        store.append([Event("ends", 3, 4, 1003.0, Kind.STATUS, Status("crashed", "boom"))])
        assert store.append([scalars("back", 3, 4, loss=1.0)]) == 0  # a replay changes nothing
        assert (store.run_info("back").status, store.run_info("back").lost_reason) == ("running", "")
        assert store.run_info("ends").status == "crashed" and store.lost_runs() == {}
