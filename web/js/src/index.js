// The runs index: every run with its status, last loss, flags, start and duration. The
// server tells the page when runs change (room "index" on /dashboard); the page then
// reloads the list, at most once per RELOAD_MS.
import { getJSON } from "./codec.js";
import { connect, request } from "./live.js";
import { RESYNC, RUNS_CHANGED, WATCH_RUNS } from "./protocol.js";
import { clock, duration, el, num } from "./format.js";
import { foldRanks, rankRuns } from "./ranks.js";
import { configCell, differingKeys, flagKinds, groupBySweep, keeps, shownConfig } from "./runlist.js";

const RELOAD_MS = 500;
// A lost run (its training process went silent) is not active: its duration stops at
// the last thing heard from it.
const ACTIVE = new Set(["running", "stopping"]);
const selected = new Set();
let runs = [];
let reloadTimer = null;

async function reload() {
  reloadTimer = null;
  runs = foldRanks(await getJSON("/api/runs"));  // a job's ranks are one row: rank 0's
  render();
}

function scheduleReload() {
  if (reloadTimer === null) reloadTimer = setTimeout(() => reload().catch(console.error), RELOAD_MS);
}

function filters() {
  return { text: document.getElementById("filter").value, status: document.getElementById("status-filter").value,
    kind: document.getElementById("kind-filter").value };
}

// The kind filter offers the kinds the runs raised (its choice kept across reloads).
function offerKinds() {
  const select = document.getElementById("kind-filter");
  const chosen = select.value;
  const kinds = flagKinds(runs);
  const options = [el("option", "any"), ...kinds.map((k) => el("option", k))];
  options[0].value = "";
  select.replaceChildren(...options);
  select.value = kinds.includes(chosen) ? chosen : "";
  select.parentElement.hidden = kinds.length === 0;
}

function render() {
  offerKinds();
  const body = document.querySelector("#runs tbody");
  const now = Date.now() / 1000;
  const shown = runs.filter((r) => keeps(r, filters()));
  const configs = new Map(shown.map((r) => [r.run, shownConfig(r.config)]));
  const keys = differingKeys(shown.map((r) => ({ config: configs.get(r.run) })));  // what tells these runs apart
  const head = document.querySelector("#runs thead tr");
  head.querySelectorAll("th.config").forEach((th) => th.remove());
  for (const k of keys) head.append(el("th", k, "config"));
  const row = (r) => {
    const tr = el("tr");
    tr.dataset.run = r.run;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = selected.has(r.run);
    box.setAttribute("aria-label", `select ${r.run} to compare`);
    box.addEventListener("change", () => { box.checked ? selected.add(r.run) : selected.delete(r.run); updateCompare(); });
    const link = el("a", r.run);
    link.href = `/runs/${encodeURIComponent(r.run)}`;
    const tick = el("td"); tick.append(box);
    const name = el("td"); name.append(link);
    if (r.name && r.name !== r.run) name.append(el("div", r.name, "muted"));
    const status = el("td"); status.append(el("span", r.status, `badge ${r.status}`));
    if (r.status === "lost" && r.lost_reason) status.title = `lost at ${clock(r.lost_at)}: ${r.lost_reason}`;
    const end = ACTIVE.has(r.status) ? now : r.updated;
    tr.append(tick, name, status, el("td", r.last_loss === null ? "–" : num(r.last_loss)),
      el("td", r.last_step.toLocaleString()), el("td", r.flags, r.flags ? "flagged" : ""),
      el("td", clock(r.started)), el("td", duration(end - r.started)),
      hostCell(r), ...keys.map((k) => el("td", configCell(configs.get(r.run)[k]), "config")));
    return tr;
  };
  const columns = head.children.length;
  body.replaceChildren(...groupBySweep(shown).flatMap((group) => {
    if (group.sweep === null) return group.runs.map(row);
    return [sweepRow(group, columns), ...group.runs.map(row)];
  }));
  document.getElementById("empty").hidden = runs.length > 0;
  const hidden = runs.length - shown.length;
  const note = document.getElementById("filtered");
  note.hidden = hidden === 0;
  note.textContent = `${hidden} run${hidden === 1 ? "" : "s"} hidden by the filter`;
  updateCompare();
}

// A sweep's heading row above its trials: a link to its page, how many trials and how they stand.
function sweepRow(group, columns) {
  const tr = el("tr", null, "group");
  tr.dataset.sweep = group.sweep;
  const cell = el("td");
  cell.colSpan = columns;
  const link = el("a", `sweep ${group.sweep}`);
  link.href = `/sweeps/${encodeURIComponent(group.sweep)}`;
  const active = group.runs.filter((r) => ACTIVE.has(r.status)).length;
  cell.append(link, el("span", ` · ${group.runs.length} trial${group.runs.length === 1 ? "" : "s"}` +
    (active ? `, ${active} running` : ""), "muted"));
  tr.append(cell);
  return tr;
}

function hostCell(r) {
  if (!r.ranks) return el("td", r.world > 1 ? `${r.host} (rank ${r.rank}/${r.world})` : r.host);
  const cell = el("td", `${r.host} · job of ${r.ranks.length} ranks `);
  const compare = el("a", "compare ranks");
  compare.href = `/compare?runs=${rankRuns(r.run, r.world).map(encodeURIComponent).join(",")}`;
  const states = new Set(r.ranks.map((m) => m.status));
  if (states.size > 1) cell.title = r.ranks.map((m) => `rank ${m.rank}: ${m.status}`).join(", ");
  cell.append(compare);
  return cell;
}

function updateCompare() {
  const button = document.getElementById("compare");
  button.disabled = selected.size < 2;
}

document.getElementById("filter").addEventListener("input", render);
document.getElementById("status-filter").addEventListener("change", render);
document.getElementById("kind-filter").addEventListener("change", render);

document.getElementById("compare").addEventListener("click", () => {
  const chosen = runs.map((r) => r.run).filter((r) => selected.has(r));
  window.location.href = `/compare?runs=${chosen.map(encodeURIComponent).join(",")}`;
});

connect(async (socket) => {
  await request(socket, WATCH_RUNS, null);
  await reload();
}).on(RUNS_CHANGED, scheduleReload).on(RESYNC, scheduleReload);  // resync: news were dropped
setInterval(() => { if (runs.some((r) => ACTIVE.has(r.status))) render(); }, 1000);
reload().catch(console.error);
