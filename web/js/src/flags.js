// The flags, grouped into incidents by the server (monitor/incidents.py: a cause, the
// symptoms it explains, the layers once, one advice), and every flag as a marker on the
// loss plot. The page keeps the flags it has (history and stream); when new ones come it
// asks for the grouping again.
import { getJSON } from "./codec.js";
import { el, num } from "./format.js";
import { setData } from "./models.js";

const SEVERITY_COLOR = { critical: "#c5221f", warning: "#e8a30a" };
const REGROUP_MS = 250;  // new flags come in bursts (one layer each): ask once per burst

export class FlagPanel {
  constructor(markSource, lossSeries, api) {
    this.list = document.getElementById("flags");
    this.count = document.getElementById("flag-count");
    this.none = document.getElementById("no-flags");
    this.markSource = markSource;
    this.loss = lossSeries;
    this.api = api;
    this.flags = [];
    this.bySeq = new Map();
    this.timer = null;
  }

  load(flags, incidents) {
    this.flags = [];
    this.bySeq = new Map();
    this.add(flags, false);
    this.render(incidents || []);
  }

  // Flags as the REST route gives them ({seq, step, wall, kind, severity, message, ...});
  // one the page has already (the history and the stream overlap) is not counted twice.
  add(flags, regroup = true) {
    let added = false;
    for (const flag of flags) {
      if (this.bySeq.has(flag.seq)) continue;
      this.bySeq.set(flag.seq, flag);
      this.flags.push(flag);
      added = true;
    }
    this.none.hidden = this.flags.length > 0;
    this.placeMarks();
    if (added && regroup && this.timer === null) this.timer = setTimeout(() => this.regroup(), REGROUP_MS);
  }

  async regroup() {
    this.timer = null;
    try {
      this.render(await getJSON(`${this.api}/incidents`));
    } catch (err) {
      console.warn(`babysit: grouping the flags failed (${err.message}); retrying`);
      this.timer = setTimeout(() => this.regroup(), 2000);
    }
  }

  render(incidents) {
    this.list.replaceChildren(...incidents.map((incident) => this.item(incident)));
    this.count.textContent = String(incidents.length);
    this.count.title = `${incidents.length} incident(s) from ${this.flags.length} flag(s)`;
  }

  item(incident) {
    const li = el("li", null, `flag incident ${incident.severity}`);
    li.dataset.kind = incident.cause;
    li.append(el("div", incident.message, "flag-title"));
    const where = [incident.cause, incident.severity, `from step ${incident.step}`];
    if (incident.layers.length) where.push(`${incident.layers.length > 1 ? "layers" : "layer"} ${incident.layers.join(", ")}`);
    li.append(el("div", where.join(" · "), "flag-meta"));
    if (incident.symptoms.length) li.append(el("div", `explains: ${incident.symptoms.join(", ")}`, "flag-symptoms"));
    if (incident.advice) li.append(el("div", incident.advice, "flag-advice"));
    if (incident.note) li.append(el("div", incident.note, "flag-note"));
    const members = incident.flags.map((seq) => this.bySeq.get(seq)).filter(Boolean);
    const details = el("details");
    details.append(el("summary", `${members.length} flag${members.length === 1 ? "" : "s"}`));
    details.append(...members.map((flag) => member(flag)));
    li.append(details);
    return li;
  }

  // Markers sit on the smoothed loss at their step; re-placed when the loss changes.
  placeMarks() {
    const f = this.flags;
    setData(this.markSource, {
      step: f.map((x) => x.step), y: f.map((x) => this.loss.valueAt(x.step)), kind: f.map((x) => x.kind),
      severity: f.map((x) => x.severity), layer: f.map((x) => x.layer || ""), message: f.map((x) => x.message),
      color: f.map((x) => SEVERITY_COLOR[x.severity] || SEVERITY_COLOR.warning),
    });
  }
}

// One flag of an incident: what it saw, where, and the numbers.
function member(flag) {
  const div = el("div", null, `flag-member ${flag.severity}`);
  div.dataset.kind = flag.kind;
  const where = [flag.kind, `step ${flag.step}`];
  if (flag.layer) where.push(`layer ${flag.layer}`);
  div.append(el("div", where.join(" · "), "flag-meta"), el("div", flag.message));
  const evidence = flag.evidence || {};
  if (Object.keys(evidence).length) {
    const numbers = el("details");
    numbers.append(el("summary", "evidence"));
    const lines = Object.entries(evidence).map(([k, v]) => `${k}: ${typeof v === "number" ? num(v) : JSON.stringify(v)}`);
    numbers.append(el("pre", lines.join("\n")));
    div.append(numbers);
  }
  return div;
}
