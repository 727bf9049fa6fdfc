// The run page: load the run's history from the REST routes, then stream its live events
// (joined on /dashboard) into the same Bokeh sources. One path for a finished run and a
// live one; events that arrive while the history loads are held and applied after it.
import { getJSON, HttpError } from "./codec.js";
import { bokehModels, setData, stream, syncLegends } from "./models.js";
import { connect, decodeEvents, request } from "./live.js";
import { EVENTS, JOIN, RESYNC, RUN_STATUS } from "./protocol.js";
import { ScalarSeries } from "./series.js";
import { FlagPanel } from "./flags.js";
import { LayerPanel, UpdateRatios, bandsUrl, isActivationModule, showDeadUnits } from "./layers.js";
import { el, num } from "./format.js";
import { showIds } from "./inputs.js";
import { RunHeader } from "./header.js";
import { jobOf, rankRuns } from "./ranks.js";

const RUN = document.body.dataset.run;
const API = `/api/runs/${encodeURIComponent(RUN)}`;
// Scalars that are not metrics to choose from: they have plots or places of their own.
const NOT_METRICS = new Set(["loss", "lr", "epoch"]);
// Points per parameter in the update-ratio plot's history: 50 parameters share one plot.
const RATIO_POINTS = 500;
const RANKS_MS = 5000;
const DEAD_THRESHOLDS = JSON.parse(document.getElementById("dead-card").dataset.thresholds);
const RATIO = JSON.parse(document.getElementById("ratio-card").dataset.ratio);  // how often a running job's band of rank losses is read again
const SOURCES = ["loss_train", "loss_val", "val_best", "loss_ranks", "flag_marks", "metric_train", "metric_val", "lr", "lr_held", "act_bands",
  "act_hist", "grad_bands", "grad_hist", "dead", "saturated", "dead_layers", "update_ratio", "inputs", "loss_linear", "loss_log"];

class RunPage {
  constructor(models) {
    this.m = models;
    const weight = Number(document.getElementById("smoothing").value);
    this.loss = new ScalarSeries(models.loss_train, weight);
    // Validation points are drawn as they are: each is an average over the validation set
    // already, a handful per run, and an average over them lags the very trend they show.
    this.val = new ScalarSeries(models.loss_val, 0);
    this.metricTrain = new ScalarSeries(models.metric_train, weight);
    this.metricVal = new ScalarSeries(models.metric_val, 0);
    this.lr = { source: models.lr, lastStep: -Infinity };
    this.flags = new FlagPanel(models.flag_marks, this.loss, API);
    this.header = new RunHeader(RUN);
    this.act = new LayerPanel({ run: RUN, signal: "activation", select: document.getElementById("act-layer"),
      info: document.getElementById("act-info"), bands: models.act_bands, hist: models.act_hist });
    this.grad = new LayerPanel({ run: RUN, signal: "output_grad", select: document.getElementById("grad-layer"),
      info: document.getElementById("grad-info"), bands: models.grad_bands, hist: models.grad_hist });
    this.ratios = new UpdateRatios(models.update_ratio, RATIO.norms, document.getElementById("ratio-all"),
      document.getElementById("ratio-note"));
    this.metric = null;
    this.metricNames = new Set();
    this.loaded = false;
    this.sampled = false;  // a layer_stats event seen: the panels that have nothing by now will not
    this.hasInputs = false;
    this.inputShape = null;
    this.integerInput = false;
    this.unitLayers = false;  // an activation module has been sampled: the units panel applies
    this.start = null;
    this.held = [];
    this.lastSeq = -1;
    this.controls();
  }

  controls() {
    const slider = document.getElementById("smoothing"), shown = document.getElementById("smoothing-value");
    slider.addEventListener("input", () => {
      const w = Number(slider.value);
      shown.textContent = w.toFixed(2);
      for (const s of [this.loss, this.metricTrain]) s.setWeight(w);
      this.flags.placeMarks();
    });
    document.getElementById("log-scale").addEventListener("change", (e) => {
      this.m.loss_linear.visible = !e.target.checked;
      this.m.loss_log.visible = e.target.checked;
      this.logNote();
    });
    document.getElementById("metric").addEventListener("change", (e) => this.chooseMetric(e.target.value));
  }

  // The best (lowest) validation loss so far, marked on the plot; and on a log scale, the
  // points it cannot draw (at or below zero) counted under it.
  markBest() {
    const { step, value } = this.val.source.data;
    let best = -1;
    for (let i = 0; i < value.length; i++) if (Number.isFinite(value[i]) && (best < 0 || value[i] < value[best])) best = i;
    setData(this.m.val_best, best < 0 ? { step: [], value: [] } : { step: [step[best]], value: [value[best]] });
    this.logNote();
  }

  logNote() {
    const note = document.getElementById("log-note");
    const log = document.getElementById("log-scale").checked;
    const hidden = [this.loss, this.val].reduce((n, s) => n + Array.from(s.source.data.value).filter((v) => v <= 0).length, 0);
    note.hidden = !log || hidden === 0;
    note.textContent = `${hidden} value${hidden === 1 ? " is" : "s are"} at or below 0 and not drawn on the log scale ` +
      "(a loss that goes negative, a log-likelihood say, reads on the linear scale)";
  }

  // ---------------------------------------------------------------- history

  // A distributed job: every rank's loss as a band behind rank 0's curve, refreshed while it runs.
  async loadRanks() {
    clearTimeout(this.ranksTimer);
    try {
      const spread = await getJSON(`${API}/ranks`);
      setData(this.m.loss_ranks, { step: spread.step, low: spread.low, high: spread.high });
    } catch (err) {
      console.warn(`babysit: the ranks' losses did not load (${err.message})`);
    }
    const status = document.getElementById("status").textContent;
    if (status === "running" || status === "stopping") this.ranksTimer = setTimeout(() => this.loadRanks(), RANKS_MS);
  }

  // Load the history again (a reconnection, a long live session): the chosen layers stay.
  async load() {
    const history = await fetchHistory({ activation: this.act.layer, output_grad: this.grad.layer });
    if (history === null) {  // not started yet: wait for it
      document.getElementById("waiting").hidden = false;
      setTimeout(() => this.load(), 1000);
      return;
    }
    this.applyHistory(history);
  }

  applyHistory(h) {
    document.getElementById("waiting").hidden = true;
    const { run, series } = h;
    this.lastSeq = run.last_seq;
    this.header.load(run);
    showConfig(run.start);
    if (run.start && run.start.world > 1) this.loadRanks();
    this.loss.load(series.loss);
    this.val.load(series.val_loss);
    this.markBest();
    this.loadLr(series.lr);
    this.addMetrics(Object.keys(series));
    if (this.metric) this.showMetric(this.metric, series);
    this.flags.load(h.flags, h.incidents);
    this.ratios.load(h.ratios.layers);
    setData(this.m.inputs, { step: h.inputs.step, mean: h.inputs.mean, std: h.inputs.std });
    this.showInputInfo(h.inputs);
    const layers = run.layers || [];
    for (const [panel, signal] of [[this.act, "activation"], [this.grad, "output_grad"]]) {
      panel.addLayers(layers.filter((l) => l.signal === signal));
      const [layer, bands] = h.bands[signal];
      if (bands) panel.show(layer, bands);
    }
    if (h.latest) this.layerStats(h.latest, false);
    if (h.filters) this.showFilters(h.filters);
    this.start = run.start;
    this.hasInputs = h.inputs.step.length > 0;
    this.inputShape = h.inputs.shape || null;
    if (h.inputs.latest && h.inputs.latest.integer) this.showIntegerInput(h.inputs.latest);
    this.explainPanels();
    this.loaded = true;
    const held = this.held;
    this.held = [];
    this.apply(held.filter((e) => e.seq > this.lastSeq));
  }

  loadLr(history) {
    setData(this.lr.source, { step: history ? [...history.step] : [], value: history ? [...history.value] : [] });
    this.lr.lastStep = history && history.step.length ? history.step[history.step.length - 1] : -Infinity;
    this.holdLr();
  }

  // The rate held from its last change to the latest training step (the lr_held source).
  holdLr() {
    const values = this.lr.source.data.value;
    const until = Math.max(this.loss.lastStep, this.lr.lastStep);
    if (!values.length || !Number.isFinite(until)) return;
    const value = values[values.length - 1];
    setData(this.m.lr_held, { step: [this.lr.lastStep, until], value: [value, value] });
  }

  // Each panel that has nothing to draw says why, once the run shows it will not: no
  // metric logged, no image-like first layer, an input that is not floating point.
  explainPanels() {
    const note = (id, text) => { const p = document.getElementById(id); p.textContent = text || ""; p.hidden = !text; };
    const metrics = this.metricNames.size > 0;
    document.getElementById("metric").hidden = !metrics;
    document.getElementById("metric-plot").hidden = !metrics;
    note("metric-note", metrics ? "" : "No metric but the loss is logged: log any other by name, " +
      "mon.log(val_acc=...), and it shows here.");
    const modules = ((this.start && this.start.model) || []).map((m) => m.module);
    const image = modules.includes("Conv2d") || (this.inputShape !== null && this.inputShape.length === 4);
    if (document.getElementById("filters").hidden) {
      document.getElementById("no-filters").textContent = this.sampled && !image
        ? "No filter image: the model's first layer is neither a convolution nor a linear layer over an image."
        : "No filter image yet.";
    }
    note("input-note", this.integerInput ? "Integer input (ids read where the model embeds them): mean and std " +
      "of ids mean nothing, so they are neither drawn nor judged." : this.sampled && !this.hasInputs
      ? "No input statistics: the model's first input is neither a floating-point tensor nor ids an embedding reads."
      : "");
    document.getElementById("input-plot").hidden = this.integerInput;
    const lr = this.lr.source.data.step.length > 0;
    note("lr-note", this.sampled && !lr ? "No learning rate: babysit reads it from the optimizer's first " +
      "parameter group, and this run has none it can see (trained by hand?). Log it with mon.log(lr=...)." : "");
    const units = document.getElementById("dead-note");
    if (this.sampled && !this.unitLayers) {
      units.hidden = false;
      units.textContent = "No activation layer: the model applies its nonlinearities as functions (F.relu, " +
        "F.gelu), which no module hook sees; make them modules (nn.ReLU(), nn.GELU()) to see dead and saturated units.";
    }
    this.placePanels({
      metric: this.sampled && !metrics,
      filters: this.sampled && !image && document.getElementById("filters").hidden,
      input: this.sampled && !this.hasInputs,
      lr: this.sampled && !lr,
      units: this.sampled && !this.unitLayers,
    });
  }

  // The panels that apply to this model come first; each one that does not (a filter image
  // for a transformer, a learning rate for training by hand) moves, with its one-line reason,
  // to the end of the page, and back where it was should the run bring its data after all.
  placePanels(inapplicable) {
    const shelf = document.getElementById("not-applicable-panels");
    this.homes = this.homes || new Map();
    for (const [name, away] of Object.entries(inapplicable)) {
      const card = document.querySelector(`[data-panel="${name}"]`);
      if (!card) continue;
      if (away && card.parentElement !== shelf) {
        const home = document.createComment(name);
        card.replaceWith(home);
        this.homes.set(name, home);
        shelf.append(card);
      } else if (!away && this.homes.has(name)) {
        this.homes.get(name).replaceWith(card);
        this.homes.delete(name);
      }
    }
    document.getElementById("not-applicable").hidden = shelf.children.length === 0;
  }

  addMetrics(names) {
    const select = document.getElementById("metric");
    for (const name of names) {
      const base = name.startsWith("val_") ? name.slice(4) : name;
      // a name ending _se is another series' standard error (val_loss_se), no metric of its own
      if (NOT_METRICS.has(base) || base.endsWith("_se") || this.metricNames.has(base)) continue;
      this.metricNames.add(base);
      const option = document.createElement("option");
      option.value = base;
      option.textContent = base;
      select.append(option);
      if (this.metric === null) { this.metric = base; select.value = base; }
      if (this.metricNames.size === 1) this.explainPanels();
    }
  }

  async chooseMetric(base) {
    this.metric = base;
    this.showMetric(base, await getJSON(`${API}/series?names=${encodeURIComponent(base)},val_${encodeURIComponent(base)}`));
  }

  showMetric(base, series) {
    this.metric = base;
    this.metricTrain.load(series[base]);
    this.metricVal.load(series[`val_${base}`]);
  }

  // ---------------------------------------------------------------- live

  onEvents(batch) {
    const events = decodeEvents(batch.events);
    if (!this.loaded) { this.held.push(...events); return; }
    this.apply(events.filter((e) => e.seq > this.lastSeq));
  }

  apply(events) {
    if (!events.length) return;
    this.lastSeq = Math.max(this.lastSeq, ...events.map((e) => e.seq));
    const points = {};  // scalar name -> [[step, value], ...] of this batch
    const flags = [];
    for (const e of events) {
      if (e.kind === "scalars") {
        for (const [name, value] of Object.entries(e.data.values)) (points[name] ||= []).push([e.step, value]);
        this.header.scalars(e);
      } else if (e.kind === "layer_stats") this.layerStats(e, true);
      else if (e.kind === "flag") flags.push({ seq: e.seq, step: e.step, wall: e.wall, ...e.data });
      else if (e.kind === "filters") this.showFilters(e);
      else if (e.kind === "input_stats") this.inputStats(e);
      else if (e.kind === "status" || e.kind === "run_end") this.header.lifecycle(e);
      else if (e.kind === "run_start") { this.header.runStarted(e); showConfig(e.data); }
    }
    let compact = false;
    if (points.loss) compact ||= this.loss.push(points.loss);
    if (points.val_loss) { compact ||= this.val.push(points.val_loss); this.markBest(); }
    if (points.lr) this.pushLr(points.lr);
    else if (points.loss) this.holdLr();
    if (this.metric) {
      if (points[this.metric]) this.metricTrain.push(points[this.metric]);
      if (points[`val_${this.metric}`]) this.metricVal.push(points[`val_${this.metric}`]);
    }
    this.addMetrics(Object.keys(points));
    if (flags.length) this.flags.add(flags);
    else if (points.loss || points.val_loss) this.flags.placeMarks();
    compact ||= this.act.tooLong() || this.grad.tooLong() || this.ratios.tooLong();
    if (compact) this.load();  // a long live session: reload the downsampled history
  }

  pushLr(points) {
    const fresh = points.filter(([s]) => s > this.lr.lastStep);
    if (!fresh.length) return;
    const first = this.lr.source.data.step.length === 0;
    this.lr.lastStep = fresh[fresh.length - 1][0];
    stream(this.lr.source, { step: fresh.map((p) => p[0]), value: fresh.map((p) => p[1]) });
    this.holdLr();
    if (first && this.sampled) this.explainPanels();
  }

  layerStats(event, live) {
    const summaries = event.data.summaries;
    this.act.update(event.step, summaries, live);
    this.grad.update(event.step, summaries, live);
    showDeadUnits({ dead: this.m.dead, saturated: this.m.saturated }, this.m.dead_layers, summaries, DEAD_THRESHOLDS);
    const units = this.unitLayers || summaries.some(isActivationModule);
    if (!this.sampled || units !== this.unitLayers) { this.sampled = true; this.unitLayers = units; this.explainPanels(); }
    if (live) this.ratios.update(event.step, summaries);
  }

  showFilters(event) {
    const img = document.getElementById("filters");
    img.src = `${API}/filters.png?seq=${event.seq}`;
    img.hidden = false;
    document.getElementById("no-filters").hidden = true;
    const d = event.data;
    document.getElementById("filters-info").textContent = `${d.layer} · ${d.count} filters · step ${event.step}`;
    if (this.homes && this.homes.has("filters")) this.explainPanels();
  }

  inputStats(event) {
    if (!this.hasInputs) { this.hasInputs = true; this.inputShape = event.data.shape; this.explainPanels(); }
    const d = event.data, steps = this.m.inputs.data.step;
    if (d.integer) { this.showIntegerInput(d); return; }
    if (steps.length && steps[steps.length - 1] >= event.step) return;  // in the history already
    stream(this.m.inputs, { step: [event.step], mean: [d.mean], std: [d.std] });
    this.showInputInfo({ shape: d.shape, mean: [d.mean], std: [d.std], min: [d.min], max: [d.max] });
  }

  showIntegerInput(d) {
    showIds(document.getElementById("input-ids"), d);
    document.getElementById("input-info").textContent = `latest: ${d.distinct} distinct ids · shape ${d.shape.join("×")}`;
    if (!this.integerInput) { this.integerInput = true; this.explainPanels(); }
  }

  showInputInfo(inputs) {
    const last = (column) => (column && column.length ? column[column.length - 1] : undefined);
    if (last(inputs.mean) === undefined) return;
    const shape = inputs.shape ? ` · shape ${inputs.shape.join("×")}` : "";
    document.getElementById("input-info").textContent =
      `latest: mean ${num(last(inputs.mean))} · std ${num(last(inputs.std))} · range ${num(last(inputs.min))}..${num(last(inputs.max))}${shape}`;
  }
}

// Everything the page draws of a run's history, fetched in parallel; null while the run
// is not in the store yet. The overview comes first: its last_seq is the point from which
// live events are applied, so every other answer is at least as recent (what they share
// with the stream is drawn once; see ScalarSeries.push, FlagPanel.add). `chosen` names the
// layers whose bands to fetch (the first of each signal when null).
async function fetchHistory(chosen) {
  let run;
  try {
    run = await getJSON(API);
  } catch (err) {
    if (err instanceof HttpError && err.status === 404) return null;
    throw err;
  }
  const layerOf = (signal) => chosen[signal] ?? (run.layers || []).find((l) => l.signal === signal)?.layer ?? null;
  const bands = async (signal) => {
    const layer = layerOf(signal);
    return [layer, layer === null ? null : await getJSON(bandsUrl(RUN, signal, layer))];
  };
  const [series, flags, incidents, latest, inputs, ratios, activation, outputGrad, filters] = await Promise.all([
    getJSON(`${API}/series`), getJSON(`${API}/flags`), getJSON(`${API}/incidents`),
    getOptional(`${API}/latest/layer_stats`),
    getJSON(`${API}/inputs`), getJSON(`${API}/layers?signal=param_grad&fields=step,update_ratio&max_points=${RATIO_POINTS}`),
    bands("activation"), bands("output_grad"), getOptional(`${API}/latest/filters`),
  ]);
  return { run, series, flags, incidents, latest, inputs, ratios, bands: { activation, output_grad: outputGrad },
    filters };
}

async function getOptional(url) {
  try {
    return await getJSON(url);
  } catch (err) {
    if (err instanceof HttpError && err.status === 404) return null;
    throw err;
  }
}

// A distributed job's ranks: a link to each rank's run, and one that overlays their curves.
function ranksRow(world) {
  const { job } = jobOf(RUN);
  const ids = rankRuns(job, world);
  const cell = el("td");
  ids.forEach((id, r) => {
    const link = el("a", `rank ${r}`);
    link.href = `/runs/${encodeURIComponent(id)}`;
    if (id === RUN) link.setAttribute("aria-current", "page");
    cell.append(link, " ");
  });
  const compare = el("a", "compare the ranks' curves");
  compare.href = `/compare?runs=${ids.map(encodeURIComponent).join(",")}`;
  cell.append("· ", compare, " · the shaded band behind the loss: the ranks' lowest to highest");
  const tr = el("tr");
  tr.append(el("th", "ranks"), cell);
  return tr;
}

function showConfig(start) {
  if (!start) return;
  const config = document.querySelector("#config tbody");
  const show = (v) => (typeof v === "number" ? num(v, 6) : typeof v === "string" ? v : JSON.stringify(v));
  const rows = Object.entries(start.config || {}).map(([k, v]) => [k, show(v)]);
  rows.push(["host", `${start.host} (pid ${start.pid}, rank ${start.rank}/${start.world})`]);
  for (const [k, v] of Object.entries(start.versions || {})) rows.push([k, String(v)]);
  for (const [k, v] of Object.entries(start.sampling || {})) rows.push([`sampling ${k}`, JSON.stringify(v)]);
  config.replaceChildren(...rows.map(([k, v]) => { const tr = el("tr"); tr.append(el("th", k), el("td", v)); return tr; }));
  if (start.world > 1) config.append(ranksRow(start.world));
  const model = document.querySelector("#model tbody");
  let total = 0, trainable = 0;
  model.replaceChildren(...(start.model || []).map((m) => {
    const isTotal = m.name === "(total)";  // the summary's last row: the whole model
    if (isTotal) { total = m.params; trainable = m.trainable; }
    const tr = el("tr", null, isTotal ? "total" : "");
    tr.append(el("td", m.name), el("td", m.module), el("td", m.shape), el("td", m.params.toLocaleString(), "num"));
    return tr;
  }));
  document.getElementById("model-info").textContent =
    `${total.toLocaleString()} parameters${trainable !== total ? `, ${trainable.toLocaleString()} trainable` : ""}`;
}

// The socket connects and the history loads while Bokeh is still building the figures
// (about half a second): the page is ready when the later of the two is.
async function main() {
  let page = null;
  const early = [];  // live batches that arrive before the page exists
  const ready = bokehModels(SOURCES).then((models) => {
    page = new RunPage(models);
    window.babysitPage = page;  // for the browser tests and for poking at it in the console
    for (const batch of early.splice(0)) page.onEvents(batch);
    setInterval(() => { page.header.tick(); syncLegends(); }, 1000);
    return page;
  });
  const joinAndLoad = async (socket) => {
    try {
      await request(socket, JOIN, RUN);
      // The first load fetches while Bokeh builds; every reconnection loads again (what
      // happened meanwhile is in the store).
      const history = page === null ? await fetchHistory({}) : null;
      await ready;
      page.socket = socket;
      page.header.socket = socket;
      if (history) page.applyHistory(history); else await page.load();
    } catch (err) {  // the server went away mid-load: try again unless a reconnection will
      console.warn(`babysit: loading the run failed (${err.message}); retrying`);
      setTimeout(() => { if (socket.connected) joinAndLoad(socket); }, 2000);
    }
  };
  connect(joinAndLoad).on(EVENTS, (batch) => {
    if (batch.run !== RUN) return;
    if (page === null) early.push(batch); else page.onEvents(batch);
  }).on(RESYNC, (message) => {  // this page fell behind and the server dropped live events: the store has them
    console.warn(`babysit: ${message && message.reason}; reloading the run`);
    if (page !== null) page.load().catch((err) => console.warn(`babysit: reloading failed (${err.message})`));
  }).on(RUN_STATUS, (message) => {  // lost or back: before the page exists, its history says so
    if (message.run === RUN && page !== null) page.header.liveness(message);
  });
  await ready;
}

main().catch((err) => {
  console.error(err);
  const notice = document.getElementById("waiting");
  notice.textContent = `The page could not load this run: ${err.message}`;
  notice.hidden = false;
});


