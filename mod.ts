/**
 * kvprec: a mixed-precision key/value cache for transformer inference. It measures how much each
 * cached position matters, stores K and V at the precision each needs, and runs attention directly
 * on the compressed cache. Pure TypeScript with a WebAssembly SIMD and a WebGPU backend; no Deno.*
 * API, so it runs in Deno, browsers and edge runtimes.
 *
 * @example
 * ```ts
 * import { Float32KVCache } from "./mod.ts";
 * const cache = new Float32KVCache({ nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 2, maxSeqLen: 8 });
 * if (cache.length(0) !== 0) throw new Error("a new cache is empty");
 * ```
 * @module
 */

export * from "./core/errors.ts";
export * from "./core/model/kv_cache.ts";
export * from "./core/tensor.ts";
export * from "./core/model/checkpoint.ts";
export * from "./core/model/tokenizer.ts";
export * from "./core/model/transformer.ts";
export * from "./core/eval/perplexity.ts";
export * from "./core/model/generate.ts";
export * from "./codecs/mod.ts";
// both the tokenizer and the codecs export an EncodeOptions; the explicit export picks the
// tokenizer's (the codecs' stays reachable as codecs/mod.ts EncodeOptions) until one is renamed
export type { EncodeOptions } from "./core/model/tokenizer.ts";
export * from "./gpu/mod.ts";
