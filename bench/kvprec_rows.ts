// The kvprec configuration shared by `deno task eval`, `deno task analyze` and the demos:
// calibration sequences, candidate formats, plan → cache policy. One function builds the plan so
// every tool measures the same cache for the same ε or budget.
import { type Analysis, calibrate, type CalibrationProgress } from "../core/analyzer.ts";
import { buildPrecisionPlan, type PlanReport, type PrecisionPlan } from "../core/plan.ts";
import {
  cacheShape,
  compareCache,
  fitPlanToBudget,
  Float32KVCache,
  getFormat,
  measureCacheBits,
  MixedPrecisionKVCache,
  type ModelConfig,
  planPolicy,
  referenceRun,
  type Transformer,
} from "../mod.ts";
import type { EvalRow } from "./eval_rows.ts";

export { planPolicy };

/**
 * Candidate key formats: per-channel groups of 32 tokens (keys have outlier channels; head_dim 8
 * is too small for per-token groups to be cheap), and fp16 for the tokens that need it. One group
 * size keeps the eviction ring at 32 tokens.
 */
export const KEY_FORMATS: readonly string[] = [
  ...[2, 3, 4, 5, 6, 8].map((b) => `int${b}-g32-channel`),
  "fp16",
];
/** Candidate value formats: the same, plus per-token int4/int8 (8 wide: 4 metadata bits each). */
export const VALUE_FORMATS: readonly string[] = [
  ...[2, 3, 4, 5, 6, 8].map((b) => `int${b}-g32-channel`),
  "int4-g8-token",
  "int8-g8-token",
  "fp16",
];
/** Prefix lengths of each calibration line (several lengths, so short and long contexts count). */
export const CALIBRATION_LENGTHS: readonly number[] = [128, 256, 512];
/** Sink positions kept at fp16. */
export const SINK_TOKENS = 4;
/** Recent window kept at fp16 before a tier is chosen. */
export const RECENT_WINDOW = 32;
/** The fixture model's RoPE base (llama2.c's; core/tensor.ts Rope): plans store keys before it. */
export const MODEL_ROPE_BASE = 10000;

/** What the plan targets: the precision rule at ε, or an average bits-per-element budget. */
export type PlanTarget = { epsilon: number } | { budget: number };

/**
 * Calibration sequences: the prefixes of each line at every length in `lengths` no longer than the
 * model's context (a length longer than the line uses the whole line once; lines with fewer than 2
 * tokens are skipped).
 * @param lines token ids per calibration line
 * @param context the model's context, seq_len: a longer prefix failed calibration past it
 * @param lengths prefix lengths
 * @returns the sequences, shortest first per line
 */
export function calibrationSequences(
  lines: number[][],
  context: number,
  lengths: readonly number[] = CALIBRATION_LENGTHS,
): number[][] {
  const out: number[][] = [];
  for (const line of lines) {
    if (line.length < 2) continue;
    const seen = new Set<number>();
    for (const n of lengths) {
      const m = Math.min(n, context, line.length);
      if (seen.has(m)) continue;
      seen.add(m);
      out.push(line.slice(0, m));
    }
  }
  return out;
}

/**
 * The calibration lines: the last `count` lines with at least 2 tokens (the eval scores its first
 * `--lines` lines, so these are held out only when `--lines` stops before them).
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
    {
      onProgress,
      sinkTokens: SINK_TOKENS,
      recentWindow: RECENT_WINDOW,
      windows: [4, 8, 16, 32, 64],
      measureFormats: [...new Set([...KEY_FORMATS, ...VALUE_FORMATS])],
      ropeBase: MODEL_ROPE_BASE,
    },
  );
}

/** Storage of sinks and window, and of the tokens awaiting eviction when not the window's. */
export interface WindowChoice {
  /** Sinks and recent window (and the tokens awaiting eviction, unless stagingFormat is set). */
  readonly windowFormat: string;
  /** Tokens awaiting eviction, when apart from the window. */
  readonly stagingFormat?: string;
}

/**
 * Storage a budget target chooses between: everything at fp16; everything at int8 per token in
 * groups of 8 (12 bits with each group's fp16 scale and minimum); or sinks and recent window at
 * fp16 and the tokens awaiting eviction at int8. On the fixture (`deno task eval --only "kvprec
 * budget"` with each forced) an int8 ring frees about 0.4 b of the eviction ring for codes and
 * lowers mean KL at 5.4 b from 9.1e-3 to 4.0e-3, while at 8.4 b its own error (KL 9.2e-4)
 * outweighs what the bits buy (fp16: 6.4e-5); most of that error is the recent window's (README,
 * "How a budget is fitted"), which the third keeps at fp16. A budget fits each and keeps the one
 * with the lowest KL on the calibration lines. Narrower windows lose at 5.4 b: int6-g8-token
 * 2.0e-2, int4-g8-token 0.39.
 */
export const WINDOW_CHOICES: readonly WindowChoice[] = [
  { windowFormat: "fp16" },
  { windowFormat: "int8-g8-token" },
  { windowFormat: "fp16", stagingFormat: "int8-g8-token" },
];

/** "fp16", or "fp16 + int8-g8-token staging": how the eval names a window choice. */
export function windowChoiceName(c: WindowChoice): string {
  return c.stagingFormat === undefined || c.stagingFormat === c.windowFormat
    ? c.windowFormat
    : `${c.windowFormat} + ${c.stagingFormat} staging`;
}

/** Window, sinks and ablation switches of a kvprec plan. */
export interface KvprecOptions {
  /** Sink tokens (default SINK_TOKENS; 0 = the no-sinks ablation). */
  sinkTokens?: number;
  /** Recent window (default RECENT_WINDOW; 0 = the no-window ablation). */
  recentWindow?: number;
  /** Recency factor on the curvature (default true). */
  recency?: boolean;
  /**
   * "curvature" or "attention" (attention alone). Unset: a budget target fits a plan with each and
   * keeps the one with the lower mean KL on the calibration lines; the precision rule uses
   * curvature.
   */
  sensitivity?: Sensitivity;
  /**
   * Storage of sinks, window and tokens awaiting eviction. Unset: a budget target fits a plan with
   * each of WINDOW_CHOICES (that the head dimension can group) and keeps the lowest calibration
   * KL; the precision rule uses fp16.
   */
  windowFormat?: string;
  /** With windowFormat: storage of the tokens awaiting eviction, if not the window's. */
  stagingFormat?: string;
  /**
   * Store channel-axis keys before RoPE (the plan's ropeBase, MODEL_ROPE_BASE): default true;
   * false is the "keys after RoPE" ablation.
   */
  preRopeKeys?: boolean;
}

/** What ranks positions for bits: the curvature measures of the analyzer, or attention alone. */
export type Sensitivity = "curvature" | "attention";

/** The sensitivities a budget target chooses between, in order of preference on a tie. */
export const SENSITIVITIES: readonly Sensitivity[] = ["curvature", "attention"];

/**
 * Sinks and window a target uses unless told otherwise: a budget pays them at the window format's
 * bits (16 or 12), so budgets keep them small (2 sinks, 8 recent tokens); the precision rule keeps
 * 4 and 32.
 * @param target ε or budget
 * @returns the options
 */
export function defaultPlanOptions(target: PlanTarget): KvprecOptions {
  return "budget" in target ? { sinkTokens: 2, recentWindow: 8 } : {};
}

/**
 * The plan for a target, from the mapper alone (its budget counts codes, scales, sinks and window).
 *
 * @param analysis the calibration
 * @param target ε of the precision rule, or a bits-per-element budget for the mapper
 * @param options window (a number for backward compatibility), sinks and ablation switches
 * @returns the plan and the mapper's report
 */
export function kvprecPlan(
  analysis: Analysis,
  target: PlanTarget,
  options: number | KvprecOptions = {},
): { plan: PrecisionPlan; report: PlanReport } {
  const o = typeof options === "number" ? { recentWindow: options } : options;
  return buildPrecisionPlan(analysis, {
    ...("epsilon" in target
      ? { mode: "rule" as const, epsilon: target.epsilon }
      : { mode: "budget" as const, bitsPerElement: target.budget }),
    keyFormats: KEY_FORMATS.map(getFormat),
    valueFormats: VALUE_FORMATS.map(getFormat),
    sinkTokens: o.sinkTokens ?? SINK_TOKENS,
    recentWindow: o.recentWindow ?? RECENT_WINDOW,
    windowFormat: o.windowFormat ?? "fp16",
    ...(o.stagingFormat === undefined ? {} : { stagingFormat: o.stagingFormat }),
    recency: o.recency ?? true,
    sensitivity: o.sensitivity ?? "curvature",
    ropeBase: o.preRopeKeys ?? true ? MODEL_ROPE_BASE : undefined,
  });
}

/** A plan with what the cache measured for it on the calibration text. */
export interface FittedPlan {
  /** The plan. */
  plan: PrecisionPlan;
  /** The mapper's report for it. */
  report: PlanReport;
  /** Bits per element the cache holds with it on the calibration sequences. */
  calibrationBits: number;
  /** Budget targets: whether the measured bits are within the budget (false: below the floor). */
  withinBudget?: boolean;
  /**
   * Budget targets with the sensitivity or window format unset: each candidate's mean KL against
   * the FP32 cache on the calibration lines (teacher-forced) and its measured bits; the plan is
   * {@linkcode chooseCandidate}'s.
   */
  candidates?: PlanCandidate[];
}

/** One plan a budget target fitted and measured on the calibration lines. */
export interface PlanCandidate {
  /** What ranked positions for bits. */
  sensitivity: Sensitivity;
  /** Storage of sinks, window and tokens awaiting eviction. */
  windowFormat: string;
  /** Storage of the tokens awaiting eviction, when not the window's. */
  stagingFormat?: string;
  /** Mean KL against the FP32 cache on the calibration lines. */
  meanKl: number;
  /** Bits per element the cache held there. */
  bits: number;
  /** Whether those bits are within the budget (false: the fit's cheapest plan is over it). */
  withinBudget: boolean;
}

/**
 * Which fitted candidate a budget keeps: among those within the budget, the lowest calibration KL;
 * when none is (a budget below every candidate's floor), the fewest bits, as fitPlanToBudget keeps
 * the cheapest plan. A lower KL never buys bits over the budget.
 * @param candidates the fitted candidates (non-empty)
 * @returns the index of the one to keep
 */
export function chooseCandidate(candidates: readonly PlanCandidate[]): number {
  const within = candidates.some((c) => c.withinBudget);
  let best = -1;
  for (let i = 0; i < candidates.length; i++) {
    const c = candidates[i];
    if (within && !c.withinBudget) continue;
    if (best < 0) {
      best = i;
      continue;
    }
    const b = candidates[best];
    const better = within
      ? c.meanKl < b.meanKl
      : c.bits < b.bits || (c.bits === b.bits && c.meanKl < b.meanKl);
    if (better) best = i;
  }
  return best;
}

/**
 * The plan for a target as the cache measures it: a budget is met in bits the cache really holds
 * (fitPlanToBudget lowers the mapper's budget by the cache's own overhead), measured by running the
 * model over the calibration sequences with the WASM cache (two lines of the evaluation text:
 * the eval scores all 19 lines, the calibration lines among them, as the README says).
 *
 * @param model the transformer
 * @param analysis the calibration
 * @param calibration the calibration sequences
 * @param target ε or budget
 * @param options window, sinks and ablation switches
 * @returns the plan, its report and its measured bits
 */
export async function kvprecFittedPlan(
  model: Transformer,
  analysis: Analysis,
  calibration: number[][],
  target: PlanTarget,
  options: KvprecOptions = defaultPlanOptions(target),
): Promise<FittedPlan> {
  const shape = cacheShape(model.config);
  // bits are measured on the calibration lines at full context (the prefixes would overstate the
  // fixed cost of sinks, window and eviction ring)
  const lines = calibration.filter((s) =>
    !calibration.some((t) => t !== s && t.length > s.length && s.every((x, i) => t[i] === x))
  );
  const measure = (plan: PrecisionPlan) =>
    measureCacheBits(
      model,
      new MixedPrecisionKVCache(shape, planPolicy(plan, "fit"), { backend: "wasm" }),
      lines,
    );
  if ("epsilon" in target) {
    const r = kvprecPlan(analysis, target, options);
    return { ...r, calibrationBits: await measure(r.plan) };
  }
  const fitTo = async (o: KvprecOptions): Promise<FittedPlan> => {
    const fit = await fitPlanToBudget(
      target.budget,
      (b) => kvprecPlan(analysis, { budget: b }, o),
      (r) => measure(r.plan),
    );
    return { ...fit.plan, calibrationBits: fit.measuredBits, withinBudget: fit.withinBudget };
  };
  // which measure ranks positions better, and which window format pays for its bits, are
  // empirical questions per model and budget: fit a plan with each and keep the one whose cache
  // moves the next-token distributions least on the calibration lines (analyze evaluates other
  // lines; deno task eval's 19 lines include these 2, as they include the calibration itself)
  const d = model.config.headDim;
  const sensitivities = options.sensitivity ? [options.sensitivity] : SENSITIVITIES;
  const choices: WindowChoice[] = options.windowFormat
    ? [{ windowFormat: options.windowFormat, stagingFormat: options.stagingFormat }]
    : WINDOW_CHOICES.filter((c) =>
      [c.windowFormat, c.stagingFormat ?? c.windowFormat].every((f) => d % getFormat(f).group === 0)
    );
  if (sensitivities.length * choices.length === 1) {
    return await fitTo({ ...options, ...choices[0] });
  }
  const reference = await referenceRun(
    model,
    new Float32KVCache(shape),
    lines,
    model.config.seqLen,
  );
  const fits: FittedPlan[] = [], candidates: PlanCandidate[] = [];
  for (const choice of choices) {
    for (const sensitivity of sensitivities) {
      const fitted = await fitTo({ ...options, sensitivity, ...choice });
      const cache = new MixedPrecisionKVCache(shape, planPolicy(fitted.plan, "fit"), {
        backend: "wasm",
      });
      const { meanKl } = await compareCache(model, cache, reference);
      fits.push(fitted);
      candidates.push({
        sensitivity,
        ...choice,
        meanKl,
        bits: fitted.calibrationBits,
        withinBudget: fitted.withinBudget!,
      });
    }
  }
  return { ...fits[chooseCandidate(candidates)], candidates };
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
