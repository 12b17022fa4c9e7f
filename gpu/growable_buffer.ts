/**
 * A growable GPU buffer that is reused, not reallocated per call: {@linkcode GrowableBuffer.ensure}
 * returns the same buffer until a request exceeds its size, then replaces it with one of twice the
 * needed size (at most what the device can bind), so a decode loop settles into zero allocations
 * after its first steps.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { GrowableBuffer } from "./growable_buffer.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   const buf = new GrowableBuffer(gpu.device, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, "t");
 *   const a = buf.ensure(100), b = buf.ensure(60);
 *   if (a !== b) throw new Error("a smaller request reuses the buffer");
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e;
 * }
 * ```
 * @module
 */

import { CapacityError } from "../core/errors.ts";

/** One GPU buffer of fixed usage that grows on demand and is otherwise reused. */
export class GrowableBuffer {
  readonly #device: GPUDevice;
  readonly #usage: GPUBufferUsageFlags;
  readonly #label: string;
  #buffer: GPUBuffer | undefined;

  /**
   * Creates the holder; no buffer is allocated until {@linkcode ensure}.
   * @param device the device
   * @param usage buffer usage flags
   * @param label debug label
   */
  constructor(device: GPUDevice, usage: GPUBufferUsageFlags, label: string) {
    this.#device = device;
    this.#usage = usage;
    this.#label = label;
  }

  /** Bytes currently allocated (0 before the first {@linkcode ensure}). */
  get byteLength(): number {
    return this.#buffer?.size ?? 0;
  }

  /**
   * A buffer of at least `bytes` bytes (and at least 256), never larger than the device binds: a
   * buffer past maxStorageBufferBindingSize fails validation, which WebGPU reports to no caller,
   * and the kernel reading it then writes zeros (doubling once crossed that limit silently).
   * @param bytes bytes needed
   * @returns the reused or newly grown buffer
   * @throws {CapacityError} when `bytes` exceed what the device can allocate or bind
   */
  ensure(bytes: number): GPUBuffer {
    if (this.#buffer === undefined || this.#buffer.size < bytes) {
      const { maxBufferSize, maxStorageBufferBindingSize } = this.#device.limits;
      const limit = this.#usage & GPUBufferUsage.STORAGE
        ? Math.min(maxBufferSize, maxStorageBufferBindingSize)
        : maxBufferSize;
      if (bytes > limit) {
        throw new CapacityError(
          `${this.#label}: ${bytes} bytes needed, the device allows buffers of ${limit}`,
        );
      }
      const size = Math.min(
        Math.max(256, Math.ceil(bytes * 2 / 256) * 256),
        Math.max(Math.ceil(bytes / 4) * 4, Math.floor(limit / 256) * 256),
      );
      this.#buffer?.destroy();
      this.#buffer = this.#device.createBuffer({ size, usage: this.#usage, label: this.#label });
    }
    return this.#buffer;
  }

  /** Frees the buffer. */
  destroy(): void {
    this.#buffer?.destroy();
    this.#buffer = undefined;
  }
}
