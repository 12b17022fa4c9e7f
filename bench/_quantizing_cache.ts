/**
 * A full-precision cache that quantizes each appended key and value head with a per-token format
 * chosen per (layer, KV head, position): the realized side of the composed-bound checks
 * (verifier_test.ts, analyzer_report.ts). Per-token formats only (each token quantizes alone).
 */
import { Float32KVCache, type KVCache, type KVCacheShape } from "../core/model/kv_cache.ts";
import { quantizeHead } from "../core/quantize_head.ts";

/** Chooses the format of one (layer, KV head, position). */
export type FormatChoice = (layer: number, head: number, pos: number) => string;

/** Float32KVCache storing quantize-then-decode of every appended head. */
export class QuantizingKVCache implements KVCache {
  readonly shape: KVCacheShape;
  readonly #inner: Float32KVCache;
  constructor(shape: KVCacheShape, readonly choose: FormatChoice) {
    this.shape = shape;
    this.#inner = new Float32KVCache(shape);
  }
  length(layer: number): number {
    return this.#inner.length(layer);
  }
  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    const d = this.shape.headDim, kq = k.slice(), vq = v.slice();
    for (let h = 0; h < this.shape.nKvHeads; h++) {
      const f = this.choose(layer, h, pos);
      kq.set(quantizeHead(k.subarray(h * d, (h + 1) * d), 1, d, f).decoded, h * d);
      vq.set(quantizeHead(v.subarray(h * d, (h + 1) * d), 1, d, f).decoded, h * d);
    }
    this.#inner.append(layer, pos, kq, vq);
  }
  attend(layer: number, q: Float32Array, out: Float32Array): void {
    this.#inner.attend(layer, q, out);
  }
  memory() {
    return this.#inner.memory();
  }
  reset(): void {
    this.#inner.reset();
  }
}
