// Analyzer, mapper, planner and verifier name malformed input with a typed error instead of a
// TypeError or a silent NaN (each case below was one of those before).
import assert from "node:assert/strict";
import {
  allocateBudget,
  type Analysis,
  analyzeHeadGroup,
  buildPrecisionPlan,
  cacheShape,
  calibrate,
  checkAssignment,
  createKVCache,
  FormatError,
  getFormat,
  InvalidValueError,
  requiredBits,
  ShapeError,
  summarizeAnalysis,
  tierFor,
  tsCodec,
  uniformPolicy,
  validatePrecisionPlan,
  wasmCodec,
} from "../../mod.ts";
import { loadWasmCodecs } from "../../codecs/wasm.ts";
import { mulberry32 } from "../../core/mulberry32.ts";
import { throwsLike } from "../_fixtures.ts";

const n = 40, d = 4;
const next = mulberry32(17);
const fresh = () => Float32Array.from({ length: n * d }, () => 2 * next() - 1);

Deno.test("analyzeHeadGroup names a bad query stride or group and arrays that are not Float32Arrays", () => {
  const base = { queries: fresh(), keys: fresh(), values: fresh(), length: n, headDim: d };
  for (const queryStride of [-2, 0.5, NaN]) {
    assert.throws(
      () => analyzeHeadGroup({ ...base, queryStride }),
      (e: Error) => e instanceof ShapeError && e.message.includes(`query stride ${queryStride}`),
    );
  }
  assert.throws(() => analyzeHeadGroup({ ...base, group: 1.5 }), /group 1.5, expected an integer/);
  assert.throws(
    () => analyzeHeadGroup({ ...base, keys: Array.from(base.keys) as never }),
    /keys must be a Float32Array, got Array/,
  );
  assert.throws(
    () => analyzeHeadGroup({ ...base, queries: Array.from(base.queries) as never }),
    /queries must be a Float32Array, got Array/,
  );
});

Deno.test("allocateBudget refuses a problem with no elements (it returned NaN bits per element)", () => {
  const problem = (elements: Float64Array) => ({
    keyWeight: Float64Array.of(1, 1).subarray(0, elements.length),
    valueWeight: Float64Array.of(1, 1).subarray(0, elements.length),
    row: Int32Array.of(0, 0).subarray(0, elements.length),
    elements,
    keyError: [Float64Array.of(0.1, 0.01)],
    valueError: [Float64Array.of(0.1, 0.01)],
    keyBits: Float64Array.of(4, 16),
    valueBits: Float64Array.of(4, 16),
    fixedBits: 0,
    fixedElements: 0,
  });
  assert.ok(allocateBudget(problem(Float64Array.of(8, 8)), 8).bitsPerElement <= 8);
  assert.throws(() => allocateBudget(problem(new Float64Array(0)), 8), /no elements/);
});

Deno.test("buildPrecisionPlan and checkAssignment name an analysis, cell or option that does not fit", () => {
  const h = analyzeHeadGroup({
    queries: fresh(),
    keys: fresh(),
    values: fresh(),
    length: n,
    headDim: d,
  }, {
    windows: [4, 8],
  });
  const analysis = {
    version: 1,
    shape: { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: d, maxSeqLen: n },
    windows: [4, 8],
    sinkTokens: 4,
    recentWindow: 8,
    sequences: [{ length: n, heads: [[h]] }],
  } as unknown as Analysis;
  // grouped along tokens: storable at head_dim 4, which no per-token group (≥ 8) divides
  const formats = ["int2-g8-channel", "int4-g8-channel", "int8-g8-channel", "fp16"].map(getFormat);
  const options = {
    mode: "budget" as const,
    bitsPerElement: 12,
    keyFormats: formats,
    valueFormats: formats,
    recentWindow: 8,
  };
  const { report } = buildPrecisionPlan(analysis, options);
  const wider = { ...analysis, shape: { ...analysis.shape, nKvHeads: 2 } };
  assert.throws(() => buildPrecisionPlan(wider, options), /does not hold 1 layers of 2 KV heads/);
  assert.throws(
    () => buildPrecisionPlan({ ...analysis, sequences: [] }, options),
    /no calibration sequences/,
  );
  const assignment = report.planAssignment;
  assert.ok(checkAssignment(analysis, assignment, { epsilon: 0.01 }).length >= 0);
  const cell = assignment.sequences[0][0][0];
  // an index that is not an integer (from JSON, or a Float64Array) pointed at no format and
  // silently passed
  const half = {
    ...cell,
    key: Float64Array.from(cell.key, (x, t) => (t === 20 ? 0.5 : x)) as never,
  };
  assert.throws(
    () => checkAssignment(analysis, { ...assignment, sequences: [[[half]]] }, { epsilon: 0.01 }),
    (e: Error) => e instanceof ShapeError && /position 20: key format index 0.5/.test(e.message),
  );
  for (const bad of [{ sensitivity: "bogus" }, { aggregate: "bogus" }]) {
    assert.throws(
      () => checkAssignment(analysis, assignment, { epsilon: 0.01, ...bad } as never),
      (e: Error) => e instanceof InvalidValueError && /bogus/.test(e.message),
    );
  }
  // summaries read what plans read: no sequences gave NaN, a layer past them a TypeError
  assert.ok(summarizeAnalysis(analysis).heads.length === 1);
  assert.throws(() => summarizeAnalysis({ ...analysis, sequences: [] }), ShapeError);
  assert.throws(() => summarizeAnalysis(wider), /does not hold 1 layers of 2 KV heads/);
  assert.throws(() => summarizeAnalysis(null as never), InvalidValueError);
  // a truncated or NaN error table had mixed measured and estimated errors in silence
  const measured = { key: [[0.1]], value: [[0.1]], keyMax: [[0.2]], valueMax: [[0.2]] };
  const withErrors = (e: object) => ({
    ...analysis,
    formatErrors: { fp16: { ...measured, ...e } },
  });
  assert.ok(buildPrecisionPlan(withErrors({}), options));
  assert.throws(
    () => buildPrecisionPlan(withErrors({ value: [] }), options),
    (e: Error) =>
      e instanceof ShapeError &&
      /formatErrors\["fp16"\]\.value does not cover 1 layers of 1 KV heads/.test(e.message),
  );
  // a null entry had passed and thrown a TypeError in the rule; an optional table left undefined
  // is absent
  assert.throws(
    () => buildPrecisionPlan({ ...analysis, formatErrors: { fp16: null as never } }, options),
    (e: Error) =>
      e instanceof InvalidValueError && /formatErrors\["fp16"\] is null/.test(e.message),
  );
  assert.ok(buildPrecisionPlan(withErrors({ keyMax: undefined }), options));
  assert.throws(
    () => summarizeAnalysis(withErrors({ keyMax: [[NaN]] })),
    (e: Error) =>
      e instanceof InvalidValueError && /fp16"\]\.keyMax\[0\]\[0\] is NaN/.test(e.message),
  );
  // an inverted or NaN range had changed the rule's D or thrown a TypeError; windows "8" passed
  // windows.includes(8)
  const cellWith = (edit: object) => ({
    ...analysis,
    sequences: [{ length: n, heads: [[{ ...h, ...edit }]] }],
  });
  for (const keyRange of [[5, -5], NaN]) {
    assert.throws(
      () => buildPrecisionPlan(cellWith({ keyRange }) as never, options),
      (e: Error) =>
        e instanceof InvalidValueError && /keyRange is .*expected \[lo, hi\]/.test(e.message),
    );
  }
  assert.throws(() => summarizeAnalysis(cellWith({ group: 0 }) as never), ShapeError);
  assert.throws(
    () => buildPrecisionPlan({ ...analysis, windows: "8" as never }, options),
    (e: Error) => e instanceof InvalidValueError && /windows is "8"/.test(e.message),
  );
  // names where specs belong, or none, were TypeErrors or "unknown format undefined"
  assert.throws(
    () => buildPrecisionPlan(analysis, { ...options, keyFormats: undefined as never }),
    (e: Error) =>
      e instanceof FormatError && /keyFormats is undefined, expected an array/.test(e.message),
  );
  assert.throws(
    () => buildPrecisionPlan(analysis, { ...options, valueFormats: ["fp16"] as never }),
    (e: Error) =>
      e instanceof FormatError &&
      /valueFormats\[0\] is "fp16", expected a FormatSpec/.test(e.message),
  );
});

Deno.test("plans and codecs name a head without tiers, strings posing as numbers, and a missing block", async () => {
  const plan = {
    version: 1,
    sinkTokens: 4,
    recentWindow: 32,
    windowFormat: "fp16",
    layers: [{ heads: [{ tiers: [] }] }],
  };
  assert.throws(() => tierFor(plan as never, 0, 0, 1), /layer 0 head 0 has no tiers/);
  assert.throws(
    () => validatePrecisionPlan({ ...plan, version: "1" }),
    /version is "1", expected 1/,
  );
  // a later version's new field is its version's problem, not an unknown field of version 1
  assert.throws(
    () => validatePrecisionPlan({ ...plan, version: 2, keyGroups: [] }),
    /precision plan: version is 2, expected 1$/,
  );
  assert.throws(
    () => validatePrecisionPlan({ ...plan, recentWindow: "4" }),
    /recentWindow is "4", expected an integer ≥ 0/,
  );
  await loadWasmCodecs();
  const out = new Float32Array(8);
  for (const codec of [tsCodec("int4-g8-token"), wasmCodec("int4-g8-token")]) {
    for (const block of [null, { format: "int4-g8-token", length: 8 }]) {
      assert.throws(() => codec.decode(block as never, out), ShapeError, JSON.stringify(block));
    }
  }
  assert.throws(
    () => wasmCodec("fp16").decodeView(null as never, 0),
    /words must be a Uint32Array/,
  );
});

Deno.test("a missing or wrong-kind argument is named, not a TypeError from deep inside", async () => {
  throwsLike(
    () => buildPrecisionPlan(undefined as never, {} as never),
    InvalidValueError,
    /^analysis is undefined, expected an Analysis/,
  );
  throwsLike(() => cacheShape(undefined as never), InvalidValueError, /^config is undefined/);
  const model = {
    config: { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, seqLen: 16, vocabSize: 8 },
    forward: () => {},
  };
  await assert.rejects(
    () =>
      calibrate(model as never, { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8 }, [[1, 2]], {
        measureFormats: "fp16" as never,
      }),
    (e: Error) =>
      e instanceof InvalidValueError &&
      /^measureFormats is "fp16", expected an array/.test(e.message),
  );
  const policy = uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" });
  await assert.rejects(
    () => createKVCache(undefined as never, policy, { backend: "ts" }),
    (e: Error) => e instanceof ShapeError && /^cache shape is undefined/.test(e.message),
  );
});

Deno.test("options objects refuse a field they do not have, naming it (a typo was dropped)", async () => {
  const formats = ["int4-g8-token", "fp16"].map(getFormat);
  const rng = mulberry32(5);
  const head = () =>
    analyzeHeadGroup({
      queries: Float32Array.from({ length: 40 * 8 }, () => rng() - 0.5),
      keys: Float32Array.from({ length: 40 * 8 }, () => rng() - 0.5),
      values: Float32Array.from({ length: 40 * 8 }, () => rng() - 0.5),
      length: 40,
      headDim: 8,
    }, { windows: [8] });
  const analysis: Analysis = {
    version: 1,
    shape: { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 8, maxSeqLen: 40 },
    windows: [8],
    sinkTokens: 4,
    recentWindow: 8,
    sequences: [{ length: 40, heads: [[head()]] }],
  };
  const plan = {
    mode: "budget" as const,
    bitsPerElement: 12,
    keyFormats: formats,
    valueFormats: formats,
    recentWindow: 8,
  };
  assert.ok(buildPrecisionPlan(analysis, plan).plan);
  const cases: [() => unknown, RegExp][] = [
    [
      () => buildPrecisionPlan(analysis, { ...plan, windowformat: "int8-g8-token" } as never),
      /^plan options have unknown field "windowformat"; the fields are .*windowFormat/,
    ],
    [
      () =>
        analyzeHeadGroup({
          queries: new Float32Array(8),
          keys: new Float32Array(8),
          values: new Float32Array(8),
          length: 1,
          headDim: 8,
        }, { window: [4] } as never),
      /^analysis options have unknown field "window"/,
    ],
    [
      () =>
        checkAssignment(
          analysis,
          { sequences: [] } as never,
          { epsilon: 1, recencey: false } as never,
        ),
      /^checkAssignment options have unknown field "recencey"/,
    ],
    [
      () => requiredBits(1, { epsilon: 1, diameter: 1, C: 4 } as never),
      /^rule options have unknown field "C"/,
    ],
  ];
  for (const [run, message] of cases) throwsLike(run, InvalidValueError, message);
  const model = {
    config: { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, seqLen: 16, vocabSize: 8 },
    forward: () => {},
  };
  await assert.rejects(
    () =>
      calibrate(
        model as never,
        { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8 },
        [[1, 2]],
        { measureformats: ["fp16"] } as never,
      ),
    (e: Error) =>
      e instanceof InvalidValueError &&
      /^calibrate options have unknown field "measureformats"/.test(e.message),
  );
});

Deno.test("a missing policy or options object is named on every backend (auto read a field of undefined)", async () => {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 16 };
  await assert.rejects(
    () => createKVCache(shape, undefined as never),
    (e: Error) => e instanceof InvalidValueError && /^policy is undefined/.test(e.message),
  );
  throwsLike(
    () => requiredBits(1, undefined as never),
    InvalidValueError,
    /^rule options are undefined/,
  );
});

Deno.test("analyzeHeadGroup() refuses calibrate-only fields it would ignore", () => {
  const x = Float32Array.from({ length: 8 }, (_, i) => i / 8);
  throwsLike(
    () =>
      analyzeHeadGroup({ queries: x, keys: x, values: x, length: 1, headDim: 8 }, {
        measureFormats: ["fp16"],
      } as never),
    InvalidValueError,
    /^analysis options have unknown field "measureFormats"; the fields are windows, sinkTokens, recentWindow$/,
  );
});
