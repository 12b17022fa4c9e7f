// perplexity.ts: the windowed protocol's inputs, checked before anything is scored.
import assert from "node:assert/strict";
import {
  cacheShape,
  Float32KVCache,
  InvalidValueError,
  logProbability,
  perplexity,
  scoringWindows,
  ShapeError,
} from "../../mod.ts";
import { loadFixture } from "../_fixtures.ts";

Deno.test("scoringWindows() rejects a sequence length that is not an integer ≥ 0", () => {
  assert.deepEqual(scoringWindows(0, 4), []);
  assert.deepEqual(scoringWindows(1, 4), []);
  for (const n of [NaN, -3, 2.5]) {
    assert.throws(
      () => scoringWindows(n, 4),
      (e) =>
        e instanceof ShapeError &&
        /sequence length is \S+, expected an integer ≥ 0/.test(e.message),
      String(n),
    );
  }
});

Deno.test("logProbability() rejects a target outside the logits (was NaN)", () => {
  const logits = Float32Array.of(1, 2, 3);
  assert.ok(
    Math.abs(logProbability(logits, 2) - (3 - Math.log(Math.exp(1) + Math.exp(2) + Math.exp(3)))) <
      1e-12,
  );
  for (const t of [3, -1, NaN, 0.5]) {
    assert.throws(
      () => logProbability(logits, t),
      (e) => e instanceof ShapeError && /target \S+ is outside \[0, 3\)/.test(e.message),
      String(t),
    );
  }
});

Deno.test("perplexity() refuses input with no token to score (was NaN)", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  for (const sequences of [[], [[1]], [[1], []]]) {
    await assert.rejects(
      () => perplexity(model, cache, sequences, { context: 8 }),
      (e) => e instanceof ShapeError && /no token to score/.test(e.message),
      JSON.stringify(sequences),
    );
  }
});

Deno.test("perplexity() names a cache or sequences given in the wrong place (was a TypeError)", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  const ids = [[1, 403, 2]];
  const cases: [unknown, unknown, RegExp][] = [
    [ids, cache, /cache is .*expected a KVCache/],
    [cache, cache, /sequences is .*expected an array of token id arrays/],
    [cache, [1, 2, 3], /sequences is .*expected an array of token id arrays/],
    [undefined, ids, /cache is undefined, expected a KVCache/],
  ];
  for (const [c, s, message] of cases) {
    await assert.rejects(
      () => perplexity(model, c as Float32KVCache, s as number[][]),
      (e) => e instanceof InvalidValueError && message.test(e.message),
      String(message),
    );
  }
});
