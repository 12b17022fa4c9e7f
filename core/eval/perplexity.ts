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

import { assertFinite, InvalidValueError, ShapeError, typeName } from "../errors.ts";
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
 * @throws ShapeError for a target outside the logits
 */
export function logProbability(logits: Float32Array, target: number): number {
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
 * Perplexity of a model with a given cache over token sequences. The cache is reset before every
 * window.
 *
 * @param model the transformer
 * @param cache the cache to run attention through
 * @param sequences token ids per sequence (each usually starting with BOS)
 * @param options window length and progress
 * @returns tokens scored, mean NLL and perplexity
 * @throws InvalidValueError when cache is not a KVCache or sequences not arrays of ids;
 *   ShapeError when no sequence has two tokens (nothing to score), and as
 *   {@linkcode scoringWindows} and {@linkcode Transformer.prefill}
 */
export async function perplexity(
  model: Transformer,
  cache: KVCache,
  sequences: number[][],
  options: PerplexityOptions = {},
): Promise<PerplexityResult> {
  // named here: plain JavaScript passing them in another order got "reduce is not a function"
  if (typeof (cache as Partial<KVCache>)?.reset !== "function") {
    throw new InvalidValueError(`cache is ${typeName(cache)}, expected a KVCache`);
  }
  if (!Array.isArray(sequences) || sequences.some((s) => typeof s?.length !== "number")) {
    throw new InvalidValueError(
      `sequences is ${typeName(sequences)}, expected an array of token id arrays`,
    );
  }
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
