/**
 * Fused decode attention over a page table of mixed formats, flash-decoding style: every page (or
 * up to {@linkcode SPLIT_TOKENS} tokens of one) is a split; a workgroup dequantizes its keys and
 * values inside the dot products, computes the split's partial (m, l, acc) for all query heads
 * that share the KV head (grouped-query attention), and writes it; the merge kernel (merge.ts)
 * then combines the partials of each head by log-sum-exp. Kernels are generated per
 * (key format, value format, head_dim, queries per KV head, page size) and cached, so the
 * format is specialised at compile time instead of branched on per element; splits of any number
 * of sequences, layers and heads go into one dispatch per format pair. Two kernel forms exist
 * ({@linkcode ScoreMemory}): workgroup memory for hardware GPUs, a storage scratch buffer for
 * software adapters; results agree to float rounding.
 *
 * Element order inside a page follows core/cache/PAGES.md: token-axis and ungrouped formats are
 * token-major (element t·d + c), channel-axis formats channel-major (element c·P + t).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { attentionProgram } from "./attention.ts";
 * import { getFormat } from "../codecs/format.ts";
 * const p = attentionProgram({
 *   keyFormat: getFormat("int4-g32-channel"), valueFormat: getFormat("int8-g32-token"),
 *   headDim: 64, queriesPerKv: 4, pageTokens: 128,
 * });
 * if (!p.shaderKey.startsWith("attend:")) throw new Error("one variant per format pair");
 * ```
 * @module
 */

import { FormatError, ShapeError } from "../core/errors.ts";
import type { FormatSpec } from "../codecs/format.ts";
import type { GpuDevice } from "./device.ts";
import type { GpuProgram, PipelineCache } from "./program.ts";
import { GrowableBuffer } from "./growable_buffer.ts";
import { mergeLoopIterations, mergeProgram } from "./merge.ts";
import { checkLoopLimit } from "./loop_limit.ts";
import { dispatchSize } from "./_io.ts";
import { checkGpuFormat, formatShaderKey, WGSL_CODEC_HELPERS, wgslDecoder } from "./wgsl_format.ts";
import { wordsForLength } from "../codecs/format.ts";

/** Most tokens one split (one workgroup) covers; longer segments are cut into several splits. */
export const SPLIT_TOKENS = 128;
/** Invocations per attention workgroup. */
const WG = 64;
/** Most query heads per KV head the kernel's registers are sized for. */
export const MAX_QUERIES_PER_KV = 16;
/** u32 fields of one split item. */
const ITEM_U32 = 8;

/** What an attention kernel variant is specialised on. */
export interface AttentionVariant {
  /** Format of the keys. */
  keyFormat: FormatSpec;
  /** Format of the values. */
  valueFormat: FormatSpec;
  /** Elements per head. */
  headDim: number;
  /** Query heads reading one KV head (nHeads / nKvHeads). */
  queriesPerKv: number;
  /** Tokens per page P (the channel-major stride). */
  pageTokens: number;
  /** Where a split's scores live (default "storage"). */
  scores?: ScoreMemory;
  /** Most tokens per split of the workgroup-memory kernel (default {@linkcode SPLIT_TOKENS}). */
  splitTokens?: number;
  /**
   * Set when the pages store channel-axis keys before RoPE (core/cache/PAGES.md): the offset rows
   * of the angle table (binding 5, core/cache/key_rope.ts `angleRows`); each key group's first
   * position follows the page's value block, one u32 per group.
   */
  ropeSpan?: number;
}

/**
 * Where a split's scores and probabilities live. "workgroup": workgroup memory, a softmax reduced
 * by all threads and loops with constant bounds; the kernel for hardware GPUs. "storage": a
 * storage scratch buffer, softmax by one thread per head and runtime loop bounds; the kernel for
 * software adapters, where llvmpipe compiles workgroup arrays and unrolled loops slowly
 * (gpu/NOTES.md, findings 1 and 2).
 */
export type ScoreMemory = "workgroup" | "storage";

function _perHead(q: number, statement: (j: number) => string): string {
  return Array.from({ length: q }, (_, j) => statement(j)).join(" ");
}

function _elementIndex(spec: FormatSpec, d: number, p: number): string {
  return spec.axis === "channel" ? `c * ${p}u + t` : `t * ${d}u + c`;
}

/**
 * The split kernel of one variant. Bindings: 0 `words: array<u32>` (read; the page words),
 * 1 `q: array<f32>` (read), 2 `items: array<Item>` (read; 8 u32 each: q_off, k_base, v_base, n,
 * tok, rec, rec_stride, head_dim), 3 `partials: array<f32>` (read_write; record r at r·(d+2):
 * m, l, acc[d]), 4 `scratch: array<f32>` (read_write; queriesPerKv × SPLIT_TOKENS floats per
 * item; storage kernel only), 5 `angles: array<f32>` (read; keys before RoPE only). One workgroup
 * per item.
 *
 * @param v the variant
 * @returns the program
 */
export function attentionProgram(v: AttentionVariant): GpuProgram {
  return v.scores === "workgroup" ? _workgroupProgram(v) : _storageProgram(v);
}

function _header(v: AttentionVariant): string {
  return `${WGSL_CODEC_HELPERS}
struct Item { q_off: u32, k_base: u32, v_base: u32, n: u32, tok: u32, rec: u32, rec_stride: u32, head_dim: u32 }
@group(0) @binding(0) var<storage, read> words: array<u32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> items: array<Item>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;
${wgslDecoder(v.keyFormat, "k_decode", "words")}
${wgslDecoder(v.valueFormat, "v_decode", "words")}
fn k_index(t: u32, c: u32) -> u32 { return ${_elementIndex(v.keyFormat, v.headDim, v.pageTokens)}; }
fn v_index(t: u32, c: u32) -> u32 { return ${
    _elementIndex(v.valueFormat, v.headDim, v.pageTokens)
  }; }
${v.ropeSpan === undefined ? "" : _keyPair(v, v.ropeSpan)}`;
}

// Keys stored before RoPE: pair (2i, 2i+1) of page token t turned forward by R(p0)·R(τ), p0 the
// position of its key group's first token (after the value block), τ its offset in the group, in
// the f32 steps of core/cache/key_rope.ts
function _keyPair(v: AttentionVariant, span: number): string {
  const D = v.headDim, H = D / 2, G = v.keyFormat.group;
  if (v.keyFormat.axis !== "channel" || D % 2 !== 0) {
    throw new ShapeError(
      `keys before RoPE need a channel-axis key format and an even head_dim, got ` +
        `${v.keyFormat.name} and ${D}`,
    );
  }
  const starts = wordsForLength(v.valueFormat, v.pageTokens * D);
  return `@group(0) @binding(5) var<storage, read> angles: array<f32>;
fn k_pair(k_base: u32, v_base: u32, t: u32, i: u32) -> vec2<f32> {
  let g = t / ${G}u;
  let r = (${span}u + words[v_base + ${starts}u + g]) * ${D}u;
  let o = (t - g * ${G}u) * ${D}u;
  let c0 = angles[r + i];
  let s0 = angles[r + ${H}u + i];
  let ct = angles[o + i];
  let st = angles[o + ${H}u + i];
  let cf = c0 * ct - s0 * st;
  let sf = s0 * ct + c0 * st;
  let a = k_decode(k_base, k_index(t, 2u * i));
  let b = k_decode(k_base, k_index(t, 2u * i + 1u));
  return vec2<f32>(a * cf - b * sf, a * sf + b * cf);
}
`;
}

// s_j += q_j · k̂_t over the channels of token tt, each key element decoded once for every head;
// `bound` is head_dim (a constant or the item's)
function _scoreLoop(v: AttentionVariant, bound: string): string {
  const D = v.headDim, Q = v.queriesPerKv;
  if (v.ropeSpan === undefined) {
    return `for (var c = 0u; c < ${bound}; c = c + 1u) {
      let k = k_decode(it.k_base, k_index(tt, c));
      ${_perHead(Q, (j) => `s${j} = s${j} + q[it.q_off + ${j * D}u + c] * k;`)}
    }`;
  }
  return `for (var i = 0u; i < ${bound} / 2u; i = i + 1u) {
      let k = k_pair(it.k_base, it.v_base, tt, i);
      ${
    _perHead(
      Q,
      (j) =>
        `s${j} = s${j} + q[it.q_off + ${j * D}u + 2u * i] * k.x; ` +
        `s${j} = s${j} + q[it.q_off + ${j * D}u + 2u * i + 1u] * k.y;`,
    )
  }
    }`;
}

function _shaderKey(v: AttentionVariant, memory: string): string {
  return `attend:${formatShaderKey(v.keyFormat)}${v.keyFormat.axis[0]}:` +
    `${formatShaderKey(v.valueFormat)}${v.valueFormat.axis[0]}:d${v.headDim}:q${v.queriesPerKv}:` +
    `p${v.pageTokens}${v.ropeSpan === undefined ? "" : `:rope${v.ropeSpan}`}${memory}`;
}

/** Threads of a workgroup-memory kernel: one per channel in the value phase, at least 64. */
function _workgroupThreads(headDim: number): number {
  return Math.min(256, Math.max(64, headDim));
}

/**
 * Workgroup memory the workgroup-memory kernel declares: `sc`, Q × max(splitTokens, threads)
 * floats, and `red`, one float per thread. Compare with the device's
 * `maxComputeWorkgroupStorageSize` (16384 bytes by default), which 16 query heads of head_dim
 * ≥ 241 exceed.
 *
 * @param headDim elements per head
 * @param queriesPerKv query heads per KV head
 * @param splitTokens most tokens per split (default {@linkcode SPLIT_TOKENS})
 * @returns bytes
 */
export function workgroupScoreBytes(
  headDim: number,
  queriesPerKv: number,
  splitTokens: number = SPLIT_TOKENS,
): number {
  const threads = _workgroupThreads(headDim);
  return 4 * (queriesPerKv * Math.max(splitTokens, threads) + threads);
}

/**
 * An upper bound of the loop iterations one invocation of a split kernel runs over a split of
 * `tokens` tokens (gpu/loop_limit.ts): every loop counted as its trips plus two, per enclosing
 * trip. The storage kernel's busiest thread scores ⌈n/64⌉ tokens over head_dim channels, runs the
 * softmax's two passes, and sums ⌈d/64⌉ channels over the tokens; the workgroup kernel the same
 * over its threads and teams.
 * @param v the variant (head_dim, queries per KV head, scores and split size)
 * @param tokens tokens in the split, at most its split size
 * @returns iterations
 */
export function splitLoopIterations(
  v: Pick<AttentionVariant, "headDim" | "queriesPerKv" | "scores" | "splitTokens">,
  tokens: number,
): number {
  const D = v.headDim, Q = v.queriesPerKv, n = tokens;
  const loop = (outer: number, inner: number) => outer * (inner + 2) + 2;
  if (v.scores !== "workgroup") {
    return loop(Math.ceil(n / WG), D) + (2 * n + 4) + loop(Math.ceil(D / WG), n);
  }
  const WGH = _workgroupThreads(D), L = Math.floor(WGH / Q), K = Math.max(1, Math.floor(WGH / D));
  const reduce = Math.ceil(Math.log2(L)) + 2;
  const values = K === 1 ? loop(Math.ceil(D / WGH), n) : Math.ceil(n / K) + 2 + Q * (K + 2);
  return loop(Math.ceil(n / WGH), D) + 2 * (Math.ceil(n / L) + 2 + reduce) + values;
}

// Workgroup-memory kernel. Scores: one thread per token, all query heads at once. Softmax: the
// threads split into one team of L = ⌊WG/Q⌋ per head, each reducing max and sum over its tokens
// and then across the team by a tree in workgroup memory. Values: thread (c, k) accumulates
// channel c over tokens t ≡ k (mod K), K = WG/d teams of channels, summed through workgroup
// memory when K > 1.
function _workgroupProgram(v: AttentionVariant): GpuProgram {
  const D = v.headDim, Q = v.queriesPerKv, R = D + 2, S = v.splitTokens ?? SPLIT_TOKENS;
  const WGH = _workgroupThreads(D);
  const L = Math.floor(WGH / Q), P2 = 2 ** Math.ceil(Math.log2(L));
  const K = Math.max(1, Math.floor(WGH / D));
  const scale = Math.fround(1 / Math.sqrt(D));
  const reduce = (op: string) => `
  for (var stride = ${P2 >> 1}u; stride > 0u; stride = stride >> 1u) {
    workgroupBarrier();
    if (j < ${Q}u && lane < stride && lane + stride < ${L}u) {
      red[lid] = ${op}(red[lid], red[lid + stride]);
    }
  }
  workgroupBarrier();`;
  return {
    shaderKey: _shaderKey(v, `:wg${S}`),
    workgroupSize: WGH,
    source: () =>
      `${_header(v)}
var<workgroup> sc: array<f32, ${Q * Math.max(S, WGH)}>;
var<workgroup> red: array<f32, ${WGH}>;
fn add(a: f32, b: f32) -> f32 { return a + b; }
@compute @workgroup_size(${WGH})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  // no early return: every thread reaches every barrier (items past the end do no work)
  let idx = wid.x + wid.y * nwg.x;
  let live = idx < arrayLength(&items);
  var it = Item(0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
  if (live) { it = items[idx]; }
  for (var t = lid; t < it.n; t = t + ${WGH}u) {
    ${_perHead(Q, (j) => `var s${j} = 0.0;`)}
    let tt = it.tok + t;
    ${_scoreLoop(v, `${D}u`)}
    ${_perHead(Q, (j) => `sc[${j * S}u + t] = s${j} * ${scale};`)}
  }
  workgroupBarrier();
  let j = lid / ${L}u;
  let lane = lid % ${L}u;
  var mx = -3.4028234663852886e38;
  if (j < ${Q}u) {
    for (var t = lane; t < it.n; t = t + ${L}u) { mx = max(mx, sc[j * ${S}u + t]); }
  }
  red[lid] = mx;${reduce("max")}
  var m = 0.0;
  if (j < ${Q}u) { m = red[j * ${L}u]; }
  workgroupBarrier();
  var sum = 0.0;
  if (j < ${Q}u) {
    for (var t = lane; t < it.n; t = t + ${L}u) {
      let p = exp(sc[j * ${S}u + t] - m);
      sc[j * ${S}u + t] = p;
      sum = sum + p;
    }
  }
  red[lid] = sum;${reduce("add")}
  if (live && j < ${Q}u && lane == 0u) {
    let r = (it.rec + j * it.rec_stride) * ${R}u;
    partials[r] = m;
    partials[r + 1u] = red[lid];
  }
${K === 1 ? _valuesByChannel(v, WGH, S) : _valuesByTeams(v, K, S)}
}
`,
  };
}

const _write = (Q: number, R: number, sum: (j: number) => string) =>
  _perHead(Q, (j) => `partials[(it.rec + ${j}u * it.rec_stride) * ${R}u + 2u + c] = ${sum(j)};`);

// values when d ≥ WG: thread lid accumulates channels lid, lid + WG, … over every token
function _valuesByChannel(v: AttentionVariant, WGH: number, S: number): string {
  const D = v.headDim, Q = v.queriesPerKv;
  return `  if (!live) { return; }
  for (var c = lid; c < ${D}u; c = c + ${WGH}u) {
    ${_perHead(Q, (j) => `var a${j} = 0.0;`)}
    for (var t = 0u; t < it.n; t = t + 1u) {
      let x = v_decode(it.v_base, v_index(it.tok + t, c));
      ${_perHead(Q, (j) => `a${j} = a${j} + sc[${j * S}u + t] * x;`)}
    }
    ${_write(Q, D + 2, (j) => `a${j}`)}
  }`;
}

// values when d < WG: K = WG/d teams, team k accumulates tokens t ≡ k (mod K) of channel
// lid mod d; the K partial sums meet in workgroup memory (the scores are no longer needed)
function _valuesByTeams(v: AttentionVariant, K: number, S: number): string {
  const D = v.headDim, Q = v.queriesPerKv;
  return `  let c = lid % ${D}u;
  let kt = lid / ${D}u;
  let team = lid < ${K * D}u;
  ${_perHead(Q, (j) => `var a${j} = 0.0;`)}
  for (var t = kt; t < select(0u, it.n, team); t = t + ${K}u) {
    let x = v_decode(it.v_base, v_index(it.tok + t, c));
    ${_perHead(Q, (j) => `a${j} = a${j} + sc[${j * S}u + t] * x;`)}
  }
  workgroupBarrier();
  if (team) { ${_perHead(Q, (j) => `sc[(${j * K}u + kt) * ${D}u + c] = a${j};`)} }
  workgroupBarrier();
  if (live && kt == 0u) {
    ${
    _perHead(
      Q,
      (j) =>
        `var b${j} = 0.0; for (var k = 0u; k < ${K}u; k = k + 1u) { b${j} = b${j} + sc[(${
          j * K
        }u + k) * ${D}u + c]; }`,
    )
  }
    ${_write(Q, D + 2, (j) => `b${j}`)}
  }`;
}

function _storageProgram(v: AttentionVariant): GpuProgram {
  const D = v.headDim, Q = v.queriesPerKv, R = D + 2, S = SPLIT_TOKENS;
  const scale = Math.fround(1 / Math.sqrt(D));
  return {
    shaderKey: _shaderKey(v, ""),
    workgroupSize: WG,
    source: () =>
      `${_header(v)}
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let idx = wid.x + wid.y * nwg.x;
  if (idx >= arrayLength(&items)) { return; }
  let it = items[idx];
  // head_dim from the item rather than the constant: a constant bound lets LLVM unroll
  // head_dim × queries decoders, which costs llvmpipe seconds of compilation per variant
  let dd = it.head_dim;
  // no workgroup memory: llvmpipe compiles WebGPU's zero-initialisation of workgroup arrays into
  // code superlinear in their size (2048 floats: 20 s per variant), so scores live in storage.
  // This item's scores, then probabilities, per head: ps(j, t) = scratch[base + j·${S} + t]
  let base = idx * ${Q * S}u;
  // s_{j,t} = q_j · k̂_t / √d, each key element dequantized once for all ${Q} query heads; the
  // per-head accumulators are generated as scalars (private arrays indexed in loops cost
  // llvmpipe seconds of compilation per variant)
  for (var t = lid; t < it.n; t = t + ${WG}u) {
    ${_perHead(Q, (j) => `var s${j} = 0.0;`)}
    let tt = it.tok + t;
    ${_scoreLoop(v, "dd")}
    ${_perHead(Q, (j) => `scratch[base + ${j * S}u + t] = s${j} * ${scale};`)}
  }
  storageBarrier();
  // per head: m = max_t s, p_t = e^{s_t − m}, l = Σ p_t
  if (lid < ${Q}u) {
    var m = -3.4028234663852886e38;
    for (var t = 0u; t < it.n; t = t + 1u) { m = max(m, scratch[base + lid * ${S}u + t]); }
    var l = 0.0;
    for (var t = 0u; t < it.n; t = t + 1u) {
      let p = exp(scratch[base + lid * ${S}u + t] - m);
      scratch[base + lid * ${S}u + t] = p;
      l = l + p;
    }
    let r = (it.rec + lid * it.rec_stride) * ${R}u;
    partials[r] = m;
    partials[r + 1u] = l;
  }
  storageBarrier();
  // acc_{j,c} = Σ_t p_{j,t} v̂_{t,c}, each value element dequantized once for all heads
  for (var c = lid; c < dd; c = c + ${WG}u) {
    ${_perHead(Q, (j) => `var a${j} = 0.0;`)}
    for (var t = 0u; t < it.n; t = t + 1u) {
      let x = v_decode(it.v_base, v_index(it.tok + t, c));
      ${_perHead(Q, (j) => `a${j} = a${j} + scratch[base + ${j * S}u + t] * x;`)}
    }
    ${_perHead(Q, (j) => `partials[(it.rec + ${j}u * it.rec_stride) * ${R}u + 2u + c] = a${j};`)}
  }
}
`,
  };
}

// a format per-head pages can hold, and whose channel groups (along tokens) fill whole pages: the
// kernels address a channel group as pageTokens / group runs of one page
function _checkPageFormat(spec: FormatSpec, pageTokens: number): void {
  checkGpuFormat(spec);
  if (spec.axis === "channel" && pageTokens % spec.group !== 0) {
    throw new FormatError(
      `${spec.name} groups ${spec.group} tokens per channel; pages of ${pageTokens} tokens are ` +
        `not a multiple of it`,
    );
  }
}

/** One segment of a page table: a page (or a run of the full-precision window) of one KV head. */
export interface AttentionSegment {
  /**
   * Buffer holding the segment's words: a page pool, or the GPU cache's staging buffer of sinks
   * and ring at its window format (fp32, fp16 or a per-token int format).
   */
  words: GPUBuffer;
  /** Key format. */
  keyFormat: FormatSpec;
  /** Value format. */
  valueFormat: FormatSpec;
  /** Word offset of the key block in `words`. */
  keyBase: number;
  /** Word offset of the value block in `words`. */
  valueBase: number;
  /** Valid tokens, ≥ 1. */
  tokens: number;
  /**
   * Set for a page of channel-axis keys stored before RoPE: the angle table (KeyRope.angleRows)
   * and its offset rows. The page's key-group positions follow its value block.
   */
  rope?: { angles: GPUBuffer; span: number };
}

/** The query heads that read one KV head, and the segments that KV head holds. */
export interface AttentionGroup {
  /** Float offset of the group's first query head in the query buffer; heads are contiguous. */
  queryOffset: number;
  /** Float offset of the group's first output head in the output buffer. */
  outputOffset: number;
  /**
   * Float offset in the output buffer where each query head's log-sum-exp of scores,
   * m + ln l, goes (one float per head, in order); unset: not written. The GPU cache derives
   * its window tokens' attention weights from it.
   */
  lseOffset?: number;
  /** The KV head's segments; their union is every cached token. */
  segments: AttentionSegment[];
}

/** Dimensions shared by every group of one {@linkcode PagedAttention.encode} call. */
export interface AttentionDims {
  /** Elements per head. */
  headDim: number;
  /** Query heads per KV head. */
  queriesPerKv: number;
  /** Tokens per page. */
  pageTokens: number;
}

interface _Dispatch {
  program: GpuProgram;
  words: GPUBuffer;
  angles: GPUBuffer | undefined;
  /** The RoPE span its program bakes in. */
  span: number | undefined;
  items: number[];
}

/**
 * Encodes decode attention over page tables into a command encoder, reusing its item, output
 * table and partial buffers across calls (they grow, never shrink). Not re-entrant: await the
 * submission of one call's encoder before the next call.
 */
export class PagedAttention {
  readonly #gpu: GpuDevice;
  readonly #pipelines: PipelineCache;
  readonly #items: GrowableBuffer;
  readonly #outs: GrowableBuffer;
  readonly #partials: GrowableBuffer;
  readonly #scratch: GrowableBuffer;
  readonly #chunks: GrowableBuffer;
  /** Where the kernels keep scores: workgroup memory unless the adapter is a software one. */
  readonly scores: ScoreMemory;
  /** Most tokens per split (per workgroup). */
  readonly splitTokens: number;

  /**
   * Creates the runner.
   * @param gpu the device
   * @param pipelines the pipeline cache
   * @param options `scores` overrides the kernel choice (tests run both on any adapter)
   */
  constructor(
    gpu: GpuDevice,
    pipelines: PipelineCache,
    options: { scores?: ScoreMemory; splitTokens?: number } = {},
  ) {
    this.#gpu = gpu;
    this.#pipelines = pipelines;
    this.scores = options.scores ?? (gpu.info.isFallbackAdapter ? "storage" : "workgroup");
    const split = options.splitTokens ?? SPLIT_TOKENS;
    if (
      this.scores === "storage"
        ? split !== SPLIT_TOKENS
        : !(Number.isInteger(split) && split >= 1 && split <= 1024)
    ) {
      throw new ShapeError(
        `splitTokens ${split}: the ${this.scores} kernel takes ${
          this.scores === "storage" ? SPLIT_TOKENS : "1 … 1024"
        }`,
      );
    }
    this.splitTokens = split;
    const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    this.#items = new GrowableBuffer(gpu.device, S, "attention items");
    this.#outs = new GrowableBuffer(gpu.device, S, "attention outputs");
    this.#partials = new GrowableBuffer(gpu.device, GPUBufferUsage.STORAGE, "attention partials");
    this.#scratch = new GrowableBuffer(gpu.device, GPUBufferUsage.STORAGE, "attention scores");
    this.#chunks = new GrowableBuffer(gpu.device, GPUBufferUsage.STORAGE, "merged chunks");
  }

  /**
   * The split kernel this runner uses for a format pair (callers compile it ahead of time).
   * @param keyFormat key format
   * @param valueFormat value format
   * @param dims head_dim, queries per KV head and page size
   * @param ropeSpan the angle table's offset rows, for keys stored before RoPE
   * @returns the program
   */
  program(
    keyFormat: FormatSpec,
    valueFormat: FormatSpec,
    dims: AttentionDims,
    ropeSpan?: number,
  ): GpuProgram {
    return attentionProgram({
      keyFormat,
      valueFormat,
      ...dims,
      scores: this.scores,
      splitTokens: this.splitTokens,
      ropeSpan,
    });
  }

  /**
   * The merge kernel this runner finishes with (callers compile it ahead of time): the parallel
   * one alongside the workgroup-memory split kernel.
   * @param headDim elements per head
   * @returns the program
   */
  mergeProgram(headDim: number): GpuProgram {
    return mergeProgram(headDim, this.scores === "workgroup");
  }

  /**
   * Refuses, on a software adapter, attention whose kernels would leave their loops early
   * (gpu/loop_limit.ts).
   * @param dims head_dim and queries per KV head
   * @param tokens most tokens in one split (at most splitTokens)
   * @param records most splits of one head (the partial records its merge combines)
   * @throws {DeviceError} when a kernel's loops exceed the adapter's limit
   */
  checkLoopLimit(dims: AttentionDims, tokens: number, records: number): void {
    const { headDim: D, queriesPerKv: Q } = dims;
    const variant = {
      headDim: D,
      queriesPerKv: Q,
      scores: this.scores,
      splitTokens: this.splitTokens,
    };
    checkLoopLimit(
      this.#gpu,
      `attention (${this.scores} kernel) over ${tokens} tokens at head_dim ${D}`,
      splitLoopIterations(variant, tokens),
    );
    // the two-stage merge (encode) combines at most MERGE_CHUNK records an entry, then the chunks
    const parallel = this.scores === "workgroup";
    const widest = parallel && records > MERGE_CHUNK
      ? Math.max(MERGE_CHUNK, Math.ceil(records / MERGE_CHUNK))
      : records;
    checkLoopLimit(
      this.#gpu,
      `the attention merge of ${records} records at head_dim ${D}`,
      mergeLoopIterations(D, widest, parallel),
    );
  }

  /** Bytes held by the runner's reusable buffers. */
  get byteLength(): number {
    return this.#items.byteLength + this.#outs.byteLength + this.#partials.byteLength +
      this.#scratch.byteLength + this.#chunks.byteLength;
  }

  /**
   * Appends the split and merge dispatches for `groups` to `encoder`; after submission, `out`
   * holds, for every group, queriesPerKv heads of headDim outputs at its outputOffset.
   *
   * @param encoder the command encoder
   * @param q query buffer (STORAGE), heads of each group contiguous
   * @param out output buffer (STORAGE)
   * @param groups the page tables
   * @param dims head_dim, queries per KV head and page size
   * @param timestampWrites where the pass writes its start and end times (profiling; needs the
   *   device's "timestamp-query" feature)
   * @throws {ShapeError} for an unsupported queries-per-KV count, a head_dim or page size that is
   *   not an integer ≥ 1, a segment whose tokens are not an integer ≥ 1 (at most a page for
   *   channel-axis formats), or segments of one buffer and format pair with different RoPE
   * @throws {FormatError} for a format that cannot live in per-head pages, or channel groups that
   *   do not divide the page size
   * @throws {DeviceError} when the device is lost
   */
  async encode(
    encoder: GPUCommandEncoder,
    q: GPUBuffer,
    out: GPUBuffer,
    groups: AttentionGroup[],
    dims: AttentionDims,
    timestampWrites?: GPUComputePassTimestampWrites,
  ): Promise<void> {
    const { headDim: D, queriesPerKv: Q } = dims;
    if (!Number.isInteger(Q) || Q < 1 || Q > MAX_QUERIES_PER_KV) {
      throw new ShapeError(`queries per KV head ${Q} out of range [1, ${MAX_QUERIES_PER_KV}]`);
    }
    // a head_dim of 0 compiled 1/√0 into the shader, a failure createKVCache took for the device's
    for (const [name, x] of [["head_dim", D], ["pageTokens", dims.pageTokens]] as const) {
      if (!Number.isInteger(x) || x < 1) {
        throw new ShapeError(`${name} ${x}, expected an integer ≥ 1`);
      }
    }
    if (this.scores === "workgroup") {
      const bytes = workgroupScoreBytes(D, Q, this.splitTokens);
      const limit = this.#gpu.device.limits.maxComputeWorkgroupStorageSize;
      if (bytes > limit) {
        throw new ShapeError(
          `splits of ${this.splitTokens} tokens for ${Q} query heads need ${bytes} bytes of ` +
            `workgroup memory; the device allows ${limit}`,
        );
      }
    }
    this.#gpu.check("attention");
    // split items, bucketed by kernel variant and source buffer; records per group: Q × splits
    // one dispatch per (format pair, source buffer); found per segment by object identity, since
    // long page tables make per-segment string keys cost more CPU time than the kernels take
    const dispatches: _Dispatch[] = [];
    const find = new Map<FormatSpec, Map<FormatSpec, Map<GPUBuffer, _Dispatch>>>();
    const outs: number[] = [];
    let records = 0, longest = 0;
    for (const g of groups) {
      let splits = 0;
      for (const s of g.segments) {
        // 1.5 tokens stored n = 1 and could leave a tail split of none
        if (!Number.isInteger(s.tokens) || s.tokens < 1) {
          throw new ShapeError(`segment with ${s.tokens} tokens`);
        }
        // a channel-axis page holds element c·P + t: past P tokens it read the next channel
        const channel = s.keyFormat.axis === "channel" || s.valueFormat.axis === "channel";
        if (channel && s.tokens > dims.pageTokens) {
          throw new ShapeError(
            `segment of ${s.tokens} tokens in a page of ${dims.pageTokens} ` +
              `(${s.keyFormat.name}/${s.valueFormat.name}, channel-axis)`,
          );
        }
        splits += Math.ceil(s.tokens / this.splitTokens);
      }
      let split = 0;
      for (const s of g.segments) {
        let byValue = find.get(s.keyFormat);
        if (byValue === undefined) {
          _checkPageFormat(s.keyFormat, dims.pageTokens);
          find.set(s.keyFormat, byValue = new Map());
        }
        let byBuffer = byValue.get(s.valueFormat);
        if (byBuffer === undefined) {
          _checkPageFormat(s.valueFormat, dims.pageTokens);
          byValue.set(s.valueFormat, byBuffer = new Map());
        }
        let d = byBuffer.get(s.words);
        if (d === undefined) {
          const program = this.program(s.keyFormat, s.valueFormat, dims, s.rope?.span);
          const angles = s.rope?.angles;
          const span = s.rope?.span;
          byBuffer.set(s.words, d = { program, words: s.words, angles, span, items: [] });
          dispatches.push(d);
        } else if (d.angles !== s.rope?.angles || d.span !== s.rope?.span) {
          // one program per dispatch: a second span was once computed with the first one's
          throw new ShapeError(
            `segments of one buffer in ${s.keyFormat.name}/${s.valueFormat.name} disagree on ` +
              `whether keys are stored before RoPE, or on its angle table or span`,
          );
        }
        for (let tok = 0; tok < s.tokens; tok += this.splitTokens) {
          const n = Math.min(this.splitTokens, s.tokens - tok);
          longest = Math.max(longest, n);
          d.items.push(g.queryOffset, s.keyBase, s.valueBase, n, tok, records + split, splits, D);
          split++;
        }
      }
      for (let j = 0; j < Q; j++) {
        const lse = g.lseOffset === undefined ? 0 : g.lseOffset + j + 1;
        outs.push(records + j * splits, splits, g.outputOffset + j * D, lse);
      }
      records += Q * splits;
    }
    let widest = 0;
    for (let i = 1; i < outs.length; i += 4) widest = Math.max(widest, outs[i]);
    this.checkLoopLimit(dims, longest, widest);
    const device = this.#gpu.device;
    // items of each dispatch start at a 256-byte boundary (storage offset alignment)
    const align = device.limits.minStorageBufferOffsetAlignment / 4;
    let total = 0;
    for (const d of dispatches) total += Math.ceil(d.items.length / align) * align;
    const itemData = new Uint32Array(Math.max(total, ITEM_U32));
    const offsets: number[] = [];
    let at = 0;
    for (const d of dispatches) {
      offsets.push(at);
      itemData.set(d.items, at);
      at += Math.ceil(d.items.length / align) * align;
    }
    const itemBuf = this.#items.ensure(itemData.byteLength);
    device.queue.writeBuffer(itemBuf, 0, itemData);
    // the parallel merge in two stages when a head has more than MERGE_CHUNK records: chunks of
    // them merged into records of their own by many workgroups, then those per head
    const twoStage = this.scores === "workgroup" &&
      outs.some((x, i) => i % 4 === 1 && x > MERGE_CHUNK);
    const stages = twoStage ? _chunkMerge(outs) : { chunks: [], heads: outs, records: 0 };
    const headAt = Math.ceil(stages.chunks.length / align) * align;
    const outData = new Uint32Array(Math.max(4, headAt + stages.heads.length));
    outData.set(stages.chunks);
    outData.set(stages.heads, headAt);
    const outBuf = this.#outs.ensure(outData.byteLength);
    device.queue.writeBuffer(outBuf, 0, outData);
    const partBuf = this.#partials.ensure(Math.max(16, records * (D + 2) * 4));
    const chunkBuf = twoStage ? this.#chunks.ensure(stages.records * (D + 2) * 4) : undefined;
    let most = 0;
    for (const d of dispatches) most = Math.max(most, d.items.length / ITEM_U32);
    const scratchBuf = this.scores === "storage"
      ? this.#scratch.ensure(most * Q * SPLIT_TOKENS * 4)
      : undefined;

    const pipelines = await Promise.all(dispatches.map((d) => this.#pipelines.get(d.program)));
    const merge = await this.#pipelines.get(this.mergeProgram(D));
    const mergeChunks = twoStage ? await this.#pipelines.get(mergeProgram(D, true, true)) : merge;
    this.#gpu.check("attention");
    const pass = encoder.beginComputePass({ timestampWrites });
    let i = 0;
    for (const d of dispatches) {
      const pipeline = pipelines[i];
      const count = d.items.length / ITEM_U32;
      pass.setPipeline(pipeline);
      pass.setBindGroup(
        0,
        device.createBindGroup({
          layout: pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: d.words } },
            { binding: 1, resource: { buffer: q } },
            { binding: 2, resource: { buffer: itemBuf, offset: offsets[i] * 4, size: count * 32 } },
            { binding: 3, resource: { buffer: partBuf } },
            ...(scratchBuf ? [{ binding: 4, resource: { buffer: scratchBuf } }] : []),
            ...(d.angles ? [{ binding: 5, resource: { buffer: d.angles } }] : []),
          ],
        }),
      );
      pass.dispatchWorkgroups(...dispatchSize(count, 1));
      i++;
    }
    const mergeInto = (
      pipeline: GPUComputePipeline,
      from: GPUBuffer,
      entries: number,
      offset: number,
      to: GPUBuffer,
    ) => {
      pass.setPipeline(pipeline);
      pass.setBindGroup(
        0,
        device.createBindGroup({
          layout: pipeline.getBindGroupLayout(0),
          entries: [
            { binding: 0, resource: { buffer: from } },
            { binding: 1, resource: { buffer: outBuf, offset: offset * 4, size: entries * 16 } },
            { binding: 2, resource: { buffer: to } },
          ],
        }),
      );
      pass.dispatchWorkgroups(...dispatchSize(entries, 1));
    };
    if (chunkBuf) mergeInto(mergeChunks, partBuf, stages.chunks.length / 4, 0, chunkBuf);
    if (stages.heads.length > 0) {
      mergeInto(merge, chunkBuf ?? partBuf, stages.heads.length / 4, headAt, out);
    }
    pass.end();
  }

  /** Frees the reusable buffers. */
  destroy(): void {
    this.#chunks.destroy();
    this.#items.destroy();
    this.#outs.destroy();
    this.#partials.destroy();
    this.#scratch.destroy();
  }
}

/** Most records one workgroup of the first merge stage combines. */
const MERGE_CHUNK = 32;

/**
 * Two-stage merge entries from per-head entries (first record, count, output offset, log-sum-exp
 * offset + 1 or 0): chunks
 * of ≤ MERGE_CHUNK records, each merged into record i of the chunk buffer, then per head its
 * chunks' records.
 */
function _chunkMerge(outs: number[]): { chunks: number[]; heads: number[]; records: number } {
  const chunks: number[] = [], heads: number[] = [];
  let records = 0;
  for (let i = 0; i < outs.length; i += 4) {
    const first = outs[i], count = outs[i + 1], base = records;
    for (let r = 0; r < count; r += MERGE_CHUNK) {
      chunks.push(first + r, Math.min(MERGE_CHUNK, count - r), records++, 0);
    }
    heads.push(base, records - base, outs[i + 2], outs[i + 3]);
  }
  return { chunks, heads, records };
}
