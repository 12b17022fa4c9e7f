/**
 * The forward pass of a llama-style decoder (llama2.c's run.c), one token at a time or as a batched
 * prefill. The model reaches its key/value cache only through {@linkcode KVCache}, so any cache
 * (full precision, mixed precision, recording, GPU) plugs in unchanged.
 *
 * Browser compatible.
 *
 * @example
 * ```ts ignore
 * import { parseCheckpoint, Transformer, Float32KVCache, cacheShape } from "../../mod.ts";
 * const model = new Transformer(parseCheckpoint(bytes));
 * const cache = new Float32KVCache(cacheShape(model.config));
 * const logits = await model.forward(1, 0, cache);
 * ```
 * @module
 */

import { CapacityError, InvalidValueError, ShapeError, showValue, typeName } from "../errors.ts";
import { matmul, matvec, rmsnorm, Rope, siluGate } from "../tensor.ts";
import type { ModelConfig, ModelWeights } from "./checkpoint.ts";
import type { KVCache, KVCacheShape } from "./kv_cache.ts";

/**
 * The cache shape a model needs.
 *
 * @param config the model's hyperparameters
 * @param maxSeqLen positions per layer (defaults to the model's context)
 * @returns the shape for a {@linkcode KVCache}
 */
export function cacheShape(config: ModelConfig, maxSeqLen?: number): KVCacheShape {
  // a missing config read `seqLen` of undefined, a TypeError
  if (typeof config !== "object" || config === null) {
    throw new InvalidValueError(`config is ${showValue(config)}, expected a model's ModelConfig`);
  }
  maxSeqLen ??= config.seqLen;
  return {
    nLayers: config.nLayers,
    nHeads: config.nHeads,
    nKvHeads: config.nKvHeads,
    headDim: config.headDim,
    maxSeqLen,
  };
}

/**
 * Throws ShapeError when a cache's layers, heads or head dimension differ from the model's.
 * @param c the model's configuration
 * @param s the cache's shape
 */
export function checkCacheFits(c: ModelConfig, s: KVCacheShape): void {
  for (
    const [what, mine, theirs] of [
      ["layers", c.nLayers, s.nLayers],
      ["query heads", c.nHeads, s.nHeads],
      ["KV heads", c.nKvHeads, s.nKvHeads],
      ["head dimension", c.headDim, s.headDim],
    ] as const
  ) {
    if (mine !== theirs) throw new ShapeError(`cache has ${theirs} ${what}, the model ${mine}`);
  }
}

/** A llama2.c-style transformer over loaded weights. */
export class Transformer {
  /** The model's hyperparameters. */
  readonly config: ModelConfig;
  readonly #w: ModelWeights;
  readonly #rope: Rope;
  // scratch for one token, reused across calls
  readonly #x: Float32Array;
  readonly #xb: Float32Array;
  readonly #att: Float32Array;
  readonly #q: Float32Array;
  readonly #k: Float32Array;
  readonly #v: Float32Array;
  readonly #hb: Float32Array;
  readonly #hb2: Float32Array;
  readonly #logits: Float32Array;
  // forward() keeps its scratch across the cache's await: a second call then would overwrite it
  #inFlight = false;

  /**
   * Creates the instance.
   * @param weights weights from {@linkcode parseCheckpoint}, or built by hand to the same shapes
   * @throws ShapeError naming a tensor (and layer) whose length does not fit the config, or a
   *   config that is not a set of positive integers (dim and n_kv_heads dividing as they must)
   */
  constructor(weights: ModelWeights) {
    _checkWeights(weights);
    this.#w = weights;
    const c = (this.config = weights.config);
    this.#rope = new Rope(c.headDim, c.seqLen);
    this.#x = new Float32Array(c.dim);
    this.#xb = new Float32Array(c.dim);
    this.#att = new Float32Array(c.dim);
    this.#q = new Float32Array(c.dim);
    this.#k = new Float32Array(c.kvDim);
    this.#v = new Float32Array(c.kvDim);
    this.#hb = new Float32Array(c.hiddenDim);
    this.#hb2 = new Float32Array(c.hiddenDim);
    this.#logits = new Float32Array(c.vocabSize);
  }

  /**
   * Runs one token at position pos, appending its keys and values to the cache.
   *
   * @param token token id
   * @param pos position; the cache must hold exactly pos positions in every layer
   * @param cache the key/value cache
   * @returns the next-token logits (a buffer reused by the next call)
   * @throws ShapeError for a token or position out of range, or a cache whose shape does not match
   *   the model or that does not hold pos positions in every layer; CapacityError for a full cache;
   *   InvalidValueError while another forward() of this model is in flight (await each call); all
   *   before anything is appended. An error from the cache itself in a later layer (a budget, a
   *   K/V value it refuses, memory that cannot grow) leaves the earlier layers holding the
   *   position: its message then says so, and the cache needs reset() before further use.
   */
  async forward(token: number, pos: number, cache: KVCache): Promise<Float32Array> {
    this.#checkToken(token, pos);
    this.#checkCache(cache, pos, 1);
    if (this.#inFlight) {
      throw new InvalidValueError(
        "forward() called while another forward() of this model is in flight: await it first " +
          "(its scratch buffers are shared)",
      );
    }
    this.#inFlight = true;
    try {
      return await this.#forward(token, pos, cache);
    } catch (e) {
      throw _notePartial(e, cache, this.config.nLayers, pos);
    } finally {
      this.#inFlight = false;
    }
  }

  async #forward(token: number, pos: number, cache: KVCache): Promise<Float32Array> {
    const c = this.config, w = this.#w;
    const x = this.#x, xb = this.#xb;
    x.set(w.tokenEmbedding.subarray(token * c.dim, (token + 1) * c.dim));
    for (let l = 0; l < c.nLayers; l++) {
      rmsnorm(xb, x, w.rmsAtt[l]);
      matvec(this.#q, xb, w.wq[l], c.dim, c.dim);
      matvec(this.#k, xb, w.wk[l], c.kvDim, c.dim);
      matvec(this.#v, xb, w.wv[l], c.kvDim, c.dim);
      this.#rope.apply(this.#q, pos);
      this.#rope.apply(this.#k, pos);
      cache.append(l, pos, this.#k, this.#v);
      const pending = cache.attend(l, this.#q, this.#att);
      if (pending) await pending;
      matvec(xb, this.#att, w.wo[l], c.dim, c.dim);
      for (let i = 0; i < c.dim; i++) x[i] += xb[i];
      this.#feedForward(x, l);
    }
    rmsnorm(x, x, w.rmsFinal);
    matvec(this.#logits, x, w.classifier, c.vocabSize, c.dim);
    return this.#logits;
  }

  /**
   * Runs tokens at positions startPos… as one batch: the projections of each layer run as matrix
   * products over all tokens, attention runs token by token (causal) through the cache.
   *
   * @param tokens token ids
   * @param startPos position of the first token; the cache must hold exactly that many
   * @param cache the key/value cache
   * @returns logits for every token, tokens.length × vocabSize
   * @throws as {@linkcode Transformer.forward}: its own checks before anything is appended; an
   *   error from the cache midway names the layers and positions it left appended
   */
  async prefill(
    tokens: ArrayLike<number>,
    startPos: number,
    cache: KVCache,
  ): Promise<Float32Array> {
    if (typeof tokens?.length !== "number") {
      throw new InvalidValueError(`tokens is ${typeName(tokens)}, expected an array of token ids`);
    }
    for (let i = 0; i < tokens.length; i++) this.#checkToken(tokens[i], startPos + i);
    this.#checkCache(cache, startPos, tokens.length);
    try {
      return await this.#prefill(tokens, startPos, cache);
    } catch (e) {
      throw _notePartial(e, cache, this.config.nLayers, startPos);
    }
  }

  async #prefill(
    tokens: ArrayLike<number>,
    startPos: number,
    cache: KVCache,
  ): Promise<Float32Array> {
    const c = this.config, w = this.#w, n = tokens.length;
    const x = new Float32Array(n * c.dim);
    const xb = new Float32Array(n * c.dim);
    const q = new Float32Array(n * c.dim);
    const k = new Float32Array(n * c.kvDim);
    const v = new Float32Array(n * c.kvDim);
    const att = new Float32Array(n * c.dim);
    for (let i = 0; i < n; i++) {
      x.set(w.tokenEmbedding.subarray(tokens[i] * c.dim, (tokens[i] + 1) * c.dim), i * c.dim);
    }
    const row = (a: Float32Array, i: number, width: number) =>
      a.subarray(i * width, (i + 1) * width);
    for (let l = 0; l < c.nLayers; l++) {
      for (let i = 0; i < n; i++) rmsnorm(row(xb, i, c.dim), row(x, i, c.dim), w.rmsAtt[l]);
      matmul(q, xb, w.wq[l], n, c.dim, c.dim);
      matmul(k, xb, w.wk[l], n, c.kvDim, c.dim);
      matmul(v, xb, w.wv[l], n, c.kvDim, c.dim);
      for (let i = 0; i < n; i++) {
        const pos = startPos + i;
        this.#rope.apply(row(q, i, c.dim), pos);
        this.#rope.apply(row(k, i, c.kvDim), pos);
        cache.append(l, pos, row(k, i, c.kvDim), row(v, i, c.kvDim));
        const pending = cache.attend(l, row(q, i, c.dim), row(att, i, c.dim));
        if (pending) await pending;
      }
      matmul(xb, att, w.wo[l], n, c.dim, c.dim);
      for (let i = 0; i < n * c.dim; i++) x[i] += xb[i];
      for (let i = 0; i < n; i++) this.#feedForward(row(x, i, c.dim), l);
    }
    const logits = new Float32Array(n * c.vocabSize);
    for (let i = 0; i < n; i++) {
      const xi = row(x, i, c.dim);
      rmsnorm(xi, xi, w.rmsFinal);
      matvec(row(logits, i, c.vocabSize), xi, w.classifier, c.vocabSize, c.dim);
    }
    return logits;
  }

  /** x += W2 (silu(W1 norm(x)) ⊙ W3 norm(x)) for layer l. */
  #feedForward(x: Float32Array, l: number): void {
    const c = this.config, w = this.#w, xb = this.#xb;
    rmsnorm(xb, x, w.rmsFfn[l]);
    matvec(this.#hb, xb, w.w1[l], c.hiddenDim, c.dim);
    matvec(this.#hb2, xb, w.w3[l], c.hiddenDim, c.dim);
    siluGate(this.#hb, this.#hb2);
    matvec(xb, this.#hb, w.w2[l], c.dim, c.hiddenDim);
    for (let i = 0; i < c.dim; i++) x[i] += xb[i];
  }

  /**
   * The cache's own checks run layer by layer, so a mismatch in a later layer (or a full cache
   * midway through a prefill) would leave the earlier layers appended: check it all first.
   */
  #checkCache(cache: KVCache, startPos: number, n: number): void {
    if (typeof cache?.append !== "function" || typeof cache.length !== "function") {
      throw new InvalidValueError(`cache is ${typeName(cache)}, expected a KVCache`);
    }
    const c = this.config, s = cache.shape;
    checkCacheFits(c, s);
    for (let l = 0; l < c.nLayers; l++) {
      const held = cache.length(l);
      if (held !== startPos) {
        throw new ShapeError(`cache layer ${l} holds ${held} positions, expected ${startPos}`);
      }
    }
    if (startPos + n > s.maxSeqLen) {
      throw new CapacityError(
        `${n} positions from ${startPos} need ${startPos + n}, the cache holds ${s.maxSeqLen}`,
      );
    }
  }

  #checkToken(token: number, pos: number): void {
    const c = this.config;
    // a string "3" is named as one, not as if a valid 3 were refused
    const shown = (v: unknown) => typeof v === "string" ? JSON.stringify(v) : String(v);
    if (!Number.isInteger(token) || token < 0 || token >= c.vocabSize) {
      throw new ShapeError(`token id ${shown(token)} out of range [0, ${c.vocabSize})`);
    }
    if (!Number.isInteger(pos) || pos < 0 || pos >= c.seqLen) {
      throw new ShapeError(`position ${shown(pos)} out of range [0, ${c.seqLen})`);
    }
  }
}

/**
 * A cache error midway through a pass leaves the layers before it appended: adds to the error's
 * message which layers hold which positions, so the caller knows to reset() the cache.
 * @param e the error
 * @param cache the cache
 * @param nLayers layers of the model
 * @param from positions the cache held before the pass
 * @returns the error, its message extended when the cache changed
 */
function _notePartial(e: unknown, cache: KVCache, nLayers: number, from: number): unknown {
  const held = Array.from({ length: nLayers }, (_, l) => cache.length(l));
  if (!(e instanceof Error) || held.every((n) => n === from)) return e;
  e.message += ` (the pass stopped midway: layers 0–${nLayers - 1} now hold ${held.join(", ")} ` +
    `positions, from ${from} before it; reset() the cache before using it again)`;
  return e;
}

/** Checks hand-built weights as parseCheckpoint builds them: every tensor of its config's size. */
function _checkWeights(w: ModelWeights): void {
  const c = w?.config;
  if (typeof c !== "object" || c === null) {
    throw new ShapeError(`weights.config is ${typeName(c)}, expected a ModelConfig`);
  }
  for (const k of ["dim", "hiddenDim", "nLayers", "nHeads", "nKvHeads", "vocabSize", "seqLen"]) {
    const v = (c as unknown as Record<string, unknown>)[k];
    if (!Number.isSafeInteger(v) || (v as number) <= 0) {
      throw new ShapeError(`config.${k} is ${v}, expected a positive integer`);
    }
  }
  const headDim = c.dim / c.nHeads;
  if (c.headDim !== headDim || headDim % 2 !== 0 || c.nHeads % c.nKvHeads !== 0) {
    throw new ShapeError(
      `config: dim ${c.dim}, ${c.nHeads} heads, ${c.nKvHeads} KV heads and headDim ${c.headDim} ` +
        `do not fit (headDim = dim / nHeads, even; nKvHeads divides nHeads)`,
    );
  }
  if (c.kvDim !== c.nKvHeads * headDim) {
    throw new ShapeError(`config.kvDim is ${c.kvDim}, expected ${c.nKvHeads * headDim}`);
  }
  const one = (name: string, t: unknown, n: number) => {
    if (!(t instanceof Float32Array) || t.length !== n) {
      const got = t instanceof Float32Array ? `${t.length} floats` : typeName(t);
      throw new ShapeError(`weights.${name} is ${got}, expected a Float32Array of ${n}`);
    }
  };
  const perLayer = (name: keyof ModelWeights, n: number) => {
    const ts = w[name];
    if (!Array.isArray(ts) || ts.length !== c.nLayers) {
      throw new ShapeError(
        `weights.${name} has ${Array.isArray(ts) ? ts.length : typeName(ts)} layers, ` +
          `expected ${c.nLayers}`,
      );
    }
    ts.forEach((t, l) => one(`${name}[${l}]`, t, n));
  };
  const { dim, hiddenDim, vocabSize, kvDim } = c;
  one("tokenEmbedding", w.tokenEmbedding, vocabSize * dim);
  perLayer("rmsAtt", dim);
  perLayer("wq", dim * dim);
  perLayer("wk", kvDim * dim);
  perLayer("wv", kvDim * dim);
  perLayer("wo", dim * dim);
  perLayer("rmsFfn", dim);
  perLayer("w1", hiddenDim * dim);
  perLayer("w2", dim * hiddenDim);
  perLayer("w3", hiddenDim * dim);
  one("rmsFinal", w.rmsFinal, dim);
  one("classifier", w.classifier, vocabSize * dim);
}
