import assert from "node:assert/strict";
import { type Analysis, analyzeHeadGroup } from "../../core/analyzer.ts";
import { unitAnalysis, unitHead } from "./_calibration.ts";
import { planPolicy } from "../../core/cache/plan_policy.ts";
import { getFormat } from "../../codecs/format.ts";
import {
  BudgetError,
  CorruptDataError,
  FormatError,
  InvalidValueError,
  ShapeError,
} from "../../core/errors.ts";
import type { MapperFormat } from "../../core/mapper.ts";
import {
  buildPrecisionPlan,
  type PlanOptions,
  type PrecisionPlan,
  type PrecisionTier,
  ruleDiameter,
  tierFor,
  validatePrecisionPlan,
} from "../../core/plan.ts";
import { makeRng, randomArray } from "./_rng.ts";

const int = (b: number): MapperFormat => ({
  name: `int${b}-g8-token`,
  kind: "int",
  bits: b,
  bitsPerElement: b + 4,
});
const FORMATS: MapperFormat[] = [int(2), int(4), int(8)];

/** Two layers of one KV head, d = 8, one sequence of 40 random positions, window scores for 8. */
function smallAnalysis(): Analysis {
  const rng = makeRng(7), n = 40, d = 8;
  const head = () =>
    analyzeHeadGroup({
      queries: randomArray(rng, n * d),
      keys: randomArray(rng, n * d),
      values: randomArray(rng, n * d),
      length: n,
      headDim: d,
    }, { windows: [8] });
  return {
    version: 1,
    shape: { nLayers: 2, nHeads: 1, nKvHeads: 1, headDim: d, maxSeqLen: n },
    windows: [8],
    sinkTokens: 4,
    recentWindow: 8,
    sequences: [{ length: n, heads: [[head()], [head()]] }],
  };
}

const BASE: PlanOptions = {
  mode: "budget",
  bitsPerElement: 10,
  keyFormats: FORMATS,
  valueFormats: FORMATS,
  recentWindow: 8,
};

Deno.test("buildPrecisionPlan() rejects out-of-range options with typed errors naming them", () => {
  const analysis = smallAnalysis();
  assert.ok(buildPrecisionPlan(analysis, BASE).report.plan.bitsPerElement <= 10);
  const table: [Record<string, unknown>, unknown, RegExp][] = [
    [{ recentWindow: -8 }, ShapeError, /recentWindow is -8, expected an integer ≥ 0/],
    [{ recentWindow: NaN }, ShapeError, /recentWindow is NaN, expected an integer ≥ 0/],
    [{ sinkTokens: -1 }, ShapeError, /sinkTokens is -1, expected an integer ≥ 0/],
    [{ sinkTokens: 2.5 }, ShapeError, /sinkTokens is 2.5, expected an integer ≥ 0/],
    // the codecs' own suggestions include formats grouped across KV heads, which no cache stores
    [
      { windowFormat: "int8" },
      FormatError,
      /^windowFormat: unknown format "int8"; a cache stores e\.g\. int4-g32-channel, int8-g8-token/,
    ],
    [
      { keyFormats: [...BASE.keyFormats, { ...BASE.keyFormats[0], name: "int9-g8-token" }] },
      FormatError,
      /^keyFormats\[\d+\]: unknown format "int9-g8-token"; a cache stores e\.g\./,
    ],
    [{ windowFormat: "int8-g8-channel" }, FormatError, /groups along tokens; the window holds/],
    [{ sensitivity: "grad" }, InvalidValueError, /sensitivity is grad, expected/],
    [{ aggregate: "median" }, InvalidValueError, /aggregate is median, expected "max" or "mean"/],
    [{ c: NaN, mode: "rule", epsilon: 1 }, InvalidValueError, /constant c is NaN/],
    [{ c: -1, mode: "rule", epsilon: 1 }, InvalidValueError, /constant c is -1/],
    // a setting of the other mode is refused, not ignored
    [
      { mode: "rule", epsilon: 1 },
      InvalidValueError,
      /bitsPerElement is set, but mode "rule" does not use it/,
    ],
    [{ epsilon: 1 }, InvalidValueError, /epsilon is set, but mode "budget" does not use it/],
    [{ bitsPerElement: "6" }, InvalidValueError, /^budget is "6" bits per element/],
    [{ errorModel: () => "1" }, InvalidValueError, /error model gives "1" for layer 0/],
    [
      { errorModel: (l: number) => (l === 1 ? NaN : 0.1) },
      InvalidValueError,
      /error model gives NaN for layer 1 head 0 key int2-g8-token/,
    ],
    [
      { errorModel: () => -0.1 },
      InvalidValueError,
      /error model gives -0.1 for layer 0 head 0 key/,
    ],
  ];
  for (const [spoil, cls, re] of table) {
    assert.throws(
      () => buildPrecisionPlan(analysis, { ...BASE, ...spoil } as PlanOptions),
      (e) => e instanceof (cls as typeof Error) && re.test((e as Error).message),
      JSON.stringify(spoil),
    );
  }
  // A window format outside the codecs' table also fails with a custom error model (was NaN bits).
  assert.throws(
    () =>
      buildPrecisionPlan(analysis, {
        ...BASE,
        windowFormat: "bf17",
        errorModel: () => 0.1,
      }),
    (e) => e instanceof FormatError && /unknown format "bf17"/.test(e.message),
  );
});

Deno.test("validatePrecisionPlan() names a missing or non-numeric tier instead of a TypeError", () => {
  const { plan } = buildPrecisionPlan(smallAnalysis(), BASE);
  const json = () => JSON.parse(JSON.stringify(plan));
  const table: [(p: PrecisionPlan) => void, RegExp][] = [
    [(p) => ((p.layers[1].heads[0].tiers as unknown[])[0] = null), /layer 1 head 0 tier 0 is null/],
    [
      (p) => ((p.layers[0].heads[0].tiers[0] as unknown as { minScore: string }).minScore = "0.5"),
      /layer 0 head 0 tier 0 minScore is "0\.5", expected a finite number ≥ 0/,
    ],
    // each read as "unknown format undefined", or "not in [0, 0]" for tiers out of order
    [
      (p) => delete (p.layers[1].heads[0].tiers[0] as Partial<PrecisionTier>).valueFormat,
      /layer 1 head 0 tier 0 has no valueFormat/,
    ],
    [
      (p) => p.layers[0].heads[0].tiers.reverse(),
      /layer 0 head 0 tier 1 minScore [0-9.e+-]+ is above tier 0's 0: a head's tiers go by minScore, highest first/,
    ],
    // a misspelt field was ignored: ropebase left keys after RoPE without a word
    [
      (p) => ((p as unknown as Record<string, number>).ropebase = 10000),
      /^precision plan: has unknown field "ropebase"; its fields are .*ropeBase/,
    ],
    [
      (p) => ((p.layers[0] as unknown as Record<string, number>).head = 1),
      /layer 0 has unknown field "head"/,
    ],
    [
      (p) => ((p.layers[0].heads[0] as unknown as Record<string, number>).tier = 1),
      /layer 0 head 0 has unknown field "tier"/,
    ],
    [
      (p) => ((p.layers[0].heads[0].tiers[0] as unknown as Record<string, number>).minscore = 1),
      /layer 0 head 0 tier 0 has unknown field "minscore"/,
    ],
    [
      (p) => (p.windowFormat = "int8-g32-channel"),
      /^precision plan: windowFormat int8-g32-channel groups along tokens/,
    ],
  ];
  for (const [spoil, re] of table) {
    const p = json();
    spoil(p);
    assert.throws(
      () => validatePrecisionPlan(p),
      (e) => e instanceof CorruptDataError && re.test(e.message),
    );
  }
});

Deno.test("tierFor() rejects a NaN score instead of giving the cheapest tier", () => {
  const { plan } = buildPrecisionPlan(smallAnalysis(), BASE);
  assert.throws(
    () => tierFor(plan, 0, 0, NaN),
    (e) => e instanceof InvalidValueError && /score is NaN/.test(e.message),
  );
});

Deno.test("buildPrecisionPlan() counts a quantized window at its format's bits", () => {
  const analysis = smallAnalysis();
  const build = (windowFormat: string, bitsPerElement: number) =>
    buildPrecisionPlan(analysis, { ...BASE, bitsPerElement, windowFormat, errorModel: () => 0.1 });
  const int8 = build("int8-g8-token", 10).plan;
  assert.equal(int8.windowFormat, "int8-g8-token");
  assert.equal(
    validatePrecisionPlan(JSON.parse(JSON.stringify(int8))).windowFormat,
    int8.windowFormat,
  );
  // the cheapest allocation: 4 sinks + 8 window positions of 40 at the window format's bits
  // (fp16 16, int8-g8-token 12 with its group's scale and minimum), the other 28 at int2's 6
  const minimum = (windowFormat: string) => {
    try {
      build(windowFormat, 1);
    } catch (e) {
      if (e instanceof BudgetError && e.minimum !== undefined) return e.minimum;
      throw e;
    }
    assert.fail("a budget of 1 bit is below every allocation");
  };
  assert.ok(Math.abs(minimum("fp16") - (12 * 16 + 28 * 6) / 40) < 1e-9, `${minimum("fp16")}`);
  assert.ok(Math.abs(minimum("int8-g8-token") - (12 * 12 + 28 * 6) / 40) < 1e-9);
  // the error names what costs the bits: 12 of 40 positions sit in sinks and window (no advice at
  // 30%); with 20 sinks it is 28 of 40, and the message says how to lower it
  assert.throws(
    () => build("fp16", 1),
    (e: Error) =>
      e instanceof BudgetError &&
      /: 30\.0% of the calibration's elements sit in the sinks \(4\) and recent window \(8\) at fp16$/
        .test(e.message) &&
      // the allocator's own error stays reachable
      e.cause instanceof BudgetError && e.minimum === e.cause.minimum,
  );
  assert.throws(
    () => buildPrecisionPlan(analysis, { ...BASE, bitsPerElement: 1, sinkTokens: 20 }),
    (e: Error) =>
      e instanceof BudgetError &&
      /: 70\.0% of .* sinks \(20\).*; calibrate on longer sequences/.test(e.message),
  );
});

Deno.test("ruleDiameter() is the larger of the key and value diameters, each range holding 0", () => {
  const table: [string, [number, number][][], number][] = [
    ["keys and values apart, not their union (10)", [[[-5, -4], [4, 5]]], 5],
    ["a range away from 0 reaches 0 (floats err relative to |x|)", [[[1, 2], [0.5, 1]]], 2],
    ["a range across 0", [[[-1, 3], [-0.5, 0.5]]], 4],
    ["values wider than keys", [[[-1, 1], [-3, 2]]], 5],
    ["every sequence counts", [[[-1, 1], [0, 1]], [[2, 6], [0, 1]]], 7],
    ["all zero", [[[0, 0], [0, 0]]], Number.MIN_VALUE],
  ];
  for (const [label, seqs, want] of table) {
    const analysis = unitAnalysis(seqs.map(([k, v]) => [[unitHead([0], k, v)]]));
    assert.equal(ruleDiameter(analysis, 0, 0), want, label);
  }
  assert.throws(
    () => ruleDiameter(unitAnalysis([[[unitHead([0])]]]), 0, 1),
    (e) => e instanceof ShapeError && /sequence 0 has no layer 0 head 1/.test(e.message),
  );
});

Deno.test("buildPrecisionPlan() cuts tiers strictly between adjacent-double scores", () => {
  // (x + x⁺)/2 rounds to x: a cut there put x into the dearer tier, over the budget.
  const x = 0.5 + 2 ** -52, xUp = x + 2 ** -53;
  assert.equal((x + xUp) / 2, x);
  const d = 16, formats = ["int2-g16-token", "int8-g16-token"].map(getFormat); // 4 and 10 bpe
  const analysis = unitAnalysis([[[unitHead([xUp, x, 1])]]], d);
  // budget: the last position at fp16, one decided position with an int8 key, the other all int2
  const bitsPerElement = (2 * 16 + (10 + 4) + (4 + 4)) / 6;
  const { plan, report } = buildPrecisionPlan(analysis, {
    mode: "budget",
    bitsPerElement,
    keyFormats: formats,
    valueFormats: formats,
    recentWindow: 1,
    sinkTokens: 0,
    recency: false,
  });
  assert.equal(tierFor(plan, 0, 0, xUp).keyFormat, "int8-g16-token");
  assert.equal(tierFor(plan, 0, 0, x).keyFormat, "int2-g16-token");
  assert.deepEqual([...report.planAssignment.sequences[0][0][0].key], [1, 0, -1]);
  assert.ok(report.plan.bitsPerElement <= bitsPerElement, `${report.plan.bitsPerElement}`);
});

Deno.test("buildPrecisionPlan() reports the tiers it returns, within budget, on tied scores", () => {
  const rng = makeRng(11), d = 16, n = 30;
  const formats = ["int2-g16-token", "int3-g16-token", "int4-g16-token", "int8-g16-token", "fp16"]
    .map(getFormat);
  let decided = 0;
  for (let trial = 0; trial < 8; trial++) {
    // scores on a coarse grid, some one double apart: ties and adjacent doubles at tier cuts
    const heads = [0, 1].map(() =>
      [0, 1].map(() => {
        const scores: number[] = [];
        for (let t = 0; t < n; t++) {
          const s = Math.round(rng() * 3) / 3 + 0.25;
          scores.push(t > 0 && rng() < 0.3 ? scores[t - 1] + (rng() < 0.5 ? 2 ** -52 : 0) : s);
        }
        const h = unitHead(scores);
        h.keyGradSum = Float64Array.from(scores, () => rng());
        h.attentionSum = Float64Array.from(scores, () => rng());
        return h;
      })
    );
    const analysis = unitAnalysis([heads], d);
    for (const bitsPerElement of [6, 8, 11]) {
      for (const perHead of [true, false]) {
        const label = `trial ${trial} budget ${bitsPerElement} perHead ${perHead}`;
        const { plan, report } = buildPrecisionPlan(analysis, {
          mode: "budget",
          bitsPerElement,
          keyFormats: formats,
          valueFormats: formats,
          recentWindow: 1,
          sinkTokens: 1,
          perHead,
        });
        let bits = 0;
        heads.forEach((row, l) =>
          row.forEach((c, h) => {
            const cell = report.planAssignment.sequences[0][l][h];
            for (let t = 0; t < n; t++) {
              if (t < 1 || t >= n - 1) {
                bits += 2 * d * 16; // sink and window at fp16
                continue;
              }
              const tier = tierFor(plan, l, h, c.windowScores["1"][t]);
              assert.equal(formats[cell.key[t]].name, tier.keyFormat, `${label} ${l} ${h} ${t}`);
              assert.equal(
                formats[cell.value[t]].name,
                tier.valueFormat,
                `${label} ${l} ${h} ${t}`,
              );
              bits += d * (getFormat(tier.keyFormat).bitsPerElement +
                getFormat(tier.valueFormat).bitsPerElement);
              decided++;
            }
          })
        );
        const spent = bits / (2 * 2 * n * 2 * d);
        assert.ok(Math.abs(report.plan.bitsPerElement - spent) < 1e-12, label);
        assert.ok(spent <= bitsPerElement + 1e-12, `${label}: ${spent}`);
      }
    }
  }
  assert.ok(decided > 0);
});

Deno.test("buildPrecisionPlan() without a window gives a rule-mode head the formats its positions need", () => {
  // candidate 0 (fp16) is the dearest: it once stood as the head's tier whenever no position
  // needed more than candidate 0, since the search started from it
  const formats = ["fp16", "int8-g16-token", "int4-g16-token", "int2-g16-token"].map(getFormat);
  const cases: [string, number[], number[], string][] = [
    // p = log2(4·1·2²/10) ≈ 0.68: int2 meets every requirement
    ["every position needs int2", [1, 1, 1, 1, 1, 1], [3, 3, 3, 3, 3, 3], "int2-g16-token"],
    // one position needs int8: log2(4·50·2²/10) ≈ 6.3
    ["one position needs int8", [1, 1, 1, 50, 1, 1], [3, 3, 3, 1, 3, 3], "int8-g16-token"],
  ];
  for (const [label, curvature, oracle, tier] of cases) {
    const head = unitHead(Array(curvature.length).fill(0));
    head.curvatureMax = Float64Array.from(curvature);
    const { plan, report } = buildPrecisionPlan(unitAnalysis([[[head]]]), {
      mode: "rule",
      epsilon: 10,
      keyFormats: formats,
      valueFormats: formats,
      recentWindow: 0,
      sinkTokens: 0,
      recency: false,
    });
    assert.deepEqual([...report.oracleAssignment.sequences[0][0][0].key], oracle, label);
    // values go by attention, 1 at every position: int2 meets log2(4·1·2²/10) for all
    assert.deepEqual(plan.layers[0].heads[0].tiers, [
      { minScore: 0, keyFormat: tier, valueFormat: "int2-g16-token" },
    ], label);
    assert.equal(report.ruleShortfalls, 0, label);
  }
});

Deno.test("planPolicy() throws FormatError for a tier format the registry does not know", () => {
  const plan: PrecisionPlan = {
    version: 1,
    sinkTokens: 0,
    recentWindow: 4,
    windowFormat: "fp16",
    layers: [{
      heads: [{ tiers: [{ minScore: 0, keyFormat: "int9-g8-token", valueFormat: "fp16" }] }],
    }],
  };
  assert.throws(
    () => planPolicy(plan),
    (e) =>
      e instanceof FormatError &&
      /^layer 0 head 0 tier 0: keyFormat "int9-g8-token" is not a known format/.test(e.message),
  );
});

Deno.test("buildPrecisionPlan() names a head whose window scores are missing, short or not finite", () => {
  // a head without them was planned as score 0 everywhere (the cheapest tier), and an infinite
  // score made a tier that validatePrecisionPlan and planPolicy refuse
  const formats = ["int2-g16-token", "int8-g16-token"].map(getFormat);
  const options = {
    mode: "budget" as const,
    bitsPerElement: 9,
    keyFormats: formats,
    valueFormats: formats,
    sinkTokens: 0,
    recentWindow: 1,
  };
  const cases: [
    (h: ReturnType<typeof unitHead>) => void,
    abstract new (...a: never[]) => Error,
    RegExp,
  ][] = [
    [(h) => (h.windowScores = {}), ShapeError, /window 1 has no scores, expected 8/],
    [(h) => (h.windowScores["1"] = new Float64Array(3)), ShapeError, /has 3 scores, expected 8/],
    [(h) => (h.windowScores["1"][0] = Infinity), InvalidValueError, /position 0 is Infinity/],
    [(h) => (h.windowScores["1"][5] = NaN), InvalidValueError, /position 5 is NaN/],
    [(h) => (h.windowScores["1"][2] = -1), InvalidValueError, /position 2 is -1/],
  ];
  for (const [spoil, type, message] of cases) {
    const h = unitHead([5, 4, 3, 2, 1, 0.5, 0.2, 0.1]);
    spoil(h);
    assert.throws(
      () => buildPrecisionPlan(unitAnalysis([[[h]]]), options),
      (e: Error) =>
        e instanceof type && /sequence 0 layer 0 KV head 0/.test(e.message) &&
        message.test(e.message),
      String(message),
    );
  }
  // the unspoilt head plans
  const plan = buildPrecisionPlan(
    unitAnalysis([[[unitHead([5, 4, 3, 2, 1, 0.5, 0.2, 0.1])]]]),
    options,
  );
  assert.ok(plan.plan.layers[0].heads[0].tiers.length > 0);
});
