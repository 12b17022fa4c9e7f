import { rng } from "../_fixtures.ts";

/** Seeded PRNG for tests (mulberry32, shared with tests/_fixtures.ts). */
export const makeRng: (seed: number) => () => number = rng;

/** Standard normal samples (Box–Muller) from a uniform source. */
export function gaussian(rng: () => number): number {
  const u = Math.max(rng(), 1e-300);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

/** n samples of scale·N(0, 1) as float32. */
export function randomArray(rng: () => number, n: number, scale = 1): Float32Array {
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = scale * gaussian(rng);
  return x;
}
