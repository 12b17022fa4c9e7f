// One deterministic workload over the library's public API, run natively by Deno and, bundled, by
// Node and headless Chromium (tests/portability/portability_test.ts): every runtime must give the
// same bytes and outputs. Imports mod.ts only, and nothing Deno-specific, so it bundles like
// the library does.
import {
  buildPrecisionPlan,
  type CachePolicy,
  cacheShape,
  calibrate,
  createKVCache,
  Float32KVCache,
  formatNames,
  generateGreedy,
  getFormat,
  gpuDecode,
  gpuEncode,
  type GpuKVCache,
  type KVCacheShape,
  loadCache,
  MixedPrecisionKVCache,
  parseCheckpoint,
  parseTokenizer,
  perplexity,
  PipelineCache,
  planPolicy,
  requestGpu,
  saveCache,
  tieredPolicy,
  Transformer,
  tsCodec,
  uniformPolicy,
  useWasmModule,
  wasmCodec,
} from "../../mod.ts";

/** What one runtime computed. */
export interface WorkloadResult {
  /** Per format: FNV-1a of the TS and of the WASM encoding, and of the WASM decoding. */
  codecs: Record<string, { ts: string; wasm: string; decoded: string }>;
  /** Per cache: attention output, FNV-1a of the saved bytes, and whether the reloaded copy agrees. */
  caches: Record<string, CacheResult>;
  /** The real model end to end, when its files are given. */
  model?: ModelResult;
  /** The WebGPU cache against the WebAssembly one, when asked for and an adapter exists. */
  gpu?: GpuResult;
}

/** The model's files, as bytes: the workload reads no file itself. */
export interface ModelFiles {
  /** llama2.c checkpoint. */
  checkpoint: Uint8Array;
  /** llama2.c tokenizer. */
  tokenizer: Uint8Array;
  /** Evaluation text. */
  text: string;
}

/** What the model part computed. */
export interface ModelResult {
  /** Greedy continuation of "Once upon a time" through an FP32 cache. */
  greedy: number[];
  /** Perplexity of the first 128 tokens of the text's first line with an FP32 cache. */
  perplexity: number;
  /** The plan calibrated on that prefix for an 8-bit budget: FNV-1a of its JSON. */
  plan: string;
  /** Perplexity of the same tokens through a WASM cache holding that plan, and its bits. */
  planPerplexity: number;
  planBits: number;
}

/** One CPU cache's figures. */
export interface CacheResult {
  /** Attention output of every query head at layer 0 after all appends. */
  output: number[];
  /** FNV-1a of saveCache's bytes. */
  saved: string;
  /** The cache loadCache rebuilt attends to the same output, bit for bit. */
  reloadedAgrees: boolean;
  /** memory().bitsPerElement. */
  bits: number;
}

/** The GPU cache's figures, per cache setup. */
export interface GpuResult {
  /** Adapter vendor and architecture. */
  adapter: string;
  /** Per format: FNV-1a of the GPU's encoding and of its decoding of the WASM words. */
  codecs: Record<string, { wasm: string; decoded: string }>;
  /**
   * Per cache: largest |GPU − WASM exact| over the largest |WASM|; whether the GPU cache put as many
   * tokens in each format pair, and stored the same page words, as the WASM cache.
   */
  caches: Record<string, { relDiff: number; sameTiers: boolean; sameWords: boolean }>;
}

/** FNV-1a (32 bits) of a view's bytes, in hex. */
export function fnv1a(view: ArrayBufferView): string {
  const bytes = new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
  let h = 0x811c9dc5;
  for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0;
  return h.toString(16).padStart(8, "0");
}

/** mulberry32: the same numbers in every runtime. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values in (-scale, scale) with one in 16 ten times larger (outliers, as real keys have). */
function values(next: () => number, n: number, scale = 1): Float32Array {
  return Float32Array.from({ length: n }, () => {
    const x = (2 * next() - 1) * scale;
    return next() < 1 / 16 ? 10 * x : x;
  });
}

/** The cache setups every runtime runs. */
export const SETUPS: Record<
  string,
  { shape: KVCacheShape; tokens: number; policy: () => CachePolicy }
> = {
  "int4 per token, 8 query heads over 2 KV heads, d=64": {
    shape: { nLayers: 2, nHeads: 8, nKvHeads: 2, headDim: 64, maxSeqLen: 512 },
    tokens: 300,
    policy: () =>
      uniformPolicy({
        keyFormat: "int4-g32-token",
        valueFormat: "int4-g32-token",
        sinkTokens: 4,
        recentWindow: 16,
        pageTokens: 64,
      }),
  },
  "tiers with channel keys before RoPE and an int8 window, d=32": {
    shape: { nLayers: 1, nHeads: 4, nKvHeads: 2, headDim: 32, maxSeqLen: 256 },
    tokens: 200,
    policy: () =>
      tieredPolicy({
        label: "portability",
        tiers: [[0, 1].map(() => [
          { keyFormat: "int8-g32-channel", valueFormat: "int8-g8-token", minScore: 0.05 },
          { keyFormat: "int4-g32-channel", valueFormat: "int4-g8-token", minScore: 0.01 },
          { keyFormat: "int2-g32-channel", valueFormat: "int2-g8-token", minScore: 0 },
        ])],
        sinkTokens: 2,
        recentWindow: 8,
        windowFormat: "int8-g8-token",
        pageTokens: 32,
        ropeBase: 10000,
      }),
  },
  "fp16 keys, fp8 values, one query head per KV head, d=16": {
    shape: { nLayers: 1, nHeads: 3, nKvHeads: 3, headDim: 16, maxSeqLen: 128 },
    tokens: 100,
    policy: () =>
      uniformPolicy({
        keyFormat: "fp16",
        valueFormat: "fp8e4m3",
        sinkTokens: 0,
        recentWindow: 4,
        windowFormat: "fp32",
        pageTokens: 16,
      }),
  },
};

/** A cache as the workload drives it (the CPU caches attend synchronously, the GPU cache not). */
interface Driven {
  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void;
  attend(layer: number, q: Float32Array, out: Float32Array): void | Promise<void>;
}

/**
 * Appends `tokens` seeded tokens to every layer, attending at layer 0 every 16 positions so that
 * the window credits attention and tiered policies choose between their tiers.
 */
async function fill(cache: Driven, shape: KVCacheShape, tokens: number, seed: number) {
  const next = random(seed), n = shape.nKvHeads * shape.headDim;
  const out = new Float32Array(shape.nHeads * shape.headDim);
  for (let pos = 0; pos < tokens; pos++) {
    for (let l = 0; l < shape.nLayers; l++) cache.append(l, pos, values(next, n), values(next, n));
    if (pos % 16 === 15) await cache.attend(0, query(shape, seed + pos), out);
  }
}

function query(shape: KVCacheShape, seed: number): Float32Array {
  return values(random(seed), shape.nHeads * shape.headDim, 2);
}

/** One input per format: whole groups, not a multiple of 32 where the format allows it. */
function codecInputs(): Map<string, Float32Array> {
  const next = random(1);
  return new Map(
    formatNames().map((name) => {
      const spec = getFormat(name);
      const n = spec.group > 1 ? spec.group * 7 : 97;
      return [name, values(next, n, spec.name.startsWith("fp8e4m3") ? 40 : 4)];
    }),
  );
}

/**
 * Where createKVCache puts a small cache by itself, and why.
 * @returns the backend and the reason
 */
export async function autoBackend(): Promise<{ backend: string; reason: string }> {
  const setup = Object.values(SETUPS)[0];
  const { backend, reason, destroy } = await createKVCache(setup.shape, setup.policy());
  destroy();
  return { backend, reason };
}

/**
 * Runs the workload.
 * @param options gpu: also run each setup on a WebGPU cache (backend "gpu", any adapter); model:
 *   the model part; wasmModule: a compiled kvprec.wasm to use (useWasmModule) instead of compiling
 *   the embedded bytes
 * @returns what this runtime computed
 */
export async function workload(
  options: { gpu?: boolean; model?: ModelFiles; wasmModule?: WebAssembly.Module } = {},
): Promise<WorkloadResult> {
  if (options.wasmModule) useWasmModule(options.wasmModule);
  const codecs: WorkloadResult["codecs"] = {};
  const inputs = codecInputs();
  for (const [name, x] of inputs) {
    const n = x.length;
    const ts = tsCodec(name).encode(x), wasm = wasmCodec(name).encode(x);
    const out = new Float32Array(n);
    wasmCodec(name).decode(wasm, out);
    codecs[name] = { ts: fnv1a(ts.words), wasm: fnv1a(wasm.words), decoded: fnv1a(out) };
  }

  const caches: WorkloadResult["caches"] = {};
  const exact: Record<string, Float32Array> = {};
  const references: Record<string, MixedPrecisionKVCache> = {};
  let seed = 100;
  for (const [label, setup] of Object.entries(SETUPS)) {
    seed++;
    const cache = new MixedPrecisionKVCache(setup.shape, setup.policy(), { backend: "wasm" });
    await fill(cache, setup.shape, setup.tokens, seed);
    const q = query(setup.shape, seed), out = new Float32Array(q.length);
    cache.attend(0, q, out);
    const bytes = saveCache(cache);
    const again = new Float32Array(q.length);
    loadCache(bytes, { backend: "wasm" }).attend(0, q, again);
    caches[label] = {
      output: [...out],
      saved: fnv1a(bytes),
      reloadedAgrees: again.every((y, i) => Object.is(y, out[i])),
      bits: cache.memory().bitsPerElement,
    };
    if (options.gpu) {
      const reference = new MixedPrecisionKVCache(setup.shape, setup.policy(), {
        backend: "wasm",
        integerDot: false,
      });
      await fill(reference, setup.shape, setup.tokens, seed);
      reference.attend(0, q, exact[label] = new Float32Array(q.length));
      references[label] = reference;
    }
  }
  const result: WorkloadResult = { codecs, caches };
  if (options.model) result.model = await modelPart(options.model);
  if (options.gpu) result.gpu = await gpuPart(exact, references);
  return result;
}

/** Calibration, plan and perplexity on the real model: model, analyzer, mapper and cache at once. */
async function modelPart(files: ModelFiles): Promise<ModelResult> {
  const model = new Transformer(parseCheckpoint(files.checkpoint));
  const c = model.config;
  const tokenizer = parseTokenizer(files.tokenizer, c.vocabSize);
  const greedy = await generateGreedy(
    model,
    new Float32KVCache(cacheShape(c)),
    tokenizer.encode("Once upon a time"),
    30,
  );
  const line = tokenizer.encode(files.text.split("\n")[0]).slice(0, 128);
  const fp32 = await perplexity(model, new Float32KVCache(cacheShape(c)), [line]);
  const analysis = await calibrate(model, cacheShape(c), [line]);
  const formats = ["int2-g32-channel", "int4-g32-channel", "int8-g32-channel", "fp16"].map(
    getFormat,
  );
  const { plan } = buildPrecisionPlan(analysis, {
    mode: "budget",
    bitsPerElement: 8,
    keyFormats: formats,
    valueFormats: formats,
  });
  const cache = new MixedPrecisionKVCache(cacheShape(c), planPolicy(plan), { backend: "wasm" });
  const planned = await perplexity(model, cache, [line]);
  return {
    greedy,
    perplexity: fp32.perplexity,
    plan: fnv1a(new TextEncoder().encode(JSON.stringify(plan))),
    planPerplexity: planned.perplexity,
    planBits: cache.memory().bitsPerElement,
  };
}

async function gpuPart(
  exact: Record<string, Float32Array>,
  references: Record<string, MixedPrecisionKVCache>,
): Promise<GpuResult> {
  const gpu = await requestGpu();
  const { vendor, architecture, description } = gpu.info;
  const result: GpuResult = {
    adapter: [vendor, architecture, description].join(" ").trim(),
    codecs: {},
    caches: {},
  };
  try {
    const pipelines = new PipelineCache(gpu);
    for (const [name, x] of codecInputs()) {
      const spec = getFormat(name), wasm = wasmCodec(name).encode(x).words;
      const words = await gpuEncode(gpu, pipelines, spec, x);
      const decoded = await gpuDecode(gpu, pipelines, spec, wasm, x.length);
      result.codecs[name] = { wasm: fnv1a(words), decoded: fnv1a(decoded) };
    }
    let seed = 100;
    for (const [label, setup] of Object.entries(SETUPS)) {
      seed++;
      const chosen = await createKVCache(setup.shape, setup.policy(), { backend: "gpu", gpu });
      try {
        await fill(chosen.cache, setup.shape, setup.tokens, seed);
        const q = query(setup.shape, seed), out = new Float32Array(q.length);
        await chosen.cache.attend(0, q, out);
        const ref = exact[label];
        let diff = 0, scale = 0;
        for (let i = 0; i < ref.length; i++) {
          diff = Math.max(diff, Math.abs(out[i] - ref[i]));
          scale = Math.max(scale, Math.abs(ref[i]));
        }
        const moved = await (chosen.cache as GpuKVCache).toCpu();
        result.caches[label] = {
          relDiff: diff / scale,
          sameTiers: JSON.stringify([...moved.tokensByFormat()]) ===
            JSON.stringify([...references[label].tokensByFormat()]),
          sameWords: samePageWords(moved, references[label]),
        };
      } finally {
        chosen.destroy();
      }
    }
  } finally {
    gpu.destroy();
  }
  return result;
}

/** Whether two caches of one shape and policy hold the same pages, word for word. */
function samePageWords(a: MixedPrecisionKVCache, b: MixedPrecisionKVCache): boolean {
  for (let l = 0; l < a.shape.nLayers; l++) {
    for (let h = 0; h < a.shape.nKvHeads; h++) {
      const pa = a.segments(l, h).pools, pb = b.segments(l, h).pools;
      if (pa.length !== pb.length) return false;
      for (const [i, pool] of pa.entries()) {
        if (pool.pages.length !== pb[i].pages.length) return false;
        for (const [j, page] of pool.pages.entries()) {
          const other = pb[i].pages[j];
          if (fnv1a(page.kWords) !== fnv1a(other.kWords)) return false;
          if (fnv1a(page.vWords) !== fnv1a(other.vWords)) return false;
        }
      }
    }
  }
  return true;
}
