import assert from "node:assert/strict";
import { matchingPrefix } from "../../bench/eval_measure.ts";

Deno.test("matchingPrefix() counts tokens up to the first difference, not equal tokens after it", () => {
  const reference = [5, 6, 7, 8, 9, 10];
  const cases: [number[], number, number][] = [
    [[5, 6, 7, 8, 9, 10], 6, 6],
    [[5, 6, 1, 8, 9, 10], 6, 2], // positions 3–5 agree again by coincidence: not counted
    [[1, 6, 7, 8, 9, 10], 6, 0],
    [[5, 6, 7, 8, 9, 10], 4, 4], // at most `steps`
    [[5, 6, 7], 6, 3], // a shorter continuation ends the count
  ];
  for (const [ids, steps, want] of cases) {
    assert.equal(matchingPrefix(ids, reference, steps), want, JSON.stringify(ids));
  }
});
