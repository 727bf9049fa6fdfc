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
