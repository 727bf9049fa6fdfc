// The compare page: the loss and validation loss of several runs overlaid.
import { getJSON } from "./codec.js";
import { bokehModels } from "./models.js";
import { ScalarSeries } from "./series.js";

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
    const val = new ScalarSeries(models[`cmp_val_${i}`], Number(slider.value));
    train.load(data.loss);
    val.load(data.val_loss);
    series.push(train, val);
  }));
  slider.addEventListener("input", () => {
    document.getElementById("smoothing-value").textContent = Number(slider.value).toFixed(2);
    for (const s of series) s.setWeight(Number(slider.value));
  });
  document.getElementById("log-scale").addEventListener("change", (e) => {
    models.loss_linear.visible = !e.target.checked;
    models.loss_log.visible = e.target.checked;
  });
}

main().catch((err) => console.error(err));
