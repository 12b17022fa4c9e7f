// Symmetric int8 and the float formats (fp32, fp16, bf16, fp8 e4m3/e5m2, scaled fp8): SIMD ports
// of codecs/int8s.ts and codecs/float.ts. Layout and arithmetic: codecs/FORMAT.md.

import {
  I32_127,
  MAGIC_1P5_2P23,
  F16_MAG_LO,
  F32_2P120,
  F32_MAG,
  F32_SIGN,
  ONE_U32,
  U32_0000007E,
  U32_00000080,
  U32_7FC00000,
  U32_FFFFFF81,
  vconst,
} from "./consts";
import {
  f16Lanes,
  f16ToF32,
  f16ToF32Lanes,
  f16Up,
  f32ToF16,
  nonFinite,
  roundMagnitude,
} from "./f16";
import { fail } from "./errors";
import { firstAbsEqual, firstNonFinite, horizontalMaxU } from "./int";

// ---- shared lane helpers -------------------------------------------------------------------

// max |x| over a group as f32 bits: for non-negative floats integer order is value order, and
// NaN/±Inf magnitudes (≥ 0x7f800000) exceed every finite one
// @ts-ignore: decorator
@inline function groupAbsMax(x: usize, group: i32): f32 {
  const absMask = vconst(F32_MAG);
  let v = v128.and(v128.load(x), absMask);
  for (let i = 4; i < group; i += 4) {
    v = i32x4.max_u(v, v128.and(v128.load(x + (<usize>i << 2)), absMask));
  }
  return reinterpret<f32>(horizontalMaxU(v));
}

// Narrows 16 i32 lanes (values 0..255) to 16 bytes.
// @ts-ignore: decorator
@inline function bytes16(a: v128, b: v128, c: v128, d: v128): v128 {
  return i8x16.narrow_i16x8_u(i16x8.narrow_i32x4_u(a, b), i16x8.narrow_i32x4_u(c, d));
}

// fp8 bits of f32 lanes (finite, not beyond the format's range), round to nearest even:
// the vector form of roundMagnitude plus the sign.
// @ts-ignore: decorator
@inline function fp8Lanes(x: v128, bias: i32, man: i32): v128 {
  const bits = x;
  const a = v128.and(bits, vconst(F32_MAG));
  const magicBits = i32x4.splat((151 - bias - man) << 23);
  const sub = i32x4.sub(f32x4.add(a, magicBits), magicBits);
  const shift = 23 - man;
  const odd = v128.and(i32x4.shr_u(a, shift), vconst(ONE_U32));
  const nrm = i32x4.shr_u(
    i32x4.add(i32x4.add(a, i32x4.splat(((bias - 127) << 23) + (1 << (shift - 1)) - 1)), odd),
    shift,
  );
  const c = v128.bitselect(sub, nrm, i32x4.lt_u(a, i32x4.splat((128 - bias) << 23)));
  // e4m3 saturates at 0x7e; inputs here never exceed it by more than rounding to 448
  const cs = bias == 7 ? i32x4.min_u(c, vconst(U32_0000007E)) : c;
  return v128.or(cs, i32x4.shr_u(v128.and(bits, vconst(F32_SIGN)), 24));
}

// scalar twin of fp8Lanes
// @ts-ignore: decorator
@inline function fp8Scalar(v: f32, bias: i32, man: i32): u32 {
  const bits = reinterpret<u32>(v);
  let c = roundMagnitude(bits & 0x7fffffff, bias, man);
  if (bias == 7 && c > 0x7e) c = 0x7e;
  return c | ((bits >>> 24) & 0x80);
}

// ---- int8s ---------------------------------------------------------------------------------

// clamp(rne(u), ±127) as i32 lanes: adding 1.5·2^23 rounds |u| < 2^22 to an integer, ties to
// even, and keeps negative results in the mantissa (biased by 2^22)
// @ts-ignore: decorator
@inline function quantize8s(u: v128, lim: v128, nlim: v128): v128 {
  const magic = vconst(MAGIC_1P5_2P23);
  return i32x4.max_s(i32x4.min_s(i32x4.sub(f32x4.add(u, magic), magic), lim), nlim);
}

/** Encodes symmetric int8 groups; returns −1 or the first offending index (errorKind 1 or 2). */
export function encodeInt8s(src: usize, dst: usize, n: i32, group: i32): i32 {
  const wpg = 1 + (group >> 2);
  const lim = vconst(I32_127), nlim = vconst(U32_FFFFFF81);
  for (let base = 0, g = 0; base < n; base += group, g++) {
    const x = src + (<usize>base << 2);
    const w = dst + (<usize>(g * wpg) << 2);
    const err = _symmetricHeader(x, group, 127, base, w);
    if (err >= 0) return err;
    const s = f16ToF32(load<u32>(w));
    const inv = f32x4.splat(s == 0 ? <f32>0 : <f32>1 / s);
    for (let i = 0; i < group; i += 8) {
      const p = x + (<usize>i << 2);
      const q0 = quantize8s(f32x4.mul(v128.load(p), inv), lim, nlim);
      const q1 = quantize8s(f32x4.mul(v128.load(p, 16), inv), lim, nlim);
      const b = i8x16.narrow_i16x8_s(i16x8.narrow_i32x4_s(q0, q1), i16x8.splat(0));
      store<i64>(w + 4 + <usize>i, i64x2.extract_lane(b, 0));
    }
  }
  return -1;
}

/** Decodes symmetric int8 groups; returns −1 or the first corrupt group (errorKind 3). */
export function decodeInt8s(src: usize, dst: usize, n: i32, group: i32): i32 {
  const wpg = 1 + (group >> 2);
  // byte k into the top byte of lane k: the i32 is q·2^24, scaled back by s·2^−24 (exact)
  const sw0 = i8x16(16, 16, 16, 0, 16, 16, 16, 1, 16, 16, 16, 2, 16, 16, 16, 3);
  const sw1 = i8x16(16, 16, 16, 4, 16, 16, 16, 5, 16, 16, 16, 6, 16, 16, 16, 7);
  for (let base = 0, g = 0; base < n; base += group, g++) {
    const w = src + (<usize>(g * wpg) << 2);
    const h = load<u32>(w);
    if (h > 0x7bff) return fail(3, g);
    const s = f32x4.splat(f16ToF32(h) * 5.9604644775390625e-8);
    const out = dst + (<usize>base << 2);
    for (let i = 0; i < group; i += 8) {
      const v = v128.load(w + 4 + <usize>i);
      v128.store(out + (<usize>i << 2), f32x4.mul(f32x4.convert_i32x4_s(i8x16.swizzle(v, sw0)), s));
      v128.store(out + (<usize>i << 2), f32x4.mul(f32x4.convert_i32x4_s(i8x16.swizzle(v, sw1)), s), 16);
    }
  }
  return -1;
}

// ---- fp32 ----------------------------------------------------------------------------------

/** Copies n f32 with a finite check; returns −1 or the first non-finite index (errorKind 1). */
export function encodeF32(src: usize, dst: usize, n: i32): i32 {
  const bad = firstNonFinite(src, n);
  if (bad >= 0) return fail(1, bad);
  memory.copy(dst, src, <usize>n << 2);
  return -1;
}

// ---- fp16 and bf16 -------------------------------------------------------------------------

// bf16 lanes of f32 lanes (finite, |x| below the bf16 overflow threshold)
// @ts-ignore: decorator
@inline function bf16Lanes(x: v128): v128 {
  const odd = v128.and(i32x4.shr_u(x, 16), vconst(ONE_U32));
  // + 0x7fff (the table shared with fp16 headers' magnitude mask) + odd: ties to even
  return i32x4.shr_u(i32x4.add(i32x4.add(x, vconst(F16_MAG_LO)), odd), 16);
}

// index of the first element in [i, i+len) that is non-finite (kind 1) or at/above `limit` as
// magnitude bits (kind 2)
function firstBad(src: usize, i: i32, len: i32, limit: u32): i32 {
  for (let k = i; k < i + len; k++) {
    const a = load<u32>(src + (<usize>k << 2)) & 0x7fffffff;
    if (a >= 0x7f800000) return fail(1, k);
    if (a >= limit) return fail(2, k);
  }
  return -1;
}

/**
 * Encodes fp16 (bf16 when `brain`) pairs; returns −1 or the first offending index
 * (errorKind 1 non-finite, 2 overflow).
 */
export function encodeHalf(src: usize, dst: usize, n: i32, brain: bool): i32 {
  const limit: u32 = brain ? 0x7f7f8000 : 0x477ff000; // magnitudes that round to Inf
  const limV = i32x4.splat(limit - 1);
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const p = src + (<usize>i << 2);
    const x0 = v128.load(p), x1 = v128.load(p, 16);
    const a0 = v128.and(x0, vconst(F32_MAG)), a1 = v128.and(x1, vconst(F32_MAG));
    if (v128.any_true(v128.or(i32x4.gt_u(a0, limV), i32x4.gt_u(a1, limV)))) {
      return firstBad(src, i, 8, limit);
    }
    const h = brain
      ? i16x8.narrow_i32x4_u(bf16Lanes(x0), bf16Lanes(x1))
      : i16x8.narrow_i32x4_u(f16Lanes(x0), f16Lanes(x1));
    v128.store(dst + (<usize>i << 1), h);
  }
  for (; i < n; i++) {
    const v = load<f32>(src + (<usize>i << 2));
    const bad = firstBad(src, i, 1, limit);
    if (bad >= 0) return bad;
    const bits = reinterpret<u32>(v);
    const h = brain ? (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16 : f32ToF16(v);
    store<u16>(dst + (<usize>i << 1), <u16>h);
  }
  return -1;
}

/** Decodes n fp16 (bf16 when `brain`) halves at src into f32 at dst. */
export function decodeHalf(src: usize, dst: usize, n: i32, brain: bool): void {
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const v = v128.load(src + (<usize>i << 1));
    const lo = i32x4.extend_low_i16x8_u(v), hi = i32x4.extend_high_i16x8_u(v);
    const p = dst + (<usize>i << 2);
    if (brain) {
      v128.store(p, i32x4.shl(lo, 16));
      v128.store(p, i32x4.shl(hi, 16), 16);
    } else {
      v128.store(p, f16ToF32Lanes(lo));
      v128.store(p, f16ToF32Lanes(hi), 16);
    }
  }
  for (; i < n; i++) {
    const h = <u32>load<u16>(src + (<usize>i << 1));
    store<f32>(dst + (<usize>i << 2), brain ? reinterpret<f32>(h << 16) : f16ToF32(h));
  }
}

// ---- fp8 -----------------------------------------------------------------------------------

/**
 * Encodes unscaled fp8 (bias 7 → e4m3, 15 → e5m2); returns −1 or the first offending index
 * (errorKind 1 non-finite, 2 out of range: e4m3 |x| > 464, e5m2 |x| ≥ 61440).
 */
export function encodeFp8(src: usize, dst: usize, n: i32, bias: i32): i32 {
  const man = bias == 7 ? 3 : 2;
  const limit: u32 = bias == 7 ? 0x43e80001 : 0x47700000;
  const limV = i32x4.splat(limit - 1);
  const absMask = vconst(F32_MAG);
  let i = 0;
  for (; i + 16 <= n; i += 16) {
    const p = src + (<usize>i << 2);
    const x0 = v128.load(p), x1 = v128.load(p, 16), x2 = v128.load(p, 32), x3 = v128.load(p, 48);
    const over = v128.or(
      v128.or(i32x4.gt_u(v128.and(x0, absMask), limV), i32x4.gt_u(v128.and(x1, absMask), limV)),
      v128.or(i32x4.gt_u(v128.and(x2, absMask), limV), i32x4.gt_u(v128.and(x3, absMask), limV)),
    );
    if (v128.any_true(over)) return firstBad(src, i, 16, limit);
    v128.store(
      dst + <usize>i,
      bytes16(fp8Lanes(x0, bias, man), fp8Lanes(x1, bias, man), fp8Lanes(x2, bias, man), fp8Lanes(x3, bias, man)),
    );
  }
  for (; i < n; i++) {
    const bad = firstBad(src, i, 1, limit);
    if (bad >= 0) return bad;
    store<u8>(dst + <usize>i, <u8>fp8Scalar(load<f32>(src + (<usize>i << 2)), bias, man));
  }
  return -1;
}

// f32 lanes of 4 fp8 codes taken from bytes of v by swizzle selector sw
// @ts-ignore: decorator
@inline export function fp8ToF32Lanes(v: v128, sw: v128, bias: i32): v128 {
  const c = i8x16.swizzle(v, sw); // code in the low byte of each lane
  if (bias == 15) return f16ToF32Lanes(i32x4.shl(c, 8)); // e5m2 is the high byte of an fp16
  const em = v128.and(c, vconst(I32_127)); // 0x7f: the e4m3 code's magnitude bits
  const ns = f32x4.mul(i32x4.shl(em, 20), vconst(F32_2P120)); // ·2^120
  const r = v128.bitselect(vconst(U32_7FC00000), ns, i32x4.eq(em, vconst(I32_127)));
  return v128.or(r, i32x4.shl(v128.and(c, vconst(U32_00000080)), 24));
}

export const SW0 = i8x16(0, 16, 16, 16, 1, 16, 16, 16, 2, 16, 16, 16, 3, 16, 16, 16);
export const SW1 = i8x16(4, 16, 16, 16, 5, 16, 16, 16, 6, 16, 16, 16, 7, 16, 16, 16);
const SW2 = i8x16(8, 16, 16, 16, 9, 16, 16, 16, 10, 16, 16, 16, 11, 16, 16, 16);
const SW3 = i8x16(12, 16, 16, 16, 13, 16, 16, 16, 14, 16, 16, 16, 15, 16, 16, 16);

/** Decodes n unscaled fp8 codes at src into f32 at dst (reads up to 15 bytes past the end). */
export function decodeFp8(src: usize, dst: usize, n: i32, bias: i32): void {
  for (let i = 0; i < n; i += 16) {
    const v = v128.load(src + <usize>i);
    const p = dst + (<usize>i << 2);
    const left = n - i;
    v128.store(p, fp8ToF32Lanes(v, SW0, bias));
    if (left > 4) v128.store(p, fp8ToF32Lanes(v, SW1, bias), 16);
    if (left > 8) v128.store(p, fp8ToF32Lanes(v, SW2, bias), 32);
    if (left > 12) v128.store(p, fp8ToF32Lanes(v, SW3, bias), 48);
  }
}

/** Encodes scaled fp8 groups; returns −1 or the first offending index (errorKind 1 or 2). */
export function encodeFp8Scaled(src: usize, dst: usize, n: i32, group: i32, bias: i32): i32 {
  const man = bias == 7 ? 3 : 2;
  const fmax: f32 = bias == 7 ? 448 : 57344;
  const wpg = 1 + (group >> 2);
  for (let base = 0, g = 0; base < n; base += group, g++) {
    const x = src + (<usize>base << 2);
    const w = dst + (<usize>(g * wpg) << 2);
    const err = _symmetricHeader(x, group, fmax, base, w);
    if (err >= 0) return err;
    const s = f16ToF32(load<u32>(w));
    const inv = f32x4.splat(s == 0 ? <f32>0 : <f32>1 / s);
    for (let i = 0; i < group; i += 8) {
      const p = x + (<usize>i << 2);
      const c0 = fp8Lanes(f32x4.mul(v128.load(p), inv), bias, man);
      const c1 = fp8Lanes(f32x4.mul(v128.load(p, 16), inv), bias, man);
      const z = i32x4.splat(0);
      store<i64>(w + 4 + <usize>i, i64x2.extract_lane(bytes16(c0, c1, z, z), 0));
    }
  }
  return -1;
}

/** Decodes scaled fp8 groups; returns −1 or the first corrupt group (errorKind 3). */
export function decodeFp8Scaled(src: usize, dst: usize, n: i32, group: i32, bias: i32): i32 {
  const wpg = 1 + (group >> 2);
  for (let base = 0, g = 0; base < n; base += group, g++) {
    const w = src + (<usize>(g * wpg) << 2);
    const h = load<u32>(w);
    if (h > 0x7bff) return fail(3, g);
    const s = f32x4.splat(f16ToF32(h));
    const out = dst + (<usize>base << 2);
    for (let i = 0; i < group; i += 8) {
      const v = v128.load(w + 4 + <usize>i);
      v128.store(out + (<usize>i << 2), f32x4.mul(fp8ToF32Lanes(v, SW0, bias), s));
      v128.store(out + (<usize>i << 2), f32x4.mul(fp8ToF32Lanes(v, SW1, bias), s), 16);
    }
  }
  return -1;
}

// Header of a symmetric group (int8s, scaled fp8) at w: the fp16 scale rounded up from
// max|x| / qmax, so |x|/s ≤ qmax. Returns −1, or fail()'s index of the group's first non-finite
// element or of its largest one when that needs a scale above fp16's 65504 (nothing stored then).
// @ts-ignore: decorator
@inline function _symmetricHeader(x: usize, group: i32, qmax: f32, base: i32, w: usize): i32 {
  const amax = groupAbsMax(x, group);
  if (nonFinite(amax)) return fail(1, base + firstNonFinite(x, group));
  // a subnormal amax whose quotient underflows to 0 still needs a scale > 0 (FORMAT.md)
  const sBits = f16Up(amax / qmax) | <u32>(amax > 0 && amax / qmax == 0);
  if (sBits == 0x7c00) return fail(2, base + firstAbsEqual(x, group, amax));
  store<u32>(w, sBits);
  return -1;
}
