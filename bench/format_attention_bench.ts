/**
 * WASM attention time of every page format a plan may choose, against FP32 pages. Run:
 * `deno bench -A bench/format_attention_bench.ts`.
 *
 * One attend call (8 query heads over 2 KV heads, T = 4096 tokens in pages of 128, no sinks or
 * window, the library's defaults otherwise: integer dot products where they serve) at d = 64 and
 * 128, the same layer attended again and again (its cache stays in the last-level cache, so this
 * measures each format's arithmetic; bench/attention_report.ts has the decode step that reads the
 * cache from DRAM). Keys and values share a format, and channel-axis keys also come with token-axis
 * values (KIVI's layout). Each format's outputs are first checked against FP32's: within 0.5 of the
 * largest output for every format, and different from it (a format that decoded nothing would fail).
 */
import { MixedPrecisionKVCache, uniformPolicy } from "../mod.ts";
import { mulberry32 } from "../core/mulberry32.ts";

const next = mulberry32(11);
const rand = (n: number) => Float32Array.from({ length: n }, () => next() - 0.5);
const T = 4096, H = 8, KV = 2;

const PAIRS: [string, string][] = [
  ["fp32", "fp32"],
  ["fp16", "fp16"],
  ["bf16", "bf16"],
  ...[2, 3, 4, 5, 6, 8].map((b): [string, string] => [`int${b}-g32-token`, `int${b}-g32-token`]),
  ...[2, 3, 4, 5, 6, 8].map((
    b,
  ): [string, string] => [`int${b}-g32-channel`, `int${b}-g32-channel`]),
  ...[2, 4].map((b): [string, string] => [`int${b}-g32-channel`, `int${b}-g32-token`]),
  ["int8s-g32-token", "int8s-g32-token"],
  ["fp8e4m3", "fp8e4m3"],
  ["fp8e4m3-g32-token", "fp8e4m3-g32-token"],
];

for (const d of [64, 128]) {
  const shape = { nLayers: 1, nHeads: H, nKvHeads: KV, headDim: d, maxSeqLen: T };
  const keys = Array.from({ length: T }, () => rand(KV * d));
  const values = Array.from({ length: T }, () => rand(KV * d));
  const q = rand(H * d);
  const reference = new Float32Array(H * d);
  for (const [keyFormat, valueFormat] of PAIRS) {
    const cache = new MixedPrecisionKVCache(
      shape,
      uniformPolicy({
        keyFormat,
        valueFormat,
        pageTokens: 128,
        sinkTokens: 0,
        recentWindow: 0,
        windowFormat: "fp32", // tokens pass the window format on their way to a page
      }),
      { backend: "wasm" },
    );
    for (let t = 0; t < T; t++) cache.append(0, t, keys[t], values[t]);
    const out = new Float32Array(H * d);
    cache.attend(0, q, out);
    const fp32 = keyFormat === "fp32";
    if (fp32) reference.set(out);
    const gap = out.reduce((m, x, i) => Math.max(m, Math.abs(x - reference[i])), 0);
    const scale = reference.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
    if (!(gap < 0.5 * scale) || (!fp32 && gap === 0)) {
      throw new Error(`${keyFormat}|${valueFormat} d=${d}: outputs differ from FP32's by ${gap}`);
    }
    Deno.bench(
      `${keyFormat} | ${valueFormat}, d=${d}`,
      { group: `attend d=${d} T=${T}`, baseline: fp32 },
      () => {
        cache.attend(0, q, out);
      },
    );
  }
}
