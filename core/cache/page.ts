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
  /** Packed keys. */
  readonly kWords: Uint32Array;
  /** Packed values. */
  readonly vWords: Uint32Array;
  /** Valid tokens. */
  n = 0;
  readonly #scratch: Float32Array;

  /**
   * Creates an empty page.
   * @param keyCodec codec of the keys
   * @param valueCodec codec of the values
   * @param capacity tokens per page, a multiple of every channel-axis group size
   * @param headDim elements per token and head
   */
  constructor(keyCodec: Codec, valueCodec: Codec, capacity: number, headDim: number) {
    for (const codec of [keyCodec, valueCodec]) checkPageFormat(codec, capacity, headDim);
    this.keyCodec = keyCodec;
    this.valueCodec = valueCodec;
    this.capacity = capacity;
    this.headDim = headDim;
    this.kWords = new Uint32Array(keyCodec.wordsFor(capacity * headDim));
    this.vWords = new Uint32Array(valueCodec.wordsFor(capacity * headDim));
    this.#scratch = new Float32Array(capacity * headDim);
  }

  /** Tokens a write must come in multiples of: the largest channel-axis group, else 1. */
  get writeQuantum(): number {
    return Math.max(quantum(this.keyCodec), quantum(this.valueCodec));
  }

  /** Bytes held: packed words plus this page's page-table entry. */
  get bytes(): number {
    return this.kWords.byteLength + this.vWords.byteLength + PAGE_TABLE_ENTRY_BYTES;
  }

  /**
   * Encodes `count` tokens (token-major float32, count × d) into slots n … n+count−1. The caller
   * has checked the values (finite, within fp16 range), so encoding cannot fail half way.
   * @param k keys, count × d
   * @param v values, count × d
   * @param count tokens; a multiple of writeQuantum, and n + count ≤ capacity
   */
  write(k: Float32Array, v: Float32Array, count: number): void {
    if (count % this.writeQuantum !== 0 || this.n + count > this.capacity) {
      throw new RangeError(
        `write of ${count} tokens at ${this.n} does not fit page of ${this.capacity}`,
      );
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
    const column = this.#scratch.subarray(0, count);
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
    const column = this.#scratch.subarray(0, n);
    for (let c = 0; c < d; c++) {
      codec.decodeWords(words.subarray(((c * P) / G) * wpg), n, column);
      for (let t = 0; t < n; t++) out[t * d + c] = column[t];
    }
  }
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
