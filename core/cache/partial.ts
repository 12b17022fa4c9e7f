/**
 * Flash-decoding partial softmax results and their exact log-sum-exp merge: a segment of tokens
 * yields (m, l, acc) with m = max score, l = Σ e^{s−m}, acc = Σ e^{s−m} v; partials of disjoint
 * segments merge into the partial of their union, so each page pool can be attended on its own.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { Partial } from "./partial.ts";
 * const a = new Partial(1), b = new Partial(1);
 * a.addScore(0, Float32Array.of(2)); // one token, score 0, value 2
 * b.addScore(0, Float32Array.of(4));
 * a.merge(b);
 * const out = new Float32Array(1);
 * a.finish(out);
 * if (out[0] !== 3) throw new Error("equal scores average the values");
 * ```
 * @module
 */

/** Running (max, sum, weighted sum) of one query head over a set of tokens. */
export class Partial {
  /** Running max of the scores seen. */
  m: number = -Infinity;
  /** Σ e^{s − m}. */
  l: number = 0;
  /** Σ e^{s − m} v, length d. */
  readonly acc: Float64Array;

  /**
   * Creates an empty partial (m = −∞, l = 0, acc = 0).
   * @param d head dimension
   */
  constructor(d: number) {
    this.acc = new Float64Array(d);
  }

  /** Empties the partial for reuse. */
  reset(): void {
    this.m = -Infinity;
    this.l = 0;
    this.acc.fill(0);
  }

  /**
   * Adds one token with score s and value v (online softmax update).
   * @param s the token's score q·k/√d
   * @param v the token's value
   */
  addScore(s: number, v: ArrayLike<number>): void {
    if (s > this.m) {
      const c = Math.exp(this.m - s);
      this.l *= c;
      for (let i = 0; i < this.acc.length; i++) this.acc[i] *= c;
      this.m = s;
    }
    const w = Math.exp(s - this.m);
    this.l += w;
    for (let i = 0; i < this.acc.length; i++) this.acc[i] += w * v[i];
  }

  /**
   * Adds n tokens by their scores (core/cache/kernel_score.ts computes them as the WASM kernels
   * do): one max, one rescale, then exp once per token.
   * @param scores the n scores q·k/√d
   * @param values n × d values, token-major
   * @param n tokens
   */
  addBlock(scores: ArrayLike<number>, values: Float32Array, n: number): void {
    const d = this.acc.length;
    let m = this.m;
    for (let t = 0; t < n; t++) if (scores[t] > m) m = scores[t];
    if (m > this.m && this.l > 0) {
      const c = Math.exp(this.m - m);
      this.l *= c;
      for (let i = 0; i < d; i++) this.acc[i] *= c;
    }
    this.m = m;
    for (let t = 0; t < n; t++) {
      const w = Math.exp(scores[t] - m);
      this.l += w;
      for (let i = 0; i < d; i++) this.acc[i] += w * values[t * d + i];
    }
  }

  /**
   * Merges another partial into this one: the result covers both token sets.
   * @param o the other partial
   */
  merge(o: Partial): void {
    if (o.l === 0) return;
    if (this.l === 0) {
      this.m = o.m;
      this.l = o.l;
      this.acc.set(o.acc);
      return;
    }
    const m = Math.max(this.m, o.m);
    const a = Math.exp(this.m - m), b = Math.exp(o.m - m);
    this.l = this.l * a + o.l * b;
    for (let i = 0; i < this.acc.length; i++) this.acc[i] = this.acc[i] * a + o.acc[i] * b;
    this.m = m;
  }

  /**
   * Writes the attention output acc / l.
   * @param out destination, length d
   */
  finish(out: Float32Array): void {
    const inv = 1 / this.l;
    for (let i = 0; i < this.acc.length; i++) out[i] = this.acc[i] * inv;
  }
}
