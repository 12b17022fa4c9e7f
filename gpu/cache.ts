/**
 * The GPU-resident paged KV cache. Its page words are exactly the CPU cache's words
 * (core/cache/PAGES.md, codecs/FORMAT.md), so pages move between CPU and GPU without
 * re-quantizing; {@linkcode GpuKVCache.readPage} returns them.
 *
 * Per layer and KV head the cache holds: the first `sinkTokens` positions and a ring of the most
 * recent ones in a staging buffer at the window format (fp32; fp16 as the CPU cache keeps it by
 * default; or a per-token int format such as int8-g8-token, a budget plan's choice: encoded on the
 * host as the CPU cache encodes it, read by the kernels through the format's decoder and by the
 * quantize kernel as its source), and older positions in pages of `pageTokens` tokens in
 * one pool buffer. With a staging format of its own (the CPU policy's stagingFormat), the ring
 * holds the recent window alone, and a position leaving it waits for its chunk in a buffer of
 * chunk slots at that format: re-encoded on the host as the CPU cache re-encodes it (window words
 * decoded, then encoded; each window slot's staging words are kept on the host, ready to go),
 * attended through that format's decoder and read by the quantize kernel as its source. After
 * each append, while at least `windowTokens + chunk` recent positions are held, the oldest `chunk`
 * of them are quantized on the GPU into the open page of their format
 * pair (chunk = the largest channel-axis group of every format, else 1, so channel groups are
 * encoded only when complete; with `ropeBase`, a channel-axis key chunk is first turned back to
 * before RoPE by gpu/unrotate.ts, and its key groups' positions follow the page's value block). The
 * pair is the policy's one pair, or, for a tiered policy (the online form of a PrecisionPlan), the
 * tier that the chunk's mean attention while in the window selects, exactly as the CPU cache
 * (core/cache/mixed_cache.ts) decides: the attention of window tokens is credited on the host from
 * a copy of their keys and each head's log-sum-exp, which the merge kernel writes beside the
 * outputs. Attention runs the fused flash-decoding kernels over sinks, ring and every pool's pages
 * of all KV heads of a layer in one submission, and reads back only the output vectors (and
 * log-sum-exps). The pages of each format pair live in one buffer that grows with them (by a
 * quarter, contents copied on the GPU; gpu/page_slots.ts), so GPU memory follows the bits the
 * policy really spends. The staging, eviction, query, output and readback buffers are allocated
 * once, at creation; the quantize jobs and the attention runner's items, partials and scratch
 * grow on demand and are then reused (gpu/growable_buffer.ts).
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

import {
  checkOptionFields,
  DeviceError,
  FormatError,
  InvalidValueError,
  ShapeError,
  typeName,
} from "../core/errors.ts";
import {
  type CacheBuffer,
  type CacheMemory,
  checkAppend,
  checkAttend,
  checkCacheBytes,
  checkCacheShape,
  checkLayer,
  type KVCache,
  type KVCacheShape,
} from "../core/model/kv_cache.ts";
import type { CachePolicy, FormatPair } from "../core/cache/policy.ts";
import { type MixedCacheOptions, MixedPrecisionKVCache } from "../core/cache/mixed_cache.ts";
import {
  type CacheValueLimits,
  cacheValueLimits,
  checkCacheValues,
} from "../core/cache/value_limits.ts";
import { type FormatSpec, getFormat, wordsForLength } from "../codecs/format.ts";
import type { Codec } from "../codecs/codec.ts";
import { tsCodec } from "../codecs/ts_codec.ts";
import type { GpuDevice } from "./device.ts";
import { checkGpuArgs, PipelineCache } from "./program.ts";
import {
  type AttentionGroup,
  type AttentionSegment,
  MAX_QUERIES_PER_KV,
  PagedAttention,
  SPLIT_TOKENS,
  workgroupScoreBytes,
} from "./attention.ts";
import { quantizeProgram } from "./quantize.ts";
import { unrotateProgram } from "./unrotate.ts";
import { KeyRope } from "../core/cache/key_rope.ts";
import { GrowableBuffer } from "./growable_buffer.ts";
import { PageSlots } from "./page_slots.ts";
import { dispatchSize, readBack } from "./_io.ts";
import {
  cpuPolicyOf,
  type GpuCachePolicy,
  gpuPolicyFor,
  type ResolvedGpuPolicy,
  withDefaults,
} from "./cache_policy.ts";

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
  /** Keys stored before RoPE: the position of each key group's first token (Page.starts). */
  starts?: Int32Array;
}

/**
 * Creates a {@linkcode GpuKVCache} and compiles its kernels, so that append and attend never wait
 * for a compilation.
 *
 * @param options device, shape, policy and an optional shared pipeline cache
 * @returns the cache
 * @throws {FormatError} for an unknown format, one that cannot be paged per head, or a group that
 *   does not divide head_dim or the page (as the CPU cache)
 * @throws {InvalidValueError} for a page size, sink count or window that is not an integer
 * @throws {ShapeError} for a shape or tier table that does not fit, more than 16 query heads per
 *   KV head, or pageTokens that maxSeqLen can never fill (as the CPU cache)
 * @throws {CapacityError} for a buffer past what the runtime holds (as the CPU cache); nothing is
 *   allocated
 * @throws {DeviceError} when the device is lost, or a buffer (the page pool grown to every
 *   position) exceeds the device's limits; nothing is allocated
 */
export async function createGpuKVCache(options: GpuKVCacheOptions): Promise<GpuKVCache> {
  checkOptionFields(
    options,
    { gpu: true, shape: true, policy: true, pipelines: true } satisfies Record<
      keyof GpuKVCacheOptions,
      true
    >,
    "createGpuKVCache options",
  );
  checkGpuArgs(options.gpu, options.pipelines, "options.gpu");
  const pipelines = options.pipelines ?? new PipelineCache(options.gpu);
  const cache = new GpuKVCache(options, pipelines);
  try {
    await cache.ready();
  } catch (e) {
    // the caller never gets the cache, so nothing else could free its buffers
    cache.destroy();
    throw e;
  }
  return cache;
}

/** One format pair's page layout and the slots (in one buffer) that every head's pages take. */
interface _Pair {
  readonly pair: FormatPair;
  readonly key: FormatSpec;
  readonly value: FormatSpec;
  /** Words of the key block; the value block follows it in the page slot. */
  readonly keyWords: number;
  readonly valueWords: number;
  /** Keys stored before RoPE: one u32 per key group (its first position) after the value block. */
  readonly positionWords: number;
  readonly slots: PageSlots;
}

/** The pages of one format pair of one KV head. */
interface _Pool {
  readonly at: _Pair;
  /** Its slots, in fill order. */
  readonly pages: number[];
  tokens: number;
}

const _pairKey = (p: FormatPair) => `${p.keyFormat}|${p.valueFormat}`;
const _quantizeKey = (f: FormatSpec, turned: boolean) => `${f.name}${turned ? ":turned" : ""}`;

/**
 * Pages of up to this many tokens are accepted whatever maxSeqLen: the default page
 * (cache_policy.ts), as the CPU cache accepts it.
 */
const _ALWAYS_FITTING_PAGE = 128;

/**
 * Heap a head's pool map takes (an empty Map and its array slot: about 200 bytes measured on
 * Deno 2, rounded up). Counted so that millions of heads are refused like large buffers.
 */
const _HEAD_OBJECT_BYTES = 256;

/** A buffer the cache allocates, for #checkBytes: on the GPU when `gpu` says which limit holds. */
interface _Buffer extends CacheBuffer {
  /** A storage buffer (the binding size limits it) or the readback buffer (the buffer size). */
  gpu?: "storage" | "readback";
}

/** A paged mixed-precision KV cache whose pages live on the GPU. */
export class GpuKVCache implements KVCache {
  readonly shape: KVCacheShape;
  /** The policy with its window defaults filled in. */
  readonly policy: ResolvedGpuPolicy;
  /** Every format pair the policy can choose. */
  readonly pairs: readonly FormatPair[];
  /** Positions moved from the ring to pages at a time. */
  readonly chunk: number;
  readonly #gpu: GpuDevice;
  readonly #pipelines: PipelineCache;
  readonly #attention: PagedAttention;
  readonly #choose: CachePolicy;
  /** Format of sinks and ring, and its codec (host-side encoding of fp16 and int windows). */
  readonly #window: FormatSpec;
  readonly #windowCodec: Codec;
  /** Words per position of the window format in the staging buffer. */
  readonly #slotWords: number;
  /**
   * The policy's staging format when it differs from the window format, and its codec: the
   * ring's tokens past the recent window then wait for eviction in #stagedWords, re-encoded.
   */
  readonly #stage: FormatSpec | undefined;
  readonly #stageCodec: Codec | undefined;
  /** Words per position of the staging format (0 without one). */
  readonly #stageWords: number;
  /**
   * Ring slots per head in the staging buffer: windowTokens (at most maxSeqLen) + chunk, or the
   * recent window alone when a staging format holds the tokens awaiting eviction.
   */
  readonly #ringSlots: number;
  /** Sink slots per head: sinkTokens, at most maxSeqLen (no position is ever past it). */
  readonly #sinks: number;
  /** Staging slots per head: sinks and ring. */
  readonly #slots: number;
  /** Host recent-key slots per head: windowTokens, at most maxSeqLen. */
  readonly #recentSlots: number;
  /** Per format pair: its page layout and the buffer of its pages. */
  readonly #byPair: Map<string, _Pair>;
  readonly #staging: GPUBuffer;
  /**
   * With a staging format: per head, chunk slots of keys then of values in that format, slot i
   * holding the i-th oldest token past the recent window (filled in order, emptied by eviction).
   */
  readonly #stagedWords: GPUBuffer | undefined;
  /**
   * With a staging format: per head, keys then values of each ring slot's token re-encoded in it
   * (window words decoded, then encoded, as the CPU cache does when the token leaves the window),
   * copied to #stagedWords when the token does. Host memory.
   */
  readonly #stageNext: Uint32Array<ArrayBuffer>;
  /** One layer's chunk of every KV head's keys and values, contiguous, for the quantize jobs. */
  readonly #evictScratch: GPUBuffer;
  /** Keys before RoPE: the angle table (KeyRope.angleRows) and a chunk's keys turned back. */
  readonly #rope: { span: number; angles: GPUBuffer; keys: GPUBuffer } | undefined;
  #unrotate: GPUComputePipeline | undefined;
  readonly #q: GPUBuffer;
  readonly #out: GPUBuffer;
  readonly #readback: GPUBuffer;
  readonly #jobs: GrowableBuffer;
  #quantize = new Map<string, GPUComputePipeline>();
  // per layer: positions held, ring start, recent positions in the ring, positions in pages
  readonly #length: Int32Array;
  readonly #ringHead: Int32Array;
  readonly #recent: Int32Array;
  readonly #paged: Int32Array;
  // per layer × KV head: pools by pair
  #pools: Map<string, _Pool>[];
  // tiered policies: attention gathered per eviction chunk in the ring (f32, numbered as the CPU
  // cache numbers them), and a host copy of the keys of the newest windowTokens positions, the
  // only ones credited, to compute it from
  readonly #tracksScores: boolean;
  /** What the policy's formats hold, checked before an append changes anything. */
  readonly #limits: CacheValueLimits;
  readonly #scores: Float32Array;
  /** Chunk score slots per head: the most eviction chunks the ring holds at once. */
  readonly #chunkSlots: number;
  /** The newest windowTokens keys of each head as stored (window-format words). */
  readonly #recentKeys: Uint32Array;
  /** Scratch: one head's recent keys, decoded. */
  readonly #keys: Float32Array;
  /** Host scratch: one position's keys and values of every KV head in the window format. */
  readonly #encoded: Uint32Array<ArrayBuffer>;
  /** Host scratch: the same in the staging format, and decoded from the window format. */
  readonly #stageEncoded: Uint32Array<ArrayBuffer>;
  readonly #decoded: Float32Array;
  /** The async call in flight ("attend()", "toCpu()"): it reads the cache across awaits. */
  #busy: string | undefined;
  #destroyed = false;

  /**
   * Creates the cache and allocates its buffers; prefer {@linkcode createGpuKVCache}, which also
   * compiles the kernels. Every size is checked before any buffer is created; sinkTokens and
   * windowTokens past maxSeqLen allocate maxSeqLen tokens, as the CPU cache's do (a tiered
   * policy's window scores keep one slot per eviction chunk of windowTokens, as there).
   * @param options device, shape and policy
   * @param pipelines pipeline cache
   * @throws {ShapeError} for pageTokens over both 128 and maxSeqLen rounded up to the chunk (such
   *   a page never fills)
   * @throws {CapacityError} when a buffer would exceed MAX_BUFFER_BYTES, or those allocated now
   *   MAX_FIXED_BYTES together (core/model/kv_cache.ts)
   * @throws {DeviceError} when a GPU buffer, or a pair's page buffer grown to every position,
   *   would exceed what the device allows
   */
  constructor(options: GpuKVCacheOptions, pipelines: PipelineCache) {
    const { gpu, shape } = options;
    checkCacheShape(shape);
    const perKv = shape.nHeads / shape.nKvHeads;
    if (perKv > MAX_QUERIES_PER_KV) {
      // refused here, not at the first attend, so that nothing is appended to a cache that can
      // never attend
      throw new ShapeError(
        `${perKv} query heads per KV head; the GPU attention kernel holds at most ` +
          `${MAX_QUERIES_PER_KV}`,
      );
    }
    gpu.check("creating the GPU cache");
    this.#gpu = gpu;
    this.#pipelines = pipelines;
    this.shape = { ...shape };
    this.policy = withDefaults(options.policy);
    const { pageTokens: P, sinkTokens: S, windowTokens: W } = this.policy;
    this.#choose = cpuPolicyOf(this.policy, shape);
    this.pairs = this.#choose.pairs();
    const d = shape.headDim;
    const wf = this.policy.windowFormat;
    this.#window = getFormat(wf);
    if (d % this.#window.group !== 0) {
      // each head's slot holds whole groups (fp16 packs two elements a word: its group is 2)
      throw new FormatError(
        `a ${wf} window holds groups of ${this.#window.group}; headDim ${d} is not a multiple`,
      );
    }
    this.#windowCodec = tsCodec(wf);
    this.#slotWords = wordsForLength(this.#window, d);
    const sf = this.policy.stagingFormat;
    this.#stage = sf === wf ? undefined : getFormat(sf);
    if (this.#stage && d % this.#stage.group !== 0) {
      throw new FormatError(
        `a ${sf} staging format holds groups of ${this.#stage.group}; headDim ${d} is not a multiple`,
      );
    }
    this.#stageCodec = this.#stage ? tsCodec(sf) : undefined;
    this.#stageWords = this.#stage ? wordsForLength(this.#stage, d) : 0;
    const ropeBase = this.policy.ropeBase;
    if (ropeBase !== undefined && d % 2 !== 0) {
      throw new ShapeError(`ropeBase needs an even head_dim, got ${d}`);
    }
    let chunk = 1;
    for (const pair of this.pairs) {
      const key = getFormat(pair.keyFormat), value = getFormat(pair.valueFormat);
      for (const f of [key, value]) {
        if (f.axis === "heads") {
          throw new FormatError(`format ${f.name} groups across KV heads; GPU pages are per head`);
        }
        if (f.axis === "channel") {
          if (P % f.group !== 0) {
            throw new FormatError(
              `pageTokens ${P} is not a multiple of ${f.name}'s group ${f.group}`,
            );
          }
          chunk = Math.max(chunk, f.group);
        } else if (d % f.group !== 0) {
          throw new FormatError(`headDim ${d} is not a multiple of ${f.name}'s group ${f.group}`);
        }
      }
    }
    this.chunk = chunk;
    const M = shape.maxSeqLen, fill = Math.ceil(M / chunk) * chunk;
    if (P > Math.max(fill, _ALWAYS_FITTING_PAGE)) {
      throw new ShapeError(
        `pageTokens ${P} is more than maxSeqLen ${M} can fill (${fill} tokens in groups of ` +
          `${chunk}); pages of up to ${Math.max(fill, _ALWAYS_FITTING_PAGE)} tokens are accepted`,
      );
    }
    // as the CPU cache's ring: a chunk may wrap, so eviction gathers it into #evictScratch first;
    // no more than maxSeqLen positions are ever sinks or recent
    this.#sinks = Math.min(S, M);
    this.#recentSlots = Math.min(W, M);
    this.#ringSlots = this.#recentSlots + (this.#stage ? 0 : chunk);
    this.#slots = this.#sinks + this.#ringSlots;
    this.#tracksScores = this.pairs.length > 1;
    // as many score slots as the CPU cache keeps, so that copies between them match
    this.#chunkSlots = Math.ceil((W + chunk) / chunk);
    const heads = shape.nLayers * shape.nKvHeads;
    // a pair's buffer grows with its pages, up to every position of every head in that pair
    const maxPages = heads * Math.ceil(M / P);
    const layouts = this.pairs.map((pair) => {
      const key = getFormat(pair.keyFormat), value = getFormat(pair.valueFormat);
      const keyWords = wordsForLength(key, P * d), valueWords = wordsForLength(value, P * d);
      const positionWords = ropeBase !== undefined && key.axis === "channel" ? P / key.group : 0;
      return { pair, key, value, keyWords, valueWords, positionWords };
    });
    const slotWords = (l: (typeof layouts)[number]) => l.keyWords + l.valueWords + l.positionWords;
    // keys before RoPE (a channel-axis key format): the angle table, a row of d floats per offset
    // and per position
    const turns = ropeBase !== undefined && layouts.some((l) => l.positionWords > 0);
    const pageWords = Math.max(...layouts.map((l) => Math.max(l.keyWords, l.valueWords)));
    const sw4 = this.#slotWords * 4, tracked = this.#tracksScores ? heads : 0;
    const qBytes = shape.nHeads * d * 4;
    // outputs, then one log-sum-exp per query head when window attention is credited
    const outBytes = qBytes + (this.#tracksScores ? shape.nHeads * 4 : 0);
    const stagingBytes = heads * 2 * this.#slots * sw4;
    const ssw4 = this.#stageWords * 4;
    const stagedBytes = heads * 2 * chunk * ssw4;
    const stageNextBytes = heads * 2 * this.#ringSlots * ssw4;
    // the chunk in its source format: staging words if staged apart, else window words
    const scratchBytes = shape.nKvHeads * 2 * chunk * (this.#stage ? ssw4 : sw4);
    const readbackBytes = Math.max(outBytes, pageWords * 4);
    const angleBytes = turns ? (chunk + M) * d * 4 : 0;
    const turnedBytes = turns ? shape.nKvHeads * chunk * d * 4 : 0;
    // the workgroup-memory kernel keeps every query head's scores in workgroup memory: 16 heads
    // of head_dim ≥ 241 exceed the 16 KiB most devices allow, so such a cache takes the storage
    // form (scores in a scratch buffer; same results to rounding) rather than fail every attend
    const fits = workgroupScoreBytes(d, perKv) <= gpu.device.limits.maxComputeWorkgroupStorageSize;
    this.#attention = new PagedAttention(gpu, pipelines, fits ? {} : { scores: "storage" });
    // a full cache's page table: each segment (sinks, the staged tokens, the ring's two runs,
    // every page, at most one partly full page per pair) costs its tokens / split, rounded up;
    // each split of each query head leaves a partial (d + 2 f32), and the storage form keeps its
    // scores too
    const split = this.#attention.splitTokens;
    const splits = Math.ceil(M / split) + 3 + (this.#stage ? 1 : 0) + Math.ceil(M / P) +
      this.pairs.length;
    const partialBytes = shape.nHeads * splits * (d + 2) * 4;
    const scoreBytes = this.#attention.scores === "storage"
      ? shape.nHeads * splits * SPLIT_TOKENS * 4
      : 0;
    this.#checkBytes(
      [
        { name: "staging buffer (sinks and window ring)", bytes: stagingBytes, gpu: "storage" },
        { name: "staged tokens awaiting eviction", bytes: stagedBytes, gpu: "storage" },
        { name: "window tokens in the staging format", bytes: stageNextBytes },
        { name: "eviction scratch", bytes: scratchBytes, gpu: "storage" },
        { name: "query buffer", bytes: qBytes, gpu: "storage" },
        { name: "output buffer", bytes: outBytes, gpu: "storage" },
        { name: "readback buffer", bytes: readbackBytes, gpu: "readback" },
        // KeyRope's cos and sin of every position, then its angle rows: on the host, then the GPU
        { name: "RoPE table", bytes: turns ? 2 * M * d : 0, count: 2 },
        { name: "RoPE angle rows", bytes: angleBytes },
        { name: "RoPE angle rows", bytes: angleBytes, gpu: "storage" },
        { name: "eviction keys before RoPE", bytes: turnedBytes, gpu: "storage" },
        { name: "layer counters", bytes: 4 * shape.nLayers, count: 4 },
        { name: "per-head page tables", bytes: _HEAD_OBJECT_BYTES, count: heads },
        { name: "window scores", bytes: 4 * tracked * this.#chunkSlots },
        { name: "recent keys", bytes: tracked * this.#recentSlots * sw4 },
        { name: "decoded recent keys", bytes: 4 * this.#recentSlots * d },
        { name: "append scratch", bytes: 2 * shape.nKvHeads * (sw4 + ssw4 + 4 * d) },
        // pages come as tokens arrive, but one that can never be allocated is refused now
        ...layouts.map((l) => ({
          name: `${_pairKey(l.pair)} page`,
          bytes: slotWords(l) * 4,
          count: 0,
        })),
      ],
      [
        ...layouts.map((l) => ({
          name: `${_pairKey(l.pair)} page pool`,
          bytes: maxPages * slotWords(l) * 4,
        })),
        // the attention runner's grow with the page table: checked for a full cache here, where
        // an attend would have failed past some length
        { name: "attention partials", bytes: partialBytes },
        { name: "attention scores", bytes: scoreBytes },
      ],
    );
    this.#attention.checkLoopLimit(
      { headDim: d, queriesPerKv: perKv, pageTokens: P },
      Math.min(split, M),
      splits,
    );
    const dev = gpu.device;
    const S_ = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
    this.#byPair = new Map(layouts.map((l) => [_pairKey(l.pair), {
      ...l,
      slots: new PageSlots(
        dev,
        slotWords(l),
        maxPages,
        `kv pages ${_pairKey(l.pair)}`,
      ),
    }]));
    this.#staging = dev.createBuffer({
      size: Math.max(16, stagingBytes),
      usage: S_,
      label: `kv ${wf} window`,
    });
    this.#stagedWords = this.#stage
      ? dev.createBuffer({
        size: Math.max(16, stagedBytes),
        usage: S_,
        label: `kv ${sf} staged tokens`,
      })
      : undefined;
    this.#evictScratch = dev.createBuffer({
      size: Math.max(16, scratchBytes),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      label: "eviction chunk",
    });
    if (turns) {
      const angles = new KeyRope(d, shape.maxSeqLen, chunk, ropeBase).angleRows();
      const buffer = (bytes: number, label: string) =>
        dev.createBuffer({
          size: Math.max(16, bytes),
          usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
          label,
        });
      this.#rope = {
        span: chunk,
        angles: buffer(angles.byteLength, "rope angles"),
        keys: buffer(turnedBytes, "eviction keys before RoPE"),
      };
      dev.queue.writeBuffer(this.#rope.angles, 0, angles);
    }
    this.#limits = cacheValueLimits({
      windowFormat: this.policy.windowFormat,
      stagingFormat: this.policy.stagingFormat,
      ropeBase: this.policy.ropeBase,
      pairs: this.pairs,
    });
    this.#q = dev.createBuffer({ size: qBytes, usage: S_, label: "queries" });
    this.#out = dev.createBuffer({ size: outBytes, usage: S_, label: "attention out" });
    this.#readback = dev.createBuffer({
      size: readbackBytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: "readback",
    });
    this.#jobs = new GrowableBuffer(
      dev,
      GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      "quantize jobs",
    );
    this.#length = new Int32Array(shape.nLayers);
    this.#ringHead = new Int32Array(shape.nLayers);
    this.#recent = new Int32Array(shape.nLayers);
    this.#paged = new Int32Array(shape.nLayers);
    this.#pools = Array.from({ length: heads }, () => new Map());
    this.#scores = new Float32Array(tracked * this.#chunkSlots);
    this.#recentKeys = new Uint32Array(tracked * this.#recentSlots * this.#slotWords);
    this.#keys = new Float32Array(this.#recentSlots * d);
    this.#encoded = new Uint32Array(2 * shape.nKvHeads * this.#slotWords);
    this.#stageNext = new Uint32Array(stageNextBytes / 4);
    this.#stageEncoded = new Uint32Array(2 * shape.nKvHeads * this.#stageWords);
    this.#decoded = new Float32Array(this.#stage ? 2 * shape.nKvHeads * d : 0);
  }

  /**
   * Refuses, before anything is allocated, buffers the runtime cannot hold (checkCacheBytes), then
   * GPU buffers past the device's limits: a DeviceError, as the limit is this device's
   * (createKVCache falls back to WebAssembly from it).
   * @param buffers every buffer allocated now or, with count 0, later: on the host, or on the GPU
   * @param growing GPU buffers that grow with the cache, at their largest (every position held):
   *   each format pair's page pool and the attention runner's partials and scores, which only the
   *   device limits
   */
  #checkBytes(buffers: _Buffer[], growing: { name: string; bytes: number }[]): void {
    checkCacheBytes("GpuKVCache", this.shape, buffers);
    const { maxBufferSize, maxStorageBufferBindingSize } = this.#gpu.device.limits;
    // a storage buffer past the binding size fails validation, which WebGPU reports to no caller
    const storage = Math.min(maxBufferSize, maxStorageBufferBindingSize);
    const { nLayers, nHeads, nKvHeads, headDim, maxSeqLen } = this.shape;
    const what = `GpuKVCache of shape ${
      JSON.stringify({ nLayers, nHeads, nKvHeads, headDim, maxSeqLen })
    }`;
    const onGpu: (_Buffer & { grows: boolean })[] = [
      ...buffers.filter((b) => b.gpu !== undefined).map((b) => ({ ...b, grows: false })),
      ...growing.map((p) => ({ ...p, grows: true })),
    ];
    for (const { name, bytes, gpu, grows } of onGpu) {
      const limit = gpu === "readback" ? maxBufferSize : storage;
      if (bytes > limit) {
        throw new DeviceError(
          `${what}: its ${name} ${grows ? "may grow to" : "would take"} ${bytes} bytes, over ` +
            `the ${limit} bytes the device allows in one ${gpu === "readback" ? "" : "storage "}` +
            `buffer`,
        );
      }
    }
  }

  /**
   * Compiles every kernel the cache uses (called by {@linkcode createGpuKVCache}).
   * @returns when the kernels are ready
   */
  async ready(): Promise<void> {
    const { headDim, nHeads, nKvHeads } = this.shape;
    const dims = { headDim, queriesPerKv: nHeads / nKvHeads, pageTokens: this.policy.pageTokens };
    const formats = new Map<string, FormatSpec>();
    for (const pair of this.pairs) {
      for (const name of [pair.keyFormat, pair.valueFormat]) formats.set(name, getFormat(name));
    }
    // keys before RoPE reach the quantize kernel as f32, turned back
    const quantize = [...formats.values()].map((f) => ({ f, turned: false }));
    for (const at of this.#byPair.values()) {
      if (at.positionWords > 0) quantize.push({ f: at.key, turned: true });
    }
    const compiled = await Promise.all([
      ...quantize.map(({ f, turned }) => this.#pipelines.get(this.#quantizeProgram(f, turned))),
      ...[...this.#byPair.values()].map((at) =>
        this.#pipelines.get(this.#attention.program(at.key, at.value, dims, this.#ropeSpan(at)))
      ),
      this.#pipelines.get(this.#attention.program(this.#window, this.#window, dims)),
      ...(this.#stage
        ? [this.#pipelines.get(this.#attention.program(this.#stage, this.#stage, dims))]
        : []),
      this.#pipelines.get(this.#attention.mergeProgram(headDim)),
    ]);
    this.#quantize = new Map(quantize.map((q, i) => [_quantizeKey(q.f, q.turned), compiled[i]]));
    if (this.#rope) {
      this.#unrotate = await this.#pipelines.get(
        unrotateProgram(this.#evictSource, headDim, this.#rope.span),
      );
    }
  }

  // the format an evicted chunk is read in: the staging format's, or the window's
  get #evictSource(): FormatSpec {
    return this.#stage ?? this.#window;
  }

  // the quantize kernel reading the eviction chunk, or the turned-back keys as f32
  #quantizeProgram(spec: FormatSpec, turned: boolean) {
    const source = this.#evictSource;
    return quantizeProgram(spec, turned || source.kind === "fp32" ? "f32" : source);
  }

  // the angle table's offset rows for a pair whose pages store keys before RoPE
  #ropeSpan(at: _Pair): number | undefined {
    return at.positionWords > 0 ? this.#rope!.span : undefined;
  }

  length(layer: number): number {
    // an Int32Array reads undefined past its end: refused by name, as the CPU cache refuses it
    checkLayer(this.shape, layer);
    return this.#length[layer];
  }

  /**
   * Positions of `layer` held in pages (quantized); the rest are sinks and the ring.
   * @param layer layer index
   * @returns positions in pages
   * @throws {ShapeError} for a layer out of range
   */
  pagedLength(layer: number): number {
    checkLayer(this.shape, layer);
    return this.#paged[layer];
  }

  /**
   * Stored positions per format pair, as the CPU cache's `tokensByFormat` counts them (sinks and
   * ring under the window format twice, e.g. "fp32|fp32", "fp16|fp16" or
   * "int8-g8-token|int8-g8-token"; tokens staged apart under the staging format).
   * @returns positions per "keyFormat|valueFormat", summed over layers and KV heads
   */
  tokensByFormat(): Map<string, number> {
    const counts = new Map<string, number>();
    const add = (key: string, n: number) => counts.set(key, (counts.get(key) ?? 0) + n);
    const { nLayers, nKvHeads } = this.shape;
    const win = this.#window.name, staging = this.#stage?.name;
    for (let layer = 0; layer < nLayers; layer++) {
      const staged = this.#stagedCount(layer);
      const full = this.#length[layer] - this.#paged[layer] - staged;
      for (let h = 0; h < nKvHeads; h++) {
        add(`${win}|${win}`, full);
        if (staging && staged > 0) add(`${staging}|${staging}`, staged);
        for (const [key, pool] of this.#pools[layer * nKvHeads + h]) add(key, pool.tokens);
      }
    }
    return counts;
  }

  // word offsets of (layer, head) in the staging buffer (keys; values follow) and the pool
  #stagingBase(layer: number, head: number): number {
    return (layer * this.shape.nKvHeads + head) * 2 * this.#slots * this.#slotWords;
  }

  // word offset of (layer, head) in #stagedWords: chunk slots of keys, then of values
  #stagedBase(layer: number, head: number): number {
    return (layer * this.shape.nKvHeads + head) * 2 * this.chunk * this.#stageWords;
  }

  // word offset of ring slot r's keys (values: ring slots later) of a KV head in #stageNext
  #stageNextAt(index: number, r: number): number {
    return (index * 2 * this.#ringSlots + r) * this.#stageWords;
  }

  // tokens of a layer's ring held in the staging format: the oldest recent − ring slots, if apart
  #stagedCount(layer: number): number {
    return this.#stage ? Math.max(0, this.#recent[layer] - this.#ringSlots) : 0;
  }

  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    this.#checkIdle("append()");
    checkAppend(this.shape, layer, pos, this.#length[layer], k, v);
    // as the CPU cache: a value past what a format holds would overflow a header on the GPU,
    // silently (the GPU cache once took 1e9 and attended to NaN)
    checkCacheValues(k, "k", this.#limits.key);
    checkCacheValues(v, "v", this.#limits.value);
    this.#gpu.check("append");
    if (this.#quantize.size === 0) {
      throw new DeviceError("GPU cache kernels not compiled: create it with createGpuKVCache()");
    }
    const { nKvHeads, headDim: d } = this.shape;
    const S = this.#sinks, R = this.#ringSlots, staged = this.#stagedCount(layer);
    // ring tokens in the window format; the new one goes after the newest of them (with a staging
    // format and a full recent window, into the slot its oldest token leaves for the staging
    // buffer: that token's staging words are copied out first)
    const held = this.#recent[layer] - staged;
    const leaves = pos >= S && this.#stage !== undefined && held === R;
    const slot = pos < S ? pos : S + (R === 0 ? 0 : (this.#ringHead[layer] + held) % R);
    // encoded for every head before anything is written: a value fp16 cannot hold changes nothing
    const sw = this.#slotWords, words = this.#encoded;
    if (this.#window.kind === "fp32") {
      words.set(new Uint32Array(k.buffer, k.byteOffset, k.length));
      words.set(new Uint32Array(v.buffer, v.byteOffset, v.length), nKvHeads * sw);
    } else {
      this.#windowCodec.encodeInto(k, words.subarray(0, nKvHeads * sw));
      this.#windowCodec.encodeInto(v, words.subarray(nKvHeads * sw));
    }
    const ssw = this.#stageWords, stageWords = this.#stageEncoded;
    if (this.#stage && pos >= S) {
      // as the CPU cache: the token's staging words are its window words decoded and re-encoded
      // (with no recent window too: every staged token passed through the window format)
      const codec = this.#stageCodec!, n = nKvHeads * d;
      const kf = this.#decoded.subarray(0, n), vf = this.#decoded.subarray(n);
      this.#windowCodec.decodeWords(words.subarray(0, nKvHeads * sw), n, kf);
      this.#windowCodec.decodeWords(words.subarray(nKvHeads * sw), n, vf);
      codec.encodeInto(kf, stageWords.subarray(0, nKvHeads * ssw));
      codec.encodeInto(vf, stageWords.subarray(nKvHeads * ssw));
    }
    const queue = this.#gpu.device.queue;
    for (let h = 0; h < nKvHeads; h++) {
      const index = layer * nKvHeads + h;
      if (leaves) {
        // the oldest recent token (ring slot ringHead, or the new one without a recent window)
        // joins the staged ones, as the staged-th
        const to = (this.#stagedBase(layer, h) + staged * ssw) * 4;
        const vTo = to + this.chunk * ssw * 4;
        if (R === 0) {
          queue.writeBuffer(this.#stagedWords!, to, stageWords, h * ssw, ssw);
          queue.writeBuffer(this.#stagedWords!, vTo, stageWords, (nKvHeads + h) * ssw, ssw);
        } else {
          const from = this.#stageNextAt(index, this.#ringHead[layer]);
          queue.writeBuffer(this.#stagedWords!, to, this.#stageNext, from, ssw);
          queue.writeBuffer(this.#stagedWords!, vTo, this.#stageNext, from + R * ssw, ssw);
        }
      }
      if (!leaves || R > 0) {
        const base = (this.#stagingBase(layer, h) + slot * sw) * 4;
        queue.writeBuffer(this.#staging, base, words, h * sw, sw);
        queue.writeBuffer(
          this.#staging,
          base + this.#slots * sw * 4,
          words,
          (nKvHeads + h) * sw,
          sw,
        );
      }
      if (this.#stage && pos >= S && R > 0) {
        const at = this.#stageNextAt(index, slot - S);
        this.#stageNext.set(stageWords.subarray(h * ssw, (h + 1) * ssw), at);
        this.#stageNext.set(
          stageWords.subarray((nKvHeads + h) * ssw, (nKvHeads + h + 1) * ssw),
          at + R * ssw,
        );
      }
      if (this.#tracksScores && pos >= S) {
        const i = this.#recent[layer];
        // a chunk's first token takes its score slot over from the chunk evicted before it
        if (i % this.chunk === 0) this.#scores[this.#chunkSlot(layer, index, i)] = 0;
        // the keys as stored, to credit their attention from while they are recent
        if (this.policy.windowTokens > 0) {
          this.#recentKeys.set(
            words.subarray(h * sw, (h + 1) * sw),
            this.#keySlot(layer, index, i) * sw,
          );
        }
      }
    }
    if (leaves && R > 0) this.#ringHead[layer] = (this.#ringHead[layer] + 1) % R;
    if (pos >= S) this.#recent[layer]++;
    this.#length[layer] = pos + 1;
    if (this.#recent[layer] - this.policy.windowTokens >= this.chunk) this.#evict(layer);
  }

  // the pool of `pair` for one KV head, created on first use
  #poolFor(index: number, pair: FormatPair): _Pool {
    const key = _pairKey(pair);
    let pool = this.#pools[index].get(key);
    if (pool === undefined) {
      pool = { at: this.#byPair.get(key)!, pages: [], tokens: 0 };
      this.#pools[index].set(key, pool);
    }
    return pool;
  }

  // quantizes the oldest chunk of the ring of every KV head of `layer` into the open page of the
  // pair its policy chooses for it
  #evict(layer: number): void {
    const { nKvHeads, headDim: d } = this.shape;
    const P = this.policy.pageTokens, S = this.#sinks, C = this.chunk;
    const head0 = this.#ringHead[layer], stage = this.#stage;
    // words per token of the chunk: staging words when staged apart, else window words
    const sw = stage ? this.#stageWords : this.#slotWords;
    const enc = this.#gpu.device.createCommandEncoder();
    // the chunk of each head's K and V (at most two runs of the ring, or the staged tokens in
    // order) into the eviction scratch
    const firstRun = stage ? C : Math.min(C, this.#ringSlots - head0);
    // one dispatch per format, pair buffer and source (the staging words, or keys turned back)
    type Run = { spec: FormatSpec; at: _Pair; turned: boolean; words: number[] };
    const jobs = new Map<string, Run>();
    const push = (spec: FormatSpec, at: _Pair, turned: boolean, ...w: number[]) => {
      const id = `${_quantizeKey(spec, turned)}>${_pairKey(at.pair)}`;
      let j = jobs.get(id);
      if (j === undefined) jobs.set(id, j = { spec, at, turned, words: [] });
      j.words.push(...w);
    };
    // keys before RoPE: one unrotate job per token, and the chunk's first position
    const unrotate: number[] = [];
    const pos = S + this.#paged[layer];
    for (let h = 0; h < nKvHeads; h++) {
      const index = layer * nKvHeads + h;
      const score = this.#tracksScores ? this.#scores[this.#chunkSlot(layer, index, 0)] : 0;
      const pool = this.#poolFor(index, this.#choose.formatFor(layer, h, score / C));
      const at = pool.at;
      // a new slot may grow the pair's buffer: its copy is submitted before these jobs
      if (pool.tokens % P === 0) pool.pages.push(at.slots.take());
      const page = pool.pages[pool.pages.length - 1] * at.slots.slotWords;
      const t0 = pool.tokens % P;
      for (const [which, f] of [[0, at.key], [1, at.value]] as const) {
        const from = stage
          ? this.#stagedBase(layer, h) + which * C * sw
          : this.#stagingBase(layer, h) + (which * this.#slots + S + head0) * sw;
        const to = (h * 2 + which) * C * sw;
        enc.copyBufferToBuffer(
          stage ? this.#stagedWords! : this.#staging,
          from * 4,
          this.#evictScratch,
          to * 4,
          firstRun * sw * 4,
        );
        if (firstRun < C) {
          const from = this.#stagingBase(layer, h) + (which * this.#slots + S) * sw;
          enc.copyBufferToBuffer(
            this.#staging,
            from * 4,
            this.#evictScratch,
            (to + firstRun * sw) * 4,
            (C - firstRun) * sw * 4,
          );
        }
        // in elements of the scratch: positions are d elements apart
        const turned = which === 0 && at.positionWords > 0;
        const src = turned ? h * C * d : (h * 2 + which) * C * d;
        const dst = page + which * at.keyWords;
        if (turned) {
          // token i turns back by its position; its key group's first position goes to the page
          const G = f.group;
          for (let i = 0; i < C; i++) {
            unrotate.push(to + i * sw, src + i * d, pos + i - (i % G), i % G);
          }
          const starts = Int32Array.from({ length: C / G }, (_, j) => pos + j * G);
          const at0 = page + at.keyWords + at.valueWords + t0 / G;
          this.#gpu.device.queue.writeBuffer(at.slots.buffer, at0 * 4, starts);
        }
        if (f.axis === "channel") {
          // group gg of channel c covers tokens t0 + gg·G .. of the page: element c·P + t
          for (let c = 0; c < d; c++) {
            for (let g = 0; g < C / f.group; g++) {
              const t = t0 + g * f.group;
              push(
                f,
                at,
                turned,
                src + g * f.group * d + c,
                d,
                dst + ((c * P + t) / f.group) * f.wordsPerGroup,
                0,
              );
            }
          }
        } else {
          const rowWords = wordsForLength(f, d);
          for (let i = 0; i < C; i++) {
            for (let g = 0; g < d / f.group; g++) {
              push(
                f,
                at,
                false,
                src + i * d + g * f.group,
                1,
                dst + (t0 + i) * rowWords + g * f.wordsPerGroup,
                0,
              );
            }
          }
        }
      }
      pool.tokens += C;
    }
    const dev = this.#gpu.device;
    const align = dev.limits.minStorageBufferOffsetAlignment / 4;
    const runs: (Run & { offset: number })[] = [];
    // the unrotate jobs first (their run is dispatched first), then one run per quantize dispatch
    let total = Math.ceil(unrotate.length / align) * align;
    for (const run of jobs.values()) {
      runs.push({ ...run, offset: total });
      total += Math.ceil(run.words.length / align) * align;
    }
    const data = new Uint32Array(Math.max(total, 4));
    data.set(unrotate);
    for (const run of runs) data.set(run.words, run.offset);
    const jobBuf = this.#jobs.ensure(data.byteLength);
    dev.queue.writeBuffer(jobBuf, 0, data);
    const pass = enc.beginComputePass();
    const dispatch = (
      pipeline: GPUComputePipeline,
      workgroupSize: number,
      buffers: GPUBuffer[],
      offset: number,
      count: number,
      extra: GPUBuffer[] = [],
    ) => {
      pass.setPipeline(pipeline);
      pass.setBindGroup(
        0,
        dev.createBindGroup({
          layout: pipeline.getBindGroupLayout(0),
          entries: [
            ...buffers.map((buffer, binding) => ({ binding, resource: { buffer } })),
            { binding: 2, resource: { buffer: jobBuf, offset: offset * 4, size: count * 16 } },
            ...extra.map((buffer, i) => ({ binding: 3 + i, resource: { buffer } })),
          ],
        }),
      );
      pass.dispatchWorkgroups(...dispatchSize(count, workgroupSize));
    };
    if (unrotate.length > 0) {
      const rope = this.#rope!, { headDim } = this.shape;
      const size = unrotateProgram(this.#evictSource, headDim, rope.span).workgroupSize;
      dispatch(this.#unrotate!, size, [this.#evictScratch, rope.keys], 0, unrotate.length / 4, [
        rope.angles,
      ]);
    }
    for (const { spec, at, turned, words, offset } of runs) {
      const source = turned ? this.#rope!.keys : this.#evictScratch;
      dispatch(
        this.#quantize.get(_quantizeKey(spec, turned))!,
        this.#quantizeProgram(spec, turned).workgroupSize,
        [source, at.slots.buffer],
        offset,
        words.length / 4,
      );
    }
    pass.end();
    dev.queue.submit([enc.finish()]);
    // staged tokens leave their own buffer; otherwise the ring's oldest chunk frees its slots
    if (!stage) this.#ringHead[layer] = (head0 + C) % this.#ringSlots;
    this.#recent[layer] -= C;
    this.#paged[layer] += C;
  }

  // host key slot of ring index i of a layer's KV head: positions after the sinks, mod windowTokens
  // (at most maxSeqLen: the same slots, since fewer positions follow the sinks)
  #keySlot(layer: number, index: number, i: number): number {
    const W = this.#recentSlots;
    return index * W + (this.#paged[layer] + i) % W;
  }

  // score slot of the chunk holding ring index i (0: the oldest token) of a layer's KV head
  #chunkSlot(layer: number, index: number, i: number): number {
    const C = this.chunk;
    return index * this.#chunkSlots +
      (this.#paged[layer] / C + Math.floor(i / C)) % this.#chunkSlots;
  }

  // the page table of one KV head: sinks, the ring's (at most two) runs, every pool's pages
  #segments(layer: number, h: number): AttentionSegment[] {
    const P = this.policy.pageTokens, S = this.#sinks;
    const segs: AttentionSegment[] = [];
    const sw = this.#slotWords, sb = this.#stagingBase(layer, h), vOff = this.#slots * sw;
    const full = (slot: number, tokens: number) =>
      segs.push({
        words: this.#staging,
        keyFormat: this.#window,
        valueFormat: this.#window,
        keyBase: sb + slot * sw,
        valueBase: sb + vOff + slot * sw,
        tokens,
      });
    const sinks = Math.min(this.#length[layer], S);
    if (sinks > 0) full(0, sinks);
    // the ring's oldest tokens, staged in a format of their own (never credited: not recent)
    const staged = this.#stagedCount(layer);
    if (staged > 0) {
      const base = this.#stagedBase(layer, h);
      segs.push({
        words: this.#stagedWords!,
        keyFormat: this.#stage!,
        valueFormat: this.#stage!,
        keyBase: base,
        valueBase: base + this.chunk * this.#stageWords,
        tokens: staged,
      });
    }
    const head = this.#ringHead[layer], recent = this.#recent[layer] - staged;
    const first = Math.min(recent, this.#ringSlots - head);
    if (first > 0) full(S + head, first);
    if (recent > first) full(S, recent - first);
    for (const pool of this.#pools[layer * this.shape.nKvHeads + h].values()) {
      const at = pool.at;
      const rope = at.positionWords > 0
        ? { angles: this.#rope!.angles, span: this.#rope!.span }
        : undefined;
      for (let i = 0; i < pool.pages.length; i++) {
        const base = pool.pages[i] * at.slots.slotWords;
        segs.push({
          words: at.slots.buffer,
          keyFormat: at.key,
          valueFormat: at.value,
          keyBase: base,
          valueBase: base + at.keyWords,
          tokens: Math.min(P, pool.tokens - i * P),
          rope,
        });
      }
    }
    return segs;
  }

  async attend(layer: number, q: Float32Array, out: Float32Array): Promise<void> {
    checkAttend(this.shape, layer, this.#length[layer], q, out);
    this.#gpu.check("attend");
    this.#checkIdle("attend()");
    this.#busy = "attend()";
    try {
      const { nHeads, nKvHeads, headDim: d } = this.shape;
      const Q = nHeads / nKvHeads;
      const dev = this.#gpu.device;
      dev.queue.writeBuffer(this.#q, 0, q.buffer as ArrayBuffer, q.byteOffset, q.byteLength);
      // the window credit after the readback reads this copy: q may be out itself, or reused by
      // the caller while the call is in flight (it once credited from what q held by then)
      const query = this.#tracksScores ? q.slice() : q;
      const groups: AttentionGroup[] = [];
      for (let h = 0; h < nKvHeads; h++) {
        groups.push({
          queryOffset: h * Q * d,
          outputOffset: h * Q * d,
          lseOffset: this.#tracksScores ? nHeads * d + h * Q : undefined,
          segments: this.#segments(layer, h),
        });
      }
      const enc = dev.createCommandEncoder();
      await this.#attention.encode(enc, this.#q, this.#out, groups, {
        headDim: d,
        queriesPerKv: Q,
        pageTokens: this.policy.pageTokens,
      });
      const bytes = q.byteLength + (this.#tracksScores ? nHeads * 4 : 0);
      const result = new Float32Array(
        await readBack(this.#gpu, this.#out, this.#readback, bytes, enc),
      );
      out.set(result.subarray(0, nHeads * d));
      if (this.#tracksScores) this.#credit(layer, query, result.subarray(nHeads * d));
    } finally {
      this.#busy = undefined;
    }
  }

  // a change (or a second read) between an in-flight call's awaits would mix two states; and a
  // destroyed cache has no buffers to work on
  #checkIdle(op: string): void {
    if (this.#destroyed) throw new DeviceError(`${op} called after destroy()`);
    if (this.#busy !== undefined) {
      throw new DeviceError(`${op} called while ${this.#busy} is in flight: await it first`);
    }
  }

  /**
   * Adds each recent window token's attention weight, averaged over its group's query heads, to
   * its slot's score, as the CPU cache does: only the newest windowTokens of the ring are
   * credited (older ones wait for eviction with their score final). Scores are recomputed here in
   * f32 from the host copy of the keys; the weights use each head's log-sum-exp from the merge.
   */
  #credit(layer: number, q: Float32Array, lse: Float32Array): void {
    const { nHeads, nKvHeads, headDim: d } = this.shape;
    const Q = nHeads / nKvHeads, scale = Math.fround(1 / Math.sqrt(d));
    const recent = this.#recent[layer], sw = this.#slotWords, keys = this.#keys;
    const first = Math.max(0, recent - this.policy.windowTokens);
    for (let h = 0; h < nKvHeads; h++) {
      const index = layer * nKvHeads + h;
      for (let i = first; i < recent; i++) {
        const r = this.#keySlot(layer, index, i) * sw;
        this.#windowCodec.decodeWords(
          this.#recentKeys.subarray(r, r + sw),
          d,
          keys.subarray((i - first) * d, (i - first + 1) * d),
        );
      }
      // heads outer, tokens inner: the CPU cache's order of additions
      for (let j = 0; j < Q; j++) {
        const qh = (h * Q + j) * d, norm = lse[h * Q + j];
        for (let i = first; i < recent; i++) {
          const k = (i - first) * d;
          let s = 0;
          for (let c = 0; c < d; c++) s = Math.fround(s + Math.fround(q[qh + c] * keys[k + c]));
          this.#scores[this.#chunkSlot(layer, index, i)] +=
            Math.exp(Math.fround(s * scale) - norm) / Q;
        }
      }
    }
  }

  /**
   * The CPU cache policy this cache holds (the same tokens land in the same formats there).
   * @returns a uniform or tiered policy with this cache's window, sinks and pages
   */
  cpuPolicy(): CachePolicy {
    return this.#choose;
  }

  /**
   * Copies the cache into a new CPU cache without re-quantizing: sinks, window (in order, with the
   * attention credited so far), every pool's pages word for word, and the lengths. Saving a GPU
   * cache is `saveCache(await gpu.toCpu())`; the copy attends and grows as this cache would.
   * @param options backend and options of the new CPU cache
   * @returns the CPU cache
   * @throws {DeviceError} when the device is lost, the cache destroyed or another call in flight
   * @throws {BudgetError} when the copy would exceed `options.maxBytes`
   */
  async toCpu(options: MixedCacheOptions = {}): Promise<MixedPrecisionKVCache> {
    this.#gpu.check("toCpu");
    this.#checkIdle("toCpu()");
    this.#busy = "toCpu()";
    try {
      return await this.#copyToCpu(options);
    } finally {
      this.#busy = undefined;
    }
  }

  async #copyToCpu(options: MixedCacheOptions): Promise<MixedPrecisionKVCache> {
    const cpu = new MixedPrecisionKVCache(this.shape, this.cpuPolicy(), options);
    const staging = await this.#download(this.#staging, this.#staging.size);
    const stagedWords = this.#stagedWords
      ? await this.#download(this.#stagedWords, this.#stagedWords.size)
      : undefined;
    const pairs = new Map<_Pair, Uint32Array>();
    for (const at of this.#byPair.values()) {
      if (at.slots.used > 0) {
        pairs.set(
          at,
          await this.#download(at.slots.buffer, at.slots.used * at.slots.slotWords * 4),
        );
      }
    }
    const { nLayers, nKvHeads } = this.shape, S = this.#sinks, sw = this.#slotWords;
    for (let layer = 0; layer < nLayers; layer++) {
      const sinkN = Math.min(this.#length[layer], S), recent = this.#recent[layer];
      const staged = this.#stagedCount(layer), ssw = this.#stageWords;
      for (let h = 0; h < nKvHeads; h++) {
        const index = layer * nKvHeads + h, base = this.#stagingBase(layer, h);
        const seg = cpu.segments(layer, h), scores = cpu.windowScores(layer, h);
        for (
          const [words, at] of [[seg.sinkK, base], [seg.sinkV, base + this.#slots * sw]] as const
        ) {
          words.set(staging.subarray(at, at + sinkN * sw));
        }
        // staged tokens word for word: the CPU cache's staging slot i is the i-th oldest, as here
        if (staged > 0) {
          const sb = this.#stagedBase(layer, h), vb = sb + this.chunk * ssw;
          seg.stageK.set(stagedWords!.subarray(sb, sb + staged * ssw));
          seg.stageV.set(stagedWords!.subarray(vb, vb + staged * ssw));
        }
        for (let i = 0; i < recent - staged; i++) {
          const r = (this.#ringHead[layer] + i) % this.#ringSlots, slot = S + r;
          seg.windowK.set(staging.subarray(base + slot * sw, base + (slot + 1) * sw), i * sw);
          const v = base + (this.#slots + slot) * sw;
          seg.windowV.set(staging.subarray(v, v + sw), i * sw);
        }
        // chunks are numbered alike on both (tokens paged / chunk), with as many slots
        scores.set(this.#scores.subarray(index * this.#chunkSlots, (index + 1) * this.#chunkSlots));
        const pools = [...this.#pools[index].values()].map((pool) => {
          const at = pool.at, words = pairs.get(at)!, cpuPool = cpu.createPool(at.pair);
          pool.pages.forEach((slot, i) => {
            const page = cpuPool.newPage(), o = slot * at.slots.slotWords;
            page.n = Math.min(this.policy.pageTokens, pool.tokens - i * this.policy.pageTokens);
            page.kWords.set(words.subarray(o, o + at.keyWords));
            const v = o + at.keyWords, starts = v + at.valueWords;
            page.vWords.set(words.subarray(v, starts));
            page.starts?.set(
              new Int32Array(words.buffer, words.byteOffset + starts * 4, at.positionWords),
            );
          });
          return cpuPool;
        });
        cpu.restoreSegments(layer, h, { ...seg, sinkN, windowN: recent, windowStart: 0, pools });
      }
    }
    cpu.restoreLengths(this.#length);
    cpu.checkBudget("the GPU cache's copy");
    return cpu;
  }

  /**
   * A GPU cache holding a CPU cache's tokens as they are stored (no re-quantizing): the inverse of
   * {@linkcode GpuKVCache.toCpu}, e.g. after `loadCache`.
   * @param cpu the CPU cache; its policy must be one gpuPolicyFor accepts
   * @param gpu the device
   * @param pipelines pipeline cache to share (default: a new one)
   * @returns the GPU cache
   * @throws {InvalidValueError} for anything but a MixedPrecisionKVCache
   * @throws {FormatError} for a policy the GPU cache cannot hold as written
   * @throws {ShapeError} for a pool whose pages after the first partial one hold tokens
   * @throws {CapacityError} for more pages than the shape's maxSeqLen holds
   * @throws {DeviceError} when the device is lost
   */
  static async fromCpu(
    cpu: MixedPrecisionKVCache,
    gpu: GpuDevice,
    pipelines?: PipelineCache,
  ): Promise<GpuKVCache> {
    if (!(cpu instanceof MixedPrecisionKVCache)) {
      throw new InvalidValueError(
        `fromCpu: cache is ${typeName(cpu)}, expected a MixedPrecisionKVCache`,
      );
    }
    checkGpuArgs(gpu, pipelines, "fromCpu: gpu");
    const policy = gpuPolicyFor(cpu.policy);
    if (typeof policy === "string") throw new FormatError(`fromCpu: ${policy}`);
    const cache = await createGpuKVCache({ gpu, shape: cpu.shape, policy, pipelines });
    try {
      cache.#restore(cpu);
    } catch (e) {
      // the caller never gets the cache, so nothing else could free its buffers
      cache.destroy();
      throw e;
    }
    return cache;
  }

  // fromCpu's copy of the CPU cache's sinks, window, scores and pages into this new cache
  #restore(cpu: MixedPrecisionKVCache): void {
    const { nLayers, nKvHeads } = cpu.shape;
    const S = this.#sinks, P = this.policy.pageTokens;
    const sw = this.#slotWords, queue = this.#gpu.device.queue;
    for (let layer = 0; layer < nLayers; layer++) {
      for (let h = 0; h < nKvHeads; h++) {
        const index = layer * nKvHeads + h, seg = cpu.segments(layer, h);
        const scores = cpu.windowScores(layer, h), R = seg.windowK.length / sw;
        const staged = new Uint32Array(this.#slots * sw * 2);
        // the CPU cache's staged tokens, word for word, in the same slots
        const stageN = seg.stageN, ssw = this.#stageWords;
        if (this.#stagedWords) {
          const C = this.chunk, words = new Uint32Array(2 * C * ssw);
          words.set(seg.stageK.subarray(0, stageN * ssw));
          words.set(seg.stageV.subarray(0, stageN * ssw), C * ssw);
          queue.writeBuffer(this.#stagedWords, this.#stagedBase(layer, h) * 4, words);
        }
        for (const [words, at] of [[seg.sinkK, 0], [seg.sinkV, this.#slots * sw]] as const) {
          staged.set(words.subarray(0, seg.sinkN * sw), at);
        }
        const W = this.policy.windowTokens, paged = seg.pools.reduce((a, p) => a + p.length, 0);
        for (let i = stageN; i < seg.windowN; i++) {
          const slot = ((seg.windowStart + i - stageN) % R) * sw, r = i - stageN;
          staged.set(seg.windowK.subarray(slot, slot + sw), (S + r) * sw);
          staged.set(seg.windowV.subarray(slot, slot + sw), (this.#slots + S + r) * sw);
          if (this.#stage) this.#restageWindow(index, r, seg.windowK, seg.windowV, slot);
          if (this.#tracksScores && i >= seg.windowN - W) {
            this.#recentKeys.set(
              seg.windowK.subarray(slot, slot + sw),
              (index * this.#recentSlots + (paged + i) % this.#recentSlots) * sw,
            );
          }
        }
        if (this.#tracksScores) this.#scores.set(scores, index * this.#chunkSlots);
        // a ring of no slots (no sinks, no recent window, tokens staged apart) writes nothing: a
        // zero-length writeBuffer panics Deno 2.9's WebGPU, killing the process
        if (staged.length > 0) {
          queue.writeBuffer(this.#staging, this.#stagingBase(layer, h) * 4, staged);
        }
        for (const p of seg.pools) {
          const pool = this.#poolFor(index, p.pair), at = pool.at;
          for (const page of p.pages) {
            // the GPU page table puts page i at the pool's tokens i·P onward: an empty page (one
            // restoreSegments took) gets no slot, the next eviction opens one; a page after a
            // partial one would be read at the wrong tokens
            if (page.n === 0) continue;
            if (pool.tokens % P !== 0) {
              throw new ShapeError(
                `fromCpu: layer ${layer}, KV head ${h}: a ${_pairKey(p.pair)} page follows a ` +
                  `partial page of ${pool.tokens % P} tokens; only the last may be partial`,
              );
            }
            // take() may grow the buffer (a submitted copy), so write after it, into the new one
            const slot = at.slots.take();
            pool.pages.push(slot);
            const o = slot * at.slots.slotWords * 4;
            queue.writeBuffer(at.slots.buffer, o, page.kWords as Uint32Array<ArrayBuffer>);
            queue.writeBuffer(
              at.slots.buffer,
              o + at.keyWords * 4,
              page.vWords as Uint32Array<ArrayBuffer>,
            );
            if (page.starts) {
              queue.writeBuffer(
                at.slots.buffer,
                o + (at.keyWords + at.valueWords) * 4,
                page.starts as Int32Array<ArrayBuffer>,
              );
            }
            pool.tokens += page.n;
          }
        }
        this.#length[layer] = cpu.length(layer);
        this.#recent[layer] = seg.windowN;
        this.#paged[layer] = paged;
      }
    }
  }

  // #stageNext of ring slot r of a KV head: the window words at `from` decoded, then encoded in
  // the staging format, as the CPU cache does when the token leaves the window
  #restageWindow(index: number, r: number, kw: Uint32Array, vw: Uint32Array, from: number): void {
    const d = this.shape.headDim, sw = this.#slotWords, ssw = this.#stageWords;
    const at = this.#stageNextAt(index, r), x = this.#decoded.subarray(0, d);
    for (const [words, to] of [[kw, at], [vw, at + this.#ringSlots * ssw]] as const) {
      this.#windowCodec.decodeWords(words.subarray(from, from + sw), d, x);
      this.#stageCodec!.encodeInto(x, this.#stageNext.subarray(to, to + ssw));
    }
  }

  // a copy of the first `bytes` bytes of a GPU buffer
  async #download(buffer: GPUBuffer, bytes: number): Promise<Uint32Array> {
    const dev = this.#gpu.device;
    const rb = dev.createBuffer({
      size: Math.max(16, bytes),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      label: "download",
    });
    try {
      return new Uint32Array(await readBack(this.#gpu, buffer, rb, bytes));
    } finally {
      rb.destroy();
    }
  }

  /**
   * Reads one page's words back from the GPU: the same words the CPU cache holds for it.
   * @param layer layer index
   * @param kvHead KV head index
   * @param page page index within the pair's pool (pages fill in order)
   * @param pair the pool's format pair (default: the policy's only pair)
   * @returns the key and value blocks, the valid token count and, for keys before RoPE, the key
   *   groups' positions
   * @throws {ShapeError} for a page that holds no tokens
   * @throws {InvalidValueError} without a pair when the policy has several
   */
  async readPage(
    layer: number,
    kvHead: number,
    page: number,
    pair?: FormatPair,
  ): Promise<GpuPageWords> {
    this.#checkIdle("readPage()");
    for (const [what, x] of [["layer", layer], ["kvHead", kvHead], ["page", page]] as const) {
      if (!Number.isInteger(x) || x < 0) {
        throw new ShapeError(`readPage: ${what} is ${x}, expected an integer ≥ 0`);
      }
    }
    if (pair !== undefined && (typeof pair !== "object" || pair === null)) {
      throw new InvalidValueError(`readPage: pair is ${pair}, expected { keyFormat, valueFormat }`);
    }
    if (pair === undefined) {
      if (this.pairs.length !== 1) {
        throw new InvalidValueError(
          `the policy has ${this.pairs.length} format pairs: name the page's pair`,
        );
      }
      pair = this.pairs[0];
    }
    const P = this.policy.pageTokens;
    const inRange = layer >= 0 && layer < this.shape.nLayers && kvHead >= 0 &&
      kvHead < this.shape.nKvHeads;
    const pool = inRange
      ? this.#pools[layer * this.shape.nKvHeads + kvHead].get(_pairKey(pair))
      : undefined;
    const tokens = pool === undefined ? 0 : Math.min(P, pool.tokens - page * P);
    if (pool === undefined || !Number.isInteger(page) || !(tokens > 0)) {
      throw new ShapeError(
        `no page ${page} of ${_pairKey(pair)} in layer ${layer}, KV head ${kvHead}`,
      );
    }
    this.#gpu.check("readPage");
    this.#busy = "readPage()";
    try {
      return await this.#readPage(pool, page, tokens);
    } finally {
      this.#busy = undefined;
    }
  }

  async #readPage(pool: _Pool, page: number, tokens: number): Promise<GpuPageWords> {
    const at = pool.at, slot = pool.pages[page] * at.slots.slotWords;
    // the slot's key block, value block and key-group positions, one readback each
    const read = (from: number, words: number) =>
      readBack(this.#gpu, at.slots.buffer, this.#readback, words * 4, undefined, from * 4);
    const keyWords = new Uint32Array(await read(slot, at.keyWords));
    const valueWords = new Uint32Array(await read(slot + at.keyWords, at.valueWords));
    if (at.positionWords === 0) return { keyWords, valueWords, tokens };
    const starts = new Int32Array(
      await read(slot + at.keyWords + at.valueWords, at.positionWords),
    );
    return { keyWords, valueWords, tokens, starts };
  }

  /** Bytes of the page buffers, every format pair's (part of memory().bytes). */
  get pageBytes(): number {
    let bytes = 0;
    for (const at of this.#byPair.values()) bytes += at.slots.byteLength;
    return bytes;
  }

  /**
   * Bytes of the working buffers, which hold no cached position: queries, outputs, readback,
   * quantize jobs, the eviction chunk (with keys before RoPE also its turned keys and the angle
   * table) and the attention runner's items, partials and scratch. Not part of memory(), as the
   * CPU cache's scratch and angle tables are not part of its own. 0 after destroy().
   */
  get workingBytes(): number {
    // a destroyed GPUBuffer keeps reporting its size
    if (this.#destroyed) return 0;
    return this.#q.size + this.#out.size + this.#readback.size + this.#jobs.byteLength +
      this.#attention.byteLength + this.#evictScratch.size +
      (this.#rope ? this.#rope.angles.size + this.#rope.keys.size : 0);
  }

  /**
   * What the cache holds for its positions: the page buffers at their allocated size (the unused
   * slots of a grown buffer included, where the CPU cache counts each page it holds with its
   * page-table entry), the staging buffer of every head's sinks and ring at the window format,
   * with a staging format the staged tokens' slots and the host copy of the window's tokens in
   * that format, and, for a tiered policy, the window scores and the host copy of the recent keys
   * they are credited from (the CPU cache counts its sinks, ring, staged tokens and scores alike
   * but keeps neither copy).
   * Elements: K and V elements of the positions held. Working buffers: {@linkcode workingBytes}.
   * @returns bytes, elements and bits per element; all 0 after destroy()
   */
  memory(): CacheMemory {
    // zero rather than DeviceError: like length() and tokensByFormat(), memory() only reads host
    // bookkeeping, which destroy() leaves readable; a destroyed cache holds nothing (its
    // GPUBuffers would go on reporting their sizes)
    if (this.#destroyed) return { bytes: 0, elements: 0, bitsPerElement: 0 };
    let positions = 0;
    for (const n of this.#length) positions += n;
    const elements = positions * this.shape.nKvHeads * this.shape.headDim * 2;
    const bytes = this.pageBytes + this.#staging.size + (this.#stagedWords?.size ?? 0) +
      this.#stageNext.byteLength + this.#scores.byteLength + this.#recentKeys.byteLength;
    return { bytes, elements, bitsPerElement: elements === 0 ? 0 : (8 * bytes) / elements };
  }

  reset(): void {
    this.#checkIdle("reset()");
    this.#length.fill(0);
    this.#ringHead.fill(0);
    this.#recent.fill(0);
    this.#paged.fill(0);
    this.#pools = this.#pools.map(() => new Map());
    this.#scores.fill(0);
    if (this.#gpu.lost) return;
    // words past the valid tokens are zero (PAGES.md)
    for (const at of this.#byPair.values()) at.slots.clear();
  }

  /**
   * Frees the cache's GPU buffers. Later append, attend, readPage, toCpu and reset throw
   * DeviceError; memory() and workingBytes report 0; destroy() again does nothing.
   */
  destroy(): void {
    if (this.#destroyed) return;
    this.#checkIdle("destroy()");
    this.#destroyed = true;
    for (const b of [this.#staging, this.#evictScratch, this.#q, this.#out, this.#readback]) {
      b.destroy();
    }
    this.#stagedWords?.destroy();
    this.#rope?.angles.destroy();
    this.#rope?.keys.destroy();
    for (const at of this.#byPair.values()) at.slots.destroy();
    this.#jobs.destroy();
    this.#attention.destroy();
  }
}
