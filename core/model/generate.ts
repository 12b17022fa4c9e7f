/**
 * Greedy generation: the argmax token at every step, through any {@linkcode KVCache}.
 *
 * Browser compatible.
 *
 * @example
 * ```ts ignore
 * const ids = await generateGreedy(model, cache, [1, 403, 407, 261, 378], 100);
 * ```
 * @module
 */

import { assertFinite, CapacityError, InvalidValueError, ShapeError } from "../errors.ts";
import { argmax } from "../tensor.ts";
import type { KVCache } from "./kv_cache.ts";
import { checkCacheFits, type Transformer } from "./transformer.ts";

/**
 * Prefills the prompt, then appends the argmax token `steps` times. The cache is reset first.
 *
 * @param model the transformer
 * @param cache the cache attention runs through
 * @param prompt prompt token ids (at least one)
 * @param steps tokens to generate
 * @returns the generated ids (not including the prompt)
 * @throws ShapeError for an empty prompt or a token id out of range; CapacityError when prompt and
 *   generated tokens need more positions than the cache or the model holds; InvalidValueError for
 *   steps not an integer ≥ 0: all before the cache is reset. InvalidValueError for a NaN or
 *   infinite logit.
 */
export async function generateGreedy(
  model: Transformer,
  cache: KVCache,
  prompt: number[],
  steps: number,
): Promise<number[]> {
  // NaN or a fraction never equals out.length: no tokens, or one more than asked.
  if (!Number.isSafeInteger(steps) || steps < 0) {
    throw new InvalidValueError(`steps is ${steps}, expected an integer ≥ 0`);
  }
  if (prompt.length === 0) throw new ShapeError("prompt is empty, expected at least one token");
  const vocabSize = model.config.vocabSize;
  prompt.forEach((t, i) => {
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
      throw new ShapeError(`prompt[${i}] is token id ${t}, out of range [0, ${vocabSize})`);
    }
  });
  // the last generated token is returned, not forwarded
  const needed = prompt.length + Math.max(steps - 1, 0);
  const room = Math.min(cache.shape.maxSeqLen, model.config.seqLen);
  if (needed > room) {
    throw new CapacityError(
      `a prompt of ${prompt.length} tokens and ${steps} generated need ${needed} positions, ` +
        `the cache and model hold ${room}`,
    );
  }
  // checked before reset(), which would otherwise empty a cache that is then refused
  checkCacheFits(model.config, cache.shape);
  cache.reset();
  const vocab = model.config.vocabSize;
  const logits = await model.prefill(prompt, 0, cache);
  let next = greedy(logits.subarray((prompt.length - 1) * vocab));
  const out: number[] = [];
  for (let pos = prompt.length; out.length < steps; pos++) {
    out.push(next);
    if (out.length === steps) break;
    next = greedy(await model.forward(next, pos, cache));
  }
  return out;
}

// argmax skips NaN: a broken model would still yield tokens
function greedy(logits: Float32Array): number {
  assertFinite(logits, "logits");
  return argmax(logits);
}
