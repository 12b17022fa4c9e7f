/**
 * Reference (scalar TypeScript) asymmetric integer group quantization, format kind `int`: per
 * group an fp16 scale s and minimum m in one header word, then b-bit codes q ∈ [0, 2^b − 1] as one
 * LSB-first bit stream; x̂ = q·s + m. Every step is an f32 operation (Math.fround), so the SIMD
 * port in asm/int.ts matches it bit for bit. See FORMAT.md, "Integer formats".
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { decodeIntGroups, encodeIntGroups } from "./int.ts";
 * import { getFormat } from "./format.ts";
 * const spec = getFormat("int4-g8-token");
 * const x = Float32Array.of(0, 1, 2, 3, 4, 5, 6, 7.5);
 * const words = new Uint32Array(spec.wordsPerGroup);
 * encodeIntGroups(spec, x, words);
 * const y = new Float32Array(8);
 * decodeIntGroups(spec, words, y);
 * if (y[7] !== 7.5 || y[3] !== 3) throw new Error("0.5 steps are exact");
 * ```
 * @module
 */

import { CorruptDataError } from "../core/errors.ts";
import { nonFiniteError, rangeError } from "./codec.ts";
import { f16BitsToF32, f32ToF16BitsDown, f32ToF16BitsUp, roundUpF32 } from "./float_bits.ts";
import type { FormatSpec } from "./format.ts";

const fround = Math.fround;

/**
 * Rounds a non-negative value to the nearest integer, ties to even (as f32x4.nearest does).
 *
 * @param u a value ≥ 0
 * @returns the rounded integer
 */
export function roundHalfEven(u: number): number {
  const r = Math.round(u);
  return r - u === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/**
 * Chooses a group's fp16 minimum and scale: m = fp16 rounded down from the group minimum lo,
 * s = fp16 rounded up from f32((f32(hi − m)) / qmax). Returns the header word, or −1 − index of
 * the offending element when the range does not fit fp16.
 *
 * @param spec an `int` format
 * @param x values
 * @param base index of the group's first element
 * @param lo group minimum (−0 below +0)
 * @param hi group maximum
 * @returns header word (≥ 0), or −1 − offending index
 */
export function chooseIntHeader(
  spec: FormatSpec,
  x: Float32Array,
  base: number,
  lo: number,
  hi: number,
): number {
  const mBits = f32ToF16BitsDown(lo);
  if (mBits === 0xfc00) return -1 - _indexOf(x, base, spec.group, lo);
  const m = f16BitsToF32(mBits);
  // a subnormal range whose quotient underflows to 0 still needs a scale > 0 (FORMAT.md step 3)
  const range = fround(hi - m);
  const sBits = f32ToF16BitsUp(fround(range / spec.qmax)) || (range > 0 ? 1 : 0);
  if (sBits === 0x7c00) return -1 - _indexOf(x, base, spec.group, hi);
  return (sBits | (mBits << 16)) >>> 0;
}

/**
 * Encodes `x` (length a multiple of the group) into zeroed `words`. Groups are processed in
 * order; the first group holding a non-finite value (first such index) or a range that fp16
 * cannot hold throws, after which `words` is partly written (callers encode into scratch).
 *
 * @param spec an `int` format
 * @param x values
 * @param words zeroed destination of `wordsForLength(spec, x.length)` words
 */
export function encodeIntGroups(spec: FormatSpec, x: Float32Array, words: Uint32Array): void {
  const G = spec.group, b = spec.bits, qmax = spec.qmax, wpg = spec.wordsPerGroup;
  for (let g = 0, base = 0; base < x.length; g++, base += G) {
    let lo = x[base], hi = lo;
    for (let i = base; i < base + G; i++) {
      const v = x[i];
      if (v - v !== 0) throw nonFiniteError(spec, x, i);
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    // + 0 makes a −0 extreme +0 (FORMAT.md step 1), so SIMD min/max may pick either zero
    lo += 0;
    hi += 0;
    const header = chooseIntHeader(spec, x, base, lo, hi);
    if (header < 0) {
      throw rangeError(
        spec,
        x,
        -1 - header,
        `group ${g} spans [${lo}, ${hi}], fp16 cannot hold its minimum or scale`,
      );
    }
    const w0 = g * wpg;
    words[w0] = header;
    const s = f16BitsToF32(header & 0xffff);
    const m = f16BitsToF32(header >>> 16);
    const inv = s === 0 ? 0 : fround(1 / s);
    for (let i = 0; i < G; i++) {
      let q = roundHalfEven(fround(fround(x[base + i] - m) * inv));
      if (q > qmax) q = qmax;
      const pos = i * b;
      const w = w0 + 1 + (pos >>> 5), off = pos & 31;
      words[w] |= q << off;
      if (off + b > 32) words[w + 1] |= q >>> (32 - off);
    }
  }
}

/**
 * Throws {@linkcode CorruptDataError} at the first group header an encoder cannot have written:
 * a non-finite or negative scale, or a non-finite minimum.
 *
 * @param spec an `int` format
 * @param words packed words
 * @param length element count
 */
export function checkIntHeaders(spec: FormatSpec, words: Uint32Array, length: number): void {
  const wpg = spec.wordsPerGroup;
  for (let g = 0; g < length / spec.group; g++) {
    const h = words[g * wpg];
    if ((h & 0x7c00) === 0x7c00 || (h & 0x8000) !== 0 || ((h >>> 16) & 0x7c00) === 0x7c00) {
      throw new CorruptDataError(
        `${spec.name}: group ${g} header 0x${h.toString(16).padStart(8, "0")} has a non-finite ` +
          `or negative fp16 scale, or a non-finite minimum`,
        g * wpg * 4,
      );
    }
  }
}

/**
 * Decodes x̂ = f32(q·s) + m (q·s is exact in f32) for every element; headers must have been
 * checked with {@linkcode checkIntHeaders}.
 *
 * @param spec an `int` format
 * @param words packed words
 * @param out destination; its length is the element count
 */
export function decodeIntGroups(spec: FormatSpec, words: Uint32Array, out: Float32Array): void {
  const G = spec.group, b = spec.bits, mask = spec.qmax, wpg = spec.wordsPerGroup;
  for (let g = 0, base = 0; base < out.length; g++, base += G) {
    const w0 = g * wpg;
    const h = words[w0];
    const s = f16BitsToF32(h & 0xffff);
    const m = f16BitsToF32(h >>> 16);
    for (let i = 0; i < G; i++) {
      const pos = i * b;
      const w = w0 + 1 + (pos >>> 5), off = pos & 31;
      let q = words[w] >>> off;
      if (off + b > 32) q |= words[w + 1] << (32 - off);
      // the store rounds the exact double q·s + m once to f32, as f32.add(f32.mul(q, s), m) does
      out[base + i] = (q & mask) * s + m;
    }
  }
}

/**
 * Per-element bound s·(1/2 + qmax·2^−22) + 2^−24·|x̂| on |x − x̂| (FORMAT.md, "Error bounds"),
 * rounded up to f32.
 *
 * @param spec an `int` format
 * @param words packed words (headers checked)
 * @param out destination; its length is the element count
 */
export function intErrorBound(spec: FormatSpec, words: Uint32Array, out: Float32Array): void {
  decodeIntGroups(spec, words, out);
  const G = spec.group, wpg = spec.wordsPerGroup, k = 0.5 + spec.qmax * 2 ** -22;
  for (let g = 0, base = 0; base < out.length; g++, base += G) {
    const s = f16BitsToF32(words[g * wpg] & 0xffff);
    for (let i = base; i < base + G; i++) out[i] = roundUpF32(s * k + 2 ** -24 * Math.abs(out[i]));
  }
}

function _indexOf(x: Float32Array, base: number, n: number, v: number): number {
  for (let i = base; i < base + n; i++) if (x[i] === v) return i;
  return base;
}
