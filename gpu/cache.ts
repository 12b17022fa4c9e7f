/**
 * The GPU-resident paged KV cache. Its page words are exactly the CPU cache's words
 * (core/cache/PAGES.md, codecs/FORMAT.md), so pages move between CPU and GPU without
 * re-quantizing; {@linkcode GpuKVCache.readPage} returns them.
 *
 * Per layer and KV head the cache holds: the first `sinkTokens` positions and a ring of the most
 * recent ones at fp32 in a staging buffer, and older positions in pages of `pageTokens` tokens in
 * the policy's key/value formats in one pool buffer. After each append, while at least
 * `windowTokens + chunk` recent positions are held, the oldest `chunk` of them are quantized on
 * the GPU into the open page (chunk = the largest channel-axis group of the two formats, else 1,
 * so channel groups are encoded only when complete). Attention runs the fused flash-decoding
 * kernels over sinks, ring and pages of all KV heads of a layer in one submission, and reads back
 * only the output vectors. Every buffer is allocated once, at creation, and reused.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { createGpuKVCache, requestGpu } from "./mod.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   const cache = await createGpuKVCache({
 *     gpu,
 *     shape: { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 64 },
 *     policy: { keyFormat: "int8-g8-token", valueFormat: "int8-g8-token", windowTokens: 4, sinkTokens: 1 },
 *   });
 *   cache.append(0, 0, new Float32Array(8).fill(1), new Float32Array(8).fill(2));
 *   const out = new Float32Array(16);
 *   await cache.attend(0, new Float32Array(16).fill(0.5), out);
 *   if (out[0] !== 2) throw new Error("one cached position: the output is its value");
 *   cache.destroy();
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e;
 * }
 * ```
 * @module
 */

import { assertFinite, DeviceError, FormatError, ShapeError } from "../core/errors.ts";
import {
  type CacheMemory,
  checkAppend,
  checkAttend,
  checkCacheShape,
  type KVCache,
  type KVCacheShape,
} from "../core/model/kv_cache.ts";
import { type FormatSpec, getFormat, wordsForLength } from "../codecs/format.ts";
import type { GpuDevice } from "./device.ts";
import { PipelineCache } from "./program.ts";
import { type AttentionGroup, type AttentionSegment, PagedAttention } from "./attention.ts";
import { quantizeProgram } from "./quantize.ts";
import { GrowableBuffer } from "./growable_buffer.ts";
import { dispatchSize, readBack } from "./_io.ts";

/** Which formats the cache stores and how many positions stay at full precision. */
export interface GpuCachePolicy {
  /** Format of keys in pages, e.g. `int8-g32-channel`. */
  keyFormat: string;
  /** Format of values in pages, e.g. `int8-g8-token`. */
  valueFormat: string;
  /** Tokens per page P (default 128); a multiple of every channel-axis group. */
  pageTokens?: number;
  /** First positions kept at fp32 forever (attention sinks; default 4). */
  sinkTokens?: number;
  /** Most recent positions kept at fp32 (default 64). */
  windowTokens?: number;
}

/** Options of {@linkcode createGpuKVCache}. */
export interface GpuKVCacheOptions {
  /** The device. */
  gpu: GpuDevice;
  /** The cache's shape. */
  shape: KVCacheShape;
  /** Formats and full-precision window. */
  policy: GpuCachePolicy;
  /** Pipeline cache to share with other GPU work (default: a new one). */
  pipelines?: PipelineCache;
}

/** One page's words as stored (and as the CPU cache stores them). */
export interface GpuPageWords {
  /** Key block: wordsFor(keyFormat, P·d) words. */
  keyWords: Uint32Array;
  /** Value block: wordsFor(valueFormat, P·d) words. */
  valueWords: Uint32Array;
  /** Valid tokens in the page. */
  tokens: number;
}

const FP32 = getFormat("fp32");

/**
 * Creates a {@linkcode GpuKVCache} and compiles its kernels, so that append and attend never wait
 * for a compilation.
 *
 * @param options device, shape, policy and an optional shared pipeline cache
 * @returns the cache
 * @throws {FormatError} for an unknown format or one that cannot be paged per head
 * @throws {ShapeError} for a shape or page size the formats do not fit
 * @throws {DeviceError} when the device is lost or the pool exceeds its buffer limits
 */
export async function createGpuKVCache(options: GpuKVCacheOptions): Promise<GpuKVCache> {
  const pipelines = options.pipelines ?? new PipelineCache(options.gpu);
  const cache = new GpuKVCache(options, pipelines);
  await cache.ready();
  return cache;
}

/** A paged mixed-precision KV cache whose pages live on the GPU. */
export class GpuKVCache implements KVCache {
  readonly shape: KVCacheShape;
  /** The policy with its defaults filled in. */
  readonly policy: Required<GpuCachePolicy>;
  /** Key format of pages. */
  readonly keyFormat: FormatSpec;
  /** Value format of pages. */
  readonly valueFormat: FormatSpec;
  /** Positions moved from the ring to a page at a time. */
  readonly chunk: number;
  readonly #gpu: GpuDevice;
  readonly #pipelines: PipelineCache;
  readonly #attention: PagedAttention;
  readonly #ringSlots: number;
  readonly #slots: number;
  readonly #pagesPerHead: number;
  readonly #keyPageWords: number;
  readonly #valuePageWords: number;
  readonly #pool: GPUBuffer;
  readonly #staging: GPUBuffer;
  readonly #q: GPUBuffer;
  readonly #out: GPUBuffer;
  readonly #readback: GPUBuffer;
  readonly #jobs: GrowableBuffer;
  #quantizeKey: GPUComputePipeline | undefined;
  #quantizeValue: GPUComputePipeline | undefined;
  // per layer: positions held, ring start, recent positions in the ring, positions in pages
  readonly #length: Int32Array;
  readonly #ringHead: Int32Array;
  readonly #recent: Int32Array;
  readonly #paged: Int32Array;
  #busy = false;

  /**
   * Creates the cache and allocates its buffers; prefer {@linkcode createGpuKVCache}, which also
   * compiles the kernels.
   * @param options device, shape and policy
   * @param pipelines pipeline cache
   */
  constructor(options: GpuKVCacheOptions, pipelines: PipelineCache) {
    const { gpu, shape } = options;
    checkCacheShape(shape);
    gpu.check("creating the GPU cache");
    this.shape = { ...shape };
    const p = options.policy;
    this.policy = {
      keyFormat: p.keyFormat,
      valueFormat: p.valueFormat,
      pageTokens: p.pageTokens ?? 128,
      sinkTokens: p.sinkTokens ?? 4,
      windowTokens: p.windowTokens ?? 64,
    };
    const { pageTokens: P, sinkTokens: S, windowTokens: W } = this.policy;
    for (const [k, v] of [["pageTokens", P], ["sinkTokens", S], ["windowTokens", W]] as const) {
      if (!Number.isInteger(v) || v < (k === "pageTokens" ? 1 : 0)) {
        throw new ShapeError(
          `policy ${k} is ${v}, expected a ${
            k === "pageTokens" ? "positive" : "non-negative"
          } integer`,
        );
      }
    }
    this.keyFormat = getFormat(p.keyFormat);
    this.valueFormat = getFormat(p.valueFormat);
    const d = shape.headDim;
    let chunk = 1;
    for (const f of [this.keyFormat, this.valueFormat]) {
      if (f.axis === "heads") {
        throw new FormatError(`format ${f.name} groups across KV heads; GPU pages are per head`);
      }
      if (f.axis === "channel") {
        if (P % f.group !== 0) {
          throw new ShapeError(`pageTokens ${P} is not a multiple of ${f.name}'s group ${f.group}`);
        }
        chunk = Math.max(chunk, f.group);
      } else if (d % f.group !== 0) {
        throw new ShapeError(`headDim ${d} is not a multiple of ${f.name}'s group ${f.group}`);
      }
    }
    this.chunk = chunk;
    this.#ringSlots = Math.ceil((W + chunk) / chunk) * chunk;
    this.#slots = S + this.#ringSlots;
    this.#pagesPerHead = Math.ceil(shape.maxSeqLen / P);
    this.#keyPageWords = wordsForLength(this.keyFormat, P * d);
    this.#valuePageWords = wordsForLength(this.valueFormat, P * d);
    const heads = shape.nLayers * shape.nKvHeads;
    const poolBytes = heads * this.#pagesPerHead * (this.#keyPageWords + this.#valuePageWords) * 4;
    const stagingBytes = heads * 2 * this.#slots * d * 4;
    const limit = gpu.device.limits.maxStorageBufferBindingSize;
    if (poolBytes > limit || stagingBytes > limit) {
      throw new DeviceError(
        `GPU cache needs a ${
          Math.max(poolBytes, stagingBytes)
        }-byte buffer; the device allows ${limit}`,
      );
    }
    this.#gpu = gpu;
    this.#pipelines = pipelines;
    const dev = gpu.device;
    const S_ = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    this.#pool = dev.createBuffer({ size: Math.max(16, poolBytes), usage: S_, label: "kv pages" });
    this.#staging = dev.createBuffer({
      size: Math.max(16, stagingBytes),
      usage: S_,
      label: "kv fp32",
    });
    const qBytes = shape.nHeads * d * 4;
    this.#q = dev.createBuffer({ size: qBytes, usage: S_, label: "queries" });
    this.#out = dev.createBuffer({ size: qBytes, usage: S_, label: "attention out" });
    this.#readback = dev.createBuffer({
      size: Math.max(qBytes, this.#keyPageWords * 4, this.#valuePageWords * 4),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: "readback",
    });
    this.#jobs = new GrowableBuffer(
      dev,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      "quantize jobs",
    );
    this.#attention = new PagedAttention(gpu, pipelines);
    this.#length = new Int32Array(shape.nLayers);
    this.#ringHead = new Int32Array(shape.nLayers);
    this.#recent = new Int32Array(shape.nLayers);
    this.#paged = new Int32Array(shape.nLayers);
  }

  /**
   * Compiles every kernel the cache uses (called by {@linkcode createGpuKVCache}).
   * @returns when the kernels are ready
   */
  async ready(): Promise<void> {
    const { headDim, nHeads, nKvHeads } = this.shape;
    const dims = { headDim, queriesPerKv: nHeads / nKvHeads, pageTokens: this.policy.pageTokens };
    const k = this.keyFormat, v = this.valueFormat;
    [this.#quantizeKey, this.#quantizeValue] = await Promise.all([
      this.#pipelines.get(quantizeProgram(k)),
      this.#pipelines.get(quantizeProgram(v)),
      this.#pipelines.get(this.#attention.program(k, v, dims)),
      this.#pipelines.get(this.#attention.program(FP32, FP32, dims)),
      this.#pipelines.get(this.#attention.mergeProgram(headDim)),
    ]);
  }

  length(layer: number): number {
    return this.#length[layer];
  }

  /**
   * Positions of `layer` held in pages (quantized); the rest are sinks and the fp32 ring.
   * @param layer layer index
   * @returns positions in pages
   */
  pagedLength(layer: number): number {
    return this.#paged[layer];
  }

  // word offsets of (layer, head) in the staging buffer (keys; values follow) and the pool
  #stagingBase(layer: number, head: number): number {
    return (layer * this.shape.nKvHeads + head) * 2 * this.#slots * this.shape.headDim;
  }
  #pageBase(layer: number, head: number, page: number): number {
    const per = this.#keyPageWords + this.#valuePageWords;
    return ((layer * this.shape.nKvHeads + head) * this.#pagesPerHead + page) * per;
  }

  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    checkAppend(this.shape, layer, pos, this.#length[layer], k, v);
    assertFinite(k, "k");
    assertFinite(v, "v");
    this.#gpu.check("append");
    if (this.#quantizeKey === undefined) {
      throw new DeviceError("GPU cache kernels not compiled: create it with createGpuKVCache()");
    }
    const { nKvHeads, headDim: d } = this.shape;
    const S = this.policy.sinkTokens;
    let slot: number;
    if (pos < S) slot = pos;
    else slot = S + (this.#ringHead[layer] + this.#recent[layer]) % this.#ringSlots;
    const queue = this.#gpu.device.queue;
    for (let h = 0; h < nKvHeads; h++) {
      const base = (this.#stagingBase(layer, h) + slot * d) * 4;
      queue.writeBuffer(
        this.#staging,
        base,
        k.buffer as ArrayBuffer,
        k.byteOffset + h * d * 4,
        d * 4,
      );
      queue.writeBuffer(
        this.#staging,
        base + this.#slots * d * 4,
        v.buffer as ArrayBuffer,
        v.byteOffset + h * d * 4,
        d * 4,
      );
    }
    if (pos >= S) this.#recent[layer]++;
    this.#length[layer] = pos + 1;
    if (this.#recent[layer] - this.policy.windowTokens >= this.chunk) this.#evict(layer);
  }

  // quantizes the oldest chunk of the ring into the open page of every KV head of `layer`
  #evict(layer: number): void {
    const { nKvHeads, headDim: d } = this.shape;
    const P = this.policy.pageTokens, S = this.policy.sinkTokens, C = this.chunk;
    const page = Math.floor(this.#paged[layer] / P), t0 = this.#paged[layer] % P;
    const slot0 = S + this.#ringHead[layer];
    const jobs: number[][] = [[], []];
    for (const [which, f] of [[0, this.keyFormat], [1, this.valueFormat]] as const) {
      const rowWords = f.axis === "channel" ? 0 : wordsForLength(f, d);
      for (let h = 0; h < nKvHeads; h++) {
        const src = this.#stagingBase(layer, h) + which * this.#slots * d + slot0 * d;
        const dst = this.#pageBase(layer, h, page) + which * this.#keyPageWords;
        const out = jobs[which];
        if (f.axis === "channel") {
          // group gg of channel c covers tokens t0 + gg·G .. of the page: element c·P + t
          for (let c = 0; c < d; c++) {
            for (let g = 0; g < C / f.group; g++) {
              const t = t0 + g * f.group;
              out.push(
                src + g * f.group * d + c,
                d,
                dst + ((c * P + t) / f.group) * f.wordsPerGroup,
                0,
              );
            }
          }
        } else {
          for (let i = 0; i < C; i++) {
            for (let g = 0; g < d / f.group; g++) {
              out.push(
                src + i * d + g * f.group,
                1,
                dst + (t0 + i) * rowWords + g * f.wordsPerGroup,
                0,
              );
            }
          }
        }
      }
    }
    const dev = this.#gpu.device;
    const keyJobs = jobs[0].length / 4, valueJobs = jobs[1].length / 4;
    const align = dev.limits.minStorageBufferOffsetAlignment;
    const valueOffset = Math.ceil((keyJobs * 16) / align) * align;
    const data = new Uint32Array((valueOffset / 4) + jobs[1].length);
    data.set(jobs[0]);
    data.set(jobs[1], valueOffset / 4);
    const jobBuf = this.#jobs.ensure(data.byteLength);
    dev.queue.writeBuffer(jobBuf, 0, data);
    const enc = dev.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (
      const [pipeline, offset, count] of [
        [this.#quantizeKey!, 0, keyJobs],
        [this.#quantizeValue!, valueOffset, valueJobs],
      ] as const
    ) {
      pass.setPipeline(pipeline);
      pass.setBindGroup(
        0,
        dev.createBindGroup({
          layout: pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: this.#staging } },
            { binding: 1, resource: { buffer: this.#pool } },
            { binding: 2, resource: { buffer: jobBuf, offset, size: count * 16 } },
          ],
        }),
      );
      pass.dispatchWorkgroups(
        ...dispatchSize(count, quantizeProgram(this.keyFormat).workgroupSize),
      );
    }
    pass.end();
    dev.queue.submit([enc.finish()]);
    this.#ringHead[layer] = (this.#ringHead[layer] + C) % this.#ringSlots;
    this.#recent[layer] -= C;
    this.#paged[layer] += C;
  }

  // the page table of one KV head: sinks, the ring's (at most two) runs, full and open pages
  #segments(layer: number, h: number): AttentionSegment[] {
    const d = this.shape.headDim, P = this.policy.pageTokens, S = this.policy.sinkTokens;
    const segs: AttentionSegment[] = [];
    const sb = this.#stagingBase(layer, h), vOff = this.#slots * d;
    const fp32 = (slot: number, tokens: number) =>
      segs.push({
        words: this.#staging,
        keyFormat: FP32,
        valueFormat: FP32,
        keyBase: sb + slot * d,
        valueBase: sb + vOff + slot * d,
        tokens,
      });
    const sinks = Math.min(this.#length[layer], S);
    if (sinks > 0) fp32(0, sinks);
    const head = this.#ringHead[layer], recent = this.#recent[layer];
    const first = Math.min(recent, this.#ringSlots - head);
    if (first > 0) fp32(S + head, first);
    if (recent > first) fp32(S, recent - first);
    for (let page = 0, left = this.#paged[layer]; left > 0; page++, left -= P) {
      const base = this.#pageBase(layer, h, page);
      segs.push({
        words: this.#pool,
        keyFormat: this.keyFormat,
        valueFormat: this.valueFormat,
        keyBase: base,
        valueBase: base + this.#keyPageWords,
        tokens: Math.min(P, left),
      });
    }
    return segs;
  }

  async attend(layer: number, q: Float32Array, out: Float32Array): Promise<void> {
    checkAttend(this.shape, layer, q, out);
    if (this.#length[layer] === 0) throw new ShapeError(`attend on empty layer ${layer}`);
    this.#gpu.check("attend");
    if (this.#busy) {
      throw new DeviceError("attend() called again before the previous call finished");
    }
    this.#busy = true;
    try {
      const { nHeads, nKvHeads, headDim: d } = this.shape;
      const Q = nHeads / nKvHeads;
      const dev = this.#gpu.device;
      dev.queue.writeBuffer(this.#q, 0, q.buffer as ArrayBuffer, q.byteOffset, q.byteLength);
      const groups: AttentionGroup[] = [];
      for (let h = 0; h < nKvHeads; h++) {
        groups.push({
          queryOffset: h * Q * d,
          outputOffset: h * Q * d,
          segments: this.#segments(layer, h),
        });
      }
      const enc = dev.createCommandEncoder();
      await this.#attention.encode(enc, this.#q, this.#out, groups, {
        headDim: d,
        queriesPerKv: Q,
        pageTokens: this.policy.pageTokens,
      });
      out.set(
        new Float32Array(await readBack(this.#gpu, this.#out, this.#readback, q.byteLength, enc)),
      );
    } finally {
      this.#busy = false;
    }
  }

  /**
   * Reads one page's words back from the GPU: the same words the CPU cache holds for it.
   * @param layer layer index
   * @param kvHead KV head index
   * @param page page index (pages fill in order)
   * @returns the key and value blocks and the valid token count
   * @throws {ShapeError} for a page that holds no tokens
   */
  async readPage(layer: number, kvHead: number, page: number): Promise<GpuPageWords> {
    const P = this.policy.pageTokens;
    const tokens = Math.min(P, this.#paged[layer] - page * P);
    if (
      !(layer >= 0 && layer < this.shape.nLayers) ||
      !(kvHead >= 0 && kvHead < this.shape.nKvHeads) || !(tokens > 0)
    ) {
      throw new ShapeError(`no page ${page} of layer ${layer}, KV head ${kvHead}`);
    }
    this.#gpu.check("readPage");
    const base = this.#pageBase(layer, kvHead, page) * 4;
    const keyWords = new Uint32Array(
      await readBack(
        this.#gpu,
        this.#pool,
        this.#readback,
        this.#keyPageWords * 4,
        undefined,
        base,
      ),
    );
    const valueWords = new Uint32Array(
      await readBack(
        this.#gpu,
        this.#pool,
        this.#readback,
        this.#valuePageWords * 4,
        undefined,
        base + this.#keyPageWords * 4,
      ),
    );
    return { keyWords, valueWords, tokens };
  }

  memory(): CacheMemory {
    let positions = 0;
    for (const n of this.#length) positions += n;
    const elements = positions * this.shape.nKvHeads * this.shape.headDim * 2;
    const bytes = this.#pool.size + this.#staging.size + this.#q.size + this.#out.size +
      this.#readback.size + this.#jobs.byteLength + this.#attention.byteLength;
    return { bytes, elements, bitsPerElement: elements === 0 ? 0 : (8 * bytes) / elements };
  }

  reset(): void {
    this.#length.fill(0);
    this.#ringHead.fill(0);
    this.#recent.fill(0);
    this.#paged.fill(0);
    if (this.#gpu.lost) return;
    // words past the valid tokens are zero (PAGES.md)
    const enc = this.#gpu.device.createCommandEncoder();
    enc.clearBuffer(this.#pool);
    this.#gpu.device.queue.submit([enc.finish()]);
  }

  /** Frees the cache's GPU buffers. */
  destroy(): void {
    for (const b of [this.#pool, this.#staging, this.#q, this.#out, this.#readback]) b.destroy();
    this.#jobs.destroy();
    this.#attention.destroy();
  }
}
