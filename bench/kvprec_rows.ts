// The kvprec configuration shared by `deno task eval`, `deno task analyze` and the demos:
// calibration sequences, candidate formats, plan → cache policy. One function builds the plan so
// every tool measures the same cache for the same ε or budget.
import { type Analysis, calibrate, type CalibrationProgress } from "../core/analyzer.ts";
import { buildPrecisionPlan, type PlanReport, type PrecisionPlan } from "../core/plan.ts";
import { type CachePolicy, getFormat, type ModelConfig, tieredPolicy } from "../mod.ts";
import type { EvalRow } from "./eval_rows.ts";
import { pageTokensFor } from "./eval_rows.ts";

/** Candidate key formats: per-channel groups along tokens (keys have outlier channels), fp16. */
export const KEY_FORMATS: readonly string[] = [
  "int2-g32-channel",
  "int3-g32-channel",
  "int4-g32-channel",
  "int6-g32-channel",
  "int8-g8-token",
  "fp16",
];
/** Candidate value formats: per-token groups along head_dim, fp16. */
export const VALUE_FORMATS: readonly string[] = [
  "int2-g8-token",
  "int3-g8-token",
  "int4-g8-token",
  "int6-g8-token",
  "int8-g8-token",
  "fp16",
];
/** Prefix lengths of each calibration line (several lengths, so short and long contexts count). */
export const CALIBRATION_LENGTHS: readonly number[] = [128, 256, 512];
/** Sink positions kept at fp16. */
export const SINK_TOKENS = 4;
/** Recent window kept at fp16 before a tier is chosen. */
export const RECENT_WINDOW = 32;

/** What the plan targets: the precision rule at ε, or an average bits-per-element budget. */
export type PlanTarget = { epsilon: number } | { budget: number };

/**
 * Calibration sequences: the prefixes of each line at every length in `lengths` (a length longer
 * than the line uses the whole line once; lines with fewer than 2 tokens are skipped).
 * @param lines token ids per calibration line
 * @param lengths prefix lengths
 * @returns the sequences, shortest first per line
 */
export function calibrationSequences(
  lines: number[][],
  lengths: readonly number[] = CALIBRATION_LENGTHS,
): number[][] {
  const out: number[][] = [];
  for (const line of lines) {
    if (line.length < 2) continue;
    const seen = new Set<number>();
    for (const n of lengths) {
      const m = Math.min(n, line.length);
      if (seen.has(m)) continue;
      seen.add(m);
      out.push(line.slice(0, m));
    }
  }
  return out;
}

/**
 * The calibration lines: the last `count` lines with at least 2 tokens (held out from the
 * evaluation unless the evaluation uses every line).
 * @param sequences token ids per line
 * @param count lines wanted
 * @returns the lines
 */
export function calibrationLines(sequences: number[][], count = 2): number[][] {
  return sequences.filter((s) => s.length >= 2).slice(-count);
}

/**
 * Runs the calibration over the sequences with the model.
 * @param model the transformer
 * @param sequences calibration sequences
 * @param onProgress progress (done, total) of forward steps and analyzed layers
 * @returns the analysis
 */
export function calibrateModel(
  model: { config: ModelConfig; forward: Parameters<typeof calibrate>[0]["forward"] },
  sequences: number[][],
  onProgress?: (p: CalibrationProgress) => void,
): Promise<Analysis> {
  const c = model.config;
  return calibrate(
    model,
    { nLayers: c.nLayers, nHeads: c.nHeads, nKvHeads: c.nKvHeads, headDim: c.headDim },
    sequences,
    { onProgress, sinkTokens: SINK_TOKENS, recentWindow: RECENT_WINDOW },
  );
}

/**
 * Builds the kvprec plan for a target.
 * @param analysis the calibration
 * @param target ε or budget
 * @param recentWindow window size (one of the analysis windows)
 * @returns the plan and the mapper's report
 */
export function kvprecPlan(
  analysis: Analysis,
  target: PlanTarget,
  recentWindow = RECENT_WINDOW,
): { plan: PrecisionPlan; report: PlanReport } {
  return buildPrecisionPlan(analysis, {
    ...("epsilon" in target
      ? { mode: "rule" as const, epsilon: target.epsilon }
      : { mode: "budget" as const, bitsPerElement: target.budget }),
    keyFormats: KEY_FORMATS.map(getFormat),
    valueFormats: VALUE_FORMATS.map(getFormat),
    sinkTokens: SINK_TOKENS,
    recentWindow,
  });
}

/**
 * The cache policy that applies a plan online.
 * @param plan the plan
 * @param label the policy's label
 * @returns a tiered policy
 */
export function planPolicy(plan: PrecisionPlan, label: string): CachePolicy {
  const formats = plan.layers.flatMap((l) =>
    l.heads.flatMap((h) => h.tiers.flatMap((t) => [t.keyFormat, t.valueFormat]))
  );
  return tieredPolicy({
    label,
    tiers: plan.layers.map((l) => l.heads.map((h) => h.tiers)),
    sinkTokens: plan.sinkTokens,
    recentWindow: plan.recentWindow,
    windowFormat: plan.windowFormat,
    pageTokens: pageTokensFor(...formats),
  });
}

/**
 * Name of the kvprec row for a target, as the eval table prints it.
 * @param target ε or budget
 * @returns e.g. "kvprec ε=0.01"
 */
export function kvprecRowName(target: PlanTarget): string {
  return "epsilon" in target ? `kvprec ε=${target.epsilon}` : `kvprec budget=${target.budget}`;
}

/**
 * The eval row of a plan.
 * @param plan the plan
 * @param target what it was built for
 * @returns the row
 */
export function kvprecRow(plan: PrecisionPlan, target: PlanTarget): EvalRow {
  const name = kvprecRowName(target);
  return { name, kind: "kvprec", policy: planPolicy(plan, name) };
}
