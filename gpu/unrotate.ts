/**
 * Keys turned back to before RoPE on the GPU, for pages that store channel-axis keys that way
 * (core/cache/PAGES.md, core/cache/key_rope.ts): the GPU cache's eviction decodes a chunk's keys
 * from its window format, turns each token's pairs (2i, 2i+1) by R(−(p0 + τ)) = (R(p0)·R(τ))⁻¹ in
 * the f32 steps of KeyRope, and hands the f32 result to the quantize kernel.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { unrotateProgram } from "./unrotate.ts";
 * import { getFormat } from "../codecs/format.ts";
 * const p = unrotateProgram(getFormat("fp16"), 64, 32);
 * if (!p.source().includes("angles")) throw new Error("reads the angle table");
 * ```
 * @module
 */

import { ShapeError } from "../core/errors.ts";
import type { FormatSpec } from "../codecs/format.ts";
import type { GpuProgram } from "./program.ts";
import { formatShaderKey, WGSL_CODEC_HELPERS, wgslDecoder } from "./wgsl_format.ts";

/** Invocations per workgroup. */
const WG = 64;

/**
 * The kernel for keys held in `window` (the GPU cache's staging format). Bindings: 0 `src:
 * array<u32>` (read; window words), 1 `dst: array<f32>` (read_write), 2 `jobs: array<vec4<u32>>`
 * (read; one token each: x = its first source word, y = its first destination float, z = the
 * position of its key group's first token, w = its offset in the group), 3 `angles: array<f32>`
 * (read; KeyRope.angleRows, `span` offset rows first). Dispatch ceil(jobs / 64) workgroups.
 *
 * @param window format of the source words
 * @param headDim elements per key (even)
 * @param span offset rows of the angle table
 * @returns the program
 * @throws {ShapeError} for an odd head_dim
 */
export function unrotateProgram(window: FormatSpec, headDim: number, span: number): GpuProgram {
  const D = headDim, H = D / 2;
  if (D % 2 !== 0) throw new ShapeError(`keys before RoPE need an even head_dim, got ${D}`);
  return {
    shaderKey: `unrotate:${formatShaderKey(window)}:d${D}:s${span}`,
    workgroupSize: WG,
    source: () =>
      `${WGSL_CODEC_HELPERS}
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> jobs: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> angles: array<f32>;
${wgslDecoder(window, "_src_at", "src")}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = gid.x + gid.y * nwg.x * ${WG}u;
  if (j >= arrayLength(&jobs)) { return; }
  let job = jobs[j];
  let r = (${span}u + job.z) * ${D}u;
  let o = job.w * ${D}u;
  for (var i = 0u; i < ${H}u; i = i + 1u) {
    let c0 = angles[r + i];
    let s0 = angles[r + ${H}u + i];
    let ct = angles[o + i];
    let st = angles[o + ${H}u + i];
    let cf = c0 * ct - s0 * st;
    let sf = -(s0 * ct + c0 * st);
    let a = _src_at(job.x, 2u * i);
    let b = _src_at(job.x, 2u * i + 1u);
    dst[job.y + 2u * i] = a * cf - b * sf;
    dst[job.y + 2u * i + 1u] = a * sf + b * cf;
  }
}
`,
  };
}
