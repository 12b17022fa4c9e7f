// Loads the bundled fixture model, tokenizer and evaluation text for tests and benches.
import assert from "node:assert/strict";
import {
  type ModelWeights,
  parseCheckpoint,
  parseTokenizer,
  type Tokenizer,
  Transformer,
} from "../mod.ts";
import { mulberry32 } from "../core/mulberry32.ts";

const root = new URL("../fixtures/", import.meta.url);

/** Raw bytes of a fixture file. */
export function fixtureBytes(name: string): Promise<Uint8Array> {
  return Deno.readFile(new URL(name, root));
}

/** The fixture model, tokenizer and evaluation lines (CRLF kept, split on "\n"). */
export interface Fixture {
  weights: ModelWeights;
  model: Transformer;
  tokenizer: Tokenizer;
  lines: string[];
  sequences: number[][];
}

let cached: Promise<Fixture> | undefined;

/** Loads the fixture once per process. */
export function loadFixture(): Promise<Fixture> {
  cached ??= (async () => {
    const weights = parseCheckpoint(await fixtureBytes("stories260K.bin"));
    const tokenizer = parseTokenizer(await fixtureBytes("tok512.bin"), weights.config.vocabSize);
    const text = new TextDecoder().decode(await fixtureBytes("tinystories_valid_excerpt.txt"));
    const lines = text.split("\n").filter((l) => l.length > 0);
    const sequences = lines.map((l) => tokenizer.encode(l));
    return { weights, model: new Transformer(weights), tokenizer, lines, sequences };
  })();
  return cached;
}

/** Reference values from fixtures/PROVENANCE.md (llama2.c run.c, float32). */
export const REFERENCE = {
  promptIds: [1, 403, 407, 261, 378],
  greedy100: (
    "432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411 322 265 " +
    "282 295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 266 267 337 335 " +
    "312 432 398 312 286 267 414 270 333 415 426 13 438 310 439 419 357 336 432 313 438 310 432 " +
    "278 316 439 419 298 414 267 265 282 295 433 426 436 317 286 296 418 269 279 292 416 439 413 " +
    "409 416 327 263 415 294 267 400"
  ).split(" ").map(Number),
  perplexity: { 512: 5.553799, 256: 5.706034, 128: 6.046306 } as Record<number, number>,
  tokensScored: 15525,
};

/** Deterministic PRNG (mulberry32) so failing random tests reproduce. */
export function rng(seed: number): () => number {
  return mulberry32(seed);
}

/** Standard normal samples from a uniform PRNG (Box–Muller). */
export function normals(n: number, next: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
  }
  return out;
}

/** Largest |a − b| relative to the largest |b|. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let err = 0, mag = 0;
  for (let i = 0; i < a.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    mag = Math.max(mag, Math.abs(b[i]));
  }
  return err / mag;
}

/**
 * Asserts that `run` throws an instance of `type` whose message matches `message` (node's
 * assert.throws takes a class or a pattern, not both).
 * @param run the call
 * @param type the error class
 * @param message pattern of its message
 */
export function throwsLike(
  run: () => unknown,
  type: new (...args: never[]) => Error,
  message: RegExp,
): void {
  assert.throws(run, (e: Error) => e instanceof type && message.test(e.message), message.source);
}
