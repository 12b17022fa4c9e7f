/**
 * Mesa's llvmpipe (behind lavapipe, the software Vulkan adapter WebGPU runs on where there is no
 * GPU) counts the loop iterations of each invocation and, past 65535, leaves every loop as if its
 * condition had failed: no error, no lost device, just wrong results (gallivm's loop limiter
 * against infinite loops; measured in gpu/NOTES.md, finding 15). Kernels whose loops grow with
 * the shape (attention with head_dim, the merge with the records of a head) are checked against
 * it before they run on a software adapter. SwiftShader's limits are not known, so every
 * fallback adapter is held to llvmpipe's.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { checkLoopLimit, SOFTWARE_LOOP_LIMIT } from "./loop_limit.ts";
 * import type { GpuDevice } from "./device.ts";
 * const hardware = { info: { isFallbackAdapter: false } } as GpuDevice;
 * checkLoopLimit(hardware, "attention", 10 * SOFTWARE_LOOP_LIMIT); // no limit on a hardware GPU
 * ```
 * @module
 */

import { DeviceError } from "../core/errors.ts";
import type { GpuDevice } from "./device.ts";

/** Loop iterations per invocation after which llvmpipe silently leaves every loop. */
export const SOFTWARE_LOOP_LIMIT = 65535;

/**
 * Throws when a kernel would run more loop iterations per invocation than a software adapter
 * completes. A DeviceError, as the limit is the adapter's (createKVCache's "auto" never puts a cache
 * on a software adapter; `backend: "gpu"` reports this error).
 * @param gpu the device
 * @param kernel the kernel and the shape that sets its loops, named in the message
 * @param iterations an upper bound of the loop iterations of its busiest invocation
 * @throws {DeviceError} on a fallback adapter when iterations exceed {@linkcode SOFTWARE_LOOP_LIMIT}
 */
export function checkLoopLimit(gpu: GpuDevice, kernel: string, iterations: number): void {
  if (!gpu.info.isFallbackAdapter || iterations <= SOFTWARE_LOOP_LIMIT) return;
  throw new DeviceError(
    `${kernel} runs up to ${iterations} loop iterations per invocation; the software adapter ` +
      `(${gpu.info.description || "fallback"}) leaves every loop after ${SOFTWARE_LOOP_LIMIT} ` +
      `without an error, so its results would be wrong: use the WebAssembly backend`,
  );
}
