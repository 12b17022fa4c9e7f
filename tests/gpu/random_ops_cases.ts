// Random cache setups on the GPU beside the WASM cache: every attend agrees, tiers route alike,
// and a refused append (NaN, or past what the policy's formats hold) changes neither cache.
import assert from "node:assert/strict";
import { cacheValueLimits } from "../../core/cache/value_limits.ts";
import { type KVCache, MixedPrecisionKVCache } from "../../mod.ts";
import { createGpuKVCache, gpuPolicyFor } from "../../gpu/mod.ts";
import { normals, rng } from "../_fixtures.ts";
import { randomSetup } from "../core/cache/_random_setup.ts";
import { relativeError, testGpu } from "./_gpu.ts";

Deno.test("random setups on the GPU: outputs and routing as the WASM cache's, refused appends change nothing", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  let tried = 0, staged = 0, worst = 0;
  // at least 3 setups with a staging format of their own (a third of them draw one)
  for (let seed = 1; tried < 6 || staged < 3; seed++) {
    const next = rng(1000 + seed);
    const { shape, policy, label } = randomSetup(next);
    const onGpu = gpuPolicyFor(policy());
    if (typeof onGpu === "string") continue; // a window format it cannot hold
    tried++;
    const stages = policy().stagingFormat !== policy().windowFormat;
    if (stages) staged++;
    const cpu = new MixedPrecisionKVCache(shape, policy(), { backend: "wasm" });
    const gpu = await createGpuKVCache({ ...env, shape, policy: onGpu });
    const caches: KVCache[] = [cpu, gpu];
    const p = cpu.policy, limits = cacheValueLimits({ ...p, pairs: p.pairs() });
    const kvDim = shape.nKvHeads * shape.headDim, qDim = shape.nHeads * shape.headDim;
    for (let pos = 0; pos < shape.maxSeqLen - 5; pos++) {
      const k = normals(kvDim, next), v = normals(kvDim, next);
      for (let l = 0; l < shape.nLayers; l++) {
        if (next() < 0.1) {
          const bad = v.slice();
          bad[Math.floor(next() * kvDim)] = next() < 0.3 ? NaN : 1.5 * limits.value.limit;
          for (const c of caches) assert.throws(() => c.append(l, pos, k, bad), label);
          assert.deepEqual(caches.map((c) => c.length(l)), [pos, pos], `${label}: unchanged`);
        }
        for (const c of caches) c.append(l, pos, k, v);
        if (next() < 0.25 || pos === shape.maxSeqLen - 6) {
          const q = normals(qDim, next);
          const outs = caches.map(() => new Float32Array(qDim));
          for (let i = 0; i < 2; i++) await caches[i].attend(l, q, outs[i]);
          const err = relativeError(outs[1], outs[0]);
          worst = Math.max(worst, err);
          assert.ok(err <= 1e-5, `seed ${seed} ${label}: T=${pos + 1} layer ${l}: ${err}`);
        }
      }
    }
    assert.deepEqual(gpu.tokensByFormat(), cpu.tokensByFormat(), `seed ${seed} ${label}: routing`);
    if (stages) {
      // the staged tokens and the pages evicted from them, word for word
      const back = await gpu.toCpu();
      for (let l = 0; l < shape.nLayers; l++) {
        for (let h = 0; h < shape.nKvHeads; h++) {
          const want = cpu.segments(l, h), got = back.segments(l, h);
          assert.equal(got.stageN, want.stageN, `seed ${seed} ${label}: staged tokens`);
          const n = want.stageN * (want.stageK.length / cpu.evictQuantum);
          assert.deepEqual(got.stageK.subarray(0, n), want.stageK.subarray(0, n), label);
          assert.deepEqual(got.stageV.subarray(0, n), want.stageV.subarray(0, n), label);
          assert.deepEqual(
            got.pools.map((p) => p.pages.map((page) => [page.kWords, page.vWords])),
            want.pools.map((p) => p.pages.map((page) => [page.kWords, page.vWords])),
            `seed ${seed} ${label}: pages`,
          );
        }
      }
    }
    gpu.destroy();
  }
  console.log(
    `GPU vs WASM over ${tried} random setups (${staged} with a staging format): worst relative ` +
      `difference ${worst}`,
  );
});
