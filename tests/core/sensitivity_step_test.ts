import assert from "node:assert/strict";
import { attentionWeights, headSensitivity } from "../../core/attention_sensitivity.ts";
import { InvalidValueError, ShapeError } from "../../core/errors.ts";
import { SensitivityStep } from "../../core/sensitivity_step.ts";
import { makeRng, randomArray } from "./_rng.ts";

function relClose(a: number, b: number, tol: number): boolean {
  return Math.abs(a - b) <= tol * Math.max(Math.abs(a), Math.abs(b), 1e-300);
}

Deno.test("SensitivityStep.run() matches headSensitivity() per head within 1e-12", () => {
  const cases = [
    { seed: 1, n: 7, d: 4, group: 1 },
    { seed: 2, n: 50, d: 8, group: 2 },
    { seed: 3, n: 64, d: 16, group: 4 },
    { seed: 4, n: 33, d: 12, group: 5 },
    { seed: 5, n: 129, d: 32, group: 8 },
  ];
  for (const { seed, n, d, group } of cases) {
    const rng = makeRng(seed);
    const queries = randomArray(rng, 3 + group * d, 2);
    const keys = randomArray(rng, n * d), values = randomArray(rng, n * d);
    const step = new SensitivityStep(n + 5, d, group);
    step.run(queries, 3, keys, values, n);
    for (let h = 0; h < group; h++) {
      const ref = headSensitivity(queries.subarray(3 + h * d, 3 + (h + 1) * d), keys, values, n, d);
      const base = h * step.capacity;
      for (let t = 0; t < n; t++) {
        const at = `seed ${seed} head ${h} t ${t}`;
        assert.ok(relClose(step.attention[base + t], ref.attention[t], 1e-12), `α ${at}`);
        assert.ok(relClose(step.keyGradNorm[base + t], ref.keyGradNorm[t], 1e-12), `grad ${at}`);
        assert.ok(
          relClose(step.hessianTraceNorm[base + t], ref.hessianTraceNorm[t], 1e-12),
          `hessian ${at}`,
        );
        assert.ok(relClose(step.curvature[base + t], ref.curvature[t], 1e-12), `κ ${at}`);
      }
      for (let i = 0; i < d; i++) {
        assert.ok(relClose(step.output[h * d + i], ref.output[i], 1e-12), `o seed ${seed}`);
      }
    }
  }
});

Deno.test("SensitivityStep.run() gives the same results when reused at another length", () => {
  const rng = makeRng(21);
  const d = 8, group = 4, n = 40;
  const queries = randomArray(rng, 2 * group * d, 2);
  const keys = randomArray(rng, n * d), values = randomArray(rng, n * d);
  const reused = new SensitivityStep(n, d, group);
  reused.run(queries, 0, keys, values, n);
  reused.run(queries, group * d, keys, values, 17);
  const fresh = new SensitivityStep(17, d, group);
  fresh.run(queries, group * d, keys, values, 17);
  for (let h = 0; h < group; h++) {
    for (let t = 0; t < 17; t++) {
      assert.equal(reused.curvature[h * n + t], fresh.curvature[h * 17 + t]);
      assert.equal(reused.attention[h * n + t], fresh.attention[h * 17 + t]);
    }
  }
});

Deno.test("SensitivityStep.run() key gradient norm agrees with central finite differences", () => {
  // ∂o/∂k_t = α_t(v_t − o)qᵀ/√d is rank one: its norm is reached along u = q/‖q‖.
  const cases = [{ seed: 31, n: 12, d: 8, group: 4 }, { seed: 32, n: 30, d: 16, group: 1 }];
  for (const { seed, n, d, group } of cases) {
    const rng = makeRng(seed);
    const queries = randomArray(rng, group * d, 1.5);
    const keys = randomArray(rng, n * d), values = randomArray(rng, n * d);
    const step = new SensitivityStep(n, d, group);
    step.run(queries, 0, keys, values, n);
    for (let h = 0; h < group; h++) {
      const q = queries.subarray(h * d, (h + 1) * d);
      let qn = 0;
      for (let i = 0; i < d; i++) qn += q[i] * q[i];
      qn = Math.sqrt(qn);
      for (const t of [0, n >> 1, n - 1]) {
        const eps = 1e-5;
        const o = [1, -1].map((sign) => {
          const k = Float64Array.from(keys);
          for (let i = 0; i < d; i++) k[t * d + i] += sign * eps * q[i] / qn;
          const out = new Float64Array(d);
          attentionWeights(q, k, values, n, d, new Float64Array(n), out);
          return out;
        });
        let s = 0;
        for (let i = 0; i < d; i++) s += ((o[0][i] - o[1][i]) / (2 * eps)) ** 2;
        const fd = Math.sqrt(s);
        assert.ok(relClose(step.keyGradNorm[h * n + t], fd, 1e-5), `seed ${seed} h ${h} t ${t}`);
      }
    }
  }
});

Deno.test("SensitivityStep rejects bad sizes with ShapeError", () => {
  const rng = makeRng(41);
  const d = 4, n = 6;
  const keys = randomArray(rng, n * d), values = randomArray(rng, n * d);
  const q = randomArray(rng, 2 * d);
  const step = new SensitivityStep(n, d, 2);
  const bad: [string, () => void][] = [
    ["capacity 0", () => new SensitivityStep(0, d)],
    ["fractional head dim", () => new SensitivityStep(n, 2.5)],
    ["n beyond capacity", () => step.run(q, 0, keys, values, n + 1)],
    ["n = 0", () => step.run(q, 0, keys, values, 0)],
    ["short keys", () => step.run(q, 0, keys.subarray(0, d), values, n)],
    ["short queries", () => step.run(q, d, keys, values, n)],
  ];
  for (const [label, f] of bad) assert.throws(f, ShapeError, label);
});

Deno.test("SensitivityStep.run() rejects a NaN or fractional query offset and non-finite queries (were NaN outputs)", () => {
  const rng = makeRng(42);
  const d = 4, n = 5;
  const keys = randomArray(rng, n * d), values = randomArray(rng, n * d);
  const step = new SensitivityStep(n, d, 2);
  for (const offset of [NaN, 1.5, -1]) {
    assert.throws(
      () => step.run(randomArray(rng, 3 * d), offset, keys, values, n),
      (e) =>
        e instanceof ShapeError &&
        new RegExp(`query offset ${offset}, expected an integer ≥ 0`).test(e.message),
      String(offset),
    );
  }
  for (const bad of [NaN, Infinity, -Infinity]) {
    const q = randomArray(rng, 3 + 2 * d);
    q[3 + d + 2] = bad; // head 1, element 2
    assert.throws(
      () => step.run(q, 3, keys, values, n),
      (e) =>
        e instanceof InvalidValueError && e.index === 9 &&
        new RegExp(`queries\\[9\\] is ${bad}, expected a finite number`).test(e.message),
      String(bad),
    );
  }
  // Elements outside the group's queries are not read, so they may be anything.
  const q = randomArray(rng, 3 + 2 * d);
  q[0] = NaN;
  step.run(q, 3, keys, values, n);
  assert.ok(step.output.every(Number.isFinite));
});

/** A fresh seed per run, printed in every failure message. */
function freshSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

Deno.test("SensitivityStep.run() refuses float64 queries past ±2^128 and stays finite up to it (was NaN α)", () => {
  const seed = freshSeed(), rng = makeRng(seed);
  const st = new SensitivityStep(2, 2, 1);
  const before = st.attention.slice();
  assert.throws(
    () =>
      st.run(
        new Float64Array([1e300, 0]),
        0,
        new Float32Array([1e38, 0, 0, 1]),
        new Float32Array(4),
        2,
      ),
    (e) =>
      e instanceof InvalidValueError && e.index === 0 &&
      /queries\[0\] is 1e\+300, expected a finite number within ±2\^128/.test(e.message),
  );
  assert.deepEqual(st.attention, before, "nothing written");
  // At the limit, with float32 keys and values at ±MAX: every result finite.
  const d = 1 + Math.floor(rng() * 64),
    n = 1 + Math.floor(rng() * 40),
    group = 1 + Math.floor(rng() * 6);
  const f32max = 3.4028234663852886e38;
  const sign = () => (rng() < 0.5 ? -1 : 1);
  const queries = Float64Array.from(
    { length: group * d },
    () => sign() * 2 ** 128 * (rng() < 0.5 ? 1 : rng()),
  );
  const keys = Float32Array.from(
    { length: n * d },
    () => sign() * f32max * (rng() < 0.5 ? 1 : rng()),
  );
  const values = Float32Array.from(
    { length: n * d },
    () => sign() * f32max * (rng() < 0.5 ? 1 : rng()),
  );
  const step = new SensitivityStep(n, d, group);
  step.run(queries, 0, keys, values, n);
  for (
    const name of ["attention", "keyGradNorm", "hessianTraceNorm", "curvature", "output"] as const
  ) {
    assert.ok(
      step[name].every(Number.isFinite),
      `seed ${seed} d ${d} n ${n} group ${group}: ${name}`,
    );
  }
  const over = queries.slice();
  const j = Math.floor(rng() * group * d);
  over[j] = (rng() < 0.5 ? -1 : 1) * 2 ** 128 * (1 + 2 ** -52);
  assert.throws(
    () => step.run(over, 0, keys, values, n),
    (e) => e instanceof InvalidValueError && e.index === j,
    `seed ${seed} j ${j}`,
  );
});

Deno.test("SensitivityStep.run() zeroes positions a longer earlier run left past n", () => {
  const seed = freshSeed(), rng = makeRng(seed);
  const d = 1 + Math.floor(rng() * 16), group = 1 + Math.floor(rng() * 6);
  const cap = 4 + Math.floor(rng() * 40), n = 1 + Math.floor(rng() * (cap - 1));
  const queries = randomArray(rng, group * d, 2);
  const keys = randomArray(rng, cap * d), values = randomArray(rng, cap * d);
  const step = new SensitivityStep(cap, d, group);
  step.run(queries, 0, keys, values, cap);
  step.run(queries, 0, keys, values, n);
  const fresh = new SensitivityStep(cap, d, group);
  fresh.run(queries, 0, keys, values, n);
  for (
    const name of ["attention", "keyGradNorm", "hessianTraceNorm", "curvature", "output"] as const
  ) {
    assert.deepEqual(
      step[name],
      fresh[name],
      `seed ${seed} cap ${cap} n ${n} group ${group}: ${name}`,
    );
  }
  for (let h = 0; h < group; h++) {
    for (let t = n; t < cap; t++) {
      assert.equal(step.attention[h * cap + t], 0, `seed ${seed} h ${h} t ${t}`);
    }
  }
});

Deno.test("SensitivityStep.run() keeps the precision of a position taking nearly all the attention", () => {
  // v_t − o cancelled as α_t → 1 (0 from a score gap of 40 on); two positions, gap y, closed form
  // ‖∂o/∂k_0‖ = α_0·α_1‖v_0 − v_1‖‖q‖/√d, in the one-head loop and the four-head block
  const d = 2, n = 2;
  const keys = Float32Array.of(1, 0, 0, 0), values = Float32Array.of(1, 2, 3, -1);
  for (const group of [1, 4]) {
    const step = new SensitivityStep(n, d, group);
    for (const x of [20, 40, 80, 200]) {
      const queries = new Float32Array(group * d).map((_, i) => (i % d === 0 ? x : 0));
      step.run(queries, 0, keys, values, n);
      const y = x * (1 / Math.sqrt(d));
      const a1 = Math.exp(-y) / (1 + Math.exp(-y)), a0 = 1 / (1 + Math.exp(-y));
      const want = a0 * a1 * Math.sqrt(13) * x / Math.sqrt(d);
      for (let h = 0; h < group; h++) {
        const got = step.keyGradNorm[h * step.capacity];
        assert.ok(relClose(got, want, 1e-12), `group ${group} head ${h} gap ${y}: ${got} ${want}`);
        assert.ok(relClose(step.keyGradNorm[h * step.capacity + 1], want, 1e-12));
      }
    }
  }
});
