/**
 * One page of the mixed-precision cache: up to `capacity` tokens of one KV head, keys and values
 * each in one format, laid out as core/cache/PAGES.md specifies (token-major for token-axis and
 * ungrouped formats, channel-major for channel-axis formats).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { Page } from "./page.ts";
 * import { tsCodec } from "../../codecs/mod.ts";
 * const page = new Page(tsCodec("fp32"), tsCodec("fp16"), 4, 2);
 * page.write(Float32Array.of(1, 2), Float32Array.of(3, 4), 1);
 * const k = new Float32Array(2);
 * page.decodeKeys(k);
 * if (page.n !== 1 || k[1] !== 2) throw new Error("one token written");
 * ```
 * @module
 */

import type { Codec } from "../../codecs/mod.ts";
import { FormatError } from "../errors.ts";
import { PageArena } from "./page_arena.ts";

/** Bytes of one page-table entry (key offset, value offset, format pair id, token count as u32). */
export const PAGE_TABLE_ENTRY_BYTES = 16;

/** A fixed-capacity page of one (key format, value format) pair. */
export class Page {
  /** Codec of the keys. */
  readonly keyCodec: Codec;
  /** Codec of the values. */
  readonly valueCodec: Codec;
  /** Token capacity P. */
  readonly capacity: number;
  /** Head dimension d. */
  readonly headDim: number;
  /** Valid tokens. */
  n = 0;
  /** Byte offset of the keys in the arena's memory (0 without an arena). */
  readonly kPtr: number = 0;
  /** Byte offset of the values in the arena's memory (0 without an arena). */
  readonly vPtr: number = 0;
  /**
   * Keys stored before RoPE (channel-axis keys of a policy with ropeBase): the position of the
   * first token of each key group, [capacity / group]; undefined when keys are stored as received.
   */
  readonly starts: Int32Array | undefined;
  readonly #arena: PageArena | undefined;
  #k: Uint32Array;
  #v: Uint32Array;
  // word counts, kept apart because a view detached by memory growth reports length 0
  readonly #kn: number;
  readonly #vn: number;

  /**
   * Creates an empty page.
   * @param keyCodec codec of the keys
   * @param valueCodec codec of the values
   * @param capacity tokens per page, a multiple of every channel-axis group size
   * @param headDim elements per token and head
   * @param arena WebAssembly memory to hold the words in (the wasm backend), else JS arrays
   * @param preRope keys are stored before RoPE: record each key group's first position (the key
   *   format must be channel-axis)
   */
  constructor(
    keyCodec: Codec,
    valueCodec: Codec,
    capacity: number,
    headDim: number,
    arena?: PageArena,
    preRope = false,
  ) {
    for (const codec of [keyCodec, valueCodec]) checkPageFormat(codec, capacity, headDim);
    if (preRope && keyCodec.spec.axis !== "channel") {
      throw new FormatError(
        `pre-RoPE keys need a channel-axis key format, not ${keyCodec.spec.name}`,
      );
    }
    this.starts = preRope ? new Int32Array(capacity / keyCodec.spec.group) : undefined;
    this.keyCodec = keyCodec;
    this.valueCodec = valueCodec;
    this.capacity = capacity;
    this.headDim = headDim;
    const kn = keyCodec.wordsFor(capacity * headDim), vn = valueCodec.wordsFor(capacity * headDim);
    this.#arena = arena;
    this.#kn = kn;
    this.#vn = vn;
    if (arena) {
      this.kPtr = arena.alloc(4 * kn);
      try {
        this.vPtr = arena.alloc(4 * vn);
      } catch (e) {
        arena.free(this.kPtr, 4 * kn); // no block left behind when memory cannot grow
        throw e;
      }
      this.#k = arena.u32(this.kPtr, kn);
      this.#v = arena.u32(this.vPtr, vn);
    } else {
      this.#k = new Uint32Array(kn);
      this.#v = new Uint32Array(vn);
    }
  }

  /** Packed keys (a view into the arena's memory when there is one; re-derived after it grows). */
  get kWords(): Uint32Array {
    if (this.#arena && this.#k.buffer !== this.#arena.memory.buffer) {
      this.#k = this.#arena.u32(this.kPtr, this.#kn);
    }
    return this.#k;
  }

  /** Packed values (see kWords). */
  get vWords(): Uint32Array {
    if (this.#arena && this.#v.buffer !== this.#arena.memory.buffer) {
      this.#v = this.#arena.u32(this.vPtr, this.#vn);
    }
    return this.#v;
  }

  /** Returns arena storage (no-op without an arena); the page must not be used afterwards. */
  release(): void {
    if (!this.#arena) return;
    this.#arena.free(this.kPtr, 4 * this.#kn);
    this.#arena.free(this.vPtr, 4 * this.#vn);
  }

  /** Tokens a write must come in multiples of: the largest channel-axis group, else 1. */
  get writeQuantum(): number {
    return Math.max(quantum(this.keyCodec), quantum(this.valueCodec));
  }

  /**
   * Bytes held: packed words (arena blocks with their alignment) plus the page-table entry and,
   * for pre-RoPE keys, the key groups' positions (4 bytes each).
   */
  get bytes(): number {
    return pageBytes(4 * this.#kn, 4 * this.#vn, this.#arena !== undefined) + this.#startBytes;
  }

  get #startBytes(): number {
    return this.starts ? this.starts.byteLength : 0;
  }

  /**
   * The page's bytes by part: codes, group headers (scales and minima), the alignment padding of
   * WebAssembly memory blocks, and the positions of pre-RoPE key groups. With the page-table entry
   * they sum to {@linkcode Page.bytes}.
   */
  get parts(): { codes: number; scales: number; padding: number; positions: number } {
    const n = this.capacity * this.headDim;
    let scales = 0;
    for (const c of [this.keyCodec, this.valueCodec]) {
      scales += 4 * (c.wordsFor(n) / c.spec.wordsPerGroup) * c.spec.headerWords;
    }
    const words = 4 * (this.#kn + this.#vn);
    const positions = this.#startBytes;
    return {
      codes: words - scales,
      scales,
      padding: this.bytes - PAGE_TABLE_ENTRY_BYTES - words - positions,
      positions,
    };
  }

  /**
   * Bytes a page of these formats and shape holds, before it is allocated (memory budgets).
   * @param keyCodec codec of the keys
   * @param valueCodec codec of the values
   * @param capacity tokens per page
   * @param headDim elements per token
   * @param inArena whether the page lives in WebAssembly memory (16-byte aligned blocks)
   * @param preRope whether it records its key groups' positions
   * @returns the bytes {@linkcode Page.bytes} will report
   */
  static bytesFor(
    keyCodec: Codec,
    valueCodec: Codec,
    capacity: number,
    headDim: number,
    inArena: boolean,
    preRope = false,
  ): number {
    return pageBytes(
      4 * keyCodec.wordsFor(capacity * headDim),
      4 * valueCodec.wordsFor(capacity * headDim),
      inArena,
    ) + (preRope ? 4 * (capacity / keyCodec.spec.group) : 0);
  }

  /**
   * Encodes `count` tokens (token-major float32, count × d) into slots n … n+count−1. The caller
   * has checked the values (finite, within fp16 range), so encoding cannot fail half way.
   * @param k keys, count × d
   * @param v values, count × d
   * @param count tokens; a multiple of writeQuantum, and n + count ≤ capacity
   * @param pos position of the first token (recorded for pre-RoPE keys; the tokens are consecutive)
   */
  write(k: Float32Array, v: Float32Array, count: number, pos = 0): void {
    if (count % this.writeQuantum !== 0 || this.n + count > this.capacity) {
      throw new RangeError(
        `write of ${count} tokens at ${this.n} does not fit page of ${this.capacity}`,
      );
    }
    if (this.starts) {
      const G = this.keyCodec.spec.group;
      for (let j = 0; j < count / G; j++) this.starts[this.n / G + j] = pos + j * G;
    }
    this.#encode(this.keyCodec, this.kWords, k, count);
    this.#encode(this.valueCodec, this.vWords, v, count);
    this.n += count;
  }

  /**
   * Decodes the valid keys token-major into out[0 … n·d).
   * @param out destination of at least n × d elements
   */
  decodeKeys(out: Float32Array): void {
    this.#decode(this.keyCodec, this.kWords, out);
  }

  /**
   * Decodes the valid values token-major into out[0 … n·d).
   * @param out destination of at least n × d elements
   */
  decodeValues(out: Float32Array): void {
    this.#decode(this.valueCodec, this.vWords, out);
  }

  #encode(codec: Codec, words: Uint32Array, x: Float32Array, count: number): void {
    const d = this.headDim, P = this.capacity, n = this.n;
    if (codec.spec.axis !== "channel") {
      const w = codec.wordsFor(d);
      codec.encodeInto(x.subarray(0, count * d), words.subarray(n * w));
      return;
    }
    // channel-major: element (c, t) at c·P + t; groups of G tokens per channel
    const G = codec.spec.group, wpg = codec.spec.wordsPerGroup;
    const column = _column(count);
    for (let c = 0; c < d; c++) {
      for (let t = 0; t < count; t++) column[t] = x[t * d + c];
      codec.encodeInto(column, words.subarray(((c * P) / G + n / G) * wpg));
    }
  }

  #decode(codec: Codec, words: Uint32Array, out: Float32Array): void {
    const d = this.headDim, P = this.capacity, n = this.n;
    if (n === 0) return;
    if (codec.spec.axis !== "channel") {
      codec.decodeWords(words, n * d, out.subarray(0, n * d));
      return;
    }
    const G = codec.spec.group, wpg = codec.spec.wordsPerGroup;
    const column = _column(n);
    for (let c = 0; c < d; c++) {
      codec.decodeWords(words.subarray(((c * P) / G) * wpg), n, column);
      for (let t = 0; t < n; t++) out[t * d + c] = column[t];
    }
  }
}

// One channel column being transposed, shared by all pages (never held across calls).
let _columnBuf = new Float32Array(128);
function _column(n: number): Float32Array {
  if (_columnBuf.length < n) _columnBuf = new Float32Array(n);
  return _columnBuf.subarray(0, n);
}

function pageBytes(kBytes: number, vBytes: number, inArena: boolean): number {
  const words = inArena
    ? PageArena.blockBytes(kBytes) + PageArena.blockBytes(vBytes)
    : kBytes + vBytes;
  return words + PAGE_TABLE_ENTRY_BYTES;
}

function quantum(codec: Codec): number {
  return codec.spec.axis === "channel" ? codec.spec.group : 1;
}

/**
 * Throws {@linkcode FormatError} when a format cannot store pages of this shape.
 * @param codec the format's codec
 * @param capacity tokens per page
 * @param headDim elements per token
 */
export function checkPageFormat(codec: Codec, capacity: number, headDim: number): void {
  const { name, axis, group } = codec.spec;
  if (axis === "heads") {
    throw new FormatError(`format ${name} groups across KV heads; pages hold one KV head`);
  }
  if (axis === "channel" && capacity % group !== 0) {
    throw new FormatError(
      `format ${name}: page of ${capacity} tokens is not a multiple of group ${group}`,
    );
  }
  if (axis !== "channel" && headDim % group !== 0) {
    throw new FormatError(
      `format ${name}: head_dim ${headDim} is not a multiple of group ${group}`,
    );
  }
}
