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

import {
  assertFinite,
  CapacityError,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "../errors.ts";
import { argmax } from "../tensor.ts";
import type { KVCache } from "./kv_cache.ts";
import { checkCacheFits, type Transformer } from "./transformer.ts";

/**
 * Prefills the prompt, then appends the argmax token `steps` times. The cache is reset first.
 * Every argument is checked before the cache is touched; with steps = 0 nothing else happens: the
 * cache is left as it was (not reset, nothing prefilled) and the result is empty.
 *
 * @param model the transformer
 * @param cache the cache attention runs through
 * @param prompt prompt token ids (at least one)
 * @param steps tokens to generate
 * @returns the generated ids (not including the prompt)
 * @throws InvalidValueError for a model, cache or prompt of the wrong kind, or steps not an
 *   integer ≥ 0; ShapeError for an empty prompt, a token id out of range or a cache whose shape
 *   does not fit the model; CapacityError when prompt and generated tokens need more positions
 *   than the cache or the model holds: all before the cache is reset. InvalidValueError for a NaN
 *   or infinite logit.
 */
export async function generateGreedy(
  model: Transformer,
  cache: KVCache,
  prompt: number[],
  steps: number,
): Promise<number[]> {
  // named here: plain JavaScript passing them wrong got "prompt.forEach is not a function"
  if (
    typeof model?.prefill !== "function" || typeof model.config !== "object" ||
    model.config === null
  ) {
    throw new InvalidValueError(`model is ${typeName(model)}, expected a Transformer`);
  }
  if (
    typeof (cache as Partial<KVCache>)?.reset !== "function" || typeof cache.shape !== "object" ||
    cache.shape === null
  ) {
    throw new InvalidValueError(`cache is ${typeName(cache)}, expected a KVCache`);
  }
  if (typeof prompt !== "object" || prompt === null || typeof prompt.length !== "number") {
    throw new InvalidValueError(
      `prompt is ${showValue(prompt)}, expected an array of token ids`,
    );
  }
  // NaN or a fraction never equals out.length: no tokens, or one more than asked.
  if (!Number.isSafeInteger(steps) || steps < 0) {
    throw new InvalidValueError(`steps is ${showValue(steps)}, expected an integer ≥ 0`);
  }
  if (prompt.length === 0) throw new ShapeError("prompt is empty, expected at least one token");
  const vocabSize = model.config.vocabSize;
  for (let i = 0; i < prompt.length; i++) {
    const t = prompt[i];
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) {
      throw new ShapeError(
        `prompt[${i}] is token id ${showValue(t)}, out of range [0, ${vocabSize})`,
      );
    }
  }
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
  // nothing to generate: resetting and prefilling would change the cache (and could throw on a
  // NaN logit) for no result
  if (steps === 0) return [];
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
