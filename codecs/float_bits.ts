/**
 * Bit-level conversions between f32 and the small float formats (fp16, bf16, fp8 e4m3, fp8 e5m2),
 * written with integer operations only so that the AssemblyScript port in asm/ matches them bit
 * for bit. Rounding is to nearest, ties to even; fp16, bf16 and e5m2 overflow to ±Inf and keep
 * NaN quiet with its top payload bits; e4m3 follows the OCP spec (no Inf, saturating to ±448,
 * S.1111.111 is NaN).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { f16BitsToF32, f32ToF16Bits } from "./float_bits.ts";
 * if (f32ToF16Bits(1) !== 0x3c00) throw new Error("1.0 is 0x3c00");
 * if (f16BitsToF32(0x7bff) !== 65504) throw new Error("largest fp16");
 * ```
 * @module
 */

import { FormatError, InvalidValueError } from "../core/errors.ts";

const _f32 = new Float32Array(1);
const _u32 = new Uint32Array(_f32.buffer);

/**
 * The IEEE binary32 bit pattern of `v` (after rounding it to f32).
 *
 * @param v a number
 * @returns its f32 bits as an unsigned integer
 */
export function f32Bits(v: number): number {
  _f32[0] = v;
  return _u32[0];
}

/**
 * The f32 value with bit pattern `bits`.
 *
 * @param bits unsigned 32-bit pattern
 * @returns the value (NaN payloads are not preserved by JS numbers; use bit views for that)
 */
export function bitsToF32(bits: number): number {
  _u32[0] = bits;
  return _f32[0];
}

/**
 * Rounds the magnitude `a` (f32 bits with sign cleared, finite) to a small float with exponent
 * bias `bias` and `man` mantissa bits, ties to even, without overflow handling: the result may
 * exceed the format's largest code, and the caller decides (Inf, saturation or an error).
 * Subnormals: adding 2^(24−bias−man), whose f32 ulp equals the target's subnormal spacing, makes
 * the f32 adder do the rounding (F. Giesen, "float_to_half_fast3_rtne").
 */
function _roundMagnitude(a: number, bias: number, man: number): number {
  if (a < ((128 - bias) << 23)) {
    const magicBits = (151 - bias - man) << 23;
    const magic = bitsToF32(magicBits);
    return f32Bits(Math.fround(bitsToF32(a) + magic)) - magicBits;
  }
  const shift = 23 - man;
  const odd = (a >>> shift) & 1;
  return (a + ((bias - 127) << 23) + ((1 << (shift - 1)) - 1) + odd) >>> shift;
}

/**
 * Converts to fp16 bits, round to nearest even; overflow gives ±Inf, NaN stays a quiet NaN.
 *
 * @param v a number (rounded to f32 first)
 * @returns the 16-bit pattern
 */
export function f32ToF16Bits(v: number): number {
  const bits = f32Bits(v);
  const sign = (bits >>> 16) & 0x8000;
  const a = bits & 0x7fffffff;
  if (a >= 0x7f800000) return sign | (a > 0x7f800000 ? 0x7e00 | ((a >>> 13) & 0x3ff) : 0x7c00);
  const c = _roundMagnitude(a, 15, 10);
  return sign | (c >= 0x7c00 ? 0x7c00 : c);
}

/**
 * The f32 bits of fp16 pattern `h` (exact; NaN payload kept, quiet bit as stored).
 *
 * @param h 16-bit pattern
 * @returns f32 bits
 */
export function f16BitsToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 31;
  const m = h & 0x3ff;
  if (e === 31) return (sign | 0x7f800000 | (m << 13)) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  // subnormal m·2^−24: exact in f32
  return (sign | f32Bits(m * 2 ** -24)) >>> 0;
}

/**
 * The value of fp16 pattern `h`.
 *
 * @param h 16-bit pattern
 * @returns the value
 * @throws InvalidValueError for h not an integer in [0, 0xffff]
 */
export function f16BitsToF32(h: number): number {
  _checkPattern(h, 0xffff, "fp16");
  return bitsToF32(f16BitsToF32Bits(h));
}

/**
 * fp16 bits of the largest fp16 value ≤ `v` (round toward −∞), for finite `v`.
 * Values below −65504 give −Inf (0xfc00).
 *
 * @param v a finite number (rounded to f32 first)
 * @returns the 16-bit pattern
 */
export function f32ToF16BitsDown(v: number): number {
  const f = Math.fround(v);
  const h = f32ToF16Bits(f);
  if (f16BitsToF32(h) <= f) return h;
  // step one fp16 toward −∞: −0 → −min subnormal; negative → larger magnitude; positive → smaller
  if (h === 0) return 0x8001;
  return (h & 0x8000) !== 0 ? h + 1 : h - 1;
}

/**
 * fp16 bits of the smallest fp16 value ≥ `v` (round toward +∞), for finite `v`.
 * Values above 65504 give +Inf (0x7c00).
 *
 * @param v a finite number (rounded to f32 first)
 * @returns the 16-bit pattern
 */
export function f32ToF16BitsUp(v: number): number {
  const f = Math.fround(v);
  const h = f32ToF16Bits(f);
  if (f16BitsToF32(h) >= f) return h;
  if (h === 0x8000) return 0x0001;
  return (h & 0x8000) !== 0 ? h - 1 : h + 1;
}

/**
 * Converts to bf16 bits, round to nearest even; overflow gives ±Inf, NaN stays a quiet NaN.
 *
 * @param v a number (rounded to f32 first)
 * @returns the 16-bit pattern
 */
export function f32ToBf16Bits(v: number): number {
  const bits = f32Bits(v);
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

/**
 * The value of bf16 pattern `h` (its f32 bits are `h << 16`).
 *
 * @param h 16-bit pattern
 * @returns the value
 * @throws InvalidValueError for h not an integer in [0, 0xffff]
 */
export function bf16BitsToF32(h: number): number {
  _checkPattern(h, 0xffff, "bf16");
  return bitsToF32((h << 16) >>> 0);
}

/** The two fp8 encodings. */
export type Fp8Kind = "e4m3" | "e5m2";

// a bit pattern out of range once decoded its low bits silently (0x13c00 as fp16 1.0)
function _checkPattern(bits: number, max: number, what: string): void {
  if (!(Number.isInteger(bits) && bits >= 0 && bits <= max)) {
    throw new InvalidValueError(
      `${bits} is not a ${what} bit pattern: expected an integer in [0, 0x${max.toString(16)}]`,
    );
  }
}

// an unknown kind once read as e5m2
function _checkFp8Kind(kind: string): void {
  if (kind !== "e4m3" && kind !== "e5m2") {
    throw new FormatError(`fp8 kind ${JSON.stringify(kind)}: expected "e4m3" or "e5m2"`);
  }
}

/**
 * Converts to fp8 bits, round to nearest even. e4m3 (OCP) saturates to ±448 and maps NaN to
 * 0x7f/0xff; e5m2 overflows to ±Inf (0x7c) and keeps NaN quiet (0x7e).
 *
 * @param v a number (rounded to f32 first)
 * @param kind `e4m3` or `e5m2`
 * @returns the 8-bit pattern
 * @throws FormatError for a kind other than `e4m3` or `e5m2`
 */
export function f32ToFp8Bits(v: number, kind: Fp8Kind): number {
  const bits = f32Bits(v);
  const sign = (bits >>> 24) & 0x80;
  const a = bits & 0x7fffffff;
  if (kind === "e4m3") {
    if (a > 0x7f800000) return sign | 0x7f;
    if (a === 0x7f800000) return sign | 0x7e;
    const c = _roundMagnitude(a, 7, 3);
    return sign | (c > 0x7e ? 0x7e : c);
  }
  _checkFp8Kind(kind);
  if (a > 0x7f800000) return sign | 0x7e;
  if (a === 0x7f800000) return sign | 0x7c;
  const c = _roundMagnitude(a, 15, 2);
  return sign | (c >= 0x7c ? 0x7c : c);
}

/**
 * The value of fp8 pattern `c`.
 *
 * @param c 8-bit pattern
 * @param kind `e4m3` or `e5m2`
 * @returns the value (NaN for the NaN patterns, ±Inf for e5m2's Inf)
 * @throws FormatError for an unknown kind, InvalidValueError for c not an integer in [0, 0xff]
 */
export function fp8BitsToF32(c: number, kind: Fp8Kind): number {
  _checkFp8Kind(kind);
  _checkPattern(c, 0xff, `fp8 ${kind}`);
  const neg = (c & 0x80) !== 0;
  const man = kind === "e4m3" ? 3 : 2;
  const bias = kind === "e4m3" ? 7 : 15;
  const e = (c & 0x7f) >>> man;
  const m = c & ((1 << man) - 1);
  let v: number;
  if (kind === "e4m3" && (c & 0x7f) === 0x7f) v = NaN;
  else if (kind === "e5m2" && e === 31) v = m === 0 ? Infinity : NaN;
  else if (e === 0) v = m * 2 ** (1 - bias - man);
  else v = ((1 << man) + m) * 2 ** (e - bias - man);
  return neg ? -v : v;
}

/**
 * Half the spacing of the format's grid at `|v|` (the spacing above |v|'s binade start; for
 * subnormals the subnormal spacing): the largest error round-to-nearest can leave when the
 * rounded result is `v`.
 *
 * @param v a finite value of the format (as f32)
 * @param bias exponent bias of the format (fp16 15, bf16 127, e4m3 7, e5m2 15)
 * @param man mantissa bits of the format (fp16 10, bf16 7, e4m3 3, e5m2 2)
 * @returns half an ulp, a power of two
 */
export function halfUlp(v: number, bias: number, man: number): number {
  const a = f32Bits(v) & 0x7fffffff;
  const e = a < ((128 - bias) << 23) ? 1 - bias : (a >>> 23) - 127;
  return 2 ** (e - man - 1);
}

/**
 * The smallest f32 value ≥ `v`, for `v` ≥ 0 (used so error bounds stored as f32 stay bounds).
 *
 * @param v a non-negative number
 * @returns `v` rounded up to f32
 */
export function roundUpF32(v: number): number {
  const f = Math.fround(v);
  return f >= v ? f : bitsToF32(f32Bits(f) + 1);
}
