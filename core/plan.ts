/**
 * Turns a calibration into a {@linkcode PrecisionPlan} the cache can apply online. At inference a
 * token's future attention is unknown; what the cache observes is the attention the token gathers
 * while it sits in the full-precision recent window. The plan keeps sinks and the window at
 * `windowFormat`, and when a token leaves the window of (layer, KV head) it gets the first tier whose
 * `minScore` ≤ its observed score (Σ over the queries it saw in the window of the mean over the
 * group's query heads of α).
 *
 * {@linkcode buildPrecisionPlan} first assigns formats to every calibration position with full
 * knowledge (the oracle: the precision rule, or the budget allocation of mapper.ts), then fits the
 * tiers by count matching: per head, positions sorted by observed score take the oracle's formats
 * in order of bits, so on the calibration data the plan spends the oracle's bits. It reports the
 * oracle's and the plan's bits and predicted error, and the rank correlation (Spearman) between
 * the observed score and the calibration curvature and sensitivity.
 *
 * Predicted error (first order, mean over every layer, query head and query): Σ_t
 * r_t·√d·(A^K_t·eK + A^V_t·eV) / queries, with A^K_t = Σ_j α‖v_t − o_j‖‖q_j‖/√d, A^V_t = Σ_j α,
 * eK, eV the per-element errors of the formats (unless an error model is given: the mean error
 * bound calibrate measured for the format, `measureFormats`, on keys before RoPE where the plan
 * stores them so; else D·2^−p/2 for effective precision p, D the diameter of the head's keys or
 * values with 0 in it) and r_t the optional recency factor 1 + exp(−(T − t − 1)/(T/4)).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { tierFor, type PrecisionPlan } from "./plan.ts";
 * const plan: PrecisionPlan = {
 *   version: 1, sinkTokens: 4, recentWindow: 32, windowFormat: "fp16",
 *   layers: [{ heads: [{ tiers: [
 *     { minScore: 0.5, keyFormat: "int8-g8-token", valueFormat: "int8-g8-token" },
 *     { minScore: 0, keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" },
 *   ] }] }],
 * };
 * if (tierFor(plan, 0, 0, 0.7).keyFormat !== "int8-g8-token") throw new Error("high score, high bits");
 * ```
 * @module
 */

import type { Analysis, HeadCalibration } from "./analyzer.ts";
import {
  BudgetError,
  checkOptionFields,
  CorruptDataError,
  FormatError,
  InvalidValueError,
  ShapeError,
  showValue,
} from "./errors.ts";
import { getFormat } from "../codecs/format.ts";
import { cacheFormatSpec } from "./cache/policy.ts";
import { isRopeBase, MIN_ROPE_BASE } from "./tensor.ts";
import {
  allocateBudget,
  type BudgetProblem,
  type MapperFormat,
  precisionBits,
  predictError,
  requiredBits,
  selectFormat,
} from "./mapper.ts";

/** One tier of a head's plan: tokens whose observed score ≥ minScore get these formats. */
export interface PrecisionTier {
  /** Lowest observed score of the tier (the last tier has 0). */
  minScore: number;
  /** Key format name. */
  keyFormat: string;
  /** Value format name. */
  valueFormat: string;
}

/** A serialisable precision plan, applied online by the cache. */
export interface PrecisionPlan {
  /** Layout version. */
  version: 1;
  /** The first sinkTokens positions stay at windowFormat forever. */
  sinkTokens: number;
  /** Positions held at windowFormat before a tier is chosen. */
  recentWindow: number;
  /**
   * Storage of sinks, window and the tokens awaiting eviction: "fp16", "fp32", or a token-axis
   * format such as "int8-g8-token".
   */
  windowFormat: string;
  /**
   * Storage of the tokens awaiting eviction when not windowFormat (the cache policy's
   * stagingFormat): the mapper does not count them (like the rest of the eviction ring);
   * fitPlanToBudget measures the cache that holds them.
   */
  stagingFormat?: string;
  /**
   * The model's RoPE base when channel-axis key pages store keys before RoPE
   * (the cache policy's ropeBase); absent: keys are stored as received.
   */
  ropeBase?: number;
  /** Per layer, per KV head: tiers sorted by minScore descending. */
  layers: { heads: { tiers: PrecisionTier[] }[] }[];
  /** How the plan was made (informational). */
  meta?: Record<string, unknown>;
}

/** Per-element error of a format for one (layer, head), keys or values. */
export type ErrorModel = (
  layer: number,
  head: number,
  kind: "key" | "value",
  format: MapperFormat,
) => number;

/** Options of {@linkcode buildPrecisionPlan}. */
export interface PlanOptions {
  /** "rule": the precision rule at `epsilon`; "budget": average `bitsPerElement`. */
  mode: "rule" | "budget";
  /** Target error ε of the rule. */
  epsilon?: number;
  /** Constant c of the rule (default 4). */
  c?: number;
  /** Budget in average bits per element, window and sinks counted. */
  bitsPerElement?: number;
  /** Candidate key formats. */
  keyFormats: readonly MapperFormat[];
  /** Candidate value formats. */
  valueFormats: readonly MapperFormat[];
  /** Sink tokens (default 4; 0 for the no-sinks ablation). */
  sinkTokens?: number;
  /** Recent window (default 32; 0 for the no-window ablation). Must be one of analysis.windows. */
  recentWindow?: number;
  /**
   * Storage of sinks, window and tokens awaiting eviction (default "fp16"): a format that groups
   * within a token (e.g. "int8-g8-token"), whose bits and measured error the mapper counts.
   */
  windowFormat?: string;
  /**
   * Storage of the tokens awaiting eviction, apart from the window (the plan's stagingFormat; the
   * mapper does not count them). Default: the window format.
   */
  stagingFormat?: string;
  /** Multiply sensitivities by the recency factor (default true). */
  recency?: boolean;
  /**
   * The model's RoPE base: the plan stores channel-axis keys before RoPE (plan.ropeBase), and the
   * error model reads those formats' key errors as calibrated so (formatErrors[f].preRopeKey,
   * calibrate's ropeBase) where measured. Default: keys stored as received.
   */
  ropeBase?: number;
  /**
   * "curvature" (default: the analyzer's gradient and curvature measures rank keys) or "attention"
   * (attention alone). Values go by attention either way: the output is linear in a value,
   * ∂o/∂v_t = α_t·I, so its error reaches the output whole, while a key's curvature tends to 0 for a
   * position taking nearly all the attention (v_t ≈ o): the rule's κ of a value is its attention,
   * and the budget's value weight its summed attention. Which ranks positions better depends on
   * the model: kvprecFittedPlan (bench/kvprec_rows.ts, behind `deno task analyze` and
   * `deno task eval`) fits a budget plan with each and keeps the one with the lower KL on the
   * calibration lines.
   */
  sensitivity?: "curvature" | "attention";
  /** κ over queries as "max" (default) or "mean": the rule's requirement, the report's correlations. */
  aggregate?: "max" | "mean";
  /** Separate tiers per KV head (default true) or one set per layer. */
  perHead?: boolean;
  /**
   * Per-element format errors (default: the mean bound calibrate measured for the format, on keys
   * before RoPE with ropeBase, where it was given `measureFormats`; else range·2^−p/2).
   */
  errorModel?: ErrorModel;
}

/** Figures of one assignment on the calibration data. */
export interface AssignmentFigures {
  /** Average bits per element, sinks and window counted. */
  bitsPerElement: number;
  /** Predicted mean output error per (layer, query head, query), first order. */
  predictedError: number;
}

/** Formats of every calibration position: indices into `keyFormats` / `valueFormats`. */
export interface Assignment {
  /** Key format names; index −1 in the arrays means windowFormat. */
  keyFormats: string[];
  /** Value format names. */
  valueFormats: string[];
  /** Storage of sinks and window. */
  windowFormat: string;
  /**
   * Where the cache stages tokens awaiting eviction apart from the window (the policy's
   * stagingFormat): every position not at −1 passed through it after the window format, and −2
   * marks one still waiting there. Absent: tokens go from the window format to their page.
   */
  stagingFormat?: string;
  /**
   * Per sequence, [layer][kvHead]: format index per position (−1: window format, −2: waiting in
   * the staging format).
   */
  sequences: { key: Int16Array; value: Int16Array }[][][];
  /**
   * The model's RoPE base when channel-axis key formats store keys before RoPE (the plan's
   * ropeBase); absent: keys stored as received.
   */
  ropeBase?: number;
}

/** What {@linkcode buildPrecisionPlan} reports besides the plan. */
export interface PlanReport {
  /** The oracle assignment (full knowledge of the calibration). */
  oracle: AssignmentFigures;
  /** The plan applied to the calibration data through observed scores. */
  plan: AssignmentFigures;
  /** Positions decided by the plan (neither sink nor in the final window). */
  decidedPositions: number;
  /** Spearman correlation of the observed score with the curvature, mean over heads. */
  scoreVsCurvature: number;
  /** Spearman correlation of the observed score with the sensitivity A^K + A^V, mean over heads. */
  scoreVsSensitivity: number;
  /** Per (layer, head) correlations. */
  perHead: { layer: number; head: number; scoreVsCurvature: number; scoreVsSensitivity: number }[];
  /** Rule mode: decided positions where the plan gives less precision than the rule requires. */
  ruleShortfalls?: number;
  /** The oracle assignment. */
  oracleAssignment: Assignment;
  /** The plan's assignment on the calibration data. */
  planAssignment: Assignment;
}

interface _Item {
  seq: number;
  layer: number;
  head: number;
  t: number;
  score: number;
  /** The rule's κ of the key: curvature, or attention with sensitivity "attention". */
  kappa: number;
  /** The rule's κ of the value: attention (∂o/∂v_t = α_t·I, whatever the key's curvature). */
  kappaV: number;
  wK: number;
  wV: number;
}

// The window's format as the mapper sees it: bits and kind from the codecs' table.
/**
 * Throws FormatError unless `name` can hold the window: a format not grouped along tokens.
 * @param name format name
 * @returns its spec
 */
export function checkWindowFormat(name: string, field = "windowFormat"): MapperFormat {
  const spec = cacheFormatSpec(name, field);
  if (spec.axis === "channel") {
    throw new FormatError(
      `${field} ${name} groups along tokens; the window holds whole tokens`,
    );
  }
  return spec;
}

/**
 * Throws FormatError unless the cache can store `name` in pages of one KV head of headDim
 * elements a token (checkPageFormat's rule): a registry format, not grouped across KV heads, and
 * one grouped within a token only by a group dividing headDim. What the planner, the verifier and
 * calibrate's measured formats accept, so none models a format no cache stores.
 *
 * @param name format name
 * @param headDim elements per token of one KV head
 * @param what the field, for the message
 * @throws FormatError naming the field and why
 */
export function checkStorableFormat(name: string, headDim: number, what: string): void {
  const spec = cacheFormatSpec(name, what);
  if (spec.axis === "heads") {
    throw new FormatError(`${what} ${name} groups across KV heads; a cache page holds one`);
  }
  if (spec.axis !== "channel" && headDim % spec.group !== 0) {
    throw new FormatError(
      `${what} ${name}: head_dim ${headDim} is not a multiple of its group ${spec.group}`,
    );
  }
}

/**
 * Builds a precision plan from a calibration (see the module doc).
 *
 * @param analysis the calibration
 * @param options mode (rule or budget), candidate formats, window, sinks and ablation switches
 * @returns the plan and its report
 * @throws InvalidValueError for ε ≤ 0, c ≤ 0, a bad budget, an unknown mode, sensitivity or
 *   aggregate, recency or perHead not a boolean, or an error model giving a negative or non-finite
 *   error; BudgetError for a budget below the cheapest formats; FormatError for empty candidate
 *   lists, or a candidate or window format the registry does not know or the cache cannot store
 *   at the analysis's head_dim; ShapeError for a window without scores or sinks or window not
 *   integers ≥ 0
 */
export function buildPrecisionPlan(
  analysis: Analysis,
  options: PlanOptions,
): { plan: PrecisionPlan; report: PlanReport } {
  const o = _resolve(analysis, options);
  const { nLayers, nKvHeads, headDim: d } = analysis.shape;
  const items = _items(analysis, o);
  const kF = o.keyFormats, vF = o.valueFormats;
  const rows = nLayers * nKvHeads;
  const errTable = (kind: "key" | "value", formats: readonly MapperFormat[]) =>
    Array.from(
      { length: rows },
      (_, r) =>
        Float64Array.from(formats, (f) =>
          _errorOf(o, Math.floor(r / nKvHeads), r % nKvHeads, kind, f)),
    );
  const keyError = errTable("key", kF), valueError = errTable("value", vF);
  const keyBits = Float64Array.from(kF, (f) => f.bitsPerElement);
  const valueBits = Float64Array.from(vF, (f) => f.bitsPerElement);
  const fixed = _fixedStorage(analysis, o);
  const problem: BudgetProblem = {
    keyWeight: Float64Array.from(items, (it) => it.wK),
    valueWeight: Float64Array.from(items, (it) => it.wV),
    row: Int32Array.from(items, (it) => it.layer * nKvHeads + it.head),
    elements: new Float64Array(items.length).fill(d),
    keyError,
    valueError,
    keyBits,
    valueBits,
    fixedBits: fixed.bits,
    fixedElements: fixed.elements,
  };
  const totalElements = fixed.elements + 2 * d * items.length;
  const figures = (kf: ArrayLike<number>, vf: ArrayLike<number>): AssignmentFigures => {
    let bits = fixed.bits;
    for (let i = 0; i < items.length; i++) bits += d * (keyBits[kf[i]] + valueBits[vf[i]]);
    return {
      bitsPerElement: bits / totalElements,
      predictedError: predictError(problem, kf, vf) + fixed.error,
    };
  };

  // 1. The oracle. Rule mode credits each format with its precision on the head's own data.
  const credited = (kind: "key" | "value", F: readonly MapperFormat[]) => {
    const cells = new Map<number, number[]>();
    return (l: number, h: number) => {
      const at = l * nKvHeads + h;
      if (!cells.has(at)) {
        cells.set(at, F.map((f) => rulePrecision(analysis, l, h, kind, f, o.ropeBase)));
      }
      return cells.get(at)!;
    };
  };
  const precisionK = credited("key", kF), precisionV = credited("value", vF);
  let oracleK: Int16Array, oracleV: Int16Array;
  const requiredK = new Float64Array(items.length), requiredV = new Float64Array(items.length);
  if (o.mode === "rule") {
    oracleK = new Int16Array(items.length);
    oracleV = new Int16Array(items.length);
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      const rule = { epsilon: o.epsilon, diameter: o.diameter[it.layer][it.head], c: o.c };
      requiredK[i] = requiredBits(it.kappa, rule);
      requiredV[i] = requiredBits(it.kappaV, rule);
      const [pK, pV] = [precisionK(it.layer, it.head), precisionV(it.layer, it.head)];
      oracleK[i] = kF.indexOf(selectFormat(requiredK[i], kF, (f) => pK[kF.indexOf(f)]).format);
      oracleV[i] = vF.indexOf(selectFormat(requiredV[i], vF, (f) => pV[vF.indexOf(f)]).format);
    }
  } else {
    let a;
    try {
      a = allocateBudget(problem, o.bitsPerElement);
    } catch (e) {
      // "below the cheapest allocation" pointed at the budget, when what costs the bits is a
      // calibration whose positions mostly sit in the sinks and window
      if (!(e instanceof BudgetError) || !(fixed.elements > 0)) throw e;
      const share = fixed.elements / totalElements;
      throw new BudgetError(
        `${e.message}: ${(100 * share).toFixed(1)}% of the calibration's elements sit in the ` +
          `sinks (${o.sinkTokens}) and recent window (${o.recentWindow}) at ${o.windowFormat}` +
          (share > 0.5
            ? "; calibrate on longer sequences, or plan with fewer sinks or a shorter window"
            : ""),
        e.minimum,
        { cause: e },
      );
    }
    oracleK = a.keyFormat;
    oracleV = a.valueFormat;
  }

  // 2. Tiers by count matching on the observed score, per head (or per layer).
  const groups = new Map<number, number[]>();
  items.forEach((it, i) => {
    const key = o.perHead ? it.layer * nKvHeads + it.head : it.layer;
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key)!.push(i);
  });
  const layers: PrecisionPlan["layers"] = [];
  for (let l = 0; l < nLayers; l++) {
    const heads: { tiers: PrecisionTier[] }[] = [];
    for (let h = 0; h < nKvHeads; h++) {
      const members = groups.get(o.perHead ? l * nKvHeads + h : l) ?? [];
      heads.push({
        tiers: _fitTiers(members, items, oracleK, oracleV, kF, vF, keyBits, valueBits, o, problem),
      });
    }
    layers.push({ heads });
  }
  const plan: PrecisionPlan = {
    version: 1,
    sinkTokens: o.sinkTokens,
    recentWindow: o.recentWindow,
    windowFormat: o.windowFormat,
    ...(o.stagingFormat === undefined || o.stagingFormat === o.windowFormat
      ? {}
      : { stagingFormat: o.stagingFormat }),
    ...(o.ropeBase === undefined ? {} : { ropeBase: o.ropeBase }),
    layers,
    meta: {
      mode: o.mode,
      epsilon: o.mode === "rule" ? o.epsilon : undefined,
      bitsPerElement: o.mode === "budget" ? o.bitsPerElement : undefined,
      recency: o.recency,
      sensitivity: o.sensitivity,
      calibrationSequences: analysis.sequences.length,
    },
  };

  // 3. The plan on the calibration data, through tierFor: the report describes the tiers returned.
  // Count matching gives each tier the oracle's number of positions, budget-mode ties going to the
  // cheaper tier, so in budget mode the plan spends at most the oracle's bits, within the budget.
  const planK = new Int16Array(items.length), planV = new Int16Array(items.length);
  let shortfalls = 0;
  for (let i = 0; i < items.length; i++) {
    const tier = tierFor(plan, items[i].layer, items[i].head, items[i].score);
    planK[i] = kF.findIndex((f) => f.name === tier.keyFormat);
    planV[i] = vF.findIndex((f) => f.name === tier.valueFormat);
    const { layer: l, head: h } = items[i];
    const meets = (k: number, v: number) =>
      precisionK(l, h)[k] >= requiredK[i] && precisionV(l, h)[v] >= requiredV[i];
    if (o.mode === "rule" && !meets(planK[i], planV[i]) && meets(oracleK[i], oracleV[i])) {
      shortfalls++;
    }
  }

  const corr = _correlations(items, analysis);
  const report: PlanReport = {
    oracle: figures(oracleK, oracleV),
    plan: figures(planK, planV),
    decidedPositions: items.length,
    scoreVsCurvature: corr.curvature,
    scoreVsSensitivity: corr.sensitivity,
    perHead: corr.perHead,
    ruleShortfalls: o.mode === "rule" ? shortfalls : undefined,
    oracleAssignment: _assignment(analysis, items, oracleK, oracleV, o),
    planAssignment: _assignment(analysis, items, planK, planV, o),
  };
  return { plan, report };
}

/**
 * The tier a token gets when it leaves the window: the first whose minScore ≤ score.
 *
 * @param plan the plan
 * @param layer layer index
 * @param head KV head index
 * @param score the attention the token gathered while in the window
 * @returns the tier
 * @throws ShapeError for a layer or head outside the plan; InvalidValueError for a NaN score or a
 *   layer, head or score that is not a number
 */
export function tierFor(
  plan: PrecisionPlan,
  layer: number,
  head: number,
  score: number,
): PrecisionTier {
  // a string "0.5" compared by coercion, and undefined fell through to the cheapest tier
  for (const [name, x] of [["layer", layer], ["head", head], ["score", score]] as const) {
    if (typeof x !== "number") {
      throw new InvalidValueError(`${name} is ${showValue(x)}, expected a number`);
    }
  }
  const heads = plan.layers[layer]?.heads;
  const tiers = heads?.[head]?.tiers;
  if (!tiers) throw new ShapeError(`plan has no layer ${layer} head ${head}`);
  if (tiers.length === 0) throw new ShapeError(`plan's layer ${layer} head ${head} has no tiers`);
  // NaN is below no minScore and would fall through to the cheapest tier.
  if (Number.isNaN(score)) {
    throw new InvalidValueError(`score is NaN for layer ${layer} head ${head}, expected a number`);
  }
  for (const tier of tiers) if (tier.minScore <= score) return tier;
  return tiers[tiers.length - 1];
}

/** The fields of {@linkcode PlanOptions}. */
const _PLAN_OPTIONS: Record<keyof PlanOptions, true> = {
  mode: true,
  epsilon: true,
  c: true,
  bitsPerElement: true,
  keyFormats: true,
  valueFormats: true,
  sinkTokens: true,
  recentWindow: true,
  windowFormat: true,
  stagingFormat: true,
  recency: true,
  ropeBase: true,
  sensitivity: true,
  aggregate: true,
  perHead: true,
  errorModel: true,
};

/** The fields of a {@linkcode PrecisionPlan}. */
const _PLAN_FIELDS = [
  "version",
  "sinkTokens",
  "recentWindow",
  "windowFormat",
  "stagingFormat",
  "ropeBase",
  "layers",
  "meta",
];

/**
 * Checks parsed JSON against the PrecisionPlan shape: version 1, non-negative integers for sinks
 * and window, a window format, layers of as many heads each (no holes in any array), and per head
 * a non-empty tier list of finite minScores sorted descending and ending at 0, with format names
 * accepted by `isFormat`; no field a plan does not have (`meta` holds anything else).
 *
 * @param value parsed JSON
 * @param isFormat accepts known format names (default: any non-empty string)
 * @returns the value, typed
 * @throws CorruptDataError naming the first offending, missing or unknown field; FormatError for a
 *   format `isFormat` refuses
 */
export function validatePrecisionPlan(
  value: unknown,
  isFormat: (name: string) => boolean = (n) => n.length > 0,
): PrecisionPlan {
  const p = value as PrecisionPlan;
  const bad = (what: string) => new CorruptDataError(`precision plan: ${what}`);
  // A misspelt field (ropebase) was ignored: the cache then stored keys after RoPE, without a word.
  const onlyFields = (o: object, fields: readonly string[], where: string) => {
    const unknown = Object.keys(o).find((k) => !fields.includes(k));
    if (unknown !== undefined) {
      throw bad(
        `${where}has unknown field ${JSON.stringify(unknown)}; its fields are ${fields.join(", ")}`,
      );
    }
  };
  if (typeof p !== "object" || p === null || Array.isArray(p)) {
    throw bad(`${showValue(p)}, expected an object (a plan read from JSON: parse it first)`);
  }
  // the version first: a later version's fields are unknown to this one
  if (p.version !== 1) throw bad(`version is ${showValue(p.version)}, expected 1`);
  onlyFields(p, _PLAN_FIELDS, "");
  for (const key of ["sinkTokens", "recentWindow"] as const) {
    if (!Number.isInteger(p[key]) || p[key] < 0) {
      throw bad(`${key} is ${showValue(p[key])}, expected an integer ≥ 0`);
    }
  }
  try {
    checkWindowFormat(p.windowFormat);
    if (p.stagingFormat !== undefined) checkWindowFormat(p.stagingFormat, "stagingFormat");
  } catch (e) {
    // the reason (unknown, or grouped along tokens) was dropped; it names the field
    if (!(e instanceof FormatError)) throw e;
    throw bad(e.message);
  }
  if (p.ropeBase !== undefined && !isRopeBase(p.ropeBase)) {
    throw bad(`ropeBase is ${showValue(p.ropeBase)}, expected a finite number ≥ ${MIN_ROPE_BASE}`);
  }
  if (!Array.isArray(p.layers) || p.layers.length === 0) throw bad("no layers");
  // Indexed loops, not forEach: forEach skips the holes of a sparse array ([, layer]), and a hole
  // passed every check. Every layer holds the model's KV heads, so all hold as many.
  for (let l = 0; l < p.layers.length; l++) {
    const layer = p.layers[l];
    if (!Array.isArray(layer?.heads) || layer.heads.length === 0) {
      throw bad(`layer ${l} has no heads`);
    }
    onlyFields(layer, ["heads"], `layer ${l} `);
    if (layer.heads.length !== p.layers[0].heads.length) {
      throw bad(
        `layer ${l} has ${layer.heads.length} heads, layer 0 has ${p.layers[0].heads.length}`,
      );
    }
    for (let h = 0; h < layer.heads.length; h++) {
      const tiers = layer.heads[h]?.tiers;
      if (!Array.isArray(tiers) || tiers.length === 0) {
        throw bad(`layer ${l} head ${h} has no tiers`);
      }
      onlyFields(layer.heads[h], ["tiers"], `layer ${l} head ${h} `);
      let last = Infinity;
      for (let i = 0; i < tiers.length; i++) {
        const tier = tiers[i], at = `layer ${l} head ${h} tier ${i}`;
        if (typeof tier !== "object" || tier === null) {
          throw bad(`${at} is ${showValue(tier)}, expected an object`);
        }
        onlyFields(tier, ["minScore", "keyFormat", "valueFormat"], `${at} `);
        // A string minScore would pass the comparisons below by coercion; an Infinity would pass
        // them and then be refused by the cache policy.
        const m = tier.minScore;
        if (typeof m !== "number" || !(m >= 0) || m === Infinity) {
          throw bad(`${at} minScore is ${showValue(m)}, expected a finite number ≥ 0`);
        }
        if (!(m <= last)) {
          const above = `tier ${i - 1}'s ${last}`;
          throw bad(
            `${at} minScore ${m} is above ${above}: a head's tiers go by minScore, highest first`,
          );
        }
        last = tier.minScore;
        for (const key of ["keyFormat", "valueFormat"] as const) {
          const name = tier[key];
          if (name === undefined) throw bad(`${at} has no ${key}`);
          if (typeof name !== "string" || !isFormat(name)) {
            throw new FormatError(`${at}: ${key} ${showValue(name)} is not a known format`);
          }
        }
      }
      if (last !== 0) throw bad(`layer ${l} head ${h}: last tier minScore ${last}, expected 0`);
    }
  }
  return p;
}

/**
 * Spearman rank correlation of two equally long samples (average ranks for ties).
 *
 * @param x first sample
 * @param y second sample
 * @returns ρ in [−1, 1] (0 when either sample is constant or has < 2 points)
 */
export function spearman(x: ArrayLike<number>, y: ArrayLike<number>): number {
  const n = x.length;
  if (n !== y.length) throw new ShapeError(`samples of ${n} and ${y.length} points`);
  if (n < 2) return 0;
  const rx = _ranks(x), ry = _ranks(y);
  let mx = 0, my = 0;
  for (let i = 0; i < n; i++) mx += rx[i], my += ry[i];
  mx /= n, my /= n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    const a = rx[i] - mx, b = ry[i] - my;
    sxy += a * b, sxx += a * a, syy += b * b;
  }
  return sxx === 0 || syy === 0 ? 0 : sxy / Math.sqrt(sxx * syy);
}

function _ranks(x: ArrayLike<number>): Float64Array {
  const idx = Array.from({ length: x.length }, (_, i) => i).sort((a, b) => x[a] - x[b]);
  const r = new Float64Array(x.length);
  for (let i = 0; i < idx.length;) {
    let j = i;
    while (j + 1 < idx.length && x[idx[j + 1]] === x[idx[i]]) j++;
    for (let k = i; k <= j; k++) r[idx[k]] = (i + j) / 2;
    i = j + 1;
  }
  return r;
}

/**
 * The sensitivity and aggregate options of a plan or a check, defaults filled in ("curvature",
 * "max"). Anything but the named values would silently act as one of them, so it is refused.
 *
 * @param options the options
 * @returns the two settings
 * @throws InvalidValueError for a value that is not one of the named ones
 */
export function resolveSensitivity(
  options: { sensitivity?: string; aggregate?: string },
): { sensitivity: "curvature" | "attention"; aggregate: "max" | "mean" } {
  const sensitivity = options.sensitivity ?? "curvature";
  if (sensitivity !== "curvature" && sensitivity !== "attention") {
    throw new InvalidValueError(
      `sensitivity is ${sensitivity}, expected "curvature" or "attention"`,
    );
  }
  const aggregate = options.aggregate ?? "max";
  if (aggregate !== "max" && aggregate !== "mean") {
    throw new InvalidValueError(`aggregate is ${aggregate}, expected "max" or "mean"`);
  }
  return { sensitivity, aggregate };
}

type _Resolved =
  & Required<
    Omit<PlanOptions, "epsilon" | "bitsPerElement" | "c" | "ropeBase" | "stagingFormat">
  >
  & {
    ropeBase: number | undefined;
    stagingFormat: string | undefined;
    epsilon: number;
    bitsPerElement: number;
    c: number;
    diameter: number[][];
  };

/**
 * Every head's scores of the window: a head without them once planned every position as score 0
 * (the cheapest tier), and an infinite score made a tier no policy accepts.
 */
function _checkWindowScores(analysis: Analysis, window: number): void {
  analysis.sequences.forEach((seq, si) =>
    seq.heads.forEach((row, l) =>
      row.forEach((c, h) => {
        const at = `analysis sequence ${si} layer ${l} KV head ${h}`;
        const scores = c.windowScores?.[String(window)];
        if (scores === undefined || !(scores.length >= c.length)) {
          throw new ShapeError(
            `${at}: window ${window} has ${scores?.length ?? "no"} scores, expected ${c.length}`,
          );
        }
        for (let t = 0; t < c.length; t++) {
          if (!(scores[t] >= 0 && scores[t] < Infinity)) {
            throw new InvalidValueError(
              `${at}: window ${window} score of position ${t} is ${scores[t]}, expected a ` +
                `finite number ≥ 0`,
            );
          }
        }
      })
    )
  );
}

/**
 * Checks that an analysis holds what its shape names: an object with a shape, windows of positive
 * integers, at least one sequence, every sequence every (layer, KV head) with a positive length and
 * group and finite key and value ranges lo ≤ hi, and measured format errors (if any) a finite
 * number ≥ 0 for each of them. What reads it indexes them all: a missing one was a TypeError, an
 * empty list NaN summaries, and a truncated error table mixed measured and estimated errors.
 *
 * @param analysis what was given as an analysis
 * @throws {InvalidValueError} for something that is not an analysis, or a measured error that is
 *   not a finite number ≥ 0; {@linkcode ShapeError} for no sequences, or a sequence or error table
 *   that does not cover the shape
 */
export function checkAnalysis(analysis: Analysis): void {
  if (
    typeof analysis !== "object" || analysis === null || typeof analysis.shape !== "object" ||
    analysis.shape === null || !Array.isArray(analysis.sequences)
  ) {
    throw new InvalidValueError(
      `analysis is ${showValue(analysis)}, expected an Analysis (from calibrate)`,
    );
  }
  const { nLayers, nKvHeads } = analysis.shape;
  if (analysis.sequences.length === 0) {
    throw new ShapeError("the analysis holds no calibration sequences");
  }
  const covers = (rows: unknown) =>
    Array.isArray(rows) && rows.length === nLayers &&
    rows.every((l) => Array.isArray(l) && l.length === nKvHeads);
  if (
    !Array.isArray(analysis.windows) || !analysis.windows.every((w) => Number.isInteger(w) && w > 0)
  ) {
    // a string "8" passed windows.includes(8)
    throw new InvalidValueError(
      `analysis windows is ${showValue(analysis.windows)}, expected an array of positive integers`,
    );
  }
  analysis.sequences.forEach((seq, i) => {
    if (!covers(seq?.heads)) {
      throw new ShapeError(
        `analysis sequence ${i} does not hold ${nLayers} layers of ${nKvHeads} KV heads, as ` +
          `its shape says`,
      );
    }
    seq.heads.forEach((row, l) =>
      row.forEach((c, h) => {
        const at = `analysis sequence ${i} layer ${l} KV head ${h}`;
        if (
          !Number.isInteger(c?.length) || c.length < 1 || !Number.isInteger(c.group) || c.group < 1
        ) {
          throw new ShapeError(
            `${at}: length ${showValue(c?.length)} and group ${showValue(c?.group)}, expected ` +
              `positive integers`,
          );
        }
        for (const key of ["keyRange", "valueRange"] as const) {
          const r = c[key] as unknown;
          // a NaN range was a TypeError in the rule's diameter, an inverted one a wrong D
          if (!Array.isArray(r) || r.length !== 2 || !(r[0] <= r[1]) || !r.every(Number.isFinite)) {
            throw new InvalidValueError(
              `${at}: ${key} is ${showValue(r)}, expected [lo, hi] with finite lo ≤ hi`,
            );
          }
        }
      })
    );
  });
  for (const [name, errors] of Object.entries(analysis.formatErrors ?? {})) {
    if (typeof errors !== "object" || errors === null) {
      throw new InvalidValueError(
        `analysis formatErrors["${name}"] is ${showValue(errors)}, expected an object of tables`,
      );
    }
    for (const [field, rows] of Object.entries(errors)) {
      if (rows === undefined) continue; // an optional table left out
      const at = `analysis formatErrors["${name}"].${field}`;
      if (!covers(rows)) {
        throw new ShapeError(`${at} does not cover ${nLayers} layers of ${nKvHeads} KV heads`);
      }
      (rows as number[][]).forEach((row, l) =>
        row.forEach((x, h) => {
          if (typeof x !== "number" || !(x >= 0 && x < Infinity)) {
            throw new InvalidValueError(
              `${at}[${l}][${h}] is ${showValue(x)}, expected a finite number ≥ 0`,
            );
          }
        })
      );
    }
  }
}

function _resolve(analysis: Analysis, options: PlanOptions): _Resolved {
  checkAnalysis(analysis);
  // a misspelt windowformat or ropebase was dropped, and the plan made without it
  checkOptionFields(options, _PLAN_OPTIONS, "plan options");
  const { nLayers, nKvHeads } = analysis.shape;
  for (const key of ["keyFormats", "valueFormats"] as const) {
    const list = options[key] as unknown;
    if (!Array.isArray(list)) {
      throw new FormatError(`${key} is ${showValue(list)}, expected an array of FormatSpecs`);
    }
    list.forEach((f, i) => {
      // names in place of specs read every field as undefined ("unknown format undefined")
      if (typeof f !== "object" || f === null) {
        throw new FormatError(
          `${key}[${i}] is ${showValue(f)}, expected a FormatSpec (getFormat(name))`,
        );
      }
    });
  }
  if (options.keyFormats.length === 0 || options.valueFormats.length === 0) {
    throw new FormatError("no candidate key or value formats");
  }
  // a format the cache cannot store at this head_dim was planned for, then refused by the cache
  const { headDim } = analysis.shape;
  for (const key of ["keyFormats", "valueFormats"] as const) {
    options[key].forEach((f, i) => checkStorableFormat(f?.name, headDim, `${key}[${i}]`));
  }
  const recentWindow = options.recentWindow ?? 32;
  const sinkTokens = options.sinkTokens ?? 4;
  // A negative or NaN window passed the scores check and read past every array (NaN weights).
  for (const [key, x] of [["recentWindow", recentWindow], ["sinkTokens", sinkTokens]] as const) {
    if (!Number.isInteger(x) || x < 0) {
      throw new ShapeError(`${key} is ${x}, expected an integer ≥ 0`);
    }
  }
  if (recentWindow > 0 && !analysis.windows.includes(recentWindow)) {
    throw new ShapeError(
      `window ${recentWindow} has no scores; analysis windows: ${analysis.windows}`,
    );
  }
  if (recentWindow > 0) _checkWindowScores(analysis, recentWindow);
  const windowFormat = options.windowFormat ?? "fp16";
  if (typeof windowFormat !== "string") {
    throw new FormatError(`windowFormat is ${windowFormat}, expected a format name`);
  }
  checkWindowFormat(windowFormat);
  checkStorableFormat(windowFormat, headDim, "windowFormat");
  const stagingFormat = options.stagingFormat;
  if (stagingFormat !== undefined) {
    if (typeof stagingFormat !== "string") {
      throw new FormatError(`stagingFormat is ${stagingFormat}, expected a format name`);
    }
    checkWindowFormat(stagingFormat, "stagingFormat");
    checkStorableFormat(stagingFormat, headDim, "stagingFormat");
  }
  const ropeBase = options.ropeBase;
  if (ropeBase !== undefined && !isRopeBase(ropeBase)) {
    throw new InvalidValueError(
      `ropeBase is ${ropeBase}, expected a finite number ≥ ${MIN_ROPE_BASE}`,
    );
  }
  const { sensitivity, aggregate } = resolveSensitivity(options);
  // a string "false" was truthy
  for (const key of ["recency", "perHead"] as const) {
    const x = options[key];
    if (x !== undefined && typeof x !== "boolean") {
      throw new InvalidValueError(`${key} is ${showValue(x)}, expected true or false`);
    }
  }
  if (options.mode === "rule") {
    const e = options.epsilon;
    if (e === undefined || !(e > 0) || !Number.isFinite(e)) {
      throw new InvalidValueError(
        `target error ε is ${showValue(e)}, expected a finite number > 0`,
      );
    }
    const c = options.c ?? 4;
    if (!(c > 0) || !Number.isFinite(c)) {
      throw new InvalidValueError(`constant c is ${showValue(c)}, expected a finite number > 0`);
    }
  } else if (options.mode === "budget") {
    const b = options.bitsPerElement;
    if (b === undefined || !(b > 0) || !Number.isFinite(b)) {
      throw new InvalidValueError(
        `budget is ${showValue(b)} bits per element, expected a finite number > 0`,
      );
    }
  } else {
    throw new InvalidValueError(
      `mode ${(options as PlanOptions).mode}, expected "rule" or "budget"`,
    );
  }
  // a setting of the other mode had been ignored without a word
  const foreign = options.mode === "rule" ? ["bitsPerElement"] : ["epsilon", "c"];
  const stray = foreign.find((k) =>
    (options as unknown as Record<string, unknown>)[k] !== undefined
  );
  if (stray !== undefined) {
    throw new InvalidValueError(
      `${stray} is set, but mode "${options.mode}" does not use it (` +
        (options.mode === "rule" ? "bitsPerElement is the budget's" : `${stray} is the rule's`) +
        ")",
    );
  }
  // Per-head ranges over every calibration sequence.
  const ranges = Array.from(
    { length: nLayers },
    (_, l) =>
      Array.from(
        { length: nKvHeads },
        (_, h) => ({
          key: _diameter(analysis, l, h, "key"),
          value: _diameter(analysis, l, h, "value"),
        }),
      ),
  );
  // Default error model: the codecs' measured mean bound where calibrated, else range·2^−p/2.
  const measured = analysis.formatErrors;
  const frame = (kind: "key" | "value", f: MapperFormat) =>
    kind === "key" && ropeBase !== undefined && getFormat(f.name).axis === "channel" &&
      measured?.[f.name]?.preRopeKey
      ? "preRopeKey"
      : kind;
  const errorModel: ErrorModel = options.errorModel ??
    ((l, h, kind, f) =>
      measured?.[f.name]?.[frame(kind, f)]?.[l]?.[h] ??
        ranges[l][h][kind] * 2 ** -precisionBits(f) / 2);
  return {
    mode: options.mode,
    epsilon: options.epsilon ?? 0,
    c: options.c ?? 4,
    bitsPerElement: options.bitsPerElement ?? 0,
    keyFormats: options.keyFormats,
    valueFormats: options.valueFormats,
    sinkTokens,
    recentWindow,
    windowFormat,
    stagingFormat,
    recency: options.recency ?? true,
    sensitivity,
    aggregate,
    perHead: options.perHead ?? true,
    ropeBase,
    errorModel,
    diameter: ranges.map((row, l) => row.map((_, h) => ruleDiameter(analysis, l, h))),
  };
}

/**
 * The precision p the rule credits a format with on one (layer, KV head)'s keys or values. Where
 * the calibration measured the format there (analysis.formatErrors keyMax / valueMax; keys stored
 * before RoPE, with ropeBase and a channel-axis format, preRopeKeyMax, and δ √2 times it since the
 * key turns forward after decoding), p = log2(D / 2δ), δ the largest per-element error bound the
 * format had on any element of that head's calibration data (its channel groups aligned from
 * position 0 and from the calibration's sinks) and D the head's {@linkcode ruleDiameter}: the
 * precision of a format erring by δ over the whole range D. Group scales follow the data, so an int8 group spanning a tenth of D errs ten times less
 * than precisionBits' worst case over D assumes; the rule then picks the cheapest format that
 * meets it on this head. Elsewhere (a format not measured, an analysis saved before the largest
 * bounds were) precisionBits(f). A bound over the calibration's elements, not over every input.
 *
 * @param analysis the calibration
 * @param layer layer index
 * @param head KV head index
 * @param kind keys or values
 * @param format the format
 * @param ropeBase the plan's RoPE base, when channel-axis keys are stored before RoPE
 * @returns bits of precision (Infinity for a format that measured no error)
 * @throws {InvalidValueError} for a measured bound that is not a finite number ≥ 0 (a NaN saved
 *   to JSON comes back null, which read as 0 had credited infinite precision)
 */
export function rulePrecision(
  analysis: Analysis,
  layer: number,
  head: number,
  kind: "key" | "value",
  format: MapperFormat,
  ropeBase?: number,
): number {
  const errors = analysis.formatErrors?.[format.name];
  if (errors === undefined) return precisionBits(format);
  // keys stored before RoPE err as measured there, or get the worst case
  const beforeRope = kind === "key" && ropeBase !== undefined &&
    getFormat(format.name).axis === "channel";
  const field = beforeRope ? "preRopeKeyMax" : kind === "key" ? "keyMax" : "valueMax";
  const row = errors[field];
  if (row === undefined) return precisionBits(format);
  const max = row[layer]?.[head];
  if (typeof max !== "number" || !(max >= 0 && max < Infinity)) {
    throw new InvalidValueError(
      `analysis formatErrors["${format.name}"].${field}[${layer}][${head}] is ${
        showValue(max)
      }, expected a finite number ≥ 0`,
    );
  }
  // a key stored before RoPE is turned forward after decoding: an element of the turned key mixes
  // two errors of its pair, |cos|·e_a + |sin|·e_b ≤ √2·δ (the verifier's turned bound)
  return Math.log2(ruleDiameter(analysis, layer, head) / (2 * (beforeRope ? Math.SQRT2 : 1) * max));
}

/**
 * The diameter D of the precision rule p ≥ log2(c·κ·D²/ε) for one (layer, KV head): the one
 * {@linkcode buildPrecisionPlan} and checkAssignment (verifier.ts) both use. D bounds the range of
 * the quantity a format quantizes, and keys and values are quantized separately, each over its
 * own range: so D is the larger of the key and the value diameter, not the diameter of their union
 * (keys in [−5, −4] and values in [4, 5] give D = 5, not 10). Each range is widened to hold 0,
 * because float formats err relative to |x|, so D must bound max |x| as well as max − min.
 *
 * @param analysis the calibration (every sequence counts)
 * @param layer layer index
 * @param head KV head index
 * @returns D > 0 (Number.MIN_VALUE for all-zero keys and values)
 * @throws ShapeError when a sequence of the analysis lacks the layer or head
 *
 * @example
 * ```ts
 * import { ruleDiameter } from "./plan.ts";
 * import type { Analysis } from "./analyzer.ts";
 * const head = { keyRange: [-5, -4], valueRange: [4, 5] };
 * const analysis = { sequences: [{ heads: [[head]] }] } as unknown as Analysis;
 * if (ruleDiameter(analysis, 0, 0) !== 5) throw new Error("keys and values apart: D is 5");
 * ```
 */
export function ruleDiameter(analysis: Analysis, layer: number, head: number): number {
  return Math.max(
    _diameter(analysis, layer, head, "key"),
    _diameter(analysis, layer, head, "value"),
  );
}

/** Diameter of [min, max] ∪ {0} of one (layer, head)'s keys or values over every sequence. */
function _diameter(analysis: Analysis, layer: number, head: number, kind: "key" | "value") {
  let lo = Infinity, hi = -Infinity;
  analysis.sequences.forEach((s, i) => {
    const c = s.heads?.[layer]?.[head];
    if (!c) throw new ShapeError(`analysis sequence ${i} has no layer ${layer} head ${head}`);
    const [a, b] = kind === "key" ? c.keyRange : c.valueRange;
    lo = Math.min(lo, a), hi = Math.max(hi, b);
  });
  return Math.max(hi - lo, -lo, hi, Number.MIN_VALUE);
}

/** The error model's per-element error, which must be a finite number ≥ 0 (NaN spreads silently). */
function _errorOf(
  o: _Resolved,
  layer: number,
  head: number,
  kind: "key" | "value",
  f: MapperFormat,
): number {
  const e = o.errorModel(layer, head, kind, f);
  // a string "1" compared as a number
  if (typeof e !== "number" || !(e >= 0) || e === Infinity) {
    throw new InvalidValueError(
      `error model gives ${showValue(e)} for layer ${layer} head ${head} ${kind} ${f.name}, ` +
        "expected a finite number ≥ 0",
    );
  }
  return e;
}

function _recency(o: _Resolved, t: number, n: number): number {
  return o.recency ? 1 + Math.exp(-(n - t - 1) / (n / 4)) : 1;
}

function _queries(analysis: Analysis): number {
  let q = 0;
  for (const s of analysis.sequences) {
    for (const row of s.heads) for (const c of row) q += c.queryCount;
  }
  return q;
}

function _weights(c: HeadCalibration, t: number, o: _Resolved, d: number, q: number) {
  const r = _recency(o, t, c.length) * Math.sqrt(d) / q;
  if (o.sensitivity === "attention") {
    return { wK: r * c.attentionSum[t], wV: r * c.attentionSum[t] };
  }
  return { wK: r * c.keyGradSum[t], wV: r * c.attentionSum[t] };
}

function _items(analysis: Analysis, o: _Resolved): _Item[] {
  const { headDim: d } = analysis.shape;
  const q = _queries(analysis);
  const items: _Item[] = [];
  analysis.sequences.forEach((s, si) => {
    s.heads.forEach((row, l) =>
      row.forEach((c, h) => {
        const scores = o.recentWindow > 0 ? c.windowScores[String(o.recentWindow)] : undefined;
        for (let t = o.sinkTokens; t < c.length - o.recentWindow; t++) {
          const count = c.group * (c.length - t), r = _recency(o, t, c.length);
          const attention = o.aggregate === "max" ? c.attentionMax[t] : c.attentionSum[t] / count;
          const curvature = o.aggregate === "max" ? c.curvatureMax[t] : c.curvatureSum[t] / count;
          items.push({
            seq: si,
            layer: l,
            head: h,
            t,
            score: scores ? scores[t] : 0,
            kappa: (o.sensitivity === "attention" ? attention : curvature) * r,
            kappaV: attention * r,
            ..._weights(c, t, o, d, q),
          });
        }
      })
    );
  });
  return items;
}

function _fixedStorage(analysis: Analysis, o: _Resolved) {
  const { headDim: d } = analysis.shape;
  const q = _queries(analysis);
  const wf = checkWindowFormat(o.windowFormat);
  let elements = 0, error = 0;
  for (const s of analysis.sequences) {
    s.heads.forEach((row, l) =>
      row.forEach((c, h) => {
        const eK = _errorOf(o, l, h, "key", wf), eV = _errorOf(o, l, h, "value", wf);
        for (let t = 0; t < c.length; t++) {
          if (t >= o.sinkTokens && t < c.length - o.recentWindow) continue;
          elements += 2 * d;
          const w = _weights(c, t, o, d, q);
          error += w.wK * eK + w.wV * eV;
        }
      })
    );
  }
  return { bits: elements * wf.bitsPerElement, elements, error };
}

function _fitTiers(
  members: number[],
  items: _Item[],
  oK: Int16Array,
  oV: Int16Array,
  kF: readonly MapperFormat[],
  vF: readonly MapperFormat[],
  keyBits: Float64Array,
  valueBits: Float64Array,
  o: _Resolved,
  problem: BudgetProblem,
): PrecisionTier[] {
  const tier = (k: number, v: number, minScore: number): PrecisionTier => ({
    minScore,
    keyFormat: kF[k].name,
    valueFormat: vF[v].name,
  });
  if (members.length === 0) return [tier(_cheapest(keyBits), _cheapest(valueBits), 0)];
  if (o.recentWindow === 0) {
    // Nothing observable: one tier per head. Rule: the pair meeting every position's requirement
    // (the most demanding one). Budget: the most common oracle pair, bits rounded down so the
    // head spends no more than the oracle gave it.
    if (o.mode === "rule") {
      return [
        tier(_mostPrecise(members, oK, kF, keyBits), _mostPrecise(members, oV, vF, valueBits), 0),
      ];
    }
    let oracleBits = 0;
    for (const i of members) oracleBits += keyBits[oK[i]] + valueBits[oV[i]];
    let best: [number, number] = [_cheapest(keyBits), _cheapest(valueBits)];
    let bestErr = Infinity;
    for (let k = 0; k < kF.length; k++) {
      for (let v = 0; v < vF.length; v++) {
        if (members.length * (keyBits[k] + valueBits[v]) > oracleBits) continue;
        let err = 0;
        for (const i of members) {
          const r = problem.row[i];
          err += problem.keyWeight[i] * problem.keyError[r][k] +
            problem.valueWeight[i] * problem.valueError[r][v];
        }
        if (err < bestErr) bestErr = err, best = [k, v];
      }
    }
    return [tier(best[0], best[1], 0)];
  }
  // Count matching: order pairs by bits (then precision), positions by observed score.
  const pairCount = new Map<number, number>();
  const stride = vF.length;
  for (const i of members) {
    pairCount.set(oK[i] * stride + oV[i], (pairCount.get(oK[i] * stride + oV[i]) ?? 0) + 1);
  }
  const pairs = [...pairCount.keys()].sort((a, b) => {
    const ka = Math.floor(a / stride),
      va = a % stride,
      kb = Math.floor(b / stride),
      vb = b % stride;
    const bits = (keyBits[kb] + valueBits[vb]) - (keyBits[ka] + valueBits[va]);
    if (bits !== 0) return bits;
    return (precisionBits(kF[kb]) + precisionBits(vF[vb])) -
      (precisionBits(kF[ka]) + precisionBits(vF[va]));
  });
  const sorted = [...members].sort((a, b) => items[b].score - items[a].score);
  const tiers: PrecisionTier[] = [];
  let start = 0;
  for (let p = 0; p < pairs.length; p++) {
    const end = start + pairCount.get(pairs[p])!;
    const k = Math.floor(pairs[p] / stride), v = pairs[p] % stride;
    if (p === pairs.length - 1) {
      tiers.push(tier(k, v, 0));
      break;
    }
    const last = items[sorted[end - 1]].score, next = items[sorted[end]].score;
    // Between the tier's lowest score and the next one; on a tie, rule mode rounds the tie up to
    // this tier (precision first), budget mode leaves it to the next tier (bits first). For
    // adjacent doubles the midpoint rounds to one of them; were it `next`, the next position would
    // join this dearer tier, so the cut is then `last`.
    const mid = (last + next) / 2;
    let minScore = last > next
      ? (mid > next ? mid : last)
      : (o.mode === "rule" ? last : _above(last));
    if (tiers.length > 0) minScore = Math.min(minScore, tiers[tiers.length - 1].minScore);
    tiers.push(tier(k, v, Math.max(minScore, 0)));
    start = end;
  }
  return tiers;
}

/**
 * Of the formats the members were given, the most precise (then the cheapest): it meets every
 * member's requirement. It starts from a member's own format, since a candidate no member uses
 * (candidate 0, say fp16) would otherwise win whenever it is more precise.
 */
function _mostPrecise(
  members: number[],
  given: Int16Array,
  formats: readonly MapperFormat[],
  bits: Float64Array,
): number {
  let best = given[members[0]];
  for (const i of members) {
    const f = given[i];
    const dp = precisionBits(formats[f]) - precisionBits(formats[best]);
    if (dp > 0 || (dp === 0 && bits[f] < bits[best])) best = f;
  }
  return best;
}

function _above(x: number): number {
  return x + Math.max(Math.abs(x) * 2 ** -50, Number.MIN_VALUE);
}

function _cheapest(bits: Float64Array): number {
  let b = 0;
  for (let i = 1; i < bits.length; i++) if (bits[i] < bits[b]) b = i;
  return b;
}

function _correlations(items: _Item[], analysis: Analysis) {
  const { nLayers, nKvHeads } = analysis.shape;
  const perHead: PlanReport["perHead"] = [];
  let sc = 0, ss = 0, weight = 0;
  for (let l = 0; l < nLayers; l++) {
    for (let h = 0; h < nKvHeads; h++) {
      const mine = items.filter((it) => it.layer === l && it.head === h);
      const score = mine.map((it) => it.score);
      const c = spearman(score, mine.map((it) => it.kappa));
      const s = spearman(score, mine.map((it) => it.wK + it.wV));
      perHead.push({ layer: l, head: h, scoreVsCurvature: c, scoreVsSensitivity: s });
      sc += c * mine.length, ss += s * mine.length, weight += mine.length;
    }
  }
  return { curvature: weight ? sc / weight : 0, sensitivity: weight ? ss / weight : 0, perHead };
}

function _assignment(
  analysis: Analysis,
  items: _Item[],
  kf: Int16Array,
  vf: Int16Array,
  o: _Resolved,
): Assignment {
  const sequences = analysis.sequences.map((s) =>
    s.heads.map((row) =>
      row.map(() => ({
        key: new Int16Array(s.length).fill(-1),
        value: new Int16Array(s.length).fill(-1),
      }))
    )
  );
  items.forEach((it, i) => {
    const cell = sequences[it.seq][it.layer][it.head];
    cell.key[it.t] = kf[i];
    cell.value[it.t] = vf[i];
  });
  return {
    keyFormats: o.keyFormats.map((f) => f.name),
    valueFormats: o.valueFormats.map((f) => f.name),
    windowFormat: o.windowFormat,
    sequences,
    ...(o.ropeBase === undefined ? {} : { ropeBase: o.ropeBase }),
  };
}
