/**
 * Checks an assignment of formats against the precision rule, bounds the output error it can cause
 * and measures the error it does cause.
 *
 * - {@linkcode checkAssignment}: every position whose format gives less precision than the rule
 *   requires, with layer, head, position, required and given bits.
 * - {@linkcode verifyHeads}: quantizes every (layer, KV head) of a recorded sequence with the real
 *   codecs as the assignment says and as a cache stores it ({@linkcode storedHead}), and for every
 *   query head and query compares the rigorous bound of attention_bound.ts with the realized error
 *   (both in float64, the bound outward-rounded).
 * - {@linkcode composeLayerBounds}: the composition law Φ_{g∘f}(ε) ≤ Φ_g(Φ_f(ε)) + L_g·Φ_f(ε)
 *   unrolled over layers: E_l = Φ_l(E_{l−1}) + L_l·E_{l−1}.
 * - {@linkcode attentionOutputGains}: empirical gains from each layer's attention output to the
 *   logits (random sequence-wide perturbations injected through a cache wrapper), the L factors the
 *   model-level estimate uses; estimates, not bounds.
 * - {@linkcode composeModelBound}: the composition law with per-layer Lipschitz bounds computed
 *   from the weights at the observed activations (layer_lipschitz.ts) and the rigorous attention
 *   bounds per query head: a logits-error bound, rigorous to first order.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { composeLayerBounds } from "./verifier.ts";
 * // Local errors 0.1 and 0.2, Lipschitz constants 2 and 3: E1 = 0.1, E2 = 0.2 + 3·0.1.
 * const e = composeLayerBounds([0.1, 0.2], [2, 3]);
 * if (Math.abs(e[1] - 0.5) > 1e-12) throw new Error("composed");
 * ```
 * @module
 */

import type { Analysis } from "./analyzer.ts";
import { attentionErrorBound, attentionErrorFirstOrder } from "./attention_bound.ts";
import { attentionWeights } from "./attention_sensitivity.ts";
import { getFormat } from "../codecs/format.ts";
import {
  assertFinite,
  checkOptionFields,
  checkPerturbation,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "./errors.ts";
import { addUp, mulUp, sqrtUp } from "./interval.ts";
import { requiredBits } from "./mapper.ts";
import { Float32KVCache, type KVCache, type KVCacheShape } from "./model/kv_cache.ts";
import {
  type Assignment,
  checkStorableFormat,
  checkWindowFormat,
  resolveSensitivity,
  ruleDiameter,
  rulePrecision,
} from "./plan.ts";
import { quantizeHead } from "./quantize_head.ts";
import { checkRecorded, type RecordingKVCache } from "./recording_cache.ts";
import type { CalibrationModel } from "./analyzer.ts";
import type { ModelLipschitz, ResidualTrace } from "./layer_lipschitz.ts";
import { mulberry32 } from "./mulberry32.ts";
import { KeyRope } from "./cache/key_rope.ts";
import { isRopeBase, MIN_ROPE_BASE } from "./tensor.ts";

/** A position whose format is less precise than the rule requires. */
export interface RuleViolation {
  /** Calibration sequence. */
  sequence: number;
  /** Layer. */
  layer: number;
  /** KV head. */
  head: number;
  /** Position. */
  position: number;
  /** Bits the rule requires of the key (from its curvature, or attention). */
  requiredKeyBits: number;
  /** Bits the rule requires of the value (from its attention: ∂o/∂v_t = α_t·I). */
  requiredValueBits: number;
  /** Effective bits of the key format given. */
  keyBits: number;
  /** Effective bits of the value format given. */
  valueBits: number;
}

// the fields of CheckOptions
const _CHECK_OPTIONS: Record<keyof CheckOptions, true> = {
  epsilon: true,
  c: true,
  recency: true,
  sensitivity: true,
  aggregate: true,
};

/** Options of {@linkcode checkAssignment}: the rule as the planner applied it. */
export interface CheckOptions {
  /** Target error ε > 0. */
  epsilon: number;
  /** Rule constant (default 4). */
  c?: number;
  /** Recency factor on (default true). */
  recency?: boolean;
  /** "curvature" (default) or "attention". */
  sensitivity?: "curvature" | "attention";
  /** κ over queries: "max" (default) or "mean". */
  aggregate?: "max" | "mean";
}

/**
 * Every position of the calibration whose key or value format has less effective precision (the
 * planner's {@linkcode rulePrecision}: measured on the head where the calibration measured the
 * format) than p = log2(c·κ·D²/ε), D the planner's {@linkcode ruleDiameter} (sinks and window count at the
 * window format), κ of a key its curvature (or attention, with sensitivity "attention") and κ of a
 * value its attention α: the output is linear in the value, ∂o/∂v_t = α_t·I, so a value's error
 * reaches it whole however small the curvature (a position taking nearly all the attention has
 * v_t ≈ o and curvature near 0).
 *
 * @param analysis the calibration
 * @param assignment formats per position (e.g. a plan's report.planAssignment)
 * @param options the rule
 * @returns the violations, in sequence, layer, head, position order
 * @throws InvalidValueError for ε ≤ 0, an unknown sensitivity or aggregate, a recency that is not a
 *   boolean, or an analysis κ that is not a finite number ≥ 0; ShapeError when the
 *   analysis or the assignment lacks a cell, a cell's key or value does not cover the sequence, or
 *   a format index is not an integer in −1..formats − 1
 */
export function checkAssignment(
  analysis: Analysis,
  assignment: Assignment,
  options: CheckOptions,
): RuleViolation[] {
  checkOptionFields(options, _CHECK_OPTIONS, "checkAssignment options");
  const { nLayers, nKvHeads } = analysis.shape;
  const recency = options.recency ?? true;
  // a string "false" was truthy: the recency factor applied
  if (typeof recency !== "boolean") {
    throw new InvalidValueError(`recency is ${showValue(recency)}, expected true or false`);
  }
  const { sensitivity, aggregate } = resolveSensitivity(options);
  const mean = aggregate === "mean";
  // the analysis fields κ is read from
  const valueField = mean ? "attentionSum" : "attentionMax";
  const keyField = sensitivity === "attention"
    ? valueField
    : (mean ? "curvatureSum" : "curvatureMax");
  // each format's precision on each head's keys and values, as the planner credits it
  const credit = (l: number, h: number, kind: "key" | "value", name: string) =>
    rulePrecision(analysis, l, h, kind, getFormat(name), assignment.ropeBase);
  const precisions = (l: number, h: number, kind: "key" | "value") => {
    const window = credit(l, h, kind, assignment.windowFormat);
    // a token that passed through the staging format keeps no more precision than it has
    const staged = assignment.stagingFormat === undefined
      ? Infinity
      : credit(l, h, kind, assignment.stagingFormat);
    const pages = (kind === "key" ? assignment.keyFormats : assignment.valueFormats)
      .map((f) => credit(l, h, kind, f));
    return (i: number) => i === -1 ? window : Math.min(i === -2 ? window : pages[i], staged);
  };
  // The planner's D: with another one the check flagged the planner's own oracle.
  const diameter = Array.from(
    { length: nLayers },
    (_, l) => Array.from({ length: nKvHeads }, (_, h) => ruleDiameter(analysis, l, h)),
  );
  const credited = Array.from(
    { length: nLayers },
    (_, l) =>
      Array.from(
        { length: nKvHeads },
        (_, h) => ({ kBits: precisions(l, h, "key"), vBits: precisions(l, h, "value") }),
      ),
  );
  const out: RuleViolation[] = [];
  analysis.sequences.forEach((s, si) => {
    for (let l = 0; l < nLayers; l++) {
      for (let h = 0; h < nKvHeads; h++) {
        const c = s.heads[l][h];
        const { kBits, vBits } = credited[l][h];
        const cell = assignment.sequences[si]?.[l]?.[h];
        if (!cell) throw new ShapeError(`assignment lacks sequence ${si} layer ${l} head ${h}`);
        _checkCell(cell, c.length, assignment, `assignment sequence ${si} layer ${l} head ${h}`);
        for (let t = 0; t < c.length; t++) {
          const r = recency ? 1 + Math.exp(-(c.length - t - 1) / (c.length / 4)) : 1;
          const need = (field: typeof keyField) => {
            const kappa = r * (mean ? c[field][t] / (c.group * (c.length - t)) : c[field][t]);
            // named here: requiredBits would blame a κ the caller never gave (or one that
            // overflowed)
            if (!(kappa >= 0 && kappa < Infinity)) {
              throw new InvalidValueError(
                `analysis sequence ${si} layer ${l} head ${h}: ${field}[${t}] is ` +
                  `${c[field][t]}, κ ${kappa}; expected a finite number ≥ 0`,
                t,
              );
            }
            return requiredBits(kappa, {
              epsilon: options.epsilon,
              diameter: diameter[l][h],
              c: options.c,
            });
          };
          const needK = need(keyField), needV = need(valueField);
          const kb = kBits(cell.key[t]), vb = vBits(cell.value[t]);
          if (kb < needK || vb < needV) {
            out.push({
              sequence: si,
              layer: l,
              head: h,
              position: t,
              requiredKeyBits: needK,
              requiredValueBits: needV,
              keyBits: kb,
              valueBits: vb,
            });
          }
        }
      }
    }
  });
  return out;
}

/** Bound against realized error for one (layer, KV head) over every query of a sequence. */
export interface HeadVerification {
  /** Layer. */
  layer: number;
  /** KV head. */
  head: number;
  /** Queries checked (query heads × positions). */
  queries: number;
  /** Queries whose realized error exceeded the bound (must be 0). */
  exceeded: number;
  /** Largest rigorous bound. */
  maxBound: number;
  /** Largest realized error. */
  maxRealized: number;
  /** Mean rigorous bound. */
  meanBound: number;
  /** Mean realized error. */
  meanRealized: number;
  /** Mean first-order prediction with the codecs' element bounds. */
  meanFirstOrder: number;
  /** Smallest bound / realized over queries with a non-zero realized error. */
  minRatio: number;
  /** Per position j: max over the group's query heads of the bound (for composition). */
  boundPerQuery: Float64Array;
}

/**
 * Quantizes every (layer, KV head) of a recorded sequence with the real codecs as the assignment
 * says (per position a format index, −1 for the window format), stored as a cache stores them
 * ({@linkcode storedHead}: through the window format first, pools by (key, value) pair, keys before
 * RoPE with assignment.ropeBase), and for every query head and query position j compares the
 * rigorous bound over positions 0..j with the realized error. Every query sees the positions in
 * the formats the assignment gives them; core/cache/stored_assignment.ts reads the assignment a
 * cache ends with.
 *
 * @param cache a recording cache holding one sequence
 * @param assignment formats: `sequences[sequence]` is used
 * @param sequence which sequence of the assignment the cache holds
 * @returns one verification per (layer, KV head)
 * @throws ShapeError for a recording with no position, layers of different lengths or a position
 *   without its recorded query, or when the assignment does not match the cache (a missing cell,
 *   a key or value not covering the cached positions, a format index outside −1..formats − 1);
 *   InvalidValueError for a sequence that is not a number, or data too large for a finite bound;
 *   FormatError for a format no cache stores there
 */
export function verifyHeads(
  cache: RecordingKVCache,
  assignment: Assignment,
  sequence = 0,
): HeadVerification[] {
  const { nLayers, nHeads, nKvHeads, headDim: d } = cache.shape;
  const group = nHeads / nKvHeads;
  // a string "0" indexed the same sequence by coercion
  if (typeof sequence !== "number") {
    throw new InvalidValueError(`sequence is ${showValue(sequence)}, expected a sequence index`);
  }
  const n = cache.length(0);
  // no position: every mean would be 0/0
  if (n === 0) throw new ShapeError("the recording holds no position to verify");
  checkRecorded(cache, n);
  _checkAssignmentFields(assignment);
  if (!Array.isArray(assignment.sequences)) {
    throw new InvalidValueError(
      `assignment sequences is ${typeName(assignment.sequences)}, expected an array`,
    );
  }
  _checkFormats(assignment, d);
  const rope = _keyRope(assignment, n, d);
  const out: HeadVerification[] = [];
  for (let l = 0; l < nLayers; l++) {
    const queries = cache.queries(l);
    for (let h = 0; h < nKvHeads; h++) {
      const cell = assignment.sequences[sequence]?.[l]?.[h];
      if (!cell) {
        throw new ShapeError(
          `assignment of sequence ${sequence} does not cover layer ${l} head ${h}`,
        );
      }
      _checkCell(cell, n, assignment, `assignment sequence ${sequence} layer ${l} head ${h}`);
      const keys = cache.keys(l, h), values = cache.values(l, h);
      const { k, v } = _stored(keys, values, n, d, cell, assignment, rope);
      const res: HeadVerification = {
        layer: l,
        head: h,
        queries: 0,
        exceeded: 0,
        maxBound: 0,
        maxRealized: 0,
        meanBound: 0,
        meanRealized: 0,
        meanFirstOrder: 0,
        minRatio: Infinity,
        boundPerQuery: new Float64Array(n),
      };
      const w = new Float64Array(n), o1 = new Float64Array(d), o2 = new Float64Array(d);
      for (let j = 0; j < n; j++) {
        const m = j + 1;
        for (let g = 0; g < group; g++) {
          const q = queries.subarray(
            j * nHeads * d + (h * group + g) * d,
            j * nHeads * d + (h * group + g + 1) * d,
          );
          const bound = attentionErrorBound(q, keys, values, m, d, k.bound, v.bound);
          attentionWeights(q, keys, values, m, d, w, o1);
          attentionWeights(q, k.decoded, v.decoded, m, d, w, o2);
          let s = 0;
          for (let i = 0; i < d; i++) s += (o2[i] - o1[i]) ** 2;
          const realized = Math.sqrt(s);
          // keys and queries large enough (finite, near 1e10) overflow the float64 bound to NaN or
          // Infinity, and `realized > NaN` counted nothing as exceeded
          if (!(bound < Infinity && realized < Infinity)) {
            throw new InvalidValueError(
              `layer ${l} KV head ${h} query head ${h * group + g} position ${j}: the bound is ` +
                `${bound}, the realized error ${realized}; the keys, values and queries are too ` +
                "large for a finite float64 bound",
              j,
            );
          }
          res.queries++;
          if (realized > bound) res.exceeded++;
          res.maxBound = Math.max(res.maxBound, bound);
          res.maxRealized = Math.max(res.maxRealized, realized);
          res.meanBound += bound;
          res.meanRealized += realized;
          res.meanFirstOrder += attentionErrorFirstOrder(q, keys, values, m, d, k.bound, v.bound);
          if (realized > 0) res.minRatio = Math.min(res.minRatio, bound / realized);
          res.boundPerQuery[j] = Math.max(res.boundPerQuery[j], bound);
        }
      }
      res.meanBound /= res.queries;
      res.meanRealized /= res.queries;
      res.meanFirstOrder /= res.queries;
      out.push(res);
    }
  }
  return out;
}

/**
 * Throws ShapeError unless the cell's key and value indices cover n positions and each lies in
 * −1..formats − 1 (−2..formats − 1 with a staging format). An index past the formats looked up no
 * bits, so checkAssignment compared NaN and skipped the position; a short value cell was never
 * looked at.
 */
function _checkCell(
  cell: { key: Int16Array; value: Int16Array },
  n: number,
  assignment: Assignment,
  at: string,
): void {
  if (cell.key.length !== n || cell.value.length !== n) {
    throw new ShapeError(
      `${at}: key has ${cell.key.length} positions, value ${cell.value.length}, expected ${n}`,
    );
  }
  const axes = [
    ["key", cell.key, assignment.keyFormats.length],
    ["value", cell.value, assignment.valueFormats.length],
  ] as const;
  const lowest = assignment.stagingFormat === undefined ? -1 : -2;
  for (const [axis, index, formats] of axes) {
    for (let t = 0; t < n; t++) {
      if (!Number.isInteger(index[t]) || index[t] < lowest || index[t] >= formats) {
        throw new ShapeError(
          `${at} position ${t}: ${axis} format index ${index[t]}, expected ` +
            `${lowest}..${formats - 1} (-1: the window format` +
            `${lowest === -2 ? ", -2: the staging format" : ""})`,
        );
      }
    }
  }
}

/** Throws InvalidValueError for an assignment whose format lists are not arrays of names. */
function _checkAssignmentFields(assignment: Assignment): void {
  if (typeof assignment !== "object" || assignment === null) {
    throw new InvalidValueError(`assignment is ${typeName(assignment)}, expected an Assignment`);
  }
  for (const key of ["keyFormats", "valueFormats"] as const) {
    if (!Array.isArray(assignment[key])) {
      throw new InvalidValueError(
        `assignment ${key} is ${typeName(assignment[key])}, expected an array of format names`,
      );
    }
  }
  for (const key of ["windowFormat", "stagingFormat"] as const) {
    if (key === "stagingFormat" && assignment[key] === undefined) continue;
    if (typeof assignment[key] !== "string") {
      throw new InvalidValueError(
        `assignment ${key} is ${typeName(assignment[key])}, expected a format name`,
      );
    }
  }
}

/** Throws FormatError for an assignment format no cache stores (as the planner refuses it). */
function _checkFormats(assignment: Assignment, d: number): void {
  checkWindowFormat(assignment.windowFormat);
  checkStorableFormat(assignment.windowFormat, d, "assignment windowFormat");
  if (assignment.stagingFormat !== undefined) {
    checkWindowFormat(assignment.stagingFormat, "stagingFormat");
    checkStorableFormat(assignment.stagingFormat, d, "assignment stagingFormat");
  }
  for (const key of ["keyFormats", "valueFormats"] as const) {
    assignment[key].forEach((f, i) => checkStorableFormat(f, d, `assignment ${key}[${i}]`));
  }
}

/** The angles channel-axis keys turn by when the assignment stores them before RoPE. */
function _keyRope(assignment: Assignment, n: number, d: number): KeyRope | undefined {
  const base = assignment.ropeBase;
  if (base === undefined) return undefined;
  if (!isRopeBase(base)) {
    throw new InvalidValueError(
      `assignment ropeBase is ${showValue(base)}, expected a finite number ≥ ${MIN_ROPE_BASE}`,
    );
  }
  const groups = assignment.keyFormats.map(getFormat).filter((f) => f.axis === "channel")
    .map((f) => f.group);
  if (groups.length === 0) return undefined;
  if (d % 2 !== 0) throw new ShapeError(`keys stored before RoPE need an even head_dim, got ${d}`);
  return new KeyRope(d, n, Math.max(...groups), base);
}

/** f32 unit roundoff, and the absolute slack of an f32 operation that lands among subnormals. */
const _U32 = 2 ** -24, _TINY32 = 2 ** -147;

/**
 * One (layer, KV head) as a cache stores it under an assignment (core/cache/PAGES.md), the model
 * {@linkcode verifyHeads} checks:
 *
 * - every position goes through the window format first: sinks and ring hold it so, and an
 *   evicted token is decoded from the ring before its page encodes it (an int8 window's rounding
 *   stays in a paged token);
 * - paged positions then go through their pool's formats, the tokens of one (key, value) pair
 *   together in arrival order as a pool's pages hold them (a channel group spans those tokens);
 * - with assignment.ropeBase, channel-axis keys are turned back before RoPE, encoded, decoded and
 *   turned forward in f32 steps as the cache's KeyRope does: a group of consecutive positions as
 *   one group at its first position (as the cache's eviction turns it), otherwise each token by its
 *   own position.
 *
 * @param keys n × d keys as the cache receives them (after RoPE)
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @param cell format index per position (−1: the window format)
 * @param assignment the formats, window format and ropeBase
 * @returns decoded keys and values, and float64 bounds on |decoded − received| per element
 * @throws InvalidValueError naming an element a format cannot hold, or a ropeBase that is not a
 *   RoPE base; ShapeError for a cell not covering n positions, a format index outside
 *   −1..formats − 1, arrays shorter than n × d, or an odd d with keys stored before RoPE;
 *   FormatError for a format no cache stores there
 */
export function storedHead(
  keys: Float32Array,
  values: Float32Array,
  n: number,
  d: number,
  cell: { key: Int16Array; value: Int16Array },
  assignment: Assignment,
): { k: StoredElements; v: StoredElements } {
  if (!Number.isInteger(n) || n < 0) {
    throw new ShapeError(`positions n is ${showValue(n)}, expected an integer ≥ 0`);
  }
  if (!Number.isInteger(d) || d < 1) {
    throw new ShapeError(`head dimension d is ${showValue(d)}, expected an integer ≥ 1`);
  }
  _checkAssignmentFields(assignment);
  _checkFormats(assignment, d);
  if (!(cell?.key instanceof Int16Array && cell.value instanceof Int16Array)) {
    throw new InvalidValueError(`cell is ${typeName(cell)}, expected { key, value } Int16Arrays`);
  }
  _checkCell(cell, n, assignment, "cell");
  if (!(keys instanceof Float32Array) || !(values instanceof Float32Array)) {
    throw new InvalidValueError(
      `keys are ${typeName(keys)}, values ${typeName(values)}; expected Float32Arrays`,
    );
  }
  if (keys.length < n * d || values.length < n * d) {
    throw new ShapeError(
      `keys have ${keys.length} elements, values ${values.length}, expected ${n * d}`,
    );
  }
  return _stored(keys, values, n, d, cell, assignment, _keyRope(assignment, n, d));
}

/** Decoded elements and bounds on their error (float64), as {@linkcode storedHead} gives them. */
export interface StoredElements {
  /** n × d decoded elements, token-major. */
  decoded: Float32Array;
  /** n × d bounds on |decoded − received|. */
  bound: Float64Array;
}

function _stored(
  keys: Float32Array,
  values: Float32Array,
  n: number,
  d: number,
  cell: { key: Int16Array; value: Int16Array },
  assignment: Assignment,
  rope: KeyRope | undefined,
): { k: StoredElements; v: StoredElements } {
  const win = assignment.windowFormat;
  assertFinite(keys, "keys", 0, n * d);
  assertFinite(values, "values", 0, n * d);
  const k = _throughWindow(keys, n, d, win, "keys");
  const v = _throughWindow(values, n, d, win, "values");
  const staging = assignment.stagingFormat;
  if (staging !== undefined) {
    // every token past sinks and recent window waited in the staging format before its page
    const passed = (index: Int16Array) =>
      Array.from({ length: n }, (_, t) => t).filter((t) => index[t] !== -1);
    _throughStaging(k, passed(cell.key), d, staging, { x: keys, what: "keys" });
    _throughStaging(v, passed(cell.value), d, staging, { x: values, what: "values" });
  }
  const pools = new Map<string, number[]>();
  for (let t = 0; t < n; t++) {
    const ki = cell.key[t], vi = cell.value[t];
    if (ki < 0 && vi < 0) continue;
    const pair = `${ki}|${vi}`;
    if (!pools.has(pair)) pools.set(pair, []);
    pools.get(pair)!.push(t);
  }
  for (const [pair, positions] of pools) {
    const [ki, vi] = pair.split("|").map(Number);
    if (ki >= 0) {
      const f = assignment.keyFormats[ki];
      const turned = rope !== undefined && getFormat(f).axis === "channel";
      const turn = turned ? { rope, group: getFormat(f).group } : undefined;
      _page(k, positions, d, f, turn, { x: keys, what: "keys" });
    }
    if (vi >= 0) {
      _page(v, positions, d, assignment.valueFormats[vi], undefined, { x: values, what: "values" });
    }
  }
  return { k, v };
}

/**
 * Runs a round trip; an element it cannot encode is named by its index in the received keys or
 * values, not in the slice or the packed pool the codec saw (x[4] for position 12's element 4).
 */
function _encodable<T>(
  roundTrip: () => T,
  sourceIndex: (i: number) => number,
  x: Float32Array,
  d: number,
  what: string,
  place: string,
): T {
  try {
    return roundTrip();
  } catch (e) {
    if (!(e instanceof InvalidValueError && e.index !== undefined)) throw e;
    const i = sourceIndex(e.index), t = Math.floor(i / d);
    const why = e.message.replace(/^.*? cannot be encoded: /, "");
    throw new InvalidValueError(
      `${what}[${i}] = ${x[i]} (position ${t}, element ${i - t * d}) cannot be stored ${place}: ` +
        why,
      i,
    );
  }
}

/** Every token through the window format, one token at a time as the ring's slots hold them. */
function _throughWindow(
  x: Float32Array,
  n: number,
  d: number,
  format: string,
  what: string,
): StoredElements {
  const decoded = new Float32Array(n * d), bound = new Float64Array(n * d);
  for (let t = 0; t < n; t++) {
    const r = _encodable(
      () => quantizeHead(x.subarray(t * d, (t + 1) * d), 1, d, format),
      (i) => t * d + i,
      x,
      d,
      what,
      `in the window format ${format}`,
    );
    decoded.set(r.decoded, t * d);
    bound.set(r.bound, t * d);
  }
  return { decoded, bound };
}

/**
 * Re-encodes the window-decoded tokens at `positions` in the staging format, one token at a time
 * as the staging slots hold them, in place in s: the staging bounds add to the window's.
 */
function _throughStaging(
  s: StoredElements,
  positions: number[],
  d: number,
  format: string,
  source: { x: Float32Array; what: string },
): void {
  for (const t of positions) {
    const r = _encodable(
      () => quantizeHead(s.decoded.subarray(t * d, (t + 1) * d), 1, d, format),
      (i) => t * d + i,
      source.x,
      d,
      source.what,
      `in the staging format ${format}`,
    );
    s.decoded.set(r.decoded, t * d);
    for (let i = 0; i < d; i++) s.bound[t * d + i] += r.bound[i];
  }
}

/**
 * Encodes the window-decoded tokens at `positions` into a page format, in place in s: the decoded
 * values replace them and the page's bounds add to the window's. With `turn`, keys are turned
 * back before RoPE first and forward after; the bound adds the turn's own f32 rounding (measured
 * on the unquantized keys) and the quantization error carried through the turn.
 */
function _page(
  s: StoredElements,
  positions: number[],
  d: number,
  format: string,
  turn: { rope: KeyRope; group: number } | undefined,
  source: { x: Float32Array; what: string },
): void {
  const m = positions.length;
  const packed = new Float32Array(m * d);
  positions.forEach((t, i) => packed.set(s.decoded.subarray(t * d, (t + 1) * d), i * d));
  // what turns together: a group of consecutive positions from its first (offsets τ), as the
  // cache's eviction turns it; otherwise each token by its own position
  const units: { from: number; count: number; p0: number }[] = [];
  if (turn) {
    const G = turn.group;
    for (let from = 0; from < m; from += G) {
      const count = Math.min(G, m - from);
      if (positions[from + count - 1] - positions[from] === count - 1) {
        units.push({ from, count, p0: positions[from] });
      } else {
        for (let i = from; i < from + count; i++) {
          units.push({ from: i, count: 1, p0: positions[i] });
        }
      }
    }
    for (const u of units) {
      turn.rope.unrotate(
        packed.subarray(u.from * d, (u.from + u.count) * d),
        u.count,
        u.count,
        u.p0,
      );
    }
  }
  const r = _encodable(
    () => quantizeHead(packed, m, d, format),
    (i) => positions[Math.floor(i / d)] * d + i % d,
    source.x,
    d,
    source.what,
    `in the page format ${format}${turn ? " (turned back before RoPE)" : ""}`,
  );
  if (!turn) {
    positions.forEach((t, i) => {
      for (let c = 0; c < d; c++) {
        s.decoded[t * d + c] = r.decoded[i * d + c];
        s.bound[t * d + c] += r.bound[i * d + c];
      }
    });
    return;
  }
  const { rope } = turn;
  const exact = packed.slice(); // turned forward without quantization: the turn's own rounding
  for (const u of units) {
    for (const x of [exact, r.decoded]) {
      rope.rotate(
        x.subarray(u.from * d, (u.from + u.count) * d),
        u.count,
        u.count,
        Int32Array.of(u.p0),
      );
    }
  }
  for (const u of units) {
    for (let i = u.from; i < u.from + u.count; i++) {
      const t = positions[i];
      for (let c = 0; c < d; c += 2) {
        const { cos, sin } = rope.turnOf(u.p0, i - u.from, c / 2);
        const ca = Math.abs(cos), sa = Math.abs(sin);
        const a = Math.abs(packed[i * d + c]), b = Math.abs(packed[i * d + c + 1]);
        const ea = r.bound[i * d + c], eb = r.bound[i * d + c + 1];
        // |fl(fl(a·c) ∓ fl(b·s)) − (a·c ∓ b·s)| ≤ (2 + u)·u·(|a·c| + |b·s|), for the turn of the
        // quantized and of the exact key, |a'| ≤ |a| + ea
        const roundA = (2 + _U32) * _U32 * (ca * (2 * a + ea) + sa * (2 * b + eb)) + 3 * _TINY32;
        const roundB = (2 + _U32) * _U32 * (sa * (2 * a + ea) + ca * (2 * b + eb)) + 3 * _TINY32;
        const w = s.decoded, o = t * d + c;
        const eA = ca * ea + sa * eb + roundA + Math.abs(exact[i * d + c] - w[o]);
        const eB = sa * ea + ca * eb + roundB + Math.abs(exact[i * d + c + 1] - w[o + 1]);
        // the few float64 operations above round by ≪ 1e-12 of the sum
        s.bound[o] = (s.bound[o] + eA) * (1 + 1e-12);
        s.bound[o + 1] = (s.bound[o + 1] + eB) * (1 + 1e-12);
      }
    }
  }
  positions.forEach((t, i) => {
    s.decoded.set(r.decoded.subarray(i * d, (i + 1) * d), t * d);
  });
}

/**
 * The composition law unrolled over layers, rounded upwards: E_0 = inputError,
 * E_l = Φ_l(E_{l−1}) + L_l·E_{l−1}, where Φ_l is layer l's own error given its input error
 * (a constant when `local` holds numbers).
 *
 * @param local per layer: Φ_l as a number (its error at the exact input) or a function of E_{l−1}
 * @param lipschitz per layer: L_l ≥ 0
 * @param inputError error entering the first layer (default 0)
 * @returns E_l for every layer
 * @throws InvalidValueError for negative, non-finite or non-number constants or input error, or
 *   an E_l that overflows; ShapeError for unequal lengths
 */
export function composeLayerBounds(
  local: readonly (number | ((inputError: number) => number))[],
  lipschitz: readonly number[],
  inputError = 0,
): number[] {
  if (local.length !== lipschitz.length) {
    throw new ShapeError(
      `${local.length} local bounds but ${lipschitz.length} Lipschitz constants`,
    );
  }
  if (typeof inputError !== "number" || !(inputError >= 0) || inputError === Infinity) {
    throw new InvalidValueError(
      `input error is ${showValue(inputError)}, expected a finite number ≥ 0`,
    );
  }
  const out: number[] = [];
  let e = inputError;
  for (let l = 0; l < local.length; l++) {
    const L = lipschitz[l];
    const phiL = local[l];
    if (typeof phiL !== "number" && typeof phiL !== "function") {
      throw new InvalidValueError(
        `local[${l}] is ${showValue(phiL)}, expected a number or a function of the input error`,
        l,
      );
    }
    const phi = typeof phiL === "number" ? phiL : phiL(e);
    if (!(L >= 0) || !Number.isFinite(L) || !(phi >= 0) || !Number.isFinite(phi)) {
      throw new InvalidValueError(
        `layer ${l}: Φ = ${showValue(phi)}, L = ${showValue(L)}; expected finite numbers ≥ 0`,
        l,
      );
    }
    const prev = e;
    e = addUp(phi, mulUp(L, e));
    // finite constants near 1e308 overflowed the bound to Infinity, silently
    if (e === Infinity) {
      throw new InvalidValueError(
        `layer ${l}: E = Φ + L·E_prev = ${phi} + ${L}·${prev} overflows a double`,
        l,
      );
    }
    out.push(e);
  }
  return out;
}

/** A cache wrapper that adds a fixed perturbation to one layer's attention output. */
class _PerturbingCache implements KVCache {
  readonly shape: KVCacheShape;
  constructor(
    readonly inner: Float32KVCache,
    readonly layer: number,
    readonly delta: (pos: number, out: Float32Array) => void,
  ) {
    this.shape = inner.shape;
  }
  length(layer: number): number {
    return this.inner.length(layer);
  }
  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    this.inner.append(layer, pos, k, v);
  }
  attend(layer: number, q: Float32Array, out: Float32Array): void {
    this.inner.attend(layer, q, out);
    if (layer === this.layer) this.delta(this.inner.length(layer) - 1, out);
  }
  memory() {
    return this.inner.memory();
  }
  reset(): void {
    this.inner.reset();
  }
}

/** Options of {@linkcode attentionOutputGains}. */
export interface GainOptions {
  /** Size η of the per-position perturbation (default 1e-3). */
  size?: number;
  /** Random directions tried per layer; the largest gain is kept (default 3). */
  trials?: number;
  /** Seed of the directions (default 1). */
  seed?: number;
}

/**
 * Empirical gain G_l = max_j ‖Δlogits_j‖ / η when every position's attention output of layer l
 * (all query heads concatenated) moves by a random vector of norm η: the product L_head·Π L_m of
 * the composition law for an error entering at layer l, measured end to end through the model
 * (the KVCache interface does not expose the residual stream). An estimate, not a bound. η is
 * the norm the float32 outputs actually moved by, which rounding makes slightly off the size asked.
 *
 * @param model the model
 * @param shape cache shape (maxSeqLen ≥ tokens.length)
 * @param tokens the sequence
 * @param options perturbation size, trials and seed
 * @returns G_l per layer
 * @throws InvalidValueError for a size not finite and > 0 or trials not an integer ≥ 1 (gains of
 *   NaN or 0 otherwise), a size float32 rounding of the outputs loses (more than half of it), or
 *   perturbed logits that are not finite; ShapeError for no tokens
 */
export async function attentionOutputGains(
  model: CalibrationModel,
  shape: KVCacheShape,
  tokens: number[],
  options: GainOptions = {},
): Promise<number[]> {
  checkOptionFields(options, { size: true, trials: true, seed: true }, "gain options");
  const eta = options.size ?? 1e-3, trials = options.trials ?? 3;
  // a string size passed checkPerturbation's comparisons by coercion
  if (typeof eta !== "number") {
    throw new InvalidValueError(`size is ${showValue(eta)}, expected a finite number > 0`);
  }
  checkPerturbation(eta, trials);
  const seed = options.seed ?? 1;
  if (typeof seed !== "number") {
    throw new InvalidValueError(`seed is ${showValue(seed)}, expected a number`);
  }
  if (tokens.length === 0) throw new ShapeError("no tokens to perturb");
  const uniform = mulberry32(seed);
  const rand = () => uniform() - 0.5;
  const run = async (cache: KVCache) => {
    const logits: Float32Array[] = [];
    for (let p = 0; p < tokens.length; p++) {
      logits.push((await model.forward(tokens[p], p, cache)).slice());
    }
    return logits;
  };
  const exact = await run(new Float32KVCache(shape));
  const gains: number[] = [];
  for (let l = 0; l < shape.nLayers; l++) {
    let best = 0;
    for (let trial = 0; trial < trials; trial++) {
      const dim = shape.nHeads * shape.headDim;
      const dirs = Array.from({ length: tokens.length }, () => {
        const x = Float32Array.from({ length: dim }, rand);
        let s = 0;
        for (const v of x) s += v * v;
        return x.map((v) => (v * eta) / Math.sqrt(s));
      });
      // the perturbation as float32 rounding of the outputs let it through: max_j ‖δ_j‖
      let applied = 0;
      const cache = new _PerturbingCache(new Float32KVCache(shape), l, (pos, out) => {
        let s = 0;
        for (let i = 0; i < out.length; i++) {
          const before = out[i];
          out[i] += dirs[pos][i];
          s += (out[i] - before) ** 2;
        }
        applied = Math.max(applied, Math.sqrt(s));
      });
      const moved = await run(cache);
      // a size far below the outputs' float32 spacing (1e-30) moved nothing: every gain read 0
      if (!(applied >= eta / 2)) {
        throw new InvalidValueError(
          `size is ${eta}, but float32 rounding kept layer ${l}'s attention outputs within ` +
            `${applied} of the exact ones: too small to measure a gain`,
        );
      }
      let worst = 0;
      for (let p = 0; p < tokens.length; p++) {
        let s = 0;
        for (let i = 0; i < moved[p].length; i++) s += (moved[p][i] - exact[p][i]) ** 2;
        worst = Math.max(worst, Math.sqrt(s));
      }
      // against the perturbation applied, not the one asked for: rounding moved it a little
      const gain = worst / applied;
      if (!Number.isFinite(gain)) {
        throw new InvalidValueError(
          `size is ${eta}: layer ${l}'s perturbed logits moved by ${worst}, expected a finite ` +
            "number (is the size too large for the model?)",
        );
      }
      best = Math.max(best, gain);
    }
    gains.push(best);
  }
  return gains;
}

/** Per-element error bounds of the keys and values one (layer, KV head) holds, n × headDim. */
export interface HeadErrorBounds {
  /** |k̂ − k| bounds. */
  key: ArrayLike<number>;
  /** |v̂ − v| bounds. */
  value: ArrayLike<number>;
}

/** The composed bound of {@linkcode composeModelBound}. */
export interface ModelBound {
  /** Φ_l: residual-stream error caused by layer l's quantization alone (after its FFN). */
  local: number[];
  /** E_l: bound on the residual-stream error after layer l, max over positions. */
  residual: number[];
  /** Bound on max_j ‖Δlogits_j‖₂. */
  logits: number;
}

/**
 * The composition law with Lipschitz bounds from the weights (layer_lipschitz.ts): layer l's own
 * error is Φ_l = (1 + F_l)·‖W_o‖·max_j √(Σ_h b_{h,j}²), with b_{h,j} the rigorous bound of
 * attention_bound.ts for query head h at query j over the element bounds given; then
 * E_l = Φ_l + (1 + F_l)(1 + A_l)·E_{l−1} and the logits error is at most L_out·E_L.
 *
 * What is rigorous: b_{h,j} (for K, V within the element bounds at the trace's activations), and
 * the spectral-norm bounds. What is first order: the Lipschitz factors are Jacobian norms at the
 * unperturbed activations, and b_{h,j} is evaluated there too, so second-order terms in the error
 * (and the element bounds' dependence on perturbed keys) are not covered.
 *
 * @param trace activations of the exact run
 * @param lipschitz bounds from {@linkcode layerLipschitz} on the same trace
 * @param bounds element bounds per [layer][kvHead], positions 0..n−1 of the trace
 * @param shape heads, KV heads and head dimension
 * @returns Φ_l, E_l and the logits bound
 * @throws ShapeError when the bounds do not cover every layer, head and position, the shape does
 *   not match the trace, or the trace and the Lipschitz bounds hold different numbers of layers;
 *   InvalidValueError for a Lipschitz bound (output, or a layer's attention, feedForward, layer or
 *   outputNorm) that is not a finite number ≥ 0, or a Φ_l, E_l or logits bound that overflows
 */
export function composeModelBound(
  trace: ResidualTrace,
  lipschitz: ModelLipschitz,
  bounds: HeadErrorBounds[][],
  shape: Pick<KVCacheShape, "nHeads" | "nKvHeads" | "headDim">,
): ModelBound {
  const { nHeads, nKvHeads, headDim: d } = shape;
  const n = trace.length, group = nHeads / nKvHeads, dim = nHeads * d, kvDim = nKvHeads * d;
  if (!Array.isArray(lipschitz?.layers)) {
    throw new ShapeError(`Lipschitz layers is ${typeName(lipschitz?.layers)}, expected an array`);
  }
  // More trace layers than bounds gave a bound over the first layers alone; fewer, a TypeError.
  const layers = lipschitz.layers.length;
  if (trace.q.length !== layers || trace.k.length !== layers || trace.v.length !== layers) {
    throw new ShapeError(
      `trace of ${trace.q.length} layers but Lipschitz bounds of ${layers} ` +
        `(q, k, v: ${trace.q.length}, ${trace.k.length}, ${trace.v.length} layers)`,
    );
  }
  if (!Number.isInteger(group) || group < 1) {
    throw new ShapeError(`${nHeads} query heads do not share ${nKvHeads} KV heads evenly`);
  }
  // a shape that disagrees with the trace read the wrong slices (or none: "q has 0 elements")
  for (let l = 0; l < layers; l++) {
    const parts = [["q", trace.q[l], dim], ["k", trace.k[l], kvDim], ["v", trace.v[l], kvDim]];
    for (const [what, x, per] of parts as [string, Float32Array, number][]) {
      if (x.length !== n * per) {
        throw new ShapeError(
          `trace ${what}[${l}] has ${x.length} elements, the shape needs ${n} positions × ${per}`,
        );
      }
    }
  }
  _checkLipschitz(lipschitz);
  const local: number[] = [];
  for (let l = 0; l < lipschitz.layers.length; l++) {
    const sq = new Float64Array(n);
    for (let kh = 0; kh < nKvHeads; kh++) {
      const b = bounds[l]?.[kh];
      if (!b || b.key.length < n * d || b.value.length < n * d) {
        throw new ShapeError(`error bounds lack layer ${l} KV head ${kh} (${n} × ${d} needed)`);
      }
      const keys = new Float32Array(n * d), values = new Float32Array(n * d);
      for (let t = 0; t < n; t++) {
        keys.set(trace.k[l].subarray(t * kvDim + kh * d, t * kvDim + (kh + 1) * d), t * d);
        values.set(trace.v[l].subarray(t * kvDim + kh * d, t * kvDim + (kh + 1) * d), t * d);
      }
      for (let j = 0; j < n; j++) {
        for (let g = 0; g < group; g++) {
          const qo = j * dim + (kh * group + g) * d;
          const q = trace.q[l].subarray(qo, qo + d);
          const e = attentionErrorBound(q, keys, values, j + 1, d, b.key, b.value);
          sq[j] = addUp(sq[j], mulUp(e, e));
        }
      }
    }
    let worst = 0;
    // rounded upward like every step above, so the composed bound stays a bound
    for (let j = 0; j < n; j++) worst = Math.max(worst, sqrtUp(sq[j]));
    const L = lipschitz.layers[l];
    const phi = mulUp(addUp(1, L.feedForward), mulUp(L.outputNorm, worst));
    // finite factors near 1e308 overflowed Φ to Infinity
    if (!(phi < Infinity)) {
      throw new InvalidValueError(
        `layer ${l}: Φ = (1 + feedForward ${L.feedForward})·outputNorm ${L.outputNorm}·attention ` +
          `bound ${worst} is ${phi}, expected a finite number`,
        l,
      );
    }
    local.push(phi);
  }
  const residual = composeLayerBounds(local, lipschitz.layers.map((x) => x.layer));
  const logits = mulUp(lipschitz.output, residual.at(-1) ?? 0);
  if (logits === Infinity) {
    throw new InvalidValueError(
      `logits bound = output ${lipschitz.output} × E ${residual.at(-1)} overflows a double`,
    );
  }
  return { local, residual, logits };
}

/**
 * Throws unless every Lipschitz bound is a finite number ≥ 0: composeModelBound read `output`
 * alone, and a NaN, negative or string A_l, F_l, L_l or ‖W_o‖ became a NaN bound, one too small
 * or a TypeError (the layer count is checked against the trace by the caller).
 */
function _checkLipschitz(lipschitz: ModelLipschitz): void {
  const finite = (x: unknown) => typeof x === "number" && x >= 0 && x < Infinity;
  if (!finite(lipschitz.output)) {
    throw new InvalidValueError(
      `output Lipschitz bound is ${showValue(lipschitz.output)}, expected a finite number ≥ 0`,
    );
  }
  for (let l = 0; l < lipschitz.layers.length; l++) {
    const layer = lipschitz.layers[l];
    if (typeof layer !== "object" || layer === null) {
      throw new ShapeError(`Lipschitz layers[${l}] is ${showValue(layer)}, expected an object`);
    }
    for (const key of ["attention", "feedForward", "layer", "outputNorm"] as const) {
      if (!finite(layer[key])) {
        throw new InvalidValueError(
          `Lipschitz layers[${l}].${key} is ${showValue(layer[key])}, expected a finite number ≥ 0`,
          l,
        );
      }
    }
  }
}
