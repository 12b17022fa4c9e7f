/**
 * A full-precision KV cache that also records every query, so after a forward pass over a sequence
 * the analyzer has, per layer, q for every query head and position and k, v for every position.
 * It plugs into the model through the {@linkcode KVCache} interface; the model does not change.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { RecordingKVCache } from "./recording_cache.ts";
 * const cache = new RecordingKVCache({ nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 2, maxSeqLen: 4 });
 * cache.append(0, 0, new Float32Array([1, 0]), new Float32Array([3, 4]));
 * cache.attend(0, new Float32Array([1, 2, 3, 4]), new Float32Array(4));
 * if (cache.queries(0)[3] !== 4) throw new Error("the query of position 0 is recorded");
 * ```
 * @module
 */

import {
  type CacheMemory,
  checkAttend,
  checkCacheBytes,
  checkCacheShape,
  checkLayer,
  Float32KVCache,
  type KVCache,
  type KVCacheShape,
} from "./model/kv_cache.ts";
import { ShapeError } from "./errors.ts";

/** A float32 cache that records the queries of every attend call. */
export class RecordingKVCache implements KVCache {
  readonly shape: KVCacheShape;
  /** The underlying float32 cache: keys and values, [layer][kvHead][position][headDim]. */
  readonly inner: Float32KVCache;
  readonly #queries: Float32Array[];
  /** Per layer, 1 where a position's query was recorded since the last reset. */
  readonly #queried: Uint8Array[];

  /**
   * Creates an empty recording cache.
   * @param shape the cache's shape
   * @throws {ShapeError} for a dimension that is not a positive integer
   * @throws {CapacityError} when one layer's queries (nHeads / nKvHeads times a layer's keys), the
   *   keys or the values would exceed MAX_BUFFER_BYTES, or all of them MAX_FIXED_BYTES; nothing is
   *   allocated
   */
  constructor(shape: KVCacheShape) {
    checkCacheShape(shape);
    // the query buffers are checked with the inner cache's: a shape Float32KVCache accepts can
    // still need queries too large to allocate (a RangeError, after the inner cache was built)
    const kvBytes = 4 * shape.nLayers * shape.nKvHeads * shape.maxSeqLen * shape.headDim;
    checkCacheBytes("RecordingKVCache", shape, [
      { name: "keys", bytes: kvBytes },
      { name: "values", bytes: kvBytes },
      {
        name: "queries of one layer",
        bytes: 4 * shape.maxSeqLen * shape.nHeads * shape.headDim,
        count: shape.nLayers,
      },
      { name: "attention scores", bytes: 8 * shape.maxSeqLen },
      { name: "layer lengths", bytes: 4 * shape.nLayers },
      { name: "query marks of one layer", bytes: shape.maxSeqLen, count: shape.nLayers },
    ]);
    this.inner = new Float32KVCache(shape);
    this.shape = this.inner.shape;
    const qDim = shape.nHeads * shape.headDim;
    this.#queries = Array.from(
      { length: shape.nLayers },
      () => new Float32Array(shape.maxSeqLen * qDim),
    );
    this.#queried = Array.from({ length: shape.nLayers }, () => new Uint8Array(shape.maxSeqLen));
  }

  length(layer: number): number {
    return this.inner.length(layer);
  }

  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    this.inner.append(layer, pos, k, v);
  }

  attend(layer: number, q: Float32Array, out: Float32Array): void {
    checkAttend(this.shape, layer, this.inner.length(layer), q, out);
    const pos = this.inner.length(layer) - 1;
    this.#queries[layer].set(q, pos * q.length);
    this.#queried[layer][pos] = 1;
    this.inner.attend(layer, q, out);
  }

  /**
   * The first position of a layer whose query was not recorded: an append with no attend after
   * it, whose slot in {@linkcode queries} holds zeros or a query of the sequence before a reset.
   * @param layer layer index
   * @returns that position, or length(layer) when every held position has its query
   */
  firstUnqueried(layer: number): number {
    checkLayer(this.shape, layer);
    const n = this.inner.length(layer), marks = this.#queried[layer];
    for (let p = 0; p < n; p++) if (!marks[p]) return p;
    return n;
  }

  /**
   * Recorded queries of one layer, [position][nHeads][headDim]; valid for positions <
   * {@linkcode firstUnqueried}(layer).
   * @param layer layer index
   * @returns a view of the recorded queries
   */
  queries(layer: number): Float32Array {
    checkLayer(this.shape, layer);
    return this.#queries[layer];
  }

  /**
   * Keys of one (layer, KV head), [position][headDim], for the positions held.
   * @param layer layer index
   * @param kvHead KV head index
   * @returns a view of the keys
   */
  keys(layer: number, kvHead: number): Float32Array {
    const base = this.inner.headOffset(layer, kvHead);
    return this.inner.keys.subarray(base, base + this.length(layer) * this.shape.headDim);
  }

  /**
   * Values of one (layer, KV head), [position][headDim], for the positions held.
   * @param layer layer index
   * @param kvHead KV head index
   * @returns a view of the values
   */
  values(layer: number, kvHead: number): Float32Array {
    const base = this.inner.headOffset(layer, kvHead);
    return this.inner.values.subarray(base, base + this.length(layer) * this.shape.headDim);
  }

  memory(): CacheMemory {
    const m = this.inner.memory();
    let qBytes = 0;
    for (const q of this.#queries) qBytes += q.byteLength;
    for (const m of this.#queried) qBytes += m.byteLength;
    return {
      ...m,
      bytes: m.bytes + qBytes,
      bitsPerElement: m.elements ? 8 * (m.bytes + qBytes) / m.elements : 0,
    };
  }

  reset(): void {
    this.inner.reset();
    for (const m of this.#queried) m.fill(0);
  }
}

/**
 * Throws ShapeError unless every layer holds n positions, each with its recorded query: what the
 * verifier, the analyzer and a replay read.
 * @param cache the recording
 * @param n positions expected in every layer
 */
export function checkRecorded(cache: RecordingKVCache, n: number): void {
  for (let l = 0; l < cache.shape.nLayers; l++) {
    if (cache.length(l) !== n) {
      throw new ShapeError(`layer ${l} holds ${cache.length(l)} positions, layer 0 ${n}`);
    }
  }
  for (let l = 0; l < cache.shape.nLayers; l++) {
    const p = cache.firstUnqueried(l);
    if (p < n) {
      throw new ShapeError(
        `layer ${l} position ${p} has no recorded query: attend was not called after its append`,
      );
    }
  }
}
