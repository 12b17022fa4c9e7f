import assert from "node:assert/strict";
import {
  attend64,
  attentionWeights,
  headSensitivity,
  keyJacobian,
  keySecondDerivative,
} from "../../core/attention_sensitivity.ts";
import { InvalidValueError, ShapeError } from "../../core/errors.ts";
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

/** A fresh seed per run, printed in every failure message. */
function freshSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

Deno.test("attentionWeights() refuses an output that overflows (was o = Infinity)", () => {
  const seed = freshSeed(), rng = makeRng(seed);
  const d = 1 + Math.floor(rng() * 4), i = Math.floor(rng() * d);
  // keys 0: every α_t = 1/n, and o_i = Σ_t (1/n)·MAX_VALUE rounds past MAX_VALUE for some n
  let overflowed = 0;
  for (const n of [11, ...Array.from({ length: 8 }, () => 2 + Math.floor(rng() * 60))]) {
    const q = randomArray(rng, d), keys = new Float64Array(n * d);
    const values = Float64Array.from(randomArray(rng, n * d));
    for (let t = 0; t < n; t++) values[t * d + i] = Number.MAX_VALUE;
    let sum = 0;
    for (let t = 0; t < n; t++) sum += (1 / n) * Number.MAX_VALUE;
    const at = `seed ${seed} n ${n} d ${d} i ${i}`;
    const table: [string, () => unknown][] = [
      [
        "attentionWeights",
        () => attentionWeights(q, keys, values, n, d, new Float64Array(n), new Float64Array(d)),
      ],
      ["headSensitivity", () => headSensitivity(q, keys, values, n, d)],
    ];
    for (const [what, f] of table) {
      if (sum === Infinity) {
        assert.throws(
          f,
          (e) =>
            e instanceof InvalidValueError && e.index === i &&
            new RegExp(`output o\\[${i}\\] is Infinity: the weighted sum of values overflows`).test(
              e.message,
            ),
          `${at} ${what}`,
        );
      } else if (what === "attentionWeights") f(); // headSensitivity: κ ≈ 1e450 overflows
    }
    if (sum === Infinity) overflowed++;
  }
  assert.ok(overflowed > 0, `seed ${seed}: n = 11 overflows`);
});

Deno.test("headSensitivity() scales exactly where ‖q‖² or ‖v − o‖² over- or underflows (were NaN, Infinity or 0)", () => {
  const seed = freshSeed(), rng = makeRng(seed);
  const n = 2 + Math.floor(rng() * 30), d = 1 + Math.floor(rng() * 16);
  const q = Float64Array.from(randomArray(rng, d, 1 + 2 * rng()));
  const keys = Float64Array.from(randomArray(rng, n * d));
  const values = Float64Array.from(randomArray(rng, n * d));
  const base = headSensitivity(q, keys, values, n, d);
  // q·2^a with keys·2^−a leaves every score, so α, unchanged; values·2^b scale o and v − o:
  // ‖∂o/∂k‖ scales by 2^(a+b), the Hessian trace by 2^(2a+b), κ by 2^(2a+1.5b)
  for (const [a, b] of [[600, -800], [-300, 600], [-560, 560], [0, -600], [-200, 700], [0, 0]]) {
    const s = headSensitivity(
      q.map((x) => x * 2 ** a),
      keys.map((x) => x * 2 ** -a),
      values.map((x) => x * 2 ** b),
      n,
      d,
    );
    const expect = [
      ["attention", base.attention, s.attention, 0],
      ["keyGradNorm", base.keyGradNorm, s.keyGradNorm, a + b],
      ["hessianTraceNorm", base.hessianTraceNorm, s.hessianTraceNorm, 2 * a + b],
      ["curvature", base.curvature, s.curvature, 2 * a + 1.5 * b],
    ] as const;
    for (const [name, ref, got, e] of expect) {
      for (let t = 0; t < n; t++) {
        const want = ref[t] * 2 ** e;
        assert.ok(
          Math.abs(got[t] - want) <= 1e-12 * want,
          `seed ${seed} n ${n} d ${d} (a, b) = (${a}, ${b}) ${name}[${t}]: ${got[t]} vs ${want}`,
        );
      }
    }
  }
});

Deno.test("headSensitivity() gives 0 where α_t = 0 or q = 0 and takes v − o past MAX_VALUE in halves (were NaN or Infinity)", () => {
  const big = [1e200, 1e200, -1e200, -1e200];
  const zero = headSensitivity([0, 0], [1, 0, 0, 1], big, 2, 2);
  const far = headSensitivity([1e3, 0], [1, 0, -1, 0], [1e160, 0, -1e160, 0], 2, 2);
  for (const s of [zero, far]) {
    for (const x of [s.keyGradNorm, s.hessianTraceNorm, s.curvature]) {
      assert.deepEqual([...x], [0, 0]);
    }
  }
  // ‖∂o/∂k_t‖ = α_t‖v_t − o‖‖q‖/√d with ‖v_t − o‖ = 2‖v_t/2 − o/2‖, in float64 without overflow
  // the second: α_1 ≈ e^−368 and v_1 − o ≈ −3e308, so that κ_1 ≈ 1e62 stays finite
  const cases = [[[1, 0], [1, 0, 0, 1], big], [[1, 0], [0, 0, -520.4, 0], [
    1.5e308,
    0,
    -1.5e308,
    0,
  ]]];
  for (const [q, keys, values] of cases) {
    const s = headSensitivity(q, keys, values, 2, 2);
    for (let t = 0; t < 2; t++) {
      const half = Math.hypot(
        values[2 * t] / 2 - s.output[0] / 2,
        values[2 * t + 1] / 2 - s.output[1] / 2,
      );
      const a = s.attention[t], qn = Math.hypot(q[0], q[1]);
      const g = a * half * qn / Math.SQRT2 * 2;
      const h = a * Math.abs(1 - 2 * a) * half * (qn * qn / 2) * 2;
      assert.ok(
        Math.abs(s.keyGradNorm[t] - g) <= 1e-14 * g,
        `${values} t ${t}: ${s.keyGradNorm[t]} vs ${g}`,
      );
      assert.ok(Math.abs(s.hessianTraceNorm[t] - h) <= 1e-14 * h, `${values} t ${t} hessian`);
      // o rounds v_0 − o to 0 in the second case: κ_0 = 0, as ‖∂o/∂k_0‖
      const k = a * g * Math.sqrt(h);
      assert.ok(Math.abs(s.curvature[t] - k) <= 1e-13 * k, `${values} t ${t} κ ${s.curvature[t]}`);
    }
  }
});

Deno.test("headSensitivity() and keyJacobian() refuse a result past the float64 range and never return NaN", () => {
  // ‖∂o/∂k_0‖ ≈ 0.67 · 1e300 · 1e300 / √2
  assert.throws(
    () => headSensitivity([1e300, 0], [1e-300, 0, 0, 1e-300], [1e300, 0, -1e300, 0], 2, 2),
    (e) =>
      e instanceof InvalidValueError && e.index === 0 &&
      /keyGradNorm of position 0 exceeds the float64 range/.test(e.message),
  );
  // v_1 − o overflows float64; the entries are finite, or 0 where q[c] = 0 (were -Infinity, NaN)
  const values = [1.5e308, 0, -1.5e308, 0];
  const jac = keyJacobian([1, 0], [1, 0, 0, 1], values, 2, 2, 1);
  const s = attend64([1, 0], [1, 0, 0, 1], values, 2, 2);
  const want = s.attention[1] / Math.SQRT2 * (values[2] / 2 - s.output[0] / 2) * 2;
  assert.ok(Math.abs(jac[0] - want) <= 1e-14 * Math.abs(want), `${jac[0]} vs ${want}`);
  assert.ok([jac[1], jac[2], jac[3]].every((x) => x === 0), `${jac}`);
  assert.throws(
    () => keyJacobian([1e300, 0], [1e-300, 0, 0, 1e-300], [1e300, 0, -1e300, 0], 2, 2, 0),
    (e) =>
      e instanceof InvalidValueError && e.index === 0 && /∂o\/∂k_t entry \(0, 0\)/.test(e.message),
  );
  // α(1 − 2α) = 0: 0 whatever (q·u)² (an overflowing (q·u)² gave 0·∞ = NaN)
  const second = keySecondDerivative([0, 0], [1, 0, 0, 1], [1, 2, 3, 4], 2, 2, 0, [1e200, 1e200]);
  assert.ok(second.every((x) => x === 0), `${second}`);
});

Deno.test("sensitivities of a position taking nearly all the attention keep their precision", () => {
  // v_t − o cancels as α_t → 1: at a score gap of 36 the gradient was 4% off, from 40 it was 0
  // (true value 4e-18, far above underflow). Two positions, gap y: v_0 − o = α_1(v_0 − v_1).
  const d = 2, n = 2;
  const keys = Float32Array.of(1, 0, 0, 0), values = Float32Array.of(1, 2, 3, -1);
  const spread = Math.sqrt(13); // ‖v_0 − v_1‖
  for (const x of [20, 36, 40, 50, 80, 200]) {
    const q = Float32Array.of(x, 0);
    const y = x * (1 / Math.sqrt(d)); // the score gap, as the library forms it
    const a1 = Math.exp(-y) / (1 + Math.exp(-y)), a0 = 1 / (1 + Math.exp(-y));
    const qNorm = x;
    const want = {
      grad0: a0 * a1 * spread * qNorm / Math.sqrt(d),
      hess0: a0 * (2 * a0 - 1) * a1 * spread * qNorm * qNorm / d,
      grad1: a1 * a0 * spread * qNorm / Math.sqrt(d),
    };
    const close = (got: number, expected: number, what: string) =>
      assert.ok(
        Math.abs(got - expected) <= 1e-12 * expected,
        `gap ${y}: ${what} ${got}, expected ${expected}`,
      );
    const s = headSensitivity(q, keys, values, n, d);
    close(s.keyGradNorm[0], want.grad0, "‖∂o/∂k_0‖");
    close(s.hessianTraceNorm[0], want.hess0, "‖tr H_0‖");
    close(s.curvature[0], a0 * want.grad0 * Math.sqrt(want.hess0), "κ_0");
    close(s.keyGradNorm[1], want.grad1, "‖∂o/∂k_1‖");
    // ∂o/∂k_0 = α_0·α_1(v_0 − v_1)qᵀ/√d: entry (1, 0) is α_0·α_1·3·x/√d
    const jac = keyJacobian(q, keys, values, n, d, 0);
    close(jac[2], a0 * a1 * 3 * x / Math.sqrt(d), "∂o_1/∂k_0,0");
    // along u = e_0: α_0(1 − 2α_0)·α_1(v_0 − v_1)·x²/d, element 1
    const second = keySecondDerivative(q, keys, values, n, d, 0, [1, 0]);
    close(-second[1], a0 * (2 * a0 - 1) * a1 * 3 * x * x / d, "d²o_1/dε²");
  }
});
