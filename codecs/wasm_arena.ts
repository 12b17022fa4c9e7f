/**
 * A scratch arena in WebAssembly linear memory: each call lays out the regions it needs from the
 * arena's base (16-byte aligned, with 16 bytes of slack after each region for SIMD loads that
 * read past the end), growing memory only when a call needs more than any call before. Nothing
 * is kept between calls, so many calls cannot leak, and memory never exceeds the largest single
 * layout. Used by the WASM codecs (the attention kernels keep pages in PageArena and their own
 * scratch).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { WasmArena } from "./wasm_arena.ts";
 * const arena = new WasmArena(new WebAssembly.Memory({ initial: 1 }), 1024);
 * const [a, b] = arena.layout(100, 70000);
 * if (a !== 1024 || b !== 1024 + 128) throw new Error("regions are aligned and padded");
 * if (arena.memory.buffer.byteLength < b + 70000) throw new Error("memory grew");
 * ```
 * @module
 */

const PAGE = 65536;
const ALIGN = 16;
const SLACK = 16;

/** Scratch regions in a WebAssembly memory, above a fixed base. */
export class WasmArena {
  /** The module's memory. */
  readonly memory: WebAssembly.Memory;
  /** First byte the arena may use. */
  readonly base: number;

  /**
   * Wraps `memory`; the arena owns every byte from `base` up.
   *
   * @param memory the module's memory
   * @param base first free byte (above the module's static data)
   */
  constructor(memory: WebAssembly.Memory, base: number) {
    this.memory = memory;
    this.base = _align(base);
  }

  /**
   * Lays out consecutive regions of the given sizes from the base, growing memory if needed.
   * Pointers (and views made from them) are valid until the next `layout` call.
   *
   * @param sizes byte sizes of the regions
   * @returns each region's byte offset in memory
   */
  layout(...sizes: number[]): number[] {
    const ptrs: number[] = [];
    let end = this.base;
    for (const size of sizes) {
      ptrs.push(end);
      end = _align(end + size + SLACK);
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
    return ptrs;
  }

  /**
   * A Float32Array view of `n` f32 at `ptr` (re-create after a later `layout`).
   *
   * @param ptr byte offset, 4-aligned
   * @param n element count
   * @returns the view
   */
  f32(ptr: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, n);
  }

  /**
   * A Uint32Array view of `n` words at `ptr` (re-create after a later `layout`).
   *
   * @param ptr byte offset, 4-aligned
   * @param n word count
   * @returns the view
   */
  u32(ptr: number, n: number): Uint32Array {
    return new Uint32Array(this.memory.buffer, ptr, n);
  }
}

function _align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}
