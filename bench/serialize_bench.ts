/**
 * What saving and loading a cache costs. Run: `deno bench -A bench/serialize_bench.ts`.
 *
 * An int4 per-token WASM cache (4 layers, 32 query heads over 8 KV heads, head_dim 128, 2048
 * tokens, 4 sinks and a 64-token fp16 window: 16.8 M elements, about 11 MiB saved), and the same
 * with int4 per-channel keys stored before RoPE. loadCache checks every page's checksum and every
 * stored value (`checkStoredFinite`): int formats for their headers only, the fp16 window and sinks
 * element by element; "checkStoredFinite alone" times that part. Before timing, a loaded cache is
 * checked to attend exactly as the original.
 */
import {
  loadCache,
  MixedPrecisionKVCache,
  saveCache,
  type UniformOptions,
  uniformPolicy,
} from "../mod.ts";
import { mulberry32 } from "../core/mulberry32.ts";

const next = mulberry32(5);
const rand = (n: number) => Float32Array.from({ length: n }, () => 2 * next() - 1);
const shape = { nLayers: 4, nHeads: 32, nKvHeads: 8, headDim: 128, maxSeqLen: 2048 };
const window = { pageTokens: 128, sinkTokens: 4, recentWindow: 64 };

const cases: [string, UniformOptions][] = [
  ["int4 per token", { keyFormat: "int4-g32-token", valueFormat: "int4-g32-token", ...window }],
  [
    "int4 per channel, keys before RoPE",
    { keyFormat: "int4-g32-channel", valueFormat: "int4-g32-token", ropeBase: 10000, ...window },
  ],
];

for (const [name, options] of cases) {
  const cache = new MixedPrecisionKVCache(shape, uniformPolicy(options), { backend: "wasm" });
  const kvDim = shape.nKvHeads * shape.headDim;
  for (let p = 0; p < shape.maxSeqLen; p++) {
    for (let l = 0; l < shape.nLayers; l++) cache.append(l, p, rand(kvDim), rand(kvDim));
  }
  const bytes = saveCache(cache);
  const loaded = loadCache(bytes, { backend: "wasm" });
  const q = rand(shape.nHeads * shape.headDim);
  const a = new Float32Array(q.length), b = new Float32Array(q.length);
  cache.attend(3, q, a);
  loaded.attend(3, q, b);
  if (a.some((x, i) => x !== b[i])) {
    throw new Error(`${name}: the loaded cache attends differently`);
  }
  const group = `${name}, ${(bytes.length / 2 ** 20).toFixed(1)} MiB`;
  Deno.bench(`saveCache, ${group}`, { group, baseline: true }, () => {
    saveCache(cache);
  });
  Deno.bench(`loadCache, ${group}`, { group }, () => {
    loadCache(bytes, { backend: "wasm" });
  });
  Deno.bench(`checkStoredFinite alone, ${group}`, { group }, () => {
    loaded.checkStoredFinite();
  });
}
