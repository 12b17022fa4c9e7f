// Random operation sequences on random caches, TS and WASM side by side: every attend agrees to
// 1e-6, every refused append changes neither cache (saved bytes equal), a save/load round trip
// goes on attending as the original, and memory() is the sum of its breakdown. Two bugs a review
// found break them: an fp8 page refusing a value the up-front check let through, after another
// head had stored its token, and an int8-g32 window taken by the integer-dot path on WASM only.
import assert from "node:assert/strict";
import { MixedPrecisionKVCache } from "../../../core/cache/mixed_cache.ts";
import { loadCache, saveCache } from "../../../core/cache/serialize.ts";
import { cacheValueLimits } from "../../../core/cache/value_limits.ts";
import { normals, relError, rng } from "../../_fixtures.ts";
import { randomSetup } from "./_random_setup.ts";

function memoryAddsUp(cache: MixedPrecisionKVCache, label: string): void {
  const parts = Object.values(cache.memoryBreakdown()).reduce((a, b) => a + b, 0);
  assert.equal(parts, cache.memory().bytes, `${label}: breakdown sums to memory()`);
}

Deno.test("random operations on random caches: TS ≡ WASM, refused appends change nothing, round trips go on alike", () => {
  const worst = [0, 0];
  for (let seed = 1; seed <= 24; seed++) {
    const next = rng(seed);
    const { shape, policy, label } = randomSetup(next);
    const at = `seed ${seed} ${label}`;
    let caches = (["ts", "wasm"] as const).map((backend) =>
      new MixedPrecisionKVCache(shape, policy(), { backend })
    );
    const kvDim = shape.nKvHeads * shape.headDim, qDim = shape.nHeads * shape.headDim;
    const preRope = label.includes("ropeBase") && label.includes("-channel");
    const p = caches[0].policy, limits = cacheValueLimits({ ...p, pairs: p.pairs() });
    const T = shape.maxSeqLen - Math.floor(next() * 10);
    for (let pos = 0; pos < T;) {
      // unit-scale keys: the kernels' f32 scores round to ~1e-7 of the output here (400 seeds:
      // at most 5.8e-7); with a fifth of the keys ×4, scores near 10 took it to 2.0e-6 (PAGES.md)
      const k = normals(kvDim, next), v = normals(kvDim, next);
      for (let l = 0; l < shape.nLayers; l++) {
        if (next() < 0.15) {
          // a refused append: a bad element in a random head, or a position out of order
          const before = caches.map((c) => saveCache(c));
          const inKeys = next() < 0.5, bad = (inKeys ? k : v).slice();
          // NaN, or half again the largest magnitude the policy's formats hold
          const limit = (inKeys ? limits.key : limits.value).limit;
          bad[Math.floor(next() * kvDim)] = next() < 0.3 ? NaN : -1.5 * limit;
          const wrongPos = next() < 0.3;
          for (const c of caches) {
            assert.throws(() =>
              wrongPos
                ? c.append(l, pos + 1, k, v)
                : c.append(l, pos, inKeys ? bad : k, inKeys ? v : bad)
            );
          }
          caches.forEach((c, i) => assert.deepEqual(saveCache(c), before[i], `${at}: refused`));
        }
        for (const c of caches) c.append(l, pos, k, v);
      }
      pos++;
      if (next() < 0.3) {
        for (let l = 0; l < shape.nLayers; l++) {
          const q = normals(qDim, next);
          const [a, b] = caches.map((c) => {
            const out = new Float32Array(qDim);
            c.attend(l, q, out);
            return out;
          });
          const err = relError(b, a);
          assert.ok(err <= 1e-6, `${at}: T=${pos} layer ${l}: TS vs WASM ${err}`);
          worst[preRope ? 1 : 0] = Math.max(worst[preRope ? 1 : 0], err);
        }
      }
      if (next() < 0.05) {
        // reload both from their bytes and go on with the copies
        caches = caches.map((c) => loadCache(saveCache(c), { backend: c.backend }));
      }
    }
    assert.deepEqual(caches[1].tokensByFormat(), caches[0].tokensByFormat(), `${at}: routing`);
    caches.forEach((c) => memoryAddsUp(c, at));
  }
  console.log(
    `TS vs WASM, worst relative difference: ${worst[0]}, with keys before RoPE ${worst[1]}`,
  );
});
