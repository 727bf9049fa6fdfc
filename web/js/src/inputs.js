// The input panel's reading of integer input (token or category ids, read where the model
// embeds them): mean and std of ids mean nothing, so the panel shows which ids, how many
// distinct ones, and how much of the batch is padding (monitor/events.py: InputStats).
import { el } from "./format.js";

const percent = (share) => `${Number((100 * share).toPrecision(share < 0.1 ? 2 : 3))} %`;

// [label, value] rows for one integer InputStats reading.
export function idRows(d) {
  const rows = [["ids", `${d.min}..${d.max}` + (d.vocab ? ` of a vocabulary of ${d.vocab}` : "")]];
  if (d.vocab && d.max >= d.vocab) rows.push(["out of range", `id ${d.max} is beyond the embedding's ${d.vocab} rows`]);
  const distinct = d.distinct === null || d.distinct === undefined ? "–" : String(d.distinct);
  rows.push(["distinct in the batch", d.vocab && d.distinct ? `${distinct} (${percent(d.distinct / d.vocab)} of the vocabulary)`
    : distinct]);
  rows.push(["padding", d.padding === null || d.padding === undefined
    ? "not detectable: the embedding declares no padding_idx"
    : `${percent(d.padding)} of the positions (id ${d.pad_id}, the embedding's padding_idx)`]);
  rows.push(["batch", d.shape.join("×")]);
  return rows;
}

export function showIds(table, d) {
  const body = table.tBodies[0];
  body.replaceChildren(...idRows(d).map(([label, value]) => {
    const row = el("tr");
    row.append(el("th", label), el("td", value));
    return row;
  }));
  table.hidden = false;
}
