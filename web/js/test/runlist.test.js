import { test } from "node:test";
import assert from "node:assert/strict";
import { configCell, differingKeys, flagKinds, groupBySweep, keeps, shownConfig } from "../src/runlist.js";

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

test("a sweep's trials are grouped where its newest trial is, their parameters shown as columns", () => {
  const trial = (n, lr) => ({ run: `s-00${n}-x`, config: { sweep: "s", trial: n, params: { lr }, space: ["lr=..."],
    args: ["--lr", String(lr)], objective: "val_loss", lr: 0.5, script: "t.py" } });
  const plain = { run: "p", config: { lr: 1 } };
  const groups = groupBySweep([trial(2, 0.1), plain, trial(1, 0.01), { run: "q", config: { sweep: "s" } }]);
  assert.deepEqual(groups.map((g) => [g.sweep, g.runs.map((r) => r.run)]),
    [["s", ["s-002-x", "s-001-x"]], [null, ["p"]], [null, ["q"]]]);  // a run tagged --sweep alone is no trial
  assert.deepEqual(shownConfig(trial(1, 0.01).config), { trial: 1, lr: 0.01, script: "t.py" });  // the drawn lr wins
  assert.deepEqual(shownConfig(plain.config), { lr: 1 });
  assert.deepEqual(differingKeys([trial(1, 0.01), trial(2, 0.1)].map((r) => ({ config: shownConfig(r.config) }))),
    ["trial", "lr"]);
});
