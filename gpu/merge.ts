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
 * y = record count, z = output offset in floats), 2 `out: array<f32>` (read_write). One
 * workgroup per entry of `outs` (x, wrapping into y past 65535). A head with no records gets 0.
 *
 * @param headDim elements per head
 * @returns the program
 */
export function mergeProgram(headDim: number): GpuProgram {
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
    var l = 0.0;
    var acc = 0.0;
    for (var r = o.x; r < o.x + o.y; r = r + 1u) {
      let w = exp(partials[r * ${R}u] - m);
      l = l + partials[r * ${R}u + 1u] * w;
      acc = acc + partials[r * ${R}u + 2u + c] * w;
    }
    out[o.z + c] = select(acc / l, 0.0, l == 0.0);
  }
}
`,
  };
}
