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

import { InvalidValueError, ShapeError } from "../errors.ts";
import { argmax } from "../tensor.ts";
import type { KVCache } from "./kv_cache.ts";
import type { Transformer } from "./transformer.ts";

/**
 * Prefills the prompt, then appends the argmax token `steps` times. The cache is reset first.
 *
 * @param model the transformer
 * @param cache the cache attention runs through
 * @param prompt prompt token ids (at least one)
 * @param steps tokens to generate
 * @returns the generated ids (not including the prompt)
 * @throws ShapeError for an empty prompt; InvalidValueError for steps not an integer ≥ 0; both
 *   before the cache is reset
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
  cache.reset();
  const vocab = model.config.vocabSize;
  const logits = await model.prefill(prompt, 0, cache);
  let next = argmax(logits.subarray((prompt.length - 1) * vocab));
  const out: number[] = [];
  for (let pos = prompt.length; out.length < steps; pos++) {
    out.push(next);
    if (out.length === steps) break;
    next = argmax(await model.forward(next, pos, cache));
  }
  return out;
}
