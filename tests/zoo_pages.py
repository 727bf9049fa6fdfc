"""Helpers of tests/test_zoo_pages.py: the zoo's real tiny trainings (benchmarks/zoo), shortened,
trained into one logdir; and the checks of a run page that hold for any run, walked in the browser
over the page's own cards and Bokeh models."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path:  # benchmarks/zoo, as benchmarks/diagnosis.py finds it
    sys.path.insert(0, str(ROOT / "benchmarks"))


@dataclass(frozen=True)
class ZooRun:
    """One zoo entry trained for ``epochs`` (fewer than the zoo's, to keep the module quick).
    ``cause``: the kind of the incident the run page must list first (None: a healthy run, no
    incident at all); ``symptoms``: kinds of flag that, where the run raised them, the page
    must show folded into that first incident rather than as problems of their own."""

    entry: str
    family: str
    epochs: int
    cause: str | None = None
    symptoms: tuple[str, ...] = ()


#: A ConvNet, an MLP, an LSTM and the zoo's TinyGPT (embeddings, LayerNorm, GELU), each
#: healthy and beside its twin with one pathology. About 10 s of training on 2 cores.
RUNS = (
    ZooRun("cnn-images-warmup", "cnn", epochs=3),
    ZooRun("cnn-images-raw", "cnn", epochs=3, cause="input_not_normalized"),  # raw pixels 0..255
    ZooRun("mlp-digits", "mlp", epochs=4),
    ZooRun("mlp-digits-dead-bias", "mlp", epochs=4, cause="dead_relu",  # hidden biases -4
           symptoms=("vanishing_gradient", "update_ratio", "plateau")),
    ZooRun("lstm-text-sgd", "lstm", epochs=4),
    ZooRun("lstm-text-sgd-lr30x", "lstm", epochs=4, cause="divergence"),  # SGD lr 9 (30x)
    ZooRun("gpt-text", "transformer", epochs=3),
    ZooRun("gpt-text-lr300x", "transformer", epochs=3, cause="divergence"),  # AdamW lr 0.9 (300x)
)


def train_all(logdir: Path) -> tuple[dict[str, str], float]:
    """Train every run of :data:`RUNS` into ``logdir``, one after the other in this process on
    one torch thread, watched by babysit at its default sampling. Returns ({entry: run id},
    seconds)."""
    import torch
    from zoo import BY_NAME
    from zoo.loop import run

    from monitor.store import RunStore

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        for zoo_run in RUNS:
            entry = BY_NAME[zoo_run.entry]
            assert entry.family == zoo_run.family, (entry.name, entry.family)
            training = entry.build(**{**entry.kwargs, "epochs": zoo_run.epochs})
            run(training, name=entry.name, logdir=logdir, every=None, early_stopping=False)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - started
    with RunStore(logdir) as store:
        ids = {info.name: info.run for info in store.runs()}
    assert sorted(ids) == sorted(r.entry for r in RUNS), ids
    return ids, seconds


#: What a glyph renderer draws, in the page: ``draws(renderer)`` is true when its source has what
#: its glyph needs to show anything, with every column it reads finite (or a category): one row
#: for a marker, a bar or a quad; two neighbouring rows for a line, a step or an area (one point
#: of a line draws nothing); a line of two such points for a multi-line. On a log y axis (``log``)
#: the y values must be above zero too.
_DRAWS_JS = """
    const FIELDS = ["x", "y", "x0", "y0", "x1", "y1", "y2", "left", "right", "top", "bottom"];
    const SEGMENTS = new Set(["Line", "Step", "VArea", "HArea", "VAreaStep", "HAreaStep", "Patch"]);
    const rows = (source) => {
        if (!source || !source.data) return 0;
        const first = Object.values(source.data)[0];
        return first ? first.length : 0;
    };
    const ok = (v) => typeof v === "string" || Number.isFinite(v);
    const Y = new Set(["y", "y0", "y1", "y2", "top", "bottom", "ys"]);
    const logY = (fig) => !!fig.y_scale && fig.y_scale.type === "LogScale";
    const column = (glyph, data, name) => {
        const spec = glyph[name];
        return spec && typeof spec === "object" && typeof spec.field === "string" ? data[spec.field] : undefined;
    };
    const draws = (r, log) => {
        if (!r.data_source || !r.glyph || r.visible === false) return false;
        const okIn = (name) => (log && Y.has(name) ? (v) => ok(v) && v > 0 : ok);
        const data = r.data_source.data, glyph = r.glyph, n = rows(r.data_source);
        if (glyph.type === "MultiLine" || glyph.type === "Patches") {
            const xs = column(glyph, data, "xs"), ys = column(glyph, data, "ys");
            if (!xs || !ys) return false;
            const okX = okIn("xs"), okY = okIn("ys");
            for (let i = 0; i < n; i++) {
                for (let j = 0; j + 1 < Math.min(xs[i].length, ys[i].length); j++) {
                    if (okX(xs[i][j]) && okY(ys[i][j]) && okX(xs[i][j + 1]) && okY(ys[i][j + 1])) return true;
                }
            }
            return false;
        }
        const columns = FIELDS.map((f) => [column(glyph, data, f), okIn(f)]).filter(([c]) => c !== undefined);
        const valid = (i) => columns.every(([c, good]) => good(c[i]));
        const segments = SEGMENTS.has(glyph.type);
        for (let i = 0; i < n; i++) if (valid(i) && (!segments || (i + 1 < n && valid(i + 1)))) return true;
        return false;
    };
"""

#: Every ``section.card`` of the run page, walked: its title, what it shows (Bokeh plots that are
#: visible and draw something, loaded images, tables and lists with rows) and its visible notes
#: (``p.muted`` with text). A card that shows nothing and says nothing, or that shows a plot that
#: draws nothing and says nothing, is a problem named by its title.
PANEL_PROBLEMS_JS = """() => {""" + _DRAWS_JS + """
    const shown = (el) => !!el && el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})
        && el.getClientRects().length > 0;
    const plots = new Map();  // card -> [{name, rows, draws}] of its visible plots
    for (const view of Bokeh.index) {
        const card = view.el && view.el.closest("section.card");
        if (!card || !view.model.visible || !shown(view.el)) continue;
        const renderers = (view.model.renderers || []).filter((r) => r.data_source);
        if (!plots.has(card)) plots.set(card, []);
        plots.get(card).push({name: view.model.name, rows: Math.max(0, ...renderers.map((r) => rows(r.data_source))),
                              draws: renderers.some((r) => draws(r, logY(view.model)))});
    }
    const problems = [], cards = [];
    for (const card of document.querySelectorAll("section.card")) {
        const heading = card.querySelector("h2");
        const title = heading ? heading.firstChild.textContent.trim() : "(a card without a title)";
        const drawn = plots.get(card) || [];
        const shows = drawn.filter((p) => p.draws).map((p) => `plot ${p.name} (${p.rows} rows)`);
        const blank = drawn.filter((p) => !p.draws);
        for (const img of [...card.querySelectorAll("img")].filter(shown)) {
            if (img.complete && img.naturalWidth > 0) shows.push(`image ${img.id || img.alt}`);
            else problems.push(`${title}: its image ${img.id || img.alt} is shown but did not load`);
        }
        for (const table of card.querySelectorAll("table")) {
            const filled = [...table.querySelectorAll("tbody tr")].filter((tr) => shown(tr) && tr.textContent.trim());
            if (shown(table) && filled.length) shows.push(`table ${table.id} (${filled.length} rows)`);
        }
        for (const list of card.querySelectorAll("ol, ul")) {
            const items = [...list.children].filter((li) => li.tagName === "LI" && shown(li));
            if (shown(list) && items.length) shows.push(`list ${list.id} (${items.length} items)`);
        }
        const notes = [...card.querySelectorAll("p.muted")].filter(shown).map((p) => p.textContent.trim())
            .filter(Boolean);
        cards.push({title, shows, notes, blank: blank.map((p) => `${p.name} (${p.rows} rows)`)});
        if (notes.length) continue;
        if (!shows.length && !blank.length) {
            problems.push(`${title}: the panel shows no data and no note gives a reason`);
        }
        for (const p of blank) {
            problems.push(`${title}: its plot ${p.name} is shown but draws nothing (${p.rows} row` +
                `${p.rows === 1 ? "" : "s"} in its sources) and no note gives a reason`);
        }
    }
    return {problems, cards};
}"""

#: Every shown entry of every legend of a visible figure, with the glyphs it names: an entry
#: whose glyphs draw nothing (an empty source, one point of a line) is a legend entry without a line.
LEGEND_PROBLEMS_JS = """() => {""" + _DRAWS_JS + """
    const problems = [], entries = [];
    for (const doc of Bokeh.documents) {
        for (const fig of doc.all_models) {
            if (fig.center === undefined || fig.renderers === undefined || !fig.visible) continue;  // a Plot
            const panels = [...fig.center, ...fig.above, ...fig.below, ...fig.left, ...fig.right];
            for (const legend of panels.filter((m) => m.items !== undefined)) {
                if (!legend.visible) continue;
                for (const item of legend.items) {
                    if (!item.visible) continue;
                    const label = item.label && item.label.value !== undefined ? item.label.value : String(item.label);
                    const blank = item.renderers.filter((r) => !draws(r, logY(fig)));
                    entries.push(`${fig.name}: ${label}`);
                    if (!item.renderers.length || blank.length) {
                        problems.push(`${fig.name}: legend entry "${label}" is shown but draws nothing (` +
                            (item.renderers.length ? blank.map((r) => `${r.glyph.type} of source ` +
                            `${r.data_source && r.data_source.name}, ${rows(r.data_source)} rows`).join("; ")
                            : "no renderer") + ")");
                    }
                }
            }
        }
    }
    return {problems, entries};
}"""

#: The renderers of a figure that draw the data source ``source`` (its glyph's type and the
#: columns it reads), to tell which column a line draws.
GLYPHS_JS = """([figure, source]) => {
    for (const doc of Bokeh.documents) {
        const fig = doc.get_model_by_name(figure);
        if (!fig) continue;
        return fig.renderers.filter((r) => r.data_source && r.data_source.name === source).map((r) => ({
            glyph: r.glyph.type, x: r.glyph.x && r.glyph.x.field, y: r.glyph.y && r.glyph.y.field}));
    }
    return null;
}"""


def settled(page, script: str, timeout: float = 10.0) -> dict:
    """``script``'s answer ({problems, ...}) once it has no problems, or after ``timeout``
    seconds its last answer (the page fills some panels a moment after it has loaded: an
    image, a histogram chosen, legends synced once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = page.evaluate(script)
        if not answer["problems"] or time.monotonic() > deadline:
            return answer
        time.sleep(0.2)
