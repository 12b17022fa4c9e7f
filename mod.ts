/**
 * kvprec: a mixed-precision key/value cache for transformer inference. It measures how much each
 * cached position matters, stores K and V at the precision each needs, and runs attention directly
 * on the compressed cache. Pure TypeScript with a WebAssembly SIMD and a WebGPU backend; no Deno-only
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
export * from "./core/cache/partial.ts";
export * from "./core/cache/kernel_score.ts";
export * from "./core/cache/page.ts";
export * from "./core/cache/policy.ts";
export * from "./core/cache/mixed_cache.ts";
export * from "./core/cache/int_dot.ts";
export * from "./core/cache/serialize.ts";
export * from "./core/eval/compare.ts";
export * from "./core/cache/plan_policy.ts";
export * from "./core/cache/stored_assignment.ts";
export * from "./core/analyzer.ts";
export * from "./core/mapper.ts";
export * from "./core/plan.ts";
export * from "./core/attention_sensitivity.ts";
export * from "./core/sensitivity_step.ts";
export * from "./core/attention_bound.ts";
export * from "./core/recording_cache.ts";
export * from "./core/interval.ts";
export * from "./core/quantize_head.ts";
export * from "./core/verifier.ts";
export * from "./core/layer_lipschitz.ts";
export * from "./gpu/mod.ts";
