"""Issue 13's real sweep: 8 trials of the demo ConvNet (examples/sweep/digits_convnet.py)
over a learning rate range wide enough that some trials diverge and some barely learn,
streamed by ``babysit sweep --server`` to one real server, watched live in chromium.

The truth is read from the raw stored losses, never from the detectors: a trial whose loss
climbed above 1.5x its start (or turned non-finite) diverged; the best trial is the one with
the lowest stored validation loss among those that ran to their end. A full-page screenshot
is saved as ``$BABYSIT_ARTEFACTS/pages/sweep.png`` (docs/sweep-page.png comes from it)."""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import monitor
from monitor.store import RunStore
from monitor.sweeps.space import parse

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "sweep" / "digits_convnet.py"
ARTEFACTS = Path(os.environ.get("BABYSIT_ARTEFACTS", ROOT / "artefacts")) / "pages"
SPACE = "lr=loguniform(1e-5,10)"
EPOCHS = 3
STEPS = EPOCHS * math.ceil(1437 / 32)  # the script's steps when it runs to its end


def test_a_real_sweep_streams_to_one_server_its_diverged_trials_pruned_and_the_page_shows_it_live(tmp_path, page):
    from servers import serving

    with serving(tmp_path / "server") as running:
        sweep = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "sweep", "--space", SPACE, "--trials", "8", "--parallel", "2",
             "--seed", "0", "--sweep", "digits-lr", "--server", running.url, "--logdir", str(tmp_path / "local"),
             "--", "python", str(SCRIPT), "--lr", "{lr}", "--epochs", str(EPOCHS)],
            cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONHASHSEED": "0"})
        try:
            page.goto(f"{running.url}/sweeps/digits-lr")  # before its first trial: the page waits for it
            page.wait_for_selector("#trials tbody tr", timeout=120_000)
            live = page.locator("#trials tbody tr").count()
            out, _ = sweep.communicate(timeout=400)
        finally:
            if sweep.poll() is None:
                sweep.kill()
        assert sweep.returncode == 0, out[-4000:]
        page.wait_for_function("document.querySelectorAll('#trials tbody tr').length === 8 && "
                               "!document.querySelector('#trials tbody tr[data-state=running]')", timeout=30_000)
        assert live < 8  # the page opened mid-sweep and followed it without a reload
        with RunStore(tmp_path / "server") as store:
            runs = [r for r in store.runs() if r.config.get("sweep") == "digits-lr"]
        assert sorted(r.config["trial"] for r in runs) == list(range(8))
        truth = {r.config["trial"]: _truth(monitor.load_run(r.run, logdir=tmp_path / "server")) for r in runs}
        lrs = {r.config["trial"]: r.config["params"]["lr"] for r in runs}

        # The range is wide enough: some trials diverge, some barely learn.
        diverged = [n for n, t in truth.items() if t["diverged"]]
        barely = [n for n, t in truth.items() if not t["diverged"] and t["last_loss"] > 0.8 * t["first_loss"]]
        assert diverged and barely, (truth, lrs)
        table = _report_rows(out)
        for n in diverged:  # pruned at once, the flag as the recorded reason, well before the script's end
            ended = truth[n]["status"]
            assert ended.by == "pruned" and re.match(r"(divergence|dead_relu)\b", ended.reason), (n, ended)
            assert truth[n]["steps"] < STEPS / 2 and table[n]["state"] == "pruned"
            assert table[n]["reason"].startswith(ended.reason.split(":")[0])
        ran = {n: t["best_val"] for n, t in truth.items() if t["status"].state == "finished"}
        best = min(ran, key=ran.get)
        assert best not in barely and not truth[best]["diverged"]
        assert re.search(rf"^best: trial {best} \(lr=[0-9.e-]+\): val_loss {ran[best]:.4g}, run digits-lr-{best:03d}-",
                         out, re.M), out[-3000:]

        # The advice: a finer next range around the best, and a border warning exactly when the best sits there.
        [nxt] = re.findall(r"^advice \(next_range\): .*: (lr=loguniform\([^)]*\))$", out, re.M)
        finer = parse(nxt)
        assert finer.low < lrs[best] < finer.high and math.log10(finer.high / finer.low) < 6
        where = parse(SPACE).position(lrs[best])
        assert ("advice (border)" in out) == (where < 0.1 or where > 0.9)
        assert "advice (first_stage)" in out  # 6 decades, 3 epochs a trial: the notes say one or less

        # The page says the same, drawn.
        assert page.locator("#trials tbody tr.best").get_attribute("data-trial") == str(best)
        for n in diverged:
            assert page.locator(f"#trials tbody tr[data-trial='{n}']").get_attribute("data-state") == "pruned"
        assert nxt in page.inner_text("#advice li[data-kind=next_range]")
        assert page.inner_text("#sweep-best").startswith(f"Best: trial {best} ")
        drawn = page.evaluate("""() => {
            const m = (n) => Bokeh.documents[0].get_model_by_name(n);
            return {curves: m('sweep_train').data.xs.length, marked: m('sweep_marked_0').data.trial.length,
                    top: m('sweep_curves_y').end,
                    done: m('sweep_done_0').data.trial.length, best: m('sweep_best_0').data.trial};
        }""")
        pruned = sum(1 for row in table.values() if row["state"] == "pruned")
        assert drawn.pop("top") < 10  # the axis follows the trials that ran (losses from 2.3 down), not a climb to 1e6
        assert drawn == {"curves": 8, "marked": pruned + sum(1 for r in table.values() if r["state"] in
                                                              ("diverged", "failed")),
                         "done": sum(1 for r in table.values() if r["state"] == "complete"), "best": [best]}
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=ARTEFACTS / "sweep.png", full_page=True)
        page.click("#trials tbody tr.best a")  # the best trial's run page links back to its sweep
        page.wait_for_selector("#sweep-link a")
        assert page.inner_text("#sweep-link") == f"trial {best} of sweep digits-lr"
        assert page.get_attribute("#sweep-link a", "href") == "/sweeps/digits-lr"
        page.goto(f"{running.url}/")  # the index groups the trials under their sweep
        page.wait_for_selector("#runs tr.group[data-sweep='digits-lr']")
        assert page.locator("#runs tr.group").count() == 1 and "8 trials" in page.inner_text("#runs tr.group")
        page.goto("about:blank")  # leave before the server stops: no fetch of a live page left in flight


def _truth(frames) -> dict:
    loss = frames.series("loss")
    val = frames.series("val_loss") if "val_loss" in set(frames.scalars.name) else None
    return {"diverged": not loss.map(math.isfinite).all() or loss.max() > 1.5 * loss.iloc[0],
            "first_loss": loss.iloc[0], "last_loss": loss.iloc[-1], "steps": len(loss),
            "best_val": val.min() if val is not None else math.nan, "status": frames.status.iloc[-1]}


def _report_rows(out: str) -> dict[int, dict]:
    """The report's table: TRIAL LR STATE VAL_LOSS SECONDS RUN REASON."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"^(\d+)\s+(\S+)\s+(complete|pruned|diverged|failed)\s+(\S+)\s+(\S+)\s+(\S+)\s*(.*)$", line)
        if m:
            rows[int(m.group(1))] = {"state": m.group(3), "reason": m.group(7)}
    return rows


def test_a_sweep_of_two_dimensions_one_a_choice_draws_a_scatter_for_each_and_colours_by_either(tmp_path, page):
    from servers import serving
    from test_sweep_python import objective
    from trainer_hooks import sweep

    result = sweep(objective, ["lr=loguniform(1e-3,0.3)", "width=choice(4,16,64)"], trials=6, seed=1,
                   name="two-dims", logdir=str(tmp_path), say=lambda line: None)
    with serving(tmp_path) as running:
        page.goto(f"{running.url}/sweeps/two-dims")
        page.wait_for_selector("#trials tbody tr")
        page.wait_for_function("document.querySelectorAll('#trials tbody tr').length === 6")
        axes = page.evaluate("""() => {
            const m = (n) => Bokeh.documents[0].get_model_by_name(n);
            return [0, 1].map((i) => ({x: m(`sweep_done_${i}`).data.x, kind: m(`sweep_scatter_${i}`).x_scale.type}));
        }""")
        done = [t for t in result.trials if t.state == "complete"]
        assert sorted(axes[0]["x"]) == sorted(t.params["lr"] for t in done) and axes[0]["kind"] == "LogScale"
        assert sorted(axes[1]["x"]) == sorted(str(t.params["width"]) for t in done)  # categories, as text
        assert axes[1]["kind"] == "CategoricalScale"
        before = page.evaluate("() => Bokeh.documents[0].get_model_by_name('sweep_train').data.color")
        page.select_option("#colour-by", "width")
        page.wait_for_function("() => document.querySelectorAll('#colour-legend .swatch').length === 3")
        after = page.evaluate("() => Bokeh.documents[0].get_model_by_name('sweep_train').data.color")
        assert len(set(after)) <= 3 and after != before  # a colour per width now
        page.goto("about:blank")
