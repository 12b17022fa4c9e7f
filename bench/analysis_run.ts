// The analysis behind `deno task analyze` and the demos: calibrate, plan, then measure the plan's
// cache and the uniform baselines with the eval harness (eval_measure.ts, the same code as
// `deno task eval`), and collect what the report draws: per-layer curvature and memory, the format
// chosen per layer × position, the precision distribution and the quality-vs-bits frontier.
import { summarizeAnalysis } from "../core/analyzer.ts";
import { BudgetError } from "../core/errors.ts";
import type { PrecisionPlan } from "../core/plan.ts";
import {
  cacheShape,
  getFormat,
  MixedPrecisionKVCache,
  type ModelConfig,
  type Tokenizer,
  type Transformer,
} from "../mod.ts";
import { evalSetup, measureRow, type RowResult } from "./eval_measure.ts";
import { baselineRows } from "./eval_rows.ts";
import {
  calibrateModel,
  calibrationSequences,
  defaultPlanOptions,
  type FittedPlan,
  kvprecFittedPlan,
  kvprecPlan,
  kvprecRow,
  type PlanTarget,
  type Sensitivity,
} from "./kvprec_rows.ts";

/** Progress of a long phase: (phase, done, total). */
export type Progress = (phase: "calibrate" | "eval", done: number, total: number) => void;

/** Per-layer figures. */
export interface LayerFigures {
  /** Layer index. */
  layer: number;
  /** Mean curvature over positions (per-query mean). */
  meanCurvature: number;
  /** Largest single-query curvature. */
  maxCurvature: number;
  /** Share of attention on the sink tokens. */
  sinkShare: number;
  /** Bytes this layer's cache holds after the first evaluation window. */
  bytes: number;
  /** The same positions at FP16 (2 bytes per element). */
  fp16Bytes: number;
  /** The same positions at FP32. */
  fp32Bytes: number;
  /** Positions (summed over KV heads) per "keyFormat|valueFormat". */
  tokensByFormat: Record<string, number>;
}

/** Everything analysis.json holds. */
export interface AnalysisResult {
  /** Layout version. */
  version: 1;
  /** Model shape. */
  model: Pick<ModelConfig, "dim" | "nLayers" | "nHeads" | "nKvHeads" | "headDim" | "vocabSize">;
  /** The run's settings. */
  config: {
    target: PlanTarget;
    evalLines: number;
    context: number;
    calibrationLengths: number[];
    backend: string;
  };
  /** The plan and the mapper's predictions on the calibration data. */
  plan: PrecisionPlan;
  /** Predicted bits per element and error of the plan and of the oracle, calibration data. */
  predicted: {
    plan: { bitsPerElement: number; predictedError: number };
    oracle: { bitsPerElement: number; predictedError: number };
  };
  /**
   * Budget targets: each sensitivity's mean KL on the calibration lines and its bits (the plan
   * ranks positions by the lower); null for the precision rule.
   */
  sensitivities: FittedPlan["candidates"] | null;
  /** The plan at other window sizes (predicted on the calibration data). */
  windowStudy: { recentWindow: number; bitsPerElement: number; predictedError: number }[];
  /** Per layer. */
  layers: LayerFigures[];
  /** Chosen format per (layer, KV head) and position on the longest calibration sequence. */
  heatmap: {
    formats: string[];
    rows: { layer: number; head: number; cells: number[] }[];
  };
  /** Share of stored positions per format pair (kvprec cache, first evaluation window). */
  distribution: Record<string, number>;
  /** Eval rows: the FP32 reference, the uniform baselines and the kvprec plan. */
  rows: RowResult[];
  /** Name of the kvprec row. */
  kvprecRow: string;
  /** Seconds per phase. */
  seconds: { calibrate: number; eval: number };
}

/** Inputs of {@linkcode runAnalysis}. */
export interface AnalysisInputs {
  /** The model. */
  model: Transformer;
  /** Its tokenizer. */
  tokenizer: Tokenizer;
  /** Evaluation lines (token ids). */
  evaluation: number[][];
  /** Calibration lines (token ids). */
  calibration: number[][];
  /** ε or budget. */
  target: PlanTarget;
  /** Scoring window length. */
  context: number;
  /** Backend name (recorded). */
  backend: string;
  /** What ranks positions (unset: kvprecFittedPlan's default). */
  sensitivity?: Sensitivity;
  /** Measure the uniform baselines too (default true; the frontier needs them). */
  baselines?: boolean;
  /** Progress callback. */
  onProgress?: Progress;
}

/**
 * Calibrates, plans and measures.
 * @param inputs model, text, target and options
 * @returns the analysis
 */
export async function runAnalysis(inputs: AnalysisInputs): Promise<AnalysisResult> {
  const { model, tokenizer, target, context } = inputs;
  const c = model.config;
  let t0 = performance.now();
  const calSeqs = calibrationSequences(inputs.calibration, c.seqLen);
  const analysis = await calibrateModel(
    model,
    calSeqs,
    (p) => inputs.onProgress?.("calibrate", p.done, p.total),
  );
  const options = { ...defaultPlanOptions(target), sensitivity: inputs.sensitivity };
  const fitted = await kvprecFittedPlan(model, analysis, calSeqs, target, options);
  if (fitted.withinBudget === false && "budget" in target) {
    throw new BudgetError(
      `budget ${target.budget} bits per element is below what the cache can hold on this model: ` +
        `the cheapest plan measures ${fitted.calibrationBits.toFixed(2)} bits per element on the ` +
        `calibration text (every byte counted)`,
      fitted.calibrationBits,
    );
  }
  const { plan, report } = fitted;
  // the mapper's view of half and twice the window (those it can plan for at this target)
  const windowStudy = [plan.recentWindow / 2, plan.recentWindow, plan.recentWindow * 2].flatMap(
    (w) => {
      try {
        const r = kvprecPlan(analysis, target, {
          ...options,
          recentWindow: w,
          windowFormat: plan.windowFormat,
          stagingFormat: plan.stagingFormat,
        }).report;
        return [{ recentWindow: w, ...r.plan }];
      } catch {
        return [];
      }
    },
  );
  const calibrateSeconds = (performance.now() - t0) / 1000;

  t0 = performance.now();
  const setup = await evalSetup(model, tokenizer, inputs.evaluation, context);
  const kv = kvprecRow(plan, target);
  const rows = [...(inputs.baselines === false ? baselineRows().slice(0, 1) : baselineRows()), kv];
  const total = rows.length * setup.reference.windows.length;
  const results: RowResult[] = [];
  for (const row of rows) {
    const before = results.length * setup.reference.windows.length;
    results.push(
      await measureRow(
        model,
        row,
        setup,
        (d) => inputs.onProgress?.("eval", before + d, total),
        inputs.backend === "ts" ? "ts" : "wasm",
      ),
    );
  }

  // The kvprec cache after the first evaluation window: memory per layer, distribution.
  const cache = new MixedPrecisionKVCache(cacheShape(c), kv.policy);
  await model.prefill(setup.reference.windows[0].tokens, 0, cache);
  const layers = layerFigures(cache, summarizeAnalysis(analysis).layers);
  const counts = cache.tokensByFormat();
  const stored = [...counts.values()].reduce((a, b) => a + b, 0);
  const distribution = Object.fromEntries([...counts].map(([k, n]) => [k, n / stored]));

  // Heatmap: the plan's assignment on the longest calibration sequence.
  let longest = 0;
  calSeqs.forEach((s, i) => (longest = s.length > calSeqs[longest].length ? i : longest));
  const a = report.planAssignment;
  const formats: string[] = [`${a.windowFormat}|${a.windowFormat}`];
  const index = new Map([[formats[0], 0]]);
  const rowsHm: AnalysisResult["heatmap"]["rows"] = [];
  a.sequences[longest].forEach((heads, layer) =>
    heads.forEach((h, head) => {
      const cells = Array.from(h.key, (k, t) => {
        const v = h.value[t];
        const key = k < 0 ? formats[0] : `${a.keyFormats[k]}|${a.valueFormats[v]}`;
        if (!index.has(key)) index.set(key, formats.push(key) - 1);
        return index.get(key)!;
      });
      rowsHm.push({ layer, head, cells });
    })
  );

  return {
    version: 1,
    model: {
      dim: c.dim,
      nLayers: c.nLayers,
      nHeads: c.nHeads,
      nKvHeads: c.nKvHeads,
      headDim: c.headDim,
      vocabSize: c.vocabSize,
    },
    config: {
      target,
      evalLines: inputs.evaluation.length,
      context,
      calibrationLengths: calSeqs.map((s) => s.length),
      backend: inputs.backend,
    },
    plan,
    predicted: { plan: report.plan, oracle: report.oracle },
    sensitivities: fitted.candidates ?? null,
    windowStudy,
    layers,
    heatmap: { formats, rows: rowsHm },
    distribution,
    rows: results,
    kvprecRow: kv.name,
    seconds: { calibrate: calibrateSeconds, eval: (performance.now() - t0) / 1000 },
  };
}

/**
 * Bytes held per layer (the per-layer split of {@linkcode MixedPrecisionKVCache.memory}) with the
 * FP16/FP32 sizes of the same positions and the positions per format.
 * @param cache the cache
 * @param summaries per-layer curvature summaries (same layer order)
 * @returns one entry per layer
 */
export function layerFigures(
  cache: MixedPrecisionKVCache,
  summaries: { meanCurvature: number; maxCurvature: number; sinkShare: number }[],
): LayerFigures[] {
  const { nLayers, nKvHeads, headDim } = cache.shape;
  const win = cache.policy.windowFormat, staging = cache.policy.stagingFormat;
  return Array.from({ length: nLayers }, (_, l) => {
    let bytes = 0;
    const tokens: Record<string, number> = {};
    const add = (k: string, n: number) => n > 0 && (tokens[k] = (tokens[k] ?? 0) + n);
    for (let h = 0; h < nKvHeads; h++) {
      const s = cache.segments(l, h);
      bytes += s.sinkK.byteLength + s.sinkV.byteLength + s.windowK.byteLength +
        s.windowV.byteLength + s.stageK.byteLength + s.stageV.byteLength +
        cache.windowScores(l, h).byteLength;
      add(`${win}|${win}`, s.sinkN + s.windowN - s.stageN);
      add(`${staging}|${staging}`, s.stageN);
      for (const p of s.pools) {
        bytes += p.bytes;
        add(`${p.pair.keyFormat}|${p.pair.valueFormat}`, p.length);
      }
    }
    const elements = cache.length(l) * nKvHeads * headDim * 2;
    return {
      layer: l,
      meanCurvature: summaries[l].meanCurvature,
      maxCurvature: summaries[l].maxCurvature,
      sinkShare: summaries[l].sinkShare,
      bytes,
      fp16Bytes: elements * 2,
      fp32Bytes: elements * 4,
      tokensByFormat: tokens,
    };
  });
}

/**
 * Average stored bits per element of a "keyFormat|valueFormat" pair (for colours and legends).
 * @param pair the pair key
 * @returns (bits(K) + bits(V)) / 2
 */
export function pairBits(pair: string): number {
  const [k, v] = pair.split("|");
  return (getFormat(k).bitsPerElement + getFormat(v).bitsPerElement) / 2;
}
