/**
 * Perplexity under llama2.c's windowed protocol: each sequence is scored in windows of C tokens,
 * window w covering tokens [w·(C−1), w·(C−1)+C) with positions restarting at 0, and every token of a
 * window after its first is predicted from the window's earlier tokens.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { scoringWindows } from "./perplexity.ts";
 * const w = scoringWindows(10, 4);
 * if (w.length !== 3 || w[1].start !== 3 || w[2].end !== 10) throw new Error("windows of 4 over 10");
 * ```
 * @module
 */

import {
  assertFinite,
  CapacityError,
  checkOptionFields,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "../errors.ts";
import type { KVCache } from "../model/kv_cache.ts";
import type { Transformer } from "../model/transformer.ts";

/** One scoring window: tokens [start, end) of a sequence. */
export interface ScoringWindow {
  /** First token (position 0 of the window). */
  start: number;
  /** One past the last token. */
  end: number;
}

/**
 * The windows that score a sequence of n tokens with context C; together they predict each of
 * tokens 1…n−1 exactly once.
 *
 * @param n sequence length
 * @param context window length C (≥ 2)
 * @returns the windows in order
 * @throws ShapeError for n not an integer ≥ 0 or context not an integer ≥ 2
 */
export function scoringWindows(n: number, context: number): ScoringWindow[] {
  // NaN or a negative n gave no windows: nothing scored, and no error to say why.
  if (!Number.isInteger(n) || n < 0) {
    throw new ShapeError(`sequence length is ${n}, expected an integer ≥ 0`);
  }
  if (!Number.isInteger(context) || context < 2) {
    throw new ShapeError(`context is ${context}, expected an integer ≥ 2`);
  }
  const windows: ScoringWindow[] = [];
  for (let start = 0; start < n - 1; start += context - 1) {
    windows.push({ start, end: Math.min(start + context, n) });
  }
  return windows;
}

/**
 * Log-softmax probability of `target` under logits, computed stably in float64.
 *
 * @param logits the logits
 * @param target the token whose log-probability is wanted
 * @returns log softmax(logits)[target]
 * @throws ShapeError for a target outside the logits; InvalidValueError for logits not an array
 */
export function logProbability(logits: Float32Array, target: number): number {
  if (typeof logits !== "object" || logits === null || typeof logits.length !== "number") {
    throw new InvalidValueError(`logits is ${typeName(logits)}, expected a Float32Array`);
  }
  if (!Number.isInteger(target) || target < 0 || target >= logits.length) {
    throw new ShapeError(`target ${target} is outside [0, ${logits.length})`);
  }
  assertFinite(logits, "logits"); // a NaN or infinite logit makes every probability NaN
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return logits[target] - max - Math.log(sum);
}

/** Result of {@linkcode perplexity}. */
export interface PerplexityResult {
  /** Tokens predicted. */
  tokens: number;
  /** Mean negative log-likelihood in nats. */
  meanNll: number;
  /** exp(meanNll). */
  perplexity: number;
}

/** Options of {@linkcode perplexity}. */
export interface PerplexityOptions {
  /** Window length C (defaults to the model's context). */
  context?: number;
  /** Called after each window with tokens scored so far and in total. */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Checks the arguments of an evaluation over token sequences before any of it runs, so that a
 * mistake in a late sequence cannot stop it after earlier windows were scored and reported: a model
 * and a cache of the right kinds, sequences that are arrays of token ids in the model's vocabulary,
 * and windows that fit both the model's context and the cache. {@linkcode perplexity},
 * {@linkcode referenceRun} and {@linkcode measureCacheBits} call it first.
 *
 * @example
 * ```ts
 * import { checkEvalInputs } from "./perplexity.ts";
 * let refused = false;
 * try {
 *   checkEvalInputs(undefined as never, undefined as never, []);
 * } catch {
 *   refused = true;
 * }
 * if (!refused) throw new Error("no model");
 * ```
 *
 * @param model the transformer
 * @param cache the cache the windows run through
 * @param sequences token ids per sequence
 * @param context window length of the windowed protocol ({@linkcode scoringWindows}); omitted,
 *   each sequence is prefilled whole
 * @throws InvalidValueError for a model, cache or sequences of the wrong kind; ShapeError for a
 *   context that is not an integer ≥ 2, a token id out of range (by sequence and index) or a
 *   window longer than the model's context; CapacityError for a window longer than the cache holds
 */
export function checkEvalInputs(
  model: Transformer,
  cache: KVCache,
  sequences: readonly ArrayLike<number>[],
  context?: number,
): void {
  // named here: plain JavaScript passing them in another order got "reduce is not a function"
  if (
    typeof (model as Partial<Transformer>)?.prefill !== "function" ||
    typeof model.config !== "object" || model.config === null
  ) {
    throw new InvalidValueError(`model is ${typeName(model)}, expected a Transformer`);
  }
  if (
    typeof (cache as Partial<KVCache>)?.reset !== "function" ||
    typeof cache.shape !== "object" || cache.shape === null
  ) {
    throw new InvalidValueError(`cache is ${typeName(cache)}, expected a KVCache`);
  }
  const bad = Array.isArray(sequences)
    ? sequences.findIndex((s) =>
      typeof s !== "object" || s === null || typeof s.length !== "number"
    )
    : -2;
  if (bad !== -1) {
    throw new InvalidValueError(
      `sequences is ${typeName(sequences)}, expected an array of token id arrays` +
        (bad >= 0 ? ` (sequences[${bad}] is ${showValue(sequences[bad])})` : ""),
    );
  }
  if (context !== undefined && (!Number.isInteger(context) || context < 2)) {
    throw new ShapeError(`context is ${showValue(context)}, expected an integer ≥ 2`);
  }
  const { vocabSize, seqLen } = model.config, maxSeqLen = cache.shape.maxSeqLen;
  for (let s = 0; s < sequences.length; s++) {
    const seq = sequences[s];
    for (let i = 0; i < seq.length; i++) {
      const t = seq[i];
      if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
        throw new ShapeError(
          `sequences[${s}][${i}] is token id ${showValue(t)}, out of range [0, ${vocabSize})`,
        );
      }
    }
    // the longest window is the first (a sequence under 2 tokens has none to score)
    const n = context === undefined
      ? seq.length
      : seq.length < 2
      ? 0
      : Math.min(context, seq.length);
    const hint = context === undefined ? "" : " (pass a smaller context)";
    if (n > seqLen) {
      throw new ShapeError(
        `sequences[${s}] needs windows of ${n} positions, the model's context is ${seqLen}${hint}`,
      );
    }
    if (n > maxSeqLen) {
      throw new CapacityError(
        `sequences[${s}] needs windows of ${n} positions, the cache holds ${maxSeqLen}${hint}`,
      );
    }
  }
}

/**
 * Perplexity of a model with a given cache over token sequences. The cache is reset before every
 * window. Every argument is checked before the first window runs ({@linkcode checkEvalInputs}).
 *
 * @param model the transformer
 * @param cache the cache to run attention through
 * @param sequences token ids per sequence (each usually starting with BOS)
 * @param options window length and progress
 * @returns tokens scored, mean NLL and perplexity
 * @throws InvalidValueError when model is not a Transformer, cache not a KVCache, sequences not
 *   arrays of ids, or options not an object (onProgress not a function); ShapeError when no
 *   sequence has two tokens (nothing to score), and as {@linkcode checkEvalInputs} (all before
 *   the first window) and {@linkcode Transformer.prefill}
 */
export async function perplexity(
  model: Transformer,
  cache: KVCache,
  sequences: number[][],
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  if (typeof options !== "object" || options === null) {
    throw new InvalidValueError(`options is ${showValue(options)}, expected an object`);
  }
  checkOptionFields(options, { context: true, onProgress: true }, "perplexity options");
  if (options.onProgress !== undefined && typeof options.onProgress !== "function") {
    throw new InvalidValueError(
      `options.onProgress is ${showValue(options.onProgress)}, expected a function`,
    );
  }
  checkEvalInputs(model, cache, sequences, options.context ?? model?.config?.seqLen);
  const context = options.context ?? model.config.seqLen;
  const vocab = model.config.vocabSize;
  const total = sequences.reduce((a, s) => a + Math.max(0, s.length - 1), 0);
  // 0/0 would report a NaN perplexity.
  if (total === 0) throw new ShapeError("no token to score: every sequence has under 2 tokens");
  let nll = 0, tokens = 0;
  for (const seq of sequences) {
    for (const { start, end } of scoringWindows(seq.length, context)) {
      cache.reset();
      const logits = await model.prefill(seq.slice(start, end), 0, cache);
      for (let i = 0; i + 1 < end - start; i++) {
        nll -= logProbability(logits.subarray(i * vocab, (i + 1) * vocab), seq[start + i + 1]);
        tokens++;
      }
      options.onProgress?.(tokens, total);
    }
  }
  const meanNll = nll / tokens;
  return { tokens, meanNll, perplexity: Math.exp(meanNll) };
}
