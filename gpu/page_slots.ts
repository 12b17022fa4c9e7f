/**
 * Page slots of one size in one GPU buffer that grows as slots are taken: when full it is replaced
 * by one with a quarter more slots (at least 4 more), the slots in use copied over on the GPU, so
 * its size follows the pages really held (at most 1.25 times them, or 4 slots more) instead of the
 * worst case. The GPU cache keeps one per format
 * pair, so a plan whose pages are mostly 2- and 4-bit holds that much GPU memory.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { PageSlots } from "./page_slots.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   const slots = new PageSlots(gpu.device, 64, 100, "pages");
 *   const a = slots.take(), b = slots.take();
 *   if (a !== 0 || b !== 1 || slots.byteLength < 2 * 64 * 4) throw new Error("two slots");
 *   slots.destroy();
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e;
 * }
 * ```
 * @module
 */

import { CapacityError } from "../core/errors.ts";

/** Slots of `slotWords` u32 words, taken in order, in one growing storage buffer. */
export class PageSlots {
  /** Words per slot. */
  readonly slotWords: number;
  /** Most slots ever taken (the buffer never grows past them). */
  readonly maxSlots: number;
  readonly #device: GPUDevice;
  readonly #label: string;
  #buffer: GPUBuffer | undefined;
  #capacity = 0;
  #used = 0;

  /**
   * Creates the holder; nothing is allocated before the first {@linkcode take}.
   * @param device the device
   * @param slotWords words per slot
   * @param maxSlots most slots
   * @param label debug label
   */
  constructor(device: GPUDevice, slotWords: number, maxSlots: number, label: string) {
    this.#device = device;
    this.slotWords = slotWords;
    this.maxSlots = maxSlots;
    this.#label = label;
  }

  /** The buffer holding the slots (slot i at word i·slotWords); take() may replace it. */
  get buffer(): GPUBuffer {
    return this.#buffer ??= this.#create(1);
  }

  /** Slots taken. */
  get used(): number {
    return this.#used;
  }

  /** Bytes allocated. */
  get byteLength(): number {
    return this.#buffer?.size ?? 0;
  }

  /**
   * Takes the next slot (its words are zero), growing the buffer when it is full.
   * @returns the slot's index
   * @throws {CapacityError} past maxSlots
   */
  take(): number {
    if (this.#used === this.maxSlots) {
      throw new CapacityError(`all ${this.maxSlots} page slots of ${this.#label} are in use`);
    }
    if (this.#used === this.#capacity) {
      const old = this.#buffer;
      // a quarter more (at least 4 slots): at most a quarter of the buffer idle, where doubling
      // left up to half (measured: ~1 b per element of a 5.4 b plan on a 409-token line)
      const grown = this.#capacity + Math.max(4, Math.ceil(this.#capacity / 4));
      const next = this.#create(Math.min(this.maxSlots, grown));
      if (old !== undefined) {
        const enc = this.#device.createCommandEncoder();
        enc.copyBufferToBuffer(old, 0, next, 0, this.#used * this.slotWords * 4);
        this.#device.queue.submit([enc.finish()]);
        old.destroy(); // after submission: the copy still reads it
      }
      this.#buffer = next;
    }
    return this.#used++;
  }

  /** Frees every slot and zeroes the words (the buffer is kept for reuse). */
  clear(): void {
    this.#used = 0;
    if (this.#buffer === undefined) return;
    const enc = this.#device.createCommandEncoder();
    enc.clearBuffer(this.#buffer);
    this.#device.queue.submit([enc.finish()]);
  }

  /** Frees the buffer. */
  destroy(): void {
    this.#buffer?.destroy();
    this.#buffer = undefined;
    this.#capacity = 0;
    this.#used = 0;
  }

  #create(slots: number): GPUBuffer {
    this.#capacity = slots;
    return this.#device.createBuffer({
      // new buffers are zero: words past a page's valid tokens stay zero (PAGES.md)
      size: Math.max(16, slots * this.slotWords * 4),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
      label: this.#label,
    });
  }
}
