// A CPU paged cache with the GPU cache's policy, for cross-checks: positions that the policy moves
// to pages are encoded and decoded with the WASM codecs group by group (groups are independent, so
// this equals encoding whole pages), and attention is attendHead() over the decoded values —
// the computation core/cache's TS reference path performs.
import {
  attendHead,
  type CacheMemory,
  checkAppend,
  checkAttend,
  type KVCache,
  type KVCacheShape,
} from "../../core/model/kv_cache.ts";
import { getFormat, wasmCodec } from "../../codecs/mod.ts";
import type { GpuUniformPolicy } from "../../gpu/mod.ts";

export class CpuPagedReference implements KVCache {
  readonly shape: KVCacheShape;
  readonly #keys: Float32Array[][];
  readonly #values: Float32Array[][];
  readonly #length: Int32Array;
  readonly #paged: Int32Array;
  readonly #policy: Required<Omit<GpuUniformPolicy, "tiers" | "windowFormat" | "stagingFormat">>;
  readonly #chunk: number;

  constructor(shape: KVCacheShape, policy: GpuUniformPolicy) {
    this.shape = shape;
    this.#policy = { pageTokens: 128, sinkTokens: 4, windowTokens: 64, ...policy };
    let chunk = 1;
    for (const f of [policy.keyFormat, policy.valueFormat].map(getFormat)) {
      if (f.axis === "channel") chunk = Math.max(chunk, f.group);
    }
    this.#chunk = chunk;
    const heads = () =>
      Array.from(
        { length: shape.nKvHeads },
        () => new Float32Array(shape.maxSeqLen * shape.headDim),
      );
    this.#keys = Array.from({ length: shape.nLayers }, heads);
    this.#values = Array.from({ length: shape.nLayers }, heads);
    this.#length = new Int32Array(shape.nLayers);
    this.#paged = new Int32Array(shape.nLayers);
  }

  length(layer: number): number {
    return this.#length[layer];
  }

  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    checkAppend(this.shape, layer, pos, this.#length[layer], k, v);
    const d = this.shape.headDim;
    for (let h = 0; h < this.shape.nKvHeads; h++) {
      this.#keys[layer][h].set(k.subarray(h * d, (h + 1) * d), pos * d);
      this.#values[layer][h].set(v.subarray(h * d, (h + 1) * d), pos * d);
    }
    this.#length[layer] = pos + 1;
    const { sinkTokens: S, windowTokens: W } = this.#policy;
    const recent = this.#length[layer] - Math.min(this.#length[layer], S) - this.#paged[layer];
    if (recent - W >= this.#chunk) {
      const t0 = S + this.#paged[layer];
      for (let h = 0; h < this.shape.nKvHeads; h++) {
        this.#quantize(this.#keys[layer][h], this.#policy.keyFormat, t0);
        this.#quantize(this.#values[layer][h], this.#policy.valueFormat, t0);
      }
      this.#paged[layer] += this.#chunk;
    }
  }

  // replaces tokens [t0, t0 + chunk) by their encode-decode round trip, group by group
  #quantize(x: Float32Array, name: string, t0: number): void {
    const f = getFormat(name), codec = wasmCodec(name), d = this.shape.headDim, C = this.#chunk;
    if (f.axis === "channel") {
      const col = new Float32Array(f.group), words = new Uint32Array(f.wordsPerGroup);
      for (let c = 0; c < d; c++) {
        for (let g = 0; g < C; g += f.group) {
          for (let i = 0; i < f.group; i++) col[i] = x[(t0 + g + i) * d + c];
          words.fill(0);
          codec.encodeInto(col, words);
          codec.decodeWords(words, f.group, col);
          for (let i = 0; i < f.group; i++) x[(t0 + g + i) * d + c] = col[i];
        }
      }
    } else {
      const rows = x.subarray(t0 * d, (t0 + C) * d);
      const block = codec.encode(rows);
      codec.decode(block, rows);
    }
  }

  attend(layer: number, q: Float32Array, out: Float32Array): void {
    checkAttend(this.shape, layer, this.#length[layer], q, out);
    const { nHeads, nKvHeads, headDim: d } = this.shape;
    const n = this.#length[layer], Q = nHeads / nKvHeads;
    const scores = new Float32Array(n);
    for (let h = 0; h < nHeads; h++) {
      const kv = Math.floor(h / Q);
      attendHead(
        q.subarray(h * d, (h + 1) * d),
        this.#keys[layer][kv].subarray(0, n * d),
        this.#values[layer][kv].subarray(0, n * d),
        n,
        d,
        scores,
        out.subarray(h * d, (h + 1) * d),
      );
    }
  }

  memory(): CacheMemory {
    return { bytes: 0, elements: 0, bitsPerElement: 0 };
  }

  reset(): void {
    this.#length.fill(0);
    this.#paged.fill(0);
  }
}
