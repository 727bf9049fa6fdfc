// Per-layer panels: distribution bands over time and the latest histogram of a chosen
// layer (activations, gradients), dead units per activation layer, update/weight ratios.
import { getJSON } from "./codec.js";
import { PALETTE, length, setData, stream } from "./models.js";
import { COMPACT_AT } from "./series.js";
import { num } from "./format.js";

const QUANTILES = ["q0", "q1", "q2", "q3", "q4", "q5", "q6"];
const BAND_COLUMNS = ["step", "min", "max", "mean", ...QUANTILES];

// Infinite bounds (a layer with Inf in it) would stretch the band over the whole plot:
// drawn as gaps instead; the counts say what happened.
const finiteOrNaN = (v) => (Number.isFinite(v) ? v : NaN);

export function bandRow(step, summary) {
  const q = summary.quantiles && summary.quantiles.length === 7 ? summary.quantiles : new Array(7).fill(NaN);
  const row = { step, min: finiteOrNaN(summary.min), max: finiteOrNaN(summary.max), mean: finiteOrNaN(summary.mean) };
  QUANTILES.forEach((name, i) => { row[name] = finiteOrNaN(q[i]); });
  return row;
}

function histogram(summary) {
  const n = summary.hist ? summary.hist.length : 0;
  const width = n ? (summary.hist_hi - summary.hist_lo) / n : 0;
  const left = [], right = [], count = [];
  for (let i = 0; i < n; i++) {
    left.push(summary.hist_lo + i * width);
    right.push(summary.hist_lo + (i + 1) * width);
    count.push(summary.hist[i]);
  }
  return { left, right, count };
}

function describe(summary) {
  const parts = [summary.module, `mean ${num(summary.mean)}`, `std ${num(summary.std)}`,
    `zero ${Math.round(100 * summary.zero_frac)}%`];
  if (summary.units) parts.push(`dead ${summary.dead_units}/${summary.units}`);
  if (summary.sat_frac !== null && summary.sat_frac !== undefined) parts.push(`saturated ${Math.round(100 * summary.sat_frac)}%`);
  if (summary.nan || summary.inf) parts.push(`NaN ${summary.nan} · Inf ${summary.inf}`);
  return parts.join(" · ");
}

// The route that gives one layer's bands (what `LayerPanel.show` draws).
export function bandsUrl(run, signal, layer) {
  return `/api/runs/${encodeURIComponent(run)}/layers?signal=${signal}` +
    `&layer=${encodeURIComponent(layer)}&fields=${BAND_COLUMNS.join(",")}`;
}

// One signal's panel: a <select> of layers, the bands of the chosen one, its latest histogram.
export class LayerPanel {
  constructor({ run, signal, select, info, bands, hist }) {
    Object.assign(this, { run, signal, select, info, bands, hist });
    this.layer = null;
    this.latest = new Map();  // layer -> {step, summary}
    this.lastStep = -Infinity;
    select.addEventListener("change", () => this.choose(select.value));
  }

  // Layers as {layer, module}; the menu shows both ("3 · Conv2d": Sequential names are numbers).
  addLayers(layers) {
    const known = new Set(Array.from(this.select.options, (o) => o.value));
    for (const { layer, module } of layers) {
      if (known.has(layer)) continue;
      known.add(layer);
      const option = document.createElement("option");
      option.value = layer;
      option.textContent = module ? `${layer} · ${module}` : layer;
      this.select.append(option);
    }
  }

  async choose(layer) {
    this.layer = layer;
    this.select.value = layer;
    const body = await getJSON(bandsUrl(this.run, this.signal, layer));
    if (this.layer === layer) this.show(layer, body);  // unless another was chosen meanwhile
  }

  // The bands of `layer` from the /layers route's answer.
  show(layer, body) {
    this.layer = layer;
    this.select.value = layer;
    const columns = body.layers[layer] || {};
    const data = {};
    for (const c of BAND_COLUMNS) data[c] = (columns[c] || []).map(c === "step" ? (v) => v : finiteOrNaN);
    setData(this.bands, data);
    this.lastStep = data.step.length ? data.step[data.step.length - 1] : -Infinity;
    this.showLatest();
  }

  // Summaries of one sampled step (live, or the latest stored one).
  update(step, summaries, live) {
    const mine = summaries.filter((s) => s.signal === this.signal);
    for (const s of mine) this.latest.set(s.layer, { step, summary: s });
    this.addLayers(mine);
    const added = this.layer === null && mine.length ? this.choose(mine[0].layer) : Promise.resolve();
    const chosen = mine.find((s) => s.layer === this.layer);
    if (live && chosen && step > this.lastStep) {
      this.lastStep = step;
      const row = bandRow(step, chosen);
      const columns = {};
      for (const c of BAND_COLUMNS) columns[c] = [row[c]];
      stream(this.bands, columns);
    }
    this.showLatest();
    return added;
  }

  // True once live rows have grown the bands past what the page reloads downsampled.
  tooLong() {
    return length(this.bands) > COMPACT_AT;
  }

  showLatest() {
    const latest = this.latest.get(this.layer);
    if (!latest) return;
    setData(this.hist, histogram(latest.summary));
    this.info.textContent = `step ${latest.step} · ${describe(latest.summary)}`;
  }
}

// Where units stop learning, at the latest sampled step: the dead units of every ReLU
// layer and the saturated share of every saturating one (tanh/sigmoid near a bound,
// GELU/SiLU/ELU in the flat tail of their slope), each bar coloured by its rule's own bars
// (the page's data-thresholds: healthy, watched closely, flagged) and ticked at the bar that
// flags it. The model's own output nonlinearity (a last bounded activation: the sigmoid of a
// binary classifier) is meant to reach its bounds, and is drawn grey, as its rule leaves it.
const DEAD_COLORS = { healthy: "#1f6fb4", suspect: "#e8a30a", dead: "#c5221f", output: "#9aa0a6" };

export function deadColor(fraction, thresholds) {
  if (fraction > thresholds.dead) return DEAD_COLORS.dead;
  return fraction > thresholds.suspect ? DEAD_COLORS.suspect : DEAD_COLORS.healthy;
}

export function saturatedColor(fraction, thresholds, output = false) {
  if (output) return DEAD_COLORS.output;
  return fraction > thresholds.saturated ? DEAD_COLORS.dead : DEAD_COLORS.healthy;
}

// An activation function's output (the hooks count its units or its saturation), not a layer's.
export function isActivationModule(s) {
  return s.signal === "activation" && (Boolean(s.units) || (s.sat_frac !== null && s.sat_frac !== undefined));
}

// The rows of both kinds, the axis' factors (first layer at the top), and the activations neither applies to.
export function unitRows(summaries, thresholds) {
  const activations = summaries.filter(isActivationModule);
  const isDead = (s) => thresholds.modules.includes(s.module) && s.units;
  const isSaturating = (s) => Number.isFinite(s.sat_frac);
  const last = activations[activations.length - 1];
  const output = last && thresholds.bounded.includes(last.module) ? last : null;
  const dead = activations.filter(isDead);
  const saturated = activations.filter((s) => !isDead(s) && isSaturating(s));
  // a leaky unit: counted units, no saturation reading (a NaN reading, no finite output, is simply not drawn)
  const others = [...new Set(activations.filter((s) => !isDead(s) && (s.sat_frac === null || s.sat_frac === undefined))
    .map((s) => s.module))];
  const label = (s) => `${s.layer} · ${s.module}${s === output ? " · output" : ""}`;
  return {
    factors: activations.filter((s) => isDead(s) || isSaturating(s)).map(label).reverse(),  // forward order, top down
    dead: {
      layer: dead.map(label), dead_frac: dead.map((s) => s.dead_units / s.units),
      zero_frac: dead.map((s) => s.zero_frac), bar: dead.map(() => thresholds.dead),
      color: dead.map((s) => deadColor(s.dead_units / s.units, thresholds)),
    },
    saturated: {
      layer: saturated.map(label),
      sat_frac: saturated.map((s) => s.sat_frac), bar: saturated.map(() => thresholds.saturated),
      color: saturated.map((s) => saturatedColor(s.sat_frac, thresholds, s === output)),
    },
    others,
  };
}

export function showDeadUnits(sources, range, summaries, thresholds) {
  const rows = unitRows(summaries, thresholds);
  const count = rows.dead.layer.length + rows.saturated.layer.length;
  const note = document.getElementById("dead-note");
  note.hidden = count > 0 && !rows.others.length;
  note.textContent = count || rows.others.length
    ? (rows.others.length ? `${rows.others.join(", ")} layers are not shown: they always pass some gradient ` +
      "(a leaky slope), so neither dead units nor saturation applies." : "")
    : "No activation layer has been sampled yet.";
  if (!count) return;
  range.factors = rows.factors;
  setData(sources.dead, rows.dead);
  setData(sources.saturated, rows.saturated);
}

// ||dw|| / ||w|| per parameter over time: one line each in a multi_line source.
// A weight tensor, as the update-ratio rule reads them (monitor/detectors/update_ratio.py:
// _is_weight_name; `norms` are its normalisation module words, handed to the page): not a
// bias, not a normalisation layer's scale.
export function isWeight(layer, module, norms) {
  const last = layer.split(".").pop();
  return (last.startsWith("weight") || last.endsWith("_weight")) && !norms.some((w) => (module || "").includes(w));
}

export class UpdateRatios {
  constructor(source, norms, toggle, note = null) {
    this.source = source;
    this.norms = norms;
    this.toggle = toggle;  // the "biases and norms" checkbox: off, the weight tensors only
    this.note = note;  // says which tensors did not move
    this.lines = new Map();  // parameter -> {xs, ys, module}
    toggle.addEventListener("change", () => this.draw());
  }

  load(layers) {
    this.lines = new Map();
    for (const [name, columns] of Object.entries(layers)) {
      this.lines.set(name, { xs: [...columns.step], ys: columns.update_ratio.map(positiveOrNaN), module: columns.module,
        last: columns.update_ratio[columns.update_ratio.length - 1] });
    }
    this.draw();
  }

  update(step, summaries) {
    let changed = false;
    for (const s of summaries) {
      if (s.signal !== "param_grad" || s.update_ratio === null || s.update_ratio === undefined) continue;
      let line = this.lines.get(s.layer);
      if (!line) { line = { xs: [], ys: [], module: s.module }; this.lines.set(s.layer, line); }
      if (line.xs.length && line.xs[line.xs.length - 1] >= step) continue;
      line.xs.push(step);
      line.ys.push(positiveOrNaN(s.update_ratio));
      line.last = s.update_ratio;
      changed = true;
    }
    if (changed) this.draw();
  }

  tooLong() {
    let points = 0;
    for (const line of this.lines.values()) points += line.xs.length;
    return points > COMPACT_AT * 5;  // 50 parameters x 500 points of history leave room for live ones
  }

  draw() {
    const every = [...this.lines.keys()];
    const weights = every.filter((n) => isWeight(n, this.lines.get(n).module, this.norms));
    const names = this.toggle.checked || !weights.length ? every : weights;
    this.toggle.parentElement.hidden = weights.length === every.length;  // nothing to add: no control
    // Fresh arrays: BokehJS compares a new data object's columns with what it drew, and
    // the same (grown) array objects would look unchanged.
    setData(this.source, {
      xs: names.map((n) => [...this.lines.get(n).xs]), ys: names.map((n) => [...this.lines.get(n).ys]),
      layer: names, color: names.map((_, i) => PALETTE[i % PALETTE.length]),
    });
    if (this.note) {
      const still = names.filter((n) => this.lines.get(n).last === 0);
      this.note.hidden = still.length === 0;
      this.note.textContent = still.length ? frozenNote(still) : "";
    }
  }
}

// Tensors whose latest update was exactly 0 (a log axis cannot draw 0, so their lines stop):
// said in words, as nothing moving is what this panel is there to show.
export function frozenNote(names) {
  const shown = names.length > 4 ? `${names.slice(0, 4).join(", ")} and ${names.length - 4} more` : names.join(", ");
  return `${shown} did not move at ${names.length > 1 ? "their" : "its"} latest sampled step (a ratio of exactly 0, ` +
    "which a log axis cannot draw): no gradient reaches " + (names.length > 1 ? "them" : "it") +
    " (dead units downstream?), or the learning rate is 0.";
}

// A log axis cannot show zero (a frozen parameter) or a non-finite ratio: gaps instead.
const positiveOrNaN = (v) => (Number.isFinite(v) && v > 0 ? v : NaN);
