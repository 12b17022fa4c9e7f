// Scalar conversions between f32 and fp16/fp8 bits, the AssemblyScript port of
// codecs/float_bits.ts (integer algorithms; must stay bit-identical to it).

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
  const a = v128.and(x, i32x4.splat(0x7fffffff));
  const magic = i32x4.splat(0x3f000000); // 0.5: its f32 ulp is 2^−24, the fp16 subnormal step
  const sub = i32x4.sub(f32x4.add(a, magic), magic);
  const odd = v128.and(i32x4.shr_u(a, 13), i32x4.splat(1));
  const nrm = i32x4.shr_u(i32x4.add(i32x4.add(a, i32x4.splat(-0x37fff001)), odd), 13);
  const c = v128.bitselect(sub, nrm, i32x4.lt_u(a, i32x4.splat(0x38800000)));
  return v128.or(c, v128.and(i32x4.shr_u(x, 16), i32x4.splat(0x8000)));
}

// f32 lanes of fp16 lanes (u32 lanes holding 16-bit patterns), exact, NaN payload kept
// @ts-ignore: decorator
@inline export function f16ToF32Lanes(h: v128): v128 {
  const em = v128.and(h, i32x4.splat(0x7fff));
  const shifted = i32x4.shl(em, 13);
  const ns = f32x4.mul(shifted, f32x4.splat(5.192296858534828e33)); // ·2^112 (exact, subnormals too)
  const inf = v128.or(shifted, i32x4.splat(0x7f800000));
  const r = v128.bitselect(inf, ns, i32x4.ge_u(em, i32x4.splat(0x7c00)));
  return v128.or(r, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}


// fp16 lanes rounded down (toward −∞) from f32 lanes, |x| ≤ 65504: the vector f16Down
// @ts-ignore: decorator
@inline export function f16DownLanes(x: v128): v128 {
  const h = f16Lanes(x);
  const neg = i32x4.ne(v128.and(h, i32x4.splat(0x8000)), i32x4.splat(0));
  let step = v128.bitselect(i32x4.add(h, i32x4.splat(1)), i32x4.sub(h, i32x4.splat(1)), neg);
  step = v128.bitselect(i32x4.splat(0x8001), step, i32x4.eq(h, i32x4.splat(0)));
  return v128.bitselect(step, h, f32x4.gt(f16ToF32Lanes(h), x));
}

// fp16 lanes rounded up (toward +∞) from f32 lanes, |x| ≤ 65504: the vector f16Up
// @ts-ignore: decorator
@inline export function f16UpLanes(x: v128): v128 {
  const h = f16Lanes(x);
  const neg = i32x4.ne(v128.and(h, i32x4.splat(0x8000)), i32x4.splat(0));
  let step = v128.bitselect(i32x4.sub(h, i32x4.splat(1)), i32x4.add(h, i32x4.splat(1)), neg);
  step = v128.bitselect(i32x4.splat(0x0001), step, i32x4.eq(h, i32x4.splat(0x8000)));
  return v128.bitselect(step, h, f32x4.lt(f16ToF32Lanes(h), x));
}
