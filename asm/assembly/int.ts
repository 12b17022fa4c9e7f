// Asymmetric integer group quantization (format kind `int`), SIMD port of codecs/int.ts.
// Layout and arithmetic: codecs/FORMAT.md, "Integer formats, asymmetric".

import { f16Down, f16ToF32, f16Up, nonFinite } from "./f16";
import { fail } from "./errors";

/** Index of the first non-finite element of src[0..n), or −1. */
export function firstNonFinite(src: usize, n: i32): i32 {
  for (let i = 0; i < n; i++) if (nonFinite(load<f32>(src + (<usize>i << 2)))) return i;
  return -1;
}

/** Index of the first element of src[0..n) equal to v (−1 if none). */
export function firstEqual(src: usize, n: i32, v: f32): i32 {
  for (let i = 0; i < n; i++) if (load<f32>(src + (<usize>i << 2)) == v) return i;
  return -1;
}

/** Index of the first element of src[0..n) with |x| == v (−1 if none). */
export function firstAbsEqual(src: usize, n: i32, v: f32): i32 {
  for (let i = 0; i < n; i++) if (abs<f32>(load<f32>(src + (<usize>i << 2))) == v) return i;
  return -1;
}

/** Clamps src[0..n) in place to [−limit, limit], NaN → 0 (the `{clamp: true}` option). */
export function clampInPlace(src: usize, n: i32, limit: f32): void {
  const hi = f32x4.splat(limit), lo = f32x4.splat(-limit), zero = f32x4.splat(0);
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    const p = src + (<usize>i << 2);
    const v = v128.load(p);
    const c = f32x4.min(f32x4.max(v, lo), hi);
    v128.store(p, v128.bitselect(c, zero, f32x4.eq(v, v)));
  }
  for (; i < n; i++) {
    const p = src + (<usize>i << 2);
    const v = load<f32>(p);
    store<f32>(p, v != v ? 0 : min<f32>(max<f32>(v, -limit), limit));
  }
}

// Packs 16 codes (i32 lanes of q0..q3, each < 2^bits, bits ∈ {2, 4, 8}) into the low 2·bits
// bytes of the result, LSB first.
// @ts-ignore: decorator
@inline function pack16(q0: v128, q1: v128, q2: v128, q3: v128, bits: i32): v128 {
  const b = i8x16.narrow_i16x8_u(i16x8.narrow_i32x4_u(q0, q1), i16x8.narrow_i32x4_u(q2, q3));
  if (bits == 8) return b;
  if (bits == 4) {
    // u16 lane = c_even | c_odd << 8 → byte c_even | c_odd << 4
    const n = v128.and(v128.or(b, i16x8.shr_u(b, 4)), i16x8.splat(0xff));
    return i8x16.narrow_i16x8_u(n, n);
  }
  // bits == 2: pairs to nibbles, then nibble pairs to bytes
  const n = v128.and(v128.or(b, i16x8.shr_u(b, 6)), i16x8.splat(0x0f));
  const y = v128.and(v128.or(n, i32x4.shr_u(n, 12)), i32x4.splat(0xff));
  const h = i16x8.narrow_i32x4_u(y, y);
  return i8x16.narrow_i16x8_u(h, h);
}

// Stores the low `bytes` bytes of v (bytes ∈ {4, 8, 16}).
// @ts-ignore: decorator
@inline function storeBytes(p: usize, v: v128, bytes: i32): void {
  if (bytes == 16) v128.store(p, v);
  else if (bytes == 8) store<i64>(p, i64x2.extract_lane(v, 0));
  else store<i32>(p, i32x4.extract_lane(v, 0));
}

/**
 * Encodes n f32 at src into words at dst. Returns −1, or the index of the first offending element
 * (errorKind 1 non-finite, 2 range) of the first bad group; dst is then partly written.
 */
export function encodeInt(src: usize, dst: usize, n: i32, bits: i32, group: i32): i32 {
  const qmax = (1 << bits) - 1;
  const codeWords = (group * bits + 31) >> 5;
  const wpg = 1 + codeWords;
  const qmaxV = f32x4.splat(<f32>qmax);
  const simdPack = bits == 2 || bits == 4 || bits == 8;
  for (let base = 0, g = 0; base < n; base += group, g++) {
    const x = src + (<usize>base << 2);
    let vlo = v128.load(x), vhi = vlo;
    for (let i = 4; i < group; i += 4) {
      const v = v128.load(x + (<usize>i << 2));
      vlo = f32x4.min(vlo, v);
      vhi = f32x4.max(vhi, v);
    }
    const lo = min<f32>(
      min<f32>(f32x4.extract_lane(vlo, 0), f32x4.extract_lane(vlo, 1)),
      min<f32>(f32x4.extract_lane(vlo, 2), f32x4.extract_lane(vlo, 3)),
    );
    const hi = max<f32>(
      max<f32>(f32x4.extract_lane(vhi, 0), f32x4.extract_lane(vhi, 1)),
      max<f32>(f32x4.extract_lane(vhi, 2), f32x4.extract_lane(vhi, 3)),
    );
    // min/max propagate NaN, and ±Inf lands in lo or hi
    if (nonFinite(lo) || nonFinite(hi)) return fail(1, base + firstNonFinite(x, group));
    const mBits = f16Down(lo);
    if (mBits == 0xfc00) return fail(2, base + firstEqual(x, group, lo));
    const m = f16ToF32(mBits);
    const sBits = f16Up((hi - m) / <f32>qmax);
    if (sBits == 0x7c00) return fail(2, base + firstEqual(x, group, hi));
    const s = f16ToF32(sBits);
    const inv: f32 = s == 0 ? 0 : <f32>1 / s;
    const w = dst + (<usize>(g * wpg) << 2);
    store<u32>(w, sBits | (mBits << 16));
    const mV = f32x4.splat(m), invV = f32x4.splat(inv);
    const codes = w + 4;
    if (simdPack) {
      const chunkBytes = group >= 16 ? bits * 2 : max<i32>(bits, 4);
      const zero = i32x4.splat(0);
      for (let i = 0, o = 0; i < group; i += 16, o += chunkBytes) {
        const p = x + (<usize>i << 2);
        const q0 = quantize(v128.load(p), mV, invV, qmaxV);
        const q1 = quantize(v128.load(p, 16), mV, invV, qmaxV);
        let q2 = zero, q3 = zero;
        if (group >= 16) {
          q2 = quantize(v128.load(p, 32), mV, invV, qmaxV);
          q3 = quantize(v128.load(p, 48), mV, invV, qmaxV);
        }
        storeBytes(codes + o, pack16(q0, q1, q2, q3, bits), chunkBytes);
      }
    } else {
      // b = 3, 5, 6: codes straddle words; a 64-bit bit buffer, flushed a word at a time
      let acc: u64 = 0;
      let fill: i32 = 0;
      let out = codes;
      for (let i = 0; i < group; i += 4) {
        const q = quantize(v128.load(x + (<usize>i << 2)), mV, invV, qmaxV);
        acc |= <u64>i32x4.extract_lane(q, 0) << fill;
        acc |= <u64>i32x4.extract_lane(q, 1) << (fill + bits);
        acc |= <u64>i32x4.extract_lane(q, 2) << (fill + 2 * bits);
        acc |= <u64>i32x4.extract_lane(q, 3) << (fill + 3 * bits);
        fill += 4 * bits;
        if (fill >= 32) {
          store<u32>(out, <u32>acc);
          out += 4;
          acc >>= 32;
          fill -= 32;
        }
      }
      if (fill > 0) store<u32>(out, <u32>acc);
    }
  }
  return -1;
}

// q = min(rne(f32(f32(x − m) · inv)), qmax) as i32 lanes
// @ts-ignore: decorator
@inline function quantize(x: v128, m: v128, inv: v128, qmax: v128): v128 {
  return i32x4.trunc_sat_f32x4_u(f32x4.min(f32x4.nearest(f32x4.mul(f32x4.sub(x, m), inv)), qmax));
}

// Per-lane byte selectors, masks and 2^−offset multipliers of codes 0..7 for each width b: code
// k lives in bytes ⌊k·b/8⌋, ⌊k·b/8⌋+1 at bit offset k·b mod 8 (8 codes span exactly b bytes).
const TABLES = memory.data(96);

function buildTables(bits: i32): void {
  for (let k = 0; k < 8; k++) {
    const byte = (k * bits) >> 3, off = (k * bits) & 7;
    const sw = TABLES + (<usize>k << 2);
    store<u8>(sw, <u8>byte);
    store<u8>(sw, <u8>(off + bits > 8 ? byte + 1 : 16), 1);
    store<u8>(sw, 16, 2);
    store<u8>(sw, 16, 3);
    store<u32>(TABLES + 32 + (<usize>k << 2), <u32>((1 << bits) - 1) << off);
    store<f32>(TABLES + 64 + (<usize>k << 2), reinterpret<f32>(<u32>(127 - off) << 23)); // 2^−off
  }
}

/**
 * Decodes n elements from words at src into f32 at dst. Reads up to 15 bytes past the last
 * group. Returns −1, or the index of the first group with a corrupt header (errorKind 3).
 */
export function decodeInt(src: usize, dst: usize, n: i32, bits: i32, group: i32): i32 {
  const wpg = 1 + ((group * bits + 31) >> 5);
  buildTables(bits);
  const sw0 = v128.load(TABLES), sw1 = v128.load(TABLES, 16);
  const mk0 = v128.load(TABLES, 32), mk1 = v128.load(TABLES, 48);
  const p0 = v128.load(TABLES, 64), p1 = v128.load(TABLES, 80);
  for (let base = 0, g = 0; base < n; base += group, g++) {
    const w = src + (<usize>(g * wpg) << 2);
    const h = load<u32>(w);
    if ((h & 0x7c00) == 0x7c00 || (h & 0x8000) != 0 || ((h >>> 16) & 0x7c00) == 0x7c00) {
      return fail(3, g);
    }
    const s = f32x4.splat(f16ToF32(h & 0xffff));
    const mV = f32x4.splat(f16ToF32(h >>> 16));
    const s0 = f32x4.mul(s, p0), s1 = f32x4.mul(s, p1);
    const codes = w + 4;
    const out = dst + (<usize>base << 2);
    for (let i = 0, o = 0; i < group; i += 8, o += bits) {
      const v = v128.load(codes + <usize>o);
      const a = f32x4.convert_i32x4_u(v128.and(i8x16.swizzle(v, sw0), mk0));
      const b = f32x4.convert_i32x4_u(v128.and(i8x16.swizzle(v, sw1), mk1));
      // (q·2^off)·(s·2^−off) = q·s exactly; then one rounding of + m
      v128.store(out + (<usize>i << 2), f32x4.add(f32x4.mul(a, s0), mV));
      v128.store(out + (<usize>i << 2), f32x4.add(f32x4.mul(b, s1), mV), 16);
    }
  }
  return -1;
}
