import assert from "node:assert/strict";
import { getFormat } from "../../../codecs/format.ts";
import { MixedPrecisionKVCache } from "../../../core/cache/mixed_cache.ts";
import { uniformPolicy } from "../../../core/cache/policy.ts";
import { saveCache } from "../../../core/cache/serialize.ts";
import { cacheValueLimits } from "../../../core/cache/value_limits.ts";
import { rng } from "../../_fixtures.ts";

/** Window formats of every rounding kind: exact, float grids, and grouped with fp16 headers. */
const WINDOWS = [
  "fp32",
  "fp16",
  "bf16",
  "fp8e4m3",
  "fp8e5m2",
  "int8-g8-token",
  "int4-g8-token",
  "int2-g8-token",
  "int8s-g8-token",
  "fp8e4m3-g8-token",
  "fp8e5m2-g8-token",
];

/** Page formats whose limits a window's rounding could pass (fp16 headers, fp8 and fp16 grids). */
const PAGES: { keyFormat: string; valueFormat: string; ropeBase?: number }[] = [
  { keyFormat: "fp16", valueFormat: "fp8e4m3" },
  { keyFormat: "fp8e5m2", valueFormat: "int4-g8-token" },
  { keyFormat: "int8-g8-channel", valueFormat: "int8s-g8-token" },
  { keyFormat: "int2-g8-channel", valueFormat: "int2-g8-token", ropeBase: 10000 },
  { keyFormat: "int4-g8-token", valueFormat: "fp8e4m3-g8-token" },
];

Deno.test("cacheValueLimits() keeps every accepted value within the page formats after the window's rounding", () => {
  // a window rounds what it holds (bf16 takes 65504 to 65536, an int8 group with an fp16 scale
  // rounded up spans a little past its inputs), and eviction encodes that into the page format:
  // an accepted value once failed there, halfway through an append, with earlier heads changed
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: 8, maxSeqLen: 40 };
  for (const windowFormat of WINDOWS) {
    for (const pair of PAGES) {
      const policy = uniformPolicy({ ...pair, windowFormat, recentWindow: 1, pageTokens: 8 });
      const { key, value } = cacheValueLimits({ ...policy, pairs: policy.pairs() });
      const next = rng(WINDOWS.indexOf(windowFormat) * 31 + PAGES.indexOf(pair));
      const label = `window ${windowFormat}, ${JSON.stringify(pair)}`;
      for (const backend of ["ts", "wasm"] as const) {
        const cache = new MixedPrecisionKVCache(shape, policy, { backend });
        // head 0 small, head 1 at the limits: a failure at head 1 would find head 0 changed
        const token = (limit: number) => {
          const x = new Float32Array(16);
          for (let i = 0; i < 8; i++) x[i] = next() - 0.5;
          for (let i = 8; i < 16; i++) {
            const edge = [limit, -limit, Math.fround(limit * (1 - next() * 1e-3))][i % 3];
            x[i] = next() < 0.8 ? edge : (next() * 2 - 1) * limit;
          }
          return x;
        };
        for (let pos = 0; pos < 33; pos++) {
          const before = saveCache(cache);
          try {
            cache.append(0, pos, token(key.limit), token(value.limit));
          } catch (e) {
            assert.deepEqual(saveCache(cache), before, `${label} ${backend}: failed append`);
            assert.fail(`${label} ${backend} position ${pos}: ${(e as Error).message}`);
          }
        }
        const out = new Float32Array(16);
        cache.attend(0, new Float32Array(16).fill(1e-6), out);
        assert.ok(out.every(Number.isFinite), `${label} ${backend}: ${out}`);
      }
      // and the limits are no stricter than the window's own rounding needs
      const window = getFormat(windowFormat);
      const exact = window.kind === "fp32" || window.kind === "fp16";
      if (exact && pair.ropeBase === undefined) {
        assert.equal(key.limit, Math.min(getFormat(pair.keyFormat).clampLimit, 65504), label);
      }
    }
  }
});
