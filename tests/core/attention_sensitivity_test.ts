import assert from "node:assert/strict";
import {
  attentionWeights,
  headSensitivity,
  keyJacobian,
  keySecondDerivative,
} from "../../core/attention_sensitivity.ts";
import { ShapeError } from "../../core/errors.ts";
import { makeRng, randomArray } from "./_rng.ts";

/** Output of the head with key t replaced by k_t + h·u. */
function outputWithKey(
  q: Float32Array,
  keys: Float32Array,
  values: Float32Array,
  n: number,
  d: number,
  t: number,
  u: ArrayLike<number>,
  h: number,
): Float64Array {
  const k = Float64Array.from(keys);
  for (let i = 0; i < d; i++) k[t * d + i] += h * u[i];
  const w = new Float64Array(n);
  const o = new Float64Array(d);
  attentionWeights(q, k, values, n, d, w, o);
  return o;
}

function norm(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return Math.sqrt(s);
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const diff = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) diff[i] = a[i] - b[i];
  return norm(diff) / Math.max(norm(b), 1e-300);
}

/** Positions to differentiate: the heaviest one and a few with non-negligible weight. */
function probePositions(attention: Float64Array, rng: () => number): number[] {
  let best = 0;
  for (let t = 1; t < attention.length; t++) if (attention[t] > attention[best]) best = t;
  const out = [best];
  for (let tries = 0; tries < 50 && out.length < 4; tries++) {
    const t = Math.floor(rng() * attention.length);
    if (attention[t] > 1e-3 && Math.abs(1 - 2 * attention[t]) > 1e-2) out.push(t);
  }
  return out;
}

const cases = [
  { seed: 1, n: 5, d: 4, qScale: 1 },
  { seed: 2, n: 17, d: 8, qScale: 2 },
  { seed: 3, n: 64, d: 16, qScale: 3 },
  { seed: 4, n: 128, d: 64, qScale: 4 },
  { seed: 5, n: 33, d: 128, qScale: 6 },
];

Deno.test("keyJacobian() agrees with central finite differences on random heads", () => {
  for (const { seed, n, d, qScale } of cases) {
    const rng = makeRng(seed);
    const q = randomArray(rng, d, qScale);
    const keys = randomArray(rng, n * d);
    const values = randomArray(rng, n * d);
    const s = headSensitivity(q, keys, values, n, d);
    for (const t of probePositions(s.attention, rng)) {
      const jac = keyJacobian(q, keys, values, n, d, t);
      const fd = new Float64Array(d * d);
      const h = 1e-5;
      for (let c = 0; c < d; c++) {
        const e = new Float64Array(d);
        e[c] = 1;
        const plus = outputWithKey(q, keys, values, n, d, t, e, h);
        const minus = outputWithKey(q, keys, values, n, d, t, e, -h);
        for (let i = 0; i < d; i++) fd[i * d + c] = (plus[i] - minus[i]) / (2 * h);
      }
      const err = relErr(jac, fd);
      assert.ok(err < 1e-3, `seed ${seed} t ${t}: Jacobian rel err ${err}`);
      const normErr = Math.abs(s.keyGradNorm[t] - norm(fd)) / norm(fd);
      assert.ok(normErr < 1e-3, `seed ${seed} t ${t}: ‖∂o/∂k‖ rel err ${normErr}`);
    }
  }
});

Deno.test("headSensitivity() value gradient is α_t·I by finite differences", () => {
  for (const { seed, n, d, qScale } of cases) {
    const rng = makeRng(100 + seed);
    const q = randomArray(rng, d, qScale);
    const keys = randomArray(rng, n * d);
    const values = randomArray(rng, n * d);
    const s = headSensitivity(q, keys, values, n, d);
    for (const t of probePositions(s.attention, rng)) {
      const c = Math.floor(rng() * d);
      const h = 1e-4;
      const shifted = (sign: number) => {
        const v = Float64Array.from(values);
        v[t * d + c] += sign * h;
        const w = new Float64Array(n);
        const o = new Float64Array(d);
        attentionWeights(q, keys, v, n, d, w, o);
        return o;
      };
      const plus = shifted(1);
      const minus = shifted(-1);
      const fd = new Float64Array(d);
      for (let i = 0; i < d; i++) fd[i] = (plus[i] - minus[i]) / (2 * h);
      const expected = new Float64Array(d);
      expected[c] = s.attention[t];
      assert.ok(relErr(fd, expected) < 1e-3, `seed ${seed} t ${t}`);
    }
  }
});

Deno.test("keySecondDerivative() and the Hessian trace agree with central differences", () => {
  for (const { seed, n, d, qScale } of cases) {
    const rng = makeRng(200 + seed);
    const q = randomArray(rng, d, qScale);
    const keys = randomArray(rng, n * d);
    const values = randomArray(rng, n * d);
    const s = headSensitivity(q, keys, values, n, d);
    const h = 1e-4;
    const base = outputWithKey(q, keys, values, n, d, 0, new Float64Array(d), 0);
    for (const t of probePositions(s.attention, rng)) {
      // A random unit direction.
      const u = randomArray(rng, d);
      const un = norm(u);
      for (let i = 0; i < d; i++) u[i] /= un;
      const second = keySecondDerivative(q, keys, values, n, d, t, u);
      const plus = outputWithKey(q, keys, values, n, d, t, u, h);
      const minus = outputWithKey(q, keys, values, n, d, t, u, -h);
      const fd = new Float64Array(d);
      for (let i = 0; i < d; i++) fd[i] = (plus[i] - 2 * base[i] + minus[i]) / (h * h);
      const err = relErr(second, fd);
      assert.ok(err < 1e-3, `seed ${seed} t ${t}: second derivative rel err ${err}`);
      // Trace over the basis directions, by finite differences.
      const trace = new Float64Array(d);
      for (let c = 0; c < d; c++) {
        const e = new Float64Array(d);
        e[c] = 1;
        const p = outputWithKey(q, keys, values, n, d, t, e, h);
        const m = outputWithKey(q, keys, values, n, d, t, e, -h);
        for (let i = 0; i < d; i++) trace[i] += (p[i] - 2 * base[i] + m[i]) / (h * h);
      }
      const traceErr = Math.abs(s.hessianTraceNorm[t] - norm(trace)) / norm(trace);
      assert.ok(traceErr < 1e-3, `seed ${seed} t ${t}: ‖tr H‖ rel err ${traceErr}`);
      const kappa = s.attention[t] * s.keyGradNorm[t] * Math.sqrt(s.hessianTraceNorm[t]);
      assert.equal(s.curvature[t], kappa);
    }
  }
});

Deno.test("attention sensitivities reject sizes the arrays do not hold (were NaN)", () => {
  const q = [1, 0], k = [1, 0, 0, 1], v = [1, 2, 3, 4];
  const table: [string, () => unknown, RegExp][] = [
    ["n past keys", () => headSensitivity(q, k, v, 3, 2), /keys has 4 elements, expected ≥ 3 × 2/],
    ["n 0", () => headSensitivity(q, k, v, 0, 2), /positions n is 0, expected an integer ≥ 1/],
    ["d 0", () => headSensitivity(q, k, v, 2, 0), /head dimension d is 0, expected an integer ≥ 1/],
    ["short q", () => headSensitivity([1], k, v, 2, 2), /q has 1 elements, expected ≥ 2/],
    [
      "short values",
      () => attentionWeights(q, k, [1, 2], 2, 2, new Float64Array(2), new Float64Array(2)),
      /values has 2 elements/,
    ],
    [
      "short weights",
      () => attentionWeights(q, k, v, 2, 2, new Float64Array(1), new Float64Array(2)),
      /weights has 1 elements, expected ≥ 2/,
    ],
    [
      "t past n",
      () => keyJacobian(q, k, v, 2, 2, 5),
      /position t is 5, expected an integer in \[0, 2\)/,
    ],
    ["short u", () => keySecondDerivative(q, k, v, 2, 2, 0, [1]), /u has 1 elements, expected ≥ 2/],
  ];
  for (const [what, f, re] of table) {
    assert.throws(f, (e) => e instanceof ShapeError && re.test((e as Error).message), what);
  }
});
