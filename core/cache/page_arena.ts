/**
 * Persistent storage for cache pages in WebAssembly linear memory, so the WASM attention kernels
 * read packed page words in place. A first-fit-by-size allocator: freed blocks are kept in per-size
 * free lists (a cache allocates few distinct page sizes), new blocks come from the top, and memory
 * grows when the top runs out. Growing memory detaches every view of the old buffer, so holders
 * keep byte offsets and re-derive views with {@linkcode PageArena.u32}.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { PageArena } from "./page_arena.ts";
 * const arena = new PageArena(new WebAssembly.Memory({ initial: 1 }), 1024);
 * const a = arena.alloc(100_000); // grows memory
 * arena.u32(a, 4).set([1, 2, 3, 4]);
 * arena.free(a, 100_000);
 * if (arena.alloc(100_000) !== a) throw new Error("a freed block of the same size is reused");
 * if (arena.u32(a, 1)[0] !== 0) throw new Error("reused blocks come back zeroed");
 * ```
 * @module
 */

import { CapacityError } from "../errors.ts";

const WASM_PAGE = 65536;
const ALIGN = 16;

/** Fixed-size blocks in a WebAssembly memory, above a base the module leaves free. */
export class PageArena {
  /** The memory blocks live in. */
  readonly memory: WebAssembly.Memory;
  #top: number;
  readonly #free = new Map<number, number[]>();

  /**
   * Wraps `memory`; the arena owns every byte from `base` up.
   * @param memory the module's memory
   * @param base first free byte
   */
  constructor(memory: WebAssembly.Memory, base: number) {
    this.memory = memory;
    this.#top = PageArena.blockBytes(base);
  }

  /**
   * Bytes a block of `bytes` occupies (16-byte aligned so SIMD loads stay aligned).
   * @param bytes requested size
   * @returns the size held
   */
  static blockBytes(bytes: number): number {
    return Math.ceil(bytes / ALIGN) * ALIGN;
  }

  /**
   * Allocates a zeroed block, growing memory when needed (which detaches existing views).
   * @param bytes size in bytes
   * @returns the block's byte offset
   * @throws {CapacityError} naming the size when memory cannot grow to hold it; nothing changes
   */
  alloc(bytes: number): number {
    const size = PageArena.blockBytes(bytes);
    const reuse = this.#free.get(size)?.pop();
    if (reuse !== undefined) {
      new Uint8Array(this.memory.buffer, reuse, size).fill(0);
      return reuse;
    }
    const ptr = this.#top, end = ptr + size, have = this.memory.buffer.byteLength;
    if (end > have) {
      try {
        this.memory.grow(Math.ceil((end - have) / WASM_PAGE));
      } catch (cause) {
        // past the memory's maximum (4 GiB at most) or what the host grants
        throw new CapacityError(
          `no WebAssembly memory for a block of ${size} bytes: it holds ${have} bytes and cannot ` +
            `grow to ${end} (${cause instanceof Error ? cause.message : String(cause)})`,
          { cause },
        );
      }
    }
    this.#top = end;
    return ptr; // fresh memory is zero
  }

  /**
   * Returns a block to the arena.
   * @param ptr the block's offset, as alloc returned it
   * @param bytes the size passed to alloc
   */
  free(ptr: number, bytes: number): void {
    const size = PageArena.blockBytes(bytes);
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, list = []);
    list.push(ptr);
  }

  /**
   * A Uint32Array view of `n` words at `ptr`, valid until memory next grows.
   * @param ptr byte offset, 4-aligned
   * @param n word count
   * @returns the view
   */
  u32(ptr: number, n: number): Uint32Array {
    return new Uint32Array(this.memory.buffer, ptr, n);
  }
}
