import { test } from "node:test";
import assert from "node:assert/strict";
import { configCell, differingKeys, flagKinds, keeps } from "../src/runlist.js";

const runs = [
  { run: "a-1", name: "a", status: "finished", config: { lr: 1, batch: 32, script: "t.py" } },
  { run: "a-2", name: "a", status: "diverged", config: { lr: 0.001, batch: 32, script: "t.py", momentum: 0.9 } },
];

test("only the hyper-parameters that differ become columns, a key one run lacks included", () => {
  assert.deepEqual(differingKeys(runs), ["lr", "momentum"]);
  assert.deepEqual(differingKeys([runs[0]]), []);
});

test("config values read at a glance", () => {
  assert.equal(configCell(0.001), "0.001");
  assert.equal(configCell(1), "1");
  assert.equal(configCell(0.123456), "0.123");
  assert.equal(configCell([0.9, 0.999]), "[0.9,0.999]");
  assert.equal(configCell(undefined), "–");
});

test("the filters keep runs by status and by text in the id, name or config", () => {
  assert.deepEqual(runs.filter((r) => keeps(r, { status: "diverged" })).map((r) => r.run), ["a-2"]);
  assert.deepEqual(runs.filter((r) => keeps(r, { text: "0.001" })).map((r) => r.run), ["a-2"]);
  assert.deepEqual(runs.filter((r) => keeps(r, { text: "A-1" })).map((r) => r.run), ["a-1"]);
  assert.equal(runs.filter((r) => keeps(r, {})).length, 2);
});

test("the kind filter keeps the runs that raised a flag of that kind", () => {
  const flagged = [{ run: "x", flag_kinds: ["dead_relu", "plateau"] }, { run: "y", flag_kinds: ["divergence"] },
    { run: "z", flag_kinds: [] }];
  assert.deepEqual(flagKinds(flagged), ["dead_relu", "divergence", "plateau"]);
  assert.deepEqual(flagged.filter((r) => keeps(r, { kind: "plateau" })).map((r) => r.run), ["x"]);
});
