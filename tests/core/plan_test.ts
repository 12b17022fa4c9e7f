import assert from "node:assert/strict";
import { type Analysis, analyzeHeadGroup } from "../../core/analyzer.ts";
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
    [{ windowFormat: "int8" }, FormatError, /unknown format "int8"/],
    [{ windowFormat: "int8-g8-channel" }, FormatError, /groups along tokens; the window holds/],
    [{ sensitivity: "grad" }, InvalidValueError, /sensitivity is grad, expected/],
    [{ aggregate: "median" }, InvalidValueError, /aggregate is median, expected "max" or "mean"/],
    [{ c: NaN, mode: "rule", epsilon: 1 }, InvalidValueError, /constant c is NaN/],
    [{ c: -1, mode: "rule", epsilon: 1 }, InvalidValueError, /constant c is -1/],
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
      /layer 0 head 0 tier 0 minScore 0.5 not in/,
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
});
