import { test } from "node:test";
import assert from "node:assert/strict";
import { deadColor } from "../src/layers.js";

const thresholds = { suspect: 0.5, dead: 0.6, modules: ["ReLU", "ReLU6"] };

test("a dead-unit bar is coloured by the rule's own bars: healthy below the suspicion, amber, then red", () => {
  assert.equal(deadColor(0.45, thresholds), "#1f6fb4");  // the healthy demo's hidden layer
  assert.equal(deadColor(0.55, thresholds), "#e8a30a");
  assert.equal(deadColor(0.7, thresholds), "#c5221f");
});

import { isWeight } from "../src/layers.js";

test("the ratio panel reads weight tensors as the update-ratio rule does", () => {
  const norms = ["Norm"];
  assert.ok(isWeight("features.0.weight", "Conv2d", norms));
  assert.ok(isWeight("lstm.weight_hh_l0", "LSTM", norms));
  assert.ok(isWeight("attn.in_proj_weight", "MultiheadAttention", norms));
  assert.ok(!isWeight("features.0.bias", "Conv2d", norms));
  assert.ok(!isWeight("bn1.weight", "BatchNorm2d", norms));
});

import { unitRows } from "../src/layers.js";

test("ReLU layers read as dead units, saturating ones (tanh, GELU) as saturated, a final sigmoid grey", () => {
  const t = { suspect: 0.5, dead: 0.6, modules: ["ReLU", "ReLU6"], saturated: 0.6, bounded: ["Tanh", "Sigmoid"] };
  const act = (layer, module, extra) => ({ signal: "activation", layer, module, units: 10, dead_units: 0,
    sat_frac: null, zero_frac: 0.4, ...extra });
  const rows = unitRows([
    act("1", "ReLU", { dead_units: 7 }), act("3", "GELU", { sat_frac: 0.02, units: null }),
    act("4", "GELU", { units: null, sat_frac: NaN }),  // no finite input to judge: not drawn, not "leaky"
    act("5", "LeakyReLU"), act("6", "Tanh", { sat_frac: 0.7 }), act("8", "Sigmoid", { sat_frac: 0.9 }),
    { signal: "output_grad", layer: "1", module: "ReLU", sat_frac: 0.9 },
    act("9", "Linear", { units: null, dead_units: null }),  // a layer's output, not an activation function's
  ], t);
  assert.deepEqual(rows.dead.layer, ["1 · ReLU"]);
  assert.deepEqual(rows.dead.dead_frac, [0.7]);
  assert.deepEqual(rows.dead.color, ["#c5221f"]);
  assert.deepEqual(rows.saturated.layer, ["3 · GELU", "6 · Tanh", "8 · Sigmoid · output"]);
  assert.deepEqual(rows.saturated.color, ["#1f6fb4", "#c5221f", "#9aa0a6"]);  // healthy GELU is never red
  assert.deepEqual(rows.saturated.bar, [0.6, 0.6, 0.6]);
  assert.deepEqual(rows.factors, ["8 · Sigmoid · output", "6 · Tanh", "3 · GELU", "1 · ReLU"]);
  assert.deepEqual(rows.others, ["LeakyReLU"]);
});

import { frozenNote } from "../src/layers.js";

test("tensors that did not move are named, a long list shortened", () => {
  assert.match(frozenNote(["fc1.weight"]), /^fc1.weight did not move at its latest sampled step/);
  const many = frozenNote(["a", "b", "c", "d", "e", "f"]);
  assert.match(many, /^a, b, c, d and 2 more did not move at their latest/);
  assert.match(many, /no gradient reaches them/);
});
