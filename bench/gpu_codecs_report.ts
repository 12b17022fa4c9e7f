/**
 * GPU codec throughput against the WASM kernels, in one run: GB/s of f32 (input for encode,
 * output for decode) on 16 MiB of f32 for the formats of bench/codecs_report.ts. GPU figures are
 * kernel times from GPU timestamps (the "timestamp-query" feature; data already in GPU memory, as
 * the GPU cache keeps its pages), the median of ROUNDS × REPS dispatches after busy work that
 * holds a hardware GPU's clock up; WASM figures are the kernel alone on one core (data already in
 * WASM memory), the fastest of several runs. The GPU's words and floats are checked against WASM's
 * first (bit-identical).
 *
 *     deno run -A bench/gpu_codecs_report.ts [--reps 8] [--rounds 5]
 *
 * @module
 */

import { getFormat, wordsForLength } from "../codecs/format.ts";
import { loadWasmCodecsSync, wasmCodec } from "../codecs/wasm.ts";
import {
  bufferFrom,
  DEQUANTIZE_PER_THREAD,
  dequantizeProgram,
  PipelineCache,
  quantizeProgram,
  readBack,
  requestGpu,
} from "../gpu/mod.ts";
import { BENCH_FORMATS, BENCH_LENGTH, benchInput } from "./_codecs_cases.ts";
import { ClockHolder, printTable } from "./_gpu_bench.ts";
import { reportFlags } from "./report_flags.ts";

const flags = reportFlags(
  "gpu_codecs_report",
  "deno run -A bench/gpu_codecs_report.ts [--reps 8] [--rounds 5]",
  ["--reps", "--rounds"],
);
const REPS = flags.size("--reps", "8");
const ROUNDS = flags.size("--rounds", "5");
const WG = 64;

const gpu = await requestGpu();
if (!gpu.info.features.includes("timestamp-query")) {
  throw new Error(`${gpu.info.description}: no timestamp-query feature, kernel times unavailable`);
}
const dev = gpu.device, pipelines = new PipelineCache(gpu);
console.log(`adapter: ${gpu.info.description} (fallback adapter: ${gpu.info.isFallbackAdapter})`);

const S = GPUBufferUsage.STORAGE, COPY = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const querySet = dev.createQuerySet({ type: "timestamp", count: 2 * REPS });
const resolve = dev.createBuffer({
  size: 16 * REPS,
  usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
});
const rb = dev.createBuffer({
  size: 16 * REPS,
  usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
});
const clock = new ClockHolder(gpu);

/** Median kernel time in seconds of `pipeline` over `invocations` threads with `bindings`. */
async function gpuSeconds(
  pipeline: GPUComputePipeline,
  bindings: GPUBufferBinding[],
  invocations: number,
): Promise<number> {
  const group = dev.createBindGroup({
    layout: pipeline.getBindGroupLayout(0),
    entries: bindings.map((resource, binding) => ({ binding, resource })),
  });
  const groups = Math.ceil(invocations / WG);
  const [x, y] = groups <= 65535 ? [groups, 1] : [65535, Math.ceil(groups / 65535)];
  const times: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const enc = dev.createCommandEncoder();
    clock.encode(enc, 20);
    for (let i = 0; i < REPS; i++) {
      const pass = enc.beginComputePass({
        timestampWrites: {
          querySet,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(x, y);
      pass.end();
    }
    enc.resolveQuerySet(querySet, 0, 2 * REPS, resolve, 0);
    const ns = new BigInt64Array(await readBack(gpu, resolve, rb, 16 * REPS, enc));
    for (let i = 0; i < REPS; i++) times.push(Number(ns[2 * i + 1] - ns[2 * i]) / 1e9);
  }
  return times.sort((a, b) => a - b)[times.length >> 1];
}

/** Fastest of `reps` runs after one warm-up. */
function cpuSeconds(fn: () => void, reps: number): number {
  fn();
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  return best;
}

const mod = loadWasmCodecsSync();
const k = mod.kernels;
const x = benchInput();
const n = BENCH_LENGTH, gbs = (s: number) => (n * 4) / s / 1e9;
const rows: string[][] = [];
for (const name of BENCH_FORMATS) {
  const spec = getFormat(name);
  const nw = wordsForLength(spec, n), groups = n / spec.group;
  const words = wasmCodec(name).encode(x).words;
  // GPU buffers: the input, the packed words, the decoded floats, the encode jobs
  const xBuf = bufferFrom(dev, x, S | COPY, "x");
  const wBuf = bufferFrom(dev, words, S | COPY, "words");
  const encBuf = dev.createBuffer({ size: nw * 4, usage: S | COPY });
  const decBuf = dev.createBuffer({ size: n * 4, usage: S | COPY });
  const jobs = new Uint32Array(4 * groups);
  for (let g = 0; g < groups; g++) {
    jobs[4 * g] = g * spec.group;
    jobs[4 * g + 1] = 1;
    jobs[4 * g + 2] = g * spec.wordsPerGroup;
  }
  const jobBuf = bufferFrom(dev, jobs, S, "jobs");
  const params = bufferFrom(dev, Uint32Array.of(0, n, 0, 0), GPUBufferUsage.UNIFORM, "params");
  const quantize = await pipelines.get(quantizeProgram(spec));
  const dequantize = await pipelines.get(dequantizeProgram(spec));
  const encodeS = await gpuSeconds(quantize, [{ buffer: xBuf }, { buffer: encBuf }, {
    buffer: jobBuf,
  }], groups);
  const decodeS = await gpuSeconds(dequantize, [{ buffer: wBuf }, { buffer: decBuf }, {
    buffer: params,
  }], Math.ceil(n / DEQUANTIZE_PER_THREAD));
  // correctness: the GPU's words and floats equal WASM's
  const readAll = async (buf: GPUBuffer, bytes: number) => {
    const r = dev.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    const out = await readBack(gpu, buf, r, bytes);
    r.destroy();
    return new Uint32Array(out);
  };
  const gotWords = await readAll(encBuf, nw * 4), gotFloats = await readAll(decBuf, n * 4);
  const want = new Float32Array(n);
  wasmCodec(name).decodeWords(words, n, want);
  const wantBits = new Uint32Array(want.buffer);
  for (let i = 0; i < nw; i++) {
    if (gotWords[i] !== words[i]) throw new Error(`${name}: GPU encode word ${i} differs`);
  }
  for (let i = 0; i < n; i++) {
    if (gotFloats[i] !== wantBits[i]) throw new Error(`${name}: GPU decode element ${i} differs`);
  }
  // WASM kernels, data already in WASM memory
  const wasmSeconds = (op: "encode" | "decode") => {
    const [src, dst] = op === "encode"
      ? mod.arena.layout(4 * n, 4 * nw)
      : mod.arena.layout(4 * nw, 4 * n);
    if (op === "encode") mod.arena.f32(src, n).set(x);
    else mod.arena.u32(src, nw).set(words);
    const int = spec.kind === "int";
    return cpuSeconds(
      op === "encode"
        ? () => int ? k.encodeInt(src, dst, n, spec.bits, spec.group) : k.encodeHalf(src, dst, n, 0)
        : () =>
          int ? k.decodeInt(src, dst, n, spec.bits, spec.group) : k.decodeHalf(src, dst, n, 0),
      10,
    );
  };
  const wasmEncodeS = wasmSeconds("encode"), wasmDecodeS = wasmSeconds("decode");
  for (const [op, g, w] of [["encode", encodeS, wasmEncodeS], ["decode", decodeS, wasmDecodeS]]) {
    rows.push([
      name,
      op as string,
      gbs(g as number).toFixed(1),
      gbs(w as number).toFixed(2),
      ((w as number) / (g as number)).toPrecision(3) + "×",
    ]);
  }
  for (const b of [xBuf, wBuf, encBuf, decBuf, jobBuf, params]) b.destroy();
}
console.log(
  `16 MiB of f32, GB/s of f32; GPU: kernel time by timestamps, median of ${
    ROUNDS * REPS
  }; WASM: one core, fastest of 10; outputs checked bit-identical\n`,
);
printTable(["format", "op", "GPU GB/s", "WASM kernel GB/s", "GPU / WASM"], rows);
gpu.destroy();
