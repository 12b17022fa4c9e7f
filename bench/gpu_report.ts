// GPU decode attention, FP32 vs INT8 vs INT4 pages (and INT4 with keys stored before RoPE, which the
// kernel turns forward per token), at T ∈ {4096, 32768} in one run: checks each
// configuration against decode + attendHead first, then times the fused kernels (REPS attention
// calls per submission, so Deno's ~11 ms mapAsync round trip is paid once per submission, not per
// call; the median of ROUNDS submissions) and prints time per call, ratios to FP32 and page bytes
// read per second. Each row also times the project's WASM CPU attention on the same data and
// formats (a MixedPrecisionKVCache, backend "wasm", the library's default integerDot, holding the
// same T tokens in pages of the same words, checked word for word) and prints "GPU vs WASM" = WASM
// time / GPU time, both measured in this run.
// Usage: deno run -A bench/gpu_report.ts [--reps 4] [--rounds 5] [--tokens 4096,32768] [--warm-ms 500]
import { intValuesServe } from "../core/cache/int_dot.ts";
import { KeyRope } from "../core/cache/key_rope.ts";
import { MixedPrecisionKVCache } from "../core/cache/mixed_cache.ts";
import { uniformPolicy } from "../core/cache/policy.ts";
import { attendHead } from "../core/model/kv_cache.ts";
import { getFormat, wasmCodec, wordsForLength } from "../codecs/mod.ts";
import {
  type AttentionGroup,
  PagedAttention,
  PipelineCache,
  readBack,
  requestGpu,
} from "../gpu/mod.ts";
import { normals, rng } from "../tests/_fixtures.ts";
import { ClockHolder, printTable } from "./_gpu_bench.ts";
import { reportFlags } from "./report_flags.ts";

const flags = reportFlags(
  "gpu_report",
  "deno run -A bench/gpu_report.ts [--reps 4] [--rounds 5] [--tokens 4096,32768] [--warm-ms 500]",
  ["--reps", "--rounds", "--tokens", "--warm-ms"],
);
// the kernel timings leave out the first call of each submission: one call leaves none (the report
// crashed on an undefined median)
const REPS = flags.size("--reps", "4", 2);
const ROUNDS = flags.size("--rounds", "5");
const WARM_MS = flags.size("--warm-ms", "500", 0);
const TOKENS = flags.sizes("--tokens", "4096,32768");
const D = 128, N_HEADS = 8, N_KV = 2, P = 128, Q = N_HEADS / N_KV;
/** The model's RoPE base for the row whose keys are stored before RoPE. */
const ROPE_BASE = 10000;
/** label, key format, value format, and whether keys are stored before RoPE (turned per token). */
const CONFIGS: [string, string, string, boolean][] = [
  ["FP32", "fp32", "fp32", false],
  ["INT8", "int8-g32-channel", "int8-g32-token", false],
  ["INT4", "int4-g32-channel", "int4-g32-token", false],
  ["INT4 pre-RoPE", "int4-g32-channel", "int4-g32-token", true],
];

/**
 * WASM output against the GPU's: the int8/int4 rows run the integer-dot path (the library default;
 * it rounds the query and the weight·scale products to i16, core/cache/int_dot.ts), the FP32 row
 * the exact fused path, which agrees with the GPU to float rounding. The integer path measured
 * 1.9–2.9e-4 from the exact one at T = 512 … 131072 (this bench's data), so 1e-3 leaves 3× room.
 */
const WASM_VS_GPU = { exact: 1e-5, integerDot: 1e-3 };

const gpu = await requestGpu();
const pipelines = new PipelineCache(gpu);
const dev = gpu.device;
console.log(`adapter: ${gpu.info.description} (fallback adapter: ${gpu.info.isFallbackAdapter})`);
console.log(
  `CPU: ${cpuModel()}, ${navigator.hardwareConcurrency} threads; the WASM attention runs on one`,
);
console.log(
  `shape: ${N_HEADS} query heads on ${N_KV} KV heads, head_dim ${D}, pages of ${P} tokens, ${REPS} calls per submission\n`,
);

// page words of one KV head: keys channel-major or token-major as PAGES.md, then values
function packPages(name: string, x: Float32Array, T: number): Uint32Array {
  const f = getFormat(name), codec = wasmCodec(name);
  const perPage = wordsForLength(f, P * D);
  const words = new Uint32Array(perPage * Math.ceil(T / P));
  const col = new Float32Array(P);
  for (let page = 0; page * P < T; page++) {
    const dst = words.subarray(page * perPage, (page + 1) * perPage);
    const rows = x.subarray(page * P * D, (page + 1) * P * D);
    if (f.axis !== "channel") {
      codec.encodeInto(rows, dst);
      continue;
    }
    const per = (P / f.group) * f.wordsPerGroup;
    for (let c = 0; c < D; c++) {
      for (let t = 0; t < P; t++) col[t] = rows[t * D + c];
      codec.encodeInto(col, dst.subarray(c * per));
    }
  }
  return words;
}

/** The CPU's model name from /proc/cpuinfo (Linux), else the OS and architecture. */
function cpuModel(): string {
  try {
    const line = Deno.readTextFileSync("/proc/cpuinfo").split("\n")
      .find((l) => l.startsWith("model name"));
    if (line) return line.slice(line.indexOf(":") + 1).trim();
  } catch { /* not Linux, or not readable: fall through */ }
  return `${Deno.build.os} ${Deno.build.arch}`;
}

/**
 * The WASM cache of one configuration holding keys[h] and values[h] (token-major, T × D per KV
 * head): no sinks, no window (so every token sits in a page once appended; fp32 window so nothing
 * is rounded on the way), pages of P tokens.
 */
function wasmCache(
  keyFormat: string,
  valueFormat: string,
  keys: Float32Array[],
  values: Float32Array[],
  T: number,
  ropeBase?: number,
): MixedPrecisionKVCache {
  const cache = new MixedPrecisionKVCache(
    { nLayers: 1, nHeads: N_HEADS, nKvHeads: N_KV, headDim: D, maxSeqLen: T },
    uniformPolicy({ keyFormat, valueFormat, windowFormat: "fp32", pageTokens: P, ropeBase }),
    { backend: "wasm" },
  );
  // one append per token: ~10–20 µs a token on this bench's 2-core host, so T = 131072 fills in
  // seconds and no bulk path is needed
  const k = new Float32Array(N_KV * D), v = new Float32Array(N_KV * D);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < N_KV; h++) {
      k.set(keys[h].subarray(t * D, (t + 1) * D), h * D);
      v.set(values[h].subarray(t * D, (t + 1) * D), h * D);
    }
    cache.append(0, t, k, v);
  }
  return cache;
}

/**
 * Throws unless the cache's pages of KV head h hold exactly the words the GPU reads, page for page:
 * then both back ends attend the same data in the same formats.
 */
function checkSamePages(
  cache: MixedPrecisionKVCache,
  h: number,
  kw: Uint32Array,
  vw: Uint32Array,
  T: number,
  label: string,
): void {
  const pools = cache.segments(0, h).pools;
  const pages = pools.flatMap((pool) => pool.pages);
  let kAt = 0, vAt = 0;
  for (const [i, page] of pages.entries()) {
    const pk = page.kWords, pv = page.vWords;
    const starts = page.starts ? Uint32Array.from(page.starts) : undefined;
    if (
      !sameWords(pk, kw.subarray(kAt, kAt + pk.length)) ||
      !sameWords(pv, vw.subarray(vAt, vAt + pv.length)) ||
      (starts && !sameWords(starts, groupStarts(i)))
    ) {
      throw new Error(`${label}: WASM page ${i} of KV head ${h} differs from the GPU's`);
    }
    kAt += pk.length;
    vAt += pv.length;
  }
  const tokens = pages.reduce((a, page) => a + page.n, 0);
  if (pools.length !== 1 || tokens !== T || kAt !== kw.length || vAt !== vw.length) {
    throw new Error(
      `${label}: WASM cache of KV head ${h} holds ${pools.length} pools, ${tokens} of ${T} ` +
        `tokens in pages, ${kAt} + ${vAt} words; the GPU reads ${kw.length} + ${vw.length}`,
    );
  }
}

/** First position of each key group of page i (groups of 32 tokens): what the page records. */
function groupStarts(page: number): Uint32Array {
  return Uint32Array.from({ length: P / 32 }, (_, g) => page * P + g * 32);
}

function sameWords(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The largest over heads of ‖a − b‖ / ‖b‖, one head of D elements at a time. */
function worstHeadError(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let h = 0; h * D < b.length; h++) {
    let num = 0, den = 0;
    for (let i = h * D; i < (h + 1) * D; i++) {
      num += (a[i] - b[i]) ** 2;
      den += b[i] ** 2;
    }
    worst = Math.max(worst, Math.sqrt(num / den));
  }
  return worst;
}

/** The median of `rounds` timings of `reps` back-to-back calls, in ms per call. */
async function medianMs(
  call: (reps: number) => unknown,
  reps: number,
  rounds: number,
): Promise<number> {
  const times: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    await call(reps);
    times.push((performance.now() - t0) / reps);
  }
  return times.sort((a, b) => a - b)[rounds >> 1];
}

function unpackPages(name: string, words: Uint32Array, T: number): Float32Array {
  const f = getFormat(name), codec = wasmCodec(name);
  const perPage = wordsForLength(f, P * D);
  const out = new Float32Array(T * D), col = new Float32Array(P);
  for (let page = 0; page * P < T; page++) {
    const src = words.subarray(page * perPage, (page + 1) * perPage);
    const rows = out.subarray(page * P * D, (page + 1) * P * D);
    if (f.axis !== "channel") {
      codec.decodeWords(src, P * D, rows);
      continue;
    }
    const per = (P / f.group) * f.wordsPerGroup;
    for (let c = 0; c < D; c++) {
      codec.decodeWords(src.subarray(c * per), P, col);
      for (let t = 0; t < P; t++) rows[t * D + c] = col[t];
    }
  }
  return out;
}

const timestamps = gpu.info.features.includes("timestamp-query");
const querySet = timestamps
  ? dev.createQuerySet({ type: "timestamp", count: 2 * REPS })
  : undefined;

/** Median over ROUNDS submissions of one attention call's pass time, in µs (GPU timestamps). */
async function kernelUs(
  attention: PagedAttention,
  q: GPUBuffer,
  out: GPUBuffer,
  groups: AttentionGroup[],
  dims: { headDim: number; queriesPerKv: number; pageTokens: number },
): Promise<number> {
  const bytes = 16 * REPS;
  const resolve = dev.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const rb = dev.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  // every call of a REPS-call submission timed after busy work that holds the clock up, the
  // first of each left out, the median of all
  const times: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const enc = dev.createCommandEncoder();
    clock.encode(enc, 20);
    for (let i = 0; i < REPS; i++) {
      await attention.encode(enc, q, out, groups, dims, {
        querySet: querySet!,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      });
    }
    enc.resolveQuerySet(querySet!, 0, 2 * REPS, resolve, 0);
    const ns = new BigInt64Array(await readBack(gpu, resolve, rb, bytes, enc));
    for (let i = 1; i < REPS; i++) times.push(Number(ns[2 * i + 1] - ns[2 * i]) / 1000);
  }
  resolve.destroy();
  rb.destroy();
  return times.sort((a, b) => a - b)[times.length >> 1];
}

const clock = new ClockHolder(gpu);

const rows: string[][] = [];
for (const T of TOKENS) {
  const next = rng(T);
  const keys = Array.from({ length: N_KV }, () => normals(T * D, next));
  const values = Array.from({ length: N_KV }, () => normals(T * D, next));
  const q = normals(N_HEADS * D, next);
  let fp32Ms = 0, fp32Us = 0;
  for (const [label, kf, vf, preRope] of CONFIGS) {
    const kwAll: Uint32Array[] = [], vwAll: Uint32Array[] = [];
    const groups: AttentionGroup[] = [];
    const refK: Float32Array[] = [], refV: Float32Array[] = [];
    // keys before RoPE: turned back in groups of 32 from position 0, as the cache stores them;
    // the reference turns the decoded ones forward, and each page's group positions follow its
    // values (the GPU cache's slot layout), so every page is keys, values, positions
    const rope = preRope ? new KeyRope(D, T, 32, ROPE_BASE) : undefined;
    const angles = rope
      ? dev.createBuffer({
        size: (32 + T) * D * 4,
        usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      })
      : undefined;
    if (rope) dev.queue.writeBuffer(angles!, 0, rope.angleRows());
    const kPage = wordsForLength(getFormat(kf), P * D),
      vPage = wordsForLength(getFormat(vf), P * D),
      slot = kPage + vPage + (rope ? P / 32 : 0);
    const pages = Math.ceil(T / P);
    const poolWords = new Uint32Array(N_KV * pages * slot);
    for (let h = 0; h < N_KV; h++) {
      const stored = keys[h].slice();
      rope?.unrotate(stored, T, 32, 0);
      const kw = packPages(kf, stored, T), vw = packPages(vf, values[h], T);
      const k = unpackPages(kf, kw, T);
      if (rope) rope.rotate(k, T, 32, Int32Array.from({ length: T / 32 }, (_, g) => g * 32));
      refK.push(k);
      refV.push(unpackPages(vf, vw, T));
      kwAll.push(kw);
      vwAll.push(vw);
      const segments = [];
      for (let page = 0; page < pages; page++) {
        const base = (h * pages + page) * slot;
        poolWords.set(kw.subarray(page * kPage, (page + 1) * kPage), base);
        poolWords.set(vw.subarray(page * vPage, (page + 1) * vPage), base + kPage);
        if (rope) poolWords.set(groupStarts(page), base + kPage + vPage);
        segments.push({
          words: undefined as unknown as GPUBuffer, // the pool buffer, below
          keyFormat: getFormat(kf),
          valueFormat: getFormat(vf),
          keyBase: base,
          valueBase: base + kPage,
          tokens: Math.min(P, T - page * P),
          rope: rope ? { angles: angles!, span: 32 } : undefined,
        });
      }
      groups.push({ queryOffset: h * Q * D, outputOffset: h * Q * D, segments });
    }
    const poolBytes = poolWords.byteLength;
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const buf = dev.createBuffer({ size: poolBytes, usage: S, label: "bench pool" });
    dev.queue.writeBuffer(buf, 0, poolWords);
    for (const g of groups) for (const s of g.segments) s.words = buf;
    const qBuf = dev.createBuffer({ size: q.byteLength, usage: S });
    dev.queue.writeBuffer(qBuf, 0, q as Float32Array<ArrayBuffer>);
    const outBuf = dev.createBuffer({ size: q.byteLength, usage: S });
    const rb = dev.createBuffer({
      size: q.byteLength,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const attention = new PagedAttention(gpu, pipelines);
    const dims = { headDim: D, queriesPerKv: Q, pageTokens: P };
    const run = async (reps: number) => {
      const enc = dev.createCommandEncoder();
      for (let r = 0; r < reps; r++) await attention.encode(enc, qBuf, outBuf, groups, dims);
      return new Float32Array(await readBack(gpu, outBuf, rb, q.byteLength, enc));
    };
    // correctness first: every head against decode + attendHead
    const got = await run(1);
    const want = new Float32Array(N_HEADS * D), scores = new Float32Array(T);
    for (let h = 0; h < N_HEADS; h++) {
      const kv = Math.floor(h / Q);
      const wantHead = want.subarray(h * D, (h + 1) * D);
      attendHead(q.subarray(h * D, (h + 1) * D), refK[kv], refV[kv], T, D, scores, wantHead);
    }
    const worst = worstHeadError(got, want);
    if (!(worst <= 1e-5)) throw new Error(`${label} T=${T}: relative error ${worst} > 1e-5`);
    // the median of ROUNDS submissions: one submission alone swung the INT4/FP32 ratio by 0.65–1.13
    // between runs on llvmpipe
    await clock.warmUp(WARM_MS);
    const ms = await medianMs(run, REPS, ROUNDS);
    if (label === "FP32") fp32Ms = ms;
    // the kernels alone (split + merge pass), from GPU timestamps: wall time per call above also
    // holds the CPU's encoding and a share of the readback round trip
    const us = timestamps ? await kernelUs(attention, qBuf, outBuf, groups, dims) : NaN;
    if (label === "FP32") fp32Us = us;
    for (const b of [buf, qBuf, outBuf, rb]) b.destroy();
    angles?.destroy();
    attention.destroy();

    // the WASM CPU attention over the same words: checked against the GPU's output, then timed as
    // the GPU is (ROUNDS rounds of REPS calls, the median), after one untimed round so the module
    // runs its optimised tier. Both reread a cache that fits the GPU's L2 or the CPU's last-level
    // cache only at small T.
    const setup0 = performance.now();
    const cache = wasmCache(kf, vf, keys, values, T, rope ? ROPE_BASE : undefined);
    const setupMs = performance.now() - setup0;
    for (let h = 0; h < N_KV; h++) checkSamePages(cache, h, kwAll[h], vwAll[h], T, label);
    const wasmOut = new Float32Array(N_HEADS * D);
    cache.attend(0, q, wasmOut);
    const wasmErr = worstHeadError(wasmOut, got);
    // the integer path's rounding wherever the values take it (served values are summed with
    // integers whatever the keys do; keys take it only beside them)
    const intDot = cache.integerDot && intValuesServe(getFormat(vf), D, P);
    const tolerance = intDot ? WASM_VS_GPU.integerDot : WASM_VS_GPU.exact;
    if (!(wasmErr <= tolerance)) {
      throw new Error(`${label} T=${T}: WASM differs from the GPU by ${wasmErr} > ${tolerance}`);
    }
    const attendWasm = (reps: number) => {
      for (let r = 0; r < reps; r++) cache.attend(0, q, wasmOut);
    };
    attendWasm(REPS);
    const wasmMs = await medianMs(attendWasm, REPS, ROUNDS);
    cache.reset();
    console.log(
      `T=${T} ${label}: WASM cache filled in ${(setupMs / 1000).toFixed(1)} s, ` +
        `attends ${intDot ? "with integer dot products" : "exactly"}`,
    );
    rows.push([
      String(T),
      label,
      `${kf} / ${vf}`,
      (poolBytes / 2 ** 20).toFixed(1),
      ms.toPrecision(3),
      (fp32Ms / ms).toFixed(2),
      (poolBytes / (ms / 1000) / 1e9).toFixed(2),
      us.toFixed(1),
      (fp32Us / us).toFixed(2),
      (poolBytes / (us / 1e6) / 1e9).toFixed(1),
      worst.toExponential(1),
      wasmMs.toPrecision(3),
      (wasmMs / ms).toPrecision(3),
      ((wasmMs * 1000) / us).toPrecision(3),
      wasmErr.toExponential(1),
    ]);
  }
}
const head = [
  "T",
  "pages",
  "key / value format",
  "MiB read",
  "ms/call",
  "speed-up vs FP32",
  "GB/s read",
  "kernel µs",
  "kernel speed-up vs FP32",
  "kernel GB/s",
  "GPU rel. err",
  "WASM ms/call",
  "GPU vs WASM",
  "GPU kernel vs WASM",
  "WASM vs GPU err",
];
printTable(head, rows);
console.log(
  "ms/call: wall time per call, " + REPS + " calls per submission; kernel µs: the attention pass " +
    "alone by GPU timestamps (NaN without timestamp-query); GPU rel. err: against decode + " +
    "attendHead; GPU vs WASM: WASM ms / GPU wall ms; GPU kernel vs WASM: WASM ms / kernel ms; " +
    "WASM vs GPU err: largest per-head ‖WASM − GPU‖ / ‖GPU‖",
);
gpu.destroy();
