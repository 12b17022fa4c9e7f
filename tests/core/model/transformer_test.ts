import assert from "node:assert/strict";
import {
  BudgetError,
  cacheShape,
  CapacityError,
  Float32KVCache,
  generateGreedy,
  InvalidValueError,
  type KVCache,
  MixedPrecisionKVCache,
  type ModelWeights,
  perplexity,
  ShapeError,
  Transformer,
  uniformPolicy,
} from "../../../mod.ts";
import { loadFixture, REFERENCE } from "../../_fixtures.ts";

Deno.test("generateGreedy() reproduces llama2.c's 100 greedy tokens for 'Once upon a time'", async () => {
  const { model, tokenizer } = await loadFixture();
  const prompt = tokenizer.encode("Once upon a time");
  assert.deepEqual(prompt, REFERENCE.promptIds);
  const cache = new Float32KVCache(cacheShape(model.config));
  const ids = await generateGreedy(model, cache, prompt, 100);
  assert.deepEqual(ids, REFERENCE.greedy100);
  assert.match(
    tokenizer.decode([...prompt, ...ids]),
    /^Once upon a time, there was a little girl named Lily/,
  );
});

Deno.test("Transformer.forward() and prefill() give the same logits", async () => {
  const { model, tokenizer } = await loadFixture();
  const ids = tokenizer.encode("The cat sat on the mat and looked at the bird.");
  const a = new Float32KVCache(cacheShape(model.config));
  const b = new Float32KVCache(cacheShape(model.config));
  const batch = await model.prefill(ids, 0, a);
  const V = model.config.vocabSize;
  for (let p = 0; p < ids.length; p++) {
    const step = await model.forward(ids[p], p, b);
    for (let i = 0; i < V; i++) {
      assert.ok(
        Math.abs(step[i] - batch[p * V + i]) <= 1e-5 * (1 + Math.abs(step[i])),
        `pos ${p} logit ${i}`,
      );
    }
  }
});

Deno.test("perplexity() matches llama2.c's reference at context 128 and 512", async () => {
  const { model, sequences } = await loadFixture();
  for (const context of [128, 512]) {
    const r = await perplexity(model, new Float32KVCache(cacheShape(model.config)), sequences, {
      context,
    });
    assert.equal(r.tokens, REFERENCE.tokensScored);
    const ref = REFERENCE.perplexity[context];
    assert.ok(Math.abs(r.perplexity - ref) / ref < 1e-3, `C=${context}: ${r.perplexity} vs ${ref}`);
  }
});

Deno.test("Transformer.forward() rejects bad token ids and positions", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config));
  await assert.rejects(() => model.forward(512, 0, cache), ShapeError);
  await assert.rejects(() => model.forward(-1, 0, cache), ShapeError);
  await assert.rejects(() => model.forward(1, 512, cache), ShapeError);
  await assert.rejects(() => model.prefill([1, 2, 9999], 0, cache), /9999/);
  assert.equal(cache.length(0), 0, "a rejected prefill appends nothing");
});

Deno.test("generateGreedy() rejects a bad step count or an empty prompt before resetting the cache", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  await model.forward(1, 0, cache);
  for (const steps of [NaN, -1, 2.5, Infinity]) {
    await assert.rejects(
      () => generateGreedy(model, cache, [1, 2], steps),
      (e) =>
        e instanceof InvalidValueError && /steps is \S+, expected an integer ≥ 0/.test(e.message),
      String(steps),
    );
  }
  await assert.rejects(
    () => generateGreedy(model, cache, [], 3),
    (e) => e instanceof ShapeError && /prompt is empty/.test(e.message),
  );
  assert.equal(cache.length(0), 1, "the cache was not reset");
  // a cache of another shape: refused before reset() empties it
  const other = new Float32KVCache({ ...cacheShape(model.config, 16), nLayers: 1 });
  other.append(0, 0, new Float32Array(other.shape.nKvHeads * 8).fill(1), new Float32Array(32));
  await assert.rejects(
    () => generateGreedy(model, other, [1, 403], 3),
    (e) => e instanceof ShapeError && /cache has 1 layers, the model 5/.test(e.message),
  );
  assert.equal(other.length(0), 1, "the refused cache keeps its position");
});

Deno.test("Transformer.forward() refuses a second call while one is in flight", async () => {
  // forward() keeps one token's scratch across the cache's await; two at once gave wrong logits
  const { model } = await loadFixture();
  // a cache whose attend answers later, as the GPU cache's does
  const slow = (cache: Float32KVCache): KVCache => ({
    shape: cache.shape,
    length: (l) => cache.length(l),
    append: (l, p, k, v) => cache.append(l, p, k, v),
    attend: (l, q, out) =>
      new Promise((done) => setTimeout(() => done(cache.attend(l, q, out)), 1)),
    memory: () => cache.memory(),
    reset: () => cache.reset(),
  });
  const [a, b] = [0, 1].map(() => slow(new Float32KVCache(cacheShape(model.config, 4))));
  const first = model.forward(403, 0, a);
  await assert.rejects(
    () => model.forward(261, 0, b),
    (e) => e instanceof InvalidValueError && /another forward\(\) .* in flight/.test(e.message),
  );
  const logits = (await first).slice();
  const alone = await model.forward(403, 0, new Float32KVCache(cacheShape(model.config, 4)));
  assert.deepEqual(logits, alone, "the call in flight was not disturbed");
  await model.forward(261, 0, b); // and the model is free again
});

Deno.test("Transformer checks the cache's shape and room before appending to any layer", async () => {
  const { model } = await loadFixture();
  const c = model.config;
  const table: [string, Partial<ReturnType<typeof cacheShape>>, RegExp][] = [
    ["fewer layers", { nLayers: 2 }, /cache has 2 layers, the model 5/],
    ["more query heads", { nHeads: 16 }, /cache has 16 query heads, the model 8/],
    ["other head dimension", { headDim: 4, nHeads: 16, nKvHeads: 8 }, /cache has 16 query heads/],
  ];
  for (const [what, change, re] of table) {
    const cache = new Float32KVCache({ ...cacheShape(c, 16), ...change });
    const check = (e: unknown) => e instanceof ShapeError && re.test((e as Error).message);
    await assert.rejects(() => model.forward(1, 0, cache), check, `forward: ${what}`);
    await assert.rejects(() => model.prefill([1, 2], 0, cache), check, `prefill: ${what}`);
    assert.equal(cache.length(0), 0, `${what}: nothing appended`);
  }
  // Past the cache's capacity: refused whole, not after filling it.
  const small = new Float32KVCache(cacheShape(c, 4));
  await assert.rejects(
    () => model.prefill([1, 2, 3, 4, 5], 0, small),
    (e) =>
      e instanceof CapacityError && /5 positions from 0 need 5, the cache holds 4/.test(e.message),
  );
  assert.equal(small.length(0), 0);
  // A start position the cache does not hold in every layer.
  await model.forward(1, 0, small);
  await assert.rejects(
    () => model.prefill([1, 2], 2, small),
    (e) => e instanceof ShapeError && /layer 0 holds 1 positions, expected 2/.test(e.message),
  );
  assert.equal(small.length(0), 1);
});

Deno.test("a cache error midway through a pass names the layers it left appended", async () => {
  const { model } = await loadFixture();
  const shape = cacheShape(model.config, 64);
  const policy = uniformPolicy({
    keyFormat: "int4-g8-token",
    valueFormat: "int4-g8-token",
    recentWindow: 4,
  });
  // room for the fixed buffers and one page in layer 0 only: layer 1's first page is refused
  const fixed = new MixedPrecisionKVCache(shape, policy).memory().bytes;
  for (const pass of ["forward", "prefill"] as const) {
    const cache = new MixedPrecisionKVCache(shape, policy, { maxBytes: fixed + 2212 });
    const run = async () => {
      if (pass === "prefill") return await model.prefill(Array(40).fill(300), 0, cache);
      for (let p = 0; p < 64; p++) await model.forward(p ? 300 : 1, p, cache);
    };
    await assert.rejects(run, (e: Error) => {
      const m = /layers 0–4 now hold ([\d, ]+) positions, from (\d+) before it; reset\(\)/
        .exec(e.message);
      assert.ok(e instanceof BudgetError && m, e.message);
      const held = m[1].split(", ").map(Number);
      assert.deepEqual(held, [0, 1, 2, 3, 4].map((l) => cache.length(l)));
      assert.ok(held.some((n) => n !== Number(m[2])), "some layer was appended");
      return true;
    }, pass);
  }
});

Deno.test("the Transformer constructor names a hand-built tensor or config that does not fit", async () => {
  const { weights } = await loadFixture();
  const cases: [string, (w: ModelWeights) => unknown, RegExp][] = [
    [
      "short rmsFinal",
      (w) => w.rmsFinal = w.rmsFinal.subarray(1),
      /weights\.rmsFinal is 63 floats, expected a Float32Array of 64/,
    ],
    ["missing layers", (w) => w.w1 = w.w1.slice(0, 2), /weights\.w1 has 2 layers, expected 5/],
    [
      "a Float64Array",
      (w) => w.wq[3] = new Float64Array(64 * 64) as never,
      /weights\.wq\[3\] is Float64Array/,
    ],
    [
      "short embedding",
      (w) => w.tokenEmbedding = w.tokenEmbedding.subarray(0, 640),
      /tokenEmbedding is 640 floats/,
    ],
    ["a bad config", (w) => w.config = { ...w.config, nKvHeads: 3 }, /nKvHeads divides nHeads/],
    ["no config", (w) => w.config = undefined as never, /weights\.config is undefined/],
  ];
  for (const [what, edit, message] of cases) {
    const w = { ...weights, wq: [...weights.wq] };
    edit(w);
    assert.throws(
      () => new Transformer(w),
      (e: Error) => e instanceof ShapeError && message.test(e.message),
      what,
    );
  }
  assert.throws(() => new Transformer(null as never), ShapeError);
});

Deno.test("forward and prefill name a missing cache or token list, and a token given as a string", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config));
  const named = (cls: abstract new (...a: never[]) => Error, re: RegExp) => (e: Error) =>
    e instanceof cls && re.test(e.message);
  await assert.rejects(
    () => model.forward(1, 0, null as never),
    named(InvalidValueError, /cache is null, expected a KVCache/),
  );
  await assert.rejects(
    () => model.prefill(null as never, 0, cache),
    named(InvalidValueError, /tokens is null/),
  );
  await assert.rejects(
    () => model.forward("3" as never, 0, cache),
    named(ShapeError, /token id "3" out of range/),
  );
  await assert.rejects(
    () => model.forward(1, "0" as never, cache),
    named(ShapeError, /position "0" out of range/),
  );
  assert.equal(cache.length(0), 0);
});
