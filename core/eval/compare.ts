/**
 * Quality of a cache against the full-precision cache on a real model: perplexity, mean KL
 * divergence of the next-token distributions (teacher-forced, every scored position), top-1
 * agreement, and bits per element held, all over the windowed scoring protocol of perplexity.ts.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { klDivergence } from "./compare.ts";
 * const p = Float32Array.of(1, 2, 3);
 * if (klDivergence(p, p) !== 0) throw new Error("KL(p‖p) = 0");
 * ```
 * @module
 */

import type { KVCache } from "../model/kv_cache.ts";
import type { Transformer } from "../model/transformer.ts";
import { argmax } from "../tensor.ts";
import { checkEvalInputs, logProbability, scoringWindows } from "./perplexity.ts";
import {
  assertFinite,
  CapacityError,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "../errors.ts";

/** Throws InvalidValueError unless x is an array (or typed array) of logits. */
function _checkLogits(x: unknown, what: string): void {
  if (typeof x !== "object" || x === null || typeof (x as ArrayLike<number>).length !== "number") {
    throw new InvalidValueError(`${what} is ${typeName(x)}, expected a Float32Array of logits`);
  }
}

/**
 * KL(P‖Q) in nats between the softmax distributions of two logit vectors, computed in float64.
 * @param p reference logits
 * @param q candidate logits
 * @returns Σ P log(P/Q) ≥ 0
 * @throws ShapeError for logits of unequal length or empty (no distribution); InvalidValueError
 *   for p or q not an array, or a NaN or ±Inf, by index
 */
export function klDivergence(p: Float32Array, q: Float32Array): number {
  _checkLogits(p, "p");
  _checkLogits(q, "q");
  if (p.length !== q.length) throw new ShapeError(`logits of ${p.length} and ${q.length} tokens`);
  // softmax over no logits is no distribution: the sum below would be 0 for nothing compared
  if (p.length === 0) throw new ShapeError("logits of 0 tokens, expected at least one");
  assertFinite(p, "p");
  assertFinite(q, "q");
  const lse = (x: Float32Array) => {
    let m = -Infinity;
    for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
    let s = 0;
    for (let i = 0; i < x.length; i++) s += Math.exp(x[i] - m);
    return m + Math.log(s);
  };
  const lp = lse(p), lq = lse(q);
  let kl = 0;
  for (let i = 0; i < p.length; i++) {
    const logP = p[i] - lp;
    kl += Math.exp(logP) * (logP - (q[i] - lq));
  }
  return Math.max(0, kl);
}

/** Logits of the reference cache for every window, computed once and reused per configuration. */
export interface ReferenceRun {
  /** Window length. */
  context: number;
  /** Per window: the tokens and their logits (tokens × vocab). */
  windows: { tokens: number[]; logits: Float32Array }[];
}

/**
 * Runs the reference cache over every scoring window and keeps the logits.
 * @param model the transformer
 * @param cache the reference cache (usually Float32KVCache)
 * @param sequences token ids per sequence
 * @param context window length
 * @returns the reference run
 * @throws as {@linkcode checkEvalInputs}, before any window runs; InvalidValueError for a NaN or
 *   infinite logit, naming its sequence and position (compareCache would refuse it later)
 */
export async function referenceRun(
  model: Transformer,
  cache: KVCache,
  sequences: number[][],
  context: number,
): Promise<ReferenceRun> {
  // context is required here: undefined would prefill whole sequences, not windows
  if (context === undefined) {
    throw new ShapeError("context is undefined, expected an integer ≥ 2");
  }
  checkEvalInputs(model, cache, sequences, context);
  const V = model.config.vocabSize;
  const windows = [];
  for (let s = 0; s < sequences.length; s++) {
    const seq = sequences[s];
    for (const { start, end } of scoringWindows(seq.length, context)) {
      const tokens = seq.slice(start, end);
      cache.reset();
      const logits = await model.prefill(tokens, 0, cache);
      for (let j = 0; j < logits.length; j++) {
        const v = logits[j];
        if (v - v !== 0) {
          const pos = start + Math.floor(j / V);
          throw new InvalidValueError(
            `reference logit ${j % V} of sequences[${s}] at position ${pos} (window from ` +
              `${start}) is ${v}, expected a finite number`,
          );
        }
      }
      windows.push({ tokens, logits });
    }
  }
  return { context, windows };
}

/** Quality and size of one cache configuration against the reference. */
export interface CacheQuality {
  /** Tokens scored. */
  tokens: number;
  /** Perplexity with this cache. */
  perplexity: number;
  /** Mean KL(reference ‖ this) over scored positions, nats. */
  meanKl: number;
  /** Share of scored positions whose argmax equals the reference's. */
  top1Agreement: number;
  /** 8 × Σ bytes / Σ elements over the windows, measured when each window is complete. */
  bitsPerElement: number;
  /** Mean KL per scoring window, in the reference's window order (for paired comparisons). */
  windowKl: number[];
}

/**
 * Scores a cache against a reference run (teacher-forced on the same windows).
 * @param model the transformer
 * @param cache the candidate cache (reset before each window)
 * @param reference from {@linkcode referenceRun}
 * @param onProgress called after each window with (done, total) windows
 * @returns the quality figures
 * @throws InvalidValueError for a model, cache, reference or onProgress of the wrong kind;
 *   ShapeError for a reference with no token to score, whose logits do not match the model's
 *   vocabulary, or with a token id out of range or a window longer than the model's context;
 *   CapacityError for a window longer than the cache holds: all before any window runs
 */
export async function compareCache(
  model: Transformer,
  cache: KVCache,
  reference: ReferenceRun,
  onProgress?: (done: number, total: number) => void,
): Promise<CacheQuality> {
  checkEvalInputs(model, cache, []); // the kinds of model and cache; windows are checked below
  if (typeof cache.memory !== "function") {
    throw new InvalidValueError(`cache is ${typeName(cache)}, expected a KVCache`);
  }
  if (!Array.isArray(reference?.windows)) {
    throw new InvalidValueError(
      `reference is ${typeName(reference)}, expected a ReferenceRun (from referenceRun())`,
    );
  }
  if (onProgress !== undefined && typeof onProgress !== "function") {
    throw new InvalidValueError(`onProgress is ${typeName(onProgress)}, expected a function`);
  }
  const V = model.config.vocabSize;
  const room = Math.min(model.config.seqLen, cache.shape.maxSeqLen);
  let scored = 0;
  reference.windows.forEach((window, w) => {
    const { tokens: ids, logits } = window ?? {};
    if (typeof ids?.length !== "number" || typeof logits?.length !== "number") {
      throw new InvalidValueError(
        `reference window ${w} is ${typeName(window)}, expected { tokens, logits }`,
      );
    }
    if (logits.length !== ids.length * V) {
      throw new ShapeError(
        `reference window ${w} has ${logits.length} logits, expected ${ids.length} × ${V}`,
      );
    }
    // checked here, not by prefill when the window comes up: earlier windows were scored by then
    for (let i = 0; i < ids.length; i++) {
      const t = ids[i];
      if (!Number.isInteger(t) || t < 0 || t >= V) {
        throw new ShapeError(
          `reference window ${w} token ${i} is id ${showValue(t)}, out of range [0, ${V})`,
        );
      }
    }
    if (ids.length > room) {
      const Err = ids.length > model.config.seqLen ? ShapeError : CapacityError;
      throw new Err(
        `reference window ${w} has ${ids.length} tokens, the model and the cache hold ${room}`,
      );
    }
    scored += Math.max(0, ids.length - 1);
  });
  // 0/0 would report NaN figures.
  if (scored === 0) throw new ShapeError("reference has no token to score");
  let nll = 0, kl = 0, agree = 0, tokens = 0, bytes = 0, elements = 0;
  let done = 0;
  const windowKl: number[] = [];
  for (const { tokens: ids, logits: ref } of reference.windows) {
    cache.reset();
    const logits = await model.prefill(ids, 0, cache);
    const mem = cache.memory();
    bytes += mem.bytes;
    elements += mem.elements;
    let wKl = 0;
    for (let i = 0; i + 1 < ids.length; i++) {
      const p = ref.subarray(i * V, (i + 1) * V), q = logits.subarray(i * V, (i + 1) * V);
      nll -= logProbability(q, ids[i + 1]);
      wKl += klDivergence(p, q);
      if (argmax(p) === argmax(q)) agree++;
      tokens++;
    }
    kl += wKl;
    windowKl.push(ids.length > 1 ? wKl / (ids.length - 1) : 0);
    onProgress?.(++done, reference.windows.length);
  }
  return {
    tokens,
    perplexity: Math.exp(nll / tokens),
    meanKl: kl / tokens,
    top1Agreement: agree / tokens,
    bitsPerElement: (8 * bytes) / elements,
    windowKl,
  };
}

/** A paired comparison of two configurations over the same windows (see {@linkcode signTest}). */
export interface PairedComparison {
  /** Windows where the first is lower. */
  lower: number;
  /** Windows where the second is lower. */
  higher: number;
  /** Windows where both are equal. */
  ties: number;
  /** Two-sided sign-test p-value of lower vs higher (ties dropped); 1 with no untied pair. */
  p: number;
}

/**
 * Sign test of paired figures (e.g. {@linkcode CacheQuality.windowKl} of two caches): in how many
 * pairs a is lower, and how likely a split at least that uneven is if neither tends to be lower.
 * It needs no assumption on the figures' distribution, only that pairs are independent.
 *
 * @param a first configuration's figure per pair
 * @param b second configuration's figure per pair
 * @returns the counts and the two-sided p-value, exact (binomial with p = 1/2)
 * @throws ShapeError when the lengths differ; InvalidValueError for a or b not an array, or a
 *   figure at index i that is NaN or not a number (undefined counted as a tie, strings compared as
 *   text)
 */
export function signTest(a: ArrayLike<number>, b: ArrayLike<number>): PairedComparison {
  for (const [name, x] of [["a", a], ["b", b]] as const) {
    if (typeof x !== "object" || x === null || typeof x.length !== "number") {
      throw new InvalidValueError(`${name} is ${typeName(x)}, expected an array of numbers`);
    }
  }
  if (a.length !== b.length) {
    throw new ShapeError(`paired figures have lengths ${a.length} and ${b.length}`);
  }
  // before counting: undefined compared as a tie and strings as text, silently
  for (let i = 0; i < a.length; i++) {
    const x = a[i], y = b[i];
    if (typeof x !== "number" || x !== x) _notFigure("a", i, x);
    if (typeof y !== "number" || y !== y) _notFigure("b", i, y);
  }
  let lower = 0, higher = 0, ties = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] < b[i]) lower++;
    else if (a[i] > b[i]) higher++;
    else ties++;
  }
  const n = lower + higher, k = Math.min(lower, higher);
  // P(X ≤ k) for X ~ Binomial(n, 1/2), terms built in log space so large n cannot overflow
  let tail = 0;
  let logC = 0; // log C(n, 0)
  for (let i = 0; i <= k; i++) {
    if (i > 0) logC += Math.log((n - i + 1) / i);
    tail += Math.exp(logC - n * Math.LN2);
  }
  return { lower, higher, ties, p: n === 0 ? 1 : Math.min(1, 2 * tail) };
}

/** Throws InvalidValueError naming a paired figure that is NaN or not a number. */
function _notFigure(name: string, i: number, v: unknown): never {
  throw new InvalidValueError(
    `paired figure ${name}[${i}] is ${showValue(v)}, expected a number`,
    i,
  );
}

/**
 * Bits per element a cache holds after prefilling each sequence (8 × Σ bytes / Σ elements, every
 * byte of memory() counted): what a policy really costs on given text.
 * @param model the transformer
 * @param cache the cache (reset before each sequence)
 * @param sequences token ids per sequence, each at most the cache's capacity
 * @returns the aggregate bits per element
 * @throws ShapeError when the sequences hold no token, and as {@linkcode checkEvalInputs} (each
 *   sequence prefilled whole), before any sequence runs
 */
export async function measureCacheBits(
  model: Transformer,
  cache: KVCache,
  sequences: number[][],
): Promise<number> {
  checkEvalInputs(model, cache, sequences);
  if (typeof cache.memory !== "function") {
    throw new InvalidValueError(`cache is ${typeName(cache)}, expected a KVCache`);
  }
  if (sequences.every((s) => s.length === 0)) {
    throw new ShapeError("no tokens to measure: the sequences are empty");
  }
  let bytes = 0, elements = 0;
  for (const seq of sequences) {
    if (seq.length === 0) continue; // its fixed buffers would count with no element to share them
    cache.reset();
    await model.prefill(seq, 0, cache);
    const mem = cache.memory();
    bytes += mem.bytes;
    elements += mem.elements;
  }
  return (8 * bytes) / elements;
}
