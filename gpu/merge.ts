/**
 * The log-sum-exp merge kernel of flash-decoding: each output head combines its split partials
 * (m_r, l_r, acc_r) into out = Σ_r e^{m_r − M} acc_r / Σ_r e^{m_r − M} l_r with M = max_r m_r
 * (core/cache/PAGES.md, "Attention over pages"). One workgroup per output head, one invocation per
 * channel.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { mergeProgram } from "./merge.ts";
 * const p = mergeProgram(64);
 * if (p.shaderKey !== "merge:d64") throw new Error("keyed by head_dim");
 * ```
 * @module
 */

import type { GpuProgram } from "./program.ts";

/** Invocations per merge workgroup. */
export const MERGE_WORKGROUP = 64;

/**
 * The merge kernel for head dimension `headDim`. Bindings: 0 `partials: array<f32>` (read;
 * record r at r·(d+2): m, l, acc[d]), 1 `outs: array<vec4<u32>>` (read; x = first record,
 * y = record count, z = output offset in floats, w = 1 + the float offset where the head's
 * log-sum-exp m + ln l goes, 0 for none), 2 `out: array<f32>` (read_write). One
 * workgroup per entry of `outs` (x, wrapping into y past 65535). A head with no records gets 0.
 *
 * The default kernel loops over records with one thread per channel (for software adapters, where
 * workgroup arrays compile slowly); `parallel` splits records across threads and reduces in
 * workgroup memory, for hardware GPUs, where a long page table made the serial loop a long chain
 * of dependent loads.
 *
 * @param headDim elements per head
 * @param parallel the workgroup-memory kernel
 * @param partial (parallel only) write each entry's merge as a record (m, l, acc) at record index
 *   z of `out` instead of normalised outputs at float offset z: the first stage of a two-stage
 *   merge, which long page tables need to spread records over many workgroups
 * @returns the program
 */
export function mergeProgram(headDim: number, parallel = false, partial = false): GpuProgram {
  if (parallel) return _parallelMerge(headDim, partial);
  const D = headDim, R = headDim + 2;
  return {
    shaderKey: `merge:d${D}`,
    workgroupSize: MERGE_WORKGROUP,
    source: () => /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read> outs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${MERGE_WORKGROUP})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let idx = wid.x + wid.y * nwg.x;
  if (idx >= arrayLength(&outs)) { return; }
  let o = outs[idx];
  var m = -3.4028234663852886e38;
  for (var r = o.x; r < o.x + o.y; r = r + 1u) { m = max(m, partials[r * ${R}u]); }
  for (var c = lid; c < ${D}u; c = c + ${MERGE_WORKGROUP}u) {
    ${_weightedSums(R, "o.x", 1)}
    out[o.z + c] = select(acc / l, 0.0, l == 0.0);
    if (c == 0u && o.w > 0u) { out[o.w - 1u] = m + log(l); }
  }
}
`,
  };
}

/**
 * An upper bound of the loop iterations one invocation of a merge kernel runs over an entry of
 * `records` records (gpu/loop_limit.ts): every loop counted as its trips plus two, per enclosing
 * trip.
 * @param headDim elements per head
 * @param records records of the entry
 * @param parallel the workgroup-memory kernel
 * @returns iterations
 */
export function mergeLoopIterations(headDim: number, records: number, parallel = false): number {
  const loop = (outer: number, inner: number) => outer * (inner + 2) + 2;
  if (!parallel) return records + 2 + loop(Math.ceil(headDim / MERGE_WORKGROUP), records);
  const W = PARALLEL_MERGE, K = Math.max(1, Math.floor(W / headDim));
  const sums = K === 1 ? loop(Math.ceil(headDim / W), records) : Math.ceil(records / K) + 2 + K + 2;
  return Math.ceil(records / W) + 2 + Math.log2(W) + 2 + sums;
}

// l = Σ_r e^{m_r − m} l_r and acc = Σ_r e^{m_r − m} acc_r[c] over records first, first + step, …
// of the entry o (all records when step is 1), where `when` holds
function _weightedSums(R: number, first: string, step: number, when = "true"): string {
  return `var l = 0.0;
    var acc = 0.0;
    for (var r = ${first}; ${when} && r < o.x + o.y; r = r + ${step}u) {
      let w = exp(partials[r * ${R}u] - m);
      l = l + partials[r * ${R}u + 1u] * w;
      acc = acc + partials[r * ${R}u + 2u + c] * w;
    }`;
}

/** Threads of the parallel merge kernel. */
const PARALLEL_MERGE = 256;

// max over records by all threads; then K = ⌊256/d⌋ teams, team k summing records r ≡ k (mod K)
// for channel lid mod d (or every thread over all records for its channels when d > 256)
function _parallelMerge(headDim: number, partial: boolean): GpuProgram {
  const D = headDim, R = headDim + 2, W = PARALLEL_MERGE;
  const K = Math.max(1, Math.floor(W / D));
  const write = (a: string, l: string) =>
    partial
      ? `out[o.z * ${R}u + 2u + c] = ${a}; if (c == 0u) { out[o.z * ${R}u] = m; out[o.z * ${R}u + 1u] = ${l}; }`
      : `out[o.z + c] = select(${a} / ${l}, 0.0, ${l} == 0.0); ` +
        `if (c == 0u && o.w > 0u) { out[o.w - 1u] = m + log(${l}); }`;
  const sums = K === 1
    ? `
  for (var c = lid; c < ${D}u; c = c + ${W}u) {
    ${_weightedSums(R, "o.x", 1)}
    if (live) { ${write("acc", "l")} }
  }`
    : `
  let c = lid % ${D}u;
  let k = lid / ${D}u;
  ${_weightedSums(R, "o.x + k", K, `k < ${K}u`)}
  red[lid] = acc;
  red[${W}u + lid] = l;
  workgroupBarrier();
  if (live && k == 0u) {
    var a = 0.0;
    var s = 0.0;
    for (var i = 0u; i < ${K}u; i = i + 1u) {
      a = a + red[i * ${D}u + c];
      s = s + red[${W}u + i * ${D}u + c];
    }
    ${write("a", "s")}
  }`;
  return {
    shaderKey: `merge:d${D}:wg${partial ? ":partial" : ""}`,
    workgroupSize: W,
    source: () => /* wgsl */ `
@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read> outs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<workgroup> red: array<f32, ${2 * W}>;
@compute @workgroup_size(${W})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  // no early return before the barriers
  let idx = wid.x + wid.y * nwg.x;
  let live = idx < arrayLength(&outs);
  var o = vec4<u32>(0u);
  if (live) { o = outs[idx]; }
  var mx = -3.4028234663852886e38;
  for (var r = o.x + lid; r < o.x + o.y; r = r + ${W}u) { mx = max(mx, partials[r * ${R}u]); }
  red[lid] = mx;
  for (var stride = ${W / 2}u; stride > 0u; stride = stride >> 1u) {
    workgroupBarrier();
    if (lid < stride) { red[lid] = max(red[lid], red[lid + stride]); }
  }
  workgroupBarrier();
  let m = red[0];
  workgroupBarrier();${sums}
}
`,
  };
}
