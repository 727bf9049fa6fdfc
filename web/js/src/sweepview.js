// What the sweep page draws of a sweep (GET /api/sweeps/<name>): colours by a hyper-parameter
// on its own scale, the rows of the curve and scatter sources, where marked trials sit, the
// summary line. Pure functions, unit-tested.
import { PALETTE } from "./models.js";

// Viridis, 9 stops: dark blue (low end of the range) to yellow (high end).
export const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];
// Trials whose curves are drawn faint: they were ended, their value means nothing.
export const ENDED = new Set(["pruned", "diverged", "failed"]);

// Where `value` sits in the dimension's range, 0 at low to 1 at high, on its own scale (log
// for a log dimension; a choice by its index).
export function positionOn(dim, value) {
  if (dim.distribution === "choice") {
    const i = dim.choices.findIndex((c) => String(c) === String(value));
    return dim.choices.length > 1 ? Math.max(i, 0) / (dim.choices.length - 1) : 0;
  }
  const to = dim.log ? Math.log10 : (v) => v;
  const t = (to(value) - to(dim.low)) / (to(dim.high) - to(dim.low));
  return Number.isFinite(t) ? Math.min(Math.max(t, 0), 1) : 0;
}

function hex(c) { return [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)); }

// A colour on the Viridis ramp, t in [0, 1].
export function ramp(t) {
  const x = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const a = hex(VIRIDIS[i]), b = hex(VIRIDIS[i + 1]);
  return "#" + a.map((v, k) => Math.round(v + (b[k] - v) * (x - i)).toString(16).padStart(2, "0")).join("");
}

// A trial's colour by one dimension: the ramp for a numeric one, a category's own colour for a choice.
export function colourFor(dim, value) {
  if (!dim) return PALETTE[0];
  if (dim.distribution === "choice") {
    const i = dim.choices.findIndex((c) => String(c) === String(value));
    return PALETTE[Math.max(i, 0) % PALETTE.length];
  }
  return ramp(positionOn(dim, value));
}

export function shortValue(value) {
  return typeof value === "number" && !Number.isInteger(value) ? String(Number(value.toPrecision(3))) : String(value);
}

export function paramLabel(params, space) {
  return space.map((d) => `${d.name}=${shortValue(params[d.name])}`).join(", ");
}

const finite = (v) => typeof v === "number" && Number.isFinite(v);

// The rows of a multi_line source: one line per trial with a series, non-finite points as gaps.
export function curveRows(trials, seriesOf, space, dim) {
  const rows = { xs: [], ys: [], color: [], alpha: [], trial: [], label: [], state: [] };
  for (const t of trials) {
    const s = seriesOf(t);
    if (!s || !s.step.length) continue;
    rows.xs.push(s.step);
    rows.ys.push(s.value.map((v) => (finite(v) ? v : NaN)));
    rows.color.push(colourFor(dim, t.params[dim ? dim.name : ""]));
    rows.alpha.push(ENDED.has(t.state) ? 0.35 : 0.9);
    rows.trial.push(t.number);
    rows.label.push(paramLabel(t.params, space));
    rows.state.push(t.state);
  }
  return rows;
}

// The y range the curves are read in: the trials that were not ended (all, if every one
// was), from their lowest positive value to above their highest start, on a log axis; a
// diverged trial's climb to 1e17 would otherwise flatten every other curve.
export function curveRange(rows, log = true) {
  const keep = rows.state.some((s) => !ENDED.has(s)) ? rows.state.map((s) => !ENDED.has(s)) : rows.state.map(() => true);
  let low = Infinity, high = -Infinity;
  rows.ys.forEach((ys, i) => {
    if (!keep[i]) return;
    for (const v of ys) if (finite(v) && (!log || v > 0)) { low = Math.min(low, v); high = Math.max(high, v); }
  });
  if (!(low <= high)) return null;
  return log ? { start: low / 1.5, end: high * 1.5 } : { start: low - 0.05 * (high - low), end: high + 0.05 * (high - low) };
}

// Where the trials without a value are marked on a scatter: past the worst complete value
// (above it when minimising, below it when maximising), so that they read as "no good".
export function markHeight(trials, direction) {
  const values = trials.filter((t) => t.state === "complete" && finite(t.value)).map((t) => t.value);
  if (!values.length) return 1;
  if (direction === "maximize") {
    const low = Math.min(...values), high = Math.max(...values);
    return low - 0.1 * Math.max(high - low, Math.abs(low) || 1);
  }
  const worst = Math.max(...values);
  return worst > 0 ? worst * 2 : worst + 1;
}

// The rows of one dimension's scatter sources: complete trials, the best, and the marked ones.
export function scatterRows(view, dim) {
  const x = (t) => (dim.distribution === "choice" ? String(t.params[dim.name]) : t.params[dim.name]);
  const done = { x: [], value: [], color: [], trial: [], label: [] };
  const best = { x: [], value: [], trial: [], label: [] };
  const marked = { x: [], y: [], trial: [], label: [], state: [], reason: [] };
  const y = markHeight(view.trials, view.direction);
  for (const t of view.trials) {
    const label = paramLabel(t.params, view.space);
    if (t.state === "complete" && finite(t.value)) {
      done.x.push(x(t)); done.value.push(t.value); done.color.push(colourFor(dim, t.params[dim.name]));
      done.trial.push(t.number); done.label.push(label);
      if (t.number === view.best) { best.x.push(x(t)); best.value.push(t.value); best.trial.push(t.number); best.label.push(label); }
    } else if (ENDED.has(t.state)) {
      marked.x.push(x(t)); marked.y.push(y); marked.trial.push(t.number); marked.label.push(label);
      marked.state.push(t.state); marked.reason.push(t.reason || "");
    }
  }
  return { done, best, marked };
}

// "8 trials: 5 complete, 2 pruned, 1 running".
export function summaryLine(view) {
  const counts = {};
  for (const t of view.trials) counts[t.state] = (counts[t.state] || 0) + 1;
  const order = ["complete", "pruned", "diverged", "failed", "running"];
  const parts = order.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
  return `${view.trials.length} trial${view.trials.length === 1 ? "" : "s"}: ${parts.join(", ")}`;
}
