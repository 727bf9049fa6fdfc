import { test } from "node:test";
import assert from "node:assert/strict";
import { VIRIDIS, colourFor, curveRange, curveRows, markHeight, positionOn, ramp, scatterRows, summaryLine } from "../src/sweepview.js";

const LR = { name: "lr", distribution: "loguniform", low: 1e-4, high: 1, log: true, choices: [] };
const BS = { name: "bs", distribution: "choice", low: null, high: null, log: false, choices: [32, 64, 128] };
const WD = { name: "wd", distribution: "uniform", low: 0, high: 0.5, log: false, choices: [] };

test("a value's place in its range is read on the dimension's own scale", () => {
  assert.equal(positionOn(LR, 1e-2), 0.5);  // two decades of four
  assert.equal(positionOn(WD, 0.125), 0.25);
  assert.equal(positionOn(BS, 64), 0.5);
  assert.equal(positionOn(LR, 10), 1);  // outside: clamped
  assert.equal(ramp(0), VIRIDIS[0]);
  assert.equal(ramp(1), VIRIDIS[VIRIDIS.length - 1]);
  assert.equal(colourFor(LR, 1e-4), VIRIDIS[0]);
  assert.notEqual(colourFor(BS, 32), colourFor(BS, 64));
});

const view = {
  direction: "minimize", best: 1, space: [LR],
  trials: [
    { number: 0, params: { lr: 1e-3 }, state: "complete", value: 0.5 },
    { number: 1, params: { lr: 1e-2 }, state: "complete", value: 0.1 },
    { number: 2, params: { lr: 0.9 }, state: "pruned", value: 2.3, reason: "divergence: ..." },
    { number: 3, params: { lr: 2e-4 }, state: "running", value: null },
  ],
};

test("the scatter shows complete trials by value, stars the best, marks the ended ones past the worst", () => {
  const rows = scatterRows(view, LR);
  assert.deepEqual(rows.done.trial, [0, 1]);
  assert.deepEqual(rows.best, { x: [1e-2], value: [0.1], trial: [1], label: ["lr=0.01"] });
  assert.deepEqual(rows.marked.trial, [2]);  // a running trial is not marked
  assert.equal(rows.marked.y[0], 1.0);  // twice the worst complete value
  assert.equal(rows.marked.reason[0], "divergence: ...");
  assert.ok(markHeight(view.trials, "maximize") < 0.1);  // an accuracy: below the worst
  assert.equal(summaryLine(view), "4 trials: 2 complete, 1 pruned, 1 running");
});

test("curves: ended trials faint, gaps for non-finite points, the axis fitted to the trials not ended", () => {
  const series = { 0: { step: [1, 2], value: [2, 0.5] }, 1: { step: [1, 2], value: [2, 0.1] },
    2: { step: [1, 2], value: [2, Infinity] } };
  const rows = curveRows(view.trials, (t) => series[t.number], view.space, LR);
  assert.deepEqual(rows.trial, [0, 1, 2]);  // no series yet for trial 3
  assert.deepEqual(rows.alpha, [0.9, 0.9, 0.35]);
  assert.ok(Number.isNaN(rows.ys[2][1]));
  const rows2 = { ...rows, ys: [...rows.ys.slice(0, 2), [2, 1e17]] };
  const range = curveRange(rows2);
  assert.ok(range.end < 10 && range.start < 0.1);  // the diverged trial's 1e17 does not set the axis
});
