import assert from "node:assert/strict";
import {
  attentionErrorBound,
  attentionErrorFirstOrder,
  attentionOutputError,
} from "../../core/attention_bound.ts";
import { InvalidValueError, ShapeError } from "../../core/errors.ts";
import { gaussian, makeRng, randomArray } from "./_rng.ts";

/**
 * Independent reference quantizer for this test: asymmetric integer groups of `group` elements,
 * along each token (axis "token") or along tokens within one channel (axis "channel"); returns the
 * decoded values and the per-element bound scale/2.
 */
function quantizeInt(
  x: Float32Array,
  n: number,
  d: number,
  bits: number,
  group: number,
  axis: "token" | "channel",
): { decoded: Float64Array; bound: Float64Array } {
  const decoded = new Float64Array(n * d);
  const bound = new Float64Array(n * d);
  const levels = 2 ** bits - 1;
  const groups: number[][] = [];
  if (axis === "token") {
    for (let t = 0; t < n; t++) {
      for (let g = 0; g < d; g += group) {
        const idx = [];
        for (let i = g; i < Math.min(d, g + group); i++) idx.push(t * d + i);
        groups.push(idx);
      }
    }
  } else {
    for (let c = 0; c < d; c++) {
      for (let g = 0; g < n; g += group) {
        const idx = [];
        for (let t = g; t < Math.min(n, g + group); t++) idx.push(t * d + c);
        groups.push(idx);
      }
    }
  }
  for (const idx of groups) {
    let lo = Infinity, hi = -Infinity;
    for (const i of idx) lo = Math.min(lo, x[i]), hi = Math.max(hi, x[i]);
    const scale = (hi - lo) / levels;
    for (const i of idx) {
      const code = scale === 0 ? 0 : Math.round((x[i] - lo) / scale);
      decoded[i] = lo + code * scale;
      bound[i] = (scale / 2) * (1 + 1e-12);
    }
  }
  return { decoded, bound };
}

Deno.test("attentionErrorBound() is never below the realized error: 10,000 random cases", () => {
  const rng = makeRng(20240601);
  const dims = [2, 4, 8, 16, 32, 64];
  const bitsList = [2, 3, 4, 5, 6, 8];
  let minSlack = Infinity;
  for (let c = 0; c < 10_000; c++) {
    const d = dims[Math.floor(rng() * dims.length)];
    const n = 1 + Math.floor(rng() * (d >= 32 ? 24 : 64));
    const qScale = 0.1 + 8 * rng();
    const kScale = 0.2 + 3 * rng();
    const q = randomArray(rng, d, qScale);
    const keys = randomArray(rng, n * d, kScale);
    const values = randomArray(rng, n * d, 0.2 + 3 * rng());
    // A few outlier channels, as real keys have.
    if (rng() < 0.3) { for (let t = 0; t < n; t++) keys[t * d] *= 8; }
    const bits = bitsList[Math.floor(rng() * bitsList.length)];
    const axis = rng() < 0.5 ? "token" : "channel";
    const group = axis === "token"
      ? Math.min(d, 8 << Math.floor(rng() * 2))
      : 8 << Math.floor(rng() * 2);
    const kq = quantizeInt(keys, n, d, bits, group, axis);
    const vq = quantizeInt(values, n, d, bits, Math.min(d, group), "token");
    const bound = attentionErrorBound(q, keys, values, n, d, kq.bound, vq.bound);
    const realized = attentionOutputError(q, keys, values, kq.decoded, vq.decoded, n, d);
    assert.ok(realized <= bound, `case ${c}: realized ${realized} > bound ${bound}`);
    // Adversarial corner: every element at ± its bound, signs chosen to push scores apart.
    const kc = Float64Array.from(keys);
    const vc = Float64Array.from(values);
    for (let j = 0; j < n * d; j++) {
      kc[j] += (gaussian(rng) > 0 ? 1 : -1) * kq.bound[j];
      vc[j] += (gaussian(rng) > 0 ? 1 : -1) * vq.bound[j];
    }
    const corner = attentionOutputError(q, keys, values, kc, vc, n, d);
    assert.ok(corner <= bound, `case ${c}: corner ${corner} > bound ${bound}`);
    if (realized > 0) minSlack = Math.min(minSlack, bound / realized);
  }
  assert.ok(minSlack >= 1, `smallest bound/realized ratio ${minSlack}`);
});

Deno.test("attentionErrorBound() is zero for exact caches and tight to first order for tiny errors", () => {
  const rng = makeRng(7);
  for (const { n, d } of [{ n: 16, d: 8 }, { n: 40, d: 32 }]) {
    const q = randomArray(rng, d, 2);
    const keys = randomArray(rng, n * d);
    const values = randomArray(rng, n * d);
    const zero = new Float64Array(n * d);
    assert.ok(attentionErrorBound(q, keys, values, n, d, zero, zero) < 1e-10);
    const tiny = new Float64Array(n * d).fill(1e-7);
    const bound = attentionErrorBound(q, keys, values, n, d, tiny, tiny);
    const first = attentionErrorFirstOrder(q, keys, values, n, d, tiny, tiny);
    // Hölder's b_j = Σ|q_i|e/√d is ≤ √d·‖q‖e/√d, so the bound is at most √d-ish above first order.
    assert.ok(bound > 0 && bound < 4 * Math.sqrt(d) * first, `bound ${bound} first ${first}`);
  }
});

Deno.test("an infinite key error where the query is zero moves no score (was NaN: 0·∞)", () => {
  // q = [0, 1]: the first channel's key error cannot change a score, infinite or not
  const q = [0, 1], k = [1, 0.5, -1, 0.25], v = [1, 2, 3, 4], none = [0, 0, 0, 0];
  const keyError = [Infinity, 0.1, Infinity, 0.1];
  const bound = attentionErrorBound(q, k, v, 2, 2, keyError, none);
  const finite = attentionErrorBound(q, k, v, 2, 2, [0, 0.1, 0, 0.1], none);
  assert.equal(bound, finite);
  assert.ok(Number.isFinite(bound) && bound > 0);
  const first = attentionErrorFirstOrder([0, 0], k, v, 2, 2, keyError, none);
  assert.equal(first, 0, "a zero query: no score moves, first order");
});

Deno.test("attentionErrorBound() refuses error bounds it cannot honour (was NaN or too small)", () => {
  const q = [1, 0], k = [1, 0, 0, 1], v = [1, 2, 3, 4], e = [0.1, 0.1, 0.1, 0.1];
  const table: [string, () => unknown, unknown, RegExp][] = [
    [
      "short key errors",
      () => attentionErrorBound(q, k, v, 2, 2, [0.1], e),
      ShapeError,
      /keyError has 1 elements, expected ≥ 4/,
    ],
    [
      "negative key error",
      () => attentionErrorBound(q, k, v, 2, 2, [0, -1, 0, 0], e),
      InvalidValueError,
      /keyError\[1\] is -1, expected a number ≥ 0/,
    ],
    [
      "NaN value error",
      () => attentionErrorBound(q, k, v, 2, 2, e, [0, 0, NaN, 0]),
      InvalidValueError,
      /valueError\[2\] is NaN/,
    ],
    [
      "NaN key",
      () => attentionErrorBound(q, [NaN, 0, 0, 1], v, 2, 2, e, e),
      InvalidValueError,
      /keys\[0\] is NaN/,
    ],
    [
      "short errors, first order",
      () => attentionErrorFirstOrder(q, k, v, 2, 2, e, [0.1]),
      ShapeError,
      /valueError has 1 elements/,
    ],
    [
      "short perturbed keys",
      () => attentionOutputError(q, k, v, [1], v, 2, 2),
      ShapeError,
      /keys has 1 elements/,
    ],
  ];
  for (const [what, f, cls, re] of table) {
    assert.throws(
      f,
      (x) => x instanceof (cls as typeof Error) && re.test((x as Error).message),
      what,
    );
  }
});

Deno.test("attentionErrorBound covers the scores' own rounding at large scores", () => {
  // a key moved by one ulp under scores near 10⁸: the float64 evaluation moves the output more
  // than a relative weight margin alone covers (the bound was 3.8× too small)
  const k = [0.5, 0.2, 0.5, 0.2], v = [0, 0, 1, 1], moved = [0.5, 0.2, 0.5, 0.20000000000000004];
  const eK = [0, 0, 0, 2.7755575615628914e-17], eV = [0, 0, 0, 0];
  for (const q of [[1e8, 100000004], [1e4, 10001]]) {
    const bound = attentionErrorBound(q, k, v, 2, 2, eK, eV);
    const measured = attentionOutputError(q, k, v, moved, v, 2, 2);
    assert.ok(measured <= bound, `q ${q}: ${measured} > ${bound}`);
  }
  // random heads with scores up to ~10⁶ and keys moved by a few ulps
  const next = makeRng(77);
  for (let trial = 0; trial < 300; trial++) {
    const n = 2 + Math.floor(next() * 6), d = 2 + Math.floor(next() * 7);
    const scale = 10 ** (1 + 5 * next());
    const q = Array.from({ length: d }, () => (next() - 0.5) * scale);
    const keys = Array.from({ length: n * d }, () => next() - 0.5);
    const values = Array.from({ length: n * d }, () => next() - 0.5);
    const kp = keys.map((x) => x * (1 + (next() - 0.5) * 8e-16));
    const eK = kp.map((x, i) => Math.abs(x - keys[i]));
    const bound = attentionErrorBound(q, keys, values, n, d, eK, new Array(n * d).fill(0));
    const measured = attentionOutputError(q, keys, values, kp, values, n, d);
    assert.ok(measured <= bound, `trial ${trial}: ${measured} > ${bound}`);
  }
});

Deno.test("attentionErrorBound() is Infinity, not NaN, when the scores' rounding is unbounded", () => {
  // γ overflowed to ∞, and a weight that underflowed to 0 read 0·(1 − ∞) = NaN: every
  // `realized > bound` check passed
  const cases: [number[], number[], number, number][] = [
    [[1.1e9], [1e9, 0.9e9], 2, 1],
    [[1e154, 1e154], [1.5e154, -1.5e154, -1, 0], 2, 2],
  ];
  for (const [q, keys, n, d] of cases) {
    const values = Array.from({ length: n * d }, (_, i) => i + 1);
    const b = attentionErrorBound(
      q,
      keys,
      values,
      n,
      d,
      new Array(n * d).fill(0),
      new Array(n * d).fill(0.1),
    );
    assert.equal(b, Infinity);
  }
});
