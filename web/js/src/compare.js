// The compare page: the loss and validation loss of several runs overlaid.
import { getJSON } from "./codec.js";
import { bokehModels } from "./models.js";
import { ScalarSeries } from "./series.js";
import { el } from "./format.js";
import { configCell, differingKeys } from "./runlist.js";
import { PALETTE } from "./models.js";

const RUNS = (document.body.dataset.runs || "").split(",").filter(Boolean);

async function main() {
  document.getElementById("connection").textContent = "";
  if (!RUNS.length) return;
  const names = RUNS.flatMap((_, i) => [`cmp_loss_${i}`, `cmp_val_${i}`]);
  const models = await bokehModels([...names, "loss_linear", "loss_log"]);
  const slider = document.getElementById("smoothing");
  const series = [];
  await Promise.all(RUNS.map(async (run, i) => {
    const data = await getJSON(`/api/runs/${encodeURIComponent(run)}/series?names=loss,val_loss`);
    const train = new ScalarSeries(models[`cmp_loss_${i}`], Number(slider.value));
    const val = new ScalarSeries(models[`cmp_val_${i}`], 0);  // validation points as they are
    train.load(data.loss);
    val.load(data.val_loss);
    series.push(train);
  }));
  showConfigDifferences(await getJSON("/api/runs"));
  slider.addEventListener("input", () => {
    document.getElementById("smoothing-value").textContent = Number(slider.value).toFixed(2);
    for (const s of series) s.setWeight(Number(slider.value));
  });
  document.getElementById("log-scale").addEventListener("change", (e) => {
    models.loss_linear.visible = !e.target.checked;
    models.loss_log.visible = e.target.checked;
  });
}

// The hyper-parameters that differ between the compared runs, one row per run in its colour.
function showConfigDifferences(all) {
  const byId = new Map(all.map((r) => [r.run, r]));
  const runs = RUNS.map((id) => byId.get(id) || { run: id, config: {} });
  const keys = differingKeys(runs, 12);
  const table = document.getElementById("config-diff");
  const note = document.getElementById("config-same");
  table.hidden = keys.length === 0;
  note.hidden = keys.length > 0;
  const head = el("tr");
  head.append(el("th", "run"), ...keys.map((k) => el("th", k)));
  table.querySelector("thead").replaceChildren(head);
  table.querySelector("tbody").replaceChildren(...runs.map((r, i) => {
    const tr = el("tr");
    const name = el("td", r.run);
    name.style.borderLeft = `4px solid ${PALETTE[i % PALETTE.length]}`;
    tr.append(name, ...keys.map((k) => el("td", configCell((r.config || {})[k]))));
    return tr;
  }));
}

main().catch((err) => console.error(err));
