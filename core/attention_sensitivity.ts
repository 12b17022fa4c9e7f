/**
 * How one attention head's output moves when a cached key or value moves. For query q, keys k_t,
 * values v_t, scores s_t = q·k_t/√d, weights α = softmax(s) and output o = Σ α_t v_t:
 *
 * - ∂o/∂v_t = α_t·I, so ‖∂o/∂v_t‖ = α_t;
 * - ∂o/∂s_t = α_t (v_t − o), hence ∂o/∂k_t = α_t (v_t − o) qᵀ/√d, a rank-one matrix whose
 *   spectral and Frobenius norms are both α_t‖v_t − o‖‖q‖/√d;
 * - along a unit direction u of k_t, with c = q·u/√d: d²o/dε² = c·[α_t(1 − α_t)c(v_t − o) −
 *   α_t·α_t c(v_t − o)] = α_t(1 − 2α_t)(v_t − o)(q·u)²/d; summing over the basis directions gives
 *   the Hessian trace α_t(1 − 2α_t)(v_t − o)‖q‖²/d;
 * - the curvature of the design is κ_t = α_t · ‖∂o/∂k_t‖ · √‖tr H_t‖.
 *
 * Everything here computes in float64.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { headSensitivity } from "./attention_sensitivity.ts";
 * const s = headSensitivity([1, 0], [1, 0, 0, 1], [1, 0, 0, 1], 2, 2);
 * if (Math.abs(s.attention[0] + s.attention[1] - 1) > 1e-12) throw new Error("weights sum to 1");
 * ```
 * @module
 */

import {
  assertFinite,
  CapacityError,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "./errors.ts";
import { MAX_BUFFER_BYTES, MAX_FIXED_BYTES } from "./model/kv_cache.ts";
import { attention } from "./tensor.ts";

/** Per-position sensitivities of one head for one query. */
export interface HeadSensitivity {
  /** Output o = Σ α_t v_t, length d. */
  output: Float64Array;
  /** α_t, which is also ‖∂o/∂v_t‖. */
  attention: Float64Array;
  /** ‖∂o/∂k_t‖ = α_t‖v_t − o‖‖q‖/√d. */
  keyGradNorm: Float64Array;
  /** ‖tr ∂²o/∂k_t²‖ = α_t|1 − 2α_t|‖v_t − o‖‖q‖²/d. */
  hessianTraceNorm: Float64Array;
  /** κ_t = α_t · ‖∂o/∂k_t‖ · √‖tr H_t‖. */
  curvature: Float64Array;
}

/**
 * Attention of one query over n keys and values (row-major n × d) in float64:
 * writes the weights α and the output o.
 *
 * @param q query, length d (read from qOffset)
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @param weights α, at least n elements, overwritten (left as it was when the call throws)
 * @param out o, length d, overwritten (left as it was when the call throws)
 * @param qOffset where the query starts in q
 * @throws ShapeError for n or d not an integer ≥ 1, or an array shorter than they need;
 *   InvalidValueError for an argument that is not an array, or when a NaN or infinite input (or
 *   overflowing scores, or values whose weighted sum overflows) makes α or o non-finite
 */
export function attentionWeights(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
  weights: Float64Array,
  out: Float64Array,
  qOffset = 0,
): void {
  _checkSizes(q, keys, values, n, d, qOffset);
  for (const [name, x] of [["weights", weights], ["out", out]] as const) {
    if (!(x instanceof Float64Array)) {
      throw new InvalidValueError(`${name} is ${typeName(x)}, expected a Float64Array`);
    }
  }
  if (weights.length < n) {
    throw new ShapeError(`weights has ${weights.length} elements, expected ≥ ${n}`);
  }
  if (out.length < d) throw new ShapeError(`out has ${out.length} elements, expected ≥ ${d}`);
  // a NaN or infinity reaches α or o: every sensitivity and bound built on them would be NaN
  // without a word (and `realized > NaN` is false, so a bound check would pass)
  assertFinite(q, "q", qOffset, d);
  assertFinite(keys, "keys", 0, n * d);
  assertFinite(values, "values", 0, n * d);
  // computed in scratch and copied once checked, so that a refused input leaves both untouched
  if (_alpha.length < n) _alpha = new Float64Array(n);
  if (_o.length < d) _o = new Float64Array(d);
  const alpha = _alpha.subarray(0, n), o = _o.subarray(0, d);
  attention(q, keys, values, n, d, alpha, o, qOffset);
  for (let t = 0; t < n; t++) {
    if (!Number.isFinite(alpha[t])) {
      throw new InvalidValueError(
        `attention weight of position ${t} is ${alpha[t]}: scores q·k/√d out of range`,
        t,
      );
    }
  }
  // finite weights and values still overflow Σ α_t v_t when values come near ±Number.MAX_VALUE
  for (let i = 0; i < d; i++) {
    if (!Number.isFinite(o[i])) {
      throw new InvalidValueError(
        `output o[${i}] is ${o[i]}: the weighted sum of values overflows float64`,
        i,
      );
    }
  }
  weights.set(alpha);
  out.set(o);
}

/** attentionWeights' scratch, grown to the largest call. */
let _alpha = new Float64Array(0), _o = new Float64Array(0);

/**
 * Sizes every function here shares. Reads past an array give undefined, which the arithmetic turns
 * into NaN sensitivities without a word; n = 0 would be a softmax over nothing.
 */
function _checkSizes(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
  qOffset = 0,
): void {
  // undefined or a number failed later as a TypeError, or read as no elements
  for (const [name, x] of [["q", q], ["keys", keys], ["values", values]] as const) {
    _checkArray(x, name);
  }
  if (!Number.isInteger(n) || n < 1) {
    throw new ShapeError(`positions n is ${showValue(n)}, expected an integer ≥ 1`);
  }
  if (!Number.isInteger(d) || d < 1) {
    throw new ShapeError(`head dimension d is ${showValue(d)}, expected an integer ≥ 1`);
  }
  if (!Number.isInteger(qOffset) || qOffset < 0) {
    throw new ShapeError(`qOffset is ${showValue(qOffset)}, expected an integer ≥ 0`);
  }
  if (q.length < qOffset + d) {
    throw new ShapeError(
      `q has ${q.length} elements, expected ≥ ${qOffset + d} (offset ${qOffset})`,
    );
  }
  for (const [name, x] of [["keys", keys], ["values", values]] as const) {
    if (x.length < n * d) {
      throw new ShapeError(`${name} has ${x.length} elements, expected ≥ ${n} × ${d}`);
    }
  }
}

/** A position t of n, as keyJacobian and keySecondDerivative need. */
function _checkPosition(t: number, n: number): void {
  if (!Number.isInteger(t) || t < 0 || t >= n) {
    throw new ShapeError(`position t is ${showValue(t)}, expected an integer in [0, ${n})`);
  }
}

/** Throws InvalidValueError unless x is an array or array-like (a non-null object with a length). */
function _checkArray(x: unknown, name: string): void {
  if (typeof x !== "object" || x === null || typeof (x as ArrayLike<number>).length !== "number") {
    throw new InvalidValueError(`${name} is ${showValue(x)}, expected an array of numbers`);
  }
}

/**
 * Throws CapacityError, before anything is allocated, when a Float64Array result would pass
 * MAX_BUFFER_BYTES or all of them together MAX_FIXED_BYTES (the limits of the caches): a huge n
 * failed as a RangeError from the allocation.
 * @param what the function, for the message
 * @param buffers name and element count of each array the function allocates
 */
function _checkAlloc(what: string, buffers: readonly [string, number][]): void {
  let total = 0;
  for (const [name, count] of buffers) {
    const bytes = 8 * count;
    if (bytes > MAX_BUFFER_BYTES) {
      throw new CapacityError(
        `${what}: ${name} of ${count} float64s would take ${bytes} bytes, over the ` +
          `${MAX_BUFFER_BYTES} bytes one buffer may hold`,
      );
    }
    total += bytes;
  }
  if (total > MAX_FIXED_BYTES) {
    throw new CapacityError(
      `${what} would allocate ${total} bytes, over the limit of ${MAX_FIXED_BYTES} bytes`,
    );
  }
}

/**
 * {@linkcode attentionWeights} into fresh arrays.
 *
 * @param q query, length d
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @returns the weights α (length n) and the output o (length d)
 * @throws ShapeError, InvalidValueError as {@linkcode attentionWeights}; CapacityError, before
 *   allocating, when n or d is too large for a Float64Array
 */
export function attend64(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
): { attention: Float64Array; output: Float64Array } {
  // a negative n or d was a RangeError from the allocation, a huge one an allocation failure
  _checkSizes(q, keys, values, n, d);
  _checkAlloc("attend64", [["attention", n], ["output", d]]);
  const attention = new Float64Array(n), output = new Float64Array(d);
  attentionWeights(q, keys, values, n, d, attention, output);
  return { attention, output };
}

/**
 * All per-position sensitivities of one head for one query (see the module doc for formulas).
 * Positions with α_t = 0, and every position when q = 0, have sensitivities 0; ‖v_t − o‖ and ‖q‖
 * are computed with power-of-two scaling where their squares would overflow or underflow.
 *
 * @param q query, length d
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @returns output, weights, gradient norms, Hessian-trace norms and curvature per position
 * @throws ShapeError, InvalidValueError, CapacityError as {@linkcode attend64}; InvalidValueError
 *   (with the position) when a sensitivity itself exceeds the float64 range
 */
export function headSensitivity(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
): HeadSensitivity {
  _checkSizes(q, keys, values, n, d);
  _checkAlloc("headSensitivity", [
    ["attention", n],
    ["keyGradNorm", n],
    ["hessianTraceNorm", n],
    ["curvature", n],
    ["output", d],
  ]);
  const { attention, output } = attend64(q, keys, values, n, d);
  let qq = 0;
  for (let i = 0; i < d; i++) qq += q[i] * q[i];
  const qNorm = Math.sqrt(qq);
  // ‖q‖ = qm·2^qe, for the positions the direct formulas cannot take (computed when first needed)
  let qm = -1, qe = 0;
  let qZero = qq === 0;
  if (qZero) { for (let i = 0; i < d && qZero; i++) qZero = q[i] === 0; }
  const keyGradNorm = new Float64Array(n);
  const hessianTraceNorm = new Float64Array(n);
  const curvature = new Float64Array(n);
  const deviation = new Float64Array(d);
  for (let t = 0; t < n; t++) {
    const a = attention[t];
    // exactly 0: e·e or ‖q‖² overflowing made them 0·∞ = NaN
    if (a === 0 || qZero) continue;
    const dominant = a > DOMINANT_WEIGHT &&
      dominantDeviation(values, attention, 0, n, d, t, deviation);
    let r = 0;
    for (let i = 0; i < d; i++) {
      const e = dominant ? deviation[i] : values[t * d + i] - output[i];
      r += e * e;
    }
    const spread = Math.sqrt(r);
    const w = Math.abs(1 - 2 * a);
    let g = a * spread * qNorm / Math.sqrt(d);
    let hess = a * w * spread * qq / d;
    let kappa = a * g * Math.sqrt(hess);
    // The direct formulas, whenever no square or product left the normal range (bit for bit the
    // results of before); otherwise mantissas and power-of-two exponents, rounded once at the end.
    const direct = r >= _TINY && qq >= _TINY && _normal(g) &&
      (w === 0 || (_normal(hess) && _normal(kappa)));
    if (!direct) {
      if (qm < 0) [qm, qe] = _scaledNorm(q, 0, null, d);
      const [sm, se] = dominant
        ? _scaledNorm(deviation, 0, null, d)
        : _scaledNorm(values, t * d, output, d);
      // α too (as small as 2^-1074): a product of mantissas near 1 cannot under- or overflow
      const ae = Math.floor(Math.log2(a)), am = _ldexp(a, -ae);
      const gm = am * sm * qm / Math.sqrt(d), hm = am * w * sm * (qm * qm) / d;
      const ge = ae + se + qe, he = ae + se + 2 * qe, odd = he & 1;
      g = _ldexp(gm, ge);
      hess = _ldexp(hm, he);
      kappa = _ldexp(am * gm * Math.sqrt(odd ? 2 * hm : hm), ae + ge + (he - odd) / 2);
      const bad = [["keyGradNorm", g], ["hessianTraceNorm", hess], ["curvature", kappa]] as const;
      for (const [name, x] of bad) {
        if (x === Infinity) {
          throw new InvalidValueError(
            `${name} of position ${t} exceeds the float64 range (α_t ${a}, ‖v_t − o‖ ` +
              `${_ldexp(sm, se)}, ‖q‖ ${_ldexp(qm, qe)})`,
            t,
          );
        }
      }
    }
    keyGradNorm[t] = g;
    hessianTraceNorm[t] = hess;
    curvature[t] = kappa;
  }
  return { output, attention, keyGradNorm, hessianTraceNorm, curvature };
}

/**
 * Smallest sum of squares or result the direct formulas of headSensitivity keep: below, squares
 * that underflowed (2^-1074 each at most) could matter, and the scaled path decides.
 */
const _TINY = 2 ** -900;

/** Whether x is within [2^-900, Number.MAX_VALUE]: the direct formulas neither over- nor underflowed. */
function _normal(x: number): boolean {
  return x >= _TINY && x <= Number.MAX_VALUE;
}

/**
 * ‖x[off … off + d) − y[0 … d)‖₂ (‖x[off … off + d)‖₂ when y is null) as [m, e] with the norm
 * m·2^e: the elements are scaled by a power of two near 1/max|element| before squaring, so no
 * square overflows or underflows; a difference past Number.MAX_VALUE is taken in halves.
 */
function _scaledNorm(
  x: ArrayLike<number>,
  off: number,
  y: Float64Array | null,
  d: number,
): [number, number] {
  let half = 1, max = 0;
  for (let pass = 0; pass < 2; pass++) {
    max = 0;
    for (let i = 0; i < d; i++) {
      const v = y ? x[off + i] * half - y[i] * half : x[off + i];
      max = Math.max(max, Math.abs(v));
    }
    if (max !== Infinity) break;
    half = 0.5;
  }
  if (max === 0) return [0, 0];
  const k = Math.floor(Math.log2(max));
  // 2^-k in two exact factors: 2^1074 (a subnormal max) is past the float64 range
  const k1 = Math.max(-1000, Math.min(1000, -k)), f1 = 2 ** k1, f2 = 2 ** (-k - k1);
  let s = 0;
  for (let i = 0; i < d; i++) {
    const v = (y ? x[off + i] * half - y[i] * half : x[off + i]) * f1 * f2;
    s += v * v;
  }
  return [Math.sqrt(s), k + (half === 1 ? 0 : 1)];
}

/** m·2^e, in steps that stay within the float64 exponent range (Infinity past it). */
function _ldexp(m: number, e: number): number {
  if (m === 0 || m - m !== 0) return m; // 0·2^e with 2^e = Infinity was NaN
  while (e > 1000 && m - m === 0) {
    m *= 2 ** 1000;
    e -= 1000;
  }
  while (e < -1000) {
    m *= 2 ** -1000;
    e += 1000;
  }
  return m * 2 ** e;
}

/**
 * Weight above which v_t − o is formed as Σ_{s≠t} α_s(v_t − v_s) ({@linkcode dominantDeviation}):
 * the direct difference cancels as α_t → 1, with a relative error of about 2^-53/(1 − α_t), so
 * below this it loses at most 20 of its 53 bits. At most one position of a head passes it.
 */
export const DOMINANT_WEIGHT = 1 - 2 ** -20;

/**
 * v_t − o for a position that takes nearly all the attention, without the cancellation of the
 * direct difference: Σ_s α_s = 1 makes it Σ_{s≠t} α_s(v_t − v_s), whose terms keep their relative
 * precision (at a score gap of 40 the direct difference gave 0 for a true gradient of 4e-18).
 *
 * @param values n × d values
 * @param alpha the weights, position s at alpha[alphaOffset + s]
 * @param alphaOffset where the weights start
 * @param n positions
 * @param d head dimension
 * @param t the position
 * @param out v_t − o, d elements, overwritten
 * @returns false when a difference or the sum overflows (out is then not used)
 */
export function dominantDeviation(
  values: ArrayLike<number>,
  alpha: ArrayLike<number>,
  alphaOffset: number,
  n: number,
  d: number,
  t: number,
  out: Float64Array,
): boolean {
  out.fill(0, 0, d);
  for (let s = 0; s < n; s++) {
    const a = alpha[alphaOffset + s];
    if (s === t || a === 0) continue;
    for (let i = 0; i < d; i++) out[i] += a * (values[t * d + i] - values[s * d + i]);
  }
  for (let i = 0; i < d; i++) if (out[i] - out[i] !== 0) return false;
  return true;
}

/**
 * The Jacobian ∂o/∂k_t = α_t (v_t − o) qᵀ/√d as a row-major d × d matrix (row: output element,
 * column: key element).
 *
 * @param q query, length d
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @param t the position whose key is differentiated
 * @returns the d × d Jacobian
 * @throws ShapeError for t outside [0, n), and as {@linkcode attend64}; CapacityError for a d × d
 *   matrix too large to allocate; InvalidValueError (with the index) for an entry past the float64
 *   range
 */
export function keyJacobian(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
  t: number,
): Float64Array {
  _checkSizes(q, keys, values, n, d);
  _checkPosition(t, n);
  _checkAlloc("keyJacobian", [["attention", n], ["output", d], ["the Jacobian", d * d]]);
  const { attention, output } = attend64(q, keys, values, n, d);
  const jac = new Float64Array(d * d);
  const a = attention[t] / Math.sqrt(d);
  const deviation = new Float64Array(d);
  const dominant = attention[t] > DOMINANT_WEIGHT &&
    dominantDeviation(values, attention, 0, n, d, t, deviation);
  for (let i = 0; i < d; i++) {
    let e = dominant ? deviation[i] : values[t * d + i] - output[i], twice = 1;
    // |v − o| past Number.MAX_VALUE: halves, doubled at the end (Infinity·0 was NaN)
    if (e - e !== 0) {
      e = values[t * d + i] * 0.5 - output[i] * 0.5;
      twice = 2;
    }
    for (let c = 0; c < d; c++) {
      const x = a * e * q[c] * twice;
      if (x - x !== 0) {
        throw new InvalidValueError(
          `∂o/∂k_t entry (${i}, ${c}) exceeds the float64 range (α_t ${attention[t]}, ` +
            `q[${c}] ${q[c]})`,
          i * d + c,
        );
      }
      jac[i * d + c] = x;
    }
  }
  return jac;
}

/**
 * Second derivative of o along a direction u of k_t: α_t(1 − 2α_t)(v_t − o)(q·u)²/d.
 *
 * @param q query, length d
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @param t the position whose key moves
 * @param u direction, length d (not necessarily unit: the result scales with |u|²)
 * @returns d²o/dε² at ε = 0 for k_t + εu
 * @throws ShapeError for t outside [0, n) or u shorter than d, and as {@linkcode attend64};
 *   InvalidValueError (with the index) for q·u or an element of the result past the float64 range
 */
export function keySecondDerivative(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
  t: number,
  u: ArrayLike<number>,
): Float64Array {
  _checkSizes(q, keys, values, n, d);
  _checkPosition(t, n);
  _checkArray(u, "u");
  if (u.length < d) throw new ShapeError(`u has ${u.length} elements, expected ≥ ${d}`);
  assertFinite(u, "u", 0, d);
  const { attention, output } = attend64(q, keys, values, n, d);
  let qu = 0;
  for (let i = 0; i < d; i++) qu += q[i] * u[i];
  if (qu - qu !== 0) {
    throw new InvalidValueError(`q·u is ${qu}: it exceeds the float64 range`);
  }
  const a = attention[t];
  // α(1 − 2α) = 0 or q·u = 0 give 0 whatever the rest (an overflowing (q·u)² made 0·∞ = NaN)
  const w = a * (1 - 2 * a);
  const f = w === 0 || qu === 0 ? 0 : w * qu * qu / d;
  const out = new Float64Array(d), deviation = new Float64Array(d);
  const dominant = a > DOMINANT_WEIGHT &&
    dominantDeviation(values, attention, 0, n, d, t, deviation);
  for (let i = 0; i < d; i++) {
    const e = dominant ? deviation[i] : values[t * d + i] - output[i];
    let x = f === 0 || e === 0 ? 0 : f * e;
    // (q·u)² or v − o past Number.MAX_VALUE while the product is not: reordered, v − o in halves
    if (x - x !== 0) x = w * qu * (values[t * d + i] * 0.5 - output[i] * 0.5) * qu / d * 2;
    if (x - x !== 0) {
      throw new InvalidValueError(
        `d²o/dε² element ${i} exceeds the float64 range (α_t ${a}, q·u ${qu})`,
        i,
      );
    }
    out[i] = x;
  }
  return out;
}
