/**
 * mulberry32: a small seeded PRNG, so that randomised measurements (finite-difference probes,
 * benchmarks, tests) reproduce exactly from their seed. Not for anything secret.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { mulberry32 } from "./mulberry32.ts";
 * const a = mulberry32(7), b = mulberry32(7);
 * if (a() !== b()) throw new Error("same seed, same sequence");
 * ```
 * @module
 */

/**
 * A uniform generator on [0, 1) from a 32-bit seed.
 *
 * @param seed any number; its low 32 bits are used
 * @returns the generator
 */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
