/**
 * The interface between the transformer and its key/value cache, and the full-precision reference
 * cache. The model talks to its cache only through {@linkcode KVCache}: compressed caches, the
 * analyzer's recording cache and the GPU cache plug in without changes to the model.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { Float32KVCache } from "./kv_cache.ts";
 * const cache = new Float32KVCache({ nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 2, maxSeqLen: 4 });
 * cache.append(0, 0, new Float32Array([1, 0]), new Float32Array([3, 4]));
 * const out = new Float32Array(4);
 * cache.attend(0, new Float32Array([1, 1, 0, 1]), out);
 * if (out[0] !== 3 || out[3] !== 4) throw new Error("one cached position: output is its value");
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
import { attention } from "../tensor.ts";

/** Shape of a cache: one slot per layer, KV head and position. */
export interface KVCacheShape {
  /** Transformer layers. */
  nLayers: number;
  /** Query heads; a multiple of nKvHeads (grouped-query attention). */
  nHeads: number;
  /** Key/value heads. */
  nKvHeads: number;
  /** Elements per head vector. */
  headDim: number;
  /** Positions the cache can hold per layer. */
  maxSeqLen: number;
}

/** Bytes a cache holds, all metadata counted. */
export interface CacheMemory {
  /** Bytes in buffers that hold cached data, scales and page tables. */
  bytes: number;
  /** K and V elements held (positions × kvDim × 2, summed over layers). */
  elements: number;
  /** 8 × bytes / elements (0 when empty). */
  bitsPerElement: number;
}

/**
 * A key/value cache for a decoder-only transformer. Keys arrive after RoPE, so attention over the
 * cache does not depend on where a position is stored.
 */
export interface KVCache {
  /** The cache's shape. */
  readonly shape: KVCacheShape;
  /**
   * Positions held in `layer`.
   * @param layer layer index
   * @returns the number of positions appended to that layer since the last reset
   */
  length(layer: number): number;
  /**
   * Stores the key and value of position `pos` of `layer`, for all KV heads at once.
   * @param layer layer index
   * @param pos position; must equal `length(layer)`
   * @param k nKvHeads × headDim key elements, head-major, after RoPE
   * @param v nKvHeads × headDim value elements, head-major
   */
  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void;
  /**
   * Attention of every query head over every position held in `layer`:
   * out_h = Σ_t softmax_t(q_h·k_t/√d) v_t, where query head h reads KV head
   * ⌊h / (nHeads / nKvHeads)⌋. May complete asynchronously (the GPU cache does).
   * @param layer layer index
   * @param q nHeads × headDim query elements, after RoPE
   * @param out nHeads × headDim outputs, overwritten
   */
  attend(layer: number, q: Float32Array, out: Float32Array): void | Promise<void>;
  /**
   * Bytes held, all metadata counted.
   * @returns the memory report
   */
  memory(): CacheMemory;
  /** Empties every layer; the cache can be reused for a new sequence. */
  reset(): void;
}

/**
 * Checks the arguments of {@linkcode KVCache.append} against a shape and current length; shared by
 * every cache so their errors read the same.
 *
 * @param shape the cache's shape
 * @param layer layer index
 * @param pos position being appended
 * @param length positions already held in that layer
 * @param k key elements
 * @param v value elements
 */
export function checkAppend(
  shape: KVCacheShape,
  layer: number,
  pos: number,
  length: number,
  k: Float32Array,
  v: Float32Array,
): void {
  checkLayer(shape, layer);
  checkF32(k, "k");
  checkF32(v, "v");
  const kvDim = shape.nKvHeads * shape.headDim;
  if (k.length !== kvDim) throw new ShapeError(`k has length ${k.length}, expected ${kvDim}`);
  if (v.length !== kvDim) throw new ShapeError(`v has length ${v.length}, expected ${kvDim}`);
  if (pos !== length) {
    // a string "0" read as "position 0 … out of order: expected 0"
    const shown = typeof pos === "number" ? String(pos) : `${showValue(pos)} (${typeof pos})`;
    throw new ShapeError(
      `position ${shown} appended to layer ${layer} out of order: expected ${length}`,
    );
  }
  if (length >= shape.maxSeqLen) {
    throw new CapacityError(`layer ${layer} is full: capacity is ${shape.maxSeqLen} positions`);
  }
}

/**
 * Checks the arguments of {@linkcode KVCache.attend}: lengths, layer, a layer that holds a position
 * (softmax over no keys has no value), and a finite query (a NaN or infinity names its index).
 *
 * @param shape the cache's shape
 * @param layer layer index
 * @param held positions the layer holds (read before the layer is checked: may be undefined)
 * @param q query elements
 * @param out output elements
 */
export function checkAttend(
  shape: KVCacheShape,
  layer: number,
  held: number | undefined,
  q: Float32Array,
  out: Float32Array,
): void {
  checkLayer(shape, layer);
  checkF32(q, "q");
  checkF32(out, "out");
  if (held === 0) {
    throw new ShapeError(`layer ${layer} holds no positions: append one before attend`);
  }
  const qDim = shape.nHeads * shape.headDim;
  if (q.length !== qDim) throw new ShapeError(`q has length ${q.length}, expected ${qDim}`);
  if (out.length !== qDim) throw new ShapeError(`out has length ${out.length}, expected ${qDim}`);
  for (let i = 0; i < q.length; i++) {
    if (!(Math.abs(q[i]) <= MAX_QUERY_VALUE)) {
      throw new InvalidValueError(
        `q[${i}] is ${q[i]}, expected a finite number within ±2^64 (f32 scores must not overflow)`,
        i,
      );
    }
  }
}

/**
 * Largest query magnitude an attend accepts: with keys within ±65504 (grown by √2 where a cache
 * turns them), head_dim ≤ 2^16 keeps every f32 score below 2^97, far from f32's 2^128 (the WASM
 * kernels' scores once overflowed to Inf and their softmax to NaN for |q| near 1e31).
 */
export const MAX_QUERY_VALUE = 2 ** 64;

// JS callers can pass a plain array or another typed array: refused by name rather than failing
// later as a TypeError or reading float64s as float32s
function checkF32(x: Float32Array, what: string): void {
  if (!(x instanceof Float32Array)) {
    const got = typeName(x);
    throw new ShapeError(`${what} must be a Float32Array, got ${got}`);
  }
}

/**
 * Throws ShapeError unless `layer` is an integer in [0, nLayers).
 *
 * @param shape the cache's shape
 * @param layer layer index
 */
export function checkLayer(shape: KVCacheShape, layer: number): void {
  if (!Number.isInteger(layer) || layer < 0 || layer >= shape.nLayers) {
    throw new ShapeError(`layer ${showValue(layer)} out of range [0, ${shape.nLayers})`);
  }
}

/**
 * Throws ShapeError unless `layer` is an integer in [0, nLayers) and `kvHead` one in
 * [0, nKvHeads).
 *
 * @param shape the cache's shape
 * @param layer layer index
 * @param kvHead KV head index
 */
export function checkHead(shape: KVCacheShape, layer: number, kvHead: number): void {
  checkLayer(shape, layer);
  if (!Number.isInteger(kvHead) || kvHead < 0 || kvHead >= shape.nKvHeads) {
    throw new ShapeError(`KV head ${showValue(kvHead)} out of range [0, ${shape.nKvHeads})`);
  }
}

/**
 * Checks that a shape is usable: positive integers, and heads divisible for grouped-query attention.
 *
 * @param shape the shape to check
 * @throws {ShapeError} naming the first field that is not a positive integer, heads that do not
 *   divide, or a field a shape does not have
 */
export function checkCacheShape(shape: KVCacheShape): void {
  if (typeof shape !== "object" || shape === null) {
    throw new ShapeError(
      `cache shape is ${showValue(shape)}, expected { nLayers, nHeads, nKvHeads, headDim, ` +
        "maxSeqLen }",
    );
  }
  const fields = ["nLayers", "nHeads", "nKvHeads", "headDim", "maxSeqLen"] as const;
  // a misspelt field, or one that belongs elsewhere (a policy's ropeBase), was dropped in silence
  const unknown = Object.keys(shape).find((k) => !(fields as readonly string[]).includes(k));
  if (unknown !== undefined) {
    throw new ShapeError(
      `cache shape has unknown field ${JSON.stringify(unknown)}; the fields are ${
        fields.join(", ")
      }`,
    );
  }
  for (const key of fields) {
    const value = shape[key];
    if (!Number.isInteger(value) || value <= 0) {
      throw new ShapeError(
        `cache shape ${key} is ${showValue(value)}, expected a positive integer`,
      );
    }
  }
  if (shape.nHeads % shape.nKvHeads !== 0) {
    throw new ShapeError(`nHeads ${shape.nHeads} is not a multiple of nKvHeads ${shape.nKvHeads}`);
  }
}

/**
 * Largest single buffer a cache allocates, 2^31 − 1 bytes: a length every engine kvprec runs on
 * accepts (the limit on larger ArrayBuffers depends on the engine and its build).
 */
export const MAX_BUFFER_BYTES = 2 ** 31 - 1;

/**
 * Largest total a cache allocates when it is created, 4 GiB: what a 32-bit process or a WebAssembly
 * memory addresses. A mixed cache's tokens live in pages allocated as they arrive, so fixed buffers
 * past this mean a mistaken shape (millions of layers once filled the JS heap until Deno died of an
 * out-of-memory no caller can catch).
 */
export const MAX_FIXED_BYTES = 2 ** 32;

/** One kind of buffer a cache allocates, for {@linkcode checkCacheBytes}. */
export interface CacheBuffer {
  /** What it holds, for the message. */
  name: string;
  /** Bytes of one. */
  bytes: number;
  /** How many are allocated up front (default 1); 0 for one allocated later, such as a page. */
  count?: number;
}

/**
 * Checks, before a cache allocates anything, that each of its buffers fits
 * {@linkcode MAX_BUFFER_BYTES} and those allocated up front together {@linkcode MAX_FIXED_BYTES}.
 *
 * @param cache the cache's class, for the message
 * @param shape its shape, for the message
 * @param buffers every kind of buffer it allocates
 * @throws {CapacityError} naming the shape, the buffer or total, and the bytes
 */
export function checkCacheBytes(
  cache: string,
  shape: KVCacheShape,
  buffers: readonly CacheBuffer[],
): void {
  const { nLayers, nHeads, nKvHeads, headDim, maxSeqLen } = shape;
  const what = `${cache} of shape ${
    JSON.stringify({ nLayers, nHeads, nKvHeads, headDim, maxSeqLen })
  }`;
  let total = 0;
  for (const { name, bytes, count = 1 } of buffers) {
    if (bytes > MAX_BUFFER_BYTES) {
      throw new CapacityError(
        `${what}: its ${name} would take ${bytes} bytes, over the ${MAX_BUFFER_BYTES} bytes ` +
          `one buffer may hold`,
      );
    }
    total += bytes * count;
  }
  if (total > MAX_FIXED_BYTES) {
    const parts = buffers.filter((b) => (b.count ?? 1) > 0 && b.bytes > 0)
      .map((b) => `${b.name} ${b.bytes * (b.count ?? 1)}`).join(", ");
    throw new CapacityError(
      `${what} would allocate ${total} bytes up front (${parts}), over the limit of ` +
        `${MAX_FIXED_BYTES} bytes`,
    );
  }
}

/**
 * Full-precision reference cache: keys and values as float32, laid out
 * [layer][kvHead][position][headDim] so one head's keys are contiguous.
 */
export class Float32KVCache implements KVCache {
  readonly shape: KVCacheShape;
  /** Keys, [layer][kvHead][position][headDim]. */
  readonly keys: Float32Array;
  /** Values, same layout as keys. */
  readonly values: Float32Array;
  readonly #lengths: Int32Array;
  // float64: a score past f32's 3.4e38 (finite keys near it) became Infinity and softmax NaN
  #scores: Float64Array;

  /**
   * Creates the instance.
   * @param shape the cache's shape; all of maxSeqLen is allocated up front
   * @throws {ShapeError} for a dimension that is not a positive integer
   * @throws {CapacityError} when keys or values would exceed {@linkcode MAX_BUFFER_BYTES}, or all
   *   buffers {@linkcode MAX_FIXED_BYTES}; nothing is allocated
   */
  constructor(shape: KVCacheShape) {
    checkCacheShape(shape);
    const size = shape.nLayers * shape.nKvHeads * shape.maxSeqLen * shape.headDim;
    checkCacheBytes("Float32KVCache", shape, [
      { name: "keys", bytes: 4 * size },
      { name: "values", bytes: 4 * size },
      { name: "attention scores", bytes: 8 * shape.maxSeqLen },
      { name: "layer lengths", bytes: 4 * shape.nLayers },
    ]);
    this.shape = { ...shape };
    this.keys = new Float32Array(size);
    this.values = new Float32Array(size);
    this.#lengths = new Int32Array(shape.nLayers);
    this.#scores = new Float64Array(shape.maxSeqLen);
  }

  length(layer: number): number {
    checkLayer(this.shape, layer);
    return this.#lengths[layer];
  }

  /**
   * Offset of (layer, kvHead, position 0) in {@linkcode keys} and {@linkcode values}.
   * @param layer layer index
   * @param kvHead KV head index
   * @returns the element offset
   * @throws ShapeError for a layer or KV head out of range (the offset would name another head)
   */
  headOffset(layer: number, kvHead: number): number {
    checkHead(this.shape, layer, kvHead);
    const { nKvHeads, maxSeqLen, headDim } = this.shape;
    return ((layer * nKvHeads) + kvHead) * maxSeqLen * headDim;
  }

  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    checkAppend(this.shape, layer, pos, this.#lengths[layer], k, v);
    // the mixed cache checks finiteness with its fp16 range; here a NaN would spread silently
    assertFinite(k, "k");
    assertFinite(v, "v");
    const { nKvHeads, headDim } = this.shape;
    for (let h = 0; h < nKvHeads; h++) {
      const dst = this.headOffset(layer, h) + pos * headDim;
      this.keys.set(k.subarray(h * headDim, (h + 1) * headDim), dst);
      this.values.set(v.subarray(h * headDim, (h + 1) * headDim), dst);
    }
    this.#lengths[layer] = pos + 1;
  }

  attend(layer: number, q: Float32Array, out: Float32Array): void {
    checkAttend(this.shape, layer, this.#lengths[layer], q, out);
    const { nHeads, nKvHeads, headDim } = this.shape;
    const group = nHeads / nKvHeads;
    const n = this.#lengths[layer];
    for (let h = 0; h < nHeads; h++) {
      const base = this.headOffset(layer, Math.floor(h / group));
      attendHead(
        q.subarray(h * headDim, (h + 1) * headDim),
        this.keys.subarray(base, base + n * headDim),
        this.values.subarray(base, base + n * headDim),
        n,
        headDim,
        this.#scores,
        out.subarray(h * headDim, (h + 1) * headDim),
      );
    }
  }

  memory(): CacheMemory {
    let positions = 0;
    for (const n of this.#lengths) positions += n;
    const elements = positions * this.shape.nKvHeads * this.shape.headDim * 2;
    // The reference cache allocates all of maxSeqLen up front; it reports what it allocated.
    const bytes = this.keys.byteLength + this.values.byteLength;
    return { bytes, elements, bitsPerElement: elements === 0 ? 0 : (8 * bytes) / elements };
  }

  reset(): void {
    this.#lengths.fill(0);
  }
}

/**
 * Attention of one query head over n contiguous keys and values (float32, row-major n × d):
 * out = softmax(K q / √d)ᵀ V, with the max subtracted before exp for stability.
 *
 * @param q query, length d
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @param scores at least n elements; overwritten with the attention weights (a Float32Array
 *   stores scores past 3.4e38 as infinities, and the output becomes NaN)
 * @param out output, length d, overwritten
 */
export function attendHead(
  q: Float32Array,
  keys: Float32Array,
  values: Float32Array,
  n: number,
  d: number,
  scores: Float32Array | Float64Array,
  out: Float32Array,
): void {
  attention(q, keys, values, n, d, scores, out);
}
