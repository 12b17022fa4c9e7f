/**
 * Reference float formats: fp32 (identity), fp16 and bf16 (two per word, element 2i in the low
 * half), fp8 e4m3 and e5m2 (four per word, element 4i in the lowest byte), and the scaled fp8
 * formats (per group one fp16 scale word, then group/4 code words; x̂ = fp8(code)·s). See
 * FORMAT.md, "Float formats".
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { decodeFloat, encodeFloat } from "./float.ts";
 * import { getFormat } from "./format.ts";
 * const spec = getFormat("fp16");
 * const words = new Uint32Array(1);
 * encodeFloat(spec, Float32Array.of(1, -2), words);
 * if (words[0] !== 0xc000_3c00) throw new Error("element 0 in the low half");
 * const y = new Float32Array(2);
 * decodeFloat(spec, words, y);
 * if (y[1] !== -2) throw new Error("round trip");
 * ```
 * @module
 */

import { nonFiniteError, rangeError } from "./codec.ts";
import {
  f16BitsToF32,
  f16BitsToF32Bits,
  f32Bits,
  f32ToBf16Bits,
  f32ToF16Bits,
  f32ToFp8Bits,
  fp8BitsToF32,
  type Fp8Kind,
  halfUlp,
  roundUpF32,
} from "./float_bits.ts";
import { type FormatSpec, FP8E4M3_MAX, FP8E5M2_MAX } from "./format.ts";
import { symmetricGroupScale } from "./int8s.ts";

const fround = Math.fround;

let _f16Table: Uint32Array | undefined;
/** f32 bits of all 65,536 fp16 patterns (built on first use, 256 KiB). */
function _f16ToF32Table(): Uint32Array {
  if (_f16Table === undefined) {
    _f16Table = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) _f16Table[h] = f16BitsToF32Bits(h);
  }
  return _f16Table;
}

const _fp8Tables = new Map<Fp8Kind, Uint32Array>();
/**
 * f32 bits of the 256 fp8 patterns: e5m2 is the high byte of an fp16 (so its NaNs map like
 * fp16's); e4m3's NaN (S.1111.111) maps to sign | 0x7fc00000.
 *
 * @param kind fp8 encoding
 * @returns the table
 */
export function fp8ToF32BitsTable(kind: Fp8Kind): Uint32Array {
  let t = _fp8Tables.get(kind);
  if (t === undefined) {
    t = new Uint32Array(256);
    for (let c = 0; c < 256; c++) {
      if (kind === "e5m2") t[c] = f16BitsToF32Bits(c << 8);
      else if ((c & 0x7f) === 0x7f) t[c] = ((c & 0x80) << 24 | 0x7fc00000) >>> 0;
      else t[c] = f32Bits(fp8BitsToF32(c, kind));
    }
    _fp8Tables.set(kind, t);
  }
  return t;
}

function _fp8Kind(spec: FormatSpec): Fp8Kind {
  return spec.kind === "fp8e4m3" ? "e4m3" : "e5m2";
}

/** The largest finite value of the fp8 kind. */
function _fp8Max(kind: Fp8Kind): number {
  return kind === "e4m3" ? FP8E4M3_MAX : FP8E5M2_MAX;
}

/**
 * Encodes `x` into zeroed `words` for any float kind (scaled or not), checking elements in order.
 *
 * @param spec a float format (fp32, fp16, bf16, fp8e4m3, fp8e5m2, scaled or not)
 * @param x values
 * @param words zeroed destination
 */
export function encodeFloat(spec: FormatSpec, x: Float32Array, words: Uint32Array): void {
  switch (spec.kind) {
    case "fp32":
      for (let i = 0; i < x.length; i++) {
        if (x[i] - x[i] !== 0) throw nonFiniteError(spec, x, i);
      }
      words.set(new Uint32Array(x.buffer, x.byteOffset, x.length));
      return;
    case "fp16":
    case "bf16":
      for (let i = 0; i < x.length; i++) {
        const v = x[i];
        if (v - v !== 0) throw nonFiniteError(spec, x, i);
        const h = spec.kind === "fp16" ? f32ToF16Bits(v) : f32ToBf16Bits(v);
        if ((h & 0x7fff) === (spec.kind === "fp16" ? 0x7c00 : 0x7f80)) {
          throw rangeError(spec, x, i, `beyond the largest finite ${spec.kind}`);
        }
        words[i >>> 1] |= h << (16 * (i & 1));
      }
      return;
    default:
      if (spec.scaled) _encodeScaledFp8(spec, x, words);
      else _encodeFp8(spec, x, words);
  }
}

function _encodeFp8(spec: FormatSpec, x: Float32Array, words: Uint32Array): void {
  const kind = _fp8Kind(spec);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    if (v - v !== 0) throw nonFiniteError(spec, x, i);
    // e4m3 saturates, but only |x| ≤ 464 rounds to 448 within half an ulp; e5m2 ≥ 61440 → Inf
    if (kind === "e4m3" ? Math.abs(v) > 464 : Math.abs(v) >= 61440) {
      throw rangeError(spec, x, i, `beyond the largest finite fp8 ${kind}`);
    }
    words[i >>> 2] |= f32ToFp8Bits(v, kind) << (8 * (i & 3));
  }
}

function _encodeScaledFp8(spec: FormatSpec, x: Float32Array, words: Uint32Array): void {
  const G = spec.group, wpg = spec.wordsPerGroup, kind = _fp8Kind(spec), fmax = _fp8Max(kind);
  for (let g = 0, base = 0; base < x.length; g++, base += G) {
    const w0 = g * wpg;
    const inv = symmetricGroupScale(spec, x, g, fmax, words);
    for (let i = 0; i < G; i++) {
      const c = f32ToFp8Bits(fround(x[base + i] * inv), kind);
      words[w0 + 1 + (i >>> 2)] |= c << (8 * (i & 3));
    }
  }
}

/**
 * Decodes any float kind; for scaled fp8, headers must have been checked. Unscaled formats are
 * written as bit patterns, so NaN payloads decode identically on every back end.
 *
 * @param spec a float format
 * @param words packed words
 * @param out destination; its length is the element count
 */
export function decodeFloat(spec: FormatSpec, words: Uint32Array, out: Float32Array): void {
  const n = out.length;
  const bits = new Uint32Array(out.buffer, out.byteOffset, n);
  switch (spec.kind) {
    case "fp32":
      bits.set(words.subarray(0, n));
      return;
    case "fp16": {
      const t = _f16ToF32Table();
      for (let i = 0; i < n; i++) bits[i] = t[(words[i >>> 1] >>> (16 * (i & 1))) & 0xffff];
      return;
    }
    case "bf16":
      for (let i = 0; i < n; i++) bits[i] = (words[i >>> 1] >>> (16 * (i & 1))) << 16 >>> 0;
      return;
  }
  const t = fp8ToF32BitsTable(_fp8Kind(spec));
  if (!spec.scaled) {
    for (let i = 0; i < n; i++) bits[i] = t[(words[i >>> 2] >>> (8 * (i & 3))) & 0xff];
    return;
  }
  const d = new Float32Array(t.buffer);
  const G = spec.group, wpg = spec.wordsPerGroup;
  for (let g = 0, base = 0; base < n; g++, base += G) {
    const w0 = g * wpg;
    const s = f16BitsToF32(words[w0] & 0xffff);
    for (let i = 0; i < G; i++) {
      // fp8 value (≤ 4 significant bits) times fp16 scale (11): exact in f32
      out[base + i] = d[(words[w0 + 1 + (i >>> 2)] >>> (8 * (i & 3))) & 0xff] * s;
    }
  }
}

/**
 * Per-element error bounds of the float formats: 0 for fp32, half an ulp of x̂ in the format for
 * fp16, bf16 and unscaled fp8, and s·(h + (|d| + 2h)·2^−22) for scaled fp8, with d the fp8 value
 * and h its half ulp (FORMAT.md, "Error bounds").
 *
 * @param spec a float format
 * @param words packed words (headers checked)
 * @param out destination; its length is the element count
 */
export function floatErrorBound(spec: FormatSpec, words: Uint32Array, out: Float32Array): void {
  const [bias, man] = _biasAndMantissa(spec);
  if (spec.kind === "fp32") {
    out.fill(0);
    return;
  }
  if (!spec.scaled) {
    decodeFloat(spec, words, out);
    for (let i = 0; i < out.length; i++) out[i] = halfUlp(out[i], bias, man);
    return;
  }
  const d = new Float32Array(fp8ToF32BitsTable(_fp8Kind(spec)).buffer);
  const G = spec.group, wpg = spec.wordsPerGroup;
  for (let g = 0, base = 0; base < out.length; g++, base += G) {
    const w0 = g * wpg;
    const s = f16BitsToF32(words[w0] & 0xffff);
    for (let i = 0; i < G; i++) {
      const v = d[(words[w0 + 1 + (i >>> 2)] >>> (8 * (i & 3))) & 0xff];
      const h = halfUlp(v, bias, man);
      out[base + i] = roundUpF32(s * (h + (Math.abs(v) + 2 * h) * 2 ** -22));
    }
  }
}

function _biasAndMantissa(spec: FormatSpec): [number, number] {
  switch (spec.kind) {
    case "fp16":
      return [15, 10];
    case "bf16":
      return [127, 7];
    case "fp8e4m3":
      return [7, 3];
    case "fp8e5m2":
      return [15, 2];
    default:
      return [127, 23];
  }
}
