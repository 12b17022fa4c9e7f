/**
 * A rigorous bound on how far one attention head's output can move when every cached key and
 * value element moves by at most a given amount (the codecs' per-element error bounds), not just
 * to first order.
 *
 * With scores s_j = q·k_j/√d, weights α = softmax(s), output o = Σ α_j v_j, and perturbed keys and
 * values k_j + δk_j, v_j + δv_j, the scores move by Δ_j = q·δk_j/√d and exactly
 *
 *   o' − o = Σ_j (α'_j − α_j)(v_j − o) + Σ_j α'_j δv_j,   α'_j = α_j e^{Δ_j} / Z,  Z = Σ_i α_i e^{Δ_i}.
 *
 * With |δk_{j,i}| ≤ eK_{j,i}, Hölder gives |Δ_j| ≤ b_j = Σ_i |q_i| eK_{j,i}/√d (never looser than
 * ‖q‖‖δk_j‖/√d). Z lies in [Zlo, Zhi] = [Σ α_i e^{−b_i}, Σ α_i e^{b_i}], so α'_j/α_j lies in
 * [e^{−b_j}/Zhi, e^{b_j}/Zlo] and
 *
 *   ‖o' − o‖ ≤ Σ_j α_j m_j ‖v_j − o‖ + min(Σ_j min(1, α_j e^{b_j}/Zlo)‖eV_j‖, max_j ‖eV_j‖),
 *
 * m_j = max(e^{b_j}/Zlo − 1, 1 − e^{−b_j}/Zhi); the first sum is also capped at 2·max_j ‖v_j − o‖
 * because Σ_j |α'_j − α_j| ≤ 2. Every step is rounded outward, and the float64 weights and output
 * are widened by a relative margin that covers their own rounding (the scores' absolute rounding
 * included, which dominates at large scores), so the bound holds for the exact real-number
 * attention; a last term 2(√d + 1)·γ·max|v| also covers the float64 evaluation of
 * o and o' by whoever measures the realized error (γ the relative rounding margin below).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { attentionErrorBound, attentionOutputError } from "./attention_bound.ts";
 * const q = [1, 2], k = [1, 0, 0, 1], v = [1, 2, 3, 4];
 * const eK = [0.01, 0.01, 0.01, 0.01], eV = [0.02, 0.02, 0.02, 0.02];
 * const bound = attentionErrorBound(q, k, v, 2, 2, eK, eV);
 * const moved = attentionOutputError(q, k, v, [1.01, 0, 0, 0.99], [1.02, 2, 3, 3.98], 2, 2);
 * if (!(moved <= bound)) throw new Error("the bound holds");
 * ```
 * @module
 */

import { attend64, attentionWeights } from "./attention_sensitivity.ts";
import { InvalidValueError, ShapeError } from "./errors.ts";
import {
  addUp,
  divDown,
  divUp,
  expDown,
  expUp,
  mulUp,
  nextDown,
  nextUp,
  sqrtUp,
} from "./interval.ts";

const _EPS = 2 ** -53;

/**
 * Upper bound on ‖o' − o‖₂ for one query over n positions, given per-element error bounds on the
 * keys and values (see the module doc for the derivation).
 *
 * @param q query, length d
 * @param keys n × d keys (the exact, unquantized ones)
 * @param values n × d values (exact)
 * @param n positions
 * @param d head dimension
 * @param keyError n × d bounds on |k̂ − k| per element
 * @param valueError n × d bounds on |v̂ − v| per element
 * @returns an upper bound on the output error, valid for every perturbation within the bounds
 * @throws ShapeError for arrays shorter than n × d (or d); InvalidValueError for a NaN or ±Inf in
 *   q, keys or values, or an error bound that is NaN or negative, naming its index
 */
export function attentionErrorBound(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
  keyError: ArrayLike<number>,
  valueError: ArrayLike<number>,
): number {
  // A NaN anywhere makes the bound NaN, and `realized > NaN` is false: the check would pass
  // silently. A negative element bound shrinks the bound below what it claims to cover.
  const { attention: alpha, output: out } = attend64(q, keys, values, n, d);
  _checkErrors(keyError, n * d, "keyError");
  _checkErrors(valueError, n * d, "valueError");
  const invSqrtD = nextUp(1 / Math.sqrt(d));
  // Each score's own rounding is absolute, not relative: a dot product of d terms is off by up to
  // (d + 2)·2⁻⁵³·Σ|q_i k_ji|/√d, and a score off by r moves its weight against the others by a
  // factor up to e^{2r}. At large scores that outgrows the relative margin below (scores near
  // 5·10³ broke the bound 1.65× before this term; a fuzzing review found it).
  let rMax = 0;
  for (let j = 0; j < n; j++) {
    let a = 0;
    for (let i = 0; i < d; i++) a = addUp(a, mulUp(Math.abs(q[i]), Math.abs(keys[j * d + i])));
    rMax = Math.max(rMax, a);
  }
  rMax = mulUp(mulUp((d + 2) * _EPS, rMax), invSqrtD);
  // Relative error of the computed weights (exp, a sum of n terms and a division, with a generous
  // factor: 4(d + n + 8)·2⁻⁵³), and the scores' rounding.
  const gamma = addUp(4 * (d + n + 8) * _EPS, nextUp(expUp(2 * rMax) - 1));
  // scores so large their rounding alone can move every weight: no finite bound (and a weight that
  // underflowed to 0 then read 0·(1 − ∞) = NaN, which every `realized > bound` check passed)
  if (!(gamma < Infinity)) return Infinity;
  let vMax = 0;
  for (let j = 0; j < n * d; j++) {
    vMax = Math.max(vMax, Math.abs(values[j]) + Math.abs(valueError[j]));
  }
  // |ô − o| per element ≤ γ·max|v| (weights off by γ relatively, summation error of the same order).
  const outSlack = nextUp(2 * gamma * vMax + Number.MIN_VALUE);
  const b = new Float64Array(n);
  let zLo = 0;
  let zHi = 0;
  for (let j = 0; j < n; j++) {
    let s = 0;
    // a zero query entry ignores its key error, an infinite one included (0·∞ would be NaN)
    for (let i = 0; i < d; i++) {
      if (q[i] !== 0) s = addUp(s, mulUp(Math.abs(q[i]), keyError[j * d + i]));
    }
    b[j] = mulUp(s, invSqrtD);
    const aLo = nextDown(alpha[j] * (1 - gamma));
    const aHi = nextUp(alpha[j] * (1 + gamma));
    zLo = nextDown(zLo + nextDown(aLo * expDown(-b[j])));
    zHi = addUp(zHi, mulUp(aHi, expUp(b[j])));
  }
  zLo = Math.max(zLo, Number.MIN_VALUE);
  let shift = 0;
  let spreadMax = 0;
  let valueWeighted = 0;
  let valueMax = 0;
  for (let j = 0; j < n; j++) {
    const aHi = nextUp(alpha[j] * (1 + gamma));
    const up = divUp(expUp(b[j]), zLo);
    const down = divDown(expDown(-b[j]), zHi);
    const m = Math.max(nextUp(up - 1), nextUp(1 - down), 0);
    let r = 0;
    for (let i = 0; i < d; i++) {
      const e = nextUp(Math.abs(values[j * d + i] - out[i])) + outSlack;
      r = addUp(r, mulUp(e, e));
    }
    const spread = sqrtUp(r);
    spreadMax = Math.max(spreadMax, spread);
    shift = addUp(shift, mulUp(mulUp(aHi, m), spread));
    let ev = 0;
    for (let i = 0; i < d; i++) ev = addUp(ev, mulUp(valueError[j * d + i], valueError[j * d + i]));
    const evNorm = sqrtUp(ev);
    valueMax = Math.max(valueMax, evNorm);
    valueWeighted = addUp(valueWeighted, mulUp(Math.min(1, mulUp(aHi, up)), evNorm));
  }
  const shiftTerm = Math.min(shift, mulUp(2, spreadMax));
  // Also cover the float64 evaluation of o and o' by whoever measures the realized error.
  const measurement = mulUp(2 * Math.sqrt(d) + 2, outSlack);
  return addUp(addUp(shiftTerm, Math.min(valueWeighted, valueMax)), measurement);
}

/**
 * ‖o' − o‖₂ measured in float64: the output over perturbed keys and values against the output
 * over the exact ones.
 *
 * @param q query, length d
 * @param keys n × d exact keys
 * @param values n × d exact values
 * @param perturbedKeys n × d perturbed (e.g. decoded) keys
 * @param perturbedValues n × d perturbed values
 * @param n positions
 * @param d head dimension
 * @returns the realized output error
 * @throws ShapeError for arrays shorter than n × d (or d)
 */
export function attentionOutputError(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  perturbedKeys: ArrayLike<number>,
  perturbedValues: ArrayLike<number>,
  n: number,
  d: number,
): number {
  const w = new Float64Array(Math.max(n, 0));
  const o = new Float64Array(Math.max(d, 0));
  const o2 = new Float64Array(d);
  attentionWeights(q, keys, values, n, d, w, o);
  attentionWeights(q, perturbedKeys, perturbedValues, n, d, w, o2);
  let s = 0;
  for (let i = 0; i < d; i++) s += (o2[i] - o[i]) ** 2;
  return Math.sqrt(s);
}

/**
 * First-order prediction of the output error for one query (not a bound):
 * Σ_j α_j (‖v_j − o‖‖q‖/√d · ‖eK_j‖ + ‖eV_j‖).
 *
 * @param q query, length d
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @param keyError n × d key error magnitudes per element
 * @param valueError n × d value error magnitudes per element
 * @returns the linearised error estimate
 * @throws ShapeError for arrays shorter than n × d (or d); InvalidValueError for a NaN or
 *   negative error bound
 */
export function attentionErrorFirstOrder(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
  keyError: ArrayLike<number>,
  valueError: ArrayLike<number>,
): number {
  const { attention: alpha, output: out } = attend64(q, keys, values, n, d);
  _checkErrors(keyError, n * d, "keyError");
  _checkErrors(valueError, n * d, "valueError");
  let qq = 0;
  for (let i = 0; i < d; i++) qq += q[i] * q[i];
  const gain = Math.sqrt(qq / d);
  let total = 0;
  for (let j = 0; j < n; j++) {
    let r = 0, ek = 0, ev = 0;
    for (let i = 0; i < d; i++) {
      r += (values[j * d + i] - out[i]) ** 2;
      ek += keyError[j * d + i] ** 2;
      ev += valueError[j * d + i] ** 2;
    }
    // no weight, a zero query or a value at the output: no contribution, even from an infinite
    // error bound (0·∞ would be NaN)
    const keyTerm = r > 0 && gain > 0 ? Math.sqrt(r) * gain * Math.sqrt(ek) : 0;
    if (alpha[j] > 0) total += alpha[j] * (keyTerm + Math.sqrt(ev));
  }
  return total;
}

/** Element error bounds: n × d of them, each ≥ 0 (+Infinity is a valid, if useless, bound). */
function _checkErrors(x: ArrayLike<number>, count: number, what: string): void {
  if (x.length < count) {
    throw new ShapeError(`${what} has ${x.length} elements, expected ≥ ${count}`);
  }
  for (let i = 0; i < count; i++) {
    if (!(x[i] >= 0)) {
      throw new InvalidValueError(`${what}[${i}] is ${x[i]}, expected a number ≥ 0`, i);
    }
  }
}
