// Asymmetric integer group quantization (format kind `int`), SIMD port of codecs/int.ts.
// Layout and arithmetic: codecs/FORMAT.md, "Integer formats, asymmetric".

import {
  F16_EXP_HI,
  F16_EXP_LO,
  F16_SIGN_LO,
  F16_MAX,
  F32_EXP,
  F32_MAG,
  F16_MAX_NEG,
  MAGIC_2P23,
  ONE,
  U32_000000FF,
  U32_00007BFF,
  U32_000F000F,
  U32_00FF00FF,
  vconst,
} from "./consts";
import {
  f16Down,
  f16DownLanes,
  f16ToF32,
  f16ToF32Lanes,
  f16Up,
  f16UpLanes,
  nonFinite,
} from "./f16";
import { fail } from "./errors";
import {
  chunkTables,
  decodeIntGroup,
  decodeWideCodes,
  fastIntGroup,
  finiteMinima,
  finiteScales,
} from "./int_group";

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
    const n = v128.and(v128.or(b, i16x8.shr_u(b, 4)), vconst(U32_00FF00FF));
    return i8x16.narrow_i16x8_u(n, n);
  }
  // bits == 2: pairs to nibbles, then nibble pairs to bytes
  const n = v128.and(v128.or(b, i16x8.shr_u(b, 6)), vconst(U32_000F000F));
  const y = v128.and(v128.or(n, i32x4.shr_u(n, 12)), vconst(U32_000000FF));
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
 * Groups go four at a time: their minimum, scale and reciprocal are computed in the lanes of one
 * vector (the scalar chain of fp16 roundings and two divisions per group would otherwise be the
 * critical path); a block with any problem is redone group by group to find the first error.
 */
export function encodeInt(src: usize, dst: usize, n: i32, bits: i32, group: i32): i32 {
  const groups = n / group;
  const qmax = (1 << bits) - 1;
  const wpg = 1 + ((group * bits + 31) >> 5);
  const absMask = vconst(F32_MAG);
  const qmaxF = f32x4.splat(<f32>qmax);
  let g = 0;
  for (; g + 4 <= groups; g += 4) {
    const x = src + (<usize>(g * group) << 2);
    const gb = <usize>group << 2;
    let l0 = v128.load(x), h0 = l0, l1 = v128.load(x + gb), h1 = l1;
    let l2 = v128.load(x + 2 * gb), h2 = l2, l3 = v128.load(x + 3 * gb), h3 = l3;
    let mag = i32x4.max_u(
      i32x4.max_u(v128.and(l0, absMask), v128.and(l1, absMask)),
      i32x4.max_u(v128.and(l2, absMask), v128.and(l3, absMask)),
    );
    for (let i: usize = 16; i < gb; i += 16) {
      const v0 = v128.load(x + i), v1 = v128.load(x + gb + i);
      const v2 = v128.load(x + 2 * gb + i), v3 = v128.load(x + 3 * gb + i);
      l0 = f32x4.pmin(l0, v0);
      h0 = f32x4.pmax(h0, v0);
      l1 = f32x4.pmin(l1, v1);
      h1 = f32x4.pmax(h1, v1);
      l2 = f32x4.pmin(l2, v2);
      h2 = f32x4.pmax(h2, v2);
      l3 = f32x4.pmin(l3, v3);
      h3 = f32x4.pmax(h3, v3);
      mag = i32x4.max_u(
        mag,
        i32x4.max_u(
          i32x4.max_u(v128.and(v0, absMask), v128.and(v1, absMask)),
          i32x4.max_u(v128.and(v2, absMask), v128.and(v3, absMask)),
        ),
      );
    }
    // transpose-reduce: lane j of lo4/hi4 is group g+j's min/max; + 0 makes −0 extremes +0
    const zero = f32x4.splat(0);
    const lo4 = f32x4.add(reduce4(l0, l1, l2, l3, false), zero);
    const hi4 = f32x4.add(reduce4(h0, h1, h2, h3, true), zero);
    const m16 = f16DownLanes(f32x4.pmin(lo4, vconst(F16_MAX)));
    const m4 = f16ToF32Lanes(m16);
    const c4 = f32x4.div(f32x4.sub(hi4, m4), qmaxF);
    const trouble = v128.or(
      v128.or(i32x4.ge_u(mag, vconst(F32_EXP)), f32x4.lt(lo4, vconst(F16_MAX_NEG))),
      f32x4.gt(c4, vconst(F16_MAX)),
    );
    if (v128.any_true(trouble)) {
      for (let j = 0; j < 4; j++) {
        const r = encodeGroup(src, dst, g + j, bits, group);
        if (r >= 0) return r;
      }
      continue;
    }
    // a subnormal range whose quotient underflows to 0 still gets the smallest scale (step 3)
    const s16 = v128.or(
      f16UpLanes(c4),
      i32x4.shr_u(v128.and(f32x4.eq(c4, zero), f32x4.gt(hi4, m4)), 31),
    );
    const s4 = f16ToF32Lanes(s16);
    const inv4 = v128.andnot(f32x4.div(vconst(ONE), s4), f32x4.eq(s4, zero));
    v128.store(SCRATCH, v128.or(s16, i32x4.shl(m16, 16)));
    quantizeGroup(x, dst, g, wpg, bits, group, f32x4.extract_lane(m4, 0), f32x4.extract_lane(inv4, 0), 0);
    quantizeGroup(x + gb, dst, g + 1, wpg, bits, group, f32x4.extract_lane(m4, 1), f32x4.extract_lane(inv4, 1), 1);
    quantizeGroup(x + 2 * gb, dst, g + 2, wpg, bits, group, f32x4.extract_lane(m4, 2), f32x4.extract_lane(inv4, 2), 2);
    quantizeGroup(x + 3 * gb, dst, g + 3, wpg, bits, group, f32x4.extract_lane(m4, 3), f32x4.extract_lane(inv4, 3), 3);
  }
  for (; g < groups; g++) {
    const r = encodeGroup(src, dst, g, bits, group);
    if (r >= 0) return r;
  }
  return -1;
}

const SCRATCH = memory.data(16, 16);

// lane j = min (or max) over the lanes of vj
// @ts-ignore: decorator
@inline function reduce4(v0: v128, v1: v128, v2: v128, v3: v128, isMax: bool): v128 {
  const a0 = i32x4.shuffle(v0, v1, 0, 1, 4, 5), b0 = i32x4.shuffle(v0, v1, 2, 3, 6, 7);
  const a1 = i32x4.shuffle(v2, v3, 0, 1, 4, 5), b1 = i32x4.shuffle(v2, v3, 2, 3, 6, 7);
  const t0 = isMax ? f32x4.pmax(a0, b0) : f32x4.pmin(a0, b0);
  const t1 = isMax ? f32x4.pmax(a1, b1) : f32x4.pmin(a1, b1);
  const a = i32x4.shuffle(t0, t1, 0, 2, 4, 6), b = i32x4.shuffle(t0, t1, 1, 3, 5, 7);
  return isMax ? f32x4.pmax(a, b) : f32x4.pmin(a, b);
}

// header (from SCRATCH lane j) and codes of one group whose m and inv are known
// @ts-ignore: decorator
@inline function quantizeGroup(
  x: usize,
  dst: usize,
  g: i32,
  wpg: i32,
  bits: i32,
  group: i32,
  m: f32,
  inv: f32,
  j: i32,
): void {
  const w = dst + (<usize>(g * wpg) << 2);
  store<u32>(w, load<u32>(SCRATCH + (<usize>j << 2)));
  quantizeCodes(x, w + 4, bits, group, f32x4.splat(m), f32x4.splat(inv), i32x4.splat((1 << bits) - 1));
}

// One group, scalar header: the reference order of checks (non-finite first, then range).
function encodeGroup(src: usize, dst: usize, g: i32, bits: i32, group: i32): i32 {
  const base = g * group;
  const qmax = (1 << bits) - 1;
  const wpg = 1 + ((group * bits + 31) >> 5);
  const qmaxV = i32x4.splat(qmax);
  const absMask = vconst(F32_MAG);
  const x = src + (<usize>base << 2);
  // pmin/pmax are single instructions; non-finite values are caught by the magnitude bits
  // (NaN and ±Inf have the largest), and ±0 extremes are normalised below
  let vlo = v128.load(x), vhi = vlo;
  let mag = v128.and(vlo, absMask);
  for (let i = 4; i < group; i += 4) {
    const v = v128.load(x + (<usize>i << 2));
    vlo = f32x4.pmin(vlo, v);
    vhi = f32x4.pmax(vhi, v);
    mag = i32x4.max_u(mag, v128.and(v, absMask));
  }
  if (horizontalMaxU(mag) >= 0x7f800000) return fail(1, base + firstNonFinite(x, group));
  vlo = f32x4.pmin(vlo, i32x4.shuffle(vlo, vlo, 2, 3, 0, 1));
  vhi = f32x4.pmax(vhi, i32x4.shuffle(vhi, vhi, 2, 3, 0, 1));
  vlo = f32x4.pmin(vlo, i32x4.shuffle(vlo, vlo, 1, 0, 3, 2));
  vhi = f32x4.pmax(vhi, i32x4.shuffle(vhi, vhi, 1, 0, 3, 2));
  // + 0 turns a −0 extreme into +0, whichever zero the min/max picked (FORMAT.md step 1)
  const lo = f32x4.extract_lane(vlo, 0) + 0;
  const hi = f32x4.extract_lane(vhi, 0) + 0;
  const mBits = f16Down(lo);
  if (mBits == 0xfc00) return fail(2, base + firstEqual(x, group, lo));
  const m = f16ToF32(mBits);
  // a subnormal range whose quotient underflows to 0 still needs a scale > 0 (FORMAT.md step 3)
  const range = hi - m;
  const sBits = f16Up(range / <f32>qmax) | <u32>(range > 0 && range / <f32>qmax == 0);
  if (sBits == 0x7c00) return fail(2, base + firstEqual(x, group, hi));
  const s = f16ToF32(sBits);
  const inv: f32 = s == 0 ? 0 : <f32>1 / s;
  const w = dst + (<usize>(g * wpg) << 2);
  store<u32>(w, sBits | (mBits << 16));
  quantizeCodes(x, w + 4, bits, group, f32x4.splat(m), f32x4.splat(inv), qmaxV);
  return -1;
}

// Codes of one group at x into the code words at `codes`.
// @ts-ignore: decorator
@inline function quantizeCodes(
  x: usize,
  codes: usize,
  bits: i32,
  group: i32,
  mV: v128,
  invV: v128,
  qmaxV: v128,
): void {
  const simdPack = bits == 2 || bits == 4 || bits == 8;
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

// q = min(rne(f32(f32(x − m) · inv)), qmax) as i32 lanes. Adding 2^23 rounds a value in
// [0, 2^22) to an integer, ties to even, leaving it in the low mantissa bits (the f32 ulp at 2^23
// is 1): the same result as f32x4.nearest, in two cheap instructions.
// @ts-ignore: decorator
@inline function quantize(x: v128, m: v128, inv: v128, qmax: v128): v128 {
  const magic = vconst(MAGIC_2P23);
  const u = f32x4.mul(f32x4.sub(x, m), inv);
  return i32x4.min_s(i32x4.sub(f32x4.add(u, magic), magic), qmax);
}

/** Largest u32 lane of v. */
// @ts-ignore: decorator
@inline export function horizontalMaxU(v: v128): u32 {
  const a = i32x4.max_u(v, i32x4.shuffle(v, v, 2, 3, 0, 1));
  const b = i32x4.max_u(a, i32x4.shuffle(a, a, 1, 0, 3, 2));
  return <u32>i32x4.extract_lane(b, 0);
}

/**
 * Decodes n elements from words at src into f32 at dst. Reads up to 15 bytes past the last
 * group. Returns −1, or the index of the first group with a corrupt header (errorKind 3).
 */
export function decodeInt(src: usize, dst: usize, n: i32, bits: i32, group: i32): i32 {
  const wpg = 1 + ((group * bits + 31) >> 5);
  if (bits != 2 && fastIntGroup(bits, group)) {
    // the attention kernel's group decoder: fixed shuffles instead of per-code byte selection
    // (bench/codecs_report.ts: int4 and int8 15.5 GB/s against 13.1; its int2 path, a word at a
    // time, is slower here than the byte selection below: 11.1 against 13.1), with the headers
    // four groups at a time, one vector check and one vector fp16 decode (17.0 GB/s against 15.5;
    // byte-selection swizzles or zero-interleaves instead of the widening extends: 8–11 GB/s)
    const groups = n / group, step = <usize>wpg << 2;
    let g = 0;
    for (; g + 4 <= groups; g += 4) {
      const w = src + (<usize>(g * wpg) << 2);
      let h = v128.load32_zero(w);
      h = i32x4.replace_lane(h, 1, load<i32>(w + step));
      h = i32x4.replace_lane(h, 2, load<i32>(w + 2 * step));
      h = i32x4.replace_lane(h, 3, load<i32>(w + 3 * step));
      const bad = _badAsymHeaders(h);
      if (v128.any_true(bad)) return fail(3, g + ctz(i32x4.bitmask(bad)));
      // the check above rules out Inf and NaN: no second check per half (with one, the int4
      // kernel measured 17.4–17.9 GB/s; without, 18.4–19.2)
      const sc = finiteScales(h), mn = finiteMinima(h);
      const out = dst + (<usize>(g * group) << 2);
      // each group's scale and minimum into all lanes by one shuffle, not extract then splat
      // (int4 kernel 16.1–17.1 GB/s against 15.6–16.4, old and new interleaved in one process)
      const cw = wpg - 1, gB = <usize>group << 2;
      decodeWideCodes(w + 4, bits, cw, out, i32x4.shuffle(sc, sc, 0, 0, 0, 0), i32x4.shuffle(mn, mn, 0, 0, 0, 0));
      decodeWideCodes(w + step + 4, bits, cw, out + gB, i32x4.shuffle(sc, sc, 1, 1, 1, 1), i32x4.shuffle(mn, mn, 1, 1, 1, 1));
      decodeWideCodes(w + 2 * step + 4, bits, cw, out + 2 * gB, i32x4.shuffle(sc, sc, 2, 2, 2, 2), i32x4.shuffle(mn, mn, 2, 2, 2, 2));
      decodeWideCodes(w + 3 * step + 4, bits, cw, out + 3 * gB, i32x4.shuffle(sc, sc, 3, 3, 3, 3), i32x4.shuffle(mn, mn, 3, 3, 3, 3));
    }
    for (; g < groups; g++) {
      const w = src + (<usize>(g * wpg) << 2);
      const h = load<u32>(w);
      if ((h & 0x7c00) == 0x7c00 || (h & 0x8000) != 0 || ((h >>> 16) & 0x7c00) == 0x7c00) {
        return fail(3, g);
      }
      decodeIntGroup(w, group, bits, wpg - 1, dst + (<usize>(g * group) << 2));
    }
    return -1;
  }
  const t = chunkTables(bits);
  const sw0 = v128.load(t), sw1 = v128.load(t, 16);
  const mk0 = v128.load(t, 32), mk1 = v128.load(t, 48);
  const p0 = v128.load(t, 64), p1 = v128.load(t, 80);
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
      const a = f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v, sw0), mk0));
      const b = f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v, sw1), mk1));
      // lanes are < 2^15, so the signed convert (one instruction) is exact;
      // (q·2^off)·(s·2^−off) = q·s exactly; then one rounding of + m
      v128.store(out + (<usize>i << 2), f32x4.add(f32x4.mul(a, s0), mV));
      v128.store(out + (<usize>i << 2), f32x4.add(f32x4.mul(b, s1), mV), 16);
    }
  }
  return -1;
}

// Lanes of four asymmetric int headers an encoder cannot write: scale Inf/NaN or negative
// (sign set), minimum Inf/NaN.
// @ts-ignore: decorator
@inline function _badAsymHeaders(h: v128): v128 {
  return v128.or(
    v128.or(
      i32x4.eq(v128.and(h, vconst(F16_EXP_LO)), vconst(F16_EXP_LO)),
      i32x4.eq(v128.and(h, vconst(F16_EXP_HI)), vconst(F16_EXP_HI)),
    ),
    i32x4.ne(v128.and(h, vconst(F16_SIGN_LO)), i32x4.splat(0)),
  );
}

/**
 * Index of the first of `groups` headers (every `wpg` words from src) an encoder cannot write,
 * or −1. `int` (asym = 1): scale finite with sign clear, minimum finite. Otherwise (int8s, scaled
 * fp8): the word is at most 0x7bff.
 */
export function firstBadHeader(src: usize, groups: i32, wpg: i32, asym: bool): i32 {
  const step = <usize>wpg << 2;
  let p = src;
  let g = 0;
  // four headers per vector check, the first bad lane named by its bit
  for (; g + 4 <= groups; g += 4, p += 4 * step) {
    let h = v128.load32_zero(p);
    h = i32x4.replace_lane(h, 1, load<i32>(p + step));
    h = i32x4.replace_lane(h, 2, load<i32>(p + 2 * step));
    h = i32x4.replace_lane(h, 3, load<i32>(p + 3 * step));
    const bad = asym ? _badAsymHeaders(h) : i32x4.gt_u(h, vconst(U32_00007BFF));
    if (v128.any_true(bad)) return g + ctz(i32x4.bitmask(bad));
  }
  for (; g < groups; g++, p += step) {
    const h = load<u32>(p);
    const bad = asym
      ? (h & 0x7c00) == 0x7c00 || (h & 0x8000) != 0 || ((h >>> 16) & 0x7c00) == 0x7c00
      : h > 0x7bff;
    if (bad) return g;
  }
  return -1;
}
