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

import { assertFinite, InvalidValueError, ShapeError } from "./errors.ts";
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
 * @param weights α, at least n elements, overwritten
 * @param out o, length d, overwritten
 * @param qOffset where the query starts in q
 * @throws ShapeError for n or d not an integer ≥ 1, or an array shorter than they need;
 *   InvalidValueError when a NaN or infinite input (or overflowing scores) makes α or o non-finite
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
  if (weights.length < n) {
    throw new ShapeError(`weights has ${weights.length} elements, expected ≥ ${n}`);
  }
  if (out.length < d) throw new ShapeError(`out has ${out.length} elements, expected ≥ ${d}`);
  // a NaN or infinity reaches α or o: every sensitivity and bound built on them would be NaN
  // without a word (and `realized > NaN` is false, so a bound check would pass)
  assertFinite(q, "q", qOffset, d);
  assertFinite(keys, "keys", 0, n * d);
  assertFinite(values, "values", 0, n * d);
  attention(q, keys, values, n, d, weights, out, qOffset);
  for (let t = 0; t < n; t++) {
    if (!Number.isFinite(weights[t])) {
      throw new InvalidValueError(
        `attention weight of position ${t} is ${weights[t]}: scores q·k/√d out of range`,
        t,
      );
    }
  }
}

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
  if (!Number.isInteger(n) || n < 1) {
    throw new ShapeError(`positions n is ${n}, expected an integer ≥ 1`);
  }
  if (!Number.isInteger(d) || d < 1) {
    throw new ShapeError(`head dimension d is ${d}, expected an integer ≥ 1`);
  }
  if (!Number.isInteger(qOffset) || qOffset < 0 || q.length < qOffset + d) {
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
    throw new ShapeError(`position t is ${t}, expected an integer in [0, ${n})`);
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
 * @throws ShapeError, InvalidValueError as {@linkcode attentionWeights}
 */
export function attend64(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
): { attention: Float64Array; output: Float64Array } {
  const attention = new Float64Array(n), output = new Float64Array(d);
  attentionWeights(q, keys, values, n, d, attention, output);
  return { attention, output };
}

/**
 * All per-position sensitivities of one head for one query (see the module doc for formulas).
 *
 * @param q query, length d
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @returns output, weights, gradient norms, Hessian-trace norms and curvature per position
 * @throws ShapeError, InvalidValueError as {@linkcode attentionWeights}
 */
export function headSensitivity(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
): HeadSensitivity {
  const { attention, output } = attend64(q, keys, values, n, d);
  let qq = 0;
  for (let i = 0; i < d; i++) qq += q[i] * q[i];
  const qNorm = Math.sqrt(qq);
  const keyGradNorm = new Float64Array(n);
  const hessianTraceNorm = new Float64Array(n);
  const curvature = new Float64Array(n);
  for (let t = 0; t < n; t++) {
    const a = attention[t];
    let r = 0;
    for (let i = 0; i < d; i++) {
      const e = values[t * d + i] - output[i];
      r += e * e;
    }
    const spread = Math.sqrt(r);
    keyGradNorm[t] = a * spread * qNorm / Math.sqrt(d);
    hessianTraceNorm[t] = a * Math.abs(1 - 2 * a) * spread * qq / d;
    curvature[t] = a * keyGradNorm[t] * Math.sqrt(hessianTraceNorm[t]);
  }
  return { output, attention, keyGradNorm, hessianTraceNorm, curvature };
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
 * @throws ShapeError for t outside [0, n), and as {@linkcode attentionWeights}
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
  const { attention, output } = attend64(q, keys, values, n, d);
  const jac = new Float64Array(d * d);
  const a = attention[t] / Math.sqrt(d);
  for (let i = 0; i < d; i++) {
    const e = values[t * d + i] - output[i];
    for (let c = 0; c < d; c++) jac[i * d + c] = a * e * q[c];
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
 * @throws ShapeError for t outside [0, n) or u shorter than d, and as {@linkcode attentionWeights}
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
  if (u.length < d) throw new ShapeError(`u has ${u.length} elements, expected ≥ ${d}`);
  assertFinite(u, "u", 0, d);
  const { attention, output } = attend64(q, keys, values, n, d);
  let qu = 0;
  for (let i = 0; i < d; i++) qu += q[i] * u[i];
  const a = attention[t];
  const f = a * (1 - 2 * a) * qu * qu / d;
  const out = new Float64Array(d);
  for (let i = 0; i < d; i++) out[i] = f * (values[t * d + i] - output[i]);
  return out;
}
