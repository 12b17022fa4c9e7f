import assert from "node:assert/strict";
import { FormatError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import {
  type Analysis,
  analyzeHeadGroup,
  analyzeRecording,
  type CalibrationModel,
} from "../../core/analyzer.ts";
import type { ModelLipschitz, ResidualTrace } from "../../core/layer_lipschitz.ts";
import { type Assignment, buildPrecisionPlan, ruleDiameter } from "../../core/plan.ts";
import { precisionBits, requiredBits } from "../../core/mapper.ts";
import { getFormat } from "../../codecs/format.ts";
import { RecordingKVCache } from "../../core/recording_cache.ts";
import {
  attentionOutputGains,
  checkAssignment,
  composeLayerBounds,
  composeModelBound,
  storedHead,
  verifyHeads,
} from "../../core/verifier.ts";
import { makeRng, randomArray } from "./_rng.ts";
import { unitAnalysis, unitHead } from "./_calibration.ts";

Deno.test("composeLayerBounds() rejects a NaN or negative input error (was NaN or a negative bound)", () => {
  const [e] = composeLayerBounds([0.1], [2], 0.5); // 0.1 + 2·0.5, rounded upwards
  assert.ok(e >= 1.1 && e < 1.1 + 1e-12, String(e));
  for (const bad of [NaN, -1, Infinity]) {
    assert.throws(
      () => composeLayerBounds([0.1], [2], bad),
      (e) =>
        e instanceof InvalidValueError &&
        /input error is \S+, expected a finite number ≥ 0/.test(e.message),
      String(bad),
    );
  }
});

Deno.test("attentionOutputGains() rejects bad options and no tokens before running the model", async () => {
  let calls = 0;
  const model: CalibrationModel = {
    forward: () => (calls++, new Float32Array(4)),
  };
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 2, maxSeqLen: 4 };
  const table: [number[], Record<string, number>, unknown, RegExp][] = [
    [[1, 2], { size: 0 }, InvalidValueError, /size is 0, expected a finite number > 0/],
    [[1, 2], { size: NaN }, InvalidValueError, /size is NaN/],
    [[1, 2], { trials: 0 }, InvalidValueError, /trials is 0, expected an integer ≥ 1/],
    [[1, 2], { trials: 1.5 }, InvalidValueError, /trials is 1.5/],
    [[], {}, ShapeError, /no tokens/],
  ];
  for (const [tokens, options, cls, re] of table) {
    await assert.rejects(
      () => attentionOutputGains(model, shape, tokens, options),
      (e) => e instanceof (cls as typeof Error) && re.test((e as Error).message),
      JSON.stringify(options),
    );
  }
  assert.equal(calls, 0);
});

/** One sequence of n positions through one layer with two KV heads (d = 8), recorded. */
function _recorded(n: number): { cache: RecordingKVCache; analysis: Analysis } {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: 8, maxSeqLen: n };
  const cache = new RecordingKVCache(shape);
  const rng = makeRng(3);
  for (let p = 0; p < n; p++) {
    cache.append(0, p, randomArray(rng, 16), randomArray(rng, 16));
    cache.attend(0, randomArray(rng, 16), new Float32Array(16));
  }
  const heads = [0, 1].map((h) =>
    analyzeHeadGroup({
      queries: cache.queries(0),
      keys: cache.keys(0, h),
      values: cache.values(0, h),
      length: n,
      headDim: 8,
      queryStride: 16,
      queryOffset: h * 8,
    })
  );
  const analysis: Analysis = {
    version: 1,
    shape,
    windows: [4],
    sinkTokens: 1,
    recentWindow: 2,
    sequences: [{ length: n, heads: [heads] }],
  };
  return { cache, analysis };
}

/** Both heads int8 at every position, then `change` applied to head 1's cell. */
function _assignment(
  n: number,
  change: (cell: { key: Int16Array; value: Int16Array }) => void,
): Assignment {
  const cells = [0, 1].map(() => ({ key: new Int16Array(n), value: new Int16Array(n) }));
  change(cells[1]);
  return {
    keyFormats: ["int8-g8-token", "int4-g8-token"],
    valueFormats: ["int8-g8-token"],
    windowFormat: "fp16",
    sequences: [[cells]],
  };
}

Deno.test("verifyHeads() and storedHead() refuse formats no cache stores (were modelled anyway)", () => {
  const { cache } = _recorded(6);
  const base = _assignment(6, () => {});
  const table: [Partial<Assignment>, RegExp][] = [
    [
      { keyFormats: ["int8-g8-token", "int4-g8-heads"] },
      /keyFormats\[1\] int4-g8-heads groups across KV heads/,
    ],
    [
      { valueFormats: ["int8-g16-token"] },
      /valueFormats\[0\] int8-g16-token: head_dim 8 is not a multiple of its group 16/,
    ],
    [{ windowFormat: "int8-g32-channel" }, /windowFormat int8-g32-channel groups along tokens/],
  ];
  for (const [change, re] of table) {
    const a = { ...base, ...change };
    assert.throws(
      () => verifyHeads(cache, a),
      (e) => e instanceof FormatError && re.test(e.message),
      re.source,
    );
    const cell = a.sequences[0][0][0];
    assert.throws(
      () => storedHead(cache.keys(0, 0), cache.values(0, 0), 6, 8, cell, a),
      (e) => e instanceof FormatError && re.test(e.message),
      re.source,
    );
  }
  assert.throws(
    () => verifyHeads(cache, { ...base, ropeBase: -1 }),
    (e) => e instanceof InvalidValueError && /ropeBase is -1/.test(e.message),
  );
});

Deno.test("storedHead() names a short cell, an index out of range and arrays that are not Float32Arrays", () => {
  const { cache } = _recorded(6);
  const a = _assignment(6, () => {}), k = cache.keys(0, 0), v = cache.values(0, 0);
  const cell = a.sequences[0][0][0];
  assert.equal(storedHead(k, v, 6, 8, cell, a).k.decoded.length, 48);
  const table: [() => unknown, unknown, RegExp][] = [
    [
      () => storedHead(k, v, 7, 8, cell, a),
      ShapeError,
      /cell: key has 6 positions, value 6, expected 7/,
    ],
    [
      () => storedHead(k, v, 6, 8, { key: cell.key.map(() => 2), value: cell.value }, a),
      ShapeError,
      /cell position 0: key format index 2, expected -1\.\.1/,
    ],
    [
      () => storedHead([...k] as never, v, 6, 8, cell, a),
      InvalidValueError,
      /keys are Array, values Float32Array/,
    ],
    [() => storedHead(k, v.subarray(0, 40), 6, 8, cell, a), ShapeError, /values 40, expected 48/],
  ];
  for (const [call, cls, re] of table) {
    assert.throws(
      call,
      (e) => e instanceof (cls as typeof Error) && re.test((e as Error).message),
      re.source,
    );
  }
});

const _badCells: [string, (c: { key: Int16Array; value: Int16Array }) => void, RegExp][] = [
  [
    "key index past the formats",
    (c) => (c.key[3] = 2),
    /layer 0 head 1 position 3: key format index 2, expected -1\.\.1/,
  ],
  [
    "value index past the formats",
    (c) => (c.value[5] = 1),
    /layer 0 head 1 position 5: value format index 1, expected -1\.\.0/,
  ],
  [
    "index below the window marker",
    (c) => (c.key[0] = -2),
    /layer 0 head 1 position 0: key format index -2, expected -1\.\.1/,
  ],
  [
    "short value cell",
    (c) => (c.value = new Int16Array(4)),
    /layer 0 head 1: key has 6 positions, value 4, expected 6/,
  ],
];

Deno.test("checkAssignment() rejects a format index out of range or a short value cell (was a skipped check)", () => {
  const { analysis } = _recorded(6);
  assert.equal(checkAssignment(analysis, _assignment(6, () => {}), { epsilon: 1 }).length, 0);
  for (const [label, change, re] of _badCells) {
    assert.throws(
      () => checkAssignment(analysis, _assignment(6, change), { epsilon: 1e-9 }),
      (e) => e instanceof ShapeError && re.test(e.message),
      label,
    );
  }
});

Deno.test("verifyHeads() rejects a format index out of range or a short value cell", () => {
  const { cache } = _recorded(6);
  const ok = verifyHeads(cache, _assignment(6, () => {}));
  assert.equal(ok.length, 2);
  assert.equal(ok[1].exceeded, 0);
  for (const [label, change, re] of _badCells) {
    assert.throws(
      () => verifyHeads(cache, _assignment(6, change)),
      (e) => e instanceof ShapeError && re.test(e.message),
      label,
    );
  }
});

Deno.test("composeModelBound() rejects a trace and Lipschitz bounds of different layer counts", () => {
  const n = 2, d = 2;
  const trace = (layers: number): ResidualTrace => ({
    length: n,
    input: [],
    mid: [],
    final: new Float32Array(n * d),
    q: Array.from({ length: layers }, () => new Float32Array(n * d).fill(0.5)),
    k: Array.from({ length: layers }, () => new Float32Array(n * d).fill(0.3)),
    v: Array.from({ length: layers }, () => Float32Array.from({ length: n * d }, (_, i) => i)),
    logits: new Float32Array(0),
  });
  const lipschitz = (layers: number): ModelLipschitz => ({
    output: 1,
    layers: Array.from(
      { length: layers },
      () => ({ attention: 1, feedForward: 1, layer: 4, outputNorm: 1 }),
    ),
  });
  const bounds = Array.from({ length: 2 }, () => [
    { key: new Float32Array(n * d).fill(0.01), value: new Float32Array(n * d).fill(0.01) },
  ]);
  const shape = { nHeads: 1, nKvHeads: 1, headDim: d };
  assert.ok(composeModelBound(trace(2), lipschitz(2), bounds, shape).logits > 0);
  // Was a bound over the first layer only (2, 1) and a TypeError (1, 2).
  for (const [t, l] of [[2, 1], [1, 2]]) {
    assert.throws(
      () => composeModelBound(trace(t), lipschitz(l), bounds, shape),
      (e) =>
        e instanceof ShapeError &&
        new RegExp(`trace of ${t} layers but Lipschitz bounds of ${l}`).test(e.message),
      `${t} ${l}`,
    );
  }
});

/** One (layer, KV head) of n positions of curvature 1, keys in [−5, −4] and values in [4, 5]. */
function _apart(n: number): Analysis {
  return unitAnalysis([[[unitHead(Array(n).fill(0), [-5, -4], [4, 5])]]]);
}

Deno.test("checkAssignment() takes the planner's diameter: it passes the planner's own oracle", () => {
  const n = 6, analysis = _apart(n);
  const diameter = ruleDiameter(analysis, 0, 0);
  assert.equal(diameter, 5); // keys and values are quantized apart; together they would span 10
  // p = log2(4·1·5²/ε) = 7.5: int8 (log2 255 ≈ 7.99) meets it; with D = 10 it would be 9.5
  const epsilon = 100 / 2 ** 7.5;
  const formats = ["int4-g16-token", "int8-g16-token", "fp16"].map(getFormat);
  const { report } = buildPrecisionPlan(analysis, {
    mode: "rule",
    epsilon,
    keyFormats: formats,
    valueFormats: formats,
    recentWindow: 0,
    sinkTokens: 0,
    recency: false,
  });
  const oracle = report.oracleAssignment;
  assert.deepEqual([...oracle.sequences[0][0][0].key], Array(n).fill(1));
  assert.deepEqual([...oracle.sequences[0][0][0].value], Array(n).fill(1));
  assert.deepEqual(checkAssignment(analysis, oracle, { epsilon, recency: false }), []);
  // int4 everywhere falls short of that same requirement at every position
  const int4 = {
    ...oracle,
    sequences: [[[{ key: new Int16Array(n), value: new Int16Array(n) }]]],
  };
  const short = checkAssignment(analysis, int4, { epsilon, recency: false });
  assert.equal(short.length, n);
  for (const v of short) {
    // curvature and attention are 1: keys and values need the same
    assert.equal(v.requiredKeyBits, requiredBits(1, { epsilon, diameter }));
    assert.equal(v.requiredValueBits, v.requiredKeyBits);
    assert.ok(Math.abs(v.requiredKeyBits - 7.5) < 1e-12, `${v.requiredKeyBits}`);
  }
});

Deno.test("the precision rule gives a position that takes almost all the attention a precise value", () => {
  // Its curvature tends to 0 with v_t − o as α_t → 1, but ∂o/∂v_t = α_t·I passes its value's
  // error to the output whole: the rule asked for −0.26 bits, stored the value at int4, checked
  // clean, and the head output missed ε = 0.01 by 9.7× (a review's reproduction).
  const d = 8, n = 24, dominant = 5, epsilon = 0.01;
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: d, maxSeqLen: n };
  const recording = new RecordingKVCache(shape), next = makeRng(3), out = new Float32Array(d);
  for (let t = 0; t < n; t++) {
    const k = randomArray(next, d, 0.1);
    if (t === dominant) k[0] = 4;
    recording.append(0, t, k, randomArray(next, d, 1));
    recording.attend(0, Float32Array.from({ length: d }, (_, i) => (i === 0 ? 8 : 0)), out);
  }
  const sequence = analyzeRecording(recording, { windows: [4] });
  const analysis: Analysis = {
    version: 1,
    shape,
    windows: [4],
    sinkTokens: 0,
    recentWindow: 0,
    sequences: [sequence],
  };
  const head = sequence.heads[0][0];
  assert.ok(head.attentionMax[dominant] > 0.999, `α ${head.attentionMax[dominant]}`);
  const names = ["int2-g8-token", "int4-g8-token", "int8-g8-token", "fp16", "fp32"];
  const { report } = buildPrecisionPlan(analysis, {
    mode: "rule",
    epsilon,
    keyFormats: names.map(getFormat),
    valueFormats: names.map(getFormat),
    sinkTokens: 0,
    recentWindow: 0,
  });
  const oracle = report.oracleAssignment, cell = oracle.sequences[0][0][0];
  // the value's requirement comes from its attention, the key's from its curvature
  const r = 1 + Math.exp(-(n - dominant - 1) / (n / 4));
  const diameter = ruleDiameter(analysis, 0, 0);
  const needV = requiredBits(head.attentionMax[dominant] * r, { epsilon, diameter });
  const valueFormat = getFormat(oracle.valueFormats[cell.value[dominant]]);
  assert.ok(precisionBits(valueFormat) >= needV, `${valueFormat.name} for ${needV} bits`);
  assert.deepEqual(checkAssignment(analysis, oracle, { epsilon }), []);
  const [verified] = verifyHeads(recording, oracle);
  assert.ok(verified.maxRealized <= epsilon, `realized ${verified.maxRealized}`);
  // the same assignment with that value at int4 is a violation, by its value
  const coarse = structuredClone(oracle);
  coarse.sequences[0][0][0].value[dominant] = names.indexOf("int4-g8-token");
  const [violation] = checkAssignment(analysis, coarse, { epsilon });
  assert.equal(violation.position, dominant);
  assert.equal(violation.requiredValueBits, needV);
  assert.ok(violation.valueBits < violation.requiredValueBits);
  assert.ok(violation.keyBits >= violation.requiredKeyBits);
});
