/**
 * Decode-attention benchmark over the mixed-precision cache: one query step against T cached
 * tokens, FP32 vs FP16 and FP8 vs INT8 vs INT4 vs a mixed int8/int4/int2 page mix vs KIVI-style
 * INT4 (keys per channel), TS reference vs fused WASM, all in one run. Each case first checks that the two
 * backends agree (relative error ≤ 1e-6), then times both and prints a table with the ratios the
 * targets are stated in (INT4 WASM / FP32 WASM ≤ 0.8; each "/FP32" ratio times the case and FP32
 * call by call in turn, so that a drift of the machine's speed does not decide a verdict).
 * "naive/FP32" is what a cache that dequantizes every page to f32 before attending would cost: the
 * WASM codecs' decode of all pages plus the FP32 attention, over FP32 attention.
 *
 * Rows marked "int-dot" run the WASM cache with integerDot (core/cache/int_dot.ts); they are
 * checked against the ts backend with integerDot (the kernel's mirror) to 1e-6, while their TS
 * columns and "rel err" are against the exact TS reference, so "rel err" shows what the integer
 * path's rounding costs. The "v128" row runs the module's plain-SIMD build, which engines without
 * relaxed SIMD load (the other rows: the build this engine loads, relaxed SIMD in Deno).
 *
 * Two regimes, because they answer different questions. "One layer" attends the same layer's cache
 * again and again: at T ≤ 4096 it stays in the last-level cache, which a real decode step never
 * sees, so it measures arithmetic. "Decode step" attends L layers in turn, once each, as a model
 * does per generated token, with L chosen so the step's FP32 cache is at least 256 MiB: every call
 * reads its cache from DRAM, as it does in a model whose cache has outgrown the weights.
 *
 *     deno run -A bench/attention_report.ts [--heads 8] [--kv-heads 2] [--T 512,4096,32768]
 *       [--d 64,128] [--page 128] [--no-ts] [--no-step]
 *
 * @module
 */

import { MixedPrecisionKVCache } from "../core/cache/mixed_cache.ts";
import type { CachePolicy, FormatPair } from "../core/cache/policy.ts";
import { uniformPolicy } from "../core/cache/policy.ts";
import {
  useWasmModule,
  wasmBytes,
  wasmCodec,
  type WasmVariant,
  wasmVariant,
} from "../codecs/mod.ts";
import { mulberry32 } from "../core/mulberry32.ts";
import { reportFlags } from "./report_flags.ts";

const flags = reportFlags(
  "attention_report",
  "deno run -A bench/attention_report.ts [--heads 8] [--kv-heads 2] [--T 512,4096,32768] " +
    "[--d 64,128] [--page 128] [--no-ts] [--no-step]",
  ["--heads", "--kv-heads", "--T", "--d", "--page"],
  ["--no-ts", "--no-step"],
);
const N_HEADS = flags.size("--heads", "8");
const N_KV = flags.size("--kv-heads", "2");
const TS = flags.sizes("--T", "512,4096,32768");
/** Multiples of 32: every case's formats group 32 channels. */
const DIMS = flags.sizes("--d", "64,128", 32);
/** Tokens per page of every case (--page; the library default is 32). */
const PAGE = flags.size("--page", "128");
/** --no-ts skips timing the TS reference (it still checks agreement): quicker WASM iterations. */
const TIME_TS = !flags.has("--no-ts");
/** --no-step skips the decode-step (DRAM) regime. */
const TIME_STEP = !flags.has("--no-step");
/** The FP32 cache a decode step reads at least: far above any last-level cache. */
const STEP_BYTES = 256 * 2 ** 20;

/**
 * A policy whose pages cycle through `tiers` in arrival order, `calls` formatFor calls (one per
 * eviction, per KV head) per tier, on top of `base`.
 */
function cycling(
  label: string,
  base: CachePolicy,
  tiers: FormatPair[],
  calls: number,
): CachePolicy {
  const distinct = tiers.filter((t, i) =>
    tiers.findIndex((u) => u.keyFormat === t.keyFormat && u.valueFormat === t.valueFormat) === i
  );
  let count = 0;
  return {
    ...base,
    label,
    formatFor: () => tiers[Math.floor(count++ / calls) % tiers.length],
    pairs: () => distinct,
  };
}

/** Pages cycle int8, int4, int4, int2 (by arrival, a page at a time): a tiered-like mix. */
function mixedPolicy(): CachePolicy {
  return cycling("mixed", uniform("fp32"), [
    { keyFormat: "int8-g32-token", valueFormat: "int8-g32-token" },
    { keyFormat: "int4-g32-token", valueFormat: "int4-g32-token" },
    { keyFormat: "int4-g32-token", valueFormat: "int4-g32-token" },
    { keyFormat: "int2-g32-token", valueFormat: "int2-g32-token" },
  ], PAGE * N_KV);
}

/**
 * Pages cycle through the kinds of tiers kvprec's budget plans choose (core/plan.ts): fp16 keys with
 * int8 values, then int4, int3 and int2 keys per channel stored before RoPE with int4 / int3 values,
 * a page at a time: what such a plan costs, on the exact path its keys before RoPE take.
 */
function planLikePolicy(): CachePolicy {
  const base = uniformPolicy({
    keyFormat: "int4-g32-channel",
    valueFormat: "int4-g32-channel",
    pageTokens: PAGE,
    ropeBase: 10000,
  });
  // one call per eviction chunk of 32 tokens (the channel groups), per KV head
  return cycling("plan-like", base, [
    { keyFormat: "fp16", valueFormat: "int8-g32-token" },
    { keyFormat: "int4-g32-channel", valueFormat: "int4-g32-channel" },
    { keyFormat: "int3-g32-channel", valueFormat: "int4-g32-token" },
    { keyFormat: "int2-g32-channel", valueFormat: "int3-g32-channel" },
  ], (PAGE / 32) * N_KV);
}

/** KIVI-style: keys int4 per channel (groups of 32 tokens), values int4 per token. */
function kiviPolicy(): CachePolicy {
  return uniform("int4-g32-channel", "int4-g32-token");
}

/** One format pair for every token, pages of PAGE tokens, no sinks or window. */
function uniform(keyFormat: string, valueFormat = keyFormat): CachePolicy {
  return uniformPolicy({ keyFormat, valueFormat, pageTokens: PAGE });
}

/**
 * integerDot: the WASM cache's integer-dot-product path (core/cache/int_dot.ts, the library's
 * default); the other rows set integerDot: false, the exact fused path. build "simd": the cache
 * runs the module's v128 SIMD build (what engines without relaxed SIMD load, as Safari), where every
 * other row runs the build this engine loads (wasmVariant()); sameAs names the row it repeats, and
 * the report times the two call by call in turn, as the /FP32 ratios.
 */
const CASES: {
  name: string;
  policy: () => CachePolicy;
  integerDot?: boolean;
  build?: WasmVariant;
  sameAs?: string;
}[] = [
  { name: "fp32", policy: () => uniform("fp32") },
  // the common float baselines (and fp16 the default window format): exact path, decoded inline
  { name: "fp16", policy: () => uniform("fp16") },
  { name: "fp8e4m3", policy: () => uniform("fp8e4m3") },
  {
    name: "int8-g32",
    policy: () => uniform("int8-g32-token"),
  },
  {
    name: "int4-g32",
    policy: () => uniform("int4-g32-token"),
  },
  { name: "mixed 8/4/4/2", policy: mixedPolicy },
  {
    name: "int8 int-dot",
    policy: () => uniform("int8-g32-token"),
    integerDot: true,
  },
  {
    name: "int4 int-dot",
    policy: () => uniform("int4-g32-token"),
    integerDot: true,
  },
  {
    name: "int4 int-dot v128",
    policy: () => uniform("int4-g32-token"),
    integerDot: true,
    build: "simd",
    sameAs: "int4 int-dot",
  },
  { name: "mixed int-dot", policy: mixedPolicy, integerDot: true },
  // as a cache is deployed: 4 sink tokens and a 128-token recent window at fp16 ahead of the pages
  {
    name: "int4 int-dot +window",
    policy: () =>
      uniformPolicy({
        keyFormat: "int4-g32-token",
        valueFormat: "int4-g32-token",
        pageTokens: PAGE,
        sinkTokens: 4,
        recentWindow: 128,
      }),
    integerDot: true,
  },
  { name: "kivi-4", policy: kiviPolicy },
  // keys stored before RoPE (policy.ropeBase): the kernel rotates each decoded key group forward
  {
    name: "kivi-4 pre-RoPE",
    policy: () =>
      uniformPolicy({
        keyFormat: "int4-g32-channel",
        valueFormat: "int4-g32-token",
        pageTokens: PAGE,
        ropeBase: 10000,
      }),
  },
  { name: "kivi-4 int-dot", policy: kiviPolicy, integerDot: true },
  { name: "plan-like tiers", policy: planLikePolicy, integerDot: true },
];
/** Agreement of WASM and TS (exact rows: exact TS; int-dot rows: TS with integerDot, its mirror). */
const AGREEMENT = 1e-6;

/** max |x − ref| / max |ref|. */
function maxRelDiff(x: Float32Array, ref: Float32Array): number {
  let err = 0, mag = 0;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(x[i] - ref[i]));
    mag = Math.max(mag, Math.abs(ref[i]));
  }
  return err / mag;
}
/** The rows the ≤ 0.8 target is judged on: INT4 exact and INT4 with integer dot products. */
const TARGET_ROWS = ["int4-g32", "int4 int-dot", "int4 int-dot v128"];

/** A WASM cache of case c: the module of c.build when it names one (caches keep their instance). */
function wasmCache(
  c: typeof CASES[number],
  shape: ConstructorParameters<typeof MixedPrecisionKVCache>[0],
): MixedPrecisionKVCache {
  const options = { backend: "wasm" as const, integerDot: c.integerDot === true };
  if (c.build === undefined || c.build === wasmVariant()) {
    return new MixedPrecisionKVCache(shape, c.policy(), options);
  }
  useWasmModule(new WebAssembly.Module(wasmBytes(c.build)));
  try {
    return new MixedPrecisionKVCache(shape, c.policy(), options);
  } finally {
    useWasmModule(new WebAssembly.Module(wasmBytes()));
  }
}

const random = mulberry32(12345);
/** Uniform on [−1, 1). */
const rand = () => 2 * random() - 1;

/**
 * Calls each f in turn for about WARM_MS (at least once each) before anything is timed. V8 runs a
 * module's functions first as baseline code and compiles the optimised code in the background
 * after enough calls; the samples below (at most a few hundred calls, 20–30 ms at T = 512) had
 * otherwise caught the baseline code: with one warm-up call the v128 build's INT4 row read 1.54–1.62
 * × FP32 where it runs at 0.86 (`--v8-flags=--no-liftoff`), and the first row's "WASM ms" 3–4×
 * its steady time.
 */
function warm(...fs: (() => void)[]): void {
  const start = performance.now();
  do {
    for (const f of fs) f();
  } while (performance.now() - start < WARM_MS);
}
const WARM_MS = 250;

/** Median ms per call, running for about budgetMs (at least minIters calls). */
function time(f: () => void, budgetMs: number, minIters: number): number {
  warm(f);
  const samples: number[] = [];
  const start = performance.now();
  while (samples.length < minIters || performance.now() - start < budgetMs) {
    const t0 = performance.now();
    f();
    samples.push(performance.now() - t0);
    if (samples.length >= 200) break;
  }
  return median(samples);
}

/**
 * Case time over FP32 time, the two called in turn (case, FP32, case, …) for about budgetMs and at
 * least minPairs pairs, each time the median of its calls. This machine's speed drifts by up to
 * half over seconds (shared with other machines' work); alternating call by call moves both
 * timings alike, where timing one case after the other let a drift decide a verdict (the same
 * build's ratio moved by 0.08 between two runs that way).
 */
function ratioToFp32(
  run: () => void,
  fp32: () => void,
  budgetMs: number,
  minPairs: number,
): number {
  warm(run, fp32);
  const a: number[] = [], b: number[] = [];
  const start = performance.now();
  while (a.length < minPairs || performance.now() - start < budgetMs) {
    let t0 = performance.now();
    run();
    a.push(performance.now() - t0);
    t0 = performance.now();
    fp32();
    b.push(performance.now() - t0);
    if (a.length >= 400) break;
  }
  return median(a) / median(b);
}

/** The median of xs (sorts xs). */
function median(xs: number[]): number {
  xs.sort((p, q) => p - q);
  return xs[xs.length >> 1];
}

interface Row {
  d: number;
  T: number;
  name: string;
  bits: number;
  ts: number;
  wasm: number;
  /** WASM time / FP32 WASM time (ratioToFp32). */
  ratio: number;
  /** Dequantizing every page to f32 (WASM codecs) before attention: the naive cache's extra cost. */
  dequant: number;
  err: number;
}

/** Time to decode every page of a cache into f32 with the WASM codecs (what a naive cache adds). */
function dequantizeAll(cache: MixedPrecisionKVCache, d: number, buf: Float32Array): void {
  for (let h = 0; h < N_KV; h++) {
    let at = 0;
    for (const pool of cache.segments(0, h).pools) {
      for (const page of pool.pages) {
        const n = page.n * d;
        wasmCodec(page.keyCodec.spec.name).decodeWords(page.kWords, n, buf.subarray(at, at + n));
        wasmCodec(page.valueCodec.spec.name).decodeWords(page.vWords, n, buf.subarray(at, at + n));
        at += n;
      }
    }
  }
}

/** Appends T tokens of fresh uniform K and V to each of `layers` layers of every cache given. */
function fill(caches: MixedPrecisionKVCache[], layers: number, T: number, d: number): void {
  const k = new Float32Array(N_KV * d), v = new Float32Array(N_KV * d);
  for (let layer = 0; layer < layers; layer++) {
    for (let p = 0; p < T; p++) {
      for (let i = 0; i < k.length; i++) {
        k[i] = rand();
        v[i] = rand();
      }
      for (const c of caches) c.append(layer, p, k, v);
    }
  }
}

const rows: Row[] = [];
/** "row / its sameAs row in the other build" per shape, one layer and decode step. */
const buildRatios: string[] = [];
for (const d of DIMS) {
  for (const T of TS) {
    let fp32Run = () => {};
    const runs = new Map<string, () => void>();
    for (const c of CASES) {
      const shape = { nLayers: 1, nHeads: N_HEADS, nKvHeads: N_KV, headDim: d, maxSeqLen: T };
      const ts = new MixedPrecisionKVCache(shape, c.policy(), { integerDot: false });
      const wasm = wasmCache(c, shape);
      // the integer path is checked against its TS mirror (same roundings), the rest against exact TS
      const mirror = c.integerDot
        ? new MixedPrecisionKVCache(shape, c.policy(), { integerDot: true })
        : undefined;
      fill(mirror ? [ts, wasm, mirror] : [ts, wasm], 1, T, d);
      const q = Float32Array.from({ length: N_HEADS * d }, () => 2 * rand());
      const a = new Float32Array(N_HEADS * d), b = new Float32Array(N_HEADS * d);
      ts.attend(0, q, a);
      wasm.attend(0, q, b);
      const err = maxRelDiff(b, a);
      let mirrorErr = err;
      if (mirror) {
        const m = new Float32Array(N_HEADS * d);
        mirror.attend(0, q, m);
        mirrorErr = maxRelDiff(b, m);
      }
      if (!(mirrorErr <= AGREEMENT)) {
        throw new Error(`${c.name} d=${d} T=${T}: backends differ by ${mirrorErr} > ${AGREEMENT}`);
      }
      const tsMs = TIME_TS
        ? time(() => ts.attend(0, q, a), T >= 32768 ? 300 : 500, T >= 32768 ? 2 : 5)
        : NaN;
      const run = () => wasm.attend(0, q, b);
      const wasmMs = time(run, 500, 10);
      if (c.name === "fp32") fp32Run = run;
      const ratio = c.name === "fp32" ? 1 : ratioToFp32(run, fp32Run, 1500, 15);
      runs.set(c.name, run);
      const other = c.sameAs === undefined ? undefined : runs.get(c.sameAs);
      if (other) {
        const r = ratioToFp32(other, run, 1500, 15);
        buildRatios.push(`  one layer   d=${d} T=${T}: ${c.sameAs} / ${c.name} ${r.toFixed(2)}`);
      }
      const buf = new Float32Array(T * d);
      const dequantMs = c.name === "fp32" ? 0 : time(() => dequantizeAll(wasm, d, buf), 300, 5);
      rows.push({
        d,
        T,
        name: c.name,
        bits: wasm.memory().bitsPerElement,
        ts: tsMs,
        wasm: wasmMs,
        ratio,
        dequant: dequantMs,
        err,
      });
    }
  }
}

const pad = (s: string | number, n: number) => String(s).padStart(n);
console.log(
  `decode attention, ${N_HEADS} query heads over ${N_KV} KV heads, pages of ${PAGE}, no window but in "+window"; ` +
    `median ms per attend() call`,
);
console.log(
  `${pad("d", 4)} ${pad("T", 6)} ${pad("format", 20)} ${pad("bits/el", 8)} ${pad("TS ms", 9)} ` +
    `${pad("WASM ms", 9)} ${pad("TS/WASM", 8)} ${pad("/FP32 WASM", 10)} ${pad("naive/FP32", 10)} ` +
    `${pad("rel err", 9)}`,
);
for (const r of rows) {
  const fp32 = rows.find((x) => x.d === r.d && x.T === r.T && x.name === "fp32")!;
  console.log(
    `${pad(r.d, 4)} ${pad(r.T, 6)} ${pad(r.name, 20)} ${pad(r.bits.toFixed(2), 8)} ` +
      // --no-ts: the TS path was checked, not timed
      `${pad(TIME_TS ? r.ts.toFixed(3) : "—", 9)} ${pad(r.wasm.toFixed(3), 9)} ${
        pad(TIME_TS ? (r.ts / r.wasm).toFixed(1) : "—", 8)
      } ` +
      `${pad(r.ratio.toFixed(2), 10)} ` +
      `${pad(((r.dequant + fp32.wasm) / fp32.wasm).toFixed(2), 10)} ${
        pad(r.err.toExponential(1), 9)
      }`,
  );
}
console.log(
  "int-dot rows: WASM with integerDot; their TS columns and rel err are against the exact TS path; " +
    `v128: the plain-SIMD build (others: ${wasmVariant()})`,
);
console.log("\ntarget INT4 WASM / FP32 WASM <= 0.8, one layer (cache-resident up to T = 4096):");
for (const r of rows.filter((x) => TARGET_ROWS.includes(x.name))) {
  const ratio = r.ratio;
  console.log(
    `  ${r.name.padEnd(20)} d=${r.d} T=${r.T}: ${ratio.toFixed(2)} ${
      ratio <= 0.8 ? "holds" : "MISSED"
    }`,
  );
}

if (TIME_STEP) {
  // decode step: L layers attended once each per step, so every call reads its cache from DRAM
  console.log(
    `\ndecode step: L layers attended once each (FP32 cache of the step ≥ ${
      STEP_BYTES / 2 ** 20
    } ` +
      `MiB, read from DRAM as in a model); median ms per layer, WASM`,
  );
  console.log(
    `${pad("d", 4)} ${pad("T", 6)} ${pad("L", 4)} ${pad("format", 20)} ${pad("bits/el", 8)} ` +
      `${pad("ms/layer", 9)} ${pad("GB/s read", 9)} ${pad("/FP32", 6)}`,
  );
  const verdicts: string[] = [];
  for (const d of DIMS) {
    for (const T of TS) {
      const layers = Math.ceil(STEP_BYTES / (T * N_KV * d * 4 * 2));
      let fp32Step = () => {};
      const steps = new Map<string, () => void>();
      for (const c of CASES) {
        const shape = {
          nLayers: layers,
          nHeads: N_HEADS,
          nKvHeads: N_KV,
          headDim: d,
          maxSeqLen: T,
        };
        const cache = wasmCache(c, shape);
        fill([cache], layers, T, d);
        const qs = Array.from(
          { length: layers },
          () => Float32Array.from({ length: N_HEADS * d }, () => 2 * rand()),
        );
        const out = new Float32Array(N_HEADS * d);
        const step = () => {
          for (let l = 0; l < layers; l++) cache.attend(l, qs[l], out);
        };
        const ms = time(step, 1500, 3) / layers;
        const mem = cache.memory();
        if (c.name === "fp32") fp32Step = step;
        const ratio = c.name === "fp32" ? 1 : ratioToFp32(step, fp32Step, 3000, 6);
        // keep the caches other rows repeat in another build (sameAs) alive until then
        if (CASES.some((x) => x.sameAs === c.name)) steps.set(c.name, step);
        const other = c.sameAs === undefined ? undefined : steps.get(c.sameAs);
        if (other) {
          const r = ratioToFp32(other, step, 3000, 6);
          buildRatios.push(`  decode step d=${d} T=${T}: ${c.sameAs} / ${c.name} ${r.toFixed(2)}`);
        }
        console.log(
          `${pad(d, 4)} ${pad(T, 6)} ${pad(layers, 4)} ${pad(c.name, 20)} ` +
            `${pad(mem.bitsPerElement.toFixed(2), 8)} ${pad(ms.toFixed(3), 9)} ` +
            `${pad((mem.bytes / layers / ms / 1e6).toFixed(1), 9)} ` +
            `${pad(ratio.toFixed(2), 6)}`,
        );
        if (TARGET_ROWS.includes(c.name)) {
          verdicts.push(
            `  ${c.name.padEnd(20)} d=${d} T=${T}: ${ratio.toFixed(2)} ${
              ratio <= 0.8 ? "holds" : "MISSED"
            }`,
          );
        }
      }
    }
  }
  console.log("\ntarget INT4 WASM / FP32 WASM <= 0.8 in a decode step:");
  for (const v of verdicts) console.log(v);
}
console.log(
  `\nthe same rows in this engine's build (${wasmVariant()}) over the v128 build, called in turn:`,
);
for (const r of buildRatios) console.log(r);
