/**
 * The mixed-precision paged KV cache. Per layer and KV head: sink tokens and a recent window in the
 * window format; a token leaving the window goes to the page pool of the format pair its policy
 * chooses from the attention it received while in the window. Attention runs over every segment
 * and merges partial softmax results, so token order does not matter (keys carry RoPE).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { MixedPrecisionKVCache } from "./mixed_cache.ts";
 * import { uniformPolicy } from "./policy.ts";
 * const cache = new MixedPrecisionKVCache(
 *   { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 8, maxSeqLen: 64 },
 *   uniformPolicy({ keyFormat: "int8-g8-token", valueFormat: "int8-g8-token", recentWindow: 4 }),
 * );
 * const x = new Float32Array(8).map((_, i) => i / 8);
 * for (let p = 0; p < 10; p++) cache.append(0, p, x, x);
 * const out = new Float32Array(8);
 * cache.attend(0, x, out);
 * if (Math.abs(out[7] - 7 / 8) > 0.01) throw new Error("identical values attend to themselves");
 * ```
 * @module
 */

import { type Codec, getFormat, tsCodec } from "../../codecs/mod.ts";
import {
  BudgetError,
  CapacityError,
  checkOptionFields,
  CorruptDataError,
  FormatError,
  InvalidValueError,
  ShapeError,
  showValue,
} from "../errors.ts";
import {
  type CacheBuffer,
  type CacheMemory,
  checkAppend,
  checkAttend,
  checkCacheBytes,
  checkCacheShape,
  checkHead,
  checkLayer,
  type KVCache,
  type KVCacheShape,
} from "../model/kv_cache.ts";
import { checkPageFormat, Page, PAGE_TABLE_ENTRY_BYTES } from "./page.ts";
import type { PageArena } from "./page_arena.ts";
import { intDotPartials, intDotServes, IntValues, intValuesServe } from "./int_dot.ts";
import { KeyRope } from "./key_rope.ts";
import { kernelScale, kernelScore } from "./kernel_score.ts";
import { Partial } from "./partial.ts";
import { type CachePolicy, checkPolicyShape, type FormatPair } from "./policy.ts";
import { WasmAttention } from "./wasm_attention.ts";
import { type CacheValueLimits, cacheValueLimits, checkCacheValues } from "./value_limits.ts";

export { checkCacheValues, MAX_CACHE_VALUE, type ValueLimit } from "./value_limits.ts";

/**
 * Tokens of one format pair for one KV head, in pages. Tokens arrive in whole groups (the cache's
 * eviction quantum), so channel-axis groups are always complete and pages always hold whole groups.
 */
export class PagePool {
  /** The pool's formats. */
  readonly pair: FormatPair;
  /** Pages in fill order; only the last may be partly full. */
  readonly pages: Page[] = [];
  /** Tokens a page write takes at once (the largest channel-axis group of the pair, else 1). */
  readonly quantum: number;
  readonly #keyCodec: Codec;
  readonly #valueCodec: Codec;
  readonly #pageTokens: number;
  readonly #d: number;
  readonly #arena: PageArena | undefined;
  /** Whether the pages store keys before RoPE (and record their key groups' positions). */
  readonly preRope: boolean;
  /** Tokens per channel group of the key format (1 for token-axis keys). */
  readonly keyGroup: number;

  /**
   * Creates an empty pool.
   * @param pair formats
   * @param codecFor codec lookup by format name
   * @param pageTokens tokens per page
   * @param headDim elements per token
   * @param arena WebAssembly memory for the pages (wasm backend), else JS arrays
   * @param preRope keys are stored before RoPE (a channel-axis key format)
   */
  constructor(
    pair: FormatPair,
    codecFor: (format: string) => Codec,
    pageTokens: number,
    headDim: number,
    arena?: PageArena,
    preRope = false,
  ) {
    this.#arena = arena;
    this.preRope = preRope;
    this.pair = pair;
    this.#keyCodec = codecFor(pair.keyFormat);
    this.#valueCodec = codecFor(pair.valueFormat);
    this.#pageTokens = pageTokens;
    this.#d = headDim;
    this.quantum = Math.max(channelGroup(this.#keyCodec), channelGroup(this.#valueCodec));
    this.keyGroup = channelGroup(this.#keyCodec);
  }

  /** Tokens held. */
  get length(): number {
    return this.pages.reduce((a, p) => a + p.n, 0);
  }

  /** Bytes one more page would hold, its page-table entry included. */
  get pageBytes(): number {
    return Page.bytesFor(
      this.#keyCodec,
      this.#valueCodec,
      this.#pageTokens,
      this.#d,
      this.#arena !== undefined,
      this.preRope,
    );
  }

  /** Bytes held: pages with their page-table entries. */
  get bytes(): number {
    return this.pages.reduce((a, p) => a + p.bytes, 0);
  }

  /**
   * Adds `count` tokens (token-major f32); count is a multiple of quantum that divides the page size.
   * @param k keys, count × d
   * @param v values, count × d
   * @param count tokens
   * @param fresh the page to add when the last one is full (from allocatePage), else one is made
   * @param pos position of the first token (the tokens are consecutive)
   */
  write(k: Float32Array, v: Float32Array, count: number, fresh?: Page, pos = 0): void {
    const last = this.pages[this.pages.length - 1];
    if (!last || last.n + count > last.capacity) this.pages.push(fresh ?? this.allocatePage());
    this.pages[this.pages.length - 1].write(k, v, count, pos);
  }

  /**
   * Whether a write of `count` tokens needs a new page.
   * @param count tokens
   * @returns true when the last page cannot take them (or there is none)
   */
  needsPage(count: number): boolean {
    const last = this.pages[this.pages.length - 1];
    return !last || last.n + count > last.capacity;
  }

  /**
   * A new empty page of the pool's formats, not yet part of it (write adds it).
   * @returns the page
   */
  allocatePage(): Page {
    return new Page(
      this.#keyCodec,
      this.#valueCodec,
      this.#pageTokens,
      this.#d,
      this.#arena,
      this.preRope,
    );
  }

  /**
   * Appends an empty page (deserialisation fills it).
   * @returns the page
   */
  newPage(): Page {
    const page = this.allocatePage();
    this.pages.push(page);
    return page;
  }

  /** Returns the pages' arena storage; the pool must not be used afterwards. */
  release(): void {
    for (const page of this.pages) page.release();
  }
}

/** Tokens one channel-axis group of a codec spans, 1 for token-axis and ungrouped formats. */
function channelGroup(codec: Codec): number {
  return codec.spec.axis === "channel" ? codec.spec.group : 1;
}

/**
 * Per layer and KV head: sinks, the window ring and the pools. The ring holds the recent window
 * plus up to quantum − 1 older tokens waiting to be evicted together as one group. With a staging
 * format of its own, the waiting tokens leave windowK/V (then a ring of the recent window alone)
 * for stageK/V in the order they arrived, re-encoded in that format.
 */
class HeadStore {
  readonly sinkK: Uint32Array;
  readonly sinkV: Uint32Array;
  sinkN = 0;
  readonly windowK: Uint32Array;
  readonly windowV: Uint32Array;
  readonly stageK: Uint32Array;
  readonly stageV: Uint32Array;
  /**
   * Attention accumulated by each eviction chunk in the ring (mean over the group's query heads,
   * summed over its tokens): the chunk's tier needs only the sum, so one float per chunk.
   */
  readonly windowScore: Float32Array;
  /** Slot of windowK/V holding the oldest of its tokens. */
  windowStart = 0;
  /** Tokens in the ring: staged (the oldest) and in windowK/V. */
  windowN = 0;
  /** Tokens moved to pages (whole chunks); numbers the ring's chunks. */
  paged = 0;
  readonly pools = new Map<string, PagePool>();

  constructor(
    sinks: number,
    ringSlots: number,
    slotWords: number,
    stageWords: number,
    scoreSlots: number,
  ) {
    this.sinkK = new Uint32Array(sinks * slotWords);
    this.sinkV = new Uint32Array(sinks * slotWords);
    this.windowK = new Uint32Array(ringSlots * slotWords);
    this.windowV = new Uint32Array(ringSlots * slotWords);
    this.stageK = new Uint32Array(stageWords);
    this.stageV = new Uint32Array(stageWords);
    this.windowScore = new Float32Array(scoreSlots);
  }
}

/**
 * Heap one KV head takes besides the buffers counted on their own (its HeadStore's typed arrays and
 * Map, partials, pools): resident memory grew by 2.5 KB per head for a uniform policy and 3.1 KB
 * for a tiered one storing keys before RoPE (Deno 2.9, 200k–300k heads), rounded up. Counted so
 * that millions of heads are refused like large buffers.
 */
const HEAD_OBJECT_BYTES = 4096;

/** Heap a Partial takes besides its sums (an object and typed array headers), rounded up. */
const PARTIAL_OBJECT_BYTES = 256;

/**
 * Bytes of one Partial of head dimension d: its sums and a segment's (f64), a run's f32 sums, seven
 * f64 lane sums of l, and the object around them.
 */
function partialBytes(d: number): number {
  return 8 * d + 8 * d + 4 * d + 56 + PARTIAL_OBJECT_BYTES;
}

/**
 * Pages of up to this many tokens are accepted whatever maxSeqLen: the GPU cache's default page
 * (the CPU default is 32), so default policies fit short caches.
 */
const ALWAYS_FITTING_PAGE = 128;

/** Where one KV head's eviction chunk goes (MixedPrecisionKVCache.append). */
interface Eviction {
  /** "keyFormat|valueFormat" of the pool. */
  key: string;
  /** The pool. */
  pool: PagePool;
  /** Whether the head holds the pool already (else the eviction adds it). */
  held: boolean;
  /** Whether the write needs a new page. */
  newPage: boolean;
}

/** {@linkcode MixedPrecisionKVCache.memoryBreakdown}: bytes by part of the cache. */
export interface MemoryBreakdown {
  /** Page words holding codes. */
  codes: number;
  /** Page words holding group headers: scales and minima. */
  scales: number;
  /** WebAssembly memory blocks' alignment padding after page words (wasm backend). */
  padding: number;
  /** Page-table entries, one per page, with the key groups' positions of pre-RoPE key pages. */
  pageTables: number;
  /** Sink tokens at the window format. */
  sinks: number;
  /** The window ring at the window format: recent window and tokens awaiting eviction. */
  ring: number;
  /** Attention credited to the ring's eviction chunks (tiered policies). */
  windowScores: number;
}

/** Options of {@linkcode MixedPrecisionKVCache}. */
export interface MixedCacheOptions {
  /** Codec lookup by format name (default: the TypeScript reference codecs). */
  codecFor?: (format: string) => Codec;
  /**
   * Attention backend. `ts` (default): the reference, decoding every segment to f32 and attending
   * it in the WASM kernels' f32 steps (core/cache/kernel_score.ts, Partial.addBlock), so both
   * backends give the same outputs. `wasm`: pages live in WebAssembly memory and fused-dequant
   * SIMD kernels attend each page in place, merging flash-decoding partials (head_dim must be a
   * multiple of 4).
   */
  backend?: "ts" | "wasm";
  /**
   * Attend pages of int2/int4/int8 g32 keys (token axis; int4/int8 also channel axis) and
   * token-axis values with integer dot products (the query, or query·scale, and the weight·scale
   * products rounded to i16; core/cache/int_dot.ts, which also bounds the difference from exact
   * attention): the fast path of the wasm backend, mirrored bit for bit by the ts backend.
   * `intDotServes` says which pages; on other pages served values (`intValuesServe`) are still
   * summed with integers beside exactly scored keys, and the rest stay exact. Default true: the
   * rounding moves outputs
   * by about 5e-5 of their largest entry with int8 or channel-axis keys, and with int2/int4 keys per
   * token, whose query is rounded to 8 bits, by 2–3e-3 (core/cache/PAGES.md) and up to 2.7e-2 on
   * random data at d = 128 where int4 itself moves them by 0.33: an order of magnitude below the
   * quantization error. In a decode step the exact fused path takes 1.25–1.73× FP32's time
   * at d = 64 and 0.81–1.18× at d = 128, the integer path 0.70–0.93× and 0.43–0.61× (README,
   * "Measured figures"). false attends every page exactly.
   * The same default on both backends keeps ts and wasm within 1e-6 of each other, scores of any
   * size included (core/cache/PAGES.md); the ts backend is the reference, not a fast path.
   */
  integerDot?: boolean;
  /**
   * Memory budget in bytes (as memory() counts them). An append that would need more throws
   * {@linkcode BudgetError} and changes nothing; a budget below the fixed buffers (sinks, window
   * ring) fails at construction.
   */
  maxBytes?: number;
}

/** The fields of {@linkcode MixedCacheOptions}. */
const MIXED_CACHE_OPTIONS: Record<keyof MixedCacheOptions, true> = {
  codecFor: true,
  backend: true,
  integerDot: true,
  maxBytes: true,
};

/**
 * One kernel call of the WASM backend over a head's gathered tokens (ending at `end`), as the TS
 * reference replays it: exact, values summed with integers beside exact scores, or a page the
 * integer path attends whole (no gathered tokens).
 */
type Step =
  | { kind: "exact"; end: number }
  | { kind: "integer values" | "integer page"; end: number; page: Page };

/**
 * A paged mixed-precision KV cache driven by a {@linkcode CachePolicy}.
 */
export class MixedPrecisionKVCache implements KVCache {
  readonly shape: KVCacheShape;
  /** The policy deciding where tokens go. */
  readonly policy: CachePolicy;
  readonly #codecFor: (format: string) => Codec;
  readonly #window: Codec;
  readonly #slotWords: number;
  /** Codec of the tokens waiting for eviction when the policy gives them their own format. */
  readonly #staging: Codec | undefined;
  /** Words of one staged token. */
  readonly #stageWords: number;
  /** Scratch: one token's K and V in the window format, on its way to staging. */
  readonly #windowWords: Uint32Array;
  /** Slots of windowK/V: the whole ring, or the recent window alone when tokens are staged apart. */
  readonly #windowSlots: number;
  /** Tokens evicted from the window at once: the largest channel-axis group of the policy. */
  readonly evictQuantum: number;
  /** Ring tokens per head: recentWindow (at most maxSeqLen) + evictQuantum. */
  readonly #ring: number;
  /** Sink slots per head: sinkTokens, at most maxSeqLen. */
  readonly #sinks: number;
  /** Whether window scores matter: only a policy with a choice of formats reads them. */
  readonly #tracksScores: boolean;
  /** "keyFormat|valueFormat" of every pair the policy declares: formatFor must choose one. */
  readonly #pairKeys: Set<string>;
  /** Chunk score slots per head: the most eviction chunks the ring holds at once. */
  readonly #chunkSlots: number;
  readonly #evictK: Float32Array;
  readonly #evictV: Float32Array;
  #heads: HeadStore[][];
  readonly #lengths: Int32Array;
  // scratch, reused across calls
  readonly #k: Float32Array;
  readonly #v: Float32Array;
  readonly #scores: Float64Array;
  /** Per gathered token: the start of its group when its key turned by its offset only, else −1. */
  readonly #turnStart: Int32Array;
  /** A query head turned back by a group's start (KeyRope.turnQueryBack). */
  readonly #turnedQuery: Float32Array;
  /** The WASM backend's kernel calls over the gathered tokens, in its order (#gather). */
  readonly #steps: Step[] = [];
  readonly #partial: Partial;
  /** The attention backend in use. */
  readonly backend: "ts" | "wasm";
  /** Whether int2/int4/int8 g32 pages are attended with integer dot products (intDotServes). */
  readonly integerDot: boolean;
  /** Memory budget in bytes, if any. */
  readonly maxBytes: number | undefined;
  readonly #wasm: WasmAttention | undefined;
  /** RoPE's angles when channel-axis key pages store keys before RoPE (policy.ropeBase). */
  readonly #rope: KeyRope | undefined;
  /** What the policy's formats hold, checked before an append changes anything. */
  readonly #limits: CacheValueLimits;
  /** Byte offsets of the rope tables in WebAssembly memory (KeyRope.kernelTables). */
  #ropePtr = 0;
  #ropePositionsPtr = 0;
  #partials: Partial[] = [];
  #segment: Partial;
  #windowScores = new Float64Array(0);

  /**
   * Creates an empty cache; every format the policy can choose is checked now, and every size
   * before anything is allocated. sinkTokens and recentWindow past maxSeqLen are accepted and
   * allocate maxSeqLen tokens (no more are ever held; such a window never evicts, as before); a
   * tiered policy's window scores keep one slot per eviction chunk of recentWindow, as the GPU
   * cache's do, so copies between them match.
   * @param shape the cache's shape
   * @param policy where tokens go
   * @param options codecs and attention backend
   * @throws {ShapeError} for a dimension that is not a positive integer, pageTokens over both
   *   128 and maxSeqLen rounded up to the largest channel group (such a page never fills), the wasm
   *   backend with a head_dim not a multiple of 4, or ropeBase with an odd head_dim
   * @throws {FormatError} for a format whose group does not divide head_dim, or pageTokens not a
   *   multiple of a channel-axis group
   * @throws {InvalidValueError} for a missing policy, an unknown option, maxBytes ≤ 0, an unknown
   *   backend, a non-boolean integerDot or a codecFor that is not a function
   * @throws {CapacityError} when a buffer (sinks, window ring, window scores, scratch, RoPE tables,
   *   one page) would exceed MAX_BUFFER_BYTES, or those allocated now MAX_FIXED_BYTES together
   * @throws {BudgetError} when maxBytes is below the sinks, window ring and window scores
   */
  constructor(shape: KVCacheShape, policy: CachePolicy, options: MixedCacheOptions = {}) {
    checkCacheShape(shape);
    checkPolicyShape(policy, shape);
    checkOptionFields(options, MIXED_CACHE_OPTIONS, "MixedPrecisionKVCache options");
    this.shape = { ...shape };
    this.policy = policy;
    this.backend = options.backend ?? "ts";
    this.maxBytes = options.maxBytes;
    if (this.maxBytes !== undefined && !(this.maxBytes > 0)) {
      throw new InvalidValueError(
        `maxBytes is ${showValue(this.maxBytes)}, expected a positive number of bytes`,
      );
    }
    if (this.backend !== "ts" && this.backend !== "wasm") {
      throw new InvalidValueError(`backend ${showValue(this.backend)}: expected "ts" or "wasm"`);
    }
    this.integerDot = options.integerDot ?? true;
    if (typeof this.integerDot !== "boolean") {
      throw new InvalidValueError(
        `integerDot is ${showValue(this.integerDot)}, expected a boolean`,
      );
    }
    if (options.codecFor !== undefined && typeof options.codecFor !== "function") {
      throw new InvalidValueError(
        `codecFor is ${showValue(options.codecFor)}, expected a function of a format name`,
      );
    }
    if (this.backend === "wasm" && shape.headDim % 4 !== 0) {
      throw new ShapeError(
        `backend wasm needs head_dim a multiple of 4, got ${shape.headDim}`,
      );
    }
    this.#codecFor = options.codecFor ?? tsCodec;
    const d = shape.headDim;
    if (policy.ropeBase !== undefined && d % 2 !== 0) {
      throw new ShapeError(`ropeBase needs an even head_dim, got ${d}`);
    }
    this.#window = this.#codecFor(policy.windowFormat);
    const staging = policy.stagingFormat ?? policy.windowFormat;
    this.#staging = staging === policy.windowFormat ? undefined : this.#codecFor(staging);
    for (const [codec, what] of [[this.#window, "window"], [this.#staging, "staging"]] as const) {
      if (codec === undefined) continue;
      checkPageFormat(codec, policy.pageTokens, d);
      if (codec.spec.axis === "channel") {
        throw new InvalidValueError(
          `${what} format ${codec.spec.name} must not group along tokens`,
        );
      }
    }
    let quantum = 1;
    for (const pair of policy.pairs()) {
      for (const f of [pair.keyFormat, pair.valueFormat]) {
        const codec = this.#codecFor(f);
        checkPageFormat(codec, policy.pageTokens, d);
        quantum = Math.max(quantum, channelGroup(codec));
      }
    }
    if (policy.pageTokens % quantum !== 0) {
      throw new FormatError(
        `pageTokens ${policy.pageTokens} is not a multiple of the largest channel group ${quantum}`,
      );
    }
    this.evictQuantum = quantum;
    const M = shape.maxSeqLen, fill = Math.ceil(M / quantum) * quantum;
    if (policy.pageTokens > Math.max(fill, ALWAYS_FITTING_PAGE)) {
      throw new ShapeError(
        `policy ${policy.label}: pageTokens ${policy.pageTokens} is more than maxSeqLen ${M} can ` +
          `fill (${fill} tokens in groups of ${quantum}); pages of up to ` +
          `${Math.max(fill, ALWAYS_FITTING_PAGE)} tokens are accepted`,
      );
    }
    // the angle tables only where some pool stores keys before RoPE (channel-axis keys)
    const turned = policy.pairs().some((p) => getFormat(p.keyFormat).axis === "channel");
    const rope = policy.ropeBase !== undefined && turned;
    this.#tracksScores = policy.pairs().length > 1;
    this.#pairKeys = new Set(policy.pairs().map((p) => `${p.keyFormat}|${p.valueFormat}`));
    this.#sinks = Math.min(policy.sinkTokens, M);
    this.#ring = Math.min(policy.recentWindow, M) + quantum;
    this.#windowSlots = this.#staging ? Math.min(policy.recentWindow, M) : this.#ring;
    this.#chunkSlots = Math.ceil((policy.recentWindow + quantum) / quantum);
    this.#slotWords = this.#window.wordsFor(d);
    this.#stageWords = this.#staging ? this.#staging.wordsFor(d) : 0;
    this.#windowWords = new Uint32Array(this.#staging ? 2 * this.#slotWords : 0);
    this.#checkBytes(rope);
    if (rope) this.#rope = new KeyRope(d, M, quantum, policy.ropeBase!);
    this.#limits = cacheValueLimits({
      windowFormat: policy.windowFormat,
      stagingFormat: staging,
      ropeBase: policy.ropeBase,
      pairs: policy.pairs(),
    });
    this.#evictK = new Float32Array(quantum * d);
    this.#evictV = new Float32Array(quantum * d);
    this.#heads = this.#freshHeads();
    this.#lengths = new Int32Array(shape.nLayers);
    this.#k = new Float32Array(shape.maxSeqLen * d);
    this.#v = new Float32Array(shape.maxSeqLen * d);
    this.#scores = new Float64Array(shape.maxSeqLen);
    this.#turnStart = new Int32Array(rope ? shape.maxSeqLen : 0);
    this.#turnedQuery = new Float32Array(d);
    this.#partial = new Partial(d);
    this.#segment = new Partial(d);
    if (this.backend === "wasm") {
      const hq = shape.nHeads / shape.nKvHeads;
      this.#wasm = new WasmAttention({ integerDot: this.integerDot });
      if (this.#rope) {
        const { offsets, positions } = this.#rope.kernelTables();
        [this.#ropePtr, this.#ropePositionsPtr] = [offsets, positions].map((table) => {
          const at = this.#wasm!.arena.alloc(table.byteLength);
          new Float32Array(this.#wasm!.arena.memory.buffer, at, table.length).set(table);
          return at;
        });
      }
      this.#partials = Array.from({ length: hq }, () => new Partial(d));
      this.#windowScores = new Float64Array(hq * this.#ring);
    }
  }

  /**
   * Refuses, before anything is allocated, buffers the runtime cannot hold (checkCacheBytes) and
   * fixed buffers over the memory budget.
   * @param rope whether the RoPE angle tables are needed
   */
  #checkBytes(rope: boolean): void {
    const { nLayers, nHeads, nKvHeads, headDim: d, maxSeqLen: M } = this.shape;
    const heads = nLayers * nKvHeads, slot = 4 * this.#slotWords, Q = this.evictQuantum;
    const scoreSlots = this.#tracksScores ? this.#chunkSlots : 0;
    const staged = this.#staging ? 4 * this.#stageWords * Q : 0;
    const buffers: CacheBuffer[] = [
      { name: "sink buffer", bytes: slot * this.#sinks, count: 2 * heads },
      { name: "window ring", bytes: slot * this.#windowSlots, count: 2 * heads },
      { name: "staging buffer", bytes: staged, count: 2 * heads },
      { name: "window scores", bytes: 4 * scoreSlots, count: heads },
      { name: "per-head objects", bytes: HEAD_OBJECT_BYTES, count: heads },
      { name: "layer lengths", bytes: 4 * nLayers },
      { name: "attention scratch", bytes: 4 * M * d, count: 2 },
      { name: "attention scores", bytes: 8 * M },
      { name: "group starts", bytes: rope ? 4 * M : 0 },
      { name: "reference partials", bytes: partialBytes(d), count: 2 },
      { name: "turned query", bytes: 4 * d },
      { name: "eviction scratch", bytes: 4 * Q * d, count: 2 },
    ];
    // cos and sin of every position; the wasm backend joins them, then copies them to its memory
    if (rope) buffers.push({ name: "RoPE table", bytes: 2 * M * d, count: 2 });
    if (rope && this.backend === "wasm") {
      buffers.push({ name: "RoPE kernel table", bytes: 4 * M * d, count: 2 });
    }
    if (this.backend === "wasm") {
      const hq = nHeads / nKvHeads;
      buffers.push({ name: "wasm window scores", bytes: 8 * hq * this.#ring });
      // one partial softmax per query head of a group: its sums and the object around them
      buffers.push({ name: "query-head partials", bytes: partialBytes(d), count: hq });
    }
    // pages come as tokens arrive, but one that can never be allocated is refused now
    for (const pair of this.policy.pairs()) {
      for (const f of [pair.keyFormat, pair.valueFormat]) {
        const bytes = 4 * this.#codecFor(f).wordsFor(this.policy.pageTokens * d);
        buffers.push({ name: `${f} page`, bytes, count: 0 });
      }
    }
    checkCacheBytes("MixedPrecisionKVCache", this.shape, buffers);
    // what memory() reports of an empty cache
    const fixed = heads *
      (2 * slot * (this.#sinks + this.#windowSlots) + 2 * staged + 4 * scoreSlots);
    if (this.maxBytes !== undefined && fixed > this.maxBytes) {
      throw new BudgetError(
        `memory budget ${this.maxBytes} bytes is below the cache's fixed buffers (sinks and window ` +
          `ring): ${fixed} bytes`,
        fixed,
      );
    }
  }

  #freshHeads(): HeadStore[][] {
    const { nLayers, nKvHeads } = this.shape;
    return Array.from(
      { length: nLayers },
      () =>
        Array.from(
          { length: nKvHeads },
          () =>
            new HeadStore(
              this.#sinks,
              this.#windowSlots,
              this.#slotWords,
              this.#staging ? this.evictQuantum * this.#stageWords : 0,
              this.#tracksScores ? this.#chunkSlots : 0,
            ),
        ),
    );
  }

  length(layer: number): number {
    checkLayer(this.shape, layer);
    return this.#lengths[layer];
  }

  append(layer: number, pos: number, k: Float32Array, v: Float32Array): void {
    checkAppend(this.shape, layer, pos, this.#lengths[layer], k, v);
    checkCacheValues(k, "k", this.#limits.key);
    checkCacheValues(v, "v", this.#limits.value);
    const evictions = this.#evictions(layer, pos);
    if (this.maxBytes !== undefined) {
      let more = 0;
      for (const e of evictions) if (e?.newPage) more += e.pool.pageBytes;
      const now = this.memory().bytes;
      if (now + more > this.maxBytes) {
        throw new BudgetError(
          `appending position ${pos} to layer ${layer} needs ${more} more bytes: ` +
            `${now + more} would exceed the memory budget of ${this.maxBytes} bytes`,
        );
      }
    }
    const pages = this.#allocatePages(evictions, layer, pos);
    // nothing below can throw: the cache changes only after every check and allocation passed
    const d = this.shape.headDim, R = this.#ring, sw = this.#slotWords;
    for (let h = 0; h < this.shape.nKvHeads; h++) {
      const store = this.#heads[layer][h];
      const kh = k.subarray(h * d, (h + 1) * d), vh = v.subarray(h * d, (h + 1) * d);
      if (pos < this.policy.sinkTokens) {
        this.#window.encodeInto(kh, store.sinkK.subarray(store.sinkN * sw));
        this.#window.encodeInto(vh, store.sinkV.subarray(store.sinkN * sw));
        store.sinkN++;
        continue;
      }
      this.#push(store, kh, vh);
      // the first token of a chunk takes its score slot over from the chunk evicted before it
      if (this.#tracksScores && store.windowN % this.evictQuantum === 0) {
        store.windowScore[this.#chunkSlot(store, store.windowN)] = 0;
      }
      if (++store.windowN === R) this.#evict(store, evictions[h]!, pages[h]);
    }
    this.#lengths[layer] = pos + 1;
  }

  /** Tokens of the ring in the staging buffer: its oldest windowN − windowSlots, if staged apart. */
  #stagedCount(store: HeadStore): number {
    return this.#staging ? Math.max(0, store.windowN - this.#windowSlots) : 0;
  }

  /**
   * Adds a token at the newest end of the ring (the caller counts it). With a staging format, a
   * full recent window first hands its oldest token to the staging buffer, re-encoded.
   */
  #push(store: HeadStore, k: Float32Array, v: Float32Array): void {
    const sw = this.#slotWords, W = this.#windowSlots, staging = this.#staging;
    let held = store.windowN;
    if (staging) {
      const staged = this.#stagedCount(store), at = staged * this.#stageWords;
      held -= staged;
      if (held === W) {
        // the window's oldest token (with no recent window, the new one, through the window
        // format as every other token) goes to staging as the window holds it: its window words
        // decoded, then encoded in the staging format. The eviction scratch is free here: an
        // eviction decodes into it only after this push.
        const d = this.shape.headDim, slot = store.windowStart * sw;
        const tk = this.#evictK.subarray(0, d), tv = this.#evictV.subarray(0, d);
        const [wk, wv] = W === 0
          ? [this.#tokenWords(k, 0), this.#tokenWords(v, sw)]
          : [store.windowK.subarray(slot), store.windowV.subarray(slot)];
        this.#window.decodeWords(wk, d, tk);
        this.#window.decodeWords(wv, d, tv);
        staging.encodeInto(tk, store.stageK.subarray(at));
        staging.encodeInto(tv, store.stageV.subarray(at));
        if (W === 0) return;
        store.windowStart = (store.windowStart + 1) % W;
        held--;
      }
    }
    const slot = ((store.windowStart + held) % W) * sw;
    this.#window.encodeInto(k, store.windowK.subarray(slot));
    this.#window.encodeInto(v, store.windowV.subarray(slot));
  }

  /** One token's words in the window format, in a scratch at word `at` (K at 0, V at sw). */
  #tokenWords(x: Float32Array, at: number): Uint32Array {
    const words = this.#windowWords.subarray(at, at + this.#slotWords);
    this.#window.encodeInto(x, words);
    return words;
  }

  /** Decodes the ring's i-th oldest token into k and v (d floats each). */
  #decodeRingToken(store: HeadStore, i: number, k: Float32Array, v: Float32Array): void {
    const d = this.shape.headDim, staged = this.#stagedCount(store);
    if (i < staged) {
      const at = i * this.#stageWords;
      this.#staging!.decodeWords(store.stageK.subarray(at), d, k.subarray(0, d));
      this.#staging!.decodeWords(store.stageV.subarray(at), d, v.subarray(0, d));
      return;
    }
    const slot = ((store.windowStart + i - staged) % this.#windowSlots) * this.#slotWords;
    this.#window.decodeWords(store.windowK.subarray(slot), d, k.subarray(0, d));
    this.#window.decodeWords(store.windowV.subarray(slot), d, v.subarray(0, d));
  }

  /**
   * Where each KV head's eviction goes if an append at `pos` causes one: the pool the chunk's mean
   * score selects (made, not yet added, when the head has none of that pair) and whether it needs
   * a new page. Changes nothing.
   * @throws FormatError when the policy chooses a pair it did not declare in pairs()
   */
  #evictions(layer: number, pos: number): (Eviction | undefined)[] {
    const out: (Eviction | undefined)[] = new Array(this.shape.nKvHeads).fill(undefined);
    if (pos < this.policy.sinkTokens) return out;
    const Q = this.evictQuantum;
    for (let h = 0; h < this.shape.nKvHeads; h++) {
      const store = this.#heads[layer][h];
      if (store.windowN + 1 < this.#ring) continue;
      const score = this.#tracksScores ? store.windowScore[this.#chunkSlot(store, 0)] : 0;
      const pair = this.policy.formatFor(layer, h, score / Q);
      const key = `${pair.keyFormat}|${pair.valueFormat}`;
      if (!this.#pairKeys.has(key)) {
        throw new FormatError(
          `policy ${this.policy.label} chose ${key} for layer ${layer} KV head ${h}, not one of ` +
            `the pairs it declares: ${[...this.#pairKeys].join(", ")}`,
        );
      }
      const held = store.pools.get(key);
      const pool = held ?? this.createPool(pair);
      out[h] = { key, pool, held: held !== undefined, newPage: pool.needsPage(Q) };
    }
    return out;
  }

  /**
   * The new pages the evictions need, allocated before anything changes: if memory cannot grow,
   * the pages allocated so far are returned and the append fails with the cache as it was.
   * @throws CapacityError when a page cannot be allocated
   */
  #allocatePages(
    evictions: (Eviction | undefined)[],
    layer: number,
    pos: number,
  ): (Page | undefined)[] {
    const pages: (Page | undefined)[] = [];
    try {
      for (const e of evictions) pages.push(e?.newPage ? e.pool.allocatePage() : undefined);
    } catch (cause) {
      for (const p of pages) p?.release();
      throw new CapacityError(
        `appending position ${pos} to layer ${layer}: no memory for a new page ` +
          `(${cause instanceof Error ? cause.message : String(cause)})`,
        { cause },
      );
    }
    return pages;
  }

  /**
   * Moves the oldest evictQuantum tokens of the ring to the pool their mean observed score selects:
   * one decision per group, so a channel-axis group is encoded whole and only one staging area
   * (the ring itself) exists per head.
   */
  #evict(store: HeadStore, to: Eviction, fresh: Page | undefined): void {
    const Q = this.evictQuantum, d = this.shape.headDim;
    for (let i = 0; i < Q; i++) {
      this.#decodeRingToken(store, i, this.#evictK.subarray(i * d), this.#evictV.subarray(i * d));
    }
    const pos = this.policy.sinkTokens + store.paged;
    if (to.pool.preRope) this.#rope!.unrotate(this.#evictK, Q, to.pool.keyGroup, pos);
    if (!to.held) store.pools.set(to.key, to.pool);
    to.pool.write(this.#evictK, this.#evictV, Q, fresh, pos);
    // staged tokens leave their own buffer; otherwise the oldest Q slots of the ring free up
    if (!this.#staging) store.windowStart = (store.windowStart + Q) % this.#windowSlots;
    store.windowN -= Q;
    store.paged += Q;
  }

  /** Score slot of the chunk holding ring index i (0: the oldest token). */
  #chunkSlot(store: HeadStore, i: number): number {
    const Q = this.evictQuantum;
    return (store.paged / Q + Math.floor(i / Q)) % this.#chunkSlots;
  }

  /**
   * The TypeScript reference attention: decode each segment to float32, score as the WASM kernels
   * do (#score), then a softmax per kernel call's segment (Partial.addBlock) merged by
   * log-sum-exp. Window tokens come first so their scores can be credited back to their slots.
   */
  attend(layer: number, q: Float32Array, out: Float32Array): void {
    checkAttend(this.shape, layer, this.#lengths[layer], q, out);
    if (this.#wasm) {
      this.#attendWasm(this.#wasm, layer, q, out);
      return;
    }
    const { nHeads, nKvHeads, headDim: d } = this.shape;
    const group = nHeads / nKvHeads;
    for (let kv = 0; kv < nKvHeads; kv++) {
      const store = this.#heads[layer][kv];
      const n = this.#gather(store);
      const qGroup = q.subarray(kv * group * d, (kv + 1) * group * d);
      // each page's value codes decoded once per call, not once per query head
      const valueGroups = new Map<Page, IntValues>();
      const intPages = new Map<Page, Float64Array>();
      for (const step of this.#steps) {
        if (step.kind === "exact") continue;
        const p = step.page;
        if (step.kind === "integer values") {
          valueGroups.set(p, new IntValues(p.valueCodec.spec, p.vWords, p.n, d));
          continue;
        }
        intPages.set(
          p,
          intDotPartials({
            kSpec: p.keyCodec.spec,
            k: p.kWords,
            vSpec: p.valueCodec.spec,
            v: p.vWords,
            n: p.n,
            d,
            cap: p.capacity,
          }, qGroup),
        );
      }
      for (let g = 0; g < group; g++) {
        const h = kv * group + g;
        const partial = this.#partial;
        partial.reset();
        this.#score(q, h * d, n);
        let from = 0;
        for (const step of this.#steps) {
          const end = step.end;
          if (step.kind === "integer page") {
            const o = intPages.get(step.page)!, seg = this.#segment, at = g * (d + 2);
            seg.m = o[at];
            seg.l = o[at + 1];
            seg.acc.set(o.subarray(at + 2, at + 2 + d));
            partial.merge(seg);
          } else if (step.kind === "integer values") {
            const values = valueGroups.get(step.page)!;
            partial.addWeighted(this.#scores, from, end, (w, sums) => values.sums(w, sums));
          } else partial.addBlock(this.#scores, this.#v, from, end, group % 4 === 0);
          from = end;
        }
        partial.finish(out.subarray(h * d, (h + 1) * d));
        this.#creditWindow(store, partial, group);
      }
    }
  }

  /** Whether integerDot applies to a pool (its formats; keys before RoPE turn after decoding). */
  #intDotPool(pool: PagePool): boolean {
    if (pool.preRope) return false;
    return this.integerDot && intDotServes(
      getFormat(pool.pair.keyFormat),
      getFormat(pool.pair.valueFormat),
      this.shape.headDim,
      this.policy.pageTokens,
    );
  }

  /**
   * The fused WASM attention: one kernel call over the full-precision tokens (window in slot
   * order, including tokens waiting for eviction, and sinks; copied per call, in the window format) and one
   * per page, read in place; partials merge by log-sum-exp. Window scores come from the first
   * call's scores, credited as the reference does.
   */
  #attendWasm(wasm: WasmAttention, layer: number, q: Float32Array, out: Float32Array): void {
    const { nHeads, nKvHeads, headDim: d } = this.shape;
    const group = nHeads / nKvHeads, R = this.#ring, sw = this.#slotWords;
    const P = this.policy.pageTokens, win = this.#window, W = this.#windowSlots;
    // scratch for the most sinks and window a head can hold, reserved once: reserving for the
    // tokens held grew it at every append while the window filled
    const most = this.#sinks + R;
    const words = Math.max((this.#sinks + W) * sw, this.evictQuantum * this.#stageWords, sw);
    for (let kv = 0; kv < nKvHeads; kv++) {
      const store = this.#heads[layer][kv];
      const staged = this.#stagedCount(store), held = store.windowN - staged;
      const nf = held + store.sinkN;
      wasm.reserve(d, Math.max(P, most), group, words);
      wasm.q().set(q.subarray(kv * group * d, (kv + 1) * group * d));
      wasm.prepareQuery();
      wasm.clearOut();
      if (staged > 0) {
        // staged tokens are older than the recent window: no score of theirs is credited
        const n = staged * this.#stageWords, st = this.#staging!;
        wasm.segK().set(store.stageK.subarray(0, n));
        wasm.segV().set(store.stageV.subarray(0, n));
        const [kp, vp] = [wasm.segKPtr, wasm.segVPtr];
        wasm.attendSegment(st, kp, st, vp, staged, staged, d, group, false, true, true);
      }
      if (nf > 0) {
        const segK = wasm.segK(), segV = wasm.segV();
        // the ring's tokens in window order: at most two runs of slots (one copy each, where a copy
        // per slot had cost a uniform INT4 cache with a 128-token window a fifth of its attend time)
        const first = store.windowStart * sw, end = Math.min(store.windowStart + held, W) * sw;
        segK.set(store.windowK.subarray(first, end));
        segV.set(store.windowV.subarray(first, end));
        let at = end - first;
        if (at < held * sw) {
          segK.set(store.windowK.subarray(0, held * sw - at), at);
          segV.set(store.windowV.subarray(0, held * sw - at), at);
          at = held * sw;
        }
        segK.set(store.sinkK.subarray(0, store.sinkN * sw), at);
        segV.set(store.sinkV.subarray(0, store.sinkN * sw), at);
        // exact, as the TS reference attends sinks and window whatever integerDot says; scores only
        // where a policy routes chunks by them
        const credit = this.#tracksScores;
        wasm.attendSegment(
          win,
          wasm.segKPtr,
          win,
          wasm.segVPtr,
          nf,
          nf,
          d,
          group,
          credit,
          true,
          true,
        );
        if (credit) {
          const scores = wasm.scores(nf);
          for (let g = 0; g < group; g++) {
            for (let i = 0; i < held; i++) {
              this.#windowScores[g * R + staged + i] = scores[g * nf + i];
            }
          }
        }
      }
      for (const pool of store.pools.values()) {
        for (const page of pool.pages) {
          if (page.n === 0) continue;
          const { keyCodec: kc, valueCodec: vc, kPtr, vPtr, n } = page;
          if (page.starts) {
            wasm.setRope(this.#ropePtr, this.evictQuantum, this.#ropePositionsPtr, page.starts);
          }
          wasm.attendSegment(kc, kPtr, vc, vPtr, n, P, d, group, false, true);
          if (page.starts) wasm.setRope(0);
        }
      }
      for (const p of this.#partials) p.reset();
      this.#mergeOut(wasm, d);
      for (let g = 0; g < group; g++) {
        const partial = this.#partials[g], h = kv * group + g;
        partial.finish(out.subarray(h * d, (h + 1) * d));
        const inv = 1 / (partial.l * group);
        for (let i = this.#firstCredited(store); i < store.windowN; i++) {
          store.windowScore[this.#chunkSlot(store, i)] +=
            Math.exp(this.#windowScores[g * R + i] - partial.m) * inv;
        }
      }
    }
  }

  /** Merges the kernel's per-head partials into the running ones. */
  #mergeOut(wasm: WasmAttention, d: number): void {
    const o = wasm.out(), seg = this.#segment;
    for (let g = 0; g < this.#partials.length; g++) {
      const base = g * (d + 2);
      seg.m = o[base];
      seg.l = o[base + 1];
      seg.acc.set(o.subarray(base + 2, base + 2 + d));
      this.#partials[g].merge(seg);
    }
  }

  /**
   * Ring index of the oldest token still in its first recentWindow queries: older tokens wait for
   * eviction and their score (the plan's feature) is final.
   */
  #firstCredited(store: HeadStore): number {
    if (!this.#tracksScores) return store.windowN;
    return Math.max(0, store.windowN - this.policy.recentWindow);
  }

  /** Adds each window token's attention weight, averaged over the group, to its chunk's score. */
  #creditWindow(store: HeadStore, partial: Partial, group: number): void {
    const inv = 1 / (partial.l * group);
    for (let i = this.#firstCredited(store); i < store.windowN; i++) {
      store.windowScore[this.#chunkSlot(store, i)] += Math.exp(this.#scores[i] - partial.m) * inv;
    }
  }

  /**
   * #scores[0..n) for the query head at q[qAt..]: the WASM kernels' f32 steps (kernel_score.ts), a
   * key turned by its offset in its group meeting the query turned back by the group's start.
   */
  #score(q: Float32Array, qAt: number, n: number): void {
    const d = this.shape.headDim, scale = kernelScale(d), turned = this.#turnedQuery;
    let p0 = -1;
    for (let t = 0; t < n; t++) {
      const start = this.#rope ? this.#turnStart[t] : -1;
      if (start < 0) {
        this.#scores[t] = kernelScore(q, qAt, this.#k, t * d, d, scale);
        continue;
      }
      if (start !== p0) this.#rope!.turnQueryBack(q, qAt, turned, p0 = start);
      this.#scores[t] = kernelScore(turned, 0, this.#k, t * d, d, scale);
    }
  }

  /**
   * Decodes window ring, sinks and pages of one head into #k/#v; returns the count. Keys stored
   * before RoPE turn by their offset in their group, and #turnStart records the group's start.
   * #steps splits the tokens as the WASM backend's kernel calls do: staged tokens, recent window
   * with sinks, then each page in pool order (a page the integer path attends whole holds no
   * gathered tokens).
   */
  #gather(store: HeadStore): number {
    const d = this.shape.headDim, steps = this.#steps;
    steps.length = 0;
    let n = 0;
    for (; n < store.windowN; n++) {
      this.#decodeRingToken(store, n, this.#k.subarray(n * d), this.#v.subarray(n * d));
    }
    const staged = this.#stagedCount(store);
    if (staged > 0) steps.push({ kind: "exact", end: staged });
    if (store.sinkN > 0) {
      this.#window.decodeWords(
        store.sinkK,
        store.sinkN * d,
        this.#k.subarray(n * d, (n + store.sinkN) * d),
      );
      this.#window.decodeWords(
        store.sinkV,
        store.sinkN * d,
        this.#v.subarray(n * d, (n + store.sinkN) * d),
      );
      n += store.sinkN;
    }
    if (n > staged) steps.push({ kind: "exact", end: n });
    if (this.#rope) this.#turnStart.fill(-1, 0, n);
    for (const pool of store.pools.values()) {
      if (this.#intDotPool(pool)) {
        for (const page of pool.pages) {
          if (page.n > 0) steps.push({ kind: "integer page", end: n, page });
        }
        continue;
      }
      // keys on the exact path, values summed with integers (attention.ts step 3)
      const integerValues = this.integerDot &&
        intValuesServe(getFormat(pool.pair.valueFormat), d, this.policy.pageTokens);
      for (const page of pool.pages) {
        page.decodeKeys(this.#k.subarray(n * d));
        if (this.#rope) {
          const G = page.keyCodec.spec.group;
          if (page.starts) this.#rope.rotateByOffset(this.#k.subarray(n * d), page.n, G);
          for (let t = 0; t < page.n; t++) {
            this.#turnStart[n + t] = page.starts ? page.starts[Math.floor(t / G)] : -1;
          }
        }
        if (!integerValues) page.decodeValues(this.#v.subarray(n * d));
        n += page.n;
        steps.push(
          integerValues ? { kind: "integer values", end: n, page } : { kind: "exact", end: n },
        );
      }
    }
    return n;
  }

  /**
   * Visits every stored segment of one layer and KV head (for the fused backends, serialisation
   * and the tests). The arrays are the cache's own: read them, do not write them (the WASM kernels
   * decode fp16, bf16 and fp8 words as the finite values encode wrote; a hand-written infinity
   * reads as a large finite number there and as Infinity in the TS reference).
   * @param layer layer index
   * @param kvHead KV head index
   * @returns sinks and window as encoded words, and the pools
   * @throws {ShapeError} for a layer or KV head out of range
   */
  segments(layer: number, kvHead: number): {
    sinkK: Uint32Array;
    sinkV: Uint32Array;
    sinkN: number;
    windowK: Uint32Array;
    windowV: Uint32Array;
    stageK: Uint32Array;
    stageV: Uint32Array;
    /** Of the windowN ring tokens, the oldest stageN wait in stageK/V (read-only: derived). */
    stageN: number;
    windowN: number;
    windowStart: number;
    pools: PagePool[];
  } {
    checkHead(this.shape, layer, kvHead);
    const s = this.#heads[layer][kvHead];
    return {
      sinkK: s.sinkK,
      sinkV: s.sinkV,
      sinkN: s.sinkN,
      windowK: s.windowK,
      windowV: s.windowV,
      stageK: s.stageK,
      stageV: s.stageV,
      stageN: this.#stagedCount(s),
      windowN: s.windowN,
      windowStart: s.windowStart,
      pools: [...s.pools.values()],
    };
  }

  /**
   * Replaces the state of one layer and KV head with deserialised segments (used by
   * core/cache/serialize.ts; the arrays are copied, shapes checked by the caller).
   * @param layer layer index
   * @param kvHead KV head index
   * @param state sinks, window and pools as {@linkcode segments} returns them
   * @throws {ShapeError} for a layer or KV head out of range
   */
  restoreSegments(
    layer: number,
    kvHead: number,
    state: ReturnType<MixedPrecisionKVCache["segments"]>,
  ): void {
    checkHead(this.shape, layer, kvHead);
    const s = this.#heads[layer][kvHead];
    for (const pool of s.pools.values()) {
      if (!state.pools.includes(pool)) pool.release();
    }
    s.sinkK.set(state.sinkK);
    s.sinkV.set(state.sinkV);
    s.sinkN = state.sinkN;
    s.windowK.set(state.windowK);
    s.windowV.set(state.windowV);
    s.stageK.set(state.stageK);
    s.stageV.set(state.stageV);
    s.windowN = state.windowN;
    s.windowStart = state.windowStart;
    s.pools.clear();
    s.paged = 0;
    for (const pool of state.pools) {
      s.pools.set(`${pool.pair.keyFormat}|${pool.pair.valueFormat}`, pool);
      s.paged += pool.length;
    }
  }

  /**
   * Sets the positions held per layer (deserialisation), once restoreSegments has put them there.
   * @param lengths positions per layer
   * @throws {ShapeError} when there is not one length per layer, or a layer's KV heads do not
   *   each hold its length in sinks, window and pages (nothing is changed)
   */
  restoreLengths(lengths: ArrayLike<number>): void {
    const { nLayers, nKvHeads } = this.shape;
    if (lengths.length !== nLayers) {
      throw new ShapeError(
        `lengths has ${lengths.length} entries, expected ${nLayers} (one a layer)`,
      );
    }
    for (let l = 0; l < nLayers; l++) {
      for (let h = 0; h < nKvHeads; h++) {
        const s = this.#heads[l][h], held = s.sinkN + s.windowN + s.paged;
        if (lengths[l] !== held) {
          throw new ShapeError(
            `lengths[${l}] is ${
              showValue(lengths[l])
            }, but layer ${l} KV head ${h} holds ${held} ` +
              `positions in sinks, window and pages`,
          );
        }
      }
    }
    this.#lengths.set(lengths);
  }

  /**
   * Decodes every stored key and value and throws at the first that is not finite, or whose group
   * header its codec refuses, or at a window score that is not a finite number ≥ 0: what bytes
   * whose checksums hold can still carry (loadCache), and what appends never store. Elements of int
   * and int8s formats are decoded for their headers only: they cannot decode to a non-finite value
   * (decodesFinite), and scanning them had been half the time of a load.
   * @throws {CorruptDataError} naming layer, KV head, segment, token and element
   */
  checkStoredFinite(): void {
    const { nLayers, nKvHeads, headDim: d } = this.shape;
    const k = this.#k, v = this.#v;
    const ring = [this.#window, this.#staging ?? this.#window];
    for (let l = 0; l < nLayers; l++) {
      for (let h = 0; h < nKvHeads; h++) {
        const store = this.#heads[l][h];
        const check = (what: string, n: number, kc: Codec[], vc: Codec[], decode: () => void) => {
          const at = `layer ${l} KV head ${h}: ${what}`;
          try {
            decode();
          } catch (e) {
            if (e instanceof CorruptDataError) throw new CorruptDataError(`${at}: ${e.message}`);
            throw e;
          }
          for (const [x, name, codecs] of [[k, "key", kc], [v, "value", vc]] as const) {
            if (codecs.every(decodesFinite)) continue;
            for (let i = 0; i < n * d; i++) {
              if (!Number.isFinite(x[i])) {
                throw new CorruptDataError(
                  `${at}: ${name} of token ${Math.floor(i / d)}, element ${i % d}, decodes to ${
                    x[i]
                  }`,
                );
              }
            }
          }
        };
        check("window or staged tokens", store.windowN, ring, ring, () => {
          for (let t = 0; t < store.windowN; t++) {
            this.#decodeRingToken(store, t, k.subarray(t * d), v.subarray(t * d));
          }
        });
        check("sinks", store.sinkN, [this.#window], [this.#window], () => {
          this.#window.decodeWords(store.sinkK, store.sinkN * d, k.subarray(0, store.sinkN * d));
          this.#window.decodeWords(store.sinkV, store.sinkN * d, v.subarray(0, store.sinkN * d));
        });
        for (const [key, pool] of store.pools) {
          pool.pages.forEach((page, p) => {
            check(`page ${p} of pool ${key}`, page.n, [page.keyCodec], [page.valueCodec], () => {
              page.decodeKeys(k);
              page.decodeValues(v);
            });
          });
        }
        // a NaN score would match no tier, a negative one only the last
        const bad = store.windowScore.findIndex((x) => !(x >= 0 && x < Infinity));
        if (bad >= 0) {
          throw new CorruptDataError(
            `layer ${l} KV head ${h}: window score ${bad} is ${
              store.windowScore[bad]
            }, expected a ` +
              `finite number ≥ 0`,
          );
        }
      }
    }
  }

  /**
   * Throws BudgetError when the cache holds more than its memory budget: a cache restored from
   * bytes or from the GPU checks this once it is complete (appends check before they grow).
   * @param what what built the cache, for the message
   */
  checkBudget(what: string): void {
    const bytes = this.memory().bytes;
    if (this.maxBytes !== undefined && bytes > this.maxBytes) {
      throw new BudgetError(
        `${what} holds ${bytes} bytes, over the memory budget of ${this.maxBytes} bytes`,
      );
    }
  }

  /**
   * Window scores of one layer and KV head (serialisation): the attention each eviction chunk in
   * the ring gathered so far, chunk c (counting from the first token that left the window) at
   * index c mod length; empty when the policy has one format pair.
   * @param layer layer index
   * @param kvHead KV head index
   * @returns the live score array
   * @throws {ShapeError} for a layer or KV head out of range
   */
  windowScores(layer: number, kvHead: number): Float32Array {
    checkHead(this.shape, layer, kvHead);
    return this.#heads[layer][kvHead].windowScore;
  }

  /**
   * A new empty pool for a format pair, with this cache's codecs and page size (deserialisation).
   * @param pair the formats
   * @returns the pool
   */
  createPool(pair: FormatPair): PagePool {
    return new PagePool(
      pair,
      this.#codecFor,
      this.policy.pageTokens,
      this.shape.headDim,
      this.#wasm?.arena,
      this.#rope !== undefined && getFormat(pair.keyFormat).axis === "channel",
    );
  }

  /**
   * Share of stored tokens per format pair label: sinks and window counted as the window format
   * twice (e.g. "fp16|fp16"), tokens waiting in a staging format of their own as that format.
   * @returns tokens per "keyFormat|valueFormat" key, summed over layers and heads
   */
  tokensByFormat(): Map<string, number> {
    const counts = new Map<string, number>();
    const add = (key: string, n: number) => counts.set(key, (counts.get(key) ?? 0) + n);
    const win = this.policy.windowFormat, staging = this.policy.stagingFormat ?? win;
    for (const layer of this.#heads) {
      for (const s of layer) {
        const staged = this.#stagedCount(s);
        add(`${win}|${win}`, s.sinkN + s.windowN - staged);
        if (staged > 0) add(`${staging}|${staging}`, staged);
        for (const [key, pool] of s.pools) add(key, pool.length);
      }
    }
    return counts;
  }

  /**
   * Where memory().bytes go, in bytes: page words (codes and scales), page-table entries, sinks,
   * the window ring (recent window and tokens awaiting eviction) and the window scores.
   * @returns the parts; they sum to memory().bytes
   */
  memoryBreakdown(): MemoryBreakdown {
    const b = {
      codes: 0,
      scales: 0,
      padding: 0,
      pageTables: 0,
      sinks: 0,
      ring: 0,
      windowScores: 0,
    };
    for (const layer of this.#heads) {
      for (const s of layer) {
        b.sinks += s.sinkK.byteLength + s.sinkV.byteLength;
        b.ring += s.windowK.byteLength + s.windowV.byteLength + s.stageK.byteLength +
          s.stageV.byteLength;
        b.windowScores += s.windowScore.byteLength;
        for (const pool of s.pools.values()) {
          for (const page of pool.pages) {
            const { codes, scales, padding, positions } = page.parts;
            b.codes += codes;
            b.scales += scales;
            b.padding += padding;
            b.pageTables += PAGE_TABLE_ENTRY_BYTES + positions;
          }
        }
      }
    }
    return b;
  }

  memory(): CacheMemory {
    let bytes = 0;
    for (const layer of this.#heads) {
      for (const s of layer) {
        bytes += s.sinkK.byteLength + s.sinkV.byteLength + s.windowK.byteLength +
          s.windowV.byteLength + s.stageK.byteLength + s.stageV.byteLength +
          s.windowScore.byteLength;
        for (const pool of s.pools.values()) bytes += pool.bytes;
      }
    }
    let positions = 0;
    for (const n of this.#lengths) positions += n;
    const elements = positions * this.shape.nKvHeads * this.shape.headDim * 2;
    return { bytes, elements, bitsPerElement: elements === 0 ? 0 : (8 * bytes) / elements };
  }

  reset(): void {
    for (const layer of this.#heads) {
      for (const s of layer) for (const pool of s.pools.values()) pool.release();
    }
    this.#heads = this.#freshHeads();
    this.#lengths.fill(0);
  }
}

/**
 * Whether every element a codec decodes from words its decode accepts is finite: int and int8s
 * give f32(q·s) + m with |q| ≤ 255 and a finite fp16 scale and minimum (their decode refuses any
 * other header), below 2^24 in magnitude. Float formats can hold an infinite or NaN code.
 */
function decodesFinite(codec: Codec): boolean {
  return codec.spec.kind === "int" || codec.spec.kind === "int8s";
}
