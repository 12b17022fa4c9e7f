import assert from "node:assert/strict";
import {
  empiricalLayerGains,
  layerLipschitz,
  spectralNormUpper,
  traceResidualStream,
  withEmpiricalGains,
} from "../../core/layer_lipschitz.ts";
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
