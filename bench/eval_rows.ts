// The configurations `deno task eval` compares: uniform baselines through the mixed-precision cache,
// and kvprec plans from the analyzer.
import { calibrate, type CalibrationProgress } from "../core/analyzer.ts";
import { buildPrecisionPlan, type PlanOptions, type PrecisionPlan } from "../core/plan.ts";
import {
  type CachePolicy,
  getFormat,
  type KVCacheShape,
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
  /** Whether the verifier's bound held for this configuration (kvprec rows). */
  boundHeld?: boolean;
}

/**
 * Baselines. head_dim is 8 on the fixture, so per-token groups are 8 wide (4 metadata bits per
 * element); per-channel groups run along 32–64 tokens of a page.
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
  ];
}

/** Smallest page (at least 32 tokens) that holds whole channel groups of both formats. */
export function pageTokensFor(...formats: string[]): number {
  return Math.max(32, ...formats.map((f) => (f.endsWith("-channel") ? getFormat(f).group : 1)));
}

/** Candidate formats of kvprec plans on the fixture: channel groups of 32–128 tokens, 2–8 bits. */
export const PLAN_FORMATS = [2, 3, 4, 5, 6, 8].flatMap((b) =>
  [32, 64, 128].map((g) => getFormat(`int${b}-g${g}-channel`))
);

/** Calibration text: the last `count` lines of the evaluation text, each cut to the context. */
export function calibrationSequences(
  sequences: number[][],
  context: number,
  count = 3,
): number[][] {
  return sequences.slice(-count).map((s) => s.slice(0, context));
}

/** kvprec rows: the precision rule at three ε, budget mode at 4.0, 3.0 and 2.5 bits, ablations. */
export async function planRows(
  model: Transformer,
  sequences: number[][],
  shape: KVCacheShape,
  onProgress?: (p: CalibrationProgress) => void,
): Promise<EvalRow[]> {
  const analysis = await calibrate(model, shape, calibrationSequences(sequences, shape.maxSeqLen), {
    onProgress,
    windows: [4, 8, 16, 32],
  });
  const base = { keyFormats: PLAN_FORMATS, valueFormats: PLAN_FORMATS };
  const make = (
    name: string,
    kind: EvalRow["kind"],
    options: Omit<PlanOptions, "keyFormats" | "valueFormats">,
  ): EvalRow => {
    const { plan } = buildPrecisionPlan(analysis, { ...base, ...options });
    return { name, kind, policy: planPolicy(plan, name), plan };
  };
  // sinks and window are paid at 16 bits: smaller budgets need smaller windows
  const B4 = { sinkTokens: 4, recentWindow: 16 }, B3 = { sinkTokens: 2, recentWindow: 8 };
  const B25 = { sinkTokens: 1, recentWindow: 4 };
  const budget = (bits: number, extra: object) => ({
    mode: "budget" as const,
    bitsPerElement: bits,
    ...extra,
  });
  return [
    make("kvprec rule ε=0.1", "kvprec", { mode: "rule", epsilon: 0.1 }),
    make("kvprec rule ε=0.01", "kvprec", { mode: "rule", epsilon: 0.01 }),
    make("kvprec rule ε=0.001", "kvprec", { mode: "rule", epsilon: 0.001 }),
    make("kvprec budget 4.0 (sinks 4, window 16)", "kvprec", budget(4.0, B4)),
    make("kvprec budget 3.0 (sinks 2, window 8)", "kvprec", budget(3.0, B3)),
    make("kvprec budget 2.5 (sinks 1, window 4)", "kvprec", budget(2.5, B25)),
    make("ablation of budget 3.0: no sinks", "ablation", budget(3.0, { ...B3, sinkTokens: 0 })),
    make(
      "ablation of budget 3.0: no recent window",
      "ablation",
      budget(3.0, { ...B3, recentWindow: 0 }),
    ),
    make(
      "ablation of budget 3.0: no recency factor",
      "ablation",
      budget(3.0, { ...B3, recency: false }),
    ),
    make(
      "ablation of budget 3.0: attention alone",
      "ablation",
      budget(3.0, { ...B3, sensitivity: "attention" }),
    ),
  ];
}

/** All rows: baselines, then kvprec plans. */
export async function evalRows(
  model: Transformer,
  sequences: number[][],
  shape: KVCacheShape,
  onProgress?: (p: CalibrationProgress) => void,
): Promise<EvalRow[]> {
  return [...baselineRows(), ...(await planRows(model, sequences, shape, onProgress))];
}
