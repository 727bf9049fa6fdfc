// What the index shows of a list of runs: the hyper-parameters that tell them apart, and
// which runs a filter keeps. Pure functions, unit-tested.

// Config keys whose values differ between the runs (at most `max`, in first-seen order):
// the columns that tell a run at lr=1 from one at lr=1e-3. A key some runs lack differs.
export function differingKeys(runs, max = 6) {
  const keys = [];
  for (const r of runs) for (const k of Object.keys(r.config || {})) if (!keys.includes(k)) keys.push(k);
  const shown = (r, k) => JSON.stringify((r.config || {})[k]);
  return keys.filter((k) => new Set(runs.map((r) => shown(r, k))).size > 1).slice(0, max);
}

// A config value as a cell: numbers short, lists and objects as JSON, absent as a dash.
export function configCell(value) {
  if (value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(3).replace(/\.?0+(e|$)/, "$1");
  return typeof value === "string" ? value : JSON.stringify(value);
}

// Whether a run passes the index's filters: `text` in its id, name or a config value;
// `status` its status, `kind` one of its flags' kinds ("" for any).
export function keeps(run, { text = "", status = "", kind = "" }) {
  if (status && run.status !== status) return false;
  if (kind && !(run.flag_kinds || []).includes(kind)) return false;
  const needle = text.trim().toLowerCase();
  if (!needle) return true;
  const haystack = [run.run, run.name, ...Object.values(run.config || {}).map((v) => JSON.stringify(v))];
  return haystack.some((s) => String(s).toLowerCase().includes(needle));
}

// The flag kinds any of the runs has, sorted: the choices of the kind filter.
export function flagKinds(runs) {
  return [...new Set(runs.flatMap((r) => r.flag_kinds || []))].sort();
}

// What a sweep's trial records besides its parameters: the same for every trial of the sweep.
const SWEEP_KEYS = new Set(["sweep", "params", "space", "objective", "direction", "sampler", "args"]);

// A run's config as the index shows it: a sweep trial's parameters as columns of their own,
// and the sweep's bookkeeping (its space, objective, the filled-in command) left out.
export function shownConfig(config) {
  config = config || {};
  if (typeof config.sweep !== "string" || typeof config.params !== "object" || config.params === null) return config;
  const out = {};
  for (const [k, v] of Object.entries(config)) if (!SWEEP_KEYS.has(k)) out[k] = v;
  return { ...out, ...config.params };
}

// The runs in groups: the trials of one sweep together (where its newest trial is), other runs
// alone, the order otherwise kept: [{sweep: name or null, runs: [...]}].
export function groupBySweep(runs) {
  const groups = [];
  const bySweep = new Map();
  for (const r of runs) {
    const sweep = r.config && typeof r.config.sweep === "string" && Number.isInteger(r.config.trial) ? r.config.sweep : null;
    if (sweep === null) { groups.push({ sweep: null, runs: [r] }); continue; }
    if (!bySweep.has(sweep)) { const group = { sweep, runs: [] }; bySweep.set(sweep, group); groups.push(group); }
    bySweep.get(sweep).runs.push(r);
  }
  return groups;
}
