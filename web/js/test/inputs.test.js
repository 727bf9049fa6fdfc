import { test } from "node:test";
import assert from "node:assert/strict";
import { idRows } from "../src/inputs.js";

test("integer input reads as ids of a vocabulary, distinct ids and padding", () => {
  const rows = Object.fromEntries(idRows({ min: 0, max: 49, vocab: 50, distinct: 43, padding: 0.125, pad_id: 0,
    shape: [8, 32] }));
  assert.equal(rows.ids, "0..49 of a vocabulary of 50");
  assert.equal(rows["distinct in the batch"], "43 (86 % of the vocabulary)");
  assert.equal(rows.padding, "12.5 % of the positions (id 0, the embedding's padding_idx)");
  assert.equal(rows.batch, "8×32");
  assert.equal(rows["out of range"], undefined);
});

test("without a padding_idx the padding is said to be undetectable, and an id past the vocabulary is named", () => {
  const rows = Object.fromEntries(idRows({ min: 3, max: 100, vocab: 100, distinct: 1, padding: null, pad_id: null,
    shape: [4] }));
  assert.match(rows.padding, /not detectable/);
  assert.match(rows["out of range"], /id 100 is beyond the embedding's 100 rows/);
  assert.equal(rows["distinct in the batch"], "1 (1 % of the vocabulary)");
});
