"""The run page's REST routes through a real server on a loopback port and a real SQLite store."""
import io
import json
import math
import sqlite3

import numpy as np
import pytest
from conftest import summary
from PIL import Image

from monitor import codec
from monitor.events import Event, Filters, InputStats, Kind, LayerStats, Scalars
from servers import serving, serving_app


@pytest.fixture
def server(tmp_path):
    with serving_app(tmp_path) as served:
        yield served


@pytest.fixture
def get(server, http_get):
    """``get(path) -> (status, decoded JSON)`` against the running server."""
    running, _ = server

    def fetch(path):
        status, _, body = http_get(running.url + path, 30)
        return status, codec.loads(body)

    return fetch


def layers_event(run, seq, step, *summaries):
    return Event(run, seq, step, 1000.0 + seq, Kind.LAYER_STATS, LayerStats(summaries))


def test_a_run_overview_holds_info_start_status_end_progress_and_layers(server, get, make_events):
    _, app = server
    app.store.append(make_events())
    status, run = get("/api/runs/digits-cnn")
    assert status == 200
    assert run["info"]["run"] == "digits-cnn" and run["info"]["status"] == "diverged"
    assert run["start"]["host"] == "gpu-1" and run["start"]["model"][0]["name"] == "conv1"
    assert math.isnan(run["start"]["config"]["eps"])
    assert run["status"] == {"state": "diverged", "reason": "loss is NaN", "by": "early_stopping", "step": 2,
                             "wall": 1008.0}
    assert run["end"] == {"state": "diverged", "steps": 3, "duration": 1.5, "dropped": 0, "skipped": 0,
                          "step": 2, "wall": 1009.0}
    assert run["last_seq"] == 9
    assert run["progress"] == {"step": 2, "epoch": None, "steps_per_s": pytest.approx(2 / 4), "elapsed": 9.0}
    assert run["layers"] == [{"layer": "conv1", "signal": "activation", "module": "Conv2d"},
                             {"layer": "fc", "signal": "param_grad", "module": "Linear"}]


def test_a_run_with_scalars_only_has_no_start_status_or_end_and_its_epoch_and_speed(server, get):
    _, app = server
    app.store.append([Event("r", s, s, 100.0 + s / 4, Kind.SCALARS, Scalars({"loss": 1.0, "epoch": s // 100}))
                      for s in range(250)])
    run = get("/api/runs/r")[1]
    assert (run["start"], run["status"], run["end"], run["layers"]) == (None, None, None, [])
    assert run["progress"] == {"step": 249, "epoch": 2.0, "steps_per_s": pytest.approx(4.0),
                               "elapsed": pytest.approx(249 / 4)}


def test_layer_columns_come_per_layer_with_nan_and_infinity_tagged_and_absent_values_null(server, http_get):
    running, app = server
    app.store.append([layers_event("r", 0, 0, summary("conv1", mean=math.nan)),
                      layers_event("r", 1, 5, summary("conv1", mean=0.5))])
    body = http_get(f"{running.url}/api/runs/r/layers?signal=activation")[2]
    json.loads(body)  # strict JSON: no bare NaN or Infinity
    reply = codec.loads(body)
    conv1 = reply["layers"]["conv1"]
    assert reply["signal"] == "activation" and conv1["module"] == "Conv2d" and conv1["total"] == 2
    assert list(conv1)[2:] == ["step", "mean", "std", "min", "max", "norm", "q0", "q1", "q2", "q3", "q4", "q5",
                               "q6", "zero_frac", "sat_frac", "dead_frac", "update_ratio", "nan", "inf"]
    assert conv1["step"] == [0, 5] and math.isnan(conv1["mean"][0]) and conv1["mean"][1] == 0.5
    assert conv1["max"] == [math.inf, math.inf] and conv1["min"] == [-math.inf, -math.inf]
    assert conv1["update_ratio"] == [None, None] and conv1["sat_frac"] == [None, None]
    assert conv1["dead_frac"] == [0.25, 0.25] and conv1["q6"] == [1.5, 1.5]


def test_layers_and_fields_parameters_choose_what_comes_back(server, get):
    _, app = server
    grads = [summary(name, signal="param_grad", update_ratio=0.01 * i) for i, name in enumerate(["a", "b,c", "d"])]
    app.store.append([layers_event("r", 0, 0, *grads)])
    reply = get("/api/runs/r/layers?signal=param_grad&layers=d,a&layer=b,c&fields=update_ratio")[1]
    assert list(reply["layers"]) == ["d", "a", "b,c"]
    assert reply["layers"]["d"] == {"module": "Conv2d", "total": 1, "step": [0], "update_ratio": [0.02]}
    every = get("/api/runs/r/layers?signal=param_grad&fields=step,update_ratio")[1]["layers"]
    assert [layer["update_ratio"] for layer in every.values()] == [[0.0], [0.01], [0.02]]


@pytest.mark.parametrize("query, status, problem", [
    ("signal=weights", 400, "signal: expected one of activation, output_grad, param_grad, got 'weights'"),
    ("", 400, "signal: expected one of"),
    ("signal=activation&fields=step,nrom", 400, "fields: unknown 'nrom'; expected some of step, mean"),
    ("signal=activation&layers=conv9", 404, "no activation summaries of layer(s) 'conv9' in run 'r'"),
    ("signal=activation&max_points=3", 400, "max_points: expected 10 to 100000, got '3'"),
    ("signal=activation&max_points=many", 400, "max_points: expected 10 to 100000, got 'many'"),
])
def test_a_bad_layers_request_is_refused_naming_the_problem(server, get, query, status, problem):
    _, app = server
    app.store.append([layers_event("r", 0, 0, summary("conv1"))])
    code, reply = get(f"/api/runs/r/layers?{query}")
    assert code == status and problem in reply["error"]


def test_a_long_layer_history_is_downsampled_keeping_its_spike_and_its_non_finite_sample(server, get):
    _, app = server
    n = 5000
    events = [layers_event("r", i, 200 * i, summary("conv1", max=1.0 + (i == 1234) * 99, min=-1.0,
                                                     nan=(i == 4321) * 7, inf=0)) for i in range(n)]
    for start in range(0, n, 1000):
        app.store.append(events[start:start + 1000])
    conv1 = get("/api/runs/r/layers?signal=activation&max_points=300")[1]["layers"]["conv1"]
    assert conv1["total"] == n and len(conv1["step"]) <= 300
    assert {0, 200 * 1234, 200 * 4321, 200 * (n - 1)} <= set(conv1["step"])
    assert max(conv1["max"]) == 100.0 and max(conv1["nan"]) == 7
    assert all(len(column) == len(conv1["step"]) for key, column in conv1.items() if isinstance(column, list))


def test_input_statistics_come_back_as_columns(server, get):
    _, app = server
    app.store.append([Event("r", s, 10 * s, 1000.0 + s, Kind.INPUT_STATS,
                            InputStats(shape=(8, 3), mean=0.1 * s, std=1.0, min=-1.0, max=math.inf if s == 2 else 1.0,
                                       nan=s, inf=int(s == 2))) for s in range(3)])
    reply = get("/api/runs/r/inputs")[1]
    assert reply["step"] == [0, 10, 20] and reply["mean"] == [0.0, 0.1, 0.2] and reply["max"][2] == math.inf
    assert reply["nan"] == [0, 1, 2] and reply["inf"] == [0, 0, 1] and reply["total"] == 3
    assert set(reply) == {"step", "wall", "mean", "std", "min", "max", "nan", "inf", "total", "shape", "latest"}
    assert reply["shape"] == [8, 3]  # the latest batch's, so that the page knows an image from a table
    assert reply["latest"]["mean"] == 0.2 and reply["latest"]["integer"] is False  # the whole latest reading


def test_the_latest_event_of_a_kind_is_served_with_its_payload(server, get, make_events):
    _, app = server
    app.store.append(make_events())
    code, latest = get("/api/runs/digits-cnn/latest/scalars")
    assert code == 200 and (latest["seq"], latest["step"], latest["kind"]) == (6, 2, "scalars")
    assert math.isnan(latest["data"]["values"]["loss"]) and latest["data"]["values"]["val_acc"] == 0.5
    filters = get("/api/runs/digits-cnn/latest/filters")[1]
    assert filters["data"]["pixels"] == bytes(range(18))  # the codec's bytes tag
    assert get("/api/runs/digits-cnn/latest/layer_stats")[1]["data"]["summaries"][1]["layer"] == "fc"


def test_a_latest_request_for_a_bad_kind_says_so_and_one_the_run_has_none_of_is_null(server, get):
    _, app = server
    app.store.append([Event("r", 0, 0, 1.0, Kind.SCALARS, Scalars({"loss": 1.0}))])
    code, reply = get("/api/runs/r/latest/losses")
    assert code == 400 and "kind: expected one of run_start" in reply["error"]
    assert get("/api/runs/r/latest/filters") == (200, None)  # none yet: not an error the page logs


def test_a_stored_event_that_no_longer_decodes_is_a_server_error_naming_it(server, get, tmp_path):
    _, app = server
    app.store.append([layers_event("r", 0, 0, summary("conv1"))])
    db = sqlite3.connect(tmp_path / "babysit.sqlite3")
    db.execute("UPDATE events SET data = '{\"summaries\": 3}'")
    db.commit()
    db.close()
    code, reply = get("/api/runs/r/latest/layer_stats")
    assert code == 500 and "run 'r' seq 0: stored layer_stats event does not decode" in reply["error"]


def filters_event(run, seq, channels, height=3, width=4):
    pixels = np.random.default_rng(seq).integers(0, 256, height * width * channels, dtype=np.uint8).tobytes()
    return Event(run, seq, seq, 1.0 + seq, Kind.FILTERS,
                 Filters(layer="conv1", count=2, height=height, width=width, channels=channels, pixels=pixels))


def test_the_filter_image_is_a_png_of_the_stored_pixels_the_latest_or_the_seq_asked_for(server, http_get):
    running, app = server
    grey, rgb = filters_event("r", 0, 1), filters_event("r", 1, 3)
    app.store.append([grey, rgb])
    code, headers, body = http_get(f"{running.url}/api/runs/r/filters.png")
    assert code == 200 and headers["Content-Type"] == "image/png" and headers["Cache-Control"] == "no-cache"
    image = Image.open(io.BytesIO(body))
    assert image.mode == "RGB" and image.size == (4, 3) and image.tobytes() == rgb.data.pixels
    older = Image.open(io.BytesIO(http_get(f"{running.url}/api/runs/r/filters.png?seq=0")[2]))
    assert older.mode == "L" and older.tobytes() == grey.data.pixels


@pytest.mark.parametrize("query, status, problem", [("", 404, "no filters event in run 'r'"),
                                                    ("?seq=0", 404, "seq 0 of run 'r' is a scalars event, not filters"),
                                                    ("?seq=7", 404, "seq 7 of run 'r' is no event, not filters"),
                                                    ("?seq=-1", 400, "seq: expected a non-negative integer"),
                                                    ("?seq=%C2%B2", 400, "seq: expected a non-negative integer")])
def test_a_filter_image_that_is_not_there_is_a_clear_error(server, get, query, status, problem):
    _, app = server
    app.store.append([Event("r", 0, 0, 1.0, Kind.SCALARS, Scalars({"loss": 1.0}))])
    code, reply = get(f"/api/runs/r/filters.png{query}")
    assert code == status and problem in reply["error"]


def test_a_long_series_is_read_as_blocks_and_keeps_its_ends_spike_and_nan(server, get):
    _, app = server
    n = 40_000  # 157 blocks: enough to fill the 40 buckets of 200 points with whole blocks
    rows = np.full(n, 1.0)
    rows[12_345], rows[23_456] = 50.0, math.nan
    app.store.append([Event("long", i, i, 1000.0 + i, Kind.SCALARS, Scalars({"loss": float(rows[i])}))
                      for i in range(n)])
    loss = get("/api/runs/long/series?names=loss&max_points=200")[1]["loss"]
    assert loss["total"] == n and len(loss["step"]) <= 200 and loss["step"] == sorted(loss["step"])
    assert {0, 12_345, 23_456, n - 1} <= set(loss["step"])
    at = {step: (wall, value) for step, wall, value in zip(loss["step"], loss["wall"], loss["value"])}
    assert at[12_345] == (1000.0 + 12_345, 50.0) and math.isnan(at[23_456][1])


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("empty")) as running:
        yield running


@pytest.mark.parametrize("path", ["", "/layers?signal=activation", "/inputs", "/latest/scalars", "/filters.png"])
@pytest.mark.parametrize("run, status", [("nope", 404), ("bad%0Aname", 400), (".hidden", 400), ("a%20b", 400),
                                         ("x%27%3B%20DROP%20TABLE%20events", 400)])
def test_every_run_page_route_refuses_an_unknown_or_hostile_run_id(empty_server, http_get, path, run, status):
    code, _, body = http_get(f"{empty_server.url}/api/runs/{run}{path}")
    assert code == status and "run" in codec.loads(body)["error"]


def _ranked_run(run: str, rank: int, losses) -> list[Event]:
    from monitor.events import RunStart

    start = RunStart(name="ddp", config={}, model=(), host="h", pid=1, rank=rank, world=2, versions={}, sampling={})
    return [Event(run, 0, 0, 1000.0, Kind.RUN_START, start)] + [
        Event(run, 1 + step, step, 1001.0 + step, Kind.SCALARS, Scalars({"loss": value}))
        for step, value in enumerate(losses)]


def test_the_ranks_of_a_job_come_as_one_band_of_their_losses_lowest_to_highest(server, get):
    _, app = server
    job = "ddp-20261201-120000-ab12"
    app.store.append(_ranked_run(job, 0, [1.0, 2.0, 3.0, math.nan]))
    app.store.append(_ranked_run(f"{job}.r1", 1, [3.0, 1.0, 2.0, 4.0]))
    for run in (job, f"{job}.r1"):  # from either rank's page
        status, body = get(f"/api/runs/{run}/ranks")
        assert status == 200
        assert body == {"ranks": [job, f"{job}.r1"], "step": [0, 1, 2, 3], "low": [1.0, 1.0, 2.0, 4.0],
                        "high": [3.0, 2.0, 3.0, 4.0]}  # a NaN on one rank leaves the other's value


def test_a_run_of_one_process_has_no_band_of_ranks(server, get, make_events):
    _, app = server
    app.store.append(make_events(run="solo"))
    assert get("/api/runs/solo/ranks") == (200, {"ranks": ["solo"], "step": [], "low": [], "high": []})


def test_incidents_come_cause_first_with_the_seqs_of_their_flags(server, get):
    from monitor.events import Flag

    _, app = server
    flags = [("vanishing_gradient", 20, "bn1", {}), ("update_ratio", 20, None, {"direction": "low"}),
             ("dead_relu", 50, "relu1", {}), ("overfitting", 90, None, {})]
    app.store.append([Event("pile", seq, step, 1000.0 + seq, Kind.FLAG,
                            Flag(kind, "warning", f"{kind} seen", f"fix {kind}", layer, evidence))
                      for seq, (kind, step, layer, evidence) in enumerate(flags)])
    status, incidents = get("/api/runs/pile/incidents")
    assert status == 200
    assert [(i["cause"], i["symptoms"], i["flags"], i["step"]) for i in incidents] == [
        ("dead_relu", ["vanishing_gradient", "update_ratio"], [2, 0, 1], 20), ("overfitting", [], [3], 90)]
    assert incidents[0]["layers"] == ["relu1", "bn1"] and incidents[0]["advice"] == "fix dead_relu"
