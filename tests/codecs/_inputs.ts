/**
 * Seeded random inputs for the codec tests: a small PRNG and the input distributions every codec
 * is checked on (normal, heavy-tailed with outlier channels, constant groups, values near the fp16
 * limits, subnormals, signed zeros).
 *
 * @module
 */

import { mulberry32 } from "../../core/mulberry32.ts";

/** A seeded uniform generator on [0, 1) (mulberry32), so failures reproduce. */
export type Rng = () => number;

/**
 * @param seed any 32-bit integer
 * @returns a generator
 */
export function rng(seed: number): Rng {
  return mulberry32(seed);
}

/**
 * @param r generator
 * @returns a standard normal sample (Box-Muller)
 */
export function normal(r: Rng): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** One input distribution. */
export interface Distribution {
  /** Short name used in test messages. */
  name: string;
  /**
   * @param r generator
   * @param n length (a multiple of `group`)
   * @param group group size of the format under test
   * @returns fresh values
   */
  make(r: Rng, n: number, group: number): Float32Array;
}

/** The distributions of the acceptance criteria. */
export const DISTRIBUTIONS: readonly Distribution[] = [
  {
    name: "normal",
    make: (r, n) => Float32Array.from({ length: n }, () => normal(r)),
  },
  {
    name: "heavy-tailed, outlier channels ×50",
    make: (r, n) => {
      const outliers = new Set([3, 17, 40].map((c) => c % 64));
      return Float32Array.from({ length: n }, (_, i) => {
        const t = normal(r) / Math.sqrt(Math.max(1e-3, -Math.log(1 - r()))); // heavy tail
        return outliers.has(i % 64) ? 50 * t : t;
      });
    },
  },
  {
    name: "constant groups",
    make: (r, n, group) => {
      const x = new Float32Array(n);
      for (let g = 0; g < n; g += group) {
        const kind = Math.floor(r() * 3);
        const v = kind === 0 ? Math.round(normal(r) * 8) / 4 : kind === 1 ? normal(r) : -0;
        x.fill(v, g, g + group);
      }
      x[0] = x[0] === 0 ? 1.5 : x[0];
      return x;
    },
  },
  {
    name: "near fp16 limits",
    make: (r, n) =>
      Float32Array.from({ length: n }, () => {
        const k = r();
        if (k < 0.3) return (r() < 0.5 ? -1 : 1) * (65504 - r() * 64);
        if (k < 0.5) return (r() < 0.5 ? -1 : 1) * 6.1035e-5 * (1 + r()); // near the min normal
        return (r() * 2 - 1) * 65504;
      }),
  },
  {
    name: "subnormals",
    make: (r, n) =>
      Float32Array.from({ length: n }, () => {
        const k = r();
        const s = r() < 0.5 ? -1 : 1;
        if (k < 0.4) return s * r() * 2 ** -14; // fp16 subnormal range
        if (k < 0.7) return s * r() * 2 ** -126; // f32 subnormals
        return s * r() * 2 ** -20;
      }),
  },
  {
    // ranges of a few f32 subnormal steps: range / qmax underflows to 0 (a scale of 0 there once
    // left a nonzero error with a bound of 0)
    name: "f32 subnormal ranges",
    make: (r, n) =>
      Float32Array.from({ length: n }, () => (r() < 0.3 ? 0 : Math.floor(r() * 64) * 2 ** -149)),
  },
  {
    name: "signed zeros",
    make: (r, n) =>
      Float32Array.from({ length: n }, () => {
        const k = r();
        return k < 0.4 ? 0 : k < 0.8 ? -0 : normal(r) * 1e-3;
      }),
  },
];
