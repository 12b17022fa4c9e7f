// Scalar conversions between f32 and fp16/fp8 bits, the AssemblyScript port of
// codecs/float_bits.ts (integer algorithms; must stay bit-identical to it).

import {
  F16_EXP_LO,
  F16_MAG_LO,
  F16_MIN_NORMAL_F32,
  F16_NORMAL_BIAS,
  F16_REBIAS,
  F16_SIGN_LO,
  F32_EXP,
  F32_MAG,
  HALF_F32,
  ONE_U32,
  U32_00008001,
  vconst,
} from "./consts";

/** Rounds f32 magnitude bits `a` (finite) to a small float (bias, man), ties to even; no overflow handling. */
// @ts-ignore: decorator
@inline export function roundMagnitude(a: u32, bias: i32, man: i32): u32 {
  if (a < (<u32>(128 - bias) << 23)) {
    const magicBits = <u32>(151 - bias - man) << 23;
    return reinterpret<u32>(reinterpret<f32>(a) + reinterpret<f32>(magicBits)) - magicBits;
  }
  const shift = 23 - man;
  const odd = (a >>> shift) & 1;
  return (a + (<u32>(bias - 127) << 23) + ((<u32>1 << (shift - 1)) - 1) + odd) >>> shift;
}

/** fp16 bits of v, round to nearest even; overflow → ±Inf; NaN → quiet NaN. */
// @ts-ignore: decorator
@inline export function f32ToF16(v: f32): u32 {
  const bits = reinterpret<u32>(v);
  const sign = (bits >>> 16) & 0x8000;
  const a = bits & 0x7fffffff;
  if (a >= 0x7f800000) return sign | (a > 0x7f800000 ? 0x7e00 | ((a >>> 13) & 0x3ff) : 0x7c00);
  const c = roundMagnitude(a, 15, 10);
  return sign | (c >= 0x7c00 ? 0x7c00 : c);
}

/** f32 value of fp16 bits h (exact). */
// @ts-ignore: decorator
@inline export function f16ToF32(h: u32): f32 {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 31;
  const m = h & 0x3ff;
  if (e == 31) return reinterpret<f32>(sign | 0x7f800000 | (m << 13));
  if (e != 0) return reinterpret<f32>(sign | ((e + 112) << 23) | (m << 13));
  return reinterpret<f32>(sign | reinterpret<u32>(<f32>m * 5.9604644775390625e-8)); // m·2^−24
}

/** fp16 bits of the largest fp16 ≤ v (finite v). Branch-free: the step is data-dependent. */
// @ts-ignore: decorator
@inline export function f16Down(v: f32): u32 {
  const h = f32ToF16(v);
  const step = select<u32>(0x8001, select<u32>(h + 1, h - 1, (h & 0x8000) != 0), h == 0);
  return select<u32>(step, h, f16ToF32(h) > v);
}

/** fp16 bits of the smallest fp16 ≥ v (finite v). Branch-free. */
// @ts-ignore: decorator
@inline export function f16Up(v: f32): u32 {
  const h = f32ToF16(v);
  const step = select<u32>(0x0001, select<u32>(h - 1, h + 1, (h & 0x8000) != 0), h == 0x8000);
  return select<u32>(step, h, f16ToF32(h) < v);
}

/** Whether v is NaN or ±Inf. */
// @ts-ignore: decorator
@inline export function nonFinite(v: f32): bool {
  return (reinterpret<u32>(v) & 0x7fffffff) >= 0x7f800000;
}

// fp16 lanes of f32 lanes, |x| < 65520 (Giesen's float_to_half_fast3_rtne, vectorised)
// @ts-ignore: decorator
@inline export function f16Lanes(x: v128): v128 {
  const a = v128.and(x, vconst(F32_MAG));
  const magic = vconst(HALF_F32); // 0.5: its f32 ulp is 2^−24, the fp16 subnormal step
  const sub = i32x4.sub(f32x4.add(a, magic), magic);
  const odd = v128.and(i32x4.shr_u(a, 13), vconst(ONE_U32));
  const nrm = i32x4.shr_u(i32x4.add(i32x4.add(a, vconst(F16_NORMAL_BIAS)), odd), 13);
  const c = v128.bitselect(sub, nrm, i32x4.lt_u(a, vconst(F16_MIN_NORMAL_F32)));
  return v128.or(c, v128.and(i32x4.shr_u(x, 16), vconst(F16_SIGN_LO)));
}

// f32 lanes of fp16 lanes (u32 lanes holding 16-bit patterns), exact, NaN payload kept
// @ts-ignore: decorator
@inline export function f16ToF32Lanes(h: v128): v128 {
  const em = v128.and(h, vconst(F16_MAG_LO));
  const shifted = i32x4.shl(em, 13);
  const ns = f32x4.mul(shifted, vconst(F16_REBIAS)); // ·2^112 (exact, subnormals too)
  const inf = v128.or(shifted, vconst(F32_EXP));
  const r = v128.bitselect(inf, ns, i32x4.ge_u(em, vconst(F16_EXP_LO)));
  return v128.or(r, i32x4.shl(v128.and(h, vconst(F16_SIGN_LO)), 16));
}


// fp16 lanes rounded down (toward −∞) from f32 lanes, |x| ≤ 65504: the vector f16Down
// @ts-ignore: decorator
@inline export function f16DownLanes(x: v128): v128 {
  const h = f16Lanes(x);
  const neg = i32x4.ne(v128.and(h, vconst(F16_SIGN_LO)), i32x4.splat(0));
  let step = v128.bitselect(i32x4.add(h, vconst(ONE_U32)), i32x4.sub(h, vconst(ONE_U32)), neg);
  step = v128.bitselect(vconst(U32_00008001), step, i32x4.eq(h, i32x4.splat(0)));
  return v128.bitselect(step, h, f32x4.gt(f16ToF32Lanes(h), x));
}

// fp16 lanes rounded up (toward +∞) from f32 lanes, |x| ≤ 65504: the vector f16Up
// @ts-ignore: decorator
@inline export function f16UpLanes(x: v128): v128 {
  const h = f16Lanes(x);
  const neg = i32x4.ne(v128.and(h, vconst(F16_SIGN_LO)), i32x4.splat(0));
  let step = v128.bitselect(i32x4.sub(h, vconst(ONE_U32)), i32x4.add(h, vconst(ONE_U32)), neg);
  step = v128.bitselect(vconst(ONE_U32), step, i32x4.eq(h, vconst(F16_SIGN_LO)));
  return v128.bitselect(step, h, f32x4.lt(f16ToF32Lanes(h), x));
}
