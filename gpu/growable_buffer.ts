/**
 * A growable GPU buffer that is reused, not reallocated per call: {@linkcode GrowableBuffer.ensure}
 * returns the same buffer until a request exceeds its size, then replaces it with one of twice the
 * needed size, so a decode loop settles into zero allocations after its first steps.
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
   * A buffer of at least `bytes` bytes (and at least 256).
   * @param bytes bytes needed
   * @returns the reused or newly grown buffer
   */
  ensure(bytes: number): GPUBuffer {
    if (this.#buffer === undefined || this.#buffer.size < bytes) {
      this.#buffer?.destroy();
      const size = Math.max(256, Math.ceil(bytes * 2 / 256) * 256);
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
