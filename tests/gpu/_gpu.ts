// Shared by the GPU tests: the device (a missing adapter fails under CI=true, skips elsewhere),
// page packing per core/cache/PAGES.md with the WASM codecs, and error measures.
import { DeviceError } from "../../core/errors.ts";
import { type FormatSpec, getFormat, wasmCodec, wordsForLength } from "../../codecs/mod.ts";
import { type GpuDevice, PipelineCache, requestGpu } from "../../gpu/mod.ts";
import { type CachePolicy, tieredPolicy } from "../../core/cache/policy.ts";

let cached: Promise<{ gpu: GpuDevice; pipelines: PipelineCache } | undefined> | undefined;

/**
 * The shared test device, or undefined (test skipped) when WebGPU is unavailable outside CI.
 * Under CI=true a missing adapter throws: the GPU tests must run there.
 */
export function testGpu(): Promise<{ gpu: GpuDevice; pipelines: PipelineCache } | undefined> {
  cached ??= (async () => {
    try {
      const gpu = await requestGpu();
      return { gpu, pipelines: new PipelineCache(gpu) };
    } catch (e) {
      if (e instanceof DeviceError && Deno.env.get("CI") !== "true") {
        console.warn(`GPU tests skipped: ${e.message}`);
        return undefined;
      }
      throw e;
    }
  })();
  return cached;
}

/**
 * Packs n tokens × d elements (token-major input) into one page of P tokens in `spec`, as
 * core/cache/PAGES.md lays it out: token-major for token-axis/ungrouped formats, channel-major
 * (element c·P + t, only whole groups of tokens) for channel-axis formats. Unused words are zero.
 */
export function packPage(
  spec: FormatSpec,
  x: Float32Array,
  n: number,
  d: number,
  P: number,
): Uint32Array {
  const codec = wasmCodec(spec.name);
  const words = new Uint32Array(wordsForLength(spec, Math.max(n, P) * d));
  if (spec.axis !== "channel") {
    codec.encodeInto(x.subarray(0, n * d), words);
    return words;
  }
  const perChannel = (P / spec.group) * spec.wordsPerGroup;
  const col = new Float32Array(n);
  for (let c = 0; c < d; c++) {
    for (let t = 0; t < n; t++) col[t] = x[t * d + c];
    codec.encodeInto(col, words.subarray(c * perChannel));
  }
  return words;
}

/** Decodes the n valid tokens of a page packed by {@linkcode packPage}, token-major. */
export function unpackPage(
  spec: FormatSpec,
  words: Uint32Array,
  n: number,
  d: number,
  P: number,
): Float32Array {
  const codec = wasmCodec(spec.name);
  const out = new Float32Array(n * d);
  if (spec.axis !== "channel") {
    codec.decodeWords(words, n * d, out);
    return out;
  }
  const perChannel = (P / spec.group) * spec.wordsPerGroup;
  const col = new Float32Array(n);
  for (let c = 0; c < d; c++) {
    codec.decodeWords(words.subarray(c * perChannel), n, col);
    for (let t = 0; t < n; t++) out[t * d + c] = col[t];
  }
  return out;
}

/** ‖a − b‖₂ / ‖b‖₂. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

export { getFormat };

/**
 * Three tiers by the attention a chunk gathered in the window, per layer and KV head of a 2-layer,
 * 2-KV-head, head_dim 16 shape: token-axis int8 keys with fp16 values, then channel-axis int8/int4,
 * then int2 (chunks of 16 tokens; pages of 16). With `ropeBase`, the channel-axis tiers store keys
 * before RoPE.
 */
export function threeTierPolicy(
  windowFormat: string,
  recentWindow: number,
  ropeBase?: number,
  stagingFormat?: string,
): CachePolicy {
  return tieredPolicy({
    label: "three tiers",
    tiers: Array.from({ length: 2 }, (_, l) =>
      Array.from({ length: 2 }, (_, h) => [
        { minScore: 0.2 + 0.05 * (l + h), keyFormat: "int8-g16-token", valueFormat: "fp16" },
        { minScore: 0.08, keyFormat: "int8-g16-channel", valueFormat: "int4-g16-token" },
        { minScore: 0, keyFormat: "int2-g16-channel", valueFormat: "int2-g16-token" },
      ])),
    sinkTokens: 2,
    recentWindow,
    pageTokens: 16,
    windowFormat,
    stagingFormat,
    ropeBase,
  });
}
