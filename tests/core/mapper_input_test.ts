// Bad input to the mapper, the verifier, plans, the budget fit and calibrate: finite numbers whose
// products overflow, Lipschitz fields nobody read, strings posing as numbers or booleans, sparse
// and ragged plans, token ids checked only when reached. Each used to return NaN, Infinity or a
// silently coerced answer (found by a fuzzing review). Inputs are drawn from a fresh seed per run,
// which every failure message names.
import assert from "node:assert/strict";
import { calibrate, type CalibrationModel } from "../../core/analyzer.ts";
import { MixedPrecisionKVCache } from "../../core/cache/mixed_cache.ts";
import { fitPlanToBudget, planPolicy } from "../../core/cache/plan_policy.ts";
import { CorruptDataError, FormatError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import type { ModelLipschitz, ResidualTrace } from "../../core/layer_lipschitz.ts";
import {
  allocateBudget,
  type BudgetProblem,
  type MapperFormat,
  predictError,
  requiredBits,
  selectFormat,
} from "../../core/mapper.ts";
import type { KVCache } from "../../core/model/kv_cache.ts";
import {
  type Assignment,
  buildPrecisionPlan,
  type PrecisionPlan,
  tierFor,
  validatePrecisionPlan,
} from "../../core/plan.ts";
import { RecordingKVCache } from "../../core/recording_cache.ts";
import {
  attentionOutputGains,
  checkAssignment,
  composeLayerBounds,
  composeModelBound,
  verifyHeads,
} from "../../core/verifier.ts";
import { formatNames, getFormat } from "../../codecs/format.ts";
import { unitAnalysis, unitHead } from "./_calibration.ts";
import { makeRng, randomArray } from "./_rng.ts";

const SEED = crypto.getRandomValues(new Uint32Array(1))[0];
const at = `seed ${SEED}`;

// deno-lint-ignore no-explicit-any
const named = (cls: new (...a: any[]) => Error, re: RegExp) => (e: unknown) =>
  e instanceof cls && re.test((e as Error).message);

/** 10^u, u uniform in [lo, hi). */
const decade = (rng: () => number, lo: number, hi: number) => 10 ** (lo + (hi - lo) * rng());
const int = (rng: () => number, lo: number, hi: number) => lo + Math.floor((hi - lo) * rng());

// 1. Finite inputs whose products overflow.

Deno.test("requiredBits() is finite where c·κ·D²/ε overflows or underflows a double (was ±Infinity)", () => {
  const rng = makeRng(SEED);
  const cases: [number, number, number, number][] = [
    [1e200, 1e100, 1e-200, 4], // the product overflows
    [1.7e308, 1, 1e-300, 4],
    [1e-300, 1e-100, 1e300, 4], // it underflows to 0
  ];
  for (let i = 0; i < 200; i++) {
    cases.push([
      decade(rng, -300, 300),
      decade(rng, -150, 150),
      decade(rng, -300, 300),
      decade(rng, -10, 10),
    ]);
  }
  for (const [kappa, diameter, epsilon, c] of cases) {
    const p = requiredBits(kappa, { epsilon, diameter, c });
    const want = Math.log2(c) + Math.log2(kappa) + 2 * Math.log2(diameter) - Math.log2(epsilon);
    const label = `${at}: κ ${kappa}, D ${diameter}, ε ${epsilon}, c ${c}: ${p}, expected ${want}`;
    assert.ok(Number.isFinite(p), label);
    assert.ok(Math.abs(p - want) <= 1e-9 * Math.max(1, Math.abs(want)), label);
  }
  // κ = 0 still needs nothing, and the rule picks the most precise format when nothing suffices
  assert.equal(requiredBits(0, { epsilon: 1e-300, diameter: 1e150 }), -Infinity);
  const formats: MapperFormat[] = [
    { name: "int4", kind: "int", bits: 4, bitsPerElement: 5 },
    { name: "fp16", kind: "fp16", bits: 16, bitsPerElement: 16 },
  ];
  const huge = selectFormat(requiredBits(1e200, { epsilon: 1e-200, diameter: 1e100 }), formats);
  assert.deepEqual([huge.format.name, huge.meets], ["fp16", false]);
});

/** n items in one row of two key and two value formats, weights w, errors e. */
function _problem(rng: () => number, n: number, w: number, e: number): BudgetProblem {
  const draw = (scale: number) => Float64Array.from({ length: n }, () => scale * (0.5 + rng()));
  return {
    keyWeight: draw(w),
    valueWeight: draw(w),
    row: new Int32Array(n),
    elements: new Float64Array(n).fill(8),
    keyError: [Float64Array.of(e * (1 + rng()), e * rng())],
    valueError: [Float64Array.of(e * (1 + rng()), e * rng())],
    keyBits: Float64Array.of(4, 8),
    valueBits: Float64Array.of(4, 8),
    fixedBits: 0,
    fixedElements: 0,
  };
}

Deno.test("allocateBudget() and predictError() refuse weights and errors whose sums overflow (was an Infinity error)", () => {
  const rng = makeRng(SEED + 1);
  for (let trial = 0; trial < 20; trial++) {
    const n = int(rng, 2, 12), budget = 4 + 4 * rng();
    // products near 1e200·1e200 overflow; near 1e100·1e100 they and their sums do not
    const ok = _problem(rng, n, decade(rng, 90, 100), decade(rng, 90, 100));
    const a = allocateBudget(ok, budget);
    assert.ok(Number.isFinite(a.predictedError) && a.bitsPerElement <= budget, at);
    const bad = _problem(rng, n, decade(rng, 160, 200), decade(rng, 160, 200));
    const overflow = named(InvalidValueError, /item \d+: weights .* overflow the predicted error/);
    assert.throws(() => allocateBudget(bad, budget), overflow, at);
    assert.throws(
      () => predictError(bad, new Array(n).fill(0), new Array(n).fill(1)),
      overflow,
      at,
    );
    // elements × bits overflow the total bits
    const many = { ...ok, elements: new Float64Array(n).fill(decade(rng, 307, 308)) };
    assert.throws(
      () => allocateBudget(many, budget),
      named(InvalidValueError, /elements\[\d+\] = .* overflow the problem's total bits/),
      at,
    );
  }
});

Deno.test("composeLayerBounds() refuses finite constants whose composed bound overflows (was Infinity)", () => {
  const rng = makeRng(SEED + 2);
  for (let trial = 0; trial < 20; trial++) {
    const n = int(rng, 2, 6);
    const local = Array.from({ length: n }, () => rng());
    const fine = composeLayerBounds(local, Array.from({ length: n }, () => 1 + rng()), rng());
    assert.ok(fine.every(Number.isFinite), at);
    const huge = Array.from({ length: n }, () => decade(rng, 300, 308));
    assert.throws(
      () => composeLayerBounds(local, huge, 1 + rng()),
      named(InvalidValueError, /layer \d+: E = Φ \+ L·E_prev = .* overflows a double/),
      at,
    );
  }
});

Deno.test("checkAssignment() reports a finite requirement for κ near 1e200 and names a NaN κ by field", () => {
  const rng = makeRng(SEED + 3);
  const n = int(rng, 3, 9);
  const head = unitHead(new Array(n).fill(0), [-1e100, 1e100], [-1, 1]);
  head.curvatureMax = Float64Array.from({ length: n }, () => decade(rng, 150, 250));
  const analysis = unitAnalysis([[[head]]]);
  const assignment: Assignment = {
    keyFormats: ["fp16"],
    valueFormats: ["fp16"],
    windowFormat: "fp16",
    sequences: [[[{ key: new Int16Array(n), value: new Int16Array(n) }]]],
  };
  const epsilon = decade(rng, -3, 3);
  const found = checkAssignment(analysis, assignment, { epsilon, recency: false });
  assert.equal(found.length, n, at);
  for (const v of found) {
    const want = 2 + Math.log2(head.curvatureMax[v.position]) + 2 * Math.log2(2e100) -
      Math.log2(epsilon);
    const got = v.requiredKeyBits;
    assert.ok(Math.abs(got - want) < 1e-9 * want, `${at}: ${got} ${want}`);
  }
  const t = int(rng, 0, n);
  head.curvatureMax[t] = NaN;
  assert.throws(
    () => checkAssignment(analysis, assignment, { epsilon }),
    named(InvalidValueError, new RegExp(`layer 0 head 0: curvatureMax\\[${t}\\] is NaN`)),
    at,
  );
});

Deno.test("verifyHeads() refuses data too large for a finite bound (was a NaN bound, nothing exceeded)", () => {
  const rng = makeRng(SEED + 4);
  const record = (scale: number) => {
    const n = int(rng, 2, 6);
    const cache = new RecordingKVCache({
      nLayers: 1,
      nHeads: 2,
      nKvHeads: 1,
      headDim: 8,
      maxSeqLen: n,
    });
    for (let p = 0; p < n; p++) {
      cache.append(0, p, randomArray(rng, 8, scale), randomArray(rng, 8, scale));
      cache.attend(0, randomArray(rng, 16, scale), new Float32Array(16));
    }
    const assignment: Assignment = {
      keyFormats: ["fp32"],
      valueFormats: ["fp32"],
      windowFormat: "fp32",
      sequences: [[[{ key: new Int16Array(n), value: new Int16Array(n) }]]],
    };
    return () => verifyHeads(cache, assignment);
  };
  const [ok] = record(1)();
  assert.ok(Number.isFinite(ok.maxBound) && ok.exceeded === 0, at);
  assert.throws(
    record(decade(rng, 9, 18)),
    named(
      InvalidValueError,
      /layer 0 KV head 0 query head \d position \d: the bound is (NaN|Infinity)/,
    ),
    at,
  );
});

/** A trace of `layers` layers over n positions of one head of dimension d, with its bounds. */
function _modelInputs(rng: () => number, layers: number) {
  const n = 2, d = 2;
  const trace: ResidualTrace = {
    length: n,
    input: [],
    mid: [],
    final: new Float32Array(n * d),
    q: Array.from({ length: layers }, () => randomArray(rng, n * d)),
    k: Array.from({ length: layers }, () => randomArray(rng, n * d)),
    v: Array.from({ length: layers }, () => randomArray(rng, n * d)),
    logits: new Float32Array(0),
  };
  const lipschitz: ModelLipschitz = {
    output: 1 + rng(),
    layers: Array.from({ length: layers }, () => ({
      attention: rng(),
      feedForward: rng(),
      layer: 1 + 3 * rng(),
      outputNorm: 1 + rng(),
    })),
  };
  const bounds = Array.from({ length: layers }, () => [
    { key: new Float32Array(n * d).fill(0.01), value: new Float32Array(n * d).fill(0.01) },
  ]);
  return { trace, lipschitz, bounds, shape: { nHeads: 1, nKvHeads: 1, headDim: d } };
}

Deno.test("composeModelBound() refuses a local or logits bound that overflows (was Infinity)", () => {
  const rng = makeRng(SEED + 5);
  const { trace, lipschitz, bounds, shape } = _modelInputs(rng, int(rng, 1, 4));
  assert.ok(Number.isFinite(composeModelBound(trace, lipschitz, bounds, shape).logits), at);
  const l = int(rng, 0, lipschitz.layers.length);
  const big = structuredClone(lipschitz);
  big.layers[l].outputNorm = decade(rng, 300, 308);
  big.layers[l].feedForward = decade(rng, 20, 30); // Φ ≥ 1e320 × an attention bound ≥ 0.01
  assert.throws(
    () => composeModelBound(trace, big, bounds, shape),
    named(InvalidValueError, new RegExp(`layer ${l}: Φ = \\(1 \\+ feedForward .* is Infinity`)),
    at,
  );
  // E_L ≥ Φ_L ≥ 1e3 × an attention bound ≥ 0.01, times more than MAX_VALUE / 2
  const loud = structuredClone(lipschitz);
  loud.output = Number.MAX_VALUE * (0.5 + rng() / 2);
  loud.layers[loud.layers.length - 1].outputNorm = decade(rng, 3, 6);
  assert.throws(
    () => composeModelBound(trace, loud, bounds, shape),
    named(InvalidValueError, /logits bound = output .* overflows a double/),
    at,
  );
});

// 2. Every Lipschitz field checked.

Deno.test("composeModelBound() names every Lipschitz field that is not a finite number ≥ 0 (it read output alone)", () => {
  const rng = makeRng(SEED + 6);
  for (const key of ["attention", "feedForward", "layer", "outputNorm"] as const) {
    for (const bad of [NaN, -1 - rng(), Infinity, "1", undefined]) {
      const { trace, lipschitz, bounds, shape } = _modelInputs(rng, int(rng, 1, 4));
      const l = int(rng, 0, lipschitz.layers.length);
      (lipschitz.layers[l] as unknown as Record<string, unknown>)[key] = bad;
      const shown = typeof bad === "string" ? `"${bad}"` : String(bad);
      assert.throws(
        () => composeModelBound(trace, lipschitz, bounds, shape),
        named(InvalidValueError, new RegExp(`Lipschitz layers\\[${l}\\]\\.${key} is ${shown},`)),
        `${at}: ${key} ${shown}`,
      );
    }
  }
  const { trace, lipschitz, bounds, shape } = _modelInputs(rng, 2);
  assert.throws(
    () => composeModelBound(trace, { ...lipschitz, output: "2" as never }, bounds, shape),
    named(InvalidValueError, /output Lipschitz bound is "2", expected a finite number ≥ 0/),
  );
  const holed = { ...lipschitz, layers: [lipschitz.layers[0], null as never] };
  assert.throws(
    () => composeModelBound(trace, holed, bounds, shape),
    named(ShapeError, /Lipschitz layers\[1\] is null, expected an object/),
  );
  assert.throws(
    () => composeModelBound(trace, { output: 1 } as never, bounds, shape),
    named(ShapeError, /Lipschitz layers is undefined, expected an array/),
  );
});

// 3. fitPlanToBudget's rounds, target and measurements.

Deno.test("fitPlanToBudget() refuses bad rounds and target before building, and names a bad measurement", async () => {
  const rng = makeRng(SEED + 7);
  const target = 3 + 3 * rng(), overhead = rng();
  let builds = 0;
  const build = (b: number) => (builds++, { b });
  const measure = (p: { b: number }) => Promise.resolve(p.b + overhead);
  for (const rounds of [NaN, 0, -1, 1.5, Infinity, "3"]) {
    const shown = typeof rounds === "string" ? `"${rounds}"` : String(rounds);
    await assert.rejects(
      () => fitPlanToBudget(target, build, measure, rounds as number),
      named(InvalidValueError, new RegExp(`rounds is ${shown}, expected an integer ≥ 1`)),
      shown,
    );
  }
  for (const bad of [NaN, 0, -target, Infinity, "5"]) {
    await assert.rejects(
      () => fitPlanToBudget(bad as number, build, measure),
      named(InvalidValueError, /target is \S+, expected a finite number > 0/),
      String(bad),
    );
  }
  assert.equal(builds, 0);
  for (const bad of [NaN, -rng() - 0.1, Infinity, "3", undefined]) {
    const shown = typeof bad === "string" ? `"${bad}"` : String(bad);
    await assert.rejects(
      () => fitPlanToBudget(target, build, () => Promise.resolve(bad as number)),
      named(
        InvalidValueError,
        new RegExp(`measure returned ${shown} bits per element for mapper budget ${target}`),
      ),
      `${at}: ${shown}`,
    );
  }
  const fit = await fitPlanToBudget(target, build, measure, 1 + int(rng, 0, 8));
  assert.ok(fit.withinBudget && fit.measuredBits <= target, `${at}: ${JSON.stringify(fit.tries)}`);
});

// 4. attentionOutputGains at sizes rounding loses.

/** One layer whose logits are its attention output: every gain is 1. */
function _echoModel(seed: number, dim: number): CalibrationModel {
  return {
    forward(token: number, pos: number, cache: KVCache): Float32Array {
      const rng = makeRng(seed + 31 * token + pos);
      const out = new Float32Array(dim);
      cache.append(0, pos, randomArray(rng, dim), randomArray(rng, dim));
      cache.attend(0, randomArray(rng, dim), out);
      return out;
    },
  };
}

Deno.test("attentionOutputGains() refuses a size float32 rounding loses (was all-zero gains) and measures 1 for an echo", async () => {
  const rng = makeRng(SEED + 8);
  const d = 4 * int(rng, 1, 5), n = int(rng, 2, 6);
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: d, maxSeqLen: n };
  const model = _echoModel(SEED, d);
  const tokens = Array.from({ length: n }, () => int(rng, 0, 100));
  for (const size of [1e-30, decade(rng, -40, -15)]) {
    await assert.rejects(
      () => attentionOutputGains(model, shape, tokens, { size }),
      named(InvalidValueError, /size is \S+, but float32 rounding .* too small to measure a gain/),
      `${at}: size ${size}`,
    );
  }
  // the logits are the outputs themselves: the gain is 1, against the perturbation applied
  const [gain] = await attentionOutputGains(model, shape, tokens, { size: decade(rng, -4, -1) });
  assert.ok(Math.abs(gain - 1) < 1e-12, `${at}: gain ${gain}`);
});

// 5. Strings posing as numbers or booleans.

Deno.test("tierFor(), selectFormat(), plans and the verifier refuse strings posing as numbers or booleans", async () => {
  const tier = (minScore: number, f: string) => ({ minScore, keyFormat: f, valueFormat: f });
  const plan: PrecisionPlan = {
    version: 1,
    sinkTokens: 0,
    recentWindow: 1,
    windowFormat: "fp16",
    layers: [{ heads: [{ tiers: [tier(0.4, "int8-g8-token"), tier(0, "int4-g8-token")] }] }],
  };
  assert.equal(tierFor(plan, 0, 0, 0.5).keyFormat, "int8-g8-token");
  const table: [number, number, unknown, RegExp][] = [
    [0, 0, "0.5", /score is "0.5", expected a number/],
    [0, 0, undefined, /score is undefined, expected a number/],
    ["0" as never, 0, 0.5, /layer is "0", expected a number/],
    [0, "0" as never, 0.5, /head is "0", expected a number/],
  ];
  for (const [l, h, score, re] of table) {
    assert.throws(() => tierFor(plan, l, h, score as number), named(InvalidValueError, re));
  }
  const formats = ["int4-g16-token", "int8-g16-token"].map(getFormat);
  assert.throws(
    () => selectFormat("3" as never, formats),
    named(InvalidValueError, /required precision is "3", expected a number of bits/),
  );
  // the message shows a string as one ("2", not 2)
  assert.throws(
    () => requiredBits("2" as never, { epsilon: 1, diameter: 1 }),
    named(InvalidValueError, /curvature κ is "2", expected a finite number ≥ 0/),
  );
  assert.throws(
    () => requiredBits(1, { epsilon: "1" as never, diameter: 1 }),
    named(InvalidValueError, /target error ε is "1", expected/),
  );
  const analysis = unitAnalysis([[[unitHead([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])]]]);
  const options = {
    mode: "budget" as const,
    bitsPerElement: 12,
    keyFormats: formats,
    recentWindow: 1,
    sinkTokens: 0,
  };
  for (const key of ["perHead", "recency"]) {
    assert.throws(
      () => buildPrecisionPlan(analysis, { ...options, valueFormats: formats, [key]: "false" }),
      named(InvalidValueError, new RegExp(`${key} is "false", expected true or false`)),
    );
  }
  const { report } = buildPrecisionPlan(analysis, { ...options, valueFormats: formats });
  assert.throws(
    () => checkAssignment(analysis, report.planAssignment, { epsilon: 1, recency: "no" as never }),
    named(InvalidValueError, /recency is "no", expected true or false/),
  );
  assert.throws(
    () => composeLayerBounds([0.1], [2], "0.5" as never),
    named(InvalidValueError, /input error is "0.5"/),
  );
  assert.throws(
    () => composeLayerBounds(["0.1" as never], [2]),
    named(InvalidValueError, /local\[0\] is "0.1", expected a number or a function/),
  );
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 4, maxSeqLen: 2 };
  await assert.rejects(
    () => attentionOutputGains(_echoModel(SEED, 4), shape, [1, 2], { size: "1e-3" as never }),
    named(InvalidValueError, /size is "1e-3", expected a finite number > 0/),
  );
  const cache = new RecordingKVCache({ ...shape, maxSeqLen: 1 });
  cache.append(0, 0, Float32Array.of(1, 2, 3, 4), Float32Array.of(1, 2, 3, 4));
  cache.attend(0, Float32Array.of(1, 0, 0, 0), new Float32Array(4));
  const one: Assignment = {
    keyFormats: ["fp16"],
    valueFormats: ["fp16"],
    windowFormat: "fp16",
    sequences: [[[{ key: new Int16Array(1), value: new Int16Array(1) }]]],
  };
  assert.equal(verifyHeads(cache, one, 0).length, 1);
  assert.throws(
    () => verifyHeads(cache, one, "0" as never),
    named(InvalidValueError, /sequence is "0", expected a sequence index/),
  );
});

// 6. calibrate's token ids, before any model work.

Deno.test("calibrate() checks every sequence's token ids before running the model (a later one was reached first)", async () => {
  const rng = makeRng(SEED + 9);
  let calls = 0;
  const echo = _echoModel(SEED, 4);
  const vocab = int(rng, 8, 64);
  const model = {
    config: { vocabSize: vocab },
    forward: (t: number, p: number, c: KVCache) => (calls++, echo.forward(t, p, c)),
  };
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 4 };
  const sequences = () =>
    Array.from(
      { length: int(rng, 2, 5) },
      () => Array.from({ length: int(rng, 1, 6) }, () => int(rng, 0, vocab)),
    );
  for (const bad of [-1, 1.5, NaN, "3", vocab, undefined]) {
    const seqs = sequences();
    const i = seqs.length - 1, t = int(rng, 0, seqs[i].length);
    (seqs[i] as unknown[])[t] = bad;
    const shown = typeof bad === "string" ? `"${bad}"` : String(bad);
    await assert.rejects(
      () => calibrate(model, shape, seqs, { windows: [1] }),
      named(
        ShapeError,
        new RegExp(`calibration sequence ${i} position ${t}: token id ${shown} out of range`),
      ),
      `${at}: ${shown}`,
    );
  }
  assert.equal(calls, 0);
  // without a vocabulary size, ids are still integers ≥ 0
  await assert.rejects(
    () => calibrate(echo, shape, [[1, 2], [3, -2]], { windows: [1] }),
    named(ShapeError, /sequence 1 position 1: token id -2 out of range \[0, vocabulary size\)/),
  );
  const ok = sequences();
  const analysis = await calibrate(model, shape, ok, { windows: [1] });
  assert.equal(analysis.sequences.length, ok.length, at);
});

// 7. Sparse and ragged plans.

Deno.test("validatePrecisionPlan() refuses sparse arrays and layers of unequal head counts, naming the path", () => {
  const rng = makeRng(SEED + 10);
  const tier = { minScore: 0, keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" };
  const heads = (n: number) => Array.from({ length: n }, () => ({ tiers: [tier] }));
  const nLayers = int(rng, 2, 6), nHeads = int(rng, 1, 5);
  const make = () => ({
    version: 1,
    sinkTokens: 0,
    recentWindow: 1,
    windowFormat: "fp16",
    layers: Array.from({ length: nLayers }, () => ({ heads: heads(nHeads) })),
  });
  validatePrecisionPlan(make());
  const l = int(rng, 0, nLayers), h = int(rng, 0, nHeads);
  const cases: [string, (p: ReturnType<typeof make>) => void, RegExp][] = [
    [
      "a hole in layers",
      (p) => delete (p.layers as unknown[])[l],
      new RegExp(`layer ${l} has no heads`),
    ],
    [
      "a hole in heads",
      (p) => delete (p.layers[l].heads as unknown[])[h],
      new RegExp(`layer ${l} head ${h} has no tiers`),
    ],
    [
      "a hole in tiers",
      (p) => (p.layers[l].heads[h].tiers = [, tier] as never),
      new RegExp(`layer ${l} head ${h} tier 0 is undefined, expected an object`),
    ],
    [
      "a layer with one head more",
      (p) => p.layers[(l + 1) % nLayers].heads.push({ tiers: [tier] }),
      new RegExp(`layer ${Math.max(1, (l + 1) % nLayers)} has \\d+ heads, layer 0 has \\d+`),
    ],
  ];
  for (const [label, change, re] of cases) {
    const p = make();
    change(p);
    assert.throws(() => validatePrecisionPlan(p), named(CorruptDataError, re), `${at}: ${label}`);
  }
});

// 8. Formats the cache cannot store at the model's head_dim.

Deno.test("buildPrecisionPlan() refuses formats the cache cannot store at head_dim (the cache refused the plan later)", () => {
  const rng = makeRng(SEED + 11);
  // drawn mostly from formats grouped along tokens or not at all, so that many plans build
  const names = formatNames();
  const anyD = names.filter((f) => ["channel", "none"].includes(getFormat(f).axis));
  let built = 0;
  for (let trial = 0; trial < 30; trial++) {
    const d = [8, 16, 32][int(rng, 0, 3)], n = 12;
    const pool = () => rng() < 0.75 ? anyD : names;
    const pick = () =>
      Array.from({ length: int(rng, 1, 4) }, () => {
        const from = pool();
        return from[int(rng, 0, from.length)];
      });
    const keys = pick(), values = pick();
    const windowFormat = rng() < 0.5 ? "fp16" : `int8-g${[8, 16, 32][int(rng, 0, 3)]}-token`;
    const analysis = unitAnalysis([[[unitHead(Array.from({ length: n }, rng))]]], d);
    const label = `${at}: d ${d}, keys ${keys}, values ${values}, window ${windowFormat}`;
    let plan: PrecisionPlan;
    try {
      plan = buildPrecisionPlan(analysis, {
        mode: "rule",
        epsilon: 1,
        keyFormats: keys.map(getFormat),
        valueFormats: values.map(getFormat),
        windowFormat,
        recentWindow: 1,
        sinkTokens: 1,
      }).plan;
    } catch (e) {
      assert.ok(
        e instanceof FormatError &&
          /(keyFormats|valueFormats)\[\d\] \S+ groups across KV heads|(Formats\[\d\]|windowFormat) \S+: head_dim \d+ is not a multiple/
            .test(e.message),
        `${label}: ${e}`,
      );
      continue;
    }
    // every plan it returns, the cache takes
    new MixedPrecisionKVCache({ ...analysis.shape, maxSeqLen: 256 }, planPolicy(plan));
    built++;
  }
  assert.ok(built > 0, `${at}: no plan was storable`);
  const analysis = unitAnalysis([[[unitHead([0.1, 0.2, 0.3, 0.4])]]], 8);
  const options = {
    mode: "rule" as const,
    epsilon: 1,
    keyFormats: ["int4-g8-token", "int4-g32-channel"].map(getFormat),
    valueFormats: ["fp16"].map(getFormat),
    recentWindow: 1,
    sinkTokens: 0,
  };
  assert.ok(buildPrecisionPlan(analysis, options).plan.layers.length === 1);
  const table: [Record<string, unknown>, RegExp][] = [
    [
      { valueFormats: ["fp16", "int4-g16-token"].map(getFormat) },
      /valueFormats\[1\] int4-g16-token: head_dim 8 is not a multiple of its group 16/,
    ],
    [
      { windowFormat: "int8-g32-token" },
      /windowFormat int8-g32-token: head_dim 8 is not a multiple/,
    ],
    [
      { keyFormats: [getFormat("int4-g8-heads")] },
      /keyFormats\[0\] int4-g8-heads groups across KV/,
    ],
    [
      { keyFormats: [{ name: "int4", kind: "int", bits: 4, bitsPerElement: 5 }] },
      /unknown format "int4"/,
    ],
  ];
  for (const [spoil, re] of table) {
    assert.throws(
      () => buildPrecisionPlan(analysis, { ...options, ...spoil }),
      named(FormatError, re),
      JSON.stringify(spoil),
    );
  }
});
