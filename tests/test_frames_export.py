"""load_run and export_run: the stored run as DataFrames and as files, NaN and Inf kept."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from monitor import codec, load_run
from monitor.export import export_run
from monitor.frames import COLUMNS, QUANTILE_COLUMNS
from monitor.store import RunStore

JSON_COLUMNS = {"hist", "shape", "channel_mean", "channel_std", "evidence"}


@pytest.fixture
def logdir(tmp_path, make_events):
    with RunStore(tmp_path / "runs") as store:
        store.append(make_events())
    return tmp_path / "runs"


def test_quantile_columns_are_named_from_the_levels_in_basis_points():
    assert QUANTILE_COLUMNS == ("q0668", "q1587", "q3085", "q5000", "q6915", "q8413", "q9332")


def test_load_run_frames_have_the_documented_columns(logdir):
    frames = load_run("digits-cnn", logdir)
    for name, columns in COLUMNS.items():
        assert tuple(getattr(frames, name).columns) == columns
    assert frames.info["name"] == "digits" and frames.info["status"] == "diverged"
    assert frames.info["model"][0]["params"] == 448


def test_load_run_keeps_nan_and_inf_in_scalars_and_layer_stats(logdir):
    frames = load_run("digits-cnn", logdir)
    loss = frames.series("loss")
    assert loss.index.tolist() == [0, 1, 2] and loss.index.name == "step"
    assert loss[0] == 2.5 and loss[1] == math.inf and math.isnan(loss[2])
    assert frames.scalars["value"].dtype == "float64"
    conv, fc = frames.layer_stats.itertuples(index=False)
    assert math.isnan(conv.std) and conv.min == -math.inf and conv.max == math.inf
    assert (conv.q0668, conv.q5000, conv.units, conv.hist) == (-1.5, 0.0, 8.0, [1, 2, 3, 4])
    assert math.isnan(fc.q5000) and math.isnan(fc.units) and fc.update_ratio == 1e-3  # absent: NaN
    assert fc.signal == "param_grad"


def test_flags_input_stats_filters_and_status_rows_carry_their_payloads(logdir):
    frames = load_run("digits-cnn", logdir)
    flag = frames.flags.iloc[0]
    assert (flag.step, flag.kind, flag.severity, flag.layer) == (2, "nan_loss", "critical", "fc")
    assert math.isnan(flag.evidence["loss"]) and flag.evidence["steps"] == [1, 2]
    inputs = frames.input_stats.iloc[0]
    assert inputs["shape"] == [8, 3, 2, 2] and math.isnan(inputs.channel_mean[1])
    image = frames.filters.image[0]
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3) and image[1, 2, 2] == 17
    assert frames.status[["state", "reason", "by"]].values.tolist() == [["diverged", "loss is NaN", "early_stopping"]]


def test_kinds_without_events_give_empty_frames_with_the_columns(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        store.append(make_events("bare")[:1])
    frames = load_run("bare", tmp_path)
    for name, columns in COLUMNS.items():
        frame = getattr(frames, name)
        assert frame.empty and tuple(frame.columns) == columns
    assert frames.layer_stats["mean"].dtype == "float64" and frames.layer_stats["step"].dtype == "int64"


def test_asking_for_an_unlogged_metric_names_the_logged_ones(logdir):
    with pytest.raises(KeyError, match="has no scalar 'acc'; it has: grad_norm, loss, lr, val_acc"):
        load_run("digits-cnn", logdir).series("acc")


def test_an_unknown_run_raises_key_error_listing_known_runs_and_the_logdir(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        for i in range(12):
            store.append(make_events(f"run-{i:02d}", wall=1000.0 + i)[:1])
    with pytest.raises(KeyError, match=r"no run 'missing' in .*babysit.sqlite3; known runs: run-11, run-10, "
                                       r".*run-02 and 2 more"):
        load_run("missing", tmp_path)


def test_loading_from_a_missing_logdir_raises_and_creates_nothing(tmp_path):
    with pytest.raises(KeyError, match="does not exist"):
        load_run("digits-cnn", tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def read_csv(path):
    frame = pd.read_csv(path)
    for column in JSON_COLUMNS & set(frame.columns):
        frame[column] = frame[column].map(codec.loads)
    return frame


def assert_same(read: pd.DataFrame, original: pd.DataFrame):
    """Equal cell by cell, NaN matching NaN, lists compared through their exact JSON."""
    assert list(read.columns) == list(original.columns) and len(read) == len(original)
    for column in original.columns:
        for got, want in zip(read[column], original[column]):
            if isinstance(want, (list, dict)):
                assert codec.dumps(codec.loads(got) if isinstance(got, str) else _listify(got)) == codec.dumps(want)
            elif want is None or (isinstance(want, float) and math.isnan(want)):
                assert got is None or (isinstance(got, float) and math.isnan(got)), column
            else:
                assert got == want, column


def _listify(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def test_csv_export_reads_back_equal_nan_and_inf_included(logdir):
    paths = export_run("digits-cnn", logdir, fmt="csv")
    out = logdir / "digits-cnn-export"
    assert [p.name for p in paths] == ["scalars.csv", "layer_stats.csv", "flags.csv", "input_stats.csv",
                                       "status.csv", "filters.npz"]
    frames = load_run("digits-cnn", logdir)
    for name in ("scalars", "layer_stats", "flags", "input_stats", "status"):
        assert_same(read_csv(out / f"{name}.csv"), getattr(frames, name))
    assert "2,1006.0,loss,nan" in (out / "scalars.csv").read_text().splitlines()  # the NaN loss


def test_parquet_export_reads_back_equal_with_native_lists(logdir, tmp_path):
    paths = export_run("digits-cnn", logdir, fmt="parquet", out=tmp_path / "pq")
    assert all(p.parent == tmp_path / "pq" for p in paths)
    frames = load_run("digits-cnn", logdir)
    for name in ("scalars", "layer_stats", "flags", "input_stats", "status"):
        read = pd.read_parquet(tmp_path / "pq" / f"{name}.parquet")
        assert_same(read, getattr(frames, name))
    hist = pd.read_parquet(tmp_path / "pq" / "layer_stats.parquet")["hist"][0]
    assert hist.tolist() == [1, 2, 3, 4]  # a list column, not text


def test_filters_are_exported_as_an_npz_of_images_keyed_by_step(logdir):
    export_run("digits-cnn", logdir)
    with np.load(logdir / "digits-cnn-export" / "filters.npz") as images:
        assert list(images) == ["step_0"]
        np.testing.assert_array_equal(images["step_0"], np.arange(18, dtype=np.uint8).reshape(2, 3, 3))


def test_empty_frames_are_not_written(tmp_path, make_events):
    with RunStore(tmp_path) as store:
        store.append(make_events("bare")[:3])
    assert [p.name for p in export_run("bare", tmp_path)] == ["scalars.csv", "input_stats.csv"]


def test_an_unknown_format_is_rejected_naming_the_accepted_ones(logdir):
    with pytest.raises(ValueError, match="'xlsx' is not supported; use one of: csv, parquet"):
        export_run("digits-cnn", logdir, fmt="xlsx")
    assert not (logdir / "digits-cnn-export").exists()
