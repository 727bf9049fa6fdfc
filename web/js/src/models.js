// Finding the page's Bokeh models by name, and feeding their data sources. (Our code; BokehJS
// itself is served from the installed bokeh package.) Bokeh embeds its documents
// asynchronously after the page loads; wait for them.

export async function bokehModels(names, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const docs = (window.Bokeh && window.Bokeh.documents) || [];
    const found = {};
    for (const name of names) {
      for (const doc of docs) {
        const model = doc.get_model_by_name(name);
        if (model) { found[name] = model; break; }
      }
    }
    if (Object.keys(found).length === names.length) return found;
    if (Date.now() > deadline) {
      const missing = names.filter((n) => !(n in found));
      throw new Error(`Bokeh models not found: ${missing.join(", ")}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

// Replace a source's data (a whole new snapshot: history loaded, a histogram).
export function setData(source, columns) {
  source.data = columns;
}

// Append rows (columns of equal length) to a source; Bokeh redraws only what is new.
export function stream(source, columns) {
  const first = Object.values(columns)[0];
  if (first && first.length) source.stream(columns);
}

export function length(source) {
  const first = Object.values(source.data)[0];
  return first ? first.length : 0;
}

// Categorical colours for layers (Tableau 10 ordering, as Bokeh's Category10).
export const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];

// Legend entries only for what is drawn: an entry whose glyphs' sources are all empty is
// hidden ("flags" on a run without flags, "train" on a metric only validated).
export function syncLegends() {
  for (const doc of (window.Bokeh && window.Bokeh.documents) || []) {
    for (const model of doc.all_models) {
      if (model.items === undefined || model.click_policy === undefined) continue;  // a Legend
      for (const item of model.items) {
        const drawn = item.renderers.some((r) => r.data_source && length(r.data_source) > 0);
        if (item.visible !== drawn) item.visible = drawn;
      }
    }
  }
}
