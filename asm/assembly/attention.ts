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
  F16_REBIAS,
  F16_SIGNED_MAG,
  E4M3_EXP,
  E4M3_SIGNED_MAG,
  E4M3_MAG,
  E4M3_REBIAS,
  F32_2PM6,
  F32_EXP_ONE,
  F32_SIGN,
  E5M2_SIGNED_MAG,
  F32_2P120,
  F32_SIGN_ODD,
  ONE,
  U32_0F0F0F0F,
  vconst,
} from "./consts";
import { f16ToF32 } from "./f16";
import { decodeHalf, fp8ToF32Lanes, SW0, SW1 } from "./float";
import {
  affine,
  chunkTables,
  decodeIntGroup,
  fastIntGroup,
  headerMinima,
  headerScales,
} from "./int_group";
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

// Row kinds of the inline row loops (_score4x2, _keyChunk, _finiteHalfRow, _finiteFp8Row), as
// types: each instantiation is its own code. Passed as literal arguments, the fp16 and bf16 copies
// of a loop became one loop that tested the kind at every chunk (Binaryen merges inlined copies
// that differ only in a local's first value; int_dot.ts intScores).
class F32Rows {}
class Fp16Rows {}
class Bf16Rows {}
class E4m3Rows {}
class E5m2Rows {}

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
    // eight codes per step, sign-extended to i32 lanes, times s: the same products as the codec
    // kernel's q·2^24 times s·2^−24 (float.ts decodeInt8s), without its byte swizzles; 8-byte loads
    // stay inside the group
    const s = f32x4.splat(f16ToF32(load<u32>(src) & 0xffff));
    for (let i = 0; i < G; i += 8) {
      const v = i16x8.extend_low_i8x16_s(v128.load64_zero(src + 4 + <usize>i));
      const lo = f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(v));
      const hi = f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(v));
      v128.store(dst + (<usize>i << 2), f32x4.mul(lo, s));
      v128.store(dst + (<usize>i << 2), f32x4.mul(hi, s), 16);
    }
  } else if (kind == KIND_FP8E4M3 || kind == KIND_FP8E5M2) {
    const s = f32x4.splat(f16ToF32(load<u32>(src) & 0xffff));
    for (let i = 0; i < G; i += 8) {
      const v = i16x8.extend_low_i8x16_s(v128.load64_zero(src + 4 + <usize>i));
      const lo = i32x4.extend_low_i16x8_s(v), hi = i32x4.extend_high_i16x8_s(v);
      if (kind == KIND_FP8E4M3) {
        v128.store(dst + (<usize>i << 2), f32x4.mul(_finiteFp8(lo, 7, true), s));
        v128.store(dst + (<usize>i << 2), f32x4.mul(_finiteFp8(hi, 7, true), s), 16);
      } else {
        v128.store(dst + (<usize>i << 2), f32x4.mul(_finiteFp8(lo, 15, true), s));
        v128.store(dst + (<usize>i << 2), f32x4.mul(_finiteFp8(hi, 15, true), s), 16);
      }
    }
  }
}

// f32 lanes of fp8 codes sign-extended to i32 lanes, for finite codes only (pages never hold an
// e4m3 NaN or an e5m2 infinity or NaN: encode refuses them, loadCache checks), where the codec's
// fp8ToF32Lanes also keeps NaN (a byte swizzle, a compare and a select more): the magnitude bits
// shifted into place under the sign, times 2^(127 − bias). A subnormal code makes that a subnormal
// f32 operand, which costs the multiply an assist on this machine: unscaled e4m3 is subnormal below
// 2^-6, which KV data often is (1.6% of uniform data in [−1, 1], which then attended 1.44× → 2.07×
// FP32), so with `rare` false its exponent is rebiased with integer adds instead and a subnormal
// code m becomes f32(2^-6·(1 + m/8)) − 2^-6 = m·2^-9, exactly (1.97× whatever the data). Scaled fp8
// (codes up to ±448 times the group's scale) and e5m2 (subnormal below 2^-14) meet them rarely.
// @ts-ignore: decorator
@inline function _finiteFp8(c: v128, bias: i32, rare: bool): v128 {
  if (bias == 15) {
    return f32x4.mul(v128.and(i32x4.shl(c, 21), vconst(E5M2_SIGNED_MAG)), vconst(F16_REBIAS));
  }
  if (rare) {
    return f32x4.mul(v128.and(i32x4.shl(c, 20), vconst(E4M3_SIGNED_MAG)), vconst(F32_2P120));
  }
  const mag = v128.and(i32x4.shl(c, 20), vconst(E4M3_MAG));
  const sub = i32x4.eq(v128.and(mag, vconst(E4M3_EXP)), i32x4.splat(0));
  const bits = i32x4.add(i32x4.add(mag, vconst(E4M3_REBIAS)), v128.and(sub, vconst(F32_EXP_ONE)));
  const x = f32x4.sub(bits, v128.and(sub, vconst(F32_2PM6)));
  return v128.or(x, v128.and(c, vconst(F32_SIGN)));
}

// n (a multiple of 16) unscaled fp8 codes of kind R (E4m3Rows, E5m2Rows) at src as f32 at dst
// (finite codes: _finiteFp8).
// @ts-ignore: decorator
@inline function _finiteFp8Row<R>(src: usize, n: i32, dst: usize): void {
  const bias: i32 = idof<R>() == idof<E4m3Rows>() ? 7 : 15;
  for (let i = 0; i < n; i += 16) {
    const v = v128.load(src + <usize>i), p = dst + (<usize>i << 2);
    const a = i16x8.extend_low_i8x16_s(v), b = i16x8.extend_high_i8x16_s(v);
    v128.store(p, _finiteFp8(i32x4.extend_low_i16x8_s(a), bias, false));
    v128.store(p, _finiteFp8(i32x4.extend_high_i16x8_s(a), bias, false), 16);
    v128.store(p, _finiteFp8(i32x4.extend_low_i16x8_s(b), bias, false), 32);
    v128.store(p, _finiteFp8(i32x4.extend_high_i16x8_s(b), bias, false), 48);
  }
}

/**
 * Decodes `n` elements (a multiple of the group) of a flat encoded run at `src` into f32 at `dst`.
 * `scaled` formats have a header word per group; unscaled fp16/bf16/fp8 have none. The attention's
 * own decoder, not the codecs' (int8s and scaled fp8 groups assume finite codes, as pages hold;
 * the module no longer exports it).
 */
function decodeRun(
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
  if (kind == KIND_FP16 || kind == KIND_BF16) {
    // eight lanes at a time (the codec's kernel): one f16ToF32 per element had made fp16 pages
    // attend 6–11× slower than FP32 ones
    decodeHalf(src, dst, n, kind == KIND_BF16);
  } else {
    // four codes (one word) per step: the codec's lanes, loads inside the run
    const bias = kind == KIND_FP8E4M3 ? 7 : 15;
    for (let i = 0; i < n; i += 4) {
      v128.store(dst + (<usize>i << 2), fp8ToF32Lanes(v128.load32_zero(src + <usize>i), SW0, bias));
    }
  }
}

// decodeRun for one token row, with int4 and int8 groups in whole 16-byte chunks (the formats the
// page-attention loops meet most) decoded inline, without a call and its format dispatch per row.
// @ts-ignore: decorator
@inline function _decodeRow(
  kind: i32,
  b: i32,
  G: i32,
  wpg: i32,
  scaled: i32,
  src: usize,
  n: i32,
  dst: usize,
): void {
  if (kind == KIND_INT && (b == 4 || b == 8) && fastIntGroup(b, G)) {
    if (b == 4) _intRow<u16>(src, G, wpg, n, dst);
    else _intRow<u32>(src, G, wpg, n, dst);
  } else if ((kind == KIND_FP16 || kind == KIND_BF16) && (n & 7) == 0) {
    if (kind == KIND_FP16) _finiteHalfRow<Fp16Rows>(src, n, dst);
    else _finiteHalfRow<Bf16Rows>(src, n, dst);
  } else if (scaled == 0 && (kind == KIND_FP8E4M3 || kind == KIND_FP8E5M2) && (n & 15) == 0) {
    if (kind == KIND_FP8E4M3) _finiteFp8Row<E4m3Rows>(src, n, dst);
    else _finiteFp8Row<E5m2Rows>(src, n, dst);
  } else {
    decodeRun(kind, b, G, wpg, scaled, src, n, dst);
  }
}

// n elements of int groups of b = 2·sizeof<B>() bits (u16: int4, u32: int8) at src as f32 at dst,
// b a constant in each copy (a type argument: see int_dot.ts intScores; 4–5% off the exact int4
// and int8 paths, one layer, T = 512).
// @ts-ignore: decorator
@inline function _intRow<B>(src: usize, G: i32, wpg: i32, n: i32, dst: usize): void {
  const b: i32 = 2 * sizeof<B>();
  for (let g = 0; g < n; g += G) {
    decodeIntGroup(src + (<usize>((g / G) * wpg) << 2), G, b, wpg - 1, dst + (<usize>g << 2));
  }
}

// n (a multiple of 8) halves of kind R (Fp16Rows, Bf16Rows) at src as f32 at dst, inline in the
// row loops.
// fp16 for finite halves only: a page never holds an infinite or NaN half (encode refuses them,
// loadCache checks), so the sign-extended half shifted into place and multiplied by 2^112 is the
// value, subnormals included (4 steps per 4 lanes, where the codec's decodeHalf, which keeps
// infinities and NaN payloads, takes 11). bf16 is the high half of its f32.
// @ts-ignore: decorator
@inline function _finiteHalfRow<R>(src: usize, n: i32, dst: usize): void {
  const mag = vconst(F16_SIGNED_MAG), rebias = vconst(F16_REBIAS);
  for (let i = 0; i < n; i += 8) {
    const v = v128.load(src + (<usize>i << 1)), p = dst + (<usize>i << 2);
    if (idof<R>() == idof<Bf16Rows>()) {
      v128.store(p, i32x4.shl(i32x4.extend_low_i16x8_u(v), 16));
      v128.store(p, i32x4.shl(i32x4.extend_high_i16x8_u(v), 16), 16);
    } else {
      const lo = v128.and(i32x4.shl(i32x4.extend_low_i16x8_s(v), 13), mag);
      const hi = v128.and(i32x4.shl(i32x4.extend_high_i16x8_s(v), 13), mag);
      v128.store(p, f32x4.mul(lo, rebias));
      v128.store(p, f32x4.mul(hi, rebias), 16);
    }
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

// q·k over d (multiple of 4) f32 elements as _score4x2 sums each head and token: one running sum
// per lane over the chunks in order, then the fixed-order lane sum, so a score is the same f32
// whichever loop takes it (core/cache/kernel_score.ts is the reference's copy of these steps).
// @ts-ignore: decorator
@inline function _scoreDot(q: usize, k: usize, d: i32): f32 {
  let s = f32x4.splat(0);
  for (let i = 0; i < d; i += 4) {
    const o = <usize>i << 2;
    s = f32x4.add(s, f32x4.mul(v128.load(q + o), v128.load(k + o)));
  }
  return hsum(s);
}

// _scoreDot of two tokens k0, k1 for one head, stored at dst and dst + 4: two independent chains
// (one head's loop, where _score4x2's four heads do not apply).
// @ts-ignore: decorator
@inline function _score1x2(q: usize, k0: usize, k1: usize, d: i32, dst: usize): void {
  let a = f32x4.splat(0), b = f32x4.splat(0);
  for (let i = 0; i < d; i += 4) {
    const o = <usize>i << 2;
    const qv = v128.load(q + o);
    a = f32x4.add(a, f32x4.mul(qv, v128.load(k0 + o)));
    b = f32x4.add(b, f32x4.mul(qv, v128.load(k1 + o)));
  }
  store<f32>(dst, hsum(a));
  store<f32>(dst + 4, hsum(b));
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

// One token row's four channels (pairs 2i, 2i+1 and 2i+2, 2i+3) turned forward by offset τ:
// cs holds (cos φ_i, cos φ_i, cos φ_i+1, cos φ_i+1) and sn (−sin φ_i, sin φ_i, −sin φ_i+1, sin φ_i+1)
// (the offsets' table, core/cache/key_rope.ts kernelTables), so x' = x·c + y·(−s) = x·c − y·s and
// y' = y·c + x·s, the same f32 roundings as turning channel rows.
// @ts-ignore: decorator
@inline function _turn(v: v128, cs: v128, sn: v128): v128 {
  return f32x4.add(f32x4.mul(v, cs), f32x4.mul(i32x4.shuffle(v, v, 1, 0, 3, 2), sn));
}

/**
 * Turns a decoded channel-axis key group forward in place: tile holds G token rows of d f32; row
 * τ turns by the angles of offset τ, read from the token-major table at rope (row τ: d cosines,
 * then d signed sines; a few KiB that stay in cache).
 */
// @ts-ignore: decorator
@inline function _ropeTile(tile: usize, G: i32, d: i32, rope: usize): void {
  const dBytes = <usize>d << 2;
  for (let t = 0; t < G; t++) {
    const row = tile + <usize>t * dBytes, cr = rope + <usize>t * 2 * dBytes;
    for (let c: usize = 0; c < dBytes; c += 16) {
      v128.store(row + c, _turn(v128.load(row + c), v128.load(cr + c), v128.load(cr + dBytes + c)));
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
 * group decoded as channel rows and as token rows (2 × d × G ≤ 2 × d × cap f32), and the f64 sums
 * of the token-axis value pass (hq × d).
 */
export function attendScratchBytes(d: i32, cap: i32, hq: i32): i32 {
  const row = max(d, 128);
  return (2 * row + 4 * hq + hq * cap + 2 * hq * d) * 4 + 64 + _workBytes(d, cap, hq) +
    hq * d * 8;
}

/** Bytes of attendPage's work area. */
function _workBytes(d: i32, cap: i32, hq: i32): i32 {
  // a channel-axis key group decoded (d × G ≤ d × cap f32) and its transposed tile
  return max(max(intDotScratchBytes(d, cap, hq), intChannelScratchBytes(d, cap, hq)), 2 * d * cap * 4);
}

/**
 * Tokens the exact value pass sums in f32 before it adds them into f64: one f32 sum over a
 * 512-token page, or a window of thousands, drifted past 1e-6 of f64 attention.
 * core/cache/partial.ts mirrors it; every channel group (at most 128 tokens, codecs/format.ts)
 * divides it.
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

// Scores of tokens k0, k1 (rows of d elements of kind R: F32Rows, Fp16Rows or Bf16Rows) for the
// four query heads at q (rows dB bytes apart), stored at dst (+4 for k1), heads nB bytes apart. Each
// key chunk is loaded once for four heads; half rows are converted in registers as they are scored
// (the same f32 values as _finiteHalfRow's, without its store and reload).
// @ts-ignore: decorator
@inline function _score4x2<R>(
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
    const x = _keyChunk<R>(k0, i), y = _keyChunk<R>(k1, i);
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

// Elements i … i + 3 of a key row of kind R as f32 (fp16 finite: _finiteHalfRow's steps).
// @ts-ignore: decorator
@inline function _keyChunk<R>(k: usize, i: i32): v128 {
  if (idof<R>() == idof<F32Rows>()) return v128.load(k + (<usize>i << 2));
  const h = i32x4.extend_low_i16x8_s(v128.load64_zero(k + (<usize>i << 1)));
  if (idof<R>() == idof<Bf16Rows>()) return i32x4.shl(h, 16);
  return f32x4.mul(v128.and(i32x4.shl(h, 13), vconst(F16_SIGNED_MAG)), vconst(F16_REBIAS));
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

// The 16 codes (bytes) of each of four channels' rows a, b, c, d, byte i of a row holding token
// t0 + step·i, decoded and stored as token rows of tile (channels c0 … c0 + 3; scales s, minima m
// per channel in lanes), turned forward when rope ≠ 0: the bytes are transposed first (two rounds of
// interleaves give each token's four codes in one i32 lane group), so a vector of four tokens'
// codes costs four shuffles where transposing the decoded f32 cost sixteen.
// @ts-ignore: decorator
@inline function _tokens16(
  a: v128,
  b: v128,
  c: v128,
  e: v128,
  s: v128,
  m: v128,
  row: usize,
  rowStep: usize,
  turn: bool,
  rope: usize,
  ropeStep: usize,
  dBytes: usize,
): void {
  const ab0 = i8x16.shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const ab1 = i8x16.shuffle(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const ce0 = i8x16.shuffle(c, e, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const ce1 = i8x16.shuffle(c, e, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  _tokens4(i16x8.shuffle(ab0, ce0, 0, 8, 1, 9, 2, 10, 3, 11), s, m, row, rowStep, turn, rope, ropeStep, dBytes);
  _tokens4(i16x8.shuffle(ab0, ce0, 4, 12, 5, 13, 6, 14, 7, 15), s, m, row + 4 * rowStep, rowStep, turn, rope + 4 * ropeStep, ropeStep, dBytes);
  _tokens4(i16x8.shuffle(ab1, ce1, 0, 8, 1, 9, 2, 10, 3, 11), s, m, row + 8 * rowStep, rowStep, turn, rope + 8 * ropeStep, ropeStep, dBytes);
  _tokens4(i16x8.shuffle(ab1, ce1, 4, 12, 5, 13, 6, 14, 7, 15), s, m, row + 12 * rowStep, rowStep, turn, rope + 12 * ropeStep, ropeStep, dBytes);
}

// Four tokens' four codes (bytes 4k … 4k + 3: token k), decoded, turned and stored.
// @ts-ignore: decorator
@inline function _tokens4(
  q: v128,
  s: v128,
  m: v128,
  row: usize,
  rowStep: usize,
  turn: bool,
  rope: usize,
  ropeStep: usize,
  dBytes: usize,
): void {
  const lo = i16x8.extend_low_i8x16_u(q), hi = i16x8.extend_high_i8x16_u(q);
  let x0 = affine(i32x4.extend_low_i16x8_u(lo), s, m);
  let x1 = affine(i32x4.extend_high_i16x8_u(lo), s, m);
  let x2 = affine(i32x4.extend_low_i16x8_u(hi), s, m);
  let x3 = affine(i32x4.extend_high_i16x8_u(hi), s, m);
  _turnStore4(x0, x1, x2, x3, row, rowStep, turn, rope, ropeStep, dBytes);
}

// Four decoded token rows' four channels turned forward when turn (their offsets' rows of the
// table at rope, ropeStep bytes apart) and stored rowStep bytes apart.
// @ts-ignore: decorator
@inline function _turnStore4(
  x0: v128,
  x1: v128,
  x2: v128,
  x3: v128,
  row: usize,
  rowStep: usize,
  turn: bool,
  rope: usize,
  ropeStep: usize,
  dBytes: usize,
): void {
  if (turn) {
    x0 = _turn(x0, v128.load(rope), v128.load(rope + dBytes));
    x1 = _turn(x1, v128.load(rope + ropeStep), v128.load(rope + ropeStep + dBytes));
    x2 = _turn(x2, v128.load(rope + 2 * ropeStep), v128.load(rope + 2 * ropeStep + dBytes));
    x3 = _turn(x3, v128.load(rope + 3 * ropeStep), v128.load(rope + 3 * ropeStep + dBytes));
  }
  v128.store(row, x0);
  v128.store(row + rowStep, x1);
  v128.store(row + 2 * rowStep, x2);
  v128.store(row + 3 * rowStep, x3);
}

// The header words of four channel rows' groups (at p, stride bytes apart) in the lanes of a vector.
// @ts-ignore: decorator
@inline function _headers4(p: usize, stride: usize): v128 {
  let h = i32x4.splat(load<i32>(p));
  h = i32x4.replace_lane(h, 1, load<i32>(p + stride));
  h = i32x4.replace_lane(h, 2, load<i32>(p + 2 * stride));
  return i32x4.replace_lane(h, 3, load<i32>(p + 3 * stride));
}

/**
 * Decodes group g of every channel of a channel-major int4 or int8 key block (fastIntGroup shapes:
 * G codes in whole 16-byte chunks after each group's header word) straight into token rows
 * (tile: [G][d] f32), four channels at a time, turning each row forward by its offset when
 * rope ≠ 0 (the token-major table, _ropeTile). Every element is FORMAT.md's f32(f32(code·s) + m),
 * as decodeIntGroup gives it.
 */
// @ts-ignore: decorator
@inline function _decodeChannelTile(
  kPtr: usize,
  b: i32,
  G: i32,
  wpg: i32,
  perChannel: i32,
  g: i32,
  d: i32,
  tile: usize,
  turn: bool,
  rope: usize,
): void {
  const dBytes = <usize>d << 2, stride = <usize>(perChannel * wpg) << 2;
  const chunks = (wpg - 1) >> 2;
  const mask = vconst(U32_0F0F0F0F);
  // b = 4: byte i of a chunk holds tokens 2i (low nibble) and 2i + 1 (high); b = 8: token i
  const tokStep: usize = b == 4 ? 2 : 1;
  const rowStep = tokStep * dBytes, ropeStep = tokStep * 2 * dBytes;
  for (let c = 0; c < d; c += 4) {
    const p0 = kPtr + (<usize>(g * wpg) << 2) + <usize>c * stride;
    const h = _headers4(p0, stride);
    const s = headerScales(h), m = headerMinima(h);
    const out = tile + (<usize>c << 2), rc = rope + (<usize>c << 2);
    for (let j = 0; j < chunks; j++) {
      const at = p0 + 4 + (<usize>j << 4);
      const v0 = v128.load(at), v1 = v128.load(at + stride);
      const v2 = v128.load(at + 2 * stride), v3 = v128.load(at + 3 * stride);
      if (b == 4) {
        const t0 = <usize>(j << 5);
        const row = out + t0 * dBytes, rp = rc + t0 * 2 * dBytes;
        _tokens16(
          v128.and(v0, mask), v128.and(v1, mask), v128.and(v2, mask), v128.and(v3, mask),
          s, m, row, rowStep, turn, rp, ropeStep, dBytes,
        );
        _tokens16(
          v128.and(i16x8.shr_u(v0, 4), mask), v128.and(i16x8.shr_u(v1, 4), mask),
          v128.and(i16x8.shr_u(v2, 4), mask), v128.and(i16x8.shr_u(v3, 4), mask),
          s, m, row + dBytes, rowStep, turn, rp + 2 * dBytes, ropeStep, dBytes,
        );
      } else {
        const t0 = <usize>(j << 4);
        _tokens16(
          v0, v1, v2, v3, s, m, out + t0 * dBytes, rowStep, turn, rc + t0 * 2 * dBytes, ropeStep,
          dBytes,
        );
      }
    }
  }
}

// Four channels' decoded codes of four tokens (a, b, c, e: one channel each, tokens in lanes, exact
// f32 codes) transposed into the tokens' rows, scaled (s, m: the channels' scales and minima in
// lanes; f32(f32(q·s) + m)), turned forward when turn, and stored.
// @ts-ignore: decorator
@inline function _rows4(
  a: v128,
  b: v128,
  c: v128,
  e: v128,
  s: v128,
  m: v128,
  row: usize,
  dBytes: usize,
  turn: bool,
  rope: usize,
): void {
  const t0 = i32x4.shuffle(a, b, 0, 4, 1, 5), t1 = i32x4.shuffle(a, b, 2, 6, 3, 7);
  const t2 = i32x4.shuffle(c, e, 0, 4, 1, 5), t3 = i32x4.shuffle(c, e, 2, 6, 3, 7);
  const x0 = f32x4.add(f32x4.mul(i64x2.shuffle(t0, t2, 0, 2), s), m);
  const x1 = f32x4.add(f32x4.mul(i64x2.shuffle(t0, t2, 1, 3), s), m);
  const x2 = f32x4.add(f32x4.mul(i64x2.shuffle(t1, t3, 0, 2), s), m);
  const x3 = f32x4.add(f32x4.mul(i64x2.shuffle(t1, t3, 1, 3), s), m);
  _turnStore4(x0, x1, x2, x3, row, dBytes, turn, rope, 2 * dBytes, dBytes);
}

/**
 * Decodes group g of every channel of a channel-major int block of any width b whose groups take
 * eight-code steps (G a multiple of 8; at least 12 code bytes, decodeIntCodes' windows, or b = 2,
 * a word per step) straight into token rows (tile: [G][d] f32), four channels at a time, turning
 * each row forward by its offset when turn. Every element is FORMAT.md's f32(f32(code·s) + m), as
 * decodeIntGroup gives it.
 */
// @ts-ignore: decorator
@inline function _decodeChannelTileBits(
  ptr: usize,
  b: i32,
  G: i32,
  wpg: i32,
  perChannel: i32,
  g: i32,
  d: i32,
  tile: usize,
  turn: bool,
  rope: usize,
): void {
  const dBytes = <usize>d << 2, stride = <usize>(perChannel * wpg) << 2;
  const codeBytes = (wpg - 1) << 2;
  const tb = chunkTables(b);
  const sw0 = v128.load(tb), sw1 = v128.load(tb, 16);
  const mk0 = v128.load(tb, 32), mk1 = v128.load(tb, 48);
  const p0 = v128.load(tb, 64), p1 = v128.load(tb, 80);
  for (let c = 0; c < d; c += 4) {
    const h0 = ptr + (<usize>(g * wpg) << 2) + <usize>c * stride;
    const h = _headers4(h0, stride);
    const s = headerScales(h), m = headerMinima(h);
    const out = tile + (<usize>c << 2), rc = rope + (<usize>c << 2);
    for (let i = 0, kb = 0; i < G; i += 8, kb += b) {
      // int2: the word holding the eight codes' two bytes (codes never straddle); wider codes: 16
      // bytes ending at the group's last code byte at the latest (≥ 12 code bytes, so from ≥ −4)
      const from = b == 2 ? kb & ~3 : min(kb, codeBytes - 16);
      const shift = i8x16.splat(<i8>(kb - from));
      const x0 = i8x16.add(sw0, shift), x1 = i8x16.add(sw1, shift);
      const at = h0 + <usize>(from + 4);
      let v0: v128, v1: v128, v2: v128, v3: v128;
      if (b == 2) {
        v0 = v128.load32_zero(at);
        v1 = v128.load32_zero(at + stride);
        v2 = v128.load32_zero(at + 2 * stride);
        v3 = v128.load32_zero(at + 3 * stride);
      } else {
        v0 = v128.load(at);
        v1 = v128.load(at + stride);
        v2 = v128.load(at + 2 * stride);
        v3 = v128.load(at + 3 * stride);
      }
      // the codes of tokens i … i + 3 and i + 4 … i + 7 as exact f32 (q·2^off · 2^−off)
      const lo0 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v0, x0), mk0)), p0);
      const lo1 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v1, x0), mk0)), p0);
      const lo2 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v2, x0), mk0)), p0);
      const lo3 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v3, x0), mk0)), p0);
      const hi0 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v0, x1), mk1)), p1);
      const hi1 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v1, x1), mk1)), p1);
      const hi2 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v2, x1), mk1)), p1);
      const hi3 = f32x4.mul(f32x4.convert_i32x4_s(v128.and(i8x16.swizzle(v3, x1), mk1)), p1);
      const row = out + <usize>i * dBytes, rp = rc + <usize>i * 2 * dBytes;
      _rows4(lo0, lo1, lo2, lo3, s, m, row, dBytes, turn, rp);
      _rows4(hi0, hi1, hi2, hi3, s, m, row + 4 * dBytes, dBytes, turn, rp + 8 * dBytes);
    }
  }
}

// Channel group g of a channel-major block (d channel rows of perChannel groups) decoded into tile
// as G token rows of d f32, turned forward by each token's offset when rope ≠ 0 (keys before RoPE):
// int4 and int8 groups in whole 16-byte chunks decoded, turned and transposed in registers, other
// formats decoded channel by channel into work ([d][G] f32), then transposed.
// @ts-ignore: decorator
@inline function _channelTile(
  ptr: usize,
  kind: i32,
  b: i32,
  G: i32,
  wpg: i32,
  scaled: i32,
  perChannel: i32,
  g: i32,
  d: i32,
  work: usize,
  tile: usize,
  rope: usize,
): void {
  if (kind == KIND_INT && (b == 4 || b == 8) && fastIntGroup(b, G)) {
    // the turn as a constant in each inlined copy, so the copy without it has no branch
    if (rope != 0) _decodeChannelTile(ptr, b, G, wpg, perChannel, g, d, tile, true, rope);
    else _decodeChannelTile(ptr, b, G, wpg, perChannel, g, d, tile, false, 0);
    return;
  }
  if (kind == KIND_INT && (G & 7) == 0 && (wpg >= 4 || b == 2)) {
    if (rope != 0) _decodeChannelTileBits(ptr, b, G, wpg, perChannel, g, d, tile, true, rope);
    else _decodeChannelTileBits(ptr, b, G, wpg, perChannel, g, d, tile, false, 0);
    return;
  }
  const gBytes = <usize>G << 2;
  for (let c = 0; c < d; c++) {
    const src = ptr + (<usize>((c * perChannel + g) * wpg) << 2);
    decodeRun(kind, b, G, wpg, scaled, src, G, work + <usize>c * gBytes);
  }
  _transposeRows(work, G, d, tile);
  if (rope != 0) _ropeTile(tile, G, d, rope);
}

// acc_h += Σ_t w_{h,t} v_t over n decoded value rows (d f32 each, at rows) for hq heads (acc rows
// dB bytes apart, weights at w + 4·t with heads nB bytes apart): two tokens and four heads per pass
// when the heads come in fours, else one token and head at a time.
// @ts-ignore: decorator
@inline function _axpyRows(
  acc: usize,
  rows: usize,
  n: i32,
  d: i32,
  hq: i32,
  w: usize,
  nB: usize,
): void {
  const dB = <usize>d << 2;
  let t = 0;
  if ((hq & 3) == 0) {
    for (; t + 2 <= n; t += 2) {
      const v0 = rows + <usize>t * dB;
      for (let h = 0; h < hq; h += 4) {
        _axpy4x2(acc + <usize>h * dB, dB, w + <usize>h * nB + (<usize>t << 2), nB, v0, v0 + dB, d);
      }
    }
  }
  for (; t < n; t++) {
    for (let h = 0; h < hq; h++) {
      _axpy(acc + <usize>h * dB, load<f32>(w + <usize>h * nB + (<usize>t << 2)), rows + <usize>t * dB, d);
    }
  }
}

// Transposes rows ([d][G] f32, channel rows of G tokens) into tile ([G][d], token rows of d
// channels) in blocks of 4 × 4 (d and G multiples of 4): unpack pairs of rows, then pairs of pairs.
// @ts-ignore: decorator
@inline function _transposeRows(rows: usize, G: i32, d: i32, tile: usize): void {
  const gBytes = <usize>G << 2, dBytes = <usize>d << 2;
  for (let c = 0; c < d; c += 4) {
    const r = rows + <usize>c * gBytes;
    const o = tile + (<usize>c << 2);
    for (let t: usize = 0; t < gBytes; t += 16) {
      const r0 = v128.load(r + t), r1 = v128.load(r + gBytes + t);
      const r2 = v128.load(r + 2 * gBytes + t), r3 = v128.load(r + 3 * gBytes + t);
      const t0 = i32x4.shuffle(r0, r1, 0, 4, 1, 5), t1 = i32x4.shuffle(r0, r1, 2, 6, 3, 7);
      const t2 = i32x4.shuffle(r2, r3, 0, 4, 1, 5), t3 = i32x4.shuffle(r2, r3, 2, 6, 3, 7);
      const at = o + (t >> 2) * dBytes; // t counts bytes, so t / 4 is the first token
      v128.store(at, i64x2.shuffle(t0, t2, 0, 2));
      v128.store(at + dBytes, i64x2.shuffle(t0, t2, 1, 3));
      v128.store(at + 2 * dBytes, i64x2.shuffle(t1, t3, 0, 2));
      v128.store(at + 3 * dBytes, i64x2.shuffle(t1, t3, 1, 3));
    }
  }
}

// Scores of n token rows (f32, d each, at keys) for hq query heads at q, stored at dst + 4·t with
// heads nB bytes apart: the token axis's loops (two tokens per pass, four heads at a time when hq
// is a multiple of 4, else one; a last odd token alone). Every loop sums a score in one order.
// @ts-ignore: decorator
@inline function _scoreRows(
  q: usize,
  keys: usize,
  n: i32,
  d: i32,
  hq: i32,
  dst: usize,
  nB: usize,
): void {
  const dBytes = <usize>d << 2;
  let t = 0;
  for (; t + 2 <= n; t += 2) {
    const k0 = keys + <usize>t * dBytes, at = dst + (<usize>t << 2);
    if ((hq & 3) == 0) {
      for (let h = 0; h < hq; h += 4) {
        const qh = q + <usize>h * dBytes;
        _score4x2<F32Rows>(qh, dBytes, k0, k0 + dBytes, d, at + <usize>h * nB, nB);
      }
    } else {
      for (let h = 0; h < hq; h++) _score1x2(q + <usize>h * dBytes, k0, k0 + dBytes, d, at + <usize>h * nB);
    }
  }
  for (; t < n; t++) {
    const k = keys + <usize>t * dBytes;
    for (let h = 0; h < hq; h++) {
      store<f32>(dst + <usize>h * nB + (<usize>t << 2), _scoreDot(q + <usize>h * dBytes, k, d));
    }
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
  const intShape = (flags & FLAG_INTDOT) != 0 && (d & 31) == 0 && (cap & 3) == 0 && cap <= 256;
  // Values token-axis int2/4/8 g32 take integer sums whenever served, whatever the keys' path: the
  // weights are the f32 softmax of step 2 either way, which core/cache (int_dot.ts and the exact
  // scores of kernel_score.ts) reproduces bit for bit. Keys take the integer path only with such
  // values, token-axis (integer query) or channel-axis (i16 q·s per channel and token group), and
  // not when stored before RoPE (ropePtr ≠ 0: turned forward after decoding, the exact path).
  const intV = intShape && intDotFormat(vKind, vBits, vG, vChannel);
  const intK = intV && ropePtr == 0;
  const intKeys = intK && intDotFormat(kKind, kBits, kG, kChannel);
  const intKeysChannel = intK && kChannel != 0 && kBits != 2 && intDotFormat(kKind, kBits, kG, 0) &&
    d <= 256 && (n & 31) == 0 && (cap & 31) == 0;
  const intValuesOn = intV;
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
    // one token group at a time: its d channel rows decoded into work ([d][G] f32), turned forward
    // for keys stored before RoPE, then transposed into tile ([G][d], token rows), which the token
    // axis's score loops read as they read FP32 keys: four heads per loaded chunk, two tokens at a
    // time, so each key vector serves four heads and each query vector two tokens. (Scoring the
    // channel rows in place, four tokens in lanes and eight sums over c mod 8 per head, loaded each
    // key vector once per head, twice the loads per multiply-add of FP32's loop; one running sum per
    // head over all d channels had lost up to 1.6e-6 of the output against the f64 reference.)
    const groups = n / kG, perChannel = cap / kG;
    const tile = work + <usize>(d * kG) * 4;
    for (let g = 0; g < groups; g++) {
      // keys before RoPE: q·R(p0 + τ)k̂ = (R(−p0)q)·(R(τ)k̂), the query turned by the group's start
      // angle (hq·d products) and the keys by their offset (a table that stays in cache)
      let qs = qPtr;
      if (ropePtr != 0) {
        const p0 = load<i32>(startsPtr + (<usize>g << 2));
        _ropeQuery(qPtr, rq, hq, d, positionsPtr + (<usize>(p0 * d) << 2));
        qs = rq;
      }
      _channelTile(kPtr, kKind, kBits, kG, kWpg, kScaled, perChannel, g, d, work, tile, ropePtr);
      _scoreRows(qs, tile, kG, d, hq, sc + (<usize>(g * kG) << 2), nBytes);
    }
  } else {
    const tokenBytes = <usize>(kKind == KIND_FP32 ? d : (d / kG) * kWpg) << 2;
    // fp16 / bf16 keys in fours of heads: each half row converted in registers as it is scored
    const halfKeys = (kKind == KIND_FP16 || kKind == KIND_BF16) && blocked;
    let t = 0;
    for (; t + 2 <= n; t += 2) {
      let k0 = kPtr + <usize>t * tokenBytes, k1 = k0 + tokenBytes;
      if (halfKeys) {
        const at = sc + (<usize>t << 2);
        for (let h = 0; h < hq; h += 4) {
          const qh = qPtr + <usize>h * dBytes, dst = at + <usize>h * nBytes;
          if (kKind == KIND_FP16) _score4x2<Fp16Rows>(qh, dBytes, k0, k1, d, dst, nBytes);
          else _score4x2<Bf16Rows>(qh, dBytes, k0, k1, d, dst, nBytes);
        }
        continue;
      }
      if (kKind != KIND_FP32) {
        _decodeRow(kKind, kBits, kG, kWpg, kScaled, k0, d, row);
        _decodeRow(kKind, kBits, kG, kWpg, kScaled, k1, d, row1);
        k0 = row;
        k1 = row1;
      }
      const at = sc + (<usize>t << 2);
      if (blocked) {
        for (let h = 0; h < hq; h += 4) {
          const qh = qPtr + <usize>h * dBytes;
          _score4x2<F32Rows>(qh, dBytes, k0, k1, d, at + <usize>h * nBytes, nBytes);
        }
      } else {
        for (let h = 0; h < hq; h++) _score1x2(qPtr + <usize>h * dBytes, k0, k1, d, at + <usize>h * nBytes);
      }
    }
    for (; t < n; t++) {
      let k = kPtr + <usize>t * tokenBytes;
      if (kKind != KIND_FP32) {
        _decodeRow(kKind, kBits, kG, kWpg, kScaled, k, d, row);
        k = row;
      }
      for (let h = 0; h < hq; h++) {
        store<f32>(sc + (<usize>(h * n + t) << 2), _scoreDot(qPtr + <usize>h * dBytes, k, d));
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
    // eight weights per step: two independent exp chains in flight, where one chain's latency
    // (≈ 50 cycles of dependent multiplies and adds) had left the FP units idle; l sums the
    // weights in the same order as four at a time
    let t = 0;
    for (; t + 8 <= n4; t += 8) {
      const p = row0 + (<usize>t << 2);
      const w = _expv(f32x4.sub(f32x4.mul(v128.load(p), invv), mvs));
      const w1 = _expv(f32x4.sub(f32x4.mul(v128.load(p, 16), invv), mvs));
      v128.store(p, w);
      v128.store(p, w1, 16);
      l0 = f64x2.add(l0, f64x2.promote_low_f32x4(w));
      l1 = f64x2.add(l1, f64x2.promote_low_f32x4(i32x4.shuffle(w, w, 2, 3, 0, 1)));
      l0 = f64x2.add(l0, f64x2.promote_low_f32x4(w1));
      l1 = f64x2.add(l1, f64x2.promote_low_f32x4(i32x4.shuffle(w1, w1, 2, 3, 0, 1)));
    }
    if (t < n4) {
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
    // VALUE_CHUNK tokens at a time in f32, each chunk's sums added into acc64
    const tokenBytes = <usize>(vKind == KIND_FP32 ? d : (d / vG) * vWpg) << 2;
    const vTile = work + <usize>(d * vG) * 4;
    memory.fill(acc, 0, <usize>(hq * d) << 2);
    memory.fill(acc64, 0, <usize>(hq * d) << 3);
    for (let t0 = 0; t0 < n; t0 += VALUE_CHUNK) {
      const t1 = min(n, t0 + VALUE_CHUNK);
      if (t0 > 0) memory.fill(acc, 0, <usize>(hq * d) << 2);
      if (vChannel != 0) {
        // one token group at a time decoded into token rows (VALUE_CHUNK is a multiple of every
        // group), summed as FP32 rows are: one G-token dot per channel and head had made channel-
        // axis values attend 2–3× slower than FP32 ones
        for (let t = t0; t < t1; t += vG) {
          _channelTile(vPtr, vKind, vBits, vG, vWpg, vScaled, cap / vG, t / vG, d, work, vTile, 0);
          _axpyRows(acc, vTile, vG, d, hq, sc + (<usize>t << 2), nBytes);
        }
      } else {
        let t = t0;
        if (blocked) {
          for (; t + 2 <= t1; t += 2) {
            let v0 = vPtr + <usize>t * tokenBytes, v1 = v0 + tokenBytes;
            if (vKind != KIND_FP32) {
              _decodeRow(vKind, vBits, vG, vWpg, vScaled, v0, d, row);
              _decodeRow(vKind, vBits, vG, vWpg, vScaled, v1, d, row1);
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
            _decodeRow(vKind, vBits, vG, vWpg, vScaled, v, d, row);
            v = row;
          }
          for (let h = 0; h < hq; h++) {
            _axpy(acc + <usize>h * dBytes, load<f32>(sc + (<usize>(h * n + t) << 2)), v, d);
          }
        }
      }
      for (let i = 0; i < hq * d; i++) {
        const a = acc64 + (<usize>i << 3);
        store<f64>(a, load<f64>(a) + <f64>load<f32>(acc + (<usize>i << 2)));
      }
    }
    sumsF64 = true;
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
    // the larger side's factor is e^0 = 1 (Math.exp(0) is exactly 1): one exp per head and page
    const ea = mo >= mp ? 1.0 : Math.exp(mo - m), eb = mp >= mo ? 1.0 : Math.exp(mp - m);
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

