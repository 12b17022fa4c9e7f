// Integer-dot-product attention for token-axis asymmetric int2/int4/int8 pages with groups of 32
// (core/cache/PAGES.md, "Integer dot products"). Keys: the query is rounded to integers (one scale
// σ per head, core/cache/int_dot.ts roundQuery): to ±127 for int2 and int4 codes, to ±32767 for
// int8. Built with relaxed SIMD (RELAXED below), the loop over four heads meets int2/int4 groups
// with an i8 copy of the query in i16x8.relaxed_dot_i8x16_i7x16_s, 16 codes per instruction (codes
// < 128 keep it deterministic); elsewhere, and for int8, i32x4.dot_i16x8_s multiplies 8 codes
// widened to i16. Both builds give the same bits. Each group's scale and minimum enter once per group. Values: per page, head and
// group the products w·s of softmax weight and token scale are rounded to i16 (one scale ρ per
// head and group) and accumulated against two tokens' codes per dot_i16x8_s in i32 registers.
// core/cache/int_dot.ts mirrors every rounding step here; keep the two in step.
import {
  MAGIC_1P5_2P23,
  MAGIC_2P23,
  U32_000F000F,
  I16_127,
  I16_32767,
  I16_M127,
  I16_M32767,
  U32_03030303,
  U32_0F0F0F0F,
  vconst,
} from "./consts";
import { headerPair } from "./int_group";
import { hsum } from "./lanes";

/** Whether this build has relaxed SIMD (asm/build.ts builds the module with and without it). */
const RELAXED: bool = ASC_FEATURE_RELAXED_SIMD;

/** Whether a format is served here: asymmetric int (kind 0), 2, 4 or 8 bits, groups of 32, token axis. */
// @ts-ignore: decorator
@inline export function intDotFormat(kind: i32, b: i32, G: i32, channel: i32): bool {
  return kind == 0 && (b == 2 || b == 4 || b == 8) && G == 32 && channel == 0;
}

// The code bytes of a group at p: int2 and int4 one load (int2: 8 bytes), int8 the first 16.
// @ts-ignore: decorator
@inline function _codeBytes(p: usize, b: i32): v128 {
  return b == 2 ? v128.load64_zero(p) : v128.load(p);
}

// The first 16 codes of a group whose code bytes start with v: int4 the low nibbles (codes 0, 2,
// …, 30; the query's lane order matches), int2 fields 0 and 1 of the 8 bytes (codes 0, 4, …, 28,
// then 1, 5, …, 29), int8 codes 0–15. mask: 0x0f per byte (int4), 3 (int2).
// @ts-ignore: decorator
@inline function _codesLo(v: v128, b: i32, mask: v128): v128 {
  if (b == 2) {
    return i8x16.shuffle(
      v128.and(v, mask),
      v128.and(i16x8.shr_u(v, 2), mask),
      0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23,
    );
  }
  return b == 4 ? v128.and(v, mask) : v;
}

// The other 16 (the group's codes start at p): int4 the high nibbles (codes 1, 3, …, 31), int2
// fields 2 and 3 (codes 2, 6, …, 30, then 3, 7, …, 31), int8 codes 16–31.
// @ts-ignore: decorator
@inline function _codesHi(v: v128, p: usize, b: i32, mask: v128): v128 {
  if (b == 2) {
    return i8x16.shuffle(
      v128.and(i16x8.shr_u(v, 4), mask),
      v128.and(i16x8.shr_u(v, 6), mask),
      0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23,
    );
  }
  return b == 4 ? v128.and(i16x8.shr_u(v, 4), mask) : v128.load(p, 16);
}

// Code vector k (0–3, i16) of a group whose code bytes start with v at p, in the query's lane
// order: int4 widens the bytes first, so that the low nibbles are one and and the high ones one
// shift (the high byte is zero); int2 and int8 widen _codesLo/_codesHi. (The four-head key loop
// keeps the narrow split: its registers are all taken, and widening first measured no faster.)
// @ts-ignore: decorator
@inline function _codes16(v: v128, p: usize, b: i32, mask: v128, k: i32): v128 {
  if (b == 4) {
    const w = k == 0 || k == 2 ? i16x8.extend_low_i8x16_u(v) : i16x8.extend_high_i8x16_u(v);
    return k < 2 ? v128.and(w, vconst(U32_000F000F)) : i16x8.shr_u(w, 4);
  }
  const c = k < 2 ? _codesLo(v, b, mask) : _codesHi(v, p, b, mask);
  return k == 0 || k == 2 ? i16x8.extend_low_i8x16_u(c) : i16x8.extend_high_i8x16_u(c);
}

// Mask of one code in a byte for _codesLo/_codesHi and the value gathers.
// @ts-ignore: decorator
@inline function _codeMask(b: i32): v128 {
  // from memory: a splat of a literal becomes a v128.const that V8 rebuilds at every use, which
  // cost the relaxed one-head key loop a fifth of its time (consts.ts)
  return vconst(b == 2 ? U32_03030303 : U32_0F0F0F0F);
}



// Headers of n tokens into token-contiguous rows, four tokens at a time (tokens n … n4 − 1 read as
// zero): S[g][t] scales, M[g][t] minima, rows of rowB bytes. One headerPair serves four tokens; the
// key pass used to decode each token's headers beside its codes, which at d = 64 cost more than
// the token's dot products.
// @ts-ignore: decorator
@inline function _headerRows(
  ptr: usize,
  n: i32,
  n4: i32,
  gpt: i32,
  groupBytes: usize,
  tokB: usize,
  S: usize,
  M: usize,
  rowB: usize,
): void {
  for (let t = 0; t < n4; t += 4) {
    for (let g = 0; g < gpt; g++) {
      const p = ptr + <usize>t * tokB + <usize>g * groupBytes;
      let h: v128;
      if (t + 4 <= n) {
        h = v128.load32_zero(p);
        h = i32x4.replace_lane(h, 1, load<i32>(p + tokB));
        h = i32x4.replace_lane(h, 2, load<i32>(p + 2 * tokB));
        h = i32x4.replace_lane(h, 3, load<i32>(p + 3 * tokB));
      } else {
        h = t < n ? v128.load32_zero(p) : i32x4.splat(0);
        if (t + 1 < n) h = i32x4.replace_lane(h, 1, load<i32>(p + tokB));
        if (t + 2 < n) h = i32x4.replace_lane(h, 2, load<i32>(p + 2 * tokB));
      }
      const o = <usize>g * rowB + (<usize>t << 2);
      v128.store(M + o, headerPair(h, S + o));
    }
  }
}

/**
 * Raw scores q_h·k_t (not yet /√d) of n tokens for hq heads into sc (f32 [hq][n]): per token and
 * group the integer sum Σ_{i∈g} q̂_i·code_i (exact in i32), its f32 times s_g added in group order,
 * then the minimum terms Σ_g μ_g·qv_g (in group order) added and the sum scaled by σ_h. qi: hq × d
 * i16 query in roundQuery's lane order; qb: the same as i8 (relaxed build, int2/int4 codes; the
 * four-head loop's relaxed dots take it); qv: hq × gpt4 f32 (Σ_{i∈g} q_i / σ_h, zero past gpt); sig:
 * hq f32; work: intDotScratchBytes of scratch. Two tokens and four heads at a time, so that each
 * loaded query vector serves two tokens (every load costs a bounds check where the runtime does
 * not trap out-of-bounds accesses, as Deno: PAGES.md), and the four heads' sums land in the lanes
 * of one vector; then the remaining heads one at a time.
 */
export function intScores(
  kPtr: usize,
  b: i32,
  n: i32,
  d: i32,
  hq: i32,
  qi: usize,
  qb: usize,
  qv: usize,
  sig: usize,
  sc: usize,
  work: usize,
): void {
  // one copy per width, b a constant inside the loops, which use every vector register. The
  // width is a type argument (sizeof), not a literal argument: three inlined copies that differ
  // only in the value their b local starts with were merged by Binaryen into one body that tests b
  // at run time in the hot loop (int4 keys 7% slower end to end, d = 64, T = 512)
  if (b == 4) _intScores<u16>(kPtr, n, d, hq, qi, qb, qv, sig, sc, work);
  else if (b == 8) _intScores<u32>(kPtr, n, d, hq, qi, qb, qv, sig, sc, work);
  else _intScores<u8>(kPtr, n, d, hq, qi, qb, qv, sig, sc, work);
}

// B: u8, u16 or u32 for int2, int4 or int8 (b = 2·sizeof<B>())
// @ts-ignore: decorator
@inline function _intScores<B>(
  kPtr: usize,
  n: i32,
  d: i32,
  hq: i32,
  qi: usize,
  qb: usize,
  qv: usize,
  sig: usize,
  sc: usize,
  work: usize,
): void {
  const b: i32 = 2 * sizeof<B>();
  const gpt = d >> 5, gpt4 = (gpt + 3) & ~3, n4 = (n + 3) & ~3;
  const groupBytes = <usize>(1 + b) << 2, tokB = <usize>gpt * groupBytes;
  // the four-head loop takes the i8 copy of the query (qb) in relaxed dots against int2/int4
  // codes; the one-head loop, where relaxed dots measured slower, the i16 one (qi) in both builds
  const i8q = RELAXED && b != 8;
  const qB = <usize>d << 1, qvB = <usize>gpt4 << 2, nB = <usize>n << 2, rowB = <usize>n4 << 2;
  const S = work, M = S + <usize>gpt4 * rowB; // as intValues lays them out
  const qvT = M + <usize>gpt4 * rowB; // [gpt][4] f32: qv of four heads, heads in lanes
  _headerRows(kPtr, n, n4, gpt, groupBytes, tokB, S, M, rowB);
  const mask = _codeMask(b);
  let h = 0;
  for (; h + 4 <= hq; h += 4) {
    const qh = i8q ? qb + <usize>h * d : qi + <usize>h * qB;
    for (let g = 0; g < gpt; g++) {
      const o = qv + <usize>h * qvB + (<usize>g << 2);
      let x = v128.load32_zero(o);
      x = f32x4.replace_lane(x, 1, load<f32>(o + qvB));
      x = f32x4.replace_lane(x, 2, load<f32>(o + 2 * qvB));
      v128.store(qvT + (<usize>g << 4), f32x4.replace_lane(x, 3, load<f32>(o + 3 * qvB)));
    }
    const sgv = v128.load(sig + (<usize>h << 2));
    const row = sc + <usize>h * nB;
    for (let t = 0; t < n; t += 2) {
      // an odd n's last token is paired with itself (its neighbour may lie past the run)
      const k0 = kPtr + <usize>t * tokB, k1 = t + 1 < n ? k0 + tokB : k0;
      const st = S + (<usize>t << 2), mt = M + (<usize>t << 2);
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
      for (let g = 0; g < gpt; g++) {
        const p0 = k0 + <usize>g * groupBytes + 4, p1 = k1 + <usize>g * groupBytes + 4;
        const v0 = _codeBytes(p0, b), v1 = _codeBytes(p1, b);
        let r0: v128, r1: v128;
        if (i8q) {
          // 16 codes per relaxed dot: the low and high halves of each token's group, four heads
          const q = qh + (<usize>g << 5);
          const l0 = _codesLo(v0, b, mask), h0 = _codesHi(v0, p0, b, mask);
          const l1 = _codesLo(v1, b, mask), h1 = _codesHi(v1, p1, b, mask);
          let x = v128.load(q), y = v128.load(q, 16);
          const s00 = _dot8(x, y, l0, h0), s01 = _dot8(x, y, l1, h1);
          x = v128.load(q + d);
          y = v128.load(q + d, 16);
          const s10 = _dot8(x, y, l0, h0), s11 = _dot8(x, y, l1, h1);
          x = v128.load(q + 2 * d);
          y = v128.load(q + 2 * d, 16);
          const s20 = _dot8(x, y, l0, h0), s21 = _dot8(x, y, l1, h1);
          x = v128.load(q + 3 * d);
          y = v128.load(q + 3 * d, 16);
          const s30 = _dot8(x, y, l0, h0), s31 = _dot8(x, y, l1, h1);
          r0 = f32x4.convert_i32x4_s(_hsum4s(s00, s10, s20, s30));
          r1 = f32x4.convert_i32x4_s(_hsum4s(s01, s11, s21, s31));
        } else {
          const q = qh + (<usize>g << 6);
          // the four i16 code vectors of each token, one at a time, against four heads' queries
          let c0 = i16x8.extend_low_i8x16_u(_codesLo(v0, b, mask));
          let c1 = i16x8.extend_low_i8x16_u(_codesLo(v1, b, mask));
          let x = v128.load(q);
          let i00 = i32x4.dot_i16x8_s(c0, x), i01 = i32x4.dot_i16x8_s(c1, x);
          x = v128.load(q + qB);
          let i10 = i32x4.dot_i16x8_s(c0, x), i11 = i32x4.dot_i16x8_s(c1, x);
          x = v128.load(q + 2 * qB);
          let i20 = i32x4.dot_i16x8_s(c0, x), i21 = i32x4.dot_i16x8_s(c1, x);
          x = v128.load(q + 3 * qB);
          let i30 = i32x4.dot_i16x8_s(c0, x), i31 = i32x4.dot_i16x8_s(c1, x);
          c0 = i16x8.extend_high_i8x16_u(_codesLo(v0, b, mask));
          c1 = i16x8.extend_high_i8x16_u(_codesLo(v1, b, mask));
          x = v128.load(q, 16);
          i00 = i32x4.add(i00, i32x4.dot_i16x8_s(c0, x));
          i01 = i32x4.add(i01, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + qB, 16);
          i10 = i32x4.add(i10, i32x4.dot_i16x8_s(c0, x));
          i11 = i32x4.add(i11, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + 2 * qB, 16);
          i20 = i32x4.add(i20, i32x4.dot_i16x8_s(c0, x));
          i21 = i32x4.add(i21, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + 3 * qB, 16);
          i30 = i32x4.add(i30, i32x4.dot_i16x8_s(c0, x));
          i31 = i32x4.add(i31, i32x4.dot_i16x8_s(c1, x));
          c0 = i16x8.extend_low_i8x16_u(_codesHi(v0, p0, b, mask));
          c1 = i16x8.extend_low_i8x16_u(_codesHi(v1, p1, b, mask));
          x = v128.load(q, 32);
          i00 = i32x4.add(i00, i32x4.dot_i16x8_s(c0, x));
          i01 = i32x4.add(i01, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + qB, 32);
          i10 = i32x4.add(i10, i32x4.dot_i16x8_s(c0, x));
          i11 = i32x4.add(i11, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + 2 * qB, 32);
          i20 = i32x4.add(i20, i32x4.dot_i16x8_s(c0, x));
          i21 = i32x4.add(i21, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + 3 * qB, 32);
          i30 = i32x4.add(i30, i32x4.dot_i16x8_s(c0, x));
          i31 = i32x4.add(i31, i32x4.dot_i16x8_s(c1, x));
          c0 = i16x8.extend_high_i8x16_u(_codesHi(v0, p0, b, mask));
          c1 = i16x8.extend_high_i8x16_u(_codesHi(v1, p1, b, mask));
          x = v128.load(q, 48);
          i00 = i32x4.add(i00, i32x4.dot_i16x8_s(c0, x));
          i01 = i32x4.add(i01, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + qB, 48);
          i10 = i32x4.add(i10, i32x4.dot_i16x8_s(c0, x));
          i11 = i32x4.add(i11, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + 2 * qB, 48);
          i20 = i32x4.add(i20, i32x4.dot_i16x8_s(c0, x));
          i21 = i32x4.add(i21, i32x4.dot_i16x8_s(c1, x));
          x = v128.load(q + 3 * qB, 48);
          i30 = i32x4.add(i30, i32x4.dot_i16x8_s(c0, x));
          i31 = i32x4.add(i31, i32x4.dot_i16x8_s(c1, x));
          // each head's group sum (exact) in its lane, to f32, times the token's group scale
          r0 = f32x4.convert_i32x4_s(_hsum4i(i00, i10, i20, i30));
          r1 = f32x4.convert_i32x4_s(_hsum4i(i01, i11, i21, i31));
        }
        a0 = f32x4.add(a0, f32x4.mul(r0, v128.load32_splat(st + <usize>g * rowB)));
        a1 = f32x4.add(a1, f32x4.mul(r1, v128.load32_splat(st + <usize>g * rowB + 4)));
      }
      // minimum terms Σ_g μ_g·qv_g in group order, then σ
      let m0 = f32x4.mul(v128.load32_splat(mt), v128.load(qvT));
      let m1 = f32x4.mul(v128.load32_splat(mt + 4), v128.load(qvT));
      for (let g = 1; g < gpt; g++) {
        const qg = v128.load(qvT + (<usize>g << 4)), mg = mt + <usize>g * rowB;
        m0 = f32x4.add(m0, f32x4.mul(v128.load32_splat(mg), qg));
        m1 = f32x4.add(m1, f32x4.mul(v128.load32_splat(mg + 4), qg));
      }
      a0 = f32x4.mul(f32x4.add(a0, m0), sgv);
      a1 = f32x4.mul(f32x4.add(a1, m1), sgv);
      // heads in lanes → the four heads' rows
      const o = row + (<usize>t << 2);
      if (t + 1 < n) {
        const lo = i32x4.shuffle(a0, a1, 0, 4, 1, 5), hi = i32x4.shuffle(a0, a1, 2, 6, 3, 7);
        v128.store64_lane(o, lo, 0);
        v128.store64_lane(o + nB, lo, 1);
        v128.store64_lane(o + 2 * nB, hi, 0);
        v128.store64_lane(o + 3 * nB, hi, 1);
      } else {
        v128.store32_lane(o, a0, 0);
        v128.store32_lane(o + nB, a0, 1);
        v128.store32_lane(o + 2 * nB, a0, 2);
        v128.store32_lane(o + 3 * nB, a0, 3);
      }
    }
  }
  // the remaining heads one at a time, four tokens at a time with the tokens in lanes (the
  // last block's missing tokens repeat its last one and are not stored); same arithmetic per head
  for (; h < hq; h++) {
    const qh = qi + <usize>h * qB, qvh = qv + <usize>h * qvB;
    const sgv = v128.load32_splat(sig + (<usize>h << 2));
    const row = sc + <usize>h * nB;
    for (let t = 0; t < n; t += 4) {
      const k0 = kPtr + <usize>t * tokB, last = <usize>(n - 1 - t) * tokB;
      const k1 = k0 + min(tokB, last), k2 = k0 + min(2 * tokB, last), k3 = k0 + min(3 * tokB, last);
      let a = f32x4.splat(0);
      for (let g = 0; g < gpt; g++) {
        const go = <usize>g * groupBytes + 4, q = qh + (<usize>g << 6);
        const p0 = k0 + go, p1 = k1 + go, p2 = k2 + go, p3 = k3 + go;
        const v0 = _codeBytes(p0, b), v1 = _codeBytes(p1, b);
        const v2 = _codeBytes(p2, b), v3 = _codeBytes(p3, b);
        let x = v128.load(q);
        let i0 = i32x4.dot_i16x8_s(_codes16(v0, p0, b, mask, 0), x);
        let i1 = i32x4.dot_i16x8_s(_codes16(v1, p1, b, mask, 0), x);
        let i2 = i32x4.dot_i16x8_s(_codes16(v2, p2, b, mask, 0), x);
        let i3 = i32x4.dot_i16x8_s(_codes16(v3, p3, b, mask, 0), x);
        x = v128.load(q, 16);
        i0 = i32x4.add(i0, i32x4.dot_i16x8_s(_codes16(v0, p0, b, mask, 1), x));
        i1 = i32x4.add(i1, i32x4.dot_i16x8_s(_codes16(v1, p1, b, mask, 1), x));
        i2 = i32x4.add(i2, i32x4.dot_i16x8_s(_codes16(v2, p2, b, mask, 1), x));
        i3 = i32x4.add(i3, i32x4.dot_i16x8_s(_codes16(v3, p3, b, mask, 1), x));
        x = v128.load(q, 32);
        i0 = i32x4.add(i0, i32x4.dot_i16x8_s(_codes16(v0, p0, b, mask, 2), x));
        i1 = i32x4.add(i1, i32x4.dot_i16x8_s(_codes16(v1, p1, b, mask, 2), x));
        i2 = i32x4.add(i2, i32x4.dot_i16x8_s(_codes16(v2, p2, b, mask, 2), x));
        i3 = i32x4.add(i3, i32x4.dot_i16x8_s(_codes16(v3, p3, b, mask, 2), x));
        x = v128.load(q, 48);
        i0 = i32x4.add(i0, i32x4.dot_i16x8_s(_codes16(v0, p0, b, mask, 3), x));
        i1 = i32x4.add(i1, i32x4.dot_i16x8_s(_codes16(v1, p1, b, mask, 3), x));
        i2 = i32x4.add(i2, i32x4.dot_i16x8_s(_codes16(v2, p2, b, mask, 3), x));
        i3 = i32x4.add(i3, i32x4.dot_i16x8_s(_codes16(v3, p3, b, mask, 3), x));
        // the four tokens' group sums in lanes, times their scales (a row of S)
        const r = f32x4.convert_i32x4_s(_hsum4i(i0, i1, i2, i3));
        a = f32x4.add(a, f32x4.mul(r, v128.load(S + <usize>g * rowB + (<usize>t << 2))));
      }
      let m = f32x4.mul(v128.load(M + (<usize>t << 2)), v128.load32_splat(qvh));
      for (let g = 1; g < gpt; g++) {
        const mg = v128.load(M + <usize>g * rowB + (<usize>t << 2));
        m = f32x4.add(m, f32x4.mul(mg, v128.load32_splat(qvh + (<usize>g << 2))));
      }
      a = f32x4.mul(f32x4.add(a, m), sgv);
      const o = row + (<usize>t << 2);
      if (t + 4 <= n) {
        v128.store(o, a);
      } else {
        v128.store32_lane(o, a, 0);
        if (t + 1 < n) v128.store32_lane(o, a, 1, 4);
        if (t + 2 < n) v128.store32_lane(o, a, 2, 8);
      }
    }
  }
}

// [Σ lanes of a, of b, of c, of d] in i32 (exact: the order of the additions does not matter).
// @ts-ignore: decorator
@inline function _hsum4i(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i32x4.add(i32x4.shuffle(a, b, 0, 2, 4, 6), i32x4.shuffle(a, b, 1, 3, 5, 7));
  const cd = i32x4.add(i32x4.shuffle(c, d, 0, 2, 4, 6), i32x4.shuffle(c, d, 1, 3, 5, 7));
  return i32x4.add(i32x4.shuffle(ab, cd, 0, 2, 4, 6), i32x4.shuffle(ab, cd, 1, 3, 5, 7));
}

// Σ of 32 products of an i8 query group (x: the 16 lanes of the low codes, y: of the high ones)
// and a group's codes lo, hi (< 128, so the relaxed dot is exact on every engine), as eight i16
// lanes of at most 2·2·127·15 = 7,620 in magnitude (int4; int2 less).
// @ts-ignore: decorator
@inline function _dot8(x: v128, y: v128, lo: v128, hi: v128): v128 {
  return i16x8.add(i16x8.relaxed_dot_i8x16_i7x16_s(x, lo), i16x8.relaxed_dot_i8x16_i7x16_s(y, hi));
}

// _hsum4i for four _dot8 results: two rounds of pair sums stay in i16 (at most 4·7,620 = 30,480),
// the last pair is widened to i32 by extadd: [Σ a, Σ b, Σ c, Σ d], exact.
// @ts-ignore: decorator
@inline function _hsum4s(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i16x8.add(i32x4.shuffle(a, b, 0, 2, 4, 6), i32x4.shuffle(a, b, 1, 3, 5, 7));
  const cd = i16x8.add(i32x4.shuffle(c, d, 0, 2, 4, 6), i32x4.shuffle(c, d, 1, 3, 5, 7));
  return i32x4.extadd_pairwise_i16x8_s(
    i16x8.add(i32x4.shuffle(ab, cd, 0, 2, 4, 6), i32x4.shuffle(ab, cd, 1, 3, 5, 7)),
  );
}

/** Bytes of scratch intScores and intValues need beyond attendPage's own. */
export function intDotScratchBytes(d: i32, cap: i32, hq: i32): i32 {
  const gpt4 = ((d >> 5) + 3) & ~3, cap8 = (cap + 7) & ~7;
  // per group S, M rows of cap8 f32 (intScores, then intValues); per head and group ρ, Σw·μ and
  // cap8/2 packed weight pairs; four rows of u
  return 8 * gpt4 * cap8 + 8 * hq * gpt4 + 2 * hq * gpt4 * cap8 + 16 * cap8 + 64;
}

/**
 * acc_h (f32 [hq][d], overwritten) = Σ_t w_{h,t}·v_t over n tokens of a token-axis int page, with
 * w·s rounded to i16 per head and group. w: f32 [hq][n] softmax weights in [0, 1]; n ≤ cap ≤ 256,
 * cap a multiple of 4; work: intDotScratchBytes of scratch.
 */
export function intValues(
  vPtr: usize,
  b: i32,
  n: i32,
  cap: i32,
  d: i32,
  hq: i32,
  w: usize,
  acc: usize,
  work: usize,
): void {
  // one copy per width, b a constant inside the loops (a type argument: see intScores). Against
  // one copy that reads b, int4 and int8 measured 1–2% faster (4% with one query head per KV
  // head), int2 the same
  if (b == 4) _intValues<u16>(vPtr, n, cap, d, hq, w, acc, work);
  else if (b == 8) _intValues<u32>(vPtr, n, cap, d, hq, w, acc, work);
  else _intValues<u8>(vPtr, n, cap, d, hq, w, acc, work);
}

// B: u8, u16 or u32 for int2, int4 or int8 (b = 2·sizeof<B>())
// @ts-ignore: decorator
@inline function _intValues<B>(
  vPtr: usize,
  n: i32,
  cap: i32,
  d: i32,
  hq: i32,
  w: usize,
  acc: usize,
  work: usize,
): void {
  const b: i32 = 2 * sizeof<B>();
  const gpt = d >> 5, gpt4 = (gpt + 3) & ~3, cap8 = (cap + 7) & ~7;
  const groupBytes = <usize>(1 + b) << 2, tokB = <usize>gpt * groupBytes;
  const nB = <usize>n << 2, rowB = <usize>cap8 << 2, pairB = <usize>cap8 << 1;
  const S = work; // [gpt4][cap8] token scales, zero past n
  const M = S + <usize>gpt4 * rowB; // [gpt4][cap8] token minima, zero past n
  const rho = M + <usize>gpt4 * rowB; // [hq][gpt4]
  const mw = rho + (<usize>(hq * gpt4) << 2); // [hq][gpt4]
  const pairs = mw + (<usize>(hq * gpt4) << 2); // [hq][gpt4][cap8/2] u32: û_t | û_{t+1} << 16
  const ubuf = pairs + <usize>(hq * gpt4) * pairB; // [4][cap8] f32: u_t of four heads, one group

  // 1. headers into token-contiguous rows (tokens ≥ n read as zero)
  _headerRows(vPtr, n, cap8, gpt, groupBytes, tokB, S, M, rowB);
  // 2. per head and group: u_t = w_t·s_t (kept in ubuf), ρ = max u / 32767 (u ≥ 0, so the max
  //    compares the f32 bits as integers), Σ_t w_t·μ_t (lane t mod 4, lanes in fixed order), and
  //    û_t = nearest(u_t·(32767 / max u)) by adding 2^23, whose low 16 bits are then û_t ≤ 32767
  const magic = vconst(MAGIC_2P23);
  let h = 0;
  for (; h + 4 <= hq; h += 4) {
    const w0 = w + <usize>h * nB;
    for (let g = 0; g < gpt; g++) {
      const sRow = S + <usize>g * rowB, mRow = M + <usize>g * rowB;
      let x0 = i32x4.splat(0), x1 = i32x4.splat(0), x2 = i32x4.splat(0), x3 = i32x4.splat(0);
      let m0 = f32x4.splat(0), m1 = f32x4.splat(0), m2 = f32x4.splat(0), m3 = f32x4.splat(0);
      for (let t = 0; t < cap8; t += 4) {
        const o = <usize>t << 2;
        const sv = v128.load(sRow + o), mv = v128.load(mRow + o);
        let wt = _weights4(w0, t, n);
        let u = f32x4.mul(wt, sv);
        v128.store(ubuf + o, u);
        x0 = i32x4.max_s(x0, u);
        m0 = f32x4.add(m0, f32x4.mul(wt, mv));
        wt = _weights4(w0 + nB, t, n);
        u = f32x4.mul(wt, sv);
        v128.store(ubuf + rowB + o, u);
        x1 = i32x4.max_s(x1, u);
        m1 = f32x4.add(m1, f32x4.mul(wt, mv));
        wt = _weights4(w0 + 2 * nB, t, n);
        u = f32x4.mul(wt, sv);
        v128.store(ubuf + 2 * rowB + o, u);
        x2 = i32x4.max_s(x2, u);
        m2 = f32x4.add(m2, f32x4.mul(wt, mv));
        wt = _weights4(w0 + 3 * nB, t, n);
        u = f32x4.mul(wt, sv);
        v128.store(ubuf + 3 * rowB + o, u);
        x3 = i32x4.max_s(x3, u);
        m3 = f32x4.add(m3, f32x4.mul(wt, mv));
      }
      _pack(h * gpt4 + g, x0, m0, ubuf, cap8, rho, mw, pairs, pairB, magic);
      _pack((h + 1) * gpt4 + g, x1, m1, ubuf + rowB, cap8, rho, mw, pairs, pairB, magic);
      _pack((h + 2) * gpt4 + g, x2, m2, ubuf + 2 * rowB, cap8, rho, mw, pairs, pairB, magic);
      _pack((h + 3) * gpt4 + g, x3, m3, ubuf + 3 * rowB, cap8, rho, mw, pairs, pairB, magic);
    }
  }
  for (; h < hq; h++) {
    const wh = w + <usize>h * nB;
    for (let g = 0; g < gpt; g++) {
      const sRow = S + <usize>g * rowB, mRow = M + <usize>g * rowB;
      let x0 = i32x4.splat(0), m0 = f32x4.splat(0);
      for (let t = 0; t < cap8; t += 4) {
        const o = <usize>t << 2;
        const wt = _weights4(wh, t, n);
        const u = f32x4.mul(wt, v128.load(sRow + o));
        v128.store(ubuf + o, u);
        x0 = i32x4.max_s(x0, u);
        m0 = f32x4.add(m0, f32x4.mul(wt, v128.load(mRow + o)));
      }
      _pack(h * gpt4 + g, x0, m0, ubuf, cap8, rho, mw, pairs, pairB, magic);
    }
  }
  // 3. integer accumulation: 8 channels × 4 heads in registers, four tokens per step, two per
  //    dot_i16x8_s (tokens past n have weight 0 and lie inside the page: cap is a multiple of 4)
  const mask = _codeMask(b);
  const hB = <usize>gpt4 * pairB;
  for (h = 0; h + 4 <= hq; h += 4) {
    for (let g = 0; g < gpt; g++) {
      const pr = pairs + <usize>(h * gpt4 + g) * pairB;
      for (let cb = 0; cb < 4; cb++) {
        let x0 = i32x4.splat(0), y0 = i32x4.splat(0), x1 = i32x4.splat(0), y1 = i32x4.splat(0);
        let x2 = i32x4.splat(0), y2 = i32x4.splat(0), x3 = i32x4.splat(0), y3 = i32x4.splat(0);
        let p = vPtr + <usize>g * groupBytes + 4 + <usize>(cb * b); // 8 channels: b bytes
        let pt = pr;
        for (let t = 0; t < n; t += 4) {
          let lo: v128, hi: v128, lo2: v128, hi2: v128;
          if (b == 4) {
            // int4: even channels' codes (low nibbles) of tokens 0, 1 then 2, 3, and the odd ones
            // (high nibbles): x, y sum channels 0, 2, 4, 6 and 1, 3, 5, 7 (_finish reorders).
            // The one-head loop below repeats this block: a shared helper would have to return
            // four vectors through memory, which costs more than the block (AssemblyScript has no
            // multiple returns)
            // four tokens' code bytes widened to i16 first: the low nibble is then one and, the
            // high one a shift (the high byte is zero)
            const w = _pairedTokens4(p, tokB);
            const w0 = i16x8.extend_low_i8x16_u(w), w1 = i16x8.extend_high_i8x16_u(w);
            lo = v128.and(w0, vconst(U32_000F000F));
            lo2 = v128.and(w1, vconst(U32_000F000F));
            hi = i16x8.shr_u(w0, 4);
            hi2 = i16x8.shr_u(w1, 4);
          } else {
            let c: v128, e: v128;
            if (b == 2) {
              // fields 0–3 of byte 0 are channels 0–3, of byte 1 channels 4–7 (bytes 2t, 2t + 1)
              const v = _gather4x2(p, tokB);
              const f01 = _codesLo(v, 2, mask), f23 = _codesHi(v, p, 2, mask);
              c = i8x16.shuffle(f01, f23, 0, 2, 8, 10, 16, 18, 24, 26, 1, 3, 9, 11, 17, 19, 25, 27);
              e = i8x16.shuffle(f01, f23, 4, 6, 12, 14, 20, 22, 28, 30, 5, 7, 13, 15, 21, 23, 29, 31);
            } else {
              const v = _gather2x8(p, tokB), w = _gather2x8(p + 2 * tokB, tokB);
              c = i8x16.shuffle(v, v, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
              e = i8x16.shuffle(w, w, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
            }
            lo = i16x8.extend_low_i8x16_u(c);
            hi = i16x8.extend_high_i8x16_u(c);
            lo2 = i16x8.extend_low_i8x16_u(e);
            hi2 = i16x8.extend_high_i8x16_u(e);
          }
          let u = v128.load32_splat(pt), u2 = v128.load32_splat(pt + 4);
          x0 = i32x4.add(x0, i32x4.add(i32x4.dot_i16x8_s(lo, u), i32x4.dot_i16x8_s(lo2, u2)));
          y0 = i32x4.add(y0, i32x4.add(i32x4.dot_i16x8_s(hi, u), i32x4.dot_i16x8_s(hi2, u2)));
          u = v128.load32_splat(pt + hB);
          u2 = v128.load32_splat(pt + hB + 4);
          x1 = i32x4.add(x1, i32x4.add(i32x4.dot_i16x8_s(lo, u), i32x4.dot_i16x8_s(lo2, u2)));
          y1 = i32x4.add(y1, i32x4.add(i32x4.dot_i16x8_s(hi, u), i32x4.dot_i16x8_s(hi2, u2)));
          u = v128.load32_splat(pt + 2 * hB);
          u2 = v128.load32_splat(pt + 2 * hB + 4);
          x2 = i32x4.add(x2, i32x4.add(i32x4.dot_i16x8_s(lo, u), i32x4.dot_i16x8_s(lo2, u2)));
          y2 = i32x4.add(y2, i32x4.add(i32x4.dot_i16x8_s(hi, u), i32x4.dot_i16x8_s(hi2, u2)));
          u = v128.load32_splat(pt + 3 * hB);
          u2 = v128.load32_splat(pt + 3 * hB + 4);
          x3 = i32x4.add(x3, i32x4.add(i32x4.dot_i16x8_s(lo, u), i32x4.dot_i16x8_s(lo2, u2)));
          y3 = i32x4.add(y3, i32x4.add(i32x4.dot_i16x8_s(hi, u), i32x4.dot_i16x8_s(hi2, u2)));
          p += 4 * tokB;
          pt += 8;
        }
        const c0 = (g << 5) + (cb << 3);
        _finish(acc, h, d, c0, rho, mw, gpt4, g, b, x0, y0);
        _finish(acc, h + 1, d, c0, rho, mw, gpt4, g, b, x1, y1);
        _finish(acc, h + 2, d, c0, rho, mw, gpt4, g, b, x2, y2);
        _finish(acc, h + 3, d, c0, rho, mw, gpt4, g, b, x3, y3);
      }
    }
  }
  for (; h < hq; h++) {
    for (let g = 0; g < gpt; g++) {
      const pr = pairs + <usize>(h * gpt4 + g) * pairB;
      for (let cb = 0; cb < 4; cb++) {
        let x0 = i32x4.splat(0), y0 = i32x4.splat(0);
        let p = vPtr + <usize>g * groupBytes + 4 + <usize>(cb * b); // 8 channels: b bytes
        let pt = pr;
        for (let t = 0; t < n; t += 4) {
          let lo: v128, hi: v128, lo2: v128, hi2: v128;
          if (b == 4) {
            const w = _pairedTokens4(p, tokB);
            const w0 = i16x8.extend_low_i8x16_u(w), w1 = i16x8.extend_high_i8x16_u(w);
            lo = v128.and(w0, vconst(U32_000F000F));
            lo2 = v128.and(w1, vconst(U32_000F000F));
            hi = i16x8.shr_u(w0, 4);
            hi2 = i16x8.shr_u(w1, 4);
          } else {
            let c: v128, e: v128;
            if (b == 2) {
              const v = _gather4x2(p, tokB);
              const f01 = _codesLo(v, 2, mask), f23 = _codesHi(v, p, 2, mask);
              c = i8x16.shuffle(f01, f23, 0, 2, 8, 10, 16, 18, 24, 26, 1, 3, 9, 11, 17, 19, 25, 27);
              e = i8x16.shuffle(f01, f23, 4, 6, 12, 14, 20, 22, 28, 30, 5, 7, 13, 15, 21, 23, 29, 31);
            } else {
              const v = _gather2x8(p, tokB), w = _gather2x8(p + 2 * tokB, tokB);
              c = i8x16.shuffle(v, v, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
              e = i8x16.shuffle(w, w, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
            }
            lo = i16x8.extend_low_i8x16_u(c);
            hi = i16x8.extend_high_i8x16_u(c);
            lo2 = i16x8.extend_low_i8x16_u(e);
            hi2 = i16x8.extend_high_i8x16_u(e);
          }
          const u = v128.load32_splat(pt), u2 = v128.load32_splat(pt + 4);
          x0 = i32x4.add(x0, i32x4.add(i32x4.dot_i16x8_s(lo, u), i32x4.dot_i16x8_s(lo2, u2)));
          y0 = i32x4.add(y0, i32x4.add(i32x4.dot_i16x8_s(hi, u), i32x4.dot_i16x8_s(hi2, u2)));
          p += 4 * tokB;
          pt += 8;
        }
        _finish(acc, h, d, (g << 5) + (cb << 3), rho, mw, gpt4, g, b, x0, y0);
      }
    }
  }
}

// One (head, group) slot: ρ = max u / 32767 (mx: lane maxima of the f32 bits of u ≥ 0 or |u|),
// Σ from the lane sums sm, and `count` packed pairs of û = nearest(u·(32767 / max)) (u + magic: low
// 16 bits; magic 2^23 for u ≥ 0, 1.5·2^23 for signed u).
// @ts-ignore: decorator
@inline function _pack(
  slot: i32,
  mx: v128,
  sm: v128,
  u: usize,
  count: i32,
  rho: usize,
  sums: usize,
  pairs: usize,
  pairB: usize,
  magic: v128,
): void {
  const U = reinterpret<f32>(
    max(
      max(i32x4.extract_lane(mx, 0), i32x4.extract_lane(mx, 1)),
      max(i32x4.extract_lane(mx, 2), i32x4.extract_lane(mx, 3)),
    ),
  );
  store<f32>(rho + (<usize>slot << 2), U / <f32>32767);
  store<f32>(sums + (<usize>slot << 2), hsum(sm));
  const inv = f32x4.splat(U > 0 ? <f32>32767 / U : 0);
  const pRow = pairs + <usize>slot * pairB;
  for (let t = 0; t < count; t += 8) {
    const o = <usize>t << 2;
    const r0 = f32x4.add(f32x4.mul(v128.load(u + o), inv), magic);
    const r1 = f32x4.add(f32x4.mul(v128.load(u + o, 16), inv), magic);
    v128.store(
      pRow + (<usize>t << 1),
      i8x16.shuffle(r0, r1, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29),
    );
  }
}

// Two bytes of each of four tokens tokB apart (int2: eight codes of a channel block).
// @ts-ignore: decorator
@inline function _gather4x2(p: usize, tokB: usize): v128 {
  let v = v128.load16_lane(p, i16x8.splat(0), 0);
  v = v128.load16_lane(p + tokB, v, 1);
  v = v128.load16_lane(p + 2 * tokB, v, 2);
  return v128.load16_lane(p + 3 * tokB, v, 3);
}

// Four bytes of each of four tokens tokB apart (int4: eight codes of a channel block), paired by
// token: t0 b0, t1 b0, t0 b1, t1 b1, …, then the same for t2, t3. Its low nibbles are then channels
// 0, 2, 4, 6 and the high ones 1, 3, 5, 7, each as (t0, t1) pairs, then (t2, t3): ready for
// dot_i16x8_s with û pairs. Tokens 0, 2 and 1, 3 are loaded into two vectors whose low bytes one
// interleave pairs (punpcklbw; a general byte shuffle costs V8 a rebuilt pshufb mask each time).
// @ts-ignore: decorator
@inline function _pairedTokens4(p: usize, tokB: usize): v128 {
  const e = i32x4.replace_lane(v128.load32_zero(p), 1, load<i32>(p + 2 * tokB));
  const o = i32x4.replace_lane(v128.load32_zero(p + tokB), 1, load<i32>(p + 3 * tokB));
  return i8x16.shuffle(e, o, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
}

// Eight bytes of each of two tokens tokB apart (int8: eight codes of a channel block).
// @ts-ignore: decorator
@inline function _gather2x8(p: usize, tokB: usize): v128 {
  return i64x2.replace_lane(v128.load64_zero(p), 1, load<i64>(p + tokB));
}

// Weights w[t … t+3] of one head, zero at t ≥ n.
// @ts-ignore: decorator
@inline function _weights4(wh: usize, t: i32, n: i32): v128 {
  if (t + 4 <= n) return v128.load(wh + (<usize>t << 2));
  let v = f32x4.splat(0);
  if (t < n) v = f32x4.replace_lane(v, 0, load<f32>(wh + (<usize>t << 2)));
  if (t + 1 < n) v = f32x4.replace_lane(v, 1, load<f32>(wh + (<usize>t << 2), 4));
  if (t + 2 < n) v = f32x4.replace_lane(v, 2, load<f32>(wh + (<usize>t << 2), 8));
  return v;
}

// acc_h[c0 … c0+7] = f32(Σ û·code)·ρ + Σw·μ for one head's 8 channels.
// @ts-ignore: decorator
@inline function _finish(
  acc: usize,
  h: i32,
  d: i32,
  c0: i32,
  rho: usize,
  mw: usize,
  gpt4: i32,
  g: i32,
  b: i32,
  x: v128,
  y: v128,
): void {
  if (b == 4) {
    // int4 sums come as channels 0, 2, 4, 6 (x) and 1, 3, 5, 7 (y): back into order
    const even = x;
    x = i32x4.shuffle(even, y, 0, 4, 1, 5);
    y = i32x4.shuffle(even, y, 2, 6, 3, 7);
  }
  const hg = <usize>(h * gpt4 + g) << 2;
  const r = v128.load32_splat(rho + hg), m = v128.load32_splat(mw + hg);
  const a = acc + (<usize>(h * d + c0) << 2);
  v128.store(a, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(x), r), m));
  v128.store(a, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(y), r), m), 16);
}

/** Bytes of the integer query block that follows the f32 query (see intQuery). */
export function intQueryBytes(d: i32, hq: i32): i32 {
  return 8 * hq * d + 8 * hq * (((d >> 5) + 3) & ~3) + 8 * hq;
}

/**
 * Rounds hq query heads (f32 at q, hq × d, d a multiple of 32) for intScores into the block at
 * q + 4·hq·d, hq × d i16 slots each: qi4, in int4 lane order (per group of 32: even codes 0–14,
 * 16–30, then odd 1–15, 17–31); qi8, natural order; qi2, in int2 order (codes 0, 4, …, 28, then 1,
 * 5, …, 29, 2, 6, …, 30, 3, 7, …, 31); then qv16 (hq × gpt4 f32), σ16 (hq f32), qv8, σ8; then
 * qb4 and qb2, hq × d bytes each: the int4 and int2 orders as i8 (relaxed-SIMD build only). int8
 * order: σ16 = f32(max|q_h| / 32767); int4 and int2 orders: σ8 = f32(max|q_h| / 127). q̂ =
 * nearest(f32(q/σ)), qv = Σ_{i∈g} q_i in f64, / σ, to f32 (zero past gpt). A zero head gets σ = 0
 * and q̂ = qv = 0.
 */
export function intQuery(q: usize, hq: i32, d: i32): void {
  // the block is read only where d is a multiple of 32 (attendPage's intShape); the loops below
  // step by 8 and 32 and would read past a head of any other d
  if (d & 31) return;
  const gpt = d >> 5, gpt4 = (gpt + 3) & ~3;
  const qi4 = q + (<usize>(hq * d) << 2), qi8 = qi4 + (<usize>(hq * d) << 1);
  const qi2 = qi8 + (<usize>(hq * d) << 1);
  const qv16 = qi2 + (<usize>(hq * d) << 1), sig16 = qv16 + (<usize>(hq * gpt4) << 2);
  const qv8 = sig16 + (<usize>hq << 2), sig8 = qv8 + (<usize>(hq * gpt4) << 2);
  const qb4 = sig8 + (<usize>hq << 2), qb2 = qb4 + <usize>(hq * d);
  memory.fill(qi4, 0, <usize>(hq * d) * 6); // every order: a zero head stays zero
  if (RELAXED) memory.fill(qb4, 0, <usize>(hq * d) << 1);
  memory.fill(qv16, 0, (<usize>(hq * gpt4) << 3) + (<usize>hq << 2));
  for (let h = 0; h < hq; h++) {
    const qh = q + (<usize>(h * d) << 2);
    // two chains of pmax (maxps: the query is finite, attend checks it; max over |q| in any order)
    let mv = f32x4.splat(0), mw = f32x4.splat(0);
    for (let i = 0; i < d; i += 8) {
      mv = f32x4.pmax(mv, f32x4.abs(v128.load(qh + (<usize>i << 2))));
      mw = f32x4.pmax(mw, f32x4.abs(v128.load(qh + (<usize>i << 2), 16)));
    }
    mv = f32x4.pmax(mv, mw);
    const mx = max(
      max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)),
      max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)),
    );
    const s16: f32 = mx / <f32>32767, s8: f32 = mx / <f32>127;
    store<f32>(sig16 + (<usize>h << 2), s16);
    store<f32>(sig8 + (<usize>h << 2), s8);
    for (let g = 0; g < gpt; g++) {
      const x = qh + (<usize>g << 7);
      const sum = _groupSum(x);
      const at = <usize>(h * gpt4 + g) << 2;
      if (s16 > 0) {
        const o8 = qi8 + (<usize>(h * d + (g << 5)) << 1), sv = f32x4.splat(s16);
        const lo = vconst(I16_M32767), hi = vconst(I16_32767);
        v128.store(o8, _round8(x, sv, lo, hi));
        v128.store(o8, _round8(x + 32, sv, lo, hi), 16);
        v128.store(o8, _round8(x + 64, sv, lo, hi), 32);
        v128.store(o8, _round8(x + 96, sv, lo, hi), 48);
        store<f32>(qv16 + at, <f32>(sum / <f64>s16));
      }
      if (!(s8 > 0)) continue;
      store<f32>(qv8 + at, <f32>(sum / <f64>s8));
      const sv = f32x4.splat(s8);
      const lo = vconst(I16_M127), hi = vconst(I16_127);
      const n0 = _round8(x, sv, lo, hi), n1 = _round8(x + 32, sv, lo, hi);
      const n2 = _round8(x + 64, sv, lo, hi), n3 = _round8(x + 96, sv, lo, hi);
      // int4 order: even codes 0–14, 16–30, then odd 1–15, 17–31
      _storeQuery(
        qi4, qb4, h, d, g,
        i8x16.shuffle(n0, n1, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29),
        i8x16.shuffle(n2, n3, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29),
        i8x16.shuffle(n0, n1, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31),
        i8x16.shuffle(n2, n3, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31),
      );
      // int2 order: codes 4k, then 4k + 1, 4k + 2, 4k + 3 (k = 0 … 7)
      const a01 = i16x8.shuffle(n0, n1, 0, 4, 8, 12, 1, 5, 9, 13);
      const a23 = i16x8.shuffle(n2, n3, 0, 4, 8, 12, 1, 5, 9, 13);
      const b01 = i16x8.shuffle(n0, n1, 2, 6, 10, 14, 3, 7, 11, 15);
      const b23 = i16x8.shuffle(n2, n3, 2, 6, 10, 14, 3, 7, 11, 15);
      _storeQuery(
        qi2, qb2, h, d, g,
        i16x8.shuffle(a01, a23, 0, 1, 2, 3, 8, 9, 10, 11),
        i16x8.shuffle(a01, a23, 4, 5, 6, 7, 12, 13, 14, 15),
        i16x8.shuffle(b01, b23, 0, 1, 2, 3, 8, 9, 10, 11),
        i16x8.shuffle(b01, b23, 4, 5, 6, 7, 12, 13, 14, 15),
      );
    }
  }
}

// One group's 32 rounded query elements (|q̂| ≤ 127, four i16 vectors in lane order) into the i16
// slot at base and, in the relaxed build, as i8 into the slot at bytes (d bytes a head), where the
// four-head key loop takes them in relaxed dots.
// @ts-ignore: decorator
@inline function _storeQuery(
  base: usize,
  bytes: usize,
  h: i32,
  d: i32,
  g: i32,
  a: v128,
  b: v128,
  c: v128,
  e: v128,
): void {
  const o = base + (<usize>(h * d + (g << 5)) << 1);
  v128.store(o, a);
  v128.store(o, b, 16);
  v128.store(o, c, 32);
  v128.store(o, e, 48);
  if (RELAXED) {
    const o8 = bytes + <usize>(h * d + (g << 5));
    v128.store(o8, i8x16.narrow_i16x8_s(a, b));
    v128.store(o8, i8x16.narrow_i16x8_s(c, e), 16);
  }
}

// Σ of the 32 floats at x in f64, in core/cache/int_dot.ts groupSum's order: eight chains (element
// j into chain j mod 8, two chains per f64x2), then chains k, k + 2, k + 4, k + 6 pairwise and the
// two lanes. One chain of 32 dependent adds had cost intQuery most of its time.
// @ts-ignore: decorator
@inline function _groupSum(x: usize): f64 {
  let a = f64x2.splat(0), b = f64x2.splat(0), c = f64x2.splat(0), e = f64x2.splat(0);
  for (let j = 0; j < 32; j += 8) {
    const lo = v128.load(x + (<usize>j << 2)), hi = v128.load(x + (<usize>j << 2), 16);
    a = f64x2.add(a, f64x2.promote_low_f32x4(lo));
    b = f64x2.add(b, f64x2.promote_low_f32x4(i64x2.shuffle(lo, lo, 1, 0)));
    c = f64x2.add(c, f64x2.promote_low_f32x4(hi));
    e = f64x2.add(e, f64x2.promote_low_f32x4(i64x2.shuffle(hi, hi, 1, 0)));
  }
  const s = f64x2.add(f64x2.add(a, b), f64x2.add(c, e));
  return f64x2.extract_lane(s, 0) + f64x2.extract_lane(s, 1);
}

// q̂ = nearest(f32(q/σ)) of 8 floats at x, as i16 clamped to [lo, hi] (±limit: |q/σ| ≤ limit but
// where σ is subnormal, whose few bits let q/σ exceed it; core/cache/int_dot.ts clamps alike).
// @ts-ignore: decorator
@inline function _round8(x: usize, sv: v128, lo: v128, hi: v128): v128 {
  const a = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.div(v128.load(x), sv)));
  const b = i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.div(v128.load(x, 16), sv)));
  return i16x8.min_s(i16x8.max_s(i16x8.narrow_i32x4_s(a, b), lo), hi);
}

/** Bytes of scratch intScoresChannel needs (beyond attendPage's and intDotScratchBytes). */
export function intChannelScratchBytes(d: i32, cap: i32, hq: i32): i32 {
  const groups = cap >> 5;
  // per token group S, M rows of d f32; per head and group ρ and Σq·μ; d/2 packed û pairs; one
  // row of u
  return 8 * groups * d + 8 * hq * groups + 2 * hq * groups * d + 4 * d + 64;
}

/**
 * Raw scores q_h·k_t (not yet /√d) of n tokens (a multiple of 32) for hq heads into sc (f32
 * [hq][n]) from channel-axis int4/int8 g32 keys (channel-major, cap/32 groups per channel). Per head
 * and token group j the products u_c = q_c·s_{c,j} are rounded to i16 with ρ = max|u| / 32767, two
 * channels meet in each dot_i16x8_s, and score_t = f32(Σ_c û_c·code_{c,t})·ρ + Σ_c q_c·μ_{c,j}
 * (lane c mod 4, lanes in fixed order). d ≤ 256 keeps Σ û·code inside i32.
 */
export function intScoresChannel(
  kPtr: usize,
  b: i32,
  n: i32,
  cap: i32,
  d: i32,
  hq: i32,
  q: usize,
  sc: usize,
  work: usize,
): void {
  // one copy per width, b a constant in the loops (a type argument: see intScores)
  if (b == 4) _intScoresChannel<u16>(kPtr, n, cap, d, hq, q, sc, work);
  else _intScoresChannel<u32>(kPtr, n, cap, d, hq, q, sc, work);
}

// B: u16 or u32 for int4 or int8 (b = 2·sizeof<B>())
// @ts-ignore: decorator
@inline function _intScoresChannel<B>(
  kPtr: usize,
  n: i32,
  cap: i32,
  d: i32,
  hq: i32,
  q: usize,
  sc: usize,
  work: usize,
): void {
  const b: i32 = 2 * sizeof<B>();
  const groups = n >> 5, perChannel = cap >> 5;
  const groupBytes = <usize>(1 + b) << 2, chanB = <usize>perChannel * groupBytes;
  const dB = <usize>d << 2, nB = <usize>n << 2, pairB = <usize>d << 1;
  const S = work; // [groups][d] scales
  const M = S + <usize>groups * dB; // [groups][d] minima
  const rho = M + <usize>groups * dB; // [hq][groups]
  const mt = rho + (<usize>(hq * groups) << 2); // [hq][groups]
  const pairs = mt + (<usize>(hq * groups) << 2); // [hq][groups][d/2] u32: û_c | û_{c+1} << 16
  const ubuf = pairs + <usize>(hq * groups) * pairB; // [d] f32: u of one head and group
  // 1. headers into channel-contiguous rows, four channels at a time
  for (let j = 0; j < groups; j++) {
    for (let c = 0; c < d; c += 4) {
      const p = kPtr + <usize>c * chanB + <usize>j * groupBytes;
      let h = v128.load32_zero(p);
      h = i32x4.replace_lane(h, 1, load<i32>(p + chanB));
      h = i32x4.replace_lane(h, 2, load<i32>(p + 2 * chanB));
      h = i32x4.replace_lane(h, 3, load<i32>(p + 3 * chanB));
      const o = <usize>j * dB + (<usize>c << 2);
      v128.store(M + o, headerPair(h, S + o));
    }
  }
  // 2. per head and group: u = q·s, ρ = max|u| / 32767 (|u| ≥ 0: the max compares bits as
  //    integers), û = nearest(u·(32767 / max|u|)) by adding 1.5·2^23 (low 16 bits: û as i16),
  //    Σ q·μ in lanes c mod 4
  const magic = vconst(MAGIC_1P5_2P23);
  for (let h = 0; h < hq; h++) {
    const qh = q + <usize>h * dB;
    for (let j = 0; j < groups; j++) {
      let mx = i32x4.splat(0), sm = f32x4.splat(0);
      for (let c = 0; c < d; c += 4) {
        const o = <usize>c << 2, qc = v128.load(qh + o);
        const u = f32x4.mul(qc, v128.load(S + <usize>j * dB + o));
        v128.store(ubuf + o, u);
        mx = i32x4.max_s(mx, f32x4.abs(u));
        sm = f32x4.add(sm, f32x4.mul(qc, v128.load(M + <usize>j * dB + o)));
      }
      _pack(h * groups + j, mx, sm, ubuf, d, rho, mt, pairs, pairB, magic);
    }
  }
  // 3. per pair of heads, group and half group (16 tokens): Σ_c û_c·code_{c,t} over channel pairs,
  //    each pair's codes decoded once for both heads (the last head of an odd count alone)
  for (let h = 0; h < hq; h += 2) {
    for (let j = 0; j < groups; j++) {
      const pr = pairs + <usize>(h * groups + j) * pairB;
      for (let half = 0; half < 2; half++) {
        // the pair's loop and the lone last head's as their own copies (no test per channel pair)
        if (h + 1 < hq) {
          const pr2 = pr + <usize>groups * pairB;
          _channelHalf<B, HeadPair>(
            kPtr, chanB, groupBytes, pr, pr2, d, h, j, half, sc, nB, rho, mt, groups,
          );
        } else {
          _channelHalf<B, OneHead>(
            kPtr, chanB, groupBytes, pr, pr, d, h, j, half, sc, nB, rho, mt, groups,
          );
        }
      }
    }
  }
}

// Whether _channelHalf scores heads h and h + 1 (HeadPair) or h alone (OneHead).
class HeadPair {}
class OneHead {}

// Scores of half `half` (16 tokens) of token group j for head h (and h + 1 when H is HeadPair,
// its packed products at pr2): Σ_c û_c·code_{c,t} over channel pairs, each pair's codes decoded
// once for both heads. int4: a0..a3 = tokens (0,2,4,6), (8,…,14), (1,3,5,7), (9,…,15) of the
// half; int8: tokens 0–3, 4–7, 8–11, 12–15; b0..b3 the same for head h + 1.
// @ts-ignore: decorator
@inline function _channelHalf<B, H>(
  kPtr: usize,
  chanB: usize,
  groupBytes: usize,
  pr: usize,
  pr2: usize,
  d: i32,
  h: i32,
  j: i32,
  half: i32,
  sc: usize,
  nB: usize,
  rho: usize,
  mt: usize,
  groups: i32,
): void {
  const b: i32 = 2 * sizeof<B>();
  const two: bool = idof<H>() == idof<HeadPair>();
  const mask = vconst(U32_0F0F0F0F);
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  let b0 = i32x4.splat(0), b1 = i32x4.splat(0), b2 = i32x4.splat(0), b3 = i32x4.splat(0);
  let p = kPtr + <usize>j * groupBytes + 4 + (<usize>half << (b == 4 ? 3 : 4));
  for (let c = 0; c < d; c += 2) {
    const u = v128.load32_splat(pr + (<usize>c << 1));
    const u2 = two ? v128.load32_splat(pr2 + (<usize>c << 1)) : u;
    let lo: v128, hi: v128;
    if (b == 4) {
      let v = v128.load64_zero(p);
      v = i64x2.replace_lane(v, 1, load<i64>(p + chanB));
      const e = i8x16.shuffle(v, v, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
      lo = v128.and(e, mask);
      hi = v128.and(i16x8.shr_u(e, 4), mask);
    } else {
      const v = v128.load(p), w = v128.load(p + chanB);
      lo = i8x16.shuffle(v, w, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
      hi = i8x16.shuffle(v, w, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    }
    let x = i16x8.extend_low_i8x16_u(lo);
    a0 = i32x4.add(a0, i32x4.dot_i16x8_s(x, u));
    if (two) b0 = i32x4.add(b0, i32x4.dot_i16x8_s(x, u2));
    x = i16x8.extend_high_i8x16_u(lo);
    a1 = i32x4.add(a1, i32x4.dot_i16x8_s(x, u));
    if (two) b1 = i32x4.add(b1, i32x4.dot_i16x8_s(x, u2));
    x = i16x8.extend_low_i8x16_u(hi);
    a2 = i32x4.add(a2, i32x4.dot_i16x8_s(x, u));
    if (two) b2 = i32x4.add(b2, i32x4.dot_i16x8_s(x, u2));
    x = i16x8.extend_high_i8x16_u(hi);
    a3 = i32x4.add(a3, i32x4.dot_i16x8_s(x, u));
    if (two) b3 = i32x4.add(b3, i32x4.dot_i16x8_s(x, u2));
    p += 2 * chanB;
  }
  _channelScores(sc, nB, rho, mt, groups, b, h, j, half, a0, a1, a2, a3);
  if (two) _channelScores(sc, nB, rho, mt, groups, b, h + 1, j, half, b0, b1, b2, b3);
}

// Scores of 16 tokens (half `half` of token group j) of head h from their i32 sums:
// f32(f32(sum)·ρ) + Σq·μ, int4's even/odd token vectors back into order.
// @ts-ignore: decorator
@inline function _channelScores(
  sc: usize,
  nB: usize,
  rho: usize,
  mt: usize,
  groups: i32,
  b: i32,
  h: i32,
  j: i32,
  half: i32,
  a0: v128,
  a1: v128,
  a2: v128,
  a3: v128,
): void {
  const hj = <usize>(h * groups + j) << 2;
  const r = v128.load32_splat(rho + hj), m = v128.load32_splat(mt + hj);
  const s0 = f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(a0), r), m);
  const s1 = f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(a1), r), m);
  const s2 = f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(a2), r), m);
  const s3 = f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(a3), r), m);
  const o = sc + <usize>h * nB + (<usize>((j << 5) + (half << 4)) << 2);
  if (b == 4) {
    v128.store(o, i32x4.shuffle(s0, s2, 0, 4, 1, 5));
    v128.store(o, i32x4.shuffle(s0, s2, 2, 6, 3, 7), 16);
    v128.store(o, i32x4.shuffle(s1, s3, 0, 4, 1, 5), 32);
    v128.store(o, i32x4.shuffle(s1, s3, 2, 6, 3, 7), 48);
  } else {
    v128.store(o, s0);
    v128.store(o, s1, 16);
    v128.store(o, s2, 32);
    v128.store(o, s3, 48);
  }
}
