/**
 * Reference symmetric int8 group quantization, format kind `int8s`: per group one fp16 scale
 * s (low half of the header word; high half zero), then two's-complement codes q ∈ [−127, 127],
 * four per word, element 4i in the lowest byte; x̂ = q·s. See FORMAT.md, "Symmetric int8".
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { decodeInt8sGroups, encodeInt8sGroups } from "./int8s.ts";
 * import { getFormat } from "./format.ts";
 * const spec = getFormat("int8s-g8-token");
 * const x = Float32Array.of(-127, -1, 0, 1, 2, 3, 64, 127);
 * const words = new Uint32Array(spec.wordsPerGroup);
 * encodeInt8sGroups(spec, x, words);
 * const y = new Float32Array(8);
 * decodeInt8sGroups(spec, words, y);
 * if (y.join() !== x.join()) throw new Error("integers up to 127 are exact at scale 1");
 * ```
 * @module
 */

import { CorruptDataError } from "../core/errors.ts";
import { nonFiniteError, rangeError } from "./codec.ts";
import { f16BitsToF32, f32ToF16BitsUp, roundUpF32 } from "./float_bits.ts";
import type { FormatSpec } from "./format.ts";
import { roundHalfEven } from "./int.ts";

const fround = Math.fround;

/**
 * Encodes `x` into zeroed `words`: s = fp16 rounded up from f32(max|x| / 127),
 * q = clamp(rne(f32(x · f32(1/s))), ±127) (q = 0 when s = 0).
 *
 * @param spec an `int8s` format
 * @param x values
 * @param words zeroed destination
 */
export function encodeInt8sGroups(spec: FormatSpec, x: Float32Array, words: Uint32Array): void {
  const G = spec.group, wpg = spec.wordsPerGroup;
  for (let g = 0, base = 0; base < x.length; g++, base += G) {
    const w0 = g * wpg;
    const inv = symmetricGroupScale(spec, x, g, 127, words);
    for (let i = 0; i < G; i++) {
      const u = fround(x[base + i] * inv);
      let q = roundHalfEven(Math.abs(u));
      if (q > 127) q = 127;
      if (u < 0) q = -q;
      words[w0 + 1 + (i >>> 2)] |= (q & 0xff) << (8 * (i & 3));
    }
  }
}

/**
 * The scale of symmetric group g (int8s, scaled fp8): s = fp16 rounded up from f32(max|x| / qmax),
 * so |x|/s ≤ qmax; writes its bits as the group's header word and returns f32(1/s) (0 when s = 0).
 *
 * @param spec the format
 * @param x values
 * @param g group index
 * @param qmax largest code magnitude
 * @param words destination words
 * @returns f32(1/s)
 * @throws {InvalidValueError} at the group's first non-finite element, or at its largest element
 *   when max|x| needs a scale above fp16's 65504
 */
export function symmetricGroupScale(
  spec: FormatSpec,
  x: Float32Array,
  g: number,
  qmax: number,
  words: Uint32Array,
): number {
  const G = spec.group, base = g * G;
  let amax = 0;
  for (let i = base; i < base + G; i++) {
    const v = x[i];
    if (v - v !== 0) throw nonFiniteError(spec, x, i);
    amax = Math.max(amax, Math.abs(v));
  }
  // a subnormal amax whose quotient underflows to 0 still needs a scale > 0 (FORMAT.md)
  const sBits = f32ToF16BitsUp(fround(amax / qmax)) || (amax > 0 ? 1 : 0);
  if (sBits === 0x7c00) {
    let i = base;
    while (Math.abs(x[i]) !== amax) i++;
    throw rangeError(spec, x, i, `group ${g} max |x| = ${amax} needs an fp16 scale above 65504`);
  }
  words[g * spec.wordsPerGroup] = sBits;
  const s = f16BitsToF32(sBits);
  return s === 0 ? 0 : fround(1 / s);
}

/**
 * Throws {@linkcode CorruptDataError} at the first header with a non-finite or negative scale or
 * a non-zero high half.
 *
 * @param spec an `int8s` or scaled fp8 format
 * @param words packed words
 * @param length element count
 */
export function checkScaleHeaders(spec: FormatSpec, words: Uint32Array, length: number): void {
  const wpg = spec.wordsPerGroup;
  for (let g = 0; g < length / spec.group; g++) {
    const h = words[g * wpg];
    if (h > 0x7bff) {
      throw new CorruptDataError(
        `${spec.name}: group ${g} header 0x${h.toString(16).padStart(8, "0")} is not a finite ` +
          `non-negative fp16 scale with a zero high half`,
        g * wpg * 4,
      );
    }
  }
}

/**
 * Decodes x̂ = q·s (exact in f32); headers must have been checked.
 *
 * @param spec an `int8s` format
 * @param words packed words
 * @param out destination; its length is the element count
 */
export function decodeInt8sGroups(spec: FormatSpec, words: Uint32Array, out: Float32Array): void {
  const G = spec.group, wpg = spec.wordsPerGroup;
  for (let g = 0, base = 0; base < out.length; g++, base += G) {
    const w0 = g * wpg;
    const s = f16BitsToF32(words[w0] & 0xffff);
    for (let i = 0; i < G; i++) {
      const q = (words[w0 + 1 + (i >>> 2)] << (24 - 8 * (i & 3))) >> 24;
      out[base + i] = q * s;
    }
  }
}

/**
 * Per-element bound s·(1/2 + 127·2^−22) on |x − x̂| (decoding is exact), rounded up to f32.
 *
 * @param spec an `int8s` format
 * @param words packed words (headers checked)
 * @param out destination; its length is the element count
 */
export function int8sErrorBound(spec: FormatSpec, words: Uint32Array, out: Float32Array): void {
  const G = spec.group, wpg = spec.wordsPerGroup;
  for (let g = 0, base = 0; base < out.length; g++, base += G) {
    const s = f16BitsToF32(words[g * wpg] & 0xffff);
    out.fill(roundUpF32(s * (0.5 + 127 * 2 ** -22)), base, base + G);
  }
}
