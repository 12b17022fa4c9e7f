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
export function f32ToF16(v: f32): u32 {
  const bits = reinterpret<u32>(v);
  const sign = (bits >>> 16) & 0x8000;
  const a = bits & 0x7fffffff;
  if (a >= 0x7f800000) return sign | (a > 0x7f800000 ? 0x7e00 | ((a >>> 13) & 0x3ff) : 0x7c00);
  const c = roundMagnitude(a, 15, 10);
  return sign | (c >= 0x7c00 ? 0x7c00 : c);
}

/** f32 value of fp16 bits h (exact). */
export function f16ToF32(h: u32): f32 {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 31;
  const m = h & 0x3ff;
  if (e == 31) return reinterpret<f32>(sign | 0x7f800000 | (m << 13));
  if (e != 0) return reinterpret<f32>(sign | ((e + 112) << 23) | (m << 13));
  return reinterpret<f32>(sign | reinterpret<u32>(<f32>m * 5.9604644775390625e-8)); // m·2^−24
}

/** fp16 bits of the largest fp16 ≤ v (finite v). */
export function f16Down(v: f32): u32 {
  const h = f32ToF16(v);
  if (f16ToF32(h) <= v) return h;
  if (h == 0) return 0x8001;
  return (h & 0x8000) != 0 ? h + 1 : h - 1;
}

/** fp16 bits of the smallest fp16 ≥ v (finite v). */
export function f16Up(v: f32): u32 {
  const h = f32ToF16(v);
  if (f16ToF32(h) >= v) return h;
  if (h == 0x8000) return 0x0001;
  return (h & 0x8000) != 0 ? h - 1 : h + 1;
}

/** Whether v is NaN or ±Inf. */
// @ts-ignore: decorator
@inline export function nonFinite(v: f32): bool {
  return (reinterpret<u32>(v) & 0x7fffffff) >= 0x7f800000;
}
