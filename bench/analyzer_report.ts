/**
 * Closing-note figures of the analyzer on the fixture model. Run:
 * `deno run -A bench/analyzer_report.ts [out.json]`.
 *
 * Calibrates on two 256-token windows of the evaluation text, prints the per-layer summary, the
 * rank correlation of the online score with calibration curvature/sensitivity, plans at three ε and
 * three budgets, verifies bound vs realized on every layer and head of a held-out 256-token window,
 * and compares the model-level realized logits error (the paged cache running the plan) with the
 * composed estimate. Writes the analysis JSON when a path is given.
 */
import { analysisToJSON, calibrate, summarizeAnalysis } from "../core/analyzer.ts";
import { getFormat } from "../codecs/format.ts";
import { MixedPrecisionKVCache } from "../core/cache/mixed_cache.ts";
import { parseCheckpoint } from "../core/model/checkpoint.ts";
import { Float32KVCache } from "../core/model/kv_cache.ts";
import { parseTokenizer } from "../core/model/tokenizer.ts";
import { cacheShape, Transformer } from "../core/model/transformer.ts";
import { buildPrecisionPlan } from "../core/plan.ts";
import { planPolicy } from "../core/cache/plan_policy.ts";
import { storedAssignment } from "../core/cache/stored_assignment.ts";
import { RecordingKVCache } from "../core/recording_cache.ts";
import { attentionOutputGains, composeLayerBounds, verifyHeads } from "../core/verifier.ts";

const w = parseCheckpoint(await Deno.readFile("fixtures/stories260K.bin"));
const model = new Transformer(w);
const tok = parseTokenizer(await Deno.readFile("fixtures/tok512.bin"), w.config.vocabSize);
const text = new TextDecoder().decode(
  await Deno.readFile("fixtures/tinystories_valid_excerpt.txt"),
);
const ids = tok.encode(text, { bos: true });
const names = [
  "int2-g32-channel",
  "int3-g32-channel",
  "int4-g32-channel",
  "int8-g32-channel",
  "int4-g8-token",
  "int8-g8-token",
  "fp16",
];
const formats = names.map(getFormat);
const calib = [ids.slice(0, 256), ids.slice(256, 512)];
const heldOut = ids.slice(1024, 1280);
const t0 = performance.now();
const analysis = await calibrate(model, w.config, calib, { measureFormats: names });
console.log(
  `calibration: ${calib.length} × 256 tokens in ${(performance.now() - t0).toFixed(0)} ms`,
);
console.log("\nper layer: mean κ, max κ, sink share (4), recent share (32), mean max α");
for (const l of summarizeAnalysis(analysis).layers) {
  console.log(
    `  layer ${l.layer}: ${l.meanCurvature.toExponential(2)}  ${
      l.maxCurvature.toExponential(2)
    }  ` +
      `${l.sinkShare.toFixed(3)}  ${l.recentShare.toFixed(3)}  ${l.meanMaxAttention.toFixed(3)}`,
  );
}
const base = { keyFormats: formats, valueFormats: formats, recentWindow: 16, sinkTokens: 4 };
const rows: [string, Parameters<typeof buildPrecisionPlan>[1]][] = [
  ["rule ε=1", { ...base, mode: "rule", epsilon: 1 }],
  ["rule ε=0.1", { ...base, mode: "rule", epsilon: 0.1 }],
  ["rule ε=0.01", { ...base, mode: "rule", epsilon: 0.01 }],
  ["budget 6", { ...base, mode: "budget", bitsPerElement: 6 }],
  ["budget 5", { ...base, mode: "budget", bitsPerElement: 5 }],
  ["budget 4.5", { ...base, mode: "budget", bitsPerElement: 4.5 }],
  ["budget 5, attention only", {
    ...base,
    mode: "budget",
    bitsPerElement: 5,
    sensitivity: "attention",
  }],
  ["budget 5, no recency", { ...base, mode: "budget", bitsPerElement: 5, recency: false }],
];
const shape = cacheShape(w.config, heldOut.length);
const rec = new RecordingKVCache(shape);
for (let p = 0; p < heldOut.length; p++) await model.forward(heldOut[p], p, rec);
const gains = await attentionOutputGains(model, shape, heldOut, { trials: 1 });
console.log(
  `\noutput gains G_l (attention output → logits): ${gains.map((g) => g.toFixed(1)).join(" ")}`,
);
console.log(
  "\nrow | oracle bpe, pred. err | plan bpe, pred. err | ρ(score,κ) ρ(score,sens) | " +
    "held-out: max bound/realized per head, exceeded | logits: composed est. vs realized (paged cache)",
);
for (const [label, options] of rows) {
  const { plan, report } = buildPrecisionPlan(analysis, options);
  // The plan on the held-out window: where a cache with it stores each position (its tiers on
  // the scores that cache observes, chunk by chunk).
  const tiersAssign = storedAssignment(rec, planPolicy(plan, label));
  const v = verifyHeads(rec, tiersAssign, 0);
  const exceeded = v.reduce((a, x) => a + x.exceeded, 0);
  const maxB = Math.max(...v.map((x) => x.maxBound)),
    maxR = Math.max(...v.map((x) => x.maxRealized));
  const local = Array.from({ length: w.config.nLayers }, (_, l) => {
    let m = 0;
    for (let j = 0; j < heldOut.length; j++) {
      let s = 0;
      for (const x of v.filter((x) => x.layer === l)) s += 2 * x.boundPerQuery[j] ** 2;
      m = Math.max(m, Math.sqrt(s));
    }
    return m;
  });
  // Linearised composition: Σ_l G_l·Φ_l with the end-to-end gains folded in (L_l = 1 beyond them).
  const composed = composeLayerBounds(local.map((e, l) => e * gains[l]), local.map(() => 1)).at(
    -1,
  )!;
  const mc = new MixedPrecisionKVCache(shape, planPolicy(plan));
  const fc = new Float32KVCache(shape);
  let worst = 0;
  for (let p = 0; p < heldOut.length; p++) {
    const a = (await model.forward(heldOut[p], p, fc)).slice();
    const b = await model.forward(heldOut[p], p, mc);
    let s = 0;
    for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
    worst = Math.max(worst, Math.sqrt(s));
  }
  console.log(
    `${label} | ${report.oracle.bitsPerElement.toFixed(2)}, ${
      report.oracle.predictedError.toExponential(2)
    } | ` +
      `${report.plan.bitsPerElement.toFixed(2)}, ${
        report.plan.predictedError.toExponential(2)
      } | ` +
      `${report.scoreVsCurvature.toFixed(3)} ${report.scoreVsSensitivity.toFixed(3)} | ` +
      `${maxB.toExponential(2)}/${maxR.toExponential(2)}, ${exceeded} | ${
        composed.toExponential(2)
      } vs ${worst.toExponential(2)}`,
  );
}
if (Deno.args[0]) {
  await Deno.writeTextFile(Deno.args[0], JSON.stringify(analysisToJSON(analysis)));
  console.log(`\nanalysis written to ${Deno.args[0]}`);
}
