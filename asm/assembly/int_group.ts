// One asymmetric int group decoded to f32 (FORMAT.md "Integer formats, asymmetric"), shared by the
// codec kernel (int.ts decodeInt) and the fused attention (attention.ts), so both decode alike:
// x̂ = f32(f32(code·s) + m), f32x4.mul then f32x4.add, never fused.

import {
  F16_EXP_BOTH,
  F16_EXP_HI,
  F16_EXP_LO,
  F16_MAG_HI_SHIFTED,
  F16_MAG_LO,
  F16_REBIAS,
  F16_SIGN_LO,
  F32_SIGN,
  U32_00030003,
  U32_0F0F0F0F,
  vconst,
} from "./consts";
import { f16ToF32 } from "./f16";

/** Whether decodeIntGroup has a SIMD path for b-bit groups of G codes. */
// @ts-ignore: decorator
@inline export function fastIntGroup(b: i32, G: i32): bool {
  const codeWords = (G * b + 31) >> 5;
  return ((codeWords & 3) == 0 && (b == 8 || b == 4)) || (b == 2 && G >= 16);
}

// x̂ = f32(f32(c·s) + m) for four codes (each below 2^31, at most 255 here). The signed conversion
// gives the same floats as the unsigned one and is one cvtdq2ps on x86, where V8 lowers
// f32x4.convert_i32x4_u to about eight instructions (no unsigned conversion before AVX-512).
// @ts-ignore: decorator
@inline export function affine(codes: v128, s: v128, m: v128): v128 {
  return f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(codes), s), m);
}

// Stores 16 decoded values from 16 u8 codes (bytes of c).
// @ts-ignore: decorator
@inline function _store16(dst: usize, c: v128, s: v128, m: v128): void {
  const lo = i16x8.extend_low_i8x16_u(c), hi = i16x8.extend_high_i8x16_u(c);
  v128.store(dst, affine(i32x4.extend_low_i16x8_u(lo), s, m));
  v128.store(dst + 16, affine(i32x4.extend_high_i16x8_u(lo), s, m));
  v128.store(dst + 32, affine(i32x4.extend_low_i16x8_u(hi), s, m));
  v128.store(dst + 48, affine(i32x4.extend_high_i16x8_u(hi), s, m));
}

// Decodes one asymmetric int group of G codes (b bits, header word first) into dst. The SIMD
// paths (fastIntGroup) serve b = 4 and 8 in whole 16-byte chunks and b = 2 in whole words; other
// shapes take a scalar bit-stream loop.
// @ts-ignore: decorator
@inline export function decodeIntGroup(src: usize, G: i32, b: i32, codeWords: i32, dst: usize): void {
  const hdr = load<u32>(src);
  let sc: f32, mn: f32;
  if ((hdr & 0x7c00) != 0x7c00 && (hdr & 0x7c000000) != 0x7c000000) {
    // finite halves (always, for headers the encoder wrote): exponent and mantissa moved into f32
    // position, then ×2^112 rebias the exponent, exact for normals and subnormals alike
    sc = reinterpret<f32>(((hdr & 0x7fff) << 13) | ((hdr & 0x8000) << 16)) * 5.192296858534828e33;
    mn = reinterpret<f32>(((hdr >>> 3) & 0x0fffe000) | (hdr & 0x80000000)) * 5.192296858534828e33;
  } else {
    sc = f16ToF32(hdr & 0xffff);
    mn = f16ToF32(hdr >>> 16);
  }
  decodeIntCodes(src + 4, G, b, codeWords, dst, sc, mn);
}

// Tables of the eight-code steps of decodeIntCodes, int.ts decodeInt and attention.ts's channel
// tiles for b = 1 … 8 bits, 96 bytes each, built on first use. Code k of eight lives in bytes
// ⌊k·b/8⌋, ⌊k·b/8⌋ + 1 at bit offset off = k·b mod 8 (eight codes span exactly b bytes): two
// swizzle vectors (lane k takes the first byte and, when code k straddles, the next; index 16
// zeroes a byte), two masks qmax << off and two vectors of 2^−off.
const CHUNK_TABLES = memory.data(96 * 9, 16);
let chunkTablesBuilt: u32 = 0;

// @ts-ignore: decorator
@inline export function chunkTables(b: i32): usize {
  const at = CHUNK_TABLES + <usize>(96 * b);
  if ((chunkTablesBuilt & (<u32>1 << b)) == 0) {
    for (let k = 0; k < 8; k++) {
      const byte = (k * b) >> 3, off = (k * b) & 7;
      const sw = at + (<usize>k << 2);
      store<u8>(sw, <u8>byte);
      store<u8>(sw, <u8>(off + b > 8 ? byte + 1 : 16), 1);
      store<u8>(sw, 16, 2);
      store<u8>(sw, 16, 3);
      store<u32>(at + 32 + (<usize>k << 2), <u32>((1 << b) - 1) << off);
      store<f32>(at + 64 + (<usize>k << 2), reinterpret<f32>(<u32>(127 - off) << 23)); // 2^−off
    }
    chunkTablesBuilt |= <u32>1 << b;
  }
  return at;
}

// Decodes the G codes at `codes` of one group whose scale and minimum are sc, mn.
// @ts-ignore: decorator
@inline export function decodeIntCodes(
  codes: usize,
  G: i32,
  b: i32,
  codeWords: i32,
  dst: usize,
  sc: f32,
  mn: f32,
): void {
  if ((codeWords & 3) == 0 && (b == 8 || b == 4)) {
    decodeWideCodes(codes, b, codeWords, dst, f32x4.splat(sc), f32x4.splat(mn));
    return;
  }
  if (b == 2 && G >= 16) {
    // one word = 16 codes: repeat each byte 4×, move field j of each byte to bits 6..7 (×4^(3−j)
    // in 16-bit lanes), shift down, mask
    const s = f32x4.splat(sc), m = f32x4.splat(mn);
    const rep = i8x16(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const mul = i16x8(64, 16, 4, 1, 64, 16, 4, 1);
    const three = vconst(U32_00030003);
    for (let w = 0; w < codeWords; w++) {
      const bytes = i8x16.swizzle(i32x4.splat(load<i32>(codes + (<usize>w << 2))), rep);
      const a = v128.and(i16x8.shr_u(i16x8.mul(i16x8.extend_low_i8x16_u(bytes), mul), 6), three);
      const c = v128.and(i16x8.shr_u(i16x8.mul(i16x8.extend_high_i8x16_u(bytes), mul), 6), three);
      const out = dst + (<usize>w << 6);
      v128.store(out, affine(i32x4.extend_low_i16x8_u(a), s, m));
      v128.store(out + 16, affine(i32x4.extend_high_i16x8_u(a), s, m));
      v128.store(out + 32, affine(i32x4.extend_low_i16x8_u(c), s, m));
      v128.store(out + 48, affine(i32x4.extend_high_i16x8_u(c), s, m));
    }
    return;
  }
  const codeBytes = codeWords << 2;
  if ((G & 7) == 0 && codeBytes >= 12) {
    // eight codes (b bytes) per step, as the codec kernel (int.ts decodeInt) takes them: each
    // code's one or two bytes swizzled into a lane, masked in place (q·2^off), then times s·2^−off,
    // exact. The 16 bytes loaded stay inside the group: the last steps load the window that ends
    // at its last code byte (which starts in its header when the codes are only 12 bytes) and
    // shift the byte indices by as much. (One code at a time had made int3/int5/int6 pages attend
    // 5.5–6.8× slower than FP32 ones.)
    const t = chunkTables(b);
    const sw0 = v128.load(t), sw1 = v128.load(t, 16);
    const mk0 = v128.load(t, 32), mk1 = v128.load(t, 48);
    const m = f32x4.splat(mn), s = f32x4.splat(sc);
    const s0 = f32x4.mul(s, v128.load(t, 64)), s1 = f32x4.mul(s, v128.load(t, 80));
    for (let i = 0, kb = 0; i < G; i += 8, kb += b) {
      const from = min(kb, codeBytes - 16); // ≥ −4: at most the header's bytes
      const shift = i8x16.splat(<i8>(kb - from));
      const v = v128.load(codes - 4 + <usize>(from + 4));
      const a = v128.and(i8x16.swizzle(v, i8x16.add(sw0, shift)), mk0);
      const c = v128.and(i8x16.swizzle(v, i8x16.add(sw1, shift)), mk1);
      const out = dst + (<usize>i << 2);
      v128.store(out, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(a), s0), m));
      v128.store(out, f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(c), s1), m), 16);
    }
    return;
  }
  // generic LSB-first bit stream (codes may straddle two words)
  const qmask: u32 = (<u32>1 << b) - 1;
  for (let i = 0; i < G; i++) {
    const bit = i * b, w = bit >>> 5, o = bit & 31;
    let c = load<u32>(codes + (<usize>w << 2)) >>> o;
    if (o + b > 32) c |= load<u32>(codes + (<usize>(w + 1) << 2)) << (32 - o);
    store<f32>(dst + (<usize>i << 2), <f32>(c & qmask) * sc + mn);
  }
}

// Decodes int4 or int8 codes in whole 16-byte chunks (codeWords a multiple of 4) with the scale
// and minimum already in every lane of s and m.
// @ts-ignore: decorator
@inline export function decodeWideCodes(
  codes: usize,
  b: i32,
  codeWords: i32,
  dst: usize,
  s: v128,
  m: v128,
): void {
  const mask = vconst(U32_0F0F0F0F);
  let out = dst;
  for (let w = 0; w < codeWords; w += 4) {
    const v = v128.load(codes + (<usize>w << 2));
    if (b == 8) {
      _store16(out, v, s, m);
      out += 64;
    } else {
      // byte k holds codes 2k (low nibble) and 2k+1 (high nibble): split, then interleave
      const lo = v128.and(v, mask), hi = v128.and(i16x8.shr_u(v, 4), mask);
      _store16(
        out,
        i8x16.shuffle(lo, hi, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
        s,
        m,
      );
      _store16(
        out + 64,
        i8x16.shuffle(lo, hi, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
        s,
        m,
      );
      out += 128;
    }
  }
}

// Scales (low halves) and minima (high halves) of four group headers, exact: finite halves by
// moving exponent and mantissa into f32 position and ×2^112, others by f16ToF32.
// @ts-ignore: decorator
@inline export function headerScales(h: v128): v128 {
  const e = vconst(F16_EXP_LO);
  if (v128.any_true(i32x4.eq(v128.and(h, e), e))) {
    let s = f32x4.splat(f16ToF32(i32x4.extract_lane(h, 0) & 0xffff));
    s = f32x4.replace_lane(s, 1, f16ToF32(i32x4.extract_lane(h, 1) & 0xffff));
    s = f32x4.replace_lane(s, 2, f16ToF32(i32x4.extract_lane(h, 2) & 0xffff));
    return f32x4.replace_lane(s, 3, f16ToF32(i32x4.extract_lane(h, 3) & 0xffff));
  }
  return finiteScales(h);
}
// headerScales for halves known finite.
// @ts-ignore: decorator
@inline export function finiteScales(h: v128): v128 {
  const bits = v128.or(
    i32x4.shl(v128.and(h, vconst(F16_MAG_LO)), 13),
    i32x4.shl(v128.and(h, vconst(F16_SIGN_LO)), 16),
  );
  return f32x4.mul(bits, vconst(F16_REBIAS));
}
// @ts-ignore: decorator
@inline export function headerMinima(h: v128): v128 {
  const e = vconst(F16_EXP_HI);
  if (v128.any_true(i32x4.eq(v128.and(h, e), e))) {
    let m = f32x4.splat(f16ToF32(<u32>i32x4.extract_lane(h, 0) >>> 16));
    m = f32x4.replace_lane(m, 1, f16ToF32(<u32>i32x4.extract_lane(h, 1) >>> 16));
    m = f32x4.replace_lane(m, 2, f16ToF32(<u32>i32x4.extract_lane(h, 2) >>> 16));
    return f32x4.replace_lane(m, 3, f16ToF32(<u32>i32x4.extract_lane(h, 3) >>> 16));
  }
  return finiteMinima(h);
}
// headerMinima for halves known finite.
// @ts-ignore: decorator
@inline export function finiteMinima(h: v128): v128 {
  const bits = v128.or(
    v128.and(i32x4.shr_u(h, 3), vconst(F16_MAG_HI_SHIFTED)),
    v128.and(h, vconst(F32_SIGN)),
  );
  return f32x4.mul(bits, vconst(F16_REBIAS));
}

// The scales of four headers stored at scalesDst and their minima returned, with one check of
// both halves for Inf/NaN (the hot loops decode a header vector per token or per four tokens).
// @ts-ignore: decorator
@inline export function headerPair(h: v128, scalesDst: usize): v128 {
  const e = vconst(F16_EXP_BOTH);
  if (v128.any_true(i16x8.eq(v128.and(h, e), e))) {
    v128.store(scalesDst, headerScales(h));
    return headerMinima(h);
  }
  v128.store(scalesDst, finiteScales(h));
  return finiteMinima(h);
}
