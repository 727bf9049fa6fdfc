// The sweep page: every trial's curves coloured by a chosen hyper-parameter, the best value
// against each dimension, the trials, the summary and the search's advice. It reloads the
// sweep (GET /api/sweeps/<name>) when the server says one of its runs changed (room "index"
// on /dashboard), at most once per RELOAD_MS, and re-reads the curves of trials that moved.
import { getJSON } from "./codec.js";
import { connect, request } from "./live.js";
import { RESYNC, RUNS_CHANGED, WATCH_RUNS } from "./protocol.js";
import { bokehModels, setData } from "./models.js";
import { el, num } from "./format.js";
import { smooth } from "./smoothing.js";
import { ENDED, VIRIDIS, colourFor, curveRange, curveRows, paramLabel, scatterRows, shortValue, summaryLine } from "./sweepview.js";

const NAME = document.body.dataset.sweep;
const API = `/api/sweeps/${encodeURIComponent(NAME)}`;
const RELOAD_MS = 1000;
const MAX_POINTS = 400;  // per curve: a sweep page draws tens of trials at once
const TRAIN_SMOOTHING = 0.6;  // the run page's default
const series = new Map();  // run -> {step: last step read, data: {loss, <objective>}}
let view = null;
let models = null;
let reloadTimer = null;

async function reload() {
  reloadTimer = null;
  view = await getJSON(API);
  await Promise.all(view.trials.filter((t) => t.run && moved(t)).map(async (t) => {
    const data = await getJSON(`/api/runs/${encodeURIComponent(t.run)}/series?names=loss,${encodeURIComponent(view.objective)}&max_points=${MAX_POINTS}`);
    series.set(t.run, { step: t.last_step, status: t.status, data });
  }));
  render();
}

function moved(t) {
  const known = series.get(t.run);
  return !known || known.step !== t.last_step || known.status !== t.status;
}

function scheduleReload() {
  if (reloadTimer === null) reloadTimer = setTimeout(() => reload().catch(console.error), RELOAD_MS);
}

function dimension() {
  const chosen = document.getElementById("colour-by").value;
  return view.space.find((d) => d.name === chosen) || view.space[0];
}

function render() {
  renderSummary();
  renderAdvice();
  renderCurves();
  view.space.forEach((d, i) => {
    const rows = scatterRows(view, d);
    setData(models[`sweep_done_${i}`], rows.done);
    setData(models[`sweep_best_${i}`], rows.best);
    setData(models[`sweep_marked_${i}`], rows.marked);
  });
  renderTable();
}

function renderSummary() {
  const running = view.trials.filter((t) => t.state === "running").length;
  document.getElementById("sweep-progress").textContent = running ? `${running} running` : "";
  document.getElementById("sweep-summary").textContent =
    `${summaryLine(view)} · objective ${view.objective} (${view.direction}) · ${view.sampler} search`;
  const best = view.trials.find((t) => t.number === view.best);
  const bestLine = document.getElementById("sweep-best");
  bestLine.replaceChildren();
  if (best) {
    const link = el("a", `trial ${best.number}`);
    link.href = `/runs/${encodeURIComponent(best.run)}`;
    bestLine.append("Best: ", link, ` (${paramLabel(best.params, view.space)}): ${view.objective} ${num(best.value)}`);
  } else bestLine.textContent = "No complete trial yet.";
  const saved = view.saved;
  document.getElementById("sweep-saved").textContent = saved.pruned
    ? `Pruning ended ${saved.pruned} trial${saved.pruned === 1 ? "" : "s"} early, saving about ${Math.round(saved.seconds_saved)} trial-seconds of ${Math.round(saved.seconds_run + saved.seconds_saved)} of the trials' training time (against the complete trials' median).`
    : "No trial pruned yet.";
  const note = document.getElementById("sweep-note");
  note.hidden = !view.note;
  note.textContent = view.note || "";
}

function renderAdvice() {
  const list = document.getElementById("advice");
  list.replaceChildren(...view.advice.map((a) => {
    const li = el("li");
    li.dataset.kind = a.kind;
    li.append(el("span", a.kind.replace("_", " ") + ":", "advice-kind"), el("span", a.message));
    for (const spec of a.space) { li.append(" "); li.append(el("code", `--space '${spec}'`)); }
    return li;
  }));
  document.getElementById("no-advice").hidden = view.advice.length > 0;
}

function renderCurves() {
  const dim = dimension();
  const of = (name) => (t) => (series.get(t.run) || { data: {} }).data[name];
  const train = curveRows(view.trials, (t) => smoothed(of("loss")(t)), view.space, dim);
  const val = curveRows(view.trials, of(view.objective), view.space, dim);
  setData(models.sweep_train, train);
  setData(models.sweep_val, val);
  const points = { step: [], value: [], color: [], trial: [] };
  val.xs.forEach((xs, i) => xs.forEach((x, k) => {
    points.step.push(x); points.value.push(val.ys[i][k]); points.color.push(val.color[i]); points.trial.push(val.trial[i]);
  }));
  setData(models.sweep_val_points, points);
  const log = view.direction === "minimize";
  const range = curveRange({ ys: [...train.ys, ...val.ys], state: [...train.state, ...val.state] }, log);
  if (range) Object.assign(models.sweep_curves_y, range);
  const ended = view.trials.filter((t) => ENDED.has(t.state)).length;
  const note = document.getElementById("curves-note");
  note.hidden = ended === 0;
  note.textContent = `${ended} ended trial${ended === 1 ? "" : "s"} (pruned, diverged or failed) drawn faint; ` +
    "the axis follows the others, so a diverged trial's climb leaves it at the top.";
  renderLegend(dim);
}

// The training loss smoothed as the run page smooths it by default (the raw per-step loss of
// many trials is a thicket); validation is drawn as it is.
function smoothed(s) {
  return s && { step: s.step, value: smooth(s.value, TRAIN_SMOOTHING) };
}

function renderLegend(dim) {
  const legend = document.getElementById("colour-legend");
  legend.replaceChildren();
  if (!dim) return;
  if (dim.distribution === "choice") {
    for (const c of dim.choices) {
      const swatch = el("span", null, "swatch");
      swatch.style.background = colourFor(dim, c);
      legend.append(swatch, `${shortValue(c)} `);
    }
    return;
  }
  const bar = el("span", null, "ramp");
  bar.style.background = `linear-gradient(to right, ${VIRIDIS.join(", ")})`;
  legend.append(shortValue(dim.low), bar, `${shortValue(dim.high)}${dim.log ? " (log)" : ""}`);
}

function renderTable() {
  const body = document.querySelector("#trials tbody");
  body.replaceChildren(...view.trials.map((t) => {
    const tr = el("tr", null, t.number === view.best ? "best" : "");
    tr.dataset.trial = t.number;
    tr.dataset.state = t.state;
    const state = el("td");
    state.append(el("span", t.state, `badge ${t.state}`));
    const run = el("td");
    if (t.run) {
      const link = el("a", t.run);
      link.href = `/runs/${encodeURIComponent(t.run)}`;
      run.append(link);
    }
    tr.append(el("td", t.number === view.best ? `${t.number} ★` : t.number),
      ...view.space.map((d) => el("td", shortValue(t.params[d.name]))), state, el("td", num(t.value)),
      el("td", t.seconds === null ? "–" : t.seconds.toFixed(1)), run, el("td", t.reason || ""));
    return tr;
  }));
}

async function main() {
  if (document.body.dataset.waiting === "true") {
    // The sweep has no trial yet: open it when its first run arrives.
    // (only on news of a run named as its trials are: a probe that 404s logs a console error)
    const ours = (news) => ((news && news.runs) || []).some((r) => r.startsWith(`${NAME}-`));
    connect(async (socket) => { await request(socket, WATCH_RUNS, null); })
      .on(RUNS_CHANGED, (news) => { if (ours(news)) getJSON(API).then(() => window.location.reload()).catch(() => {}); });
    return;
  }
  const names = ["sweep_train", "sweep_val", "sweep_val_points", "sweep_curves_y"];
  const dims = [...document.querySelectorAll("[data-dimension]")];
  dims.forEach((_, i) => names.push(`sweep_done_${i}`, `sweep_best_${i}`, `sweep_marked_${i}`));
  models = await bokehModels(names);
  document.getElementById("colour-by").addEventListener("change", () => { if (view) renderCurves(); });
  await reload();
  connect(async (socket) => {
    await request(socket, WATCH_RUNS, null);
    scheduleReload();
  }).on(RUNS_CHANGED, (news) => {
    const ours = new Set(view.trials.map((t) => t.run));
    const runs = (news && news.runs) || [];
    if (!runs.length || runs.some((r) => ours.has(r) || r.startsWith(`${NAME}-`))) scheduleReload();
  }).on(RESYNC, scheduleReload);
}

main().catch((err) => console.error(err));
