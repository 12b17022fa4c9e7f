import assert from "node:assert/strict";
import {
  empiricalLayerGains,
  layerLipschitz,
  spectralNormUpper,
  traceResidualStream,
  withEmpiricalGains,
} from "../../core/layer_lipschitz.ts";
import { InvalidValueError, ShapeError } from "../../core/errors.ts";
import { parseCheckpoint } from "../../core/model/checkpoint.ts";
import { cacheShape, Transformer } from "../../core/model/transformer.ts";
import { Float32KVCache } from "../../core/model/kv_cache.ts";
import { quantizeHead } from "../../core/quantize_head.ts";
import { composeModelBound } from "../../core/verifier.ts";
import { QuantizingKVCache } from "../../bench/_quantizing_cache.ts";
import { makeRng, randomArray } from "./_rng.ts";

/** Power iteration: a lower estimate of ‖A‖₂. */
function powerNorm(a: Float32Array, rows: number, cols: number): number {
  let x = new Float64Array(cols).fill(1);
  let s = 0;
  for (let it = 0; it < 500; it++) {
    const y = new Float64Array(rows);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) y[r] += a[r * cols + c] * x[c];
    const z = new Float64Array(cols);
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) z[c] += a[r * cols + c] * y[r];
    s = Math.sqrt(
      Math.sqrt(z.reduce((p, v) => p + v * v, 0)) / Math.sqrt(x.reduce((p, v) => p + v * v, 0)),
    );
    const n = Math.sqrt(z.reduce((p, v) => p + v * v, 0));
    x = z.map((v) => v / n);
  }
  return s;
}

Deno.test("spectralNormUpper() bounds power iteration from above within a small factor", () => {
  for (const [seed, rows, cols] of [[1, 7, 5], [2, 20, 20], [3, 9, 31]]) {
    const a = randomArray(makeRng(seed), rows * cols);
    const lower = powerNorm(a, rows, cols);
    const upper = spectralNormUpper(a, rows, cols);
    assert.ok(upper >= lower * (1 - 1e-9), `seed ${seed}: ${upper} < ${lower}`);
    assert.ok(
      upper <= lower * Math.pow(cols, 1 / 128) * 1.001,
      `seed ${seed}: ${upper} ≫ ${lower}`,
    );
    // A block of rows is the matrix of those rows.
    const block = spectralNormUpper(a, rows, cols, 6, 2, 3);
    const sub = a.slice(2 * cols, 5 * cols);
    assert.ok(Math.abs(block - spectralNormUpper(sub, 3, cols)) <= 1e-12 * block);
  }
});

Deno.test("spectralNormUpper() rejects sizes and row ranges that are not counts (was 0 or NaN)", () => {
  const a = new Float32Array([3, 0, 0, 1, 2, 2]);
  assert.ok(spectralNormUpper(a, 3, 2) >= 3);
  assert.equal(spectralNormUpper(a, 0, 2), 0); // an empty matrix
  const table: [number[], RegExp][] = [
    [[NaN, 2], /rows is NaN, expected an integer ≥ 0/],
    [[-1, 2], /rows is -1/],
    [[3, 1.5], /cols is 1.5, expected an integer ≥ 0/],
    [[3, 2, NaN], /squarings is NaN, expected an integer ≥ 0/],
    [[3, 2, 6, -1], /rowStart is -1, expected an integer ≥ 0/],
    [[3, 2, 6, NaN, 1], /rowStart is NaN/],
    [[3, 2, 6, 1, 0.5], /rowCount is 0.5, expected an integer ≥ 0/],
    [[3, 2, 6, 2, 2], /rows 2\.\.3 of a matrix of 3 rows/],
    [[4, 2], /matrix of 6 elements, expected 4 × 2/],
  ];
  for (const [args, re] of table) {
    const [rows, cols, ...rest] = args;
    assert.throws(
      () => spectralNormUpper(a, rows, cols, ...rest),
      (e) => e instanceof ShapeError && re.test(e.message),
      JSON.stringify(args.map(String)),
    );
  }
});

const w = parseCheckpoint(await Deno.readFile("fixtures/stories260K.bin"));
const model = new Transformer(w);
const c = w.config;
const rng = makeRng(7);
const tokens = Array.from({ length: 64 }, () => 1 + Math.floor(rng() * (c.vocabSize - 1)));

Deno.test("traceResidualStream() reproduces Transformer.forward() logits", async () => {
  const trace = traceResidualStream(w, tokens);
  const cache = new Float32KVCache(cacheShape(c, tokens.length));
  for (let p = 0; p < tokens.length; p++) {
    const logits = await model.forward(tokens[p], p, cache);
    for (let i = 0; i < c.vocabSize; i++) {
      assert.ok(Math.abs(logits[i] - trace.logits[p * c.vocabSize + i]) < 1e-3, `pos ${p}`);
    }
  }
});

Deno.test("composeModelBound() is never below the realized logits error on the fixture", async () => {
  const n = tokens.length, d = c.headDim, shape = cacheShape(c, n);
  const trace = traceResidualStream(w, tokens);
  const bounds = layerLipschitz(w, trace);
  const estimate = withEmpiricalGains(bounds, empiricalLayerGains(w, trace, { trials: 2 }));
  const exact: Float32Array[] = [];
  const fc = new Float32KVCache(shape);
  for (let p = 0; p < n; p++) exact.push((await model.forward(tokens[p], p, fc)).slice());
  const plans: ((l: number, h: number, p: number) => string)[] = [
    () => "int8-g8-token",
    (l, _h, p) => (p < 4 || l === 0 ? "fp16" : "int4-g8-token"),
  ];
  for (const choose of plans) {
    const elementBounds = Array.from(
      { length: c.nLayers },
      (_, l) =>
        Array.from({ length: c.nKvHeads }, (_, kh) => {
          const key = new Float32Array(n * d), value = new Float32Array(n * d);
          for (let t = 0; t < n; t++) {
            const o = t * c.kvDim + kh * d;
            key.set(
              quantizeHead(trace.k[l].subarray(o, o + d), 1, d, choose(l, kh, t)).bound,
              t * d,
            );
            value.set(
              quantizeHead(trace.v[l].subarray(o, o + d), 1, d, choose(l, kh, t)).bound,
              t * d,
            );
          }
          return { key, value };
        }),
    );
    const cache = new QuantizingKVCache(shape, choose);
    let realized = 0;
    for (let p = 0; p < n; p++) {
      const logits = await model.forward(tokens[p], p, cache);
      let s = 0;
      for (let i = 0; i < c.vocabSize; i++) s += (logits[i] - exact[p][i]) ** 2;
      realized = Math.max(realized, Math.sqrt(s));
    }
    assert.ok(realized > 0, "quantization changed the logits");
    const rigorous = composeModelBound(trace, bounds, elementBounds, c);
    const est = composeModelBound(trace, estimate, elementBounds, c);
    assert.ok(rigorous.logits >= realized, `first-order bound ${rigorous.logits} < ${realized}`);
    assert.ok(est.logits >= realized, `empirical estimate ${est.logits} < ${realized}`);
    assert.ok(est.logits <= rigorous.logits, "the estimate is no looser than the bound");
    for (let l = 1; l < c.nLayers; l++) assert.ok(rigorous.residual[l] >= rigorous.residual[l - 1]);
  }
});

Deno.test("empiricalLayerGains() rejects a size not > 0 or trials not ≥ 1 before any work (were gains of NaN or 0)", () => {
  const trace = traceResidualStream(w, tokens.slice(0, 4));
  const gains = empiricalLayerGains(w, trace, { trials: 1 });
  assert.ok(gains.every((g) => g.layer > 0 && g.feedForward > 0));
  // Without activations any work would be a TypeError: the options are checked first.
  const empty = { ...trace, input: [], mid: [] };
  const table: [Record<string, number>, RegExp][] = [
    [{ size: 0 }, /size is 0, expected a finite number > 0/],
    [{ size: NaN }, /size is NaN/],
    [{ size: -1e-3 }, /size is -0.001/],
    [{ size: Infinity }, /size is Infinity/],
    [{ trials: 0 }, /trials is 0, expected an integer ≥ 1/],
    [{ trials: 2.5 }, /trials is 2.5/],
  ];
  for (const [options, re] of table) {
    assert.throws(
      () => empiricalLayerGains(w, empty, options),
      (e) => e instanceof InvalidValueError && re.test(e.message),
      JSON.stringify(options),
    );
  }
});

/** A fresh seed per run, printed in every failure message. */
function freshSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

Deno.test("spectralNormUpper() bounds matrices of huge and tiny elements (was a bound of 0)", () => {
  const seed = freshSeed(), rng = makeRng(seed);
  const rows = 2 + Math.floor(rng() * 8), cols = 2 + Math.floor(rng() * 8);
  const a = Float64Array.from(randomArray(rng, rows * cols));
  const lower = powerNorm(new Float32Array(a), rows, cols);
  const base = spectralNormUpper(a, rows, cols);
  // A·2^k is exact for these k (no element leaves the normal range), and ‖A·2^k‖ = ‖A‖·2^k; the
  // old Gram matrix overflowed past k ≈ 250 and underflowed below k ≈ −270.
  const ks = [-1000, -600, -300, 260, 300, 490];
  for (let i = 0; i < 6; i++) ks.push(Math.floor(-1000 + rng() * 1490));
  for (const k of ks) {
    const s = 2 ** k, scaled = a.map((x) => x * s);
    const upper = spectralNormUpper(scaled, rows, cols);
    const at = `seed ${seed} ${rows}×${cols} k ${k}: ${upper} vs ${base}·2^k`;
    assert.ok(upper >= lower * s * (1 - 1e-9), at);
    assert.ok(Math.abs(upper / s - base) <= 1e-12 * base, at);
  }
  // The reviewer's cases: diag(3s, s) is 3s, a 1×1 matrix its element.
  for (let e = -170; e <= 149.5; e += 0.25) {
    const s = 10 ** e, upper = spectralNormUpper([3 * s, 0, 0, s], 2, 2);
    assert.ok(upper >= 3 * s && upper <= 3 * s * (1 + 1e-8), `diag(3s, s), s = 1e${e}: ${upper}`);
  }
  for (const x of [1e100, -1e-90, 1e150, Number.MIN_VALUE, 3 * Number.MIN_VALUE, 2 ** -1022]) {
    const upper = spectralNormUpper([x], 1, 1);
    assert.ok(
      upper >= Math.abs(x) && upper <= Math.abs(x) * (1 + 1e-8) + 2 * Number.MIN_VALUE,
      `${x}: ${upper}`,
    );
  }
  assert.ok(spectralNormUpper([1e80, 0, 0, 1e80], 2, 2) >= 1e80);
  // 0 only for a zero block
  assert.equal(spectralNormUpper(new Float64Array(6), 2, 3), 0);
  assert.ok(spectralNormUpper([0, 0, Number.MIN_VALUE, 0], 2, 2) >= Number.MIN_VALUE);
});

Deno.test("spectralNormUpper() refuses more than 64 squarings (1e9 hung)", () => {
  const a = [3, 0, 0, 1];
  assert.ok(spectralNormUpper(a, 2, 2, 64) >= 3);
  for (const p of [65, 2000]) {
    assert.throws(
      () => spectralNormUpper(a, 2, 2, p),
      (e) =>
        e instanceof ShapeError &&
        new RegExp(`squarings is ${p}, expected at most 64`).test(e.message),
      String(p),
    );
  }
});

Deno.test("withEmpiricalGains() keeps layer = (1 + A)(1 + F) when a layer gain is below its feed-forward gain", () => {
  const seed = freshSeed(), rng = makeRng(seed);
  // both orders of G and G_ffn, around and below 1, then random ones
  const gains = [
    { layer: 3.239, feedForward: 3.266 },
    { layer: 1.5, feedForward: 2 },
    { layer: 0.5, feedForward: 0.7 },
    { layer: 4, feedForward: 2 },
    ...Array.from({ length: 12 }, () => ({ layer: 4 * rng(), feedForward: 4 * rng() })),
  ];
  const bounds = {
    layers: gains.map(() => ({ attention: 9, feedForward: 9, layer: 100, outputNorm: 2 })),
    output: 7,
  };
  const est = withEmpiricalGains(bounds, gains);
  assert.equal(est.output, 7);
  est.layers.forEach((x, l) => {
    const at = `seed ${seed} layer ${l} ${JSON.stringify(gains[l])} → ${JSON.stringify(x)}`;
    assert.ok(x.attention >= 0 && x.feedForward >= 0, at);
    assert.equal(x.feedForward, Math.max(0, gains[l].feedForward - 1), at);
    assert.ok(x.layer >= gains[l].layer, at);
    assert.ok(Math.abs((1 + x.attention) * (1 + x.feedForward) - x.layer) <= 1e-12 * x.layer, at);
    assert.equal(x.outputNorm, 2, at);
  });
  assert.equal(est.layers[1].layer, 2);
  assert.equal(est.layers[3].layer, 4);
});
