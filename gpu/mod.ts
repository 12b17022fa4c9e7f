/**
 * The WebGPU backend: device acquisition, the pipeline cache, WGSL generated from the format
 * table, page quantize/dequantize kernels, fused flash-decoding attention over mixed-format page
 * tables, and the GPU-resident paged KV cache.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./mod.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   if (gpu.lost) throw new Error("a new device is not lost");
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e; // no WebGPU: use the WASM backend
 * }
 * ```
 * @module
 */

export * from "./device.ts";
export * from "./program.ts";
export * from "./loop_limit.ts";
export * from "./growable_buffer.ts";
export * from "./wgsl_format.ts";
export * from "./quantize.ts";
export * from "./unrotate.ts";
export * from "./dequantize.ts";
export * from "./attention.ts";
export * from "./merge.ts";
export * from "./_io.ts";
export * from "./cache_policy.ts";
export * from "./cache.ts";
export * from "./choose_backend.ts";
