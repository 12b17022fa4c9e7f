import assert from "node:assert/strict";
import {
  cacheShape,
  Float32KVCache,
  generateGreedy,
  perplexity,
  ShapeError,
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
