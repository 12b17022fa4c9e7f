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
import { logProbability, scoringWindows } from "./perplexity.ts";
import { assertFinite, InvalidValueError, ShapeError } from "../errors.ts";

/**
 * KL(P‖Q) in nats between the softmax distributions of two logit vectors, computed in float64.
 * @param p reference logits
 * @param q candidate logits
 * @returns Σ P log(P/Q) ≥ 0
 * @throws ShapeError for logits of unequal length; InvalidValueError for a NaN or ±Inf, by index
 */
export function klDivergence(p: Float32Array, q: Float32Array): number {
  if (p.length !== q.length) throw new ShapeError(`logits of ${p.length} and ${q.length} tokens`);
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
 */
export async function referenceRun(
  model: Transformer,
  cache: KVCache,
  sequences: number[][],
  context: number,
): Promise<ReferenceRun> {
  const windows = [];
  for (const seq of sequences) {
    for (const { start, end } of scoringWindows(seq.length, context)) {
      const tokens = seq.slice(start, end);
      cache.reset();
      windows.push({ tokens, logits: await model.prefill(tokens, 0, cache) });
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
 * @throws ShapeError for a reference with no token to score or whose logits do not match the
 *   model's vocabulary
 */
export async function compareCache(
  model: Transformer,
  cache: KVCache,
  reference: ReferenceRun,
  onProgress?: (done: number, total: number) => void,
): Promise<CacheQuality> {
  const V = model.config.vocabSize;
  let scored = 0;
  reference.windows.forEach(({ tokens: ids, logits }, w) => {
    if (logits.length !== ids.length * V) {
      throw new ShapeError(
        `reference window ${w} has ${logits.length} logits, expected ${ids.length} × ${V}`,
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
 * @throws ShapeError when the lengths differ; InvalidValueError for a NaN at index i
 */
export function signTest(a: ArrayLike<number>, b: ArrayLike<number>): PairedComparison {
  if (a.length !== b.length) {
    throw new ShapeError(`paired figures have lengths ${a.length} and ${b.length}`);
  }
  let lower = 0, higher = 0, ties = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) || Number.isNaN(b[i])) {
      throw new InvalidValueError(`paired figure ${i} is NaN`, i);
    }
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

/**
 * Bits per element a cache holds after prefilling each sequence (8 × Σ bytes / Σ elements, every
 * byte of memory() counted): what a policy really costs on given text.
 * @param model the transformer
 * @param cache the cache (reset before each sequence)
 * @param sequences token ids per sequence, each at most the cache's capacity
 * @returns the aggregate bits per element
 * @throws ShapeError when the sequences hold no token
 */
export async function measureCacheBits(
  model: Transformer,
  cache: KVCache,
  sequences: number[][],
): Promise<number> {
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
