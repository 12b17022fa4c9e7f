/**
 * The WASM attention kernels' f32 arithmetic, for the TypeScript reference to take the same steps
 * (asm/assembly/attention.ts): scores q·k in f32, four lanes (lane j takes elements i ≡ j mod 4,
 * chunk after chunk), the lanes summed as (l0 + l1) + (l2 + l3), then times f32(1/√d)
 * (`_score4x2`, `_score1x2`, `_scoreDot`); and the softmax weights' Cephes exp (`_expv`), which
 * core/cache/partial.ts and core/cache/int_dot.ts use. With them the reference and the kernels
 * agree to the last bit of every score and weight: a score of the fixture model reaches 237, where
 * one f32 ulp is 1.5e-5, and an f64 reference had differed from the kernels by up to 1.6e-5 of the
 * attention output (the f32 score's own rounding, which no f32 kernel avoids). Exact attention in
 * f64 stays with the FP32 foundation cache (core/model/kv_cache.ts), against which the quality
 * figures are measured.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { kernelScale, kernelScore } from "./kernel_score.ts";
 * const q = Float32Array.of(1, 2, 3, 4), k = Float32Array.of(1, 1, 1, 1);
 * if (kernelScore(q, 0, k, 0, 4, kernelScale(4)) !== 5) throw new Error("(1 + 2 + 3 + 4) / 2");
 * ```
 * @module
 */

const fr = Math.fround;

/**
 * The kernels' 1/√d: the f64 quotient rounded to f32.
 * @param d head dimension
 * @returns f32(1/√d)
 */
export function kernelScale(d: number): number {
  return fr(1 / Math.sqrt(d));
}

/**
 * One score q·k/√d in the kernels' f32 steps (for d not a multiple of 4, which no kernel takes,
 * the missing lanes add nothing).
 * @param q query elements from qAt
 * @param qAt offset of the query
 * @param k key elements from kAt
 * @param kAt offset of the key
 * @param d head dimension
 * @param scale {@linkcode kernelScale}(d)
 * @returns the f32 score
 */
export function kernelScore(
  q: ArrayLike<number>,
  qAt: number,
  k: ArrayLike<number>,
  kAt: number,
  d: number,
  scale: number,
): number {
  let l0 = 0, l1 = 0, l2 = 0, l3 = 0;
  let i = 0;
  for (; i + 4 <= d; i += 4) {
    l0 = fr(l0 + fr(q[qAt + i] * k[kAt + i]));
    l1 = fr(l1 + fr(q[qAt + i + 1] * k[kAt + i + 1]));
    l2 = fr(l2 + fr(q[qAt + i + 2] * k[kAt + i + 2]));
    l3 = fr(l3 + fr(q[qAt + i + 3] * k[kAt + i + 3]));
  }
  if (i < d) l0 = fr(l0 + fr(q[qAt + i] * k[kAt + i]));
  if (i + 1 < d) l1 = fr(l1 + fr(q[qAt + i + 1] * k[kAt + i + 1]));
  if (i + 2 < d) l2 = fr(l2 + fr(q[qAt + i + 2] * k[kAt + i + 2]));
  return fr(fr(fr(l0 + l1) + fr(l2 + l3)) * scale);
}

/** Rounds half to even, as f32x4.nearest. */
export function nearestEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The Cephes expf polynomial after its leading term, as f32. */
const EXP_COEFFICIENTS = [
  1.3981999507e-3,
  8.3334519073e-3,
  4.1665795894e-2,
  1.6666665459e-1,
  5.0000001201e-1,
]
  .map(fr);

/** e^x per f32 lane exactly as attention.ts _expv (Cephes expf, clamped at −87). */
export function expF32(x: number): number {
  x = Math.max(fr(x), -87);
  const k = nearestEven(fr(x * fr(1.44269504088896341)));
  const r = fr(fr(x - fr(k * 0.693359375)) - fr(k * fr(-2.12194440e-4)));
  let y = fr(1.9875691500e-4);
  for (const c of EXP_COEFFICIENTS) y = fr(fr(y * r) + c);
  y = fr(fr(fr(y * fr(r * r)) + r) + 1);
  return fr(y * 2 ** k);
}
