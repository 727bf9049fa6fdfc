// The flags: a list with explanation and advice, and markers on the loss plot.
import { el, num } from "./format.js";
import { setData } from "./models.js";

const SEVERITY_COLOR = { critical: "#c5221f", warning: "#e8a30a" };

export class FlagPanel {
  constructor(markSource, lossSeries) {
    this.list = document.getElementById("flags");
    this.count = document.getElementById("flag-count");
    this.none = document.getElementById("no-flags");
    this.markSource = markSource;
    this.loss = lossSeries;
    this.flags = [];
    this.seqs = new Set();
  }

  load(flags) {
    this.flags = [];
    this.seqs = new Set();
    this.list.replaceChildren();
    this.add(flags);
  }

  // Flags as the REST route gives them ({seq, step, wall, kind, severity, message, ...});
  // one the page has already (the history and the stream overlap) is not listed twice.
  add(flags) {
    for (const flag of flags) {
      if (this.seqs.has(flag.seq)) continue;
      this.seqs.add(flag.seq);
      this.flags.push(flag);
      this.list.prepend(this.item(flag));  // newest first
    }
    this.count.textContent = String(this.flags.length);
    this.none.hidden = this.flags.length > 0;
    this.placeMarks();
  }

  item(flag) {
    const li = el("li", null, `flag ${flag.severity}`);
    li.dataset.kind = flag.kind;
    li.append(el("div", flag.message, "flag-title"));
    const where = [`${flag.kind}`, `${flag.severity}`, `step ${flag.step}`];
    if (flag.layer) where.push(`layer ${flag.layer}`);
    li.append(el("div", where.join(" · "), "flag-meta"));
    if (flag.advice) li.append(el("div", flag.advice, "flag-advice"));
    const evidence = flag.evidence || {};
    if (Object.keys(evidence).length) {
      const details = el("details");
      details.append(el("summary", "evidence"));
      const lines = Object.entries(evidence).map(([k, v]) => `${k}: ${typeof v === "number" ? num(v) : JSON.stringify(v)}`);
      details.append(el("pre", lines.join("\n")));
      li.append(details);
    }
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
