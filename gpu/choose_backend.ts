/**
 * Chooses where a cache runs and creates it there: `createKVCache(shape, policy)` with backend
 * "auto" takes a hardware GPU when the policy runs there unchanged and the cache is large enough
 * to pay for the GPU's readbacks, else WebAssembly, else the TypeScript reference, and says which
 * it chose and why. Choosing never changes what is stored:
 * a policy the GPU cache cannot hold as written (a window format other than fp32, fp16 or an int
 * format grouped per token, a memory budget) stays on the CPU, and a software (fallback) adapter such as llvmpipe or SwiftShader is
 * not preferred over WebAssembly on the same CPU.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { createKVCache } from "./choose_backend.ts";
 * import { uniformPolicy } from "../core/cache/policy.ts";
 * const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 64 };
 * const policy = uniformPolicy({ keyFormat: "int8-g8-token", valueFormat: "int8-g8-token" });
 * const chosen = await createKVCache(shape, policy, { backend: "wasm" });
 * if (chosen.backend !== "wasm") throw new Error(chosen.reason);
 * chosen.destroy();
 * ```
 * @module
 */

import {
  checkOptionFields,
  DeviceError,
  FormatError,
  InvalidValueError,
  KvprecError,
  ShapeError,
  showValue,
} from "../core/errors.ts";
import { checkCacheShape, type KVCache, type KVCacheShape } from "../core/model/kv_cache.ts";
import { type CachePolicy, checkPolicyShape } from "../core/cache/policy.ts";
import { MixedPrecisionKVCache } from "../core/cache/mixed_cache.ts";
import { loadWasmCodecs } from "../codecs/wasm.ts";
import { type GpuDevice, requestGpu } from "./device.ts";
import { checkGpuArgs } from "./program.ts";
import { createGpuKVCache } from "./cache.ts";
import { type GpuCachePolicy, gpuPolicyFor } from "./cache_policy.ts";
import { MAX_QUERIES_PER_KV } from "./attention.ts";

/** Where attention over a cache runs. */
export type CacheBackend = "ts" | "wasm" | "gpu";

/** Options of {@linkcode createKVCache}. */
export interface CreateKVCacheOptions {
  /**
   * "auto" (default): a hardware GPU when the policy runs there unchanged, else wasm, else ts.
   * "gpu" uses any adapter, a software one included, and fails when the policy cannot run there.
   */
  backend?: CacheBackend | "auto";
  /** The device for the GPU (default: one is requested, and destroyed with the cache). */
  gpu?: GpuDevice;
  /** CPU caches: integer dot products (see MixedCacheOptions.integerDot; default true). */
  integerDot?: boolean;
  /** CPU caches: memory budget in bytes (the GPU cache has none, so a budget keeps the CPU). */
  maxBytes?: number;
  /**
   * "auto" takes the GPU only for caches of at least this many K/V elements a layer
   * (2 · maxSeqLen · nKvHeads · headDim; default {@linkcode MIN_GPU_ELEMENTS}).
   */
  minGpuElements?: number;
}

/** The fields of {@linkcode CreateKVCacheOptions}. */
const CREATE_OPTIONS: Record<keyof CreateKVCacheOptions, true> = {
  backend: true,
  gpu: true,
  integerDot: true,
  maxBytes: true,
  minGpuElements: true,
};

/**
 * Default of {@linkcode CreateKVCacheOptions.minGpuElements}: 2^24 K/V elements a layer. Each GPU
 * attention call waits for its readback: about 12 ms in Deno on an H100 (gpu/NOTES.md, findings 4
 * and 11). One WASM thread of that machine's host attended T=32768 tokens of 2 KV heads of 128
 * (2^24 elements) in 8.0–14.5 ms (bench/gpu_report.ts), and smaller caches in less, so below
 * this size WebAssembly answers first. Where readback is faster (browsers), set it lower.
 */
export const MIN_GPU_ELEMENTS = 2 ** 24;

/** A cache and where it runs. */
export interface ChosenKVCache {
  /** The cache. */
  cache: KVCache;
  /** Where it runs. */
  backend: CacheBackend;
  /** Why there: the adapter used, or what ruled the GPU (and WebAssembly) out. */
  reason: string;
  /** Releases GPU buffers, and the device when createKVCache requested it; no-op on the CPU. */
  destroy(): void;
}

/**
 * Creates a cache for `policy` on the backend `options.backend` names, or on the one "auto"
 * chooses: a hardware GPU when {@linkcode gpuPolicyFor} accepts the policy, no memory budget is
 * set and the cache is large enough for the GPU to pay for its readbacks (`minGpuElements`), and
 * its cache can be created (a DeviceError there falls back too); else WebAssembly (when the module
 * loads), else TypeScript.
 *
 * @param shape the cache's shape
 * @param policy where tokens go
 * @param options backend, device and CPU-cache options
 * @returns the cache, its backend and the reason for it
 * @throws {InvalidValueError} an unknown backend, an options field createKVCache does not have, or
 *   a minGpuElements that is not a number ≥ 0
 * @throws {FormatError} backend "gpu" with a policy or budget the GPU cache cannot hold
 * @throws {ShapeError} backend "gpu" with more query heads per KV head than its kernel holds
 * @throws {DeviceError} backend "gpu" without a usable WebGPU device
 */
export async function createKVCache(
  shape: KVCacheShape,
  policy: CachePolicy,
  options: CreateKVCacheOptions = {},
): Promise<ChosenKVCache> {
  checkCacheShape(shape); // a missing one read `nHeads` of undefined below, a TypeError
  checkPolicyShape(policy, shape); // a missing policy read `options` of undefined on "auto"
  checkOptionFields(options, CREATE_OPTIONS, "createKVCache options");
  const least = options.minGpuElements ?? MIN_GPU_ELEMENTS;
  // a NaN or negative threshold sent every cache to the GPU, or none, without a word (Infinity
  // keeps "auto" off the GPU)
  if (typeof least !== "number" || !(least >= 0)) {
    throw new InvalidValueError(
      `minGpuElements is ${showValue(options.minGpuElements)}, expected a number ≥ 0`,
    );
  }
  // a device given must be one, whichever backend the call ends on
  if (options.gpu !== undefined) checkGpuArgs(options.gpu, undefined, "options.gpu");
  const backend = options.backend ?? "auto";
  const cpu = (b: "ts" | "wasm", reason: string): ChosenKVCache => ({
    cache: new MixedPrecisionKVCache(shape, policy, {
      backend: b,
      integerDot: options.integerDot,
      maxBytes: options.maxBytes,
    }),
    backend: b,
    reason,
    destroy() {},
  });
  if (backend === "ts" || backend === "wasm") return cpu(backend, `${backend}: as asked`);
  if (backend !== "gpu" && backend !== "auto") {
    throw new InvalidValueError(
      `backend ${showValue(backend)}, expected "auto", "gpu", "wasm" or "ts"`,
    );
  }

  let gpuPolicy = gpuPolicyFor(policy);
  if (typeof gpuPolicy !== "string" && options.maxBytes !== undefined) {
    gpuPolicy = `a memory budget of ${options.maxBytes} bytes is set; the GPU cache has none`;
  }
  const perKv = shape.nHeads / shape.nKvHeads;
  const wide = perKv > MAX_QUERIES_PER_KV;
  if (typeof gpuPolicy !== "string" && wide) {
    gpuPolicy = `${perKv} query heads per KV head; the GPU attention kernel holds at most ` +
      `${MAX_QUERIES_PER_KV}`;
  }
  if (backend === "gpu") {
    // a shape the kernel cannot hold is a ShapeError, as createGpuKVCache names it
    if (typeof gpuPolicy === "string") {
      throw new (wide ? ShapeError : FormatError)(`backend "gpu": ${gpuPolicy}`);
    }
    const gpu = options.gpu ?? await requestGpu();
    return await _onGpu(shape, gpu, gpuPolicy, gpu !== options.gpu, "gpu: as asked");
  }

  // auto
  let why: string;
  const elements = 2 * shape.maxSeqLen * shape.nKvHeads * shape.headDim;
  if (typeof gpuPolicy === "string") {
    why = gpuPolicy;
  } else if (elements < least) {
    why = `the cache holds at most ${elements} K/V elements a layer, fewer than minGpuElements ` +
      `(${least}): WebAssembly attends that many before a GPU call's readback returns`;
  } else {
    let gpu: GpuDevice | undefined = options.gpu, missing = "";
    try {
      gpu ??= await requestGpu();
    } catch (e) {
      if (!(e instanceof DeviceError)) throw e;
      missing = e.message;
    }
    if (gpu === undefined) {
      why = `no WebGPU device (${missing})`;
    } else if (gpu.info.isFallbackAdapter) {
      why = `the WebGPU adapter offered is a software one (${gpu.info.description})`;
      if (gpu !== options.gpu) gpu.destroy();
    } else {
      try {
        return await _onGpu(
          shape,
          gpu,
          gpuPolicy,
          gpu !== options.gpu,
          `gpu: ${gpu.info.description || "a hardware adapter"}`,
        );
      } catch (e) {
        // a lost or exhausted device: the CPU still works
        if (!(e instanceof DeviceError)) throw e;
        why = `the GPU cache failed (${e.message})`;
      }
    }
  }
  if (shape.headDim % 4 !== 0) {
    return cpu(
      "ts",
      `ts: ${why}, and the WASM kernels need head_dim a multiple of 4, not ${shape.headDim}`,
    );
  }
  try {
    await loadWasmCodecs();
    // instantiates the module just compiled; a page's main thread in Chrome before 114 refused
    // that synchronously, and the cache's own errors are the ts cache's too
    return cpu("wasm", `wasm: ${why}`);
  } catch (e) {
    if (e instanceof KvprecError) throw e;
    return cpu("ts", `ts: ${why}, and WebAssembly SIMD did not load (${e})`);
  }
}

async function _onGpu(
  shape: KVCacheShape,
  gpu: GpuDevice,
  policy: GpuCachePolicy,
  ownsDevice: boolean,
  reason: string,
): Promise<ChosenKVCache> {
  try {
    const cache = await createGpuKVCache({ gpu, shape, policy });
    return {
      cache,
      backend: "gpu",
      reason,
      destroy() {
        cache.destroy();
        if (ownsDevice) gpu.destroy();
      },
    };
  } catch (e) {
    if (ownsDevice) gpu.destroy();
    throw e;
  }
}
