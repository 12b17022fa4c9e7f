/**
 * Calibration: how much every cached position matters, measured on real attention. For every
 * layer, KV head and cached position t it accumulates, over the queries j ≥ t of the KV head's
 * query heads (grouped-query attention), the attention α_{j,t} (sum and max), the key-gradient norm
 * α‖v_t − o_j‖‖q_j‖/√d, the Hessian-trace norm α|1 − 2α|‖v_t − o_j‖‖q_j‖²/d and the curvature
 * κ = α·‖∂o/∂k‖·√‖tr H‖ (sum and max; formulas in attention_sensitivity.ts), plus the attention a
 * token gathers while it is within a recent window of each size in `windows` (what a cache can
 * observe online). {@linkcode calibrate} runs the model over token sequences with a recording
 * cache; {@linkcode analyzeHeadGroup} is the kernel for one (layer, KV head).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { analyzeHeadGroup } from "./analyzer.ts";
 * // Two positions, one query head, d = 2: q, k, v for positions 0 and 1.
 * const q = new Float32Array([1, 0, 1, 1]);
 * const k = new Float32Array([1, 0, 0, 1]);
 * const v = new Float32Array([1, 2, 3, 4]);
 * const h = analyzeHeadGroup({ queries: q, keys: k, values: v, length: 2, headDim: 2 });
 * // Position 0 is seen by both queries (weights 1 and 1/2), position 1 by the second only.
 * if (Math.abs(h.attentionSum[0] - 1.5) > 1e-12) throw new Error("accumulated attention");
 * ```
 * @module
 */

import { getFormat } from "../codecs/format.ts";
import {
  assertFinite,
  checkOptionFields,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "./errors.ts";
import type { KVCache, KVCacheShape } from "./model/kv_cache.ts";
import { KeyRope } from "./cache/key_rope.ts";
import { errorBoundStats } from "./quantize_head.ts";
import { checkAnalysis, checkStorableFormat } from "./plan.ts";
import { checkRecorded, RecordingKVCache } from "./recording_cache.ts";
import { SensitivityStep } from "./sensitivity_step.ts";

/** Per-position statistics of one (layer, KV head) over one sequence. */
export interface HeadCalibration {
  /** Positions T in the sequence. */
  length: number;
  /** Query heads sharing this KV head. */
  group: number;
  /** Σ_j,h α_{h,j,t}: attention accumulated over every query that sees t (also Σ‖∂o/∂v_t‖). */
  attentionSum: Float64Array;
  /** max_j,h α_{h,j,t}. */
  attentionMax: Float64Array;
  /** Σ_j,h ‖∂o_{h,j}/∂k_t‖ = Σ α‖v_t − o‖‖q‖/√d. */
  keyGradSum: Float64Array;
  /** max_j,h ‖∂o_{h,j}/∂k_t‖. */
  keyGradMax: Float64Array;
  /** Σ_j,h ‖tr ∂²o_{h,j}/∂k_t²‖. */
  hessianSum: Float64Array;
  /** Σ_j,h κ_{h,j,t}. */
  curvatureSum: Float64Array;
  /** max_j,h κ_{h,j,t}. */
  curvatureMax: Float64Array;
  /**
   * For each window size W (key: W as a string), the score a cache observes when t leaves its
   * window: Σ_{j=t}^{t+W−1} mean_h α_{h,j,t} (fewer terms near the end of the sequence).
   */
  windowScores: Record<string, Float64Array>;
  /** [min, max] over every key element. */
  keyRange: [number, number];
  /** [min, max] over every value element. */
  valueRange: [number, number];
  /** max |k| over every key element. */
  keyAbsMax: number;
  /** max |v| over every value element. */
  valueAbsMax: number;
  /** Σ over queries of the attention on the first `sinkTokens` positions. */
  sinkMass: number;
  /** Σ over queries of the attention on the last `recentWindow` positions (own included). */
  recentMass: number;
  /** Number of (query head, query) pairs: group · T. */
  queryCount: number;
}

/** Inputs of {@linkcode analyzeHeadGroup}. */
export interface HeadGroupInput {
  /** Queries, [position][…][headDim] with a stride of `queryStride` elements per position. */
  queries: Float32Array;
  /** Keys, [position][headDim]. */
  keys: Float32Array;
  /** Values, [position][headDim]. */
  values: Float32Array;
  /** Positions T (every position is a query and a cached position, causally). */
  length: number;
  /** Head dimension d. */
  headDim: number;
  /** Query heads sharing the KV head (default 1). */
  group?: number;
  /** Elements between consecutive positions' queries (default group · headDim). */
  queryStride?: number;
  /** Offset of the group's first query head within a position's queries (default 0). */
  queryOffset?: number;
}

/** Options of the analysis. */
export interface AnalyzeOptions {
  /** Window sizes whose online scores are recorded (default [4, 8, 16, 32, 64, 128]). */
  windows?: number[];
  /** Positions counted as sink tokens in the summaries (default 4). */
  sinkTokens?: number;
  /** Window counted as recent in the summaries (default 32). */
  recentWindow?: number;
}

/** Default window sizes whose online scores are recorded. */
export const DEFAULT_WINDOWS: readonly number[] = [4, 8, 16, 32, 64, 128];

/**
 * Analyzes one (layer, KV head) over a causal sequence: for every query j and query head h of the
 * group, attention over positions 0..j in float64, and the per-position statistics of
 * {@linkcode HeadCalibration}. Cost: about 3·d·T²/2 multiply-adds per query head.
 *
 * @param input queries, keys, values and shape
 * @param options window sizes and summary settings
 * @returns the per-position statistics
 * @throws ShapeError when T < 1, arrays are too short or not Float32Arrays, or a window size,
 *   sinkTokens, recentWindow, group, query stride or offset is not an integer in range;
 *   InvalidValueError on NaN or ±Inf
 */
export function analyzeHeadGroup(
  input: HeadGroupInput,
  options: AnalyzeOptions = {},
): HeadCalibration {
  const { queries, keys, values, length: n, headDim: d } = input;
  const group = input.group ?? 1;
  const stride = input.queryStride ?? group * d;
  const qOff = input.queryOffset ?? 0;
  const { windows, sinkTokens, recentWindow } = _analyzeSettings(options);
  if (!Number.isInteger(n) || n < 1) throw new ShapeError(`sequence length ${n}, expected ≥ 1`);
  if (!Number.isInteger(d) || d < 1) throw new ShapeError(`head dimension ${d}, expected ≥ 1`);
  if (!Number.isInteger(group) || group < 1) {
    throw new ShapeError(`group ${group}, expected an integer ≥ 1`);
  }
  if (!Number.isInteger(stride) || stride < 0) {
    throw new ShapeError(`query stride ${stride}, expected an integer ≥ 0`);
  }
  for (const [what, x] of [["queries", queries], ["keys", keys], ["values", values]] as const) {
    if (!(x instanceof Float32Array)) {
      throw new ShapeError(`${what} must be a Float32Array, got ${typeName(x)}`);
    }
  }
  if (keys.length < n * d) {
    throw new ShapeError(`keys has ${keys.length} elements, expected ${n * d}`);
  }
  if (values.length < n * d) {
    throw new ShapeError(`values has ${values.length} elements, expected ${n * d}`);
  }
  const qNeed = (n - 1) * stride + qOff + group * d;
  if (queries.length < qNeed) {
    throw new ShapeError(`queries has ${queries.length} elements, expected ≥ ${qNeed}`);
  }
  if (!Number.isInteger(qOff) || qOff < 0) {
    throw new ShapeError(`query offset ${qOff}, expected an integer ≥ 0`);
  }
  assertFinite(keys.subarray(0, n * d), "keys");
  assertFinite(values.subarray(0, n * d), "values");
  for (let j = 0; j < n; j++) {
    const base = j * stride + qOff;
    for (let i = 0; i < group * d; i++) {
      const x = queries[base + i];
      if (x - x !== 0) {
        throw new InvalidValueError(
          `queries[${base + i}] is ${x}, expected a finite number`,
          base + i,
        );
      }
    }
  }

  const attentionSum = new Float64Array(n);
  const attentionMax = new Float64Array(n);
  const keyGradSum = new Float64Array(n);
  const keyGradMax = new Float64Array(n);
  const hessianSum = new Float64Array(n);
  const curvatureSum = new Float64Array(n);
  const curvatureMax = new Float64Array(n);
  const windowScores: Record<string, Float64Array> = {};
  const windowArrays = windows.map((w) => (windowScores[String(w)] = new Float64Array(n)));
  const step = new SensitivityStep(n, d, group);
  const att = step.attention, kg = step.keyGradNorm, hs = step.hessianTraceNorm;
  const cv = step.curvature;
  const invGroup = 1 / group;
  let sinkMass = 0;
  let recentMass = 0;

  // Query j is one decoding step over positions 0..j: the step kernel, then the accumulations.
  for (let j = 0; j < n; j++) {
    const m = j + 1;
    step.run(queries, j * stride + qOff, keys, values, m);
    for (let h = 0; h < group; h++) {
      const b = h * n;
      for (let t = 0; t < m; t++) {
        const a = att[b + t], g = kg[b + t], kappa = cv[b + t];
        attentionSum[t] += a;
        if (a > attentionMax[t]) attentionMax[t] = a;
        keyGradSum[t] += g;
        if (g > keyGradMax[t]) keyGradMax[t] = g;
        hessianSum[t] += hs[b + t];
        curvatureSum[t] += kappa;
        if (kappa > curvatureMax[t]) curvatureMax[t] = kappa;
      }
      for (let t = 0; t < Math.min(sinkTokens, m); t++) sinkMass += att[b + t];
      for (let t = Math.max(0, m - recentWindow); t < m; t++) recentMass += att[b + t];
      for (let w = 0; w < windows.length; w++) {
        const arr = windowArrays[w];
        for (let t = Math.max(0, j - windows[w] + 1); t <= j; t++) arr[t] += att[b + t] * invGroup;
      }
    }
  }

  let kMin = Infinity, kMax = -Infinity, vMin = Infinity, vMax = -Infinity;
  for (let i = 0; i < n * d; i++) {
    const k = keys[i], v = values[i];
    if (k < kMin) kMin = k;
    if (k > kMax) kMax = k;
    if (v < vMin) vMin = v;
    if (v > vMax) vMax = v;
  }
  return {
    length: n,
    group,
    attentionSum,
    attentionMax,
    keyGradSum,
    keyGradMax,
    hessianSum,
    curvatureSum,
    curvatureMax,
    windowScores,
    keyRange: [kMin, kMax],
    valueRange: [vMin, vMax],
    keyAbsMax: Math.max(-kMin, kMax),
    valueAbsMax: Math.max(-vMin, vMax),
    sinkMass,
    recentMass,
    queryCount: group * n,
  };
}

/**
 * The analysis options with their defaults; ShapeError unless every window size is an integer
 * ≥ 1 and sinkTokens and recentWindow are integers ≥ 0.
 */
function _analyzeSettings(
  options: AnalyzeOptions,
): { windows: number[]; sinkTokens: number; recentWindow: number } {
  // a misspelt field (sinktokens, window) was dropped and its default used without a word
  checkOptionFields(options, _ANALYZE_FIELDS, "analysis options");
  const windows = [...(options.windows ?? DEFAULT_WINDOWS)];
  const sinkTokens = options.sinkTokens ?? 4;
  const recentWindow = options.recentWindow ?? 32;
  for (const w of windows) {
    if (!Number.isInteger(w) || w < 1) {
      throw new ShapeError(`window size ${w}, expected an integer ≥ 1`);
    }
  }
  // NaN or negative settings gave zero or NaN sink and recent masses without a word.
  for (const [key, x] of [["sinkTokens", sinkTokens], ["recentWindow", recentWindow]] as const) {
    if (!Number.isInteger(x) || x < 0) {
      throw new ShapeError(`${key} is ${x}, expected an integer ≥ 0`);
    }
  }
  return { windows, sinkTokens, recentWindow };
}

/** One calibration sequence's statistics, [layer][kvHead]. */
export interface SequenceCalibration {
  /** Tokens in the sequence. */
  length: number;
  /** Per layer, per KV head. */
  heads: HeadCalibration[][];
}

/** Summary of one (layer, KV head) over every calibration sequence. */
export interface HeadSummary {
  /** Layer index. */
  layer: number;
  /** KV head index (-1 in a per-layer summary). */
  head: number;
  /** Mean over positions of the mean-over-queries curvature Σκ/(queries seeing t). */
  meanCurvature: number;
  /** Largest single-query curvature. */
  maxCurvature: number;
  /** Share of all attention mass on the first `sinkTokens` positions. */
  sinkShare: number;
  /** Share of all attention mass on the last `recentWindow` positions. */
  recentShare: number;
  /** Mean over positions of max_j α_{j,t}. */
  meanMaxAttention: number;
}

/** The calibration of a model over several sequences. */
export interface Analysis {
  /** Layout version of this object. */
  version: 1;
  /** Model shape (maxSeqLen: the longest calibration sequence). */
  shape: KVCacheShape;
  /** Window sizes with recorded online scores. */
  windows: number[];
  /** Sink positions used in the summaries. */
  sinkTokens: number;
  /** Recent window used in the summaries. */
  recentWindow: number;
  /** Per calibration sequence. */
  sequences: SequenceCalibration[];
  /**
   * Measured per-element error bounds of each format, [layer][kvHead] (present when calibrate was
   * given measureFormats): key, value and preRopeKey (channel-axis formats on the keys rotated
   * back before RoPE, calibrate's ropeBase) the mean over the sequences' positions, the planner's
   * error model; keyMax, valueMax and preRopeKeyMax the largest over them, what the precision rule
   * credits (analyses saved before they were measured lack them).
   */
  formatErrors?: Record<string, FormatErrors>;
}

/** One format's measured error bounds per [layer][kvHead] (Analysis.formatErrors). */
export interface FormatErrors {
  /** Mean per-element bound on the keys as received. */
  key: number[][];
  /** Mean per-element bound on the values. */
  value: number[][];
  /** Mean on the keys rotated back before RoPE (channel-axis formats, with ropeBase). */
  preRopeKey?: number[][];
  /** Largest per-element bound on the keys as received. */
  keyMax?: number[][];
  /** Largest on the values. */
  valueMax?: number[][];
  /** Largest on the keys rotated back before RoPE. */
  preRopeKeyMax?: number[][];
}

/** Progress of a calibration, for a progress bar. */
export interface CalibrationProgress {
  /** "forward" while running the model, "analyze" while analyzing a layer. */
  phase: "forward" | "analyze";
  /** Sequence index. */
  sequence: number;
  /** Work units done (one per token forwarded, one per layer analyzed). */
  done: number;
  /** Work units in the whole calibration. */
  total: number;
}

/** What {@linkcode calibrate} needs from a model: one forward step through a pluggable cache. */
export interface CalibrationModel {
  /**
   * Runs one token through the model.
   * @param token token id
   * @param pos position of the token
   * @param cache the cache to read and append to
   * @returns the logits
   */
  forward(token: number, pos: number, cache: KVCache): Promise<Float32Array> | Float32Array;
  /**
   * The model's vocabulary size and context, when known (a Transformer's): calibrate checks ids
   * and sequence lengths against them.
   */
  readonly config?: { readonly vocabSize: number; readonly seqLen?: number };
}

/** Options of {@linkcode calibrate}. */
export interface CalibrateOptions extends AnalyzeOptions {
  /**
   * Formats whose mean per-element error bound is measured on every (layer, KV head)'s keys and
   * values with the real codecs (the planner's error model; default none).
   */
  measureFormats?: string[];
  /**
   * The model's RoPE base: channel-axis measureFormats are also measured on keys rotated back
   * before RoPE, as a cache with ropeBase stores them (formatErrors[f].preRopeKey).
   */
  ropeBase?: number;
  /** Called after each token and each analyzed layer. */
  onProgress?: (progress: CalibrationProgress) => void;
}

/** The fields of {@linkcode AnalyzeOptions}. */
const _ANALYZE_FIELDS: Record<keyof AnalyzeOptions, true> = {
  windows: true,
  sinkTokens: true,
  recentWindow: true,
};

/** The fields of {@linkcode CalibrateOptions}. */
const _CALIBRATE_FIELDS: Record<keyof CalibrateOptions, true> = {
  ..._ANALYZE_FIELDS,
  measureFormats: true,
  ropeBase: true,
  onProgress: true,
};

/**
 * Analyzes a recording cache after a forward pass: every layer and KV head.
 *
 * @param cache a recording cache holding one sequence
 * @param options window sizes and summary settings
 * @param onLayer called after each layer
 * @returns the sequence's statistics
 * @throws ShapeError for layers of different lengths or a position without its recorded query
 *   (attend not called after its append: its query read as zeros, or as the sequence's before a
 *   reset)
 */
export function analyzeRecording(
  cache: RecordingKVCache,
  options: AnalyzeOptions = {},
  onLayer?: (layer: number) => void,
): SequenceCalibration {
  const { nLayers, nHeads, nKvHeads, headDim } = cache.shape;
  const group = nHeads / nKvHeads;
  const length = cache.length(0);
  checkRecorded(cache, length);
  const heads: HeadCalibration[][] = [];
  for (let l = 0; l < nLayers; l++) {
    const row: HeadCalibration[] = [];
    for (let kh = 0; kh < nKvHeads; kh++) {
      row.push(analyzeHeadGroup({
        queries: cache.queries(l),
        keys: cache.keys(l, kh),
        values: cache.values(l, kh),
        length,
        headDim,
        group,
        queryStride: nHeads * headDim,
        queryOffset: kh * group * headDim,
      }, options));
    }
    heads.push(row);
    onLayer?.(l);
  }
  return { length, heads };
}

/**
 * Runs the model over each token sequence with a recording cache and analyzes every layer, KV
 * head and position.
 *
 * @param model the model (its forward step)
 * @param shape the model's layers, heads, KV heads and head dimension
 * @param sequences token ids, one array per calibration sequence (each non-empty)
 * @param options window sizes, summary settings and a progress callback
 * @returns the analysis
 * @throws ShapeError on an empty list or an empty sequence, a sequence longer than
 *   model.config.seqLen where the model has one, a token id that is not an integer
 *   ≥ 0 (and below model.config.vocabSize where the model has one), or a window size,
 *   sinkTokens or recentWindow out of range; FormatError for a measured format that is unknown or
 *   that no cache stores (grouped across KV heads, or by a group not dividing head_dim) (all
 *   before the model runs)
 */
export async function calibrate(
  model: CalibrationModel,
  shape: Omit<KVCacheShape, "maxSeqLen">,
  sequences: number[][],
  options: CalibrateOptions = {},
): Promise<Analysis> {
  if (!Array.isArray(sequences)) {
    throw new InvalidValueError(
      `sequences is ${showValue(sequences)}, expected an array of token id arrays`,
    );
  }
  if (sequences.length === 0) throw new ShapeError("no calibration sequences");
  // Every id of every sequence, up front: the model refused a bad one only when it reached it,
  // after running every sequence before it.
  const vocab = model.config?.vocabSize;
  const limit = typeof vocab === "number" && Number.isInteger(vocab) && vocab > 0
    ? vocab
    : Infinity;
  const seqLen = model.config?.seqLen;
  const context = typeof seqLen === "number" && Number.isInteger(seqLen) && seqLen > 0
    ? seqLen
    : Infinity;
  sequences.forEach((s, i) => {
    if (typeof s?.length !== "number") {
      throw new ShapeError(`calibration sequence ${i} is ${typeName(s)}, expected token ids`);
    }
    if (s.length === 0) throw new ShapeError(`calibration sequence ${i} is empty`);
    if (s.length > context) {
      throw new ShapeError(
        `calibration sequence ${i} has ${s.length} tokens, past the model's context of ${context}`,
      );
    }
    for (let t = 0; t < s.length; t++) {
      if (!Number.isInteger(s[t]) || s[t] < 0 || s[t] >= limit) {
        const shown = typeof s[t] === "string" ? JSON.stringify(s[t]) : String(s[t]);
        throw new ShapeError(
          `calibration sequence ${i} position ${t}: token id ${shown} out of range ` +
            `[0, ${limit === Infinity ? "vocabulary size" : limit})`,
        );
      }
    }
  });
  // Checked here, not only by analyzeHeadGroup and meanErrorBound, which run after every
  // forward pass of the first sequence.
  checkOptionFields(options, _CALIBRATE_FIELDS, "calibrate options");
  const { windows, sinkTokens, recentWindow } = options;
  const settings = _analyzeSettings({ windows, sinkTokens, recentWindow });
  // a single name ("fp16") failed as "forEach is not a function"
  if (options.measureFormats !== undefined && !Array.isArray(options.measureFormats)) {
    throw new InvalidValueError(
      `measureFormats is ${showValue(options.measureFormats)}, expected an array of format names`,
    );
  }
  (options.measureFormats ?? []).forEach((f, i) =>
    checkStorableFormat(f, shape.headDim, `measureFormats[${i}]`)
  );
  const maxSeqLen = Math.max(...sequences.map((s) => s.length));
  // the shape's own fields: callers pass a model's config, whose other fields a cache refuses
  const { nLayers, nHeads, nKvHeads, headDim } = shape;
  const full: KVCacheShape = { nLayers, nHeads, nKvHeads, headDim, maxSeqLen };
  const cache = new RecordingKVCache(full);
  const total = sequences.reduce((a, s) => a + s.length + shape.nLayers, 0);
  let done = 0;
  const out: SequenceCalibration[] = [];
  const formatErrors: NonNullable<Analysis["formatErrors"]> = {};
  const zeros = () =>
    Array.from({ length: shape.nLayers }, () => new Array(shape.nKvHeads).fill(0));
  const groups = (options.measureFormats ?? []).map((f) => getFormat(f))
    .filter((f) => f.axis === "channel").map((f) => f.group);
  const rope = options.ropeBase === undefined
    ? undefined
    : new KeyRope(shape.headDim, maxSeqLen, Math.max(1, ...groups), options.ropeBase);
  for (const f of options.measureFormats ?? []) {
    formatErrors[f] = {
      key: zeros(),
      value: zeros(),
      ...(rope && getFormat(f).axis === "channel" ? { preRopeKey: zeros() } : {}),
      keyMax: zeros(),
      valueMax: zeros(),
      ...(rope && getFormat(f).axis === "channel" ? { preRopeKeyMax: zeros() } : {}),
    };
  }
  const positions = sequences.reduce((a, s) => a + s.length, 0);
  for (let si = 0; si < sequences.length; si++) {
    cache.reset();
    const seq = sequences[si];
    for (let pos = 0; pos < seq.length; pos++) {
      await model.forward(seq[pos], pos, cache);
      options.onProgress?.({ phase: "forward", sequence: si, done: ++done, total });
    }
    out.push(analyzeRecording(cache, settings, () => {
      options.onProgress?.({ phase: "analyze", sequence: si, done: ++done, total });
    }));
    for (const [f, e] of Object.entries(formatErrors)) {
      for (let l = 0; l < shape.nLayers; l++) {
        for (let h = 0; h < shape.nKvHeads; h++) {
          const w = seq.length / positions, d = shape.headDim, n = seq.length;
          const { axis, group: G } = getFormat(f);
          // Means with groups from position 0, as errorBoundStats forms them. The cache's channel
          // groups start after the sinks: on the fixture (2 sinks, a 512-token line) that moves
          // the means by at most 1.8% per head, the largest bound by up to 15%, so the largest is
          // also taken with groups from the calibration's sinkTokens (keys before RoPE turned
          // back from there).
          const s = settings.sinkTokens;
          const shifted = axis === "channel" && s % G !== 0 && s < n;
          // from(p): the head's data from position p on (n − p tokens)
          const add = (mean: number[][], max: number[][], from: (p: number) => Float32Array) => {
            const b = errorBoundStats(from(0), n, d, f);
            mean[l][h] += w * b.mean;
            max[l][h] = Math.max(max[l][h], b.max);
            if (shifted) max[l][h] = Math.max(max[l][h], errorBoundStats(from(s), n - s, d, f).max);
          };
          const keys = cache.keys(l, h), values = cache.values(l, h);
          add(e.key, e.keyMax!, (p) => keys.subarray(p * d));
          add(e.value, e.valueMax!, (p) => values.subarray(p * d));
          if (e.preRopeKey) {
            add(e.preRopeKey, e.preRopeKeyMax!, (p) => {
              const k = keys.slice(p * d, n * d);
              rope!.unrotate(k, n - p, G, p);
              return k;
            });
          }
        }
      }
    }
  }
  return {
    version: 1,
    shape: full,
    ...settings,
    sequences: out,
    ...(options.measureFormats?.length ? { formatErrors } : {}),
  };
}

/**
 * Summaries per (layer, KV head) and per layer, over every calibration sequence.
 *
 * @param analysis the analysis
 * @returns per-head summaries and per-layer summaries (head = -1)
 * @throws as {@linkcode checkAnalysis} for an analysis that does not hold what its shape names
 */
export function summarizeAnalysis(
  analysis: Analysis,
): { heads: HeadSummary[]; layers: HeadSummary[] } {
  // no sequences had given NaN summaries, a missing layer a TypeError
  checkAnalysis(analysis);
  const { nLayers, nKvHeads } = analysis.shape;
  const heads: HeadSummary[] = [];
  const layers: HeadSummary[] = [];
  for (let l = 0; l < nLayers; l++) {
    const acc = { curv: 0, max: 0, sink: 0, recent: 0, mass: 0, maxAtt: 0, positions: 0 };
    for (let kh = 0; kh < nKvHeads; kh++) {
      const h = { curv: 0, max: 0, sink: 0, recent: 0, mass: 0, maxAtt: 0, positions: 0 };
      for (const seq of analysis.sequences) {
        const c = seq.heads[l][kh];
        for (let t = 0; t < c.length; t++) {
          h.curv += c.curvatureSum[t] / (c.group * (c.length - t));
          h.max = Math.max(h.max, c.curvatureMax[t]);
          h.maxAtt += c.attentionMax[t];
        }
        h.positions += c.length;
        h.sink += c.sinkMass;
        h.recent += c.recentMass;
        h.mass += c.queryCount;
      }
      heads.push(_summary(l, kh, h));
      acc.curv += h.curv;
      acc.max = Math.max(acc.max, h.max);
      acc.sink += h.sink;
      acc.recent += h.recent;
      acc.mass += h.mass;
      acc.maxAtt += h.maxAtt;
      acc.positions += h.positions;
    }
    layers.push(_summary(l, -1, acc));
  }
  return { heads, layers };
}

function _summary(
  layer: number,
  head: number,
  a: {
    curv: number;
    max: number;
    sink: number;
    recent: number;
    mass: number;
    maxAtt: number;
    positions: number;
  },
): HeadSummary {
  return {
    layer,
    head,
    meanCurvature: a.curv / a.positions,
    maxCurvature: a.max,
    sinkShare: a.sink / a.mass,
    recentShare: a.recent / a.mass,
    meanMaxAttention: a.maxAtt / a.positions,
  };
}

/**
 * A JSON-ready copy of an analysis with its summaries: typed arrays become plain arrays (per
 * position statistics only when `positions` is true, the default).
 *
 * @param analysis the analysis
 * @param options whether to include the per-position arrays
 * @returns a plain object for JSON.stringify
 */
export function analysisToJSON(
  analysis: Analysis,
  options: { positions?: boolean } = {},
): Record<string, unknown> {
  const positions = options.positions ?? true;
  const plain = (c: HeadCalibration) => {
    const out: Record<string, unknown> = {
      length: c.length,
      group: c.group,
      keyRange: c.keyRange,
      valueRange: c.valueRange,
      sinkMass: c.sinkMass,
      recentMass: c.recentMass,
      queryCount: c.queryCount,
      keyAbsMax: c.keyAbsMax,
      valueAbsMax: c.valueAbsMax,
    };
    if (positions) {
      for (
        const k of [
          "attentionSum",
          "attentionMax",
          "keyGradSum",
          "keyGradMax",
          "hessianSum",
          "curvatureSum",
          "curvatureMax",
        ] as const
      ) out[k] = Array.from(c[k]);
      out.windowScores = Object.fromEntries(
        Object.entries(c.windowScores).map(([w, a]) => [w, Array.from(a)]),
      );
    }
    return out;
  };
  return {
    version: analysis.version,
    shape: analysis.shape,
    windows: analysis.windows,
    sinkTokens: analysis.sinkTokens,
    recentWindow: analysis.recentWindow,
    summary: summarizeAnalysis(analysis),
    formatErrors: analysis.formatErrors,
    sequences: analysis.sequences.map((s) => ({
      length: s.length,
      heads: s.heads.map((row) => row.map(plain)),
    })),
  };
}
