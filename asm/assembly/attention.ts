// Attention over one page of the mixed-precision cache with dequantization fused in: the page's
// packed u32 words (core/cache/PAGES.md layout, codecs/FORMAT.md encodings) are decoded one group
// (channel axis) or one token row (token axis) at a time into a tiny f32 scratch and consumed at
// once, so no f32 copy of the page is ever materialised. The result is one flash-decoding partial
// (m, l, acc) per query head of the KV head's group; the host merges partials by log-sum-exp.
//
// Decoded values follow FORMAT.md exactly: int x̂ = f32(f32(code·s) + m) (f32x4.mul then
// f32x4.add, never fused), fp16/bf16/fp8 by exact bit algorithms, int8s/scaled fp8 f32(v·s).

import {
  I32_127,
  EXP_LN2_HI,
  EXP_LN2_LO,
  EXP_LO,
  EXP_LOG2E,
  MAGIC_1P5_2P23,
  EXP_P0,
  EXP_P1,
  EXP_P2,
  EXP_P3,
  EXP_P4,
  EXP_P5,
  F32_SIGN_ODD,
  ONE,
  vconst,
} from "./consts";
import { f16ToF32 } from "./f16";
import { decodeIntGroup } from "./int_group";
import { hsum, hsum4 } from "./lanes";
import {
  intChannelScratchBytes,
  intDotFormat,
  intDotScratchBytes,
  intScores,
  intScoresChannel,
  intValues,
} from "./int_dot";

// Format kind ids (codecs/format.ts FORMAT_KIND_IDS).
const KIND_INT: i32 = 0;
const KIND_INT8S: i32 = 1;
const KIND_FP16: i32 = 2;
const KIND_BF16: i32 = 3;
const KIND_FP32: i32 = 4;
const KIND_FP8E4M3: i32 = 5;
const KIND_FP8E5M2: i32 = 6;

// f32 value of an fp8 code (e4m3 when e4m3, else e5m2 = high byte of an fp16).
// @ts-ignore: decorator
@inline function _fp8(c: u32, e4m3: bool): f32 {
  if (!e4m3) return f16ToF32(c << 8);
  const sign = (c & 0x80) << 24;
  const e = (c >>> 3) & 15;
  const m = c & 7;
  if (e == 15 && m == 7) return reinterpret<f32>(sign | 0x7fc00000);
  if (e != 0) return reinterpret<f32>(sign | ((e + 120) << 23) | (m << 20));
  return reinterpret<f32>(sign | reinterpret<u32>(<f32>m * 0.001953125)); // m·2^−9
}

// Decodes one group of G elements (scaled kinds) or one word's worth of an unscaled kind.
// @ts-ignore: decorator
@inline function _decodeGroup(
  kind: i32,
  b: i32,
  G: i32,
  codeWords: i32,
  src: usize,
  dst: usize,
): void {
  if (kind == KIND_INT) {
    decodeIntGroup(src, G, b, codeWords, dst);
  } else if (kind == KIND_INT8S) {
    const sc = f16ToF32(load<u32>(src) & 0xffff);
    for (let i = 0; i < G; i++) {
      const c = <i32>load<i8>(src + 4 + <usize>i);
      store<f32>(dst + (<usize>i << 2), <f32>c * sc);
    }
  } else if (kind == KIND_FP8E4M3 || kind == KIND_FP8E5M2) {
    const e4 = kind == KIND_FP8E4M3;
    const sc = f16ToF32(load<u32>(src) & 0xffff);
    for (let i = 0; i < G; i++) {
      store<f32>(dst + (<usize>i << 2), _fp8(<u32>load<u8>(src + 4 + <usize>i), e4) * sc);
    }
  }
}

/**
 * Decodes `n` elements (a multiple of the group) of a flat encoded run at `src` into f32 at `dst`.
 * `scaled` formats have a header word per group; unscaled fp16/bf16/fp8 have none.
 */
export function decodeRun(
  kind: i32,
  b: i32,
  G: i32,
  wpg: i32,
  scaled: i32,
  src: usize,
  n: i32,
  dst: usize,
): void {
  if (kind == KIND_FP32) {
    memory.copy(dst, src, <usize>n << 2);
    return;
  }
  if (scaled != 0) {
    const cw = wpg - 1;
    for (let g = 0; g < n; g += G) {
      _decodeGroup(kind, b, G, cw, src + (<usize>((g / G) * wpg) << 2), dst + (<usize>g << 2));
    }
    return;
  }
  if (kind == KIND_FP16) {
    for (let i = 0; i < n; i += 2) {
      const w = load<u32>(src + (<usize>i << 1));
      store<f32>(dst + (<usize>i << 2), f16ToF32(w & 0xffff));
      store<f32>(dst + (<usize>i << 2) + 4, f16ToF32(w >>> 16));
    }
  } else if (kind == KIND_BF16) {
    for (let i = 0; i < n; i += 2) {
      const w = load<u32>(src + (<usize>i << 1));
      store<u32>(dst + (<usize>i << 2), w << 16);
      store<u32>(dst + (<usize>i << 2) + 4, w & 0xffff0000);
    }
  } else {
    const e4 = kind == KIND_FP8E4M3;
    for (let i = 0; i < n; i++) store<f32>(dst + (<usize>i << 2), _fp8(<u32>load<u8>(src + i), e4));
  }
}

// Σ a[i]·b[i] over n (multiple of 4) f32 elements, four lanes then a fixed-order lane sum.
// @ts-ignore: decorator
@inline function _dot(a: usize, b: usize, n: i32): f32 {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0);
  let i = 0;
  for (; i + 8 <= n; i += 8) {
    const o = <usize>i << 2;
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a + o), v128.load(b + o)));
    s1 = f32x4.add(s1, f32x4.mul(v128.load(a + o + 16), v128.load(b + o + 16)));
  }
  if (i < n) {
    const o = <usize>i << 2;
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a + o), v128.load(b + o)));
  }
  return hsum(f32x4.add(s0, s1));
}

// acc[0..n) += w · x[0..n) (n multiple of 4).
// @ts-ignore: decorator
@inline function _axpy(acc: usize, w: f32, x: usize, n: i32): void {
  const wv = f32x4.splat(w);
  for (let i = 0; i < n; i += 4) {
    const o = <usize>i << 2;
    v128.store(acc + o, f32x4.add(v128.load(acc + o), f32x4.mul(wv, v128.load(x + o))));
  }
}


// e^x per lane for x ≤ 0 (Cephes expf: x = k·ln2 + r, |r| ≤ ln2/2, degree-6 polynomial, 2^k put
// into the exponent bits; ~1 ulp). x is clamped at −87, where e^x < 2^−125 is negligible next to
// the page's maximum weight 1. Cheap lowerings on purpose (this runs once per score): pmax is one
// maxps where max's NaN rules cost several instructions (scores are finite), and k comes from adding
// 1.5·2^23, which rounds x·log2(e) ∈ [−126, 0] to an integer, ties to even, as nearest does, and
// leaves k in the low mantissa bits: adding the bias 127 there and shifting puts 2^k into the
// exponent bits, with no nearest or trunc_sat (several instructions each on x86).
// @ts-ignore: decorator
@inline function _expv(x: v128): v128 {
  x = f32x4.pmax(x, vconst(EXP_LO));
  const magic = vconst(MAGIC_1P5_2P23);
  const t = f32x4.add(f32x4.mul(x, vconst(EXP_LOG2E)), magic);
  const k = f32x4.sub(t, magic);
  const r = f32x4.sub(
    f32x4.sub(x, f32x4.mul(k, vconst(EXP_LN2_HI))),
    f32x4.mul(k, vconst(EXP_LN2_LO)),
  );
  let y = vconst(EXP_P0);
  y = f32x4.add(f32x4.mul(y, r), vconst(EXP_P1));
  y = f32x4.add(f32x4.mul(y, r), vconst(EXP_P2));
  y = f32x4.add(f32x4.mul(y, r), vconst(EXP_P3));
  y = f32x4.add(f32x4.mul(y, r), vconst(EXP_P4));
  y = f32x4.add(f32x4.mul(y, r), vconst(EXP_P5));
  y = f32x4.add(f32x4.add(f32x4.mul(y, f32x4.mul(r, r)), r), vconst(ONE));
  return f32x4.mul(y, i32x4.shl(i32x4.add(t, vconst(I32_127)), 23));
}

/**
 * Turns a decoded channel-axis key group forward by the offsets' angles: rows ([d][G] f32, tokens
 * in lanes) of channel pairs (2i, 2i+1) turn by the angle of offset τ in the group, read from the
 * pair-major table at rope (cos [i][span], then sin; core/cache/key_rope.ts; a few KiB that stay in
 * the first-level cache): x' = x·c − y·s, y' = x·s + y·c.
 */
// @ts-ignore: decorator
@inline function _ropeRows(work: usize, G: i32, d: i32, rope: usize, span: i32): void {
  const gBytes = <usize>G << 2, half = d >> 1;
  const sinAt = rope + (<usize>(half * span) << 2);
  for (let i = 0; i < half; i++) {
    const x = work + <usize>(2 * i) * gBytes, y = x + gBytes;
    const at = <usize>(i * span) << 2;
    const cr = rope + at, sr = sinAt + at;
    for (let t: usize = 0; t < gBytes; t += 16) {
      const c = v128.load(cr + t), s = v128.load(sr + t);
      const a = v128.load(x + t), b = v128.load(y + t);
      v128.store(x + t, f32x4.sub(f32x4.mul(a, c), f32x4.mul(b, s)));
      v128.store(y + t, f32x4.add(f32x4.mul(a, s), f32x4.mul(b, c)));
    }
  }
}

/**
 * The hq query heads at q turned back by a group's start angle into rq: per pair (2i, 2i+1),
 * a' = a·C0 + b·S0, b' = b·C0 − a·S0 with C0 = start[i], S0 = start[d/2 + i] (the group's row of
 * the positions' table, core/cache/key_rope.ts); two pairs a vector, (a, b) and (b, a) times
 * (C0, C0) and (S0, −S0).
 */
// @ts-ignore: decorator
@inline function _ropeQuery(q: usize, rq: usize, hq: i32, d: i32, start: usize): void {
  const half = d >> 1, odd = vconst(F32_SIGN_ODD);
  for (let i = 0; i < half; i += 2) {
    const c2 = v128.load64_zero(start + (<usize>i << 2));
    const s2 = v128.load64_zero(start + (<usize>(half + i) << 2));
    const c = i32x4.shuffle(c2, c2, 0, 0, 1, 1);
    const s = v128.xor(i32x4.shuffle(s2, s2, 0, 0, 1, 1), odd);
    for (let h = 0; h < hq; h++) {
      const at = <usize>(h * d + 2 * i) << 2;
      const v = v128.load(q + at);
      const w = i32x4.shuffle(v, v, 1, 0, 3, 2);
      v128.store(rq + at, f32x4.add(f32x4.mul(v, c), f32x4.mul(w, s)));
    }
  }
}

/**
 * Bytes of scratch `attendPage` needs for up to `cap` tokens per call: two f32 row/group buffers,
 * f32 scores/weights for hq × cap tokens, f32 accumulators for hq × d, the queries turned for
 * keys stored before RoPE (hq × d f32), work: the integer paths' scratch or one channel-axis key
 * group decoded (d × G ≤ d × cap f32), and the f64 sums of the token-axis value pass (hq × d).
 */
export function attendScratchBytes(d: i32, cap: i32, hq: i32): i32 {
  const row = max(d, 128);
  return (2 * row + 4 * hq + hq * cap + 2 * hq * d) * 4 + 64 + _workBytes(d, cap, hq) +
    hq * d * 8;
}

/** Bytes of attendPage's work area. */
function _workBytes(d: i32, cap: i32, hq: i32): i32 {
  return max(max(intDotScratchBytes(d, cap, hq), intChannelScratchBytes(d, cap, hq)), d * cap * 4);
}

/**
 * Tokens the exact token-axis value pass sums in f32 before it adds them into f64: one f32 sum
 * over a 512-token page, or a window of thousands, drifted past 1e-6 of the f64 reference.
 */
const VALUE_CHUNK: i32 = 128;

/** attendPage flag: write the f64 scores q_h·k_t/√d to scorePtr. */
const FLAG_SCORES: i32 = 1;
/** attendPage flag: merge into the running partials at outPtr instead of overwriting them. */
const FLAG_MERGE: i32 = 2;
/**
 * attendPage flag: integer dot products (int_dot.ts) for pages of int2/int4/int8 g32 keys (token
 * axis; int4/int8 also channel axis) and token-axis values, when d is a multiple of 32 and cap of
 * 4 (≤ 256); intQuery must have filled the block after q.
 */
const FLAG_INTDOT: i32 = 4;

// Scores of tokens k0, k1 (f32 rows of d) for the four query heads at q (rows dB bytes apart),
// stored at dst (+4 for k1), heads nB bytes apart. Each key chunk is loaded once for four heads.
// @ts-ignore: decorator
@inline function _score4x2(
  q: usize,
  dB: usize,
  k0: usize,
  k1: usize,
  d: i32,
  dst: usize,
  nB: usize,
): void {
  let a0 = f32x4.splat(0), b0 = f32x4.splat(0), a1 = f32x4.splat(0), b1 = f32x4.splat(0);
  let a2 = f32x4.splat(0), b2 = f32x4.splat(0), a3 = f32x4.splat(0), b3 = f32x4.splat(0);
  for (let i = 0; i < d; i += 4) {
    const o = <usize>i << 2;
    const x = v128.load(k0 + o), y = v128.load(k1 + o);
    let qv = v128.load(q + o);
    a0 = f32x4.add(a0, f32x4.mul(qv, x));
    b0 = f32x4.add(b0, f32x4.mul(qv, y));
    qv = v128.load(q + dB + o);
    a1 = f32x4.add(a1, f32x4.mul(qv, x));
    b1 = f32x4.add(b1, f32x4.mul(qv, y));
    qv = v128.load(q + 2 * dB + o);
    a2 = f32x4.add(a2, f32x4.mul(qv, x));
    b2 = f32x4.add(b2, f32x4.mul(qv, y));
    qv = v128.load(q + 3 * dB + o);
    a3 = f32x4.add(a3, f32x4.mul(qv, x));
    b3 = f32x4.add(b3, f32x4.mul(qv, y));
  }
  // the eight sums as two vectors (heads 0–3 of k0, of k1), stored as (k0, k1) pairs per head
  const x = hsum4(a0, a1, a2, a3), y = hsum4(b0, b1, b2, b3);
  const lo = i32x4.shuffle(x, y, 0, 4, 1, 5), hi = i32x4.shuffle(x, y, 2, 6, 3, 7);
  v128.store64_lane(dst, lo, 0);
  v128.store64_lane(dst + nB, lo, 1);
  v128.store64_lane(dst + 2 * nB, hi, 0);
  v128.store64_lane(dst + 3 * nB, hi, 1);
}

// acc_h += w_h,0·v0 + w_h,1·v1 for four heads (acc rows dB bytes apart, weights at w, w + 4 with
// heads nB bytes apart). Each value chunk is loaded once for four heads.
// @ts-ignore: decorator
@inline function _axpy4x2(
  acc: usize,
  dB: usize,
  w: usize,
  nB: usize,
  v0: usize,
  v1: usize,
  d: i32,
): void {
  const w00 = v128.load32_splat(w), w01 = v128.load32_splat(w + 4);
  const w10 = v128.load32_splat(w + nB), w11 = v128.load32_splat(w + nB + 4);
  const w20 = v128.load32_splat(w + 2 * nB), w21 = v128.load32_splat(w + 2 * nB + 4);
  const w30 = v128.load32_splat(w + 3 * nB), w31 = v128.load32_splat(w + 3 * nB + 4);
  for (let i = 0; i < d; i += 4) {
    const o = <usize>i << 2;
    const x = v128.load(v0 + o), y = v128.load(v1 + o);
    let a = acc + o;
    v128.store(a, f32x4.add(v128.load(a), f32x4.add(f32x4.mul(w00, x), f32x4.mul(w01, y))));
    a += dB;
    v128.store(a, f32x4.add(v128.load(a), f32x4.add(f32x4.mul(w10, x), f32x4.mul(w11, y))));
    a += dB;
    v128.store(a, f32x4.add(v128.load(a), f32x4.add(f32x4.mul(w20, x), f32x4.mul(w21, y))));
    a += dB;
    v128.store(a, f32x4.add(v128.load(a), f32x4.add(f32x4.mul(w30, x), f32x4.mul(w31, y))));
  }
}

/**
 * One flash-decoding partial per query head over `n` tokens of one page (or one token-major run).
 *
 * A format is passed as (kind, bits, group G, words per group, scaled, channel): channel-axis
 * formats are channel-major with `cap` tokens per channel (PAGES.md), the others token-major.
 * q holds hq query heads × d f32; out holds per head f64 [m, l, acc_0 … acc_{d−1}]: overwritten,
 * or with FLAG_MERGE merged into (log-sum-exp; l = 0 there means empty); with FLAG_SCORES,
 * scorePtr receives f64 s[h·n + t] = q_h·k_t/√d; scratch has attendScratchBytes(d, cap, hq) bytes.
 */
export function attendPage(
  kKind: i32,
  kBits: i32,
  kG: i32,
  kWpg: i32,
  kScaled: i32,
  kChannel: i32,
  kPtr: usize,
  vKind: i32,
  vBits: i32,
  vG: i32,
  vWpg: i32,
  vScaled: i32,
  vChannel: i32,
  vPtr: usize,
  n: i32,
  cap: i32,
  d: i32,
  hq: i32,
  qPtr: usize,
  outPtr: usize,
  scorePtr: usize,
  scratch: usize,
  flags: i32,
  ropePtr: usize,
  ropeSpan: i32,
  positionsPtr: usize,
  startsPtr: usize,
): void {
  const rowBytes = <usize>max(d, 128) << 2;
  const row = scratch, row1 = scratch + rowBytes;
  const stats = row1 + rowBytes; // f64 [hq][2]: the page's m, l
  const sc = stats + (<usize>hq << 4); // f32 [hq][n]: scores, then weights
  const acc = sc + (<usize>(hq * n) << 2); // f32 [hq][d]
  const dBytes = <usize>d << 2, nBytes = <usize>n << 2;
  const blocked = (hq & 3) == 0; // four heads share each loaded key/value chunk
  // channel keys stored before RoPE (ropePtr ≠ 0) are turned forward after decoding: exact path
  const intShape = (flags & FLAG_INTDOT) != 0 && (d & 31) == 0 && (cap & 3) == 0 &&
    cap <= 256 && ropePtr == 0;
  // keys and values both or neither: the rounded weights then depend only on integer-path
  // scores, which core/cache/int_dot.ts reproduces bit for bit. Keys token-axis (integer query) or
  // channel-axis (i16 q·s per channel and token group); values token-axis.
  const intV = intShape && intDotFormat(vKind, vBits, vG, vChannel);
  const intKeys = intV && intDotFormat(kKind, kBits, kG, kChannel);
  const intKeysChannel = intV && kChannel != 0 && kBits != 2 && intDotFormat(kKind, kBits, kG, 0) &&
    d <= 256 && (n & 31) == 0 && (cap & 31) == 0;
  const intValuesOn = intKeys || intKeysChannel;
  const rq = acc + (<usize>(hq * d) << 2); // f32 [hq][d]: queries turned back by a group's start
  const work = rq + (<usize>(hq * d) << 2); // intDotScratchBytes

  // 1. scores
  if (intKeys) {
    const qi4 = qPtr + (<usize>(hq * d) << 2), qi8 = qi4 + (<usize>(hq * d) << 1);
    const qi2 = qi8 + (<usize>(hq * d) << 1);
    const qv16 = qi2 + (<usize>(hq * d) << 1), sig16 = qv16 + (<usize>(hq * (((d >> 5) + 3) & ~3)) << 2);
    const qv8 = sig16 + (<usize>hq << 2), sig8 = qv8 + (<usize>(hq * (((d >> 5) + 3) & ~3)) << 2);
    const qb4 = sig8 + (<usize>hq << 2), qb2 = qb4 + <usize>(hq * d);
    // int2 and int4 codes meet the query rounded to ±127, int8 codes the one rounded to ±32767
    if (kBits == 8) intScores(kPtr, 8, n, d, hq, qi8, 0, qv16, sig16, sc, work);
    else if (kBits == 4) intScores(kPtr, 4, n, d, hq, qi4, qb4, qv8, sig8, sc, work);
    else intScores(kPtr, 2, n, d, hq, qi2, qb2, qv8, sig8, sc, work);
  } else if (intKeysChannel) {
    intScoresChannel(kPtr, kBits, n, cap, d, hq, qPtr, sc, work);
  } else if (kChannel != 0) {
    // one token group at a time: its d channel rows decoded into work ([d][G] f32), then per head
    // and four tokens Σ_c q_c·k̂_{c,t} in eight accumulators over c mod 8 (a running f32 sum over all
    // d channels had lost up to 1.6e-6 of the output against the f64 reference at d = 128)
    const groups = n / kG, perChannel = cap / kG, gBytes = <usize>kG << 2;
    for (let g = 0; g < groups; g++) {
      for (let c = 0; c < d; c++) {
        decodeRun(
          kKind,
          kBits,
          kG,
          kWpg,
          kScaled,
          kPtr + (<usize>((c * perChannel + g) * kWpg) << 2),
          kG,
          work + <usize>c * gBytes,
        );
      }
      // keys before RoPE: q·R(p0 + τ)k̂ = (R(−p0)q)·(R(τ)k̂), the query turned by the group's start
      // angle (hq·d products) and the keys by their offset (a table that stays in cache)
      let qs = qPtr;
      if (ropePtr != 0) {
        const p0 = load<i32>(startsPtr + (<usize>g << 2));
        _ropeQuery(qPtr, rq, hq, d, positionsPtr + (<usize>(p0 * d) << 2));
        _ropeRows(work, kG, d, ropePtr, ropeSpan);
        qs = rq;
      }
      for (let h = 0; h < hq; h++) {
        const qh = qs + <usize>h * dBytes;
        const dst = sc + (<usize>(h * n + g * kG) << 2);
        for (let t = 0; t < kG; t += 4) {
          let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
          let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
          let k = work + (<usize>t << 2);
          let c = 0;
          for (; c + 8 <= d; c += 8) {
            const qc = qh + (<usize>c << 2);
            a0 = f32x4.add(a0, f32x4.mul(v128.load32_splat(qc), v128.load(k)));
            a1 = f32x4.add(a1, f32x4.mul(v128.load32_splat(qc, 4), v128.load(k + gBytes)));
            a2 = f32x4.add(a2, f32x4.mul(v128.load32_splat(qc, 8), v128.load(k + 2 * gBytes)));
            a3 = f32x4.add(a3, f32x4.mul(v128.load32_splat(qc, 12), v128.load(k + 3 * gBytes)));
            a4 = f32x4.add(a4, f32x4.mul(v128.load32_splat(qc, 16), v128.load(k + 4 * gBytes)));
            a5 = f32x4.add(a5, f32x4.mul(v128.load32_splat(qc, 20), v128.load(k + 5 * gBytes)));
            a6 = f32x4.add(a6, f32x4.mul(v128.load32_splat(qc, 24), v128.load(k + 6 * gBytes)));
            a7 = f32x4.add(a7, f32x4.mul(v128.load32_splat(qc, 28), v128.load(k + 7 * gBytes)));
            k += 8 * gBytes;
          }
          if (c < d) {
            const qc = qh + (<usize>c << 2);
            a0 = f32x4.add(a0, f32x4.mul(v128.load32_splat(qc), v128.load(k)));
            a1 = f32x4.add(a1, f32x4.mul(v128.load32_splat(qc, 4), v128.load(k + gBytes)));
            a2 = f32x4.add(a2, f32x4.mul(v128.load32_splat(qc, 8), v128.load(k + 2 * gBytes)));
            a3 = f32x4.add(a3, f32x4.mul(v128.load32_splat(qc, 12), v128.load(k + 3 * gBytes)));
          }
          a0 = f32x4.add(f32x4.add(a0, a4), f32x4.add(a1, a5));
          a2 = f32x4.add(f32x4.add(a2, a6), f32x4.add(a3, a7));
          v128.store(dst + (<usize>t << 2), f32x4.add(a0, a2));
        }
      }
    }
  } else {
    const tokenBytes = <usize>(kKind == KIND_FP32 ? d : (d / kG) * kWpg) << 2;
    let t = 0;
    if (blocked) {
      for (; t + 2 <= n; t += 2) {
        let k0 = kPtr + <usize>t * tokenBytes, k1 = k0 + tokenBytes;
        if (kKind != KIND_FP32) {
          decodeRun(kKind, kBits, kG, kWpg, kScaled, k0, d, row);
          decodeRun(kKind, kBits, kG, kWpg, kScaled, k1, d, row1);
          k0 = row;
          k1 = row1;
        }
        for (let h = 0; h < hq; h += 4) {
          _score4x2(qPtr + <usize>h * dBytes, dBytes, k0, k1, d, sc + <usize>h * nBytes + (<usize>t << 2), nBytes);
        }
      }
    }
    for (; t < n; t++) {
      let k = kPtr + <usize>t * tokenBytes;
      if (kKind != KIND_FP32) {
        decodeRun(kKind, kBits, kG, kWpg, kScaled, k, d, row);
        k = row;
      }
      for (let h = 0; h < hq; h++) {
        store<f32>(sc + (<usize>(h * n + t) << 2), _dot(qPtr + <usize>h * dBytes, k, d));
      }
    }
  }

  // 2. softmax statistics per head: m (f32 max of s = score/√d), l (f64 sum) and f32 weights
  //    e^{s−m} in place of the scores
  const inv = 1 / Math.sqrt(<f64>d);
  const inv32 = <f32>inv;
  const invv = f32x4.splat(inv32);
  const n4 = n & ~3;
  for (let h = 0; h < hq; h++) {
    const row0 = sc + <usize>h * nBytes;
    if (flags & FLAG_SCORES) {
      // the f32 product the softmax takes, as m32 below: the top score then credits exactly e^0
      // (an f64 product differed from m32 by |s|·2^-24, and e^{s−m} overflowed for large queries)
      for (let t = 0; t < n; t++) {
        const s = <f64>(load<f32>(row0 + (<usize>t << 2)) * inv32);
        store<f64>(scorePtr + (<usize>(h * n + t) << 3), s);
      }
    }
    let mv = f32x4.splat(-Infinity);
    for (let t = 0; t < n4; t += 4) mv = f32x4.pmax(mv, v128.load(row0 + (<usize>t << 2)));
    let m32 = max(
      max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)),
      max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3)),
    );
    for (let t = n4; t < n; t++) m32 = max(m32, load<f32>(row0 + (<usize>t << 2)));
    // scaling by a positive constant keeps the argmax; + 0 makes a −0 max +0 (the lane max keeps
    // whichever zero came first; core/cache/int_dot.ts takes +0 too)
    m32 = m32 * inv32 + <f32>0;
    const mvs = f32x4.splat(m32);
    let l0 = f64x2.splat(0), l1 = f64x2.splat(0);
    for (let t = 0; t < n4; t += 4) {
      const p = row0 + (<usize>t << 2);
      const w = _expv(f32x4.sub(f32x4.mul(v128.load(p), invv), mvs));
      v128.store(p, w);
      l0 = f64x2.add(l0, f64x2.promote_low_f32x4(w));
      l1 = f64x2.add(l1, f64x2.promote_low_f32x4(i32x4.shuffle(w, w, 2, 3, 0, 1)));
    }
    const ls = f64x2.add(l0, l1);
    let l = f64x2.extract_lane(ls, 0) + f64x2.extract_lane(ls, 1);
    if (n4 < n) {
      // the tail through the same vector exp, so every weight is the same function of its score
      const p = row0 + (<usize>n4 << 2);
      let x = f32x4.splat(0);
      x = f32x4.replace_lane(x, 0, load<f32>(p));
      if (n4 + 1 < n) x = f32x4.replace_lane(x, 1, load<f32>(p, 4));
      if (n4 + 2 < n) x = f32x4.replace_lane(x, 2, load<f32>(p, 8));
      const w = _expv(f32x4.sub(f32x4.mul(x, invv), mvs));
      store<f32>(p, f32x4.extract_lane(w, 0));
      l += <f64>f32x4.extract_lane(w, 0);
      if (n4 + 1 < n) {
        store<f32>(p + 4, f32x4.extract_lane(w, 1));
        l += <f64>f32x4.extract_lane(w, 1);
      }
      if (n4 + 2 < n) {
        store<f32>(p + 8, f32x4.extract_lane(w, 2));
        l += <f64>f32x4.extract_lane(w, 2);
      }
    }
    store<f64>(stats + (<usize>h << 4), <f64>m32);
    store<f64>(stats + (<usize>h << 4) + 8, l);
  }

  // 3. acc_h = Σ_t w_{h,t} v_t (f32 at acc; the exact token-axis pass in f64 at acc64)
  const acc64 = work + <usize>_workBytes(d, cap, hq);
  let sumsF64 = false;
  if (intValuesOn) {
    intValues(vPtr, vBits, n, cap, d, hq, sc, acc, work);
  } else {
    memory.fill(acc, 0, <usize>(hq * d) << 2);
    if (vChannel != 0) {
      const groups = n / vG, perChannel = cap / vG;
      for (let c = 0; c < d; c++) {
        for (let g = 0; g < groups; g++) {
          decodeRun(
            vKind,
            vBits,
            vG,
            vWpg,
            vScaled,
            vPtr + (<usize>((c * perChannel + g) * vWpg) << 2),
            vG,
            row,
          );
          for (let h = 0; h < hq; h++) {
            const a = acc + (<usize>(h * d + c) << 2);
            store<f32>(a, load<f32>(a) + _dot(sc + (<usize>(h * n + g * vG) << 2), row, vG));
          }
        }
      }
    } else {
      // VALUE_CHUNK tokens at a time in f32, each chunk's sums added into acc64
      const tokenBytes = <usize>(vKind == KIND_FP32 ? d : (d / vG) * vWpg) << 2;
      memory.fill(acc64, 0, <usize>(hq * d) << 3);
      for (let t0 = 0; t0 < n; t0 += VALUE_CHUNK) {
        const t1 = min(n, t0 + VALUE_CHUNK);
        if (t0 > 0) memory.fill(acc, 0, <usize>(hq * d) << 2);
        let t = t0;
        if (blocked) {
          for (; t + 2 <= t1; t += 2) {
            let v0 = vPtr + <usize>t * tokenBytes, v1 = v0 + tokenBytes;
            if (vKind != KIND_FP32) {
              decodeRun(vKind, vBits, vG, vWpg, vScaled, v0, d, row);
              decodeRun(vKind, vBits, vG, vWpg, vScaled, v1, d, row1);
              v0 = row;
              v1 = row1;
            }
            for (let h = 0; h < hq; h += 4) {
              const w = sc + <usize>h * nBytes + (<usize>t << 2);
              _axpy4x2(acc + <usize>h * dBytes, dBytes, w, nBytes, v0, v1, d);
            }
          }
        }
        for (; t < t1; t++) {
          let v = vPtr + <usize>t * tokenBytes;
          if (vKind != KIND_FP32) {
            decodeRun(vKind, vBits, vG, vWpg, vScaled, v, d, row);
            v = row;
          }
          for (let h = 0; h < hq; h++) {
            _axpy(acc + <usize>h * dBytes, load<f32>(sc + (<usize>(h * n + t) << 2)), v, d);
          }
        }
        for (let i = 0; i < hq * d; i++) {
          const a = acc64 + (<usize>i << 3);
          store<f64>(a, load<f64>(a) + <f64>load<f32>(acc + (<usize>i << 2)));
        }
      }
      sumsF64 = true;
    }
  }

  // 4. write or log-sum-exp merge the partials (f64, as core/cache/partial.ts merge())
  for (let h = 0; h < hq; h++) {
    const o = outPtr + (<usize>(h * (d + 2)) << 3);
    const a = acc + <usize>h * dBytes;
    const mp = load<f64>(stats + (<usize>h << 4)), lp = load<f64>(stats + (<usize>h << 4) + 8);
    const lo = load<f64>(o + 8);
    const a64 = acc64 + (<usize>(h * d) << 3);
    if ((flags & FLAG_MERGE) == 0 || lo == 0) {
      store<f64>(o, mp);
      store<f64>(o + 8, lp);
      for (let i = 0; i < d; i++) {
        const x = sumsF64 ? load<f64>(a64 + (<usize>i << 3)) : <f64>load<f32>(a + (<usize>i << 2));
        store<f64>(o + 16 + (<usize>i << 3), x);
      }
      continue;
    }
    const mo = load<f64>(o);
    const m = max(mo, mp);
    const ea = Math.exp(mo - m), eb = Math.exp(mp - m);
    store<f64>(o, m);
    store<f64>(o + 8, lo * ea + lp * eb);
    const ev = f64x2.splat(ea), fv = f64x2.splat(eb);
    for (let i = 0; i < d; i += 2) {
      const po = o + 16 + (<usize>i << 3);
      const x = sumsF64
        ? v128.load(a64 + (<usize>i << 3))
        : f64x2.promote_low_f32x4(v128.load64_zero(a + (<usize>i << 2)));
      v128.store(po, f64x2.add(f64x2.mul(v128.load(po), ev), f64x2.mul(x, fv)));
    }
  }
}

