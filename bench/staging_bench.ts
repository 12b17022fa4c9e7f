/**
 * What a staging format costs attention. Run: `deno bench -A bench/staging_bench.ts`.
 *
 * One WASM attend over int4 per-channel pages (8 query heads over 2 KV heads, 2 sinks, a recent
 * window of 8) with the ring at fp16 (the baseline of each group) against sinks and window at fp16
 * and the tokens awaiting eviction in int8-g8-token, which the WASM cache attends as a second
 * kernel call. T leaves 20 tokens staged. Before timing, both caches' outputs are checked against
 * each other (the int8 rounding of 20 tokens moves them by less than 1e-2 here; equal outputs would
 * mean nothing was staged).
 */
import { MixedPrecisionKVCache, uniformPolicy } from "../mod.ts";
import { mulberry32 } from "../core/mulberry32.ts";

const next = mulberry32(3);
const rand = (n: number) => Float32Array.from({ length: n }, () => next() - 0.5);

for (const d of [64, 128]) {
  for (const T of [510, 4062]) {
    const shape = { nLayers: 1, nHeads: 8, nKvHeads: 2, headDim: d, maxSeqLen: 4096 };
    const base = {
      keyFormat: "int4-g32-channel",
      valueFormat: "int4-g32-channel",
      sinkTokens: 2,
      recentWindow: 8,
    };
    const [plain, staged] = [base, { ...base, stagingFormat: "int8-g8-token" }].map((o) =>
      new MixedPrecisionKVCache(shape, uniformPolicy(o), { backend: "wasm" })
    );
    for (let t = 0; t < T; t++) {
      const k = rand(2 * d), v = rand(2 * d);
      plain.append(0, t, k, v);
      staged.append(0, t, k, v);
    }
    if (staged.segments(0, 0).stageN !== 20) throw new Error(`T ${T}: 20 tokens staged`);
    const q = rand(8 * d), a = new Float32Array(8 * d), b = new Float32Array(8 * d);
    plain.attend(0, q, a);
    staged.attend(0, q, b);
    const gap = a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);
    if (!(gap > 0 && gap < 1e-2)) throw new Error(`d ${d} T ${T}: outputs differ by ${gap}`);
    const group = `attend d=${d} T=${T}`;
    Deno.bench(`fp16 ring, d=${d} T=${T}`, { group, baseline: true }, () => {
      plain.attend(0, q, a);
    });
    Deno.bench(`fp16 window + int8 staging, d=${d} T=${T}`, { group }, () => {
      staged.attend(0, q, b);
    });
  }
}
