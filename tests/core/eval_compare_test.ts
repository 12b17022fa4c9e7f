// compareCache's per-window KL and the sign test the eval uses to compare rows window by window.
import assert from "node:assert/strict";
import {
  cacheShape,
  compareCache,
  Float32KVCache,
  InvalidValueError,
  klDivergence,
  measureCacheBits,
  MixedPrecisionKVCache,
  referenceRun,
  ShapeError,
  signTest,
  uniformPolicy,
} from "../../mod.ts";
import { loadFixture } from "../_fixtures.ts";
import { makeRng as rng } from "./_rng.ts";

/** Two-sided sign-test p-value by direct summation of binomial coefficients (BigInt, exact). */
function signTestReference(lower: number, higher: number): number {
  const n = lower + higher, k = Math.min(lower, higher);
  let c = 1n, tail = 0n;
  for (let i = 0; i <= k; i++) {
    if (i > 0) c = (c * BigInt(n - i + 1)) / BigInt(i);
    tail += c;
  }
  return Math.min(1, (2 * Number(tail)) / 2 ** n);
}

Deno.test("signTest() counts paired wins and gives the exact binomial p-value", () => {
  const r = rng(61);
  for (
    const [lower, higher, ties] of [[17, 2, 0], [10, 10, 3], [0, 5, 1], [40, 25, 0], [1, 0, 0]]
  ) {
    const a: number[] = [], b: number[] = [];
    const push = (x: number, y: number) => (a.push(x), b.push(y));
    for (let i = 0; i < lower; i++) push(r(), 1 + r());
    for (let i = 0; i < higher; i++) push(1 + r(), r());
    for (let i = 0; i < ties; i++) push(0.5, 0.5);
    const t = signTest(a, b);
    assert.deepEqual([t.lower, t.higher, t.ties], [lower, higher, ties]);
    const want = signTestReference(lower, higher);
    assert.ok(Math.abs(t.p - want) <= 1e-12 * want, `${lower}/${higher}: ${t.p} vs ${want}`);
  }
  // 17 of 19: p = 2·(1 + 19 + 171)/2^19
  assert.ok(
    Math.abs(signTest([...Array(17).fill(0), 1, 1], Array(19).fill(0.5)).p - 382 / 524288) < 1e-15,
  );
  assert.equal(signTest([1, 2], [1, 2]).p, 1, "all ties: no evidence either way");
  assert.throws(() => signTest([1, 2], [1]), ShapeError);
  assert.throws(
    () => signTest([1, NaN, 3], [1, 2, 3]),
    (e: Error) => e instanceof InvalidValueError && e.index === 1,
  );
});

Deno.test("compareCache() reports each window's mean KL, which weight back to the overall mean", async () => {
  const { model, sequences } = await loadFixture();
  const seqs = [sequences[0].slice(0, 150), sequences[1].slice(0, 90)];
  const reference = await referenceRun(
    model,
    new Float32KVCache(cacheShape(model.config)),
    seqs,
    64,
  );
  const policy = uniformPolicy({ keyFormat: "int4-g32-channel", valueFormat: "int4-g8-token" });
  const cache = new MixedPrecisionKVCache(cacheShape(model.config), policy, { backend: "wasm" });
  const q = await compareCache(model, cache, reference);
  assert.equal(q.windowKl.length, reference.windows.length);
  assert.ok(reference.windows.length >= 3, "several windows");
  // an independent recomputation of one window's KL from the logits
  const w = reference.windows[1], V = model.config.vocabSize;
  cache.reset();
  const logits = await model.prefill(w.tokens, 0, cache);
  let kl = 0;
  for (let i = 0; i + 1 < w.tokens.length; i++) {
    kl += klDivergence(w.logits.subarray(i * V, (i + 1) * V), logits.subarray(i * V, (i + 1) * V));
  }
  assert.ok(Math.abs(q.windowKl[1] - kl / (w.tokens.length - 1)) <= 1e-12 * kl);
  let sum = 0;
  reference.windows.forEach((x, i) => (sum += q.windowKl[i] * (x.tokens.length - 1)));
  assert.ok(Math.abs(sum / q.tokens - q.meanKl) <= 1e-12 * q.meanKl);
  assert.ok(q.windowKl.every((x) => x > 0), "int4 moves every window's distributions");
});

Deno.test("klDivergence() rejects logits of unequal length or with a NaN (was NaN)", () => {
  assert.throws(
    () => klDivergence(Float32Array.of(1, 2, 3), Float32Array.of(1, 2)),
    (e) => e instanceof ShapeError && /logits of 3 and 2 tokens/.test(e.message),
  );
  assert.throws(
    () => klDivergence(Float32Array.of(1, 2), Float32Array.of(1, NaN)),
    (e) => e instanceof InvalidValueError && e.index === 1 && /q\[1\] is NaN/.test(e.message),
  );
});

Deno.test("compareCache() and measureCacheBits() refuse input with nothing to measure (was NaN)", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  await assert.rejects(
    () => compareCache(model, cache, { context: 8, windows: [] }),
    (e) => e instanceof ShapeError && /reference has no token to score/.test(e.message),
  );
  // A reference from a model with another vocabulary: its logits do not line up.
  await assert.rejects(
    () =>
      compareCache(model, cache, {
        context: 8,
        windows: [{ tokens: [1, 2], logits: new Float32Array(6) }],
      }),
    (e) =>
      e instanceof ShapeError &&
      /reference window 0 has 6 logits, expected 2 × 512/.test(e.message),
  );
  for (const sequences of [[], [[]]]) {
    await assert.rejects(
      () => measureCacheBits(model, cache, sequences),
      (e) => e instanceof ShapeError && /no tokens to measure/.test(e.message),
      JSON.stringify(sequences),
    );
  }
});
