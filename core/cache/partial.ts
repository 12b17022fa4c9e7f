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

import { expF32 } from "./kernel_score.ts";

/** Tokens the kernel sums values over in f32 before adding into f64 (attention.ts VALUE_CHUNK). */
const VALUE_CHUNK = 128;

/** Running (max, sum, weighted sum) of one query head over a set of tokens. */
export class Partial {
  /** Running max of the scores seen. */
  m: number = -Infinity;
  /** Σ e^{s − m}. */
  l: number = 0;
  /** Σ e^{s − m} v, length d. */
  readonly acc: Float64Array;
  /** A segment's weighted sum, before it merges in. */
  readonly #block: Float64Array;
  /** A run's f32 sums (addBlock). */
  readonly #run: Float32Array;
  /** The four f64 lane sums of l and the last (up to three) weights of a segment. */
  readonly #lanes = new Float64Array(7);
  /** A segment's f32 weights (grows to the longest segment). */
  #w = new Float32Array(0);

  /**
   * Creates an empty partial (m = −∞, l = 0, acc = 0).
   * @param d head dimension
   */
  constructor(d: number) {
    this.acc = new Float64Array(d);
    this.#block = new Float64Array(d);
    this.#run = new Float32Array(d);
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
   * Adds the tokens from..to−1 as one WASM kernel call attends a segment (core/cache/PAGES.md),
   * in the kernel's f32 steps: the segment's own max m, weights e^{s−m} by the kernel's exp
   * (kernel_score.ts expF32), Σ w·v in f32 over runs of VALUE_CHUNK tokens (two tokens per step,
   * w₀v₀ + w₁v₁ added together, when the kernel takes tokens in pairs), each run's sums then added
   * in f64; l in f64. Then a log-sum-exp merge into this partial. So a segment's sums are the
   * kernel's to the last bit, given scores computed as the kernel computes them.
   * @param scores scores q·k/√d (kernelScore), indexed by token
   * @param values token-major values, d each, indexed by token
   * @param from first token of the segment
   * @param to one past its last token
   * @param pairs the kernel adds values two tokens at a time (query heads per KV head a multiple
   *   of 4)
   */
  addBlock(
    scores: ArrayLike<number>,
    values: Float32Array,
    from: number,
    to: number,
    pairs: boolean,
  ): void {
    if (to <= from) return;
    const d = this.acc.length, acc = this.#block, run = this.#run, fr = Math.fround;
    const { m, l } = this.#weights(scores, from, to), w = this.#w;
    acc.fill(0);
    for (let r0 = from; r0 < to; r0 += VALUE_CHUNK) {
      const r1 = Math.min(to, r0 + VALUE_CHUNK);
      run.fill(0);
      let t = r0;
      if (pairs) {
        for (; t + 2 <= r1; t += 2) {
          const w0 = w[t - from], w1 = w[t + 1 - from];
          const a = t * d, b = a + d;
          for (let i = 0; i < d; i++) {
            run[i] = fr(run[i] + fr(fr(w0 * values[a + i]) + fr(w1 * values[b + i])));
          }
        }
      }
      for (; t < r1; t++) {
        const wt = w[t - from];
        for (let i = 0; i < d; i++) run[i] = fr(run[i] + fr(wt * values[t * d + i]));
      }
      for (let i = 0; i < d; i++) acc[i] += run[i];
    }
    this.#mergeSums(m, l, acc);
  }

  /**
   * Adds the tokens from..to−1 as one kernel call attends a segment whose values it sums with
   * integers (core/cache/int_dot.ts IntValues: a page whose keys took the exact path): m, the
   * f32 weights and l as addBlock takes them, the value sums from `sums`.
   * @param scores scores q·k/√d (kernelScore), indexed by token
   * @param from first token of the segment
   * @param to one past its last token
   * @param sums writes Σ w·v (d values) given the segment's weights
   */
  addWeighted(
    scores: ArrayLike<number>,
    from: number,
    to: number,
    sums: (w: Float32Array, out: Float64Array) => void,
  ): void {
    if (to <= from) return;
    const { m, l } = this.#weights(scores, from, to);
    sums(this.#w.subarray(0, to - from), this.#block);
    this.#mergeSums(m, l, this.#block);
  }

  /**
   * The segment's max m and its weights e^{s−m} by the kernel's exp into #w (index t − from), and
   * l = Σ w in the kernel's order (attention.ts step 2): weights of whole quads of the segment
   * summed in four f64 lanes by their index mod 4, the lanes as (l₀ + l₂) + (l₁ + l₃), then the last
   * one to three weights one by one (a sequential f64 sum had differed in the last bit when weights
   * span more than 2^29, moving an output by up to 4.8e-8).
   */
  #weights(scores: ArrayLike<number>, from: number, to: number): { m: number; l: number } {
    if (this.#w.length < to - from) this.#w = new Float32Array(2 * (to - from));
    const w = this.#w, lanes = this.#lanes, quads = from + ((to - from) & ~3);
    let m = -Infinity;
    for (let t = from; t < to; t++) if (scores[t] > m) m = scores[t];
    m += 0; // a −0 max is +0, as in the kernel
    lanes.fill(0);
    for (let t = from; t < to; t++) {
      const wt = w[t - from] = expF32(scores[t] - m);
      if (t < quads) lanes[(t - from) & 3] += wt;
      else lanes[4 + t - quads] = wt;
    }
    let l = (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
    for (let t = quads; t < to; t++) l += lanes[4 + t - quads];
    return { m, l };
  }

  /**
   * Merges another partial into this one: the result covers both token sets.
   * @param o the other partial
   */
  merge(o: Partial): void {
    this.#mergeSums(o.m, o.l, o.acc);
  }

  // (m, l, acc) of another token set merged in: the larger side's factor is e^0 = 1 exactly
  #mergeSums(m0: number, l0: number, acc0: Float64Array): void {
    if (l0 === 0) return;
    if (this.l === 0) {
      this.m = m0;
      this.l = l0;
      this.acc.set(acc0);
      return;
    }
    const m = Math.max(this.m, m0);
    const a = Math.exp(this.m - m), b = Math.exp(m0 - m);
    this.l = this.l * a + l0 * b;
    for (let i = 0; i < this.acc.length; i++) this.acc[i] = this.acc[i] * a + acc0[i] * b;
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
