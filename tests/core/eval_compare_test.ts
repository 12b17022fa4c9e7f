// compareCache's per-window KL and the sign test the eval uses to compare rows window by window.
import assert from "node:assert/strict";
import {
  cacheShape,
  compareCache,
  Float32KVCache,
  InvalidValueError,
  klDivergence,
  logProbability,
  measureCacheBits,
  MixedPrecisionKVCache,
  referenceRun,
  ShapeError,
  signTest,
  Transformer,
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

Deno.test("compareCache(), referenceRun() and measureCacheBits() name arguments of the wrong kind (were TypeErrors)", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  const ids = [[1, 403, 407]];
  const reference = await referenceRun(model, cache, ids, 8);
  const never = <T>(v: unknown) => v as T;
  const calls: [string, () => Promise<unknown>, RegExp][] = [
    [
      "compareCache swapped",
      () => compareCache(model, never(reference), never(cache)),
      /^cache is Object, expected a KVCache$/,
    ],
    [
      "compareCache no reference",
      () => compareCache(model, cache, never(undefined)),
      /^reference is undefined, expected a ReferenceRun/,
    ],
    [
      "compareCache no model",
      () => compareCache(never(undefined), cache, reference),
      /^model is undefined, expected a Transformer$/,
    ],
    [
      "compareCache bad window",
      () => compareCache(model, cache, { context: 8, windows: [never(null)] }),
      /^reference window 0 is null, expected \{ tokens, logits \}$/,
    ],
    [
      "referenceRun no sequences",
      () => referenceRun(model, cache, never(undefined), 8),
      /^sequences is undefined, expected an array of token id arrays$/,
    ],
    [
      "referenceRun swapped",
      () => referenceRun(model, cache, never(8), never(ids)),
      /^sequences is number, expected an array of token id arrays$/,
    ],
    [
      "referenceRun no cache",
      () => referenceRun(model, never(undefined), ids, 8),
      /^cache is undefined, expected a KVCache$/,
    ],
    [
      "measureCacheBits no sequences",
      () => measureCacheBits(model, cache, never(undefined)),
      /^sequences is undefined, expected an array of token id arrays$/,
    ],
    [
      "measureCacheBits no cache",
      () => measureCacheBits(model, never(undefined), ids),
      /^cache is undefined, expected a KVCache$/,
    ],
  ];
  for (const [what, call, message] of calls) {
    await assert.rejects(
      call,
      (e) => e instanceof InvalidValueError && message.test(e.message),
      what,
    );
  }
  // with no sequence, no scoringWindows() call checked it: the run came back with context undefined
  await assert.rejects(
    () => referenceRun(model, cache, [], never(undefined)),
    (e) =>
      e instanceof ShapeError && /^context is undefined, expected an integer ≥ 2$/.test(e.message),
  );
});

Deno.test("compareCache() checks every window's tokens before scoring any", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  const good = await referenceRun(model, cache, [[1, 403, 407]], 8);
  const bad = { tokens: [1, 9999], logits: new Float32Array(2 * model.config.vocabSize) };
  let progress = 0;
  await assert.rejects(
    () =>
      compareCache(model, cache, { context: 8, windows: [...good.windows, bad] }, () => progress++),
    (e) =>
      e instanceof ShapeError &&
      /^reference window 1 token 1 is id 9999, out of range \[0, 512\)$/.test(e.message),
  );
  assert.equal(progress, 0, "no window scored");
});

Deno.test("referenceRun() refuses a NaN logit when produced, naming sequence and position", async () => {
  const { weights } = await loadFixture();
  const classifier = weights.classifier.slice();
  classifier.fill(NaN, 7 * weights.config.dim, 8 * weights.config.dim); // logit 7 of every position
  const model = new Transformer({ ...weights, classifier });
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  await assert.rejects(
    () => referenceRun(model, cache, [[1, 403], [1, 403, 407, 261]], 8),
    (e) =>
      e instanceof InvalidValueError &&
      /^reference logit 7 of sequences\[0\] at position 0 \(window from 0\) is NaN/.test(e.message),
  );
});

Deno.test("klDivergence(), logProbability() and signTest() name what is not an array or not a number", () => {
  const never = <T>(v: unknown) => v as T;
  const p = Float32Array.of(1, 2);
  const throwsNamed = (
    f: () => unknown,
    cls: new (message: string, ...rest: never[]) => Error,
    re: RegExp,
    what: string,
  ) => assert.throws(f, (e) => e instanceof cls && re.test((e as Error).message), what);
  throwsNamed(
    () => klDivergence(never(undefined), p),
    InvalidValueError,
    /^p is undefined/,
    "kl p",
  );
  throwsNamed(() => klDivergence(p, never(null)), InvalidValueError, /^q is null/, "kl q");
  // two empty logit vectors compared nothing: 0 read as "identical"
  throwsNamed(
    () => klDivergence(new Float32Array(0), new Float32Array(0)),
    ShapeError,
    /logits of 0 tokens, expected at least one/,
    "kl empty",
  );
  throwsNamed(
    () => logProbability(never(undefined), 0),
    InvalidValueError,
    /^logits is undefined, expected a Float32Array$/,
    "logProbability",
  );
  throwsNamed(() => signTest(never(undefined), [1]), InvalidValueError, /^a is undefined/, "a");
  throwsNamed(() => signTest([1], never("1")), InvalidValueError, /^b is string/, "b");
  const figures: [unknown[], unknown[], RegExp, number][] = [
    [[undefined, 1], [2, 1], /^paired figure a\[0\] is undefined, expected a number$/, 0], // was 2 ties
    [["10", 1], ["9", 1], /^paired figure a\[0\] is "10", expected a number$/, 0], // compared as text
    [[1, 2], [1, "2"], /^paired figure b\[1\] is "2"/, 1],
    [[1, NaN], [1, 2], /^paired figure a\[1\] is NaN/, 1],
  ];
  for (const [a, b, re, index] of figures) {
    assert.throws(
      () => signTest(never(a), never(b)),
      (e) => e instanceof InvalidValueError && e.index === index && re.test(e.message),
      String(re),
    );
  }
});
