// The configurations `deno task eval` compares: uniform baselines through the mixed-precision cache,
// and kvprec plans from the analyzer.
import type { CalibrationProgress } from "../core/analyzer.ts";
import { RecordingKVCache } from "../core/recording_cache.ts";
import { verifyHeads } from "../core/verifier.ts";
import { storedAssignment } from "../core/cache/stored_assignment.ts";
import type { PrecisionPlan } from "../core/plan.ts";
import {
  calibrateModel,
  calibrationLines,
  calibrationSequences,
  defaultPlanOptions,
  type FittedPlan,
  kvprecFittedPlan,
  type KvprecOptions,
  MODEL_ROPE_BASE,
  type PlanTarget,
} from "./kvprec_rows.ts";
import {
  type CachePolicy,
  cacheShape,
  getFormat,
  planPolicy,
  type Transformer,
  uniformPolicy,
} from "../mod.ts";

/** One row of the eval table. */
export interface EvalRow {
  name: string;
  kind: "reference" | "baseline" | "kvprec" | "ablation";
  /** undefined: the FP32 reference cache. */
  policy: CachePolicy;
  /** The plan behind a kvprec row. */
  plan?: PrecisionPlan;
  /** What the cache measured for the plan on the calibration text. */
  fitted?: FittedPlan;
  /** Whether the verifier's bound held for this configuration (kvprec rows). */
  boundHeld?: boolean;
  /**
   * The largest head-output error the verifier measured on the first calibration line, the tokens
   * stored as the cache stores them (kvprec rows): what a rule row's ε promises to bound.
   */
  maxHeadError?: number;
}

/**
 * Baselines. head_dim is 8 on the fixture, so per-token groups are 8 wide (4 metadata bits per
 * element, and codes padded to whole words: int2-g8 costs what int4-g8 does); per-channel groups
 * run along 32–64 tokens of a page.
 */
export function baselineRows(): EvalRow[] {
  const u = (name: string, keyFormat: string, valueFormat: string, extra = {}) => ({
    name,
    kind: "baseline" as const,
    policy: uniformPolicy({
      keyFormat,
      valueFormat,
      pageTokens: pageTokensFor(keyFormat, valueFormat),
      ...extra,
    }),
  });
  return [
    {
      name: "FP32 (reference)",
      kind: "reference",
      policy: uniformPolicy({ keyFormat: "fp32", valueFormat: "fp32", windowFormat: "fp32" }),
    },
    u("FP16", "fp16", "fp16"),
    u("INT8 per token (g8)", "int8-g8-token", "int8-g8-token"),
    u("INT4 per token (g8)", "int4-g8-token", "int4-g8-token"),
    u("INT2 per token (g8)", "int2-g8-token", "int2-g8-token"),
    u("6-bit packed (int6, g32 channel)", "int6-g32-channel", "int6-g32-channel"),
    u("INT4 per channel (g32)", "int4-g32-channel", "int4-g32-channel"),
    u("INT3 per channel (g32)", "int3-g32-channel", "int3-g32-channel"),
    u("INT2 per channel (g32)", "int2-g32-channel", "int2-g32-channel"),
    u("INT2 per channel (g64)", "int2-g64-channel", "int2-g64-channel"),
    u("KIVI-4 (K ch g32, V tok g8, fp16 window 32)", "int4-g32-channel", "int4-g8-token", {
      recentWindow: 32,
    }),
    u("KIVI-2 (K ch g32, V tok g8, fp16 window 32)", "int2-g32-channel", "int2-g8-token", {
      recentWindow: 32,
    }),
    // KVQuant's key layout: per channel, before RoPE (the cache rotates decoded keys forward)
    u("INT4 per channel, K before RoPE (KVQuant-style)", "int4-g32-channel", "int4-g32-channel", {
      ropeBase: MODEL_ROPE_BASE,
    }),
    u("INT3 per channel, K before RoPE (KVQuant-style)", "int3-g32-channel", "int3-g32-channel", {
      ropeBase: MODEL_ROPE_BASE,
    }),
    u("INT2 per channel, K before RoPE (KVQuant-style)", "int2-g32-channel", "int2-g32-channel", {
      ropeBase: MODEL_ROPE_BASE,
    }),
  ];
}

/** Smallest page (at least 32 tokens) that holds whole channel groups of both formats. */
export function pageTokensFor(...formats: string[]): number {
  return Math.max(32, ...formats.map((f) => (f.endsWith("-channel") ? getFormat(f).group : 1)));
}

/** A kvprec row before calibration: its name, target and plan options. */
export interface PlanRowSpec {
  name: string;
  kind: "kvprec" | "ablation";
  target: PlanTarget;
  options: KvprecOptions;
}

/**
 * kvprec rows: the precision rule at three ε; budget mode at 4.0, 3.0 and 2.5 bits per element as
 * the cache measures them (below the cache's floor on this model the cheapest plan is used and the
 * row says so), and at the measured bits of three uniform baselines; ablations of the 5.4 budget
 * (the budget rows choose curvature or attention on the calibration lines; two ablations fix it).
 */
export function planRowSpecs(): PlanRowSpec[] {
  // sinks and window are paid at 16 bits, so budget rows keep them small
  const W = defaultPlanOptions({ budget: 1 });
  const spec = (
    name: string,
    kind: PlanRowSpec["kind"],
    target: PlanTarget,
    options: KvprecOptions = {},
  ) => ({ name, kind, target, options });
  return [
    // ε whose rows fall between INT8 per token and FP16 (README: the other ε measured)
    spec("kvprec rule ε=10", "kvprec", { epsilon: 10 }),
    spec("kvprec rule ε=5", "kvprec", { epsilon: 5 }),
    spec("kvprec rule ε=3", "kvprec", { epsilon: 3 }),
    spec("kvprec budget 4.0", "kvprec", { budget: 4.0 }, W),
    spec("kvprec budget 3.0", "kvprec", { budget: 3.0 }, W),
    spec("kvprec budget 2.5", "kvprec", { budget: 2.5 }, W),
    // budgets at the measured bits of uniform rows, to compare
    spec("kvprec budget 8.4 (≈ 6-bit packed bits)", "kvprec", { budget: 8.4 }, W),
    spec("kvprec budget 6.4 (≈ INT4 ch bits)", "kvprec", { budget: 6.4 }, W),
    spec("kvprec budget 5.4 (≈ INT3 ch bits)", "kvprec", { budget: 5.4 }, W),
    spec("ablation of budget 5.4: no sinks", "ablation", { budget: 5.4 }, { ...W, sinkTokens: 0 }),
    spec("ablation of budget 5.4: no recent window", "ablation", { budget: 5.4 }, {
      ...W,
      recentWindow: 0,
    }),
    spec("ablation of budget 5.4: keys after RoPE", "ablation", { budget: 5.4 }, {
      ...W,
      preRopeKeys: false,
    }),
    spec("ablation of budget 5.4: no recency factor", "ablation", { budget: 5.4 }, {
      ...W,
      recency: false,
    }),
    spec("ablation of budget 5.4: curvature alone", "ablation", { budget: 5.4 }, {
      ...W,
      sensitivity: "curvature",
    }),
    spec("ablation of budget 5.4: attention alone", "ablation", { budget: 5.4 }, {
      ...W,
      sensitivity: "attention",
    }),
  ];
}

/**
 * Calibrates once (on the text's last lines, as analyze does) and builds the plan of each spec.
 * @param model the transformer
 * @param sequences the evaluation sequences (the calibration lines are taken from their end)
 * @param specs the rows to build
 * @param onProgress calibration progress
 * @returns the rows, each with its plan
 */
export async function planRows(
  model: Transformer,
  sequences: number[][],
  specs: PlanRowSpec[],
  onProgress?: (p: CalibrationProgress) => void,
): Promise<EvalRow[]> {
  if (specs.length === 0) return [];
  const calibration = calibrationSequences(calibrationLines(sequences), model.config.seqLen);
  const analysis = await calibrateModel(model, calibration, onProgress);
  // the verifier checks each plan's assignment on the first calibration sequence, recorded once
  const recording = new RecordingKVCache({
    ...cacheShape(model.config),
    maxSeqLen: calibration[0].length,
  });
  await model.prefill(calibration[0], 0, recording);
  const rows: EvalRow[] = [];
  for (const s of specs) {
    const fitted = await kvprecFittedPlan(model, analysis, calibration, s.target, s.options);
    const policy = planPolicy(fitted.plan, s.name);
    // what a cache with the plan stores of that sequence: chunk-wise tiers, window rounding and
    // keys before RoPE, not the plan's per-position assignment (report.planAssignment)
    const checks = verifyHeads(recording, storedAssignment(recording, policy), 0);
    rows.push({
      name: s.name,
      kind: s.kind,
      policy,
      plan: fitted.plan,
      fitted,
      boundHeld: checks.every((c) => c.exceeded === 0),
      maxHeadError: Math.max(...checks.map((c) => c.maxRealized)),
    });
  }
  return rows;
}
