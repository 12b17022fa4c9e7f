import assert from "node:assert/strict";
import { calibrate, summarizeAnalysis } from "../../core/analyzer.ts";
import {
  attentionWeights,
  keyJacobian,
  keySecondDerivative,
} from "../../core/attention_sensitivity.ts";
import { getFormat } from "../../codecs/format.ts";
import { BudgetError, InvalidValueError } from "../../core/errors.ts";
import { parseCheckpoint } from "../../core/model/checkpoint.ts";
import { parseTokenizer } from "../../core/model/tokenizer.ts";
import { cacheShape, Transformer } from "../../core/model/transformer.ts";
import {
  buildPrecisionPlan,
  ruleDiameter,
  rulePrecision,
  validatePrecisionPlan,
} from "../../core/plan.ts";
import { precisionBits } from "../../core/mapper.ts";
import { errorBoundStats } from "../../core/quantize_head.ts";
import { planPolicy } from "../../core/cache/plan_policy.ts";
import { RecordingKVCache } from "../../core/recording_cache.ts";
import { checkAssignment, verifyHeads } from "../../core/verifier.ts";

const weights = parseCheckpoint(await Deno.readFile("fixtures/stories260K.bin"));
const model = new Transformer(weights);
const tokenizer = parseTokenizer(
  await Deno.readFile("fixtures/tok512.bin"),
  weights.config.vocabSize,
);
const text = new TextDecoder().decode(
  await Deno.readFile("fixtures/tinystories_valid_excerpt.txt"),
);
const ids = tokenizer.encode(text, { bos: true });
const NAMES = [
  "int2-g32-channel",
  "int3-g32-channel",
  "int4-g32-channel",
  "int8-g32-channel",
  "int4-g8-token",
  "fp16",
];
const FORMATS = NAMES.map(getFormat);
const seqs = [ids.slice(0, 96), ids.slice(300, 380)];
const analysis = await calibrate(model, weights.config, seqs, {
  measureFormats: NAMES,
  windows: [8, 16],
  ropeBase: 10000,
});

Deno.test("keyJacobian() and keySecondDerivative() agree with finite differences on real heads", async () => {
  const rec = new RecordingKVCache(cacheShape(weights.config, 64));
  for (let p = 0; p < 64; p++) await model.forward(ids[p], p, rec);
  const d = weights.config.headDim;
  for (const [layer, head, pos] of [[0, 0, 63], [2, 5, 40], [4, 7, 20]]) {
    const kv = Math.floor(head / (weights.config.nHeads / weights.config.nKvHeads));
    const q = rec.queries(layer).subarray(
      (pos * weights.config.nHeads + head) * d,
      (pos * weights.config.nHeads + head + 1) * d,
    );
    const keys = Float64Array.from(rec.keys(layer, kv).subarray(0, (pos + 1) * d));
    const values = rec.values(layer, kv);
    const n = pos + 1;
    const w = new Float64Array(n), o = new Float64Array(d);
    attentionWeights(q, keys, values, n, d, w, o);
    let t = 0;
    for (let i = 1; i < n; i++) if (w[i] > w[t]) t = i;
    const jac = keyJacobian(q, keys, values, n, d, t);
    const out = (c: number, h: number) => {
      const k = Float64Array.from(keys);
      k[t * d + c] += h;
      const o2 = new Float64Array(d);
      attentionWeights(q, k, values, n, d, new Float64Array(n), o2);
      return o2;
    };
    let num = 0, den = 0, trNum = 0, trDen = 0;
    const trace = new Float64Array(d), traceAn = new Float64Array(d);
    for (let c = 0; c < d; c++) {
      const p = out(c, 1e-5), m = out(c, -1e-5);
      for (let i = 0; i < d; i++) {
        const fd = (p[i] - m[i]) / 2e-5;
        num += (fd - jac[i * d + c]) ** 2, den += fd * fd;
      }
      const p2 = out(c, 1e-4), m2 = out(c, -1e-4);
      const e = new Float64Array(d);
      e[c] = 1;
      const an = keySecondDerivative(q, keys, values, n, d, t, e);
      for (let i = 0; i < d; i++) {
        trace[i] += (p2[i] - 2 * o[i] + m2[i]) / 1e-8, traceAn[i] += an[i];
      }
    }
    for (let i = 0; i < d; i++) trNum += (trace[i] - traceAn[i]) ** 2, trDen += traceAn[i] ** 2;
    assert.ok(
      Math.sqrt(num / den) < 1e-3,
      `layer ${layer} head ${head}: Jacobian ${Math.sqrt(num / den)}`,
    );
    assert.ok(
      Math.sqrt(trNum / trDen) < 1e-3,
      `layer ${layer} head ${head}: trace ${Math.sqrt(trNum / trDen)}`,
    );
  }
});

Deno.test("verifyHeads() bound holds on every layer and head of the fixture model", async () => {
  const { report } = buildPrecisionPlan(analysis, {
    mode: "budget",
    bitsPerElement: 5,
    keyFormats: FORMATS,
    valueFormats: FORMATS,
    recentWindow: 8,
  });
  const rec = new RecordingKVCache(cacheShape(weights.config, seqs[0].length));
  for (let p = 0; p < seqs[0].length; p++) await model.forward(seqs[0][p], p, rec);
  const result = verifyHeads(rec, report.planAssignment, 0);
  assert.equal(result.length, weights.config.nLayers * weights.config.nKvHeads);
  for (const h of result) {
    assert.equal(h.exceeded, 0, `layer ${h.layer} head ${h.head}`);
    assert.ok(h.maxRealized > 0 && h.minRatio >= 1);
  }
});

Deno.test("buildPrecisionPlan() meets budgets on the fixture and rejects bad input", () => {
  for (const bits of [5, 6, 8]) {
    const { plan, report } = buildPrecisionPlan(analysis, {
      mode: "budget",
      bitsPerElement: bits,
      keyFormats: FORMATS,
      valueFormats: FORMATS,
      recentWindow: 8,
      sinkTokens: 2,
    });
    assert.ok(report.oracle.bitsPerElement <= bits + 1e-12);
    assert.ok(
      report.plan.bitsPerElement <= bits + 1e-12,
      `plan ${report.plan.bitsPerElement} > ${bits}`,
    );
    const json = JSON.parse(JSON.stringify(plan));
    assert.deepEqual(validatePrecisionPlan(json, (n) => NAMES.includes(n)), json);
    assert.equal(planPolicy(plan).recentWindow, 8);
    assert.ok(report.scoreVsSensitivity > 0.3, `ρ ${report.scoreVsSensitivity}`);
  }
  // The rule: smaller ε never needs fewer bits; the oracle has no violations.
  let last = 0;
  for (const epsilon of [1, 0.1, 0.01]) {
    const { report } = buildPrecisionPlan(analysis, {
      mode: "rule",
      epsilon,
      keyFormats: FORMATS,
      valueFormats: FORMATS,
      recentWindow: 8,
    });
    assert.ok(report.oracle.bitsPerElement >= last);
    last = report.oracle.bitsPerElement;
    const v = checkAssignment(analysis, report.oracleAssignment, { epsilon });
    const fp16Short = v.filter((x) =>
      (x.keyBits < x.requiredKeyBits && x.requiredKeyBits <= 10) ||
      (x.valueBits < x.requiredValueBits && x.requiredValueBits <= 10)
    );
    assert.equal(fp16Short.length, 0, "the oracle meets every requirement a candidate can meet");
  }
  const base = { keyFormats: FORMATS, valueFormats: FORMATS, recentWindow: 8 };
  assert.throws(
    () => buildPrecisionPlan(analysis, { ...base, mode: "rule", epsilon: 0 }),
    InvalidValueError,
  );
  assert.throws(
    () => buildPrecisionPlan(analysis, { ...base, mode: "budget", bitsPerElement: 2 }),
    BudgetError,
  );
  assert.ok(summarizeAnalysis(analysis).layers.every((l) => l.sinkShare > 0 && l.recentShare > 0));
});

Deno.test("the rule credits each format with its precision measured on the head's own data", async () => {
  const nominal = { ...analysis, formatErrors: undefined };
  const options = {
    mode: "rule" as const,
    keyFormats: FORMATS,
    valueFormats: FORMATS,
    recentWindow: 8,
    ropeBase: 10000,
  };
  for (const [l, h] of [[0, 0], [2, 1], [4, 3]]) {
    const D = ruleDiameter(analysis, l, h);
    for (const f of FORMATS) {
      // p = log2(D / 2δ): the largest measured error bound; keys of channel formats before RoPE,
      // √2 times it, since they turn forward after decoding
      const errors = analysis.formatErrors![f.name];
      const channel = f.name.includes("channel");
      const key = channel ? Math.SQRT2 * errors.preRopeKeyMax![l][h] : errors.keyMax![l][h];
      assert.equal(rulePrecision(analysis, l, h, "key", f, 10000), Math.log2(D / (2 * key)));
      assert.equal(
        rulePrecision(analysis, l, h, "value", f),
        Math.log2(D / (2 * errors.valueMax![l][h])),
      );
      // the largest bound is at least the mean, and the codecs' bound holds it: precision the
      // mean would credit is never less
      assert.ok(errors.valueMax![l][h] >= errors.value[l][h], f.name);
      // group scales follow the data: never less than the worst case over the head's range
      assert.ok(rulePrecision(analysis, l, h, "value", f) >= precisionBits(f), f.name);
      assert.equal(rulePrecision(nominal, l, h, "value", f), precisionBits(f));
    }
  }
  // the largest bounds cover the cache's channel groups, which start after the 4 sinks
  const rec = new RecordingKVCache(cacheShape(weights.config, seqs[0].length));
  for (let p = 0; p < seqs[0].length; p++) await model.forward(seqs[0][p], p, rec);
  const d = weights.config.headDim, n = seqs[0].length;
  const { nLayers, nKvHeads } = analysis.shape;
  for (const name of NAMES.filter((x) => x.includes("channel"))) {
    const e = analysis.formatErrors![name];
    for (let l = 0; l < nLayers; l++) {
      for (let h = 0; h < nKvHeads; h++) {
        const pairs: [Float32Array, number[][]][] = [
          [rec.keys(l, h), e.keyMax!],
          [rec.values(l, h), e.valueMax!],
        ];
        for (const [x, max] of pairs) {
          const after = errorBoundStats(x.subarray(4 * d), n - 4, d, name).max;
          assert.ok(after <= max[l][h], `${name} layer ${l} head ${h}`);
        }
      }
    }
  }
  const f = FORMATS[2], errors = analysis.formatErrors![f.name];
  // an analysis saved before the largest bounds were measured: the worst case
  const older = {
    ...analysis,
    formatErrors: { [f.name]: { key: errors.key, value: errors.value } },
  };
  assert.equal(rulePrecision(older, 0, 0, "value", f), precisionBits(f));
  // a NaN saved to JSON comes back null: refused, not read as 0 (infinite precision)
  const nulled = errors.valueMax!.map((row) => row.map(() => null as unknown as number));
  assert.throws(
    () =>
      rulePrecision(
        { ...analysis, formatErrors: { [f.name]: { ...errors, valueMax: nulled } } },
        1,
        0,
        "value",
        f,
      ),
    (e: Error) =>
      e instanceof InvalidValueError &&
      e.message.includes(`formatErrors["${f.name}"].valueMax[1][0] is null`),
  );
  for (const epsilon of [10, 1]) {
    const measured = buildPrecisionPlan(analysis, { ...options, epsilon }).report;
    const worst = buildPrecisionPlan(nominal, { ...options, epsilon }).report;
    assert.ok(
      measured.oracle.bitsPerElement < worst.oracle.bitsPerElement,
      `ε ${epsilon}: ${measured.oracle.bitsPerElement} vs ${worst.oracle.bitsPerElement} bits`,
    );
    // the verifier credits the same precisions: the oracle falls short only at positions the
    // window holds, or where no candidate would do
    const a = measured.oracleAssignment;
    const v = checkAssignment(analysis, a, { epsilon });
    for (const x of v) {
      const best = (kind: "key" | "value") =>
        Math.max(...FORMATS.map((f) => rulePrecision(analysis, x.layer, x.head, kind, f, 10000)));
      assert.ok(
        a.sequences[x.sequence][x.layer][x.head].key[x.position] < 0 ||
          x.requiredKeyBits > best("key") || x.requiredValueBits > best("value"),
        JSON.stringify(x),
      );
    }
  }
});

Deno.test("calibrate() measures channel-axis key errors before RoPE; plans with ropeBase use them", () => {
  const errors = analysis.formatErrors!;
  for (const name of NAMES) {
    const channel = getFormat(name).axis === "channel";
    assert.equal(errors[name].preRopeKey !== undefined, channel, name);
  }
  // the fixture's keys turn with position: per-channel groups before RoPE span less
  const mean = (x: number[][]) => x.flat().reduce((a, b) => a + b, 0) / x.flat().length;
  for (const name of ["int2-g32-channel", "int4-g32-channel"]) {
    const before = mean(errors[name].preRopeKey!), after = mean(errors[name].key);
    assert.ok(before < 0.8 * after, `${name}: before RoPE ${before}, after ${after}`);
  }
  const options = {
    mode: "budget" as const,
    bitsPerElement: 6,
    keyFormats: FORMATS,
    valueFormats: FORMATS,
    recentWindow: 8,
    sinkTokens: 2,
  };
  const plain = buildPrecisionPlan(analysis, options);
  const pre = buildPrecisionPlan(analysis, { ...options, ropeBase: 10000 });
  assert.equal(plain.plan.ropeBase, undefined);
  assert.equal(pre.plan.ropeBase, 10000);
  assert.equal(planPolicy(pre.plan).ropeBase, 10000);
  assert.equal(planPolicy(plain.plan).ropeBase, undefined);
  assert.ok(
    pre.report.oracle.predictedError < plain.report.oracle.predictedError,
    `predicted ${pre.report.oracle.predictedError} vs ${plain.report.oracle.predictedError}`,
  );
  const json = JSON.parse(JSON.stringify(pre.plan));
  assert.equal(validatePrecisionPlan(json).ropeBase, 10000);
  assert.throws(
    () => validatePrecisionPlan({ ...pre.plan, ropeBase: -1 }),
    (e) => e instanceof Error && /ropeBase/.test(e.message),
  );
  assert.throws(
    () => buildPrecisionPlan(analysis, { ...options, ropeBase: NaN }),
    InvalidValueError,
  );
});
