/**
 * Composed logits-error bound vs the realized logits error on the fixture model. Run:
 * `deno run -A bench/composed_bound_report.ts [tokens]` (default 128 tokens).
 *
 * For a few per-token format plans: the composition law E_l = Φ_l + L_l·E_{l−1} with (a) the
 * first-order Lipschitz bounds from the weights at the observed activations (layerLipschitz) and
 * (b) empirical finite-difference gains on the residual stream (empiricalLayerGains, an estimate),
 * against max_j ‖Δlogits_j‖ of the model run through a cache that quantizes every appended head.
 */
import { parseCheckpoint } from "../core/model/checkpoint.ts";
import { parseTokenizer } from "../core/model/tokenizer.ts";
import { cacheShape, Transformer } from "../core/model/transformer.ts";
import { Float32KVCache } from "../core/model/kv_cache.ts";
import {
  empiricalLayerGains,
  layerLipschitz,
  traceResidualStream,
  withEmpiricalGains,
} from "../core/layer_lipschitz.ts";
import { composeModelBound } from "../core/verifier.ts";
import { quantizeHead } from "../core/quantize_head.ts";
import { QuantizingKVCache } from "./_quantizing_cache.ts";
const root = "fixtures/";
const w = parseCheckpoint(await Deno.readFile(root + "stories260K.bin"));
const model = new Transformer(w);
const tok = parseTokenizer(await Deno.readFile(root + "tok512.bin"), w.config.vocabSize);
const ids = tok.encode(
  new TextDecoder().decode(await Deno.readFile(root + "tinystories_valid_excerpt.txt")),
  { bos: true },
).slice(0, Number(Deno.args[0] ?? 128));
const c = w.config, n = ids.length, d = c.headDim;
let t0 = performance.now();
const tr = traceResidualStream(w, ids);
console.log("trace ms", performance.now() - t0);
const shape = cacheShape(c, n);
const fc = new Float32KVCache(shape);
const exact: Float32Array[] = [];
let md = 0;
for (let p = 0; p < n; p++) {
  const lg = (await model.forward(ids[p], p, fc)).slice();
  exact.push(lg);
  for (let i = 0; i < c.vocabSize; i++) {
    md = Math.max(md, Math.abs(lg[i] - tr.logits[p * c.vocabSize + i]));
  }
}
console.log("trace vs model max |Δlogit|", md);
t0 = performance.now();
const lip = layerLipschitz(w, tr);
console.log(
  `first-order bounds: ${(performance.now() - t0).toFixed(0)} ms; per layer (A_l, F_l, ‖W_o‖):`,
);
for (const x of lip.layers) {
  console.log(`  ${x.attention.toFixed(1)} ${x.feedForward.toFixed(1)} ${x.outputNorm.toFixed(3)}`);
}
console.log(`  output gain ${lip.output.toFixed(2)}`);
t0 = performance.now();
const gains = empiricalLayerGains(w, tr);
console.log(
  `empirical gains (${(performance.now() - t0).toFixed(0)} ms), layer / feed-forward block:`,
);
console.log(
  "  " + gains.map((g) => `${g.layer.toFixed(2)}/${g.feedForward.toFixed(2)}`).join("  "),
);
console.log("plan | realized | first-order bound (ratio) | empirical-gain estimate (ratio)");
const emp = withEmpiricalGains(lip, gains);
const plans: [string, (l: number, h: number, p: number) => string][] = [
  ["int8-g8-token all", () => "int8-g8-token"],
  ["int4-g8-token all", () => "int4-g8-token"],
  ["fp16 sinks (4), int4 rest", (_l, _h, p) => (p < 4 ? "fp16" : "int4-g8-token")],
  ["layer0 int8, others int4", (l) => (l === 0 ? "int8-g8-token" : "int4-g8-token")],
];
for (const [label, choose] of plans) {
  const bounds = [];
  for (let l = 0; l < c.nLayers; l++) {
    const row = [];
    for (let kh = 0; kh < c.nKvHeads; kh++) {
      const kb = new Float32Array(n * d), vb = new Float32Array(n * d);
      for (let t = 0; t < n; t++) {
        const f = choose(l, kh, t);
        const o = t * c.kvDim + kh * d;
        kb.set(quantizeHead(tr.k[l].subarray(o, o + d), 1, d, f).bound, t * d);
        vb.set(quantizeHead(tr.v[l].subarray(o, o + d), 1, d, f).bound, t * d);
      }
      row.push({ key: kb, value: vb });
    }
    bounds.push(row);
  }
  const b = composeModelBound(tr, lip, bounds, c);
  const e = composeModelBound(tr, emp, bounds, c);
  const qc = new QuantizingKVCache(shape, choose);
  let worst = 0;
  for (let p = 0; p < n; p++) {
    const lg = await model.forward(ids[p], p, qc);
    let s = 0;
    for (let i = 0; i < lg.length; i++) s += (lg[i] - exact[p][i]) ** 2;
    worst = Math.max(worst, Math.sqrt(s));
  }
  if (!(b.logits >= worst)) throw new Error(`${label}: first-order bound below the realized error`);
  console.log(
    `${label} | ${worst.toExponential(2)} | ${b.logits.toExponential(2)} (${
      (b.logits / worst).toExponential(1)
    }) | ${e.logits.toExponential(2)} (${(e.logits / worst).toFixed(0)})`,
  );
}
