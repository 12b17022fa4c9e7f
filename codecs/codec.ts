/**
 * The codec interface every back end implements, and the argument checks they share, so that a
 * bad call fails the same way (same error class, same message) on every back end and writes
 * nothing.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { tsCodec } from "./ts_codec.ts";
 * const c = tsCodec("int8-g8-token");
 * const x = Float32Array.from({ length: 8 }, (_, i) => i / 8);
 * const y = new Float32Array(8);
 * c.decode(c.encode(x), y);
 * if (Math.abs(y[5] - x[5]) > 0.01) throw new Error("int8 round trip");
 * ```
 * @module
 */

import {
  checkOptionFields,
  CorruptDataError,
  FormatError,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "../core/errors.ts";
import { f16BitsToF32 } from "./float_bits.ts";
import { checkLength, type FormatSpec, wordsForLength } from "./format.ts";

/** Options of {@linkcode Codec.encode}. */
export interface EncodeOptions {
  /**
   * Clamp instead of throwing: NaN becomes 0 and values beyond ±`spec.clampLimit` (±Inf
   * included) become ±`spec.clampLimit`. Default false: a value the format cannot hold throws
   * {@linkcode InvalidValueError} naming the first offending index. That is not every value past
   * the clamp limit: an int group holds values up to about 65504·(qmax + 1) above its minimum when
   * its fp16 minimum and scale do (int8 accepts 1.6e7), and unscaled e4m3 rounds up to 464 to its
   * 448.
   */
  readonly clamp?: boolean;
}

/** An encoded array: its format, element count and packed words. */
export interface PackedBlock {
  /** Format name, as in the registry. */
  readonly format: string;
  /** Number of encoded elements. */
  readonly length: number;
  /** Packed little-endian u32 words, exactly `wordsFor(length)` of them. */
  readonly words: Uint32Array;
}

/** Which implementation runs a codec. */
export type CodecBackend = "ts" | "wasm";

/** Encoder and decoder of one format. */
export interface Codec {
  /** The format. */
  readonly spec: FormatSpec;
  /** Which implementation this is. */
  readonly backend: CodecBackend;
  /**
   * Words an encoding of `length` elements takes.
   *
   * @param length element count, a multiple of the group size
   * @returns u32 words needed for `length` elements
   */
  wordsFor(length: number): number;
  /**
   * Bytes an encoding of `length` elements takes.
   *
   * @param length element count, a multiple of the group size
   * @returns bytes needed for `length` elements, all metadata included
   */
  byteSize(length: number): number;
  /**
   * Encodes into a new block.
   *
   * @param x values; length a multiple of the group size
   * @param opts clamping
   * @returns the packed block
   */
  encode(x: Float32Array, opts?: EncodeOptions): PackedBlock;
  /**
   * Encodes into the first `wordsFor(x.length)` words of `words`; on error writes nothing.
   *
   * @param x values; length a multiple of the group size
   * @param words destination, at least `wordsFor(x.length)` long
   * @param opts clamping
   */
  encodeInto(x: Float32Array, words: Uint32Array, opts?: EncodeOptions): void;
  /**
   * Decodes a block into `out` (length `block.length`); on error writes nothing.
   *
   * @param block a block of this format
   * @param out destination
   */
  decode(block: PackedBlock, out: Float32Array): void;
  /**
   * Decodes `length` elements from the first words of `words` into `out`; on error writes nothing.
   *
   * @param words packed words, at least `wordsFor(length)` long
   * @param length element count
   * @param out destination of exactly `length` elements
   */
  decodeWords(words: Uint32Array, length: number, out: Float32Array): void;
  /**
   * Writes, per element, a rigorous bound on |x − decode(encode(x))| given the stored words (see
   * FORMAT.md, "Error bounds"). Valid for every input that encoded without clamping.
   *
   * @param words packed words, at least `wordsFor(length)` long
   * @param length element count
   * @param out destination of exactly `length` elements
   */
  errorBound(words: Uint32Array, length: number, out: Float32Array): void;
}

/**
 * Checks an input to encode.
 *
 * @param spec the format
 * @param x values to encode
 * @returns the number of words its encoding takes
 */
export function checkInput(spec: FormatSpec, x: Float32Array): number {
  if (!(x instanceof Float32Array)) {
    throw new ShapeError(`${spec.name}: x must be a Float32Array, got ${typeName(x)}`);
  }
  return wordsForLength(spec, x.length);
}

/**
 * Checks `encodeInto` arguments.
 *
 * @param spec the format
 * @param x values to encode
 * @param words destination
 * @returns the number of words to write
 */
export function checkEncodeArgs(spec: FormatSpec, x: Float32Array, words: Uint32Array): number {
  const n = checkInput(spec, x);
  if (!(words instanceof Uint32Array) || words.length < n) {
    throw new ShapeError(
      `${spec.name}: destination has ${_lengthOf(words)} words, ${x.length} elements need ${n}`,
    );
  }
  return n;
}

/**
 * The `clamp` of encode options, checked: a misspelt field or a clamp that is not a boolean (a
 * string "yes", a 1) had been read as false without a word.
 *
 * @param spec the format, for the message
 * @param opts the options given
 * @returns whether to clamp
 * @throws InvalidValueError for options that are not an object, a field other than clamp, or a
 *   clamp that is not true or false
 */
export function encodeClamp(spec: FormatSpec, opts: EncodeOptions | undefined): boolean {
  if (opts === undefined) return false;
  checkOptionFields(opts, ["clamp"], `${spec.name}: encode options`);
  if (opts.clamp !== undefined && typeof opts.clamp !== "boolean") {
    throw new InvalidValueError(
      `${spec.name}: clamp is ${showValue(opts.clamp)}, expected true or false`,
    );
  }
  return opts.clamp === true;
}

/**
 * Checks `decodeWords`/`errorBound` arguments.
 *
 * @param spec the format
 * @param words packed words
 * @param length element count
 * @param out destination
 * @returns the number of words read
 */
export function checkDecodeArgs(
  spec: FormatSpec,
  words: Uint32Array,
  length: number,
  out: Float32Array,
): number {
  checkLength(spec, length);
  if (!(out instanceof Float32Array) || out.length !== length) {
    throw new ShapeError(
      `${spec.name}: output has ${_lengthOf(out)} elements, expected ${length}`,
    );
  }
  const n = wordsForLength(spec, length);
  if (!(words instanceof Uint32Array)) {
    throw new ShapeError(`${spec.name}: words must be a Uint32Array, got ${typeName(words)}`);
  }
  if (words.length < n) {
    throw new CorruptDataError(
      `${spec.name}: packed data has ${words.length * 4} bytes, ${length} elements need ${
        n * 4
      } bytes`,
      words.length * 4,
    );
  }
  return n;
}

/**
 * Checks a {@linkcode PackedBlock} against the codec that is to decode it.
 *
 * @param spec the decoding codec's format
 * @param block the block
 */
export function checkBlock(spec: FormatSpec, block: PackedBlock): void {
  if (typeof block !== "object" || block === null || !(block.words instanceof Uint32Array)) {
    throw new ShapeError(`block is ${block}, expected { format, length, words: Uint32Array }`);
  }
  if (block.format !== spec.name) {
    throw new FormatError(`block has format "${block.format}", codec decodes "${spec.name}"`);
  }
  const n = wordsForLength(spec, block.length);
  if (block.words.length !== n) {
    throw new CorruptDataError(
      `${spec.name}: block of ${block.length} elements has ${block.words.length * 4} bytes, ` +
        `expected ${n * 4}`,
      Math.min(block.words.length, n) * 4,
    );
  }
}

/**
 * Returns `x`, or a clamped copy when `clamp` is set: NaN → 0, values beyond ±limit → ±limit.
 *
 * @param x values
 * @param limit clamp magnitude
 * @param clamp whether to clamp
 * @returns the values to encode
 */
export function clampedInput(x: Float32Array, limit: number, clamp: boolean): Float32Array {
  if (!clamp) return x;
  const y = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = Math.min(Math.max(x[i], -limit), limit);
    y[i] = v === v ? v : 0;
  }
  return y;
}

/**
 * The error for a non-finite input element.
 *
 * @param spec the format
 * @param x the input
 * @param i index of the element
 * @returns the error to throw
 */
export function nonFiniteError(spec: FormatSpec, x: Float32Array, i: number): InvalidValueError {
  return new InvalidValueError(
    `${spec.name}: x[${i}] is ${x[i]}, expected a finite number (or encode with {clamp: true})`,
    i,
  );
}

/**
 * The error for a finite input element the format cannot represent.
 *
 * @param spec the format
 * @param x the input
 * @param i index of the element
 * @param why what does not fit
 * @returns the error to throw
 */
export function rangeError(
  spec: FormatSpec,
  x: Float32Array,
  i: number,
  why: string,
): InvalidValueError {
  return new InvalidValueError(
    `${spec.name}: x[${i}] = ${x[i]} is out of range: ${why} (or encode with {clamp: true})`,
    i,
  );
}

/** A group's header values. */
export interface GroupHeader {
  /** Step between codes (fp16, as a number). */
  readonly scale: number;
  /** Value of code 0 (fp16 as a number) for `int`; 0 for the symmetric and fp8 formats. */
  readonly min: number;
}

/**
 * Reads the scale and minimum of group `g` of a grouped format, the same words the GPU shaders
 * and the fused attention read.
 *
 * @example
 * ```ts
 * import { readGroupHeader } from "./codec.ts";
 * import { getFormat } from "./format.ts";
 * const h = readGroupHeader(getFormat("int4-g8-token"), Uint32Array.of(0xbc00_3c00, 0), 0);
 * if (h.scale !== 1 || h.min !== -1) throw new Error("header halves");
 * ```
 * @param spec a format with `scaled` set
 * @param words packed words
 * @param g group index
 * @returns the group's scale and minimum
 */
export function readGroupHeader(spec: FormatSpec, words: Uint32Array, g: number): GroupHeader {
  if (!spec.scaled) throw new FormatError(`${spec.name} has no group header`);
  const at = g * spec.wordsPerGroup;
  if (!Number.isInteger(g) || g < 0 || at >= words.length) {
    throw new ShapeError(
      `group ${g} is outside ${Math.floor(words.length / spec.wordsPerGroup)} groups`,
    );
  }
  const w = words[at];
  return {
    scale: f16BitsToF32(w & 0xffff),
    min: spec.kind === "int" ? f16BitsToF32(w >>> 16) : 0,
  };
}

function _lengthOf(v: unknown): string {
  return ArrayBuffer.isView(v) ? String((v as Float32Array).length) : typeName(v);
}

/**
 * What every codec shares: sizes, the allocating encode and the checked block decode, written once
 * over the two methods each back end implements (encodeInto, decodeWords).
 */
export abstract class CodecBase implements Codec {
  /** The format. */
  readonly spec: FormatSpec;
  /** Which implementation this is. */
  abstract readonly backend: CodecBackend;

  /**
   * Creates the codec of `spec`.
   *
   * @param spec the format
   */
  constructor(spec: FormatSpec) {
    this.spec = spec;
  }

  /**
   * Words an encoding of `length` elements takes.
   *
   * @param length element count
   * @returns words needed
   */
  wordsFor(length: number): number {
    return wordsForLength(this.spec, length);
  }

  /**
   * Bytes an encoding of `length` elements takes.
   *
   * @param length element count
   * @returns bytes needed
   */
  byteSize(length: number): number {
    return 4 * this.wordsFor(length);
  }

  /**
   * Encodes into a new block.
   *
   * @param x values
   * @param opts clamping
   * @returns the block
   */
  encode(x: Float32Array, opts?: EncodeOptions): PackedBlock {
    const words = new Uint32Array(checkInput(this.spec, x));
    this.encodeInto(x, words, opts);
    return { format: this.spec.name, length: x.length, words };
  }

  /**
   * Decodes a block after checking it belongs to this format; writes nothing on error.
   *
   * @param block a block of this format
   * @param out destination
   */
  decode(block: PackedBlock, out: Float32Array): void {
    checkBlock(this.spec, block);
    this.decodeWords(block.words, block.length, out);
  }

  abstract encodeInto(x: Float32Array, words: Uint32Array, opts?: EncodeOptions): void;
  abstract decodeWords(words: Uint32Array, length: number, out: Float32Array): void;
  abstract errorBound(words: Uint32Array, length: number, out: Float32Array): void;
}

/**
 * Whether two views share bytes of one buffer: a decode (or error bound) whose output lies over
 * its input reads a copy of the words, so it does not overwrite words not yet read.
 * @param a a view
 * @param b another view
 * @returns true when they overlap
 */
export function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.byteLength &&
    b.byteOffset < a.byteOffset + a.byteLength;
}
