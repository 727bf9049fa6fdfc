import { test } from "node:test";
import assert from "node:assert/strict";
import { deadColor } from "../src/layers.js";

const thresholds = { suspect: 0.5, dead: 0.6, modules: ["ReLU", "ReLU6"] };

test("a dead-unit bar is coloured by the rule's own bars: healthy below the suspicion, amber, then red", () => {
  assert.equal(deadColor(0.45, thresholds), "#1f6fb4");  // the healthy demo's hidden layer
  assert.equal(deadColor(0.55, thresholds), "#e8a30a");
  assert.equal(deadColor(0.7, thresholds), "#c5221f");
});
