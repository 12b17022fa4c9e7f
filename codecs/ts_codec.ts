/**
 * The TypeScript reference codecs behind the {@linkcode Codec} interface, one per registered
 * format. They define the behaviour every other back end must match bit for bit.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { tsCodec } from "./ts_codec.ts";
 * const c = tsCodec("int4-g32-token");
 * const x = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i));
 * const block = c.encode(x);
 * if (block.words.byteLength !== c.byteSize(64)) throw new Error("size");
 * const y = new Float32Array(64);
 * c.decode(block, y);
 * const bound = new Float32Array(64);
 * c.errorBound(block.words, 64, bound);
 * if (!x.every((v, i) => Math.abs(v - y[i]) <= bound[i])) throw new Error("bound");
 * ```
 * @module
 */

import {
  checkDecodeArgs,
  checkEncodeArgs,
  clampedInput,
  CodecBase,
  encodeClamp,
  type EncodeOptions,
  overlaps,
} from "./codec.ts";
import { decodeFloat, encodeFloat, floatErrorBound } from "./float.ts";
import { type FormatSpec, getFormat } from "./format.ts";
import { checkIntHeaders, decodeIntGroups, encodeIntGroups, intErrorBound } from "./int.ts";
import {
  checkScaleHeaders,
  decodeInt8sGroups,
  encodeInt8sGroups,
  int8sErrorBound,
} from "./int8s.ts";

/** The reference codec of one format. */
export class TsCodec extends CodecBase {
  /** Always `"ts"`. */
  readonly backend = "ts" as const;

  /**
   * Creates the reference codec of `spec` (prefer {@linkcode tsCodec}, which caches).
   *
   * @param spec the format
   */
  constructor(spec: FormatSpec) {
    super(spec);
  }

  /**
   * Encodes into `words`; writes nothing on error.
   *
   * @param x values
   * @param words destination
   * @param opts clamping
   */
  encodeInto(x: Float32Array, words: Uint32Array, opts?: EncodeOptions): void {
    const n = checkEncodeArgs(this.spec, x, words);
    const input = clampedInput(x, this.spec.clampLimit, encodeClamp(this.spec, opts));
    // encode into scratch so that an error part-way leaves `words` untouched
    const scratch = new Uint32Array(n);
    switch (this.spec.kind) {
      case "int":
        encodeIntGroups(this.spec, input, scratch);
        break;
      case "int8s":
        encodeInt8sGroups(this.spec, input, scratch);
        break;
      default:
        encodeFloat(this.spec, input, scratch);
    }
    words.set(scratch);
  }

  /**
   * Decodes `length` elements from `words`; writes nothing on error.
   *
   * @param words packed words
   * @param length element count
   * @param out destination
   */
  decodeWords(words: Uint32Array, length: number, out: Float32Array): void {
    checkDecodeArgs(this.spec, words, length, out);
    this.#checkHeaders(words, length);
    // decoding in place (out over the words) would overwrite words not yet read: read a copy,
    // so the result is the WASM codec's
    if (overlaps(words, out)) words = words.slice(0, this.wordsFor(length));
    switch (this.spec.kind) {
      case "int":
        decodeIntGroups(this.spec, words, out);
        break;
      case "int8s":
        decodeInt8sGroups(this.spec, words, out);
        break;
      default:
        decodeFloat(this.spec, words, out);
    }
  }

  /**
   * Writes per-element error bounds (FORMAT.md, "Error bounds").
   *
   * @param words packed words
   * @param length element count
   * @param out destination
   */
  errorBound(words: Uint32Array, length: number, out: Float32Array): void {
    checkDecodeArgs(this.spec, words, length, out);
    this.#checkHeaders(words, length);
    // bounds re-read the headers after decoding into out: out over the words needs a copy
    if (overlaps(words, out)) words = words.slice(0, this.wordsFor(length));
    switch (this.spec.kind) {
      case "int":
        intErrorBound(this.spec, words, out);
        break;
      case "int8s":
        int8sErrorBound(this.spec, words, out);
        break;
      default:
        floatErrorBound(this.spec, words, out);
    }
  }

  #checkHeaders(words: Uint32Array, length: number): void {
    checkGroupHeaders(this.spec, words, length);
  }
}

/**
 * Throws {@linkcode CorruptDataError} at the first group header no encoder writes (FORMAT.md,
 * "Input checks"); the WASM codec calls it for the message when its kernel finds one.
 *
 * @param spec the format
 * @param words packed words (at least `wordsForLength(spec, length)`)
 * @param length element count
 */
export function checkGroupHeaders(spec: FormatSpec, words: Uint32Array, length: number): void {
  if (spec.kind === "int") checkIntHeaders(spec, words, length);
  else if (spec.scaled) checkScaleHeaders(spec, words, length);
}

const _cache = new Map<string, TsCodec>();

/**
 * The reference codec of a format.
 *
 * @example
 * ```ts
 * import { tsCodec } from "./ts_codec.ts";
 * if (tsCodec("fp16").byteSize(8) !== 16) throw new Error("fp16 is 2 bytes each");
 * ```
 * @param name registry name, e.g. `int4-g32-token`
 * @returns the codec (cached per name)
 * @throws {FormatError} for an unknown name
 */
export function tsCodec(name: string): TsCodec {
  let c = _cache.get(name);
  if (c === undefined) {
    c = new TsCodec(getFormat(name));
    _cache.set(name, c);
  }
  return c;
}
