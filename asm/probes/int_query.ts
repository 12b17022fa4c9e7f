// Probe, not library code: K-side decode-attention scores for 4 query heads sharing one KV head,
// d = 128, over FP32 keys, over INT4 keys decoded exactly (what attention.ts does today), and over
// INT4 keys with the query rounded to i16 so that i32x4.dot_i16x8_s does 8 multiply-adds per
// instruction (core/cache/PAGES.md, "The way under FP32"). Compiled and timed by
// bench/int_query_probe.ts. Key layout here: per token d/32 groups of [f32 s, f32 m, 16 code bytes].

@inline function hsum(s: v128): f32 {
  return (f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1)) + (f32x4.extract_lane(s, 2) + f32x4.extract_lane(s, 3));
}
@inline function hsumi(s: v128): i32 {
  return (i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1)) + (i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3));
}
// q: 4 heads × d f32; k: T × d f32; out: 4 × T
export function scoreF32(q: usize, k: usize, T: i32, d: i32, out: usize, stride: i32): void {
  const dB = <usize>d << 2, nB = <usize>stride << 2;
  for (let t = 0; t < T; t += 2) {
    const k0 = k + <usize>t * dB, k1 = k0 + dB;
    let a0 = f32x4.splat(0), b0 = f32x4.splat(0), a1 = f32x4.splat(0), b1 = f32x4.splat(0);
    let a2 = f32x4.splat(0), b2 = f32x4.splat(0), a3 = f32x4.splat(0), b3 = f32x4.splat(0);
    for (let i = 0; i < d; i += 4) {
      const o = <usize>i << 2;
      const x = v128.load(k0 + o), y = v128.load(k1 + o);
      let qv = v128.load(q + o);
      a0 = f32x4.add(a0, f32x4.mul(qv, x)); b0 = f32x4.add(b0, f32x4.mul(qv, y));
      qv = v128.load(q + dB + o);
      a1 = f32x4.add(a1, f32x4.mul(qv, x)); b1 = f32x4.add(b1, f32x4.mul(qv, y));
      qv = v128.load(q + 2 * dB + o);
      a2 = f32x4.add(a2, f32x4.mul(qv, x)); b2 = f32x4.add(b2, f32x4.mul(qv, y));
      qv = v128.load(q + 3 * dB + o);
      a3 = f32x4.add(a3, f32x4.mul(qv, x)); b3 = f32x4.add(b3, f32x4.mul(qv, y));
    }
    const o = out + (<usize>t << 2);
    store<f32>(o, hsum(a0)); store<f32>(o + 4, hsum(b0));
    store<f32>(o + nB, hsum(a1)); store<f32>(o + nB + 4, hsum(b1));
    store<f32>(o + 2 * nB, hsum(a2)); store<f32>(o + 2 * nB + 4, hsum(b2));
    store<f32>(o + 3 * nB, hsum(a3)); store<f32>(o + 3 * nB + 4, hsum(b3));
  }
}
// packed: per token d/32 groups of [f32 s, f32 m, 16 bytes codes] (24 B); exact decode then scoreF32-like
export function scoreInt4Exact(q: usize, p: usize, T: i32, d: i32, out: usize, row: usize): void {
  const gpt = d >> 5, tokB = <usize>gpt * 24, dB = <usize>d << 2, nB = <usize>T << 2;
  const mask = i8x16.splat(0x0f);
  for (let t = 0; t < T; t += 2) {
    for (let u = 0; u < 2; u++) {
      const src = p + <usize>(t + u) * tokB, dst = row + <usize>u * dB;
      for (let g = 0; g < gpt; g++) {
        const gp = src + <usize>g * 24;
        const s = f32x4.splat(load<f32>(gp)), m = f32x4.splat(load<f32>(gp, 4));
        const v = v128.load(gp, 8);
        const lo = v128.and(v, mask), hi = v128.and(i16x8.shr_u(v, 4), mask);
        for (let half = 0; half < 2; half++) {
          const c = half == 0 ? i8x16.shuffle(lo, hi, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
                              : i8x16.shuffle(lo, hi, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
          const a = i16x8.extend_low_i8x16_u(c), b = i16x8.extend_high_i8x16_u(c);
          const o = dst + (<usize>(g * 32 + half * 16) << 2);
          v128.store(o, f32x4.add(f32x4.mul(f32x4.convert_i32x4_u(i32x4.extend_low_i16x8_u(a)), s), m));
          v128.store(o, f32x4.add(f32x4.mul(f32x4.convert_i32x4_u(i32x4.extend_high_i16x8_u(a)), s), m), 16);
          v128.store(o, f32x4.add(f32x4.mul(f32x4.convert_i32x4_u(i32x4.extend_low_i16x8_u(b)), s), m), 32);
          v128.store(o, f32x4.add(f32x4.mul(f32x4.convert_i32x4_u(i32x4.extend_high_i16x8_u(b)), s), m), 48);
        }
      }
    }
    scoreF32(q, row, 2, d, out + (<usize>t << 2), T);
  }
}
@inline function dot4(c0: v128, c1: v128, c2: v128, c3: v128, q: usize): v128 {
  return i32x4.add(i32x4.add(i32x4.dot_i16x8_s(c0, v128.load(q)), i32x4.dot_i16x8_s(c1, v128.load(q, 16))),
                   i32x4.add(i32x4.dot_i16x8_s(c2, v128.load(q, 32)), i32x4.dot_i16x8_s(c3, v128.load(q, 48))));
}
// qi: 4 heads × d i16 permuted per group; qv: 4 heads × f32x4 (lane g = Σq over group g / σ_h), d = 128; sig: 4 f32
export function scoreInt4IntQ(qi: usize, qv: usize, sig: usize, p: usize, T: i32, d: i32, out: usize): void {
  const gpt = d >> 5, tokB = <usize>gpt * 24, qB = <usize>d << 1, nB = <usize>T << 2;
  const mask = i8x16.splat(0x0f);
  const Q0 = v128.load(qv), Q1 = v128.load(qv, 16), Q2 = v128.load(qv, 32), Q3 = v128.load(qv, 48);
  for (let t = 0; t < T; t += 2) {
    const p0 = p + <usize>t * tokB, p1 = p0 + tokB;
    // minimum terms: lane g = μ_g (d = 128: four groups)
    let M0 = f32x4.splat(load<f32>(p0, 4)), M1 = f32x4.splat(load<f32>(p1, 4));
    M0 = f32x4.replace_lane(M0, 1, load<f32>(p0, 28)); M1 = f32x4.replace_lane(M1, 1, load<f32>(p1, 28));
    M0 = f32x4.replace_lane(M0, 2, load<f32>(p0, 52)); M1 = f32x4.replace_lane(M1, 2, load<f32>(p1, 52));
    M0 = f32x4.replace_lane(M0, 3, load<f32>(p0, 76)); M1 = f32x4.replace_lane(M1, 3, load<f32>(p1, 76));
    let a0 = f32x4.mul(M0, Q0), a1 = f32x4.mul(M0, Q1), a2 = f32x4.mul(M0, Q2), a3 = f32x4.mul(M0, Q3);
    let b0 = f32x4.mul(M1, Q0), b1 = f32x4.mul(M1, Q1), b2 = f32x4.mul(M1, Q2), b3 = f32x4.mul(M1, Q3);
    for (let g = 0; g < gpt; g++) {
      const g0 = p0 + <usize>g * 24, g1 = p1 + <usize>g * 24;
      const s0 = f32x4.splat(load<f32>(g0)), s1 = f32x4.splat(load<f32>(g1));
      const v = v128.load(g0, 8), w = v128.load(g1, 8);
      const vl = v128.and(v, mask), vh = v128.and(i16x8.shr_u(v, 4), mask);
      const wl = v128.and(w, mask), wh = v128.and(i16x8.shr_u(w, 4), mask);
      const c0 = i16x8.extend_low_i8x16_u(vl), c1 = i16x8.extend_high_i8x16_u(vl);
      const c2 = i16x8.extend_low_i8x16_u(vh), c3 = i16x8.extend_high_i8x16_u(vh);
      const e0 = i16x8.extend_low_i8x16_u(wl), e1 = i16x8.extend_high_i8x16_u(wl);
      const e2 = i16x8.extend_low_i8x16_u(wh), e3 = i16x8.extend_high_i8x16_u(wh);
      const qg = qi + (<usize>g << 6);
      a0 = f32x4.add(a0, f32x4.mul(f32x4.convert_i32x4_s(dot4(c0, c1, c2, c3, qg)), s0));
      b0 = f32x4.add(b0, f32x4.mul(f32x4.convert_i32x4_s(dot4(e0, e1, e2, e3, qg)), s1));
      a1 = f32x4.add(a1, f32x4.mul(f32x4.convert_i32x4_s(dot4(c0, c1, c2, c3, qg + qB)), s0));
      b1 = f32x4.add(b1, f32x4.mul(f32x4.convert_i32x4_s(dot4(e0, e1, e2, e3, qg + qB)), s1));
      a2 = f32x4.add(a2, f32x4.mul(f32x4.convert_i32x4_s(dot4(c0, c1, c2, c3, qg + 2 * qB)), s0));
      b2 = f32x4.add(b2, f32x4.mul(f32x4.convert_i32x4_s(dot4(e0, e1, e2, e3, qg + 2 * qB)), s1));
      a3 = f32x4.add(a3, f32x4.mul(f32x4.convert_i32x4_s(dot4(c0, c1, c2, c3, qg + 3 * qB)), s0));
      b3 = f32x4.add(b3, f32x4.mul(f32x4.convert_i32x4_s(dot4(e0, e1, e2, e3, qg + 3 * qB)), s1));
    }
    const o = out + (<usize>t << 2);
    store<f32>(o, hsum(a0) * load<f32>(sig)); store<f32>(o + 4, hsum(b0) * load<f32>(sig));
    store<f32>(o + nB, hsum(a1) * load<f32>(sig, 4)); store<f32>(o + nB + 4, hsum(b1) * load<f32>(sig, 4));
    store<f32>(o + 2 * nB, hsum(a2) * load<f32>(sig, 8)); store<f32>(o + 2 * nB + 4, hsum(b2) * load<f32>(sig, 8));
    store<f32>(o + 3 * nB, hsum(a3) * load<f32>(sig, 12)); store<f32>(o + 3 * nB + 4, hsum(b3) * load<f32>(sig, 12));
  }
}
