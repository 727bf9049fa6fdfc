import { test } from "node:test";
import assert from "node:assert/strict";
import { smooth, Smoother } from "../src/smoothing.js";
import { parse } from "../src/codec.js";

test("weight 0 leaves the values as they are", () => {
  assert.deepEqual(smooth([3, 1, 2], 0), [3, 1, 2]);
});

test("the first smoothed point equals the first value (debiased, not pulled to zero)", () => {
  assert.equal(smooth([10, 10, 10], 0.9)[0], 10);
  assert.ok(Math.abs(smooth([10, 10, 10], 0.9)[2] - 10) < 1e-12);
});

test("smoothing matches the debiased moving average by hand", () => {
  const w = 0.5;
  // last: 0.5*1=0.5 -> /0.5 = 1; then 0.25+0.5*3=1.75 -> /(1-0.25) = 2.333...
  const out = smooth([1, 3], w);
  assert.equal(out[0], 1);
  assert.ok(Math.abs(out[1] - 1.75 / 0.75) < 1e-12);
});

test("a NaN passes through and does not poison the average", () => {
  const out = smooth([1, NaN, 1], 0.6);
  assert.ok(Number.isNaN(out[1]));
  assert.ok(Math.abs(out[2] - 1) < 1e-12);
});

test("streaming one point at a time gives the same as smoothing the whole series", () => {
  const values = [5, 4, Infinity, 3.5, 3, 2.9, NaN, 2.5];
  const s = new Smoother(0.8);
  assert.deepEqual(values.map((v) => s.push(v)), smooth(values, 0.8));
});

test("the codec restores NaN and infinities and leaves other objects alone", () => {
  const v = parse('{"a":{"$float":"nan"},"b":[{"$float":"inf"},{"$float":"-inf"}],"c":{"$float":"x"},"d":1}');
  assert.ok(Number.isNaN(v.a));
  assert.equal(v.b[0], Infinity);
  assert.equal(v.b[1], -Infinity);
  assert.deepEqual(v.c, { $float: "x" });
  assert.equal(v.d, 1);
});
