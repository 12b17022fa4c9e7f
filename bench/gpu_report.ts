// GPU decode attention, FP32 vs INT8 vs INT4 pages, at T ∈ {4096, 32768} in one run: checks each
// configuration against decode + attendHead first, then times the fused kernels (REPS attention
// calls per submission, so Deno's ~11 ms mapAsync round trip is paid once per submission, not per
// call; the median of ROUNDS submissions) and prints time per call, ratios to FP32 and page bytes
// read per second.
// Usage: deno run -A bench/gpu_report.ts [--reps 4] [--rounds 5] [--tokens 4096,32768]
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

const arg = (name: string, fallback: string) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : fallback;
};
const REPS = Number(arg("--reps", "4"));
const ROUNDS = Number(arg("--rounds", "5"));
const TOKENS = arg("--tokens", "4096,32768").split(",").map(Number);
const D = 128, N_HEADS = 8, N_KV = 2, P = 128, Q = N_HEADS / N_KV;
const CONFIGS: [string, string, string][] = [
  ["FP32", "fp32", "fp32"],
  ["INT8", "int8-g32-channel", "int8-g32-token"],
  ["INT4", "int4-g32-channel", "int4-g32-token"],
];

const gpu = await requestGpu();
const pipelines = new PipelineCache(gpu);
const dev = gpu.device;
console.log(`adapter: ${gpu.info.description} (fallback adapter: ${gpu.info.isFallbackAdapter})`);
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

const rows: string[][] = [];
for (const T of TOKENS) {
  const next = rng(T);
  const keys = Array.from({ length: N_KV }, () => normals(T * D, next));
  const values = Array.from({ length: N_KV }, () => normals(T * D, next));
  const q = normals(N_HEADS * D, next);
  let fp32Ms = 0;
  for (const [label, kf, vf] of CONFIGS) {
    const parts: Uint32Array[] = [];
    const groups: AttentionGroup[] = [];
    const refK: Float32Array[] = [], refV: Float32Array[] = [];
    let at = 0;
    const pool = dev.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE }); // placeholder
    const kPage = wordsForLength(getFormat(kf), P * D),
      vPage = wordsForLength(getFormat(vf), P * D);
    for (let h = 0; h < N_KV; h++) {
      const kw = packPages(kf, keys[h], T), vw = packPages(vf, values[h], T);
      refK.push(unpackPages(kf, kw, T));
      refV.push(unpackPages(vf, vw, T));
      const kBase = at, vBase = at + kw.length;
      parts.push(kw, vw);
      at += kw.length + vw.length;
      const segments = [];
      for (let page = 0; page * P < T; page++) {
        segments.push({
          words: pool,
          keyFormat: getFormat(kf),
          valueFormat: getFormat(vf),
          keyBase: kBase + page * kPage,
          valueBase: vBase + page * vPage,
          tokens: Math.min(P, T - page * P),
        });
      }
      groups.push({ queryOffset: h * Q * D, outputOffset: h * Q * D, segments });
    }
    pool.destroy();
    const poolBytes = at * 4;
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    const buf = dev.createBuffer({ size: poolBytes, usage: S, label: "bench pool" });
    let off = 0;
    for (const p of parts) {
      dev.queue.writeBuffer(buf, off * 4, p as Uint32Array<ArrayBuffer>);
      off += p.length;
    }
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
    const want = new Float32Array(D), scores = new Float32Array(T);
    let worst = 0;
    for (let h = 0; h < N_HEADS; h++) {
      const kv = Math.floor(h / Q);
      attendHead(q.subarray(h * D, (h + 1) * D), refK[kv], refV[kv], T, D, scores, want);
      let num = 0, den = 0;
      for (let i = 0; i < D; i++) {
        num += (got[h * D + i] - want[i]) ** 2;
        den += want[i] ** 2;
      }
      worst = Math.max(worst, Math.sqrt(num / den));
    }
    if (!(worst <= 1e-5)) throw new Error(`${label} T=${T}: relative error ${worst} > 1e-5`);
    // the median of ROUNDS submissions: one submission alone swung the INT4/FP32 ratio by 0.65–1.13
    // between runs on llvmpipe
    const times: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const t0 = performance.now();
      await run(REPS);
      times.push((performance.now() - t0) / REPS);
    }
    const ms = times.sort((a, b) => a - b)[ROUNDS >> 1];
    if (label === "FP32") fp32Ms = ms;
    rows.push([
      String(T),
      label,
      `${kf} / ${vf}`,
      (poolBytes / 2 ** 20).toFixed(1),
      ms.toFixed(1),
      (fp32Ms / ms).toFixed(2),
      (poolBytes / (ms / 1000) / 1e9).toFixed(2),
      worst.toExponential(1),
    ]);
    for (const b of [buf, qBuf, outBuf, rb]) b.destroy();
    attention.destroy();
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
  "rel. err",
];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r: string[]) => "| " + r.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |";
console.log(line(head));
console.log("| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |");
for (const r of rows) console.log(line(r));
gpu.destroy();
