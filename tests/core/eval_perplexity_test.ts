// perplexity.ts: the windowed protocol's inputs, checked before anything is scored.
import assert from "node:assert/strict";
import {
  cacheShape,
  CapacityError,
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

Deno.test("perplexity() names null options, a missing model and a bad onProgress (were TypeErrors)", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  const ids = [[1, 403, 2]];
  const cases: [() => Promise<unknown>, RegExp][] = [
    [() => perplexity(model, cache, ids, never(null)), /^options is null, expected an object$/],
    [() => perplexity(model, cache, ids, never(8)), /^options is 8, expected an object$/],
    [
      () => perplexity(never(undefined), cache, ids),
      /^model is undefined, expected a Transformer$/,
    ],
    [() => perplexity(never(cache), never(model), ids), /^model is Float32KVCache, expected a/],
    [
      () => perplexity(model, cache, ids, { onProgress: never("log") }),
      /^options.onProgress is "log", expected a function$/,
    ],
    [
      () => perplexity(model, cache, [[1, 2], never(3)]),
      /^sequences is Array, expected an array of token id arrays \(sequences\[1\] is 3\)$/,
    ],
  ];
  for (const [call, message] of cases) {
    await assert.rejects(
      call,
      (e) => e instanceof InvalidValueError && message.test(e.message),
      String(message),
    );
  }
});

Deno.test("perplexity() checks every window fits and every token id before scoring any", async () => {
  const { model, sequences } = await loadFixture();
  const long = sequences.flat().slice(0, 600); // over the model's 512 positions
  const short = [1, 403, 407];
  const cases: [number[][], number | undefined, number, typeof ShapeError, RegExp][] = [
    // was ShapeError("position 512 …") from prefill, after the short sequence was scored
    [
      [short, long],
      1000,
      1024,
      ShapeError,
      /^sequences\[1\] needs windows of 600 positions, the model's context is 512 \(pass a smaller context\)$/,
    ],
    // the cache, not the model, is too small: CapacityError, as prefill threw it
    [
      [short, long],
      64,
      16,
      CapacityError,
      /^sequences\[1\] needs windows of 64 positions, the cache holds 16/,
    ],
    [
      [short, [1, 2, 9999]],
      8,
      16,
      ShapeError,
      /^sequences\[1\]\[2\] is token id 9999, out of range/,
    ],
    [[short, [1, 2, never("3")]], 8, 16, ShapeError, /^sequences\[1\]\[2\] is token id "3"/],
    [[short], never("8"), 16, ShapeError, /^context is "8", expected an integer ≥ 2$/],
  ];
  for (const [seqs, context, maxSeqLen, cls, message] of cases) {
    const cache = new Float32KVCache(cacheShape(model.config, maxSeqLen));
    let progress = 0;
    await assert.rejects(
      () => perplexity(model, cache, seqs, { context, onProgress: () => progress++ }),
      (e) => e instanceof cls && message.test((e as Error).message),
      String(message),
    );
    assert.equal(progress, 0, `${message}: nothing scored or reported`);
  }
});

function never<T>(v: unknown): T {
  return v as T;
}
