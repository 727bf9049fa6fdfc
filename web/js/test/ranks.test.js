import { test } from "node:test";
import assert from "node:assert/strict";
import { foldRanks, jobOf, rankRuns } from "../src/ranks.js";

test("a rank's run id names its job and rank; a plain run is its own job's rank 0", () => {
  assert.deepEqual(jobOf("ddp-20261201-120000-ab12.r3"), { job: "ddp-20261201-120000-ab12", rank: 3 });
  assert.deepEqual(jobOf("digits.resnet-20261201-120000-ab12"), { job: "digits.resnet-20261201-120000-ab12", rank: 0 });
});

test("a job's run ids start with rank 0's", () => {
  assert.deepEqual(rankRuns("j", 3), ["j", "j.r1", "j.r2"]);
  assert.deepEqual(rankRuns("j", 1), ["j"]);
});

test("the other ranks fold into rank 0's row, in rank order; a rank without its rank 0 stays", () => {
  const runs = [
    { run: "j.r2", rank: 2, world: 3 }, { run: "solo", rank: 0, world: 1 }, { run: "j", rank: 0, world: 3 },
    { run: "j.r1", rank: 1, world: 3 }, { run: "orphan.r1", rank: 1, world: 2 },
  ];
  const rows = foldRanks(runs);
  assert.deepEqual(rows.map((r) => r.run), ["solo", "j", "orphan.r1"]);
  assert.deepEqual(rows[1].ranks.map((r) => r.run), ["j", "j.r1", "j.r2"]);
  assert.equal(rows[0].ranks, undefined);
});
