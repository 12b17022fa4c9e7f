/**
 * The allocation-free step kernel of the analyzer: for the query heads of one KV head (grouped
 * query attention) and one query each, attention over n cached positions and every per-position
 * sensitivity of attention_sensitivity.ts (α_t, ‖∂o/∂k_t‖ = α_t‖v_t − o‖‖q‖/√d, the Hessian
 * trace norm α_t|1 − 2α_t|‖v_t − o‖‖q‖²/d and κ_t = α_t·‖∂o/∂k_t‖·√‖tr H_t‖), in float64.
 *
 * Why it is fast: scratch is allocated once per kernel; the heads of a group are processed four
 * at a time, so each key and value row is read once for four heads and the four dot products give
 * four independent addition chains (the loop's latency bound, not its arithmetic, limits a single
 * dot product). Every head keeps the summation order of the one-head formulation, so results are
 * bit-for-bit those of the analyzer's previous per-head loops. Three passes over the cache remain:
 * scores, o = Σ α_t v_t, then ‖v_t − o‖ with the derived terms (o must be complete before the
 * third pass starts).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { SensitivityStep } from "./sensitivity_step.ts";
 * const step = new SensitivityStep(2, 2, 1);
 * step.run(new Float32Array([1, 0]), 0, new Float32Array([1, 0, 0, 1]), new Float32Array(4), 2);
 * const a = step.attention;
 * if (Math.abs(a[0] + a[1] - 1) > 1e-12) throw new Error("weights sum to 1");
 * ```
 * @module
 */

import { CapacityError, InvalidValueError, ShapeError, showValue, typeName } from "./errors.ts";
import { MAX_BUFFER_BYTES, MAX_FIXED_BYTES } from "./model/kv_cache.ts";
import { DOMINANT_WEIGHT, dominantDeviation } from "./attention_sensitivity.ts";

/**
 * Largest |query element| {@linkcode SensitivityStep.run} takes, 2^128: every finite float32 (the
 * analyzer's queries), and small enough that with float32 keys and values (|x| < 2^128) no score
 * (≤ d·2^256), ‖q‖², ‖v − o‖ or product of them overflows float64, whatever d. A float64 query of
 * 1e300 made the scores infinite and α NaN.
 */
export const MAX_STEP_QUERY = 2 ** 128;

/**
 * Step kernel for one (layer, KV head): `group` query heads of dimension `headDim` over at most
 * `capacity` cached positions. Results are overwritten by each {@linkcode SensitivityStep.run}:
 * positions 0..n−1 with the run's values, and positions n..capacity−1 with 0 (a shorter run once
 * left an earlier run's values there); per-head arrays are laid out [head][position] with a stride
 * of `capacity`.
 */
export class SensitivityStep {
  /** Most positions one run may cover. */
  readonly capacity: number;
  /** Head dimension d. */
  readonly headDim: number;
  /** Query heads per run. */
  readonly group: number;
  /** α per head and position ([h·capacity + t]). */
  readonly attention: Float64Array;
  /** ‖∂o/∂k_t‖ per head and position. */
  readonly keyGradNorm: Float64Array;
  /** ‖tr ∂²o/∂k_t²‖ per head and position. */
  readonly hessianTraceNorm: Float64Array;
  /** κ_t per head and position. */
  readonly curvature: Float64Array;
  /** o per head ([h·d + i]). */
  readonly output: Float64Array;
  /** ‖q‖² per head. */
  readonly queryNormSq: Float64Array;
  // Queries of a block of four heads, [h][i] (unused heads zero).
  readonly #q: Float64Array;
  // Outputs of a block of four heads, [h][i].
  readonly #o: Float64Array;
  // v_t − o of a position taking nearly all the attention, formed without cancellation.
  readonly #deviation: Float64Array;
  // Positions the previous run wrote: a shorter run zeroes [n, #written) of every per-position array.
  #written = 0;

  /**
   * Allocates the scratch.
   *
   * @param capacity most positions one run covers (≥ 1)
   * @param headDim head dimension d (≥ 1)
   * @param group query heads per KV head (≥ 1, default 1)
   * @throws ShapeError on a non-positive or non-integer size; CapacityError, before allocating,
   *   when an array would pass MAX_BUFFER_BYTES or all of them MAX_FIXED_BYTES (the caches' limits)
   */
  constructor(capacity: number, headDim: number, group = 1) {
    for (const [name, x] of [["capacity", capacity], ["headDim", headDim], ["group", group]]) {
      if (!Number.isInteger(x) || (x as number) < 1) {
        throw new ShapeError(`${name} ${showValue(x)}, expected an integer ≥ 1`);
      }
    }
    // a huge capacity failed as a RangeError from the allocation
    const perPosition = 8 * group * capacity, perHead = 8 * group * headDim;
    const total = 4 * perPosition + perHead + 8 * group + 2 * 32 * headDim + 8 * headDim;
    if (Math.max(perPosition, perHead) > MAX_BUFFER_BYTES || total > MAX_FIXED_BYTES) {
      throw new CapacityError(
        `SensitivityStep(capacity ${capacity}, headDim ${headDim}, group ${group}) would allocate ` +
          `${total} bytes (${perPosition} per per-position array, ${perHead} for the outputs), ` +
          `over the limit of ${MAX_BUFFER_BYTES} bytes per array or ${MAX_FIXED_BYTES} in all`,
      );
    }
    this.capacity = capacity;
    this.headDim = headDim;
    this.group = group;
    this.attention = new Float64Array(group * capacity);
    this.keyGradNorm = new Float64Array(group * capacity);
    this.hessianTraceNorm = new Float64Array(group * capacity);
    this.curvature = new Float64Array(group * capacity);
    this.output = new Float64Array(group * headDim);
    this.queryNormSq = new Float64Array(group);
    this.#q = new Float64Array(4 * headDim);
    this.#o = new Float64Array(4 * headDim);
    this.#deviation = new Float64Array(headDim);
  }

  // ‖v_t − o‖ of the head whose weights start at `base`: `direct`, or for a position taking nearly
  // all the attention the norm of dominantDeviation, which keeps the precision the direct
  // difference cancels away (as headSensitivity does)
  #spread(direct: number, values: Float32Array, base: number, m: number, t: number): number {
    const d = this.headDim, dev = this.#deviation;
    if (!(this.attention[base + t] > DOMINANT_WEIGHT)) return direct;
    if (!dominantDeviation(values, this.attention, base, m, d, t, dev)) return direct;
    let r = 0;
    for (let i = 0; i < d; i++) r += dev[i] * dev[i];
    return Math.sqrt(r);
  }

  /**
   * Runs the group's queries (head h at `queries[qOffset + h·d …]`) over positions 0..n−1 of
   * row-major n × d keys and values. Keys and values are not checked for NaN or ±Inf here:
   * callers check them once per sequence, as analyzeHeadGroup does. Queries are limited to
   * ±{@linkcode MAX_STEP_QUERY} (2^128), past which float64 queries overflow the scores.
   *
   * @param queries the group's queries, `group · d` consecutive elements from qOffset
   * @param qOffset where head 0's query starts
   * @param keys at least n × d keys
   * @param values at least n × d values
   * @param n positions, 1 ≤ n ≤ capacity
   * @throws ShapeError when n is out of range, qOffset is not an integer ≥ 0 or an array is too
   *   short; InvalidValueError for queries not a Float32Array or Float64Array or keys or values
   *   not a Float32Array, and (with the index) when one of the group's queries is NaN, ±Inf or
   *   beyond ±2^128. Nothing is written when it throws.
   */
  run(
    queries: Float32Array | Float64Array,
    qOffset: number,
    keys: Float32Array,
    values: Float32Array,
    n: number,
  ): void {
    const d = this.headDim, group = this.group;
    // undefined keys were a TypeError reading .length; float64 values near ±1e308 overflow
    if (!(queries instanceof Float32Array || queries instanceof Float64Array)) {
      throw new InvalidValueError(
        `queries is ${typeName(queries)}, expected a Float32Array or Float64Array`,
      );
    }
    for (const [name, x] of [["keys", keys], ["values", values]] as const) {
      if (!(x instanceof Float32Array)) {
        throw new InvalidValueError(`${name} is ${typeName(x)}, expected a Float32Array`);
      }
    }
    if (!Number.isInteger(n) || n < 1 || n > this.capacity) {
      throw new ShapeError(`positions ${showValue(n)}, expected 1..${this.capacity}`);
    }
    if (keys.length < n * d || values.length < n * d) {
      throw new ShapeError(
        `keys/values have ${keys.length}/${values.length} elements, expected ≥ ${n * d}`,
      );
    }
    // A NaN or fractional offset passed the length check and read undefined: NaN outputs.
    if (!Number.isInteger(qOffset) || qOffset < 0) {
      throw new ShapeError(`query offset ${showValue(qOffset)}, expected an integer ≥ 0`);
    }
    if (queries.length < qOffset + group * d) {
      throw new ShapeError(
        `queries has ${queries.length} elements, expected ≥ ${qOffset + group * d}`,
      );
    }
    // group·d reads against the run's 3·group·n·d multiply-adds. Checking keys and values here
    // would cost n·d reads per run, a third of a one-head run.
    for (let i = qOffset; i < qOffset + group * d; i++) {
      const x = queries[i];
      if (!(Math.abs(x) <= MAX_STEP_QUERY)) {
        throw new InvalidValueError(
          x - x !== 0
            ? `queries[${i}] is ${x}, expected a finite number`
            : `queries[${i}] is ${x}, expected a finite number within ±2^128 (scores must not ` +
              `overflow)`,
          i,
        );
      }
    }
    if (n < this.#written) {
      const cap = this.capacity;
      for (let h = 0; h < group; h++) {
        for (const a of [this.attention, this.keyGradNorm, this.hessianTraceNorm, this.curvature]) {
          a.fill(0, h * cap + n, h * cap + this.#written);
        }
      }
    }
    this.#written = n;
    for (let h0 = 0; h0 < group; h0 += 4) {
      const heads = Math.min(4, group - h0);
      if (heads === 4) this.#block4(queries, qOffset + h0 * d, keys, values, n, h0);
      else {for (let h = h0; h < h0 + heads; h++) {
          this.#single(queries, qOffset + h * d, keys, values, n, h);
        }}
    }
  }

  /** One head: the analyzer's per-head loops, writing head h's rows. */
  #single(
    queries: Float32Array | Float64Array,
    qb: number,
    keys: Float32Array,
    values: Float32Array,
    m: number,
    h: number,
  ): void {
    const d = this.headDim, cap = this.capacity;
    const att = this.attention, kg = this.keyGradNorm, hs = this.hessianTraceNorm;
    const cv = this.curvature, q = this.#q, out = this.#o;
    const invSqrtD = 1 / Math.sqrt(d);
    let qq = 0;
    for (let i = 0; i < d; i++) {
      const x = queries[qb + i];
      q[i] = x;
      qq += x * x;
    }
    const base = h * cap;
    let max = -Infinity;
    for (let t = 0; t < m; t++) {
      let s = 0;
      const kb = t * d;
      for (let i = 0; i < d; i++) s += q[i] * keys[kb + i];
      s *= invSqrtD;
      att[base + t] = s;
      if (s > max) max = s;
    }
    let sum = 0;
    for (let t = 0; t < m; t++) {
      const e = Math.exp(att[base + t] - max);
      att[base + t] = e;
      sum += e;
    }
    const inv = 1 / sum;
    for (let i = 0; i < d; i++) out[i] = 0;
    for (let t = 0; t < m; t++) {
      const a = att[base + t] * inv;
      att[base + t] = a;
      const vb = t * d;
      for (let i = 0; i < d; i++) out[i] += a * values[vb + i];
    }
    const gradScale = Math.sqrt(qq) * invSqrtD;
    const hessScale = qq / d;
    for (let t = 0; t < m; t++) {
      const a = att[base + t];
      const vb = t * d;
      let r = 0;
      for (let i = 0; i < d; i++) {
        const e = values[vb + i] - out[i];
        r += e * e;
      }
      const spread = this.#spread(Math.sqrt(r), values, base, m, t);
      const g = a * spread * gradScale;
      const hess = a * Math.abs(1 - 2 * a) * spread * hessScale;
      kg[base + t] = g;
      hs[base + t] = hess;
      cv[base + t] = a * g * Math.sqrt(hess);
    }
    this.output.set(out.subarray(0, d), h * d);
    this.queryNormSq[h] = qq;
  }

  /** Four heads h0..h0+3 at once; per head the same operations in the same order as #single. */
  #block4(
    queries: Float32Array | Float64Array,
    qb: number,
    keys: Float32Array,
    values: Float32Array,
    m: number,
    h0: number,
  ): void {
    const d = this.headDim, cap = this.capacity;
    const att = this.attention, kg = this.keyGradNorm, hs = this.hessianTraceNorm;
    const cv = this.curvature, q = this.#q, o = this.#o;
    const invSqrtD = 1 / Math.sqrt(d);
    const d2 = 2 * d, d3 = 3 * d;
    let qq0 = 0, qq1 = 0, qq2 = 0, qq3 = 0;
    for (let i = 0; i < d; i++) {
      const x0 = queries[qb + i], x1 = queries[qb + d + i];
      const x2 = queries[qb + d2 + i], x3 = queries[qb + d3 + i];
      q[i] = x0;
      q[d + i] = x1;
      q[d2 + i] = x2;
      q[d3 + i] = x3;
      qq0 += x0 * x0;
      qq1 += x1 * x1;
      qq2 += x2 * x2;
      qq3 += x3 * x3;
    }
    const b0 = h0 * cap, b1 = b0 + cap, b2 = b1 + cap, b3 = b2 + cap;
    // Pass 1: scores s_{h,t} = q_h·k_t/√d, one read of k_t for four heads.
    let m0 = -Infinity, m1 = -Infinity, m2 = -Infinity, m3 = -Infinity;
    for (let t = 0; t < m; t++) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      const kb = t * d;
      for (let i = 0; i < d; i++) {
        const k = keys[kb + i];
        s0 += q[i] * k;
        s1 += q[d + i] * k;
        s2 += q[d2 + i] * k;
        s3 += q[d3 + i] * k;
      }
      s0 *= invSqrtD;
      s1 *= invSqrtD;
      s2 *= invSqrtD;
      s3 *= invSqrtD;
      att[b0 + t] = s0;
      att[b1 + t] = s1;
      att[b2 + t] = s2;
      att[b3 + t] = s3;
      if (s0 > m0) m0 = s0;
      if (s1 > m1) m1 = s1;
      if (s2 > m2) m2 = s2;
      if (s3 > m3) m3 = s3;
    }
    // Softmax normalizers.
    let z0 = 0, z1 = 0, z2 = 0, z3 = 0;
    for (let t = 0; t < m; t++) {
      const e0 = Math.exp(att[b0 + t] - m0), e1 = Math.exp(att[b1 + t] - m1);
      const e2 = Math.exp(att[b2 + t] - m2), e3 = Math.exp(att[b3 + t] - m3);
      att[b0 + t] = e0;
      att[b1 + t] = e1;
      att[b2 + t] = e2;
      att[b3 + t] = e3;
      z0 += e0;
      z1 += e1;
      z2 += e2;
      z3 += e3;
    }
    const i0 = 1 / z0, i1 = 1 / z1, i2 = 1 / z2, i3 = 1 / z3;
    // Pass 2: o_h = Σ_t α_{h,t} v_t, one read of v_t for four heads (t ascending per element, as
    // in the one-head loop).
    for (let i = 0; i < 4 * d; i++) o[i] = 0;
    for (let t = 0; t < m; t++) {
      const a0 = att[b0 + t] * i0, a1 = att[b1 + t] * i1;
      const a2 = att[b2 + t] * i2, a3 = att[b3 + t] * i3;
      att[b0 + t] = a0;
      att[b1 + t] = a1;
      att[b2 + t] = a2;
      att[b3 + t] = a3;
      const vb = t * d;
      for (let i = 0; i < d; i++) {
        const v = values[vb + i];
        o[i] += a0 * v;
        o[d + i] += a1 * v;
        o[d2 + i] += a2 * v;
        o[d3 + i] += a3 * v;
      }
    }
    // Pass 3: ‖v_t − o_h‖ and the derived sensitivities.
    const g0s = Math.sqrt(qq0) * invSqrtD, g1s = Math.sqrt(qq1) * invSqrtD;
    const g2s = Math.sqrt(qq2) * invSqrtD, g3s = Math.sqrt(qq3) * invSqrtD;
    const h0s = qq0 / d, h1s = qq1 / d, h2s = qq2 / d, h3s = qq3 / d;
    for (let t = 0; t < m; t++) {
      const vb = t * d;
      let r0 = 0, r1 = 0, r2 = 0, r3 = 0;
      for (let i = 0; i < d; i++) {
        const v = values[vb + i];
        const e0 = v - o[i], e1 = v - o[d + i], e2 = v - o[d2 + i], e3 = v - o[d3 + i];
        r0 += e0 * e0;
        r1 += e1 * e1;
        r2 += e2 * e2;
        r3 += e3 * e3;
      }
      _terms(att, kg, hs, cv, b0 + t, this.#spread(Math.sqrt(r0), values, b0, m, t), g0s, h0s);
      _terms(att, kg, hs, cv, b1 + t, this.#spread(Math.sqrt(r1), values, b1, m, t), g1s, h1s);
      _terms(att, kg, hs, cv, b2 + t, this.#spread(Math.sqrt(r2), values, b2, m, t), g2s, h2s);
      _terms(att, kg, hs, cv, b3 + t, this.#spread(Math.sqrt(r3), values, b3, m, t), g3s, h3s);
    }
    this.output.set(o.subarray(0, 4 * d), h0 * d);
    const qn = this.queryNormSq;
    qn[h0] = qq0;
    qn[h0 + 1] = qq1;
    qn[h0 + 2] = qq2;
    qn[h0 + 3] = qq3;
  }
}

/** g = α‖v − o‖‖q‖/√d, hess = α|1 − 2α|‖v − o‖‖q‖²/d, κ = α·g·√hess at index x. */
function _terms(
  att: Float64Array,
  kg: Float64Array,
  hs: Float64Array,
  cv: Float64Array,
  x: number,
  spread: number,
  gradScale: number,
  hessScale: number,
): void {
  const a = att[x];
  const g = a * spread * gradScale;
  const hess = a * Math.abs(1 - 2 * a) * spread * hessScale;
  kg[x] = g;
  hs[x] = hess;
  cv[x] = a * g * Math.sqrt(hess);
}
