// A scalar series in a Bokeh source with columns step, value, smooth: history from the
// server (downsampled), live points streamed after it, smoothing recomputed on demand.
import { Smoother } from "./smoothing.js";
import { length, setData, stream } from "./models.js";

// Points a live series may gain before it is reloaded, downsampled, from the server:
// the page's cost stays flat however long the run, and no point of the history is lost.
export const COMPACT_AT = 20000;

export class ScalarSeries {
  constructor(source, weight) {
    this.source = source;
    this.weight = weight;
    this.load(null);
  }

  // History: {step: [...], value: [...]} as /api/runs/<run>/series returns it.
  load(history) {
    const step = history ? history.step : [];
    const value = history ? history.value : [];
    this.smoother = new Smoother(this.weight);
    const smoothed = value.map((v) => this.smoother.push(v));
    this.lastStep = step.length ? step[step.length - 1] : -Infinity;
    setData(this.source, { step: [...step], value: [...value], smooth: smoothed });
  }

  // Live points in step order; one already drawn (the history overlaps the stream) is skipped.
  push(points) {
    const step = [], value = [], smoothed = [];
    for (const [s, v] of points) {
      if (s <= this.lastStep) continue;
      this.lastStep = s;
      step.push(s);
      value.push(v);
      smoothed.push(this.smoother.push(v));
    }
    stream(this.source, { step, value, smooth: smoothed });
    return length(this.source) > COMPACT_AT;
  }

  setWeight(weight) {
    this.weight = weight;
    this.smoother = new Smoother(weight);
    const data = this.source.data;
    const smoothed = Array.from(data.value, (v) => this.smoother.push(v));
    setData(this.source, { step: data.step, value: data.value, smooth: smoothed });
  }

  // The drawn value at (or just before) `step`, for placing a flag marker on the curve.
  valueAt(step) {
    const steps = this.source.data.step, values = this.source.data.smooth;
    let lo = 0, hi = steps.length - 1, best = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (steps[mid] <= step) { best = mid; lo = mid + 1; } else hi = mid - 1;
    }
    for (let i = best; i >= 0; i--) if (Number.isFinite(values[i])) return values[i];
    for (let i = Math.max(best, 0); i < values.length; i++) if (Number.isFinite(values[i])) return values[i];
    return NaN;
  }
}
