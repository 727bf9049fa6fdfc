"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
server on a loopback port, while a tiny real training streams to it.

Screenshots of the run page are saved under each test's tmp dir (``run-page-*.png``).
"""
from __future__ import annotations

import re

import pytest

from browser import Training, source_data, source_length, stop_from_page, wait_until
from monitor.events import Flag
from servers import serving
from trainings import PATHOLOGY_NAMES, pathology_options

#: Steps of a training that the test ends with the Stop button: far more than a loaded
#: machine gets through while the page is checked (20 ms a step: 200 s), so the run is
#: still running when Stop is pressed however slow the page was.
UNTIL_STOPPED = 10_000

FLAG = Flag(kind="dead_relu", severity="critical", message="3 of 4 units of layer 1 never fire <b>now</b>",
            advice="lower the learning rate; try leaky ReLU", layer="1", evidence={"dead_fraction": 0.75})


@pytest.fixture
def server(tmp_path):
    """A real server for the test; tests name it before ``page``, so the page is closed
    before the server stops (else its reconnection attempts log errors)."""
    with serving(tmp_path / "server") as running:
        yield running


def open_run(page, server, run_id):
    page.goto(f"{server.url}/runs/{run_id}")
    page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=20_000)


def train_and_open(page, server, tmp_path, **options) -> Training:
    """A tiny training streaming to ``server``, its run page open once it has started."""
    training = Training(server.url, tmp_path / "trainer", **options)
    training.start()
    open_run(page, server, training.started())
    return training


def test_the_loss_plot_gains_points_live_while_the_run_trains(server, page, tmp_path):
    training = train_and_open(page, server, tmp_path, steps=UNTIL_STOPPED, delay=0.02)
    first = wait_until(lambda: source_length(page, "loss_train") >= 5 and source_length(page, "loss_train"),
                       what="the first loss points")
    wait_until(lambda: source_length(page, "loss_train") >= first + 10, what="live loss points")
    assert page.locator("#status").inner_text() == "running"
    assert "steps/s" in page.locator("#progress").inner_text()
    # The plot's own x range follows what it drew: it grows only if the new points were drawn.
    ratio_end = "() => Bokeh.documents[0].get_model_by_name('update_ratio_fig').x_range.end"
    before = page.evaluate(ratio_end)
    wait_until(lambda: page.evaluate(ratio_end) >= before + 6, what="live update ratios drawn")
    band_steps = source_length(page, "act_bands")
    wait_until(lambda: source_length(page, "act_bands") >= band_steps + 3, what="live activation bands")
    page.screenshot(path=tmp_path / "run-page-live.png", full_page=True)
    stop_from_page(page, training)


def test_the_filter_image_appears_and_shows_the_first_layer(server, page, tmp_path):
    training = train_and_open(page, server, tmp_path, steps=30, delay=0.01)
    page.wait_for_selector("#filters:not([hidden])", timeout=20_000)
    wait_until(lambda: page.evaluate("() => document.getElementById('filters').naturalWidth") > 0,
               what="the filter image to load")
    assert "4 filters" in page.locator("#filters-info").inner_text()
    training.finish()


def test_a_flag_event_shows_in_the_list_escaped_and_as_a_marker(server, page, tmp_path):
    training = train_and_open(page, server, tmp_path, steps=UNTIL_STOPPED, delay=0.02, flag=FLAG,
                              flag_at=40)
    item = page.wait_for_selector("#flags li", timeout=20_000)
    assert FLAG.message in item.inner_text()  # the markup arrives as text
    assert page.locator("#flags li b").count() == 0
    assert FLAG.advice in item.inner_text()
    assert page.locator("#flag-count").inner_text() == "1"
    assert source_length(page, "flag_marks") == 1
    # The same flag again (history and stream overlap by a few events): listed once.
    assert page.evaluate("() => { const f = babysitPage.flags; f.add([{...f.flags[0]}]); return f.flags.length; }") == 1
    assert page.locator("#flags li").count() == 1
    stop_from_page(page, training)


def test_the_stop_button_asks_then_stops_the_training_and_says_who_stopped_it(server, page, tmp_path):
    training = train_and_open(page, server, tmp_path, steps=UNTIL_STOPPED, delay=0.02)
    page.click("#stop")
    assert page.locator("#stop-dialog").is_visible() and page.locator("#stop-token-field").is_hidden()
    assert training.run_id in page.locator("#stop-question").inner_text()
    page.click("#stop-cancel")  # first "no"
    page.wait_for_selector("#stop-dialog", state="hidden")
    page.click("#stop")
    page.keyboard.press("Escape")  # "no" again
    page.wait_for_selector("#stop-dialog", state="hidden")
    assert training.is_alive() and not training.stopped_by_request
    page.click("#stop")
    page.click("#stop-confirm")  # then "yes"
    training.finish(timeout=30)
    assert training.stopped_by_request and training.steps_done < 5000
    page.wait_for_function("() => document.getElementById('status').textContent === 'stopped'", timeout=20_000)
    assert "by dashboard" in page.locator("#stopped-by").inner_text()
    assert page.locator("#stop").is_disabled() and page.locator("#stop").is_hidden()  # an ended run: no button


def test_a_finished_run_reopens_from_the_store_with_everything(page, tmp_path):
    with serving(tmp_path / "server") as first:
        training = Training(first.url, tmp_path / "trainer", steps=30, delay=0.0, flag=FLAG, flag_at=3)
        training.start()
        run_id = training.started()
        training.finish()
    with serving(tmp_path / "server") as again:  # a new server process would read the same file
        open_run(page, again, run_id)
        assert source_length(page, "loss_train") == 30
        assert source_length(page, "loss_val") == 3
        assert page.locator("#status").inner_text() == "finished"
        assert page.locator("#flags li").count() == 1
        page.wait_for_selector("#filters:not([hidden])")
        assert source_length(page, "act_bands") == 15  # every 2nd of 30 steps
        assert source_length(page, "inputs") == 15
        assert page.locator("#act-layer option").count() >= 3
        assert page.locator("#model tbody tr").count() >= 3
        page.screenshot(path=tmp_path / "run-page-finished.png", full_page=True)
        page.goto("about:blank")  # leave before this server stops: no reconnection errors


def test_the_index_lists_runs_and_compares_the_chosen_ones(server, page, tmp_path):
    for name in ("first", "second"):
        training = Training(server.url, tmp_path / name, run=name, steps=20, delay=0.0)
        training.start()
        training.finish()
    page.goto(server.url + "/")
    page.wait_for_selector("#runs tbody tr >> nth=1")
    rows = page.locator("#runs tbody tr")
    assert rows.count() == 2 and "finished" in rows.nth(0).inner_text()
    rows.nth(0).locator("input[type=checkbox]").check()
    rows.nth(1).locator("input[type=checkbox]").check()
    page.click("#compare")
    page.wait_for_url("**/compare?runs=*")
    wait_until(lambda: source_length(page, "cmp_loss_0") == 20 and source_length(page, "cmp_loss_1") == 20,
               what="both runs' losses on the compare page")


def test_the_index_shows_a_new_run_without_a_reload(server, page, tmp_path):
    page.goto(server.url + "/")
    page.wait_for_selector("#empty:not([hidden])")
    training = Training(server.url, tmp_path / "trainer", run="newcomer", steps=20, delay=0.0)
    training.start()
    page.wait_for_selector("#runs tbody tr >> text=newcomer", timeout=20_000)
    training.finish()


def test_a_connection_that_drops_while_the_page_joins_is_joined_again_without_an_error(server, page, tmp_path):
    """A server that goes away while the page's join waits for its answer rejected the join
    ("socket has been disconnected") as an uncaught error; the next connection must join
    again and the page carry on. The drop: the first join's request is refused on its way."""
    dropped = []

    def drop_the_first_join(route):
        if not dropped and '"watch_runs"' in (route.request.post_data or ""):
            dropped.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    def drop_the_first_join_on_a_websocket(ws):
        to_server = ws.connect_to_server()

        def from_page(message):
            if not dropped and '"watch_runs"' in str(message):
                dropped.append(ws.url)
                to_server.close()
                ws.close()
            else:
                to_server.send(message)

        ws.on_message(from_page)

    page.route("**/socket.io/*transport=polling*", drop_the_first_join)  # the join goes on either transport
    page.route_web_socket(re.compile(r"/socket\.io/"), drop_the_first_join_on_a_websocket)
    page.expected_errors = ("Failed to load resource: net::ERR_FAILED",)  # the refused request itself
    page.goto(server.url + "/")
    page.wait_for_selector("#empty:not([hidden])")
    # Playwright runs the route handlers only while one of its calls waits, not in a sleep
    wait_until(lambda: page.wait_for_timeout(50) or dropped, what="the first join to be dropped")
    training = Training(server.url, tmp_path / "trainer", run="rejoined", steps=20, delay=0.0)
    training.start()
    page.wait_for_selector("#runs tbody tr >> text=rejoined", timeout=20_000)  # news reach the joined-again page
    training.finish()


def test_with_a_token_the_stop_button_asks_for_it_and_refuses_a_wrong_one(page, tmp_path):
    with serving(tmp_path / "server", token="s3cret") as server:
        training = Training(server.url, tmp_path / "trainer", steps=UNTIL_STOPPED, delay=0.02, token="s3cret")
        training.start()
        open_run(page, server, training.started())
        page.click("#stop")
        assert page.locator("#stop-token").get_attribute("type") == "password"  # typed, never shown
        page.click("#stop-confirm")  # an empty token is refused by the form itself
        assert page.locator("#stop-dialog").is_visible()
        page.fill("#stop-token", "wrong")
        page.press("#stop-token", "Enter")  # Enter in the field sends it, as the Stop button does
        page.wait_for_function("() => document.getElementById('stopped-by').textContent.includes('token')")
        assert training.is_alive()
        page.click("#stop")
        assert page.locator("#stop-token").input_value() == ""  # not kept from the last try
        page.fill("#stop-token", "s3cret")
        page.click("#stop-confirm")
        training.finish(timeout=30)
        assert training.stopped_by_request
        page.goto("about:blank")  # leave before this server stops: no reconnection errors


def test_hostile_config_values_show_as_text(server, page, tmp_path):
    hostile = "<img src=x onerror=\"window.pwned=1\">"
    training = Training(server.url, tmp_path / "trainer", steps=10, delay=0.0, config={"note": hostile})
    training.start()
    run_id = training.started()
    training.finish()
    open_run(page, server, run_id)
    assert hostile in page.locator("#config").inner_text()
    assert page.evaluate("() => window.pwned") is None


def test_the_page_says_when_the_server_is_down_and_catches_up_when_it_is_back(page, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page.expected_errors = ("Failed to load resource: net::ERR_",)  # refused, reset, not connected
    with serving(tmp_path / "server", port) as server:
        training = Training(server.url, tmp_path / "trainer", steps=UNTIL_STOPPED, delay=0.02)
        training.start()
        open_run(page, server, training.started())
        wait_until(lambda: source_length(page, "loss_train") >= 10, what="the first points")
    page.wait_for_function("() => document.getElementById('connection').className.includes('down')")
    during_outage = training.steps_done
    with serving(tmp_path / "server", port):  # the trainer's spool replays what the server missed
        page.wait_for_function("() => document.getElementById('connection').className.includes('live')",
                               timeout=30_000)
        wait_until(lambda: source_length(page, "loss_train") > during_outage + 5, what="points after the outage")
        stop_from_page(page, training)
    steps = page.evaluate("() => window.babysitPage.loss.source.data.step")
    assert steps == sorted(set(steps))  # in order, none twice


def run_demo_live(options) -> tuple:
    """The demo in a thread, streaming to its server: (thread, results) where results gets
    the run page's ``url`` once it watches and the ``result`` at the end."""
    import threading

    from trainer_hooks.demo import run_demo

    results = {}

    def echo(line):
        if line.startswith("watch it live: "):
            results["url"] = line.partition(": ")[2]

    demo = threading.Thread(target=lambda: results.update(result=run_demo(options, echo=echo)), daemon=True)
    demo.start()
    wait_until(lambda: "url" in results, what="the demo to start watching")
    return demo, results


@pytest.mark.parametrize("name", PATHOLOGY_NAMES)
def test_each_demo_pathology_shows_its_flag_live_on_the_run_page(server, page, tmp_path, name):
    options = pathology_options(name, logdir=str(tmp_path / "trainer"), server=server.url, step_delay=0.005)
    demo, results = run_demo_live(options)
    page.goto(results["url"])
    page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=20_000)
    wait_until(lambda: name in page.locator("#flags").inner_text(), timeout=60, what=f"a {name} flag on the page")
    assert source_length(page, "flag_marks") >= 1
    demo.join(120)
    assert not demo.is_alive() and "result" in results


def test_the_healthy_demo_shows_no_flag_on_its_run_page(server, page, tmp_path):
    from trainer_hooks.demo import DemoOptions

    demo, results = run_demo_live(DemoOptions(logdir=str(tmp_path / "trainer"), server=server.url, step_delay=0.002))
    page.goto(results["url"])
    page.wait_for_function("() => window.babysitPage && window.babysitPage.loaded", timeout=20_000)
    demo.join(120)
    assert not demo.is_alive() and results["result"].epochs == 8
    wait_until(lambda: page.locator("#status").inner_text() == "finished", what="the page to show the run finished")
    assert page.locator("#flag-count").inner_text() == "0" and page.locator("#flags li").count() == 0
    assert source_length(page, "flag_marks") == 0


def test_the_ranks_of_a_distributed_job_are_one_row_and_the_run_page_links_them(page, tmp_path, make_events):
    import dataclasses

    from monitor.events import Kind
    from monitor.store import RunStore

    job = "ddp-20261201-120000-ab12"
    with RunStore(tmp_path / "store") as store:
        for rank, run in enumerate((job, f"{job}.r1")):
            events = [dataclasses.replace(e, data=dataclasses.replace(e.data, rank=rank, world=2))
                      if e.kind == Kind.RUN_START else e for e in make_events(run=run)]
            store.append(events)
    with serving(tmp_path / "store") as running:
        page.goto(running.url + "/")
        page.wait_for_selector("#runs tbody tr")
        rows = page.locator("#runs tbody tr")
        assert rows.count() == 1 and "job of 2 ranks" in rows.nth(0).inner_text()
        assert rows.nth(0).locator("a >> text=compare ranks").get_attribute("href") == \
            f"/compare?runs={job},{job}.r1"
        page.goto(f"{running.url}/runs/{job}.r1")
        ranks = page.wait_for_selector("#config th:text('ranks')")
        cell = ranks.evaluate_handle("th => th.nextElementSibling")
        links = [(a.inner_text(), a.get_attribute("href")) for a in cell.query_selector_all("a")]
        assert links == [("rank 0", f"/runs/{job}"), ("rank 1", f"/runs/{job}.r1"),
                         ("compare the ranks' curves", f"/compare?runs={job},{job}.r1")]
        wait_until(lambda: source_length(page, "loss_ranks") == 1,  # one step with finite losses
                   what="the band of the ranks' losses")
        page.goto("about:blank")


def test_flags_show_as_incidents_cause_first_with_their_symptoms_folded_and_one_advice(page, tmp_path, make_events):
    from monitor.events import Event, Kind
    from monitor.store import RunStore

    flags = [Flag("vanishing_gradient", "warning", "gradients vanish", "raise the lr?", "bn1"),
             Flag("update_ratio", "warning", "updates are tiny", "raise the learning rate", None,
                  {"direction": "low"}),
             Flag("dead_relu", "critical", "relu1 is dead", "lower the learning rate", "relu1"),
             Flag("dead_relu", "warning", "relu2 is dead", "lower the learning rate", "relu2"),
             Flag("exploding_gradient", "warning", "gradients explode", "lower the learning rate", "fc0")]
    events = [e for e in make_events(run="sick") if e.kind != Kind.FLAG]
    seq = events[-1].seq + 1
    events += [Event("sick", seq + i, 20 + 10 * i, 2000.0 + i, Kind.FLAG, f) for i, f in enumerate(flags)]
    with RunStore(tmp_path / "store") as store:
        store.append(events)
    with serving(tmp_path / "store") as running:
        open_run(page, running, "sick")
        items = page.locator("#flags > li")
        assert items.count() == 2 and page.locator("#flag-count").inner_text() == "2"
        first = items.nth(0)
        assert first.get_attribute("data-kind") == "dead_relu" and "critical" in first.get_attribute("class")
        assert first.locator(".flag-title").inner_text() == "relu1 is dead"
        assert "explains: vanishing_gradient, update_ratio" in first.locator(".flag-symptoms").inner_text()
        assert "layers relu1, relu2, bn1" in first.locator(".flag-meta").first.inner_text()
        assert first.locator(".flag-advice").count() == 1 and first.locator(".flag-note").count() == 0
        first.locator("summary").first.click()
        assert [m.get_attribute("data-kind") for m in first.locator(".flag-member").all()] == [
            "dead_relu", "dead_relu", "vanishing_gradient", "update_ratio"]
        assert items.nth(1).get_attribute("data-kind") == "exploding_gradient"
        page.goto("about:blank")


def _legend(page, figure: str) -> list[str]:
    """The labels of the figure's legend entries that are shown."""
    return page.evaluate("""name => {
        for (const doc of Bokeh.documents) {
            const fig = doc.get_model_by_name(name);
            if (!fig) continue;
            const legend = [...fig.center, ...fig.above, ...fig.right].find((m) => m.items !== undefined);
            return legend.items.filter((i) => i.visible).map((i) => i.label.value);
        }
        return null;
    }""", figure)


def test_validation_points_are_drawn_as_they_are_with_the_best_one_marked(page, tmp_path):
    from monitor.events import Event, Kind, Scalars
    from monitor.store import RunStore

    val = {100: 3.0, 200: 2.5, 300: 2.57, 400: 2.8}  # a rise after the best: what overfitting looks like
    events = [Event("sparse", i, step, 1000.0 + i, Kind.SCALARS, Scalars({"loss": 3.5 - step / 1000}))
              for i, step in enumerate(range(0, 401, 20))]
    events += [Event("sparse", 100 + i, step, 2000.0 + i, Kind.SCALARS, Scalars({"val_loss": v}))
               for i, (step, v) in enumerate(val.items())]
    with RunStore(tmp_path / "store") as store:
        store.append(events)
    with serving(tmp_path / "store") as running:
        open_run(page, running, "sparse")
        drawn = source_data(page, "loss_val")
        assert drawn["smooth"] == drawn["value"] == list(val.values())  # not averaged into a lagging line
        assert source_data(page, "val_best") == {"step": [200], "value": [2.5]}
        page.fill("#smoothing", "0.95")
        page.dispatch_event("#smoothing", "input")
        assert source_data(page, "loss_val")["smooth"] == list(val.values())
        train = source_data(page, "loss_train")
        assert train["smooth"] != train["value"]  # the dense training loss is what the slider smooths
        wait_until(lambda: _legend(page, "loss_linear") == ["train", "validation"],
                   what="a legend without the flags this run has none of")
        page.goto("about:blank")


def test_on_a_log_scale_the_points_it_cannot_draw_are_counted(page, tmp_path):
    from monitor.events import Event, Kind, Scalars
    from monitor.store import RunStore

    losses = [1.0, 0.5, 0.0, -0.2, 0.3]  # a loss that reaches zero and below (a log-likelihood, say)
    with RunStore(tmp_path / "store") as store:
        store.append([Event("negative", i, i, 1000.0 + i, Kind.SCALARS, Scalars({"loss": v}))
                      for i, v in enumerate(losses)])
    with serving(tmp_path / "store") as running:
        open_run(page, running, "negative")
        assert page.locator("#log-note").is_hidden()
        page.check("#log-scale")
        assert page.locator("#log-note").inner_text().startswith("2 values are at or below 0 and not drawn")
        page.uncheck("#log-scale")
        assert page.locator("#log-note").is_hidden()
        page.goto("about:blank")


def test_dead_and_saturated_bars_take_their_rules_colours_and_leaky_activations_are_named_not_drawn(page, tmp_path):
    from conftest import summary

    from monitor.events import Event, Kind, LayerStats, Scalars
    from monitor.store import RunStore

    layers = [summary("relu1", module="ReLU", units=100, dead_units=45),  # healthy, as the demo's hidden layer
              summary("relu2", module="ReLU", units=100, dead_units=55),  # watched closely
              summary("relu3", module="ReLU", units=100, dead_units=70),  # flagged
              summary("gelu", module="GELU", units=None, dead_units=None, window=None, sat_frac=0.03),  # healthy
              summary("silu", module="SiLU", units=None, dead_units=None, window=None, sat_frac=0.8),  # flat tail
              summary("leaky", module="LeakyReLU", units=100, dead_units=90)]
    with RunStore(tmp_path / "store") as store:
        store.append([Event("units", 0, 0, 1000.0, Kind.SCALARS, Scalars({"loss": 1.0})),
                      Event("units", 1, 0, 1001.0, Kind.LAYER_STATS, LayerStats(tuple(layers)))])
    with serving(tmp_path / "store") as running:
        open_run(page, running, "units")
        wait_until(lambda: source_length(page, "dead") == 3, what="the three ReLU layers' bars")
        drawn = source_data(page, "dead")
        colours = dict(zip((name.split(" ")[0] for name in drawn["layer"]), drawn["color"]))
        assert colours == {"relu1": "#1f6fb4", "relu2": "#e8a30a", "relu3": "#c5221f"}
        saturated = source_data(page, "saturated")  # smooth activations: the share in their flat tail
        assert saturated["layer"] == ["gelu · GELU", "silu · SiLU"] and saturated["sat_frac"] == [0.03, 0.8]
        assert saturated["color"] == ["#1f6fb4", "#c5221f"] and saturated["bar"] == [0.6, 0.6]
        assert "LeakyReLU layers are not shown" in page.locator("#dead-note").inner_text()
        assert _legend(page, "dead_fig") == ["zero outputs", "dead units", "saturated"]
        page.goto("about:blank")


def _store_two_learning_rates(logdir, make_events) -> None:
    """Runs digits-1 (lr 1) and digits-2 (lr 0.001), alike in everything else."""
    import dataclasses

    from monitor.events import Kind
    from monitor.store import RunStore

    with RunStore(logdir) as store:
        for run, lr in (("digits-1", 1.0), ("digits-2", 0.001)):
            store.append([dataclasses.replace(e, data=dataclasses.replace(e.data, config={"lr": lr, "batch": 32}))
                          if e.kind == Kind.RUN_START else e for e in make_events(run=run)])


def test_the_index_tells_runs_apart_by_the_config_that_differs_and_filters_them(page, tmp_path, make_events):
    _store_two_learning_rates(tmp_path / "store", make_events)
    with serving(tmp_path / "store") as running:
        page.goto(running.url + "/")
        page.wait_for_selector("#runs tbody tr >> nth=1")
        assert page.locator("#runs thead th.config").all_inner_texts() == ["lr"]  # batch is the same: no column
        assert sorted(page.locator("#runs tbody td.config").all_inner_texts()) == ["0.001", "1"]
        page.fill("#filter", "0.001")
        wait_until(lambda: page.locator("#runs tbody tr").count() == 1, what="the filter to keep one run")
        assert page.locator("#runs tbody tr").get_attribute("data-run") == "digits-2"
        assert page.locator("#filtered").inner_text() == "1 run hidden by the filter"
        page.fill("#filter", "")
        page.select_option("#status-filter", "finished")
        wait_until(lambda: page.locator("#runs tbody tr").count() == 0, what="no finished run (both diverged)")
        page.goto("about:blank")


def test_panels_with_nothing_to_draw_on_a_transformer_say_why(page, tmp_path):
    from conftest import summary

    from monitor.events import Event, InputStats, Kind, LayerStats, ModuleInfo, RunStart, Scalars
    from monitor.store import RunStore

    ids = InputStats(shape=(8, 64), mean=1000.0, std=600.0, min=0.0, max=2047.0, nan=0, inf=0, integer=True,
                     distinct=380, vocab=2048, padding=0.25, pad_id=0)
    start = RunStart(name="gpt", config={}, host="h", pid=1, rank=0, world=1, versions={}, sampling={},
                     model=(ModuleInfo("embed", "Embedding", 2048, 2048, "64x32"),
                            ModuleInfo("head", "Linear", 2080, 2080, "64x32, 64")))
    layers = LayerStats((summary("mlp.act", module="GELU", units=None, dead_units=None, window=None, sat_frac=0.01),
                         summary("head", module="Linear", units=None, dead_units=None, window=None)))
    with RunStore(tmp_path / "store") as store:
        store.append([Event("gpt", 0, 0, 1000.0, Kind.RUN_START, start),
                      Event("gpt", 1, 0, 1001.0, Kind.SCALARS, Scalars({"loss": 4.1})),
                      Event("gpt", 2, 0, 1002.0, Kind.LAYER_STATS, layers),
                      Event("gpt", 3, 0, 1002.0, Kind.INPUT_STATS, ids)])
    with serving(tmp_path / "store") as running:
        open_run(page, running, "gpt")
        assert page.locator("#metric").is_hidden()
        assert page.locator("#metric-note").inner_text().startswith("No metric but the loss is logged")
        assert page.locator("#no-filters").inner_text().startswith("No filter image: the model's first layer")
        # token ids: what they are, not a mean and std
        assert page.locator("#input-note").inner_text().startswith("Integer input")
        assert page.locator("#input-plot").is_hidden()
        table = page.locator("#input-ids")
        rows = dict(zip(table.locator("th").all_inner_texts(), table.locator("td").all_inner_texts()))
        assert rows["ids"] == "0..2047 of a vocabulary of 2048"
        assert rows["distinct in the batch"] == "380 (18.6 % of the vocabulary)"
        assert rows["padding"].startswith("25 % of the positions (id 0")
        # what applies comes first: the filter image and the learning rate (none logged) go last, with their reasons
        shelf = page.locator("#not-applicable")
        assert shelf.is_visible() and shelf.locator("h2").first.inner_text() == "Not applicable to this model"
        moved = shelf.locator("[data-panel]")
        assert sorted(moved.evaluate_all("cards => cards.map((c) => c.dataset.panel)")) == ["filters", "lr", "metric"]
        assert shelf.locator("#metric-plot").is_hidden()
        assert shelf.locator("#lr-note").inner_text().startswith("No learning rate")
        assert shelf.locator("#no-filters").is_visible()
        assert page.locator("#not-applicable [data-panel=input], #not-applicable [data-panel=units]").count() == 0
        page.goto("about:blank")


def test_a_model_with_functional_activations_says_why_it_has_no_unit_panel(page, tmp_path):
    from conftest import summary

    from monitor.events import Event, Kind, LayerStats, Scalars
    from monitor.store import RunStore

    layers = LayerStats((summary("fc1", module="Linear", units=None, dead_units=None, window=None),
                         summary("fc2", module="Linear", units=None, dead_units=None, window=None)))
    with RunStore(tmp_path / "store") as store:
        store.append([Event("functional", 0, 0, 1000.0, Kind.SCALARS, Scalars({"loss": 1.0, "lr": 0.1})),
                      Event("functional", 1, 0, 1001.0, Kind.LAYER_STATS, layers)])
    with serving(tmp_path / "store") as running:
        open_run(page, running, "functional")
        units = page.locator("#not-applicable [data-panel=units]")
        wait_until(lambda: units.count() == 1, what="the unit panel on the shelf of what does not apply")
        assert "as functions (F.relu" in units.locator("#dead-note").inner_text()
        assert page.locator("#not-applicable [data-panel=lr]").count() == 0  # its lr is drawn in place
        page.goto("about:blank")


def test_the_compare_page_shows_what_differs_between_the_runs_beside_their_curves(page, tmp_path, make_events):
    _store_two_learning_rates(tmp_path / "store", make_events)
    with serving(tmp_path / "store") as running:
        page.goto(f"{running.url}/compare?runs=digits-1,digits-2")
        page.wait_for_selector("#config-diff:not([hidden])")
        assert page.locator("#config-diff thead th").all_inner_texts() == ["run", "lr"]
        assert [row.inner_text().split("\t") for row in page.locator("#config-diff tbody tr").all()] == [
            ["digits-1", "1"], ["digits-2", "0.001"]]
        page.goto("about:blank")


def test_the_update_ratio_panel_draws_the_weight_tensors_and_adds_biases_and_norms_on_request(page, tmp_path):
    from conftest import summary

    from monitor.events import Event, Kind, LayerStats, Scalars
    from monitor.store import RunStore

    def params(step):
        return LayerStats(tuple(summary(name, signal="param_grad", module=module, quantiles=(), units=None,
                                        dead_units=None, window=None, weight_norm=1.0, update_ratio=1e-3 * (1 + step))
                                for name, module in (("conv.weight", "Conv2d"), ("conv.bias", "Conv2d"),
                                                     ("bn.weight", "BatchNorm2d"))))
    with RunStore(tmp_path / "store") as store:
        store.append([Event("ratios", 0, 0, 1000.0, Kind.SCALARS, Scalars({"loss": 1.0}))]
                     + [Event("ratios", 1 + s, s, 1001.0 + s, Kind.LAYER_STATS, params(s)) for s in range(3)])
    with serving(tmp_path / "store") as running:
        open_run(page, running, "ratios")
        wait_until(lambda: (source_data(page, "update_ratio") or {}).get("layer") == ["conv.weight"],
                   what="the weight tensor's line alone")
        page.check("#ratio-all")
        assert sorted(source_data(page, "update_ratio")["layer"]) == ["bn.weight", "conv.bias", "conv.weight"]
        page.goto("about:blank")


def test_the_index_filters_runs_by_the_kind_of_flag_they_raised(page, tmp_path, make_events):
    from monitor.events import Kind
    from monitor.store import RunStore

    with RunStore(tmp_path / "store") as store:
        store.append(make_events(run="flagged"))  # raises nan_loss
        store.append([e for e in make_events(run="clean") if e.kind != Kind.FLAG])
    with serving(tmp_path / "store") as running:
        page.goto(running.url + "/")
        page.wait_for_selector("#runs tbody tr >> nth=1")
        assert page.locator("#kind-filter option").all_inner_texts() == ["any", "nan_loss"]
        page.select_option("#kind-filter", "nan_loss")
        wait_until(lambda: page.locator("#runs tbody tr").count() == 1, what="the flagged run alone")
        assert page.locator("#runs tbody tr").get_attribute("data-run") == "flagged"
        page.goto("about:blank")


def test_a_constant_learning_rate_is_drawn_to_the_last_step_and_frozen_weights_are_named(page, tmp_path):
    """The rate is recorded when it changes: a constant one is one point, held to the latest
    step; ratios of exactly 0 (a log axis cannot draw them) are said in words."""
    from conftest import summary

    from monitor.events import Event, Kind, LayerStats, Scalars
    from monitor.store import RunStore

    frozen = LayerStats(tuple(summary(f"fc{i}.weight", signal="param_grad", module="Linear", units=None,
                                      dead_units=None, window=None, weight_norm=1.0, update_ratio=0.0)
                              for i in (1, 2)))
    events = [Event("still", 0, 0, 1000.0, Kind.SCALARS, Scalars({"loss": 1.0, "lr": 0.05}))]
    events += [Event("still", s, s, 1000.0 + s, Kind.SCALARS, Scalars({"loss": 1.0})) for s in range(1, 30)]
    events += [Event("still", 30, 29, 1030.0, Kind.LAYER_STATS, frozen)]
    with RunStore(tmp_path / "store") as store:
        store.append(events)
    with serving(tmp_path / "store") as running:
        open_run(page, running, "still")
        wait_until(lambda: source_length(page, "lr_held") == 2, what="the held learning rate")
        assert source_data(page, "lr_held") == {"step": [0, 29], "value": [0.05, 0.05]}
        note = page.locator("#ratio-note")
        wait_until(note.is_visible, what="the note on the tensors that did not move")
        assert note.inner_text().startswith("fc1.weight, fc2.weight did not move at their latest sampled step")
        page.goto("about:blank")
