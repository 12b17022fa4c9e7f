/**
 * Page quantization on the GPU: f32 → packed u32 words (+ fp16 scales) in any format of the
 * table, one invocation per group. A job names a group's source (first element and stride, so one
 * kernel serves token-major rows and channel-major columns) and its destination word; the GPU
 * cache uses it to move tokens from its window (fp32; fp16 through the "fp16" source; or a
 * per-token int format read through its decoder) into pages. {@linkcode gpuEncode} encodes a flat array, as the codecs' `encode` does, for tests and
 * tools.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { PipelineCache } from "./program.ts";
 * import { gpuEncode } from "./quantize.ts";
 * import { getFormat } from "../codecs/format.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   const words = await gpuEncode(gpu, new PipelineCache(gpu), getFormat("fp32"), Float32Array.of(1.5, -2));
 *   if (new Float32Array(words.buffer)[1] !== -2) throw new Error("fp32 stores the bits");
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e;
 * }
 * ```
 * @module
 */

import { InvalidValueError } from "../core/errors.ts";
import { type FormatSpec, wordsForLength } from "../codecs/format.ts";
import type { GpuDevice } from "./device.ts";
import { checkGpuArgs, checkSpec, type GpuProgram, type PipelineCache } from "./program.ts";
import { checkInput } from "../codecs/codec.ts";
import {
  formatShaderKey,
  WGSL_CODEC_HELPERS,
  wgslDecoder,
  wgslGroupEncoder,
} from "./wgsl_format.ts";
import { bufferFrom, computeAndRead } from "./_io.ts";

/** Invocations per workgroup of the quantize kernel. */
const WG = 64;

/**
 * Where the quantize kernel reads its f32 values from: an array<f32>, or an array<u32> of words of
 * a per-token format, read back element by element as its decoder reads them (the GPU cache's
 * window: "fp16", halves e & 1 of word e >> 1; or e.g. int8-g8-token).
 */
export type QuantizeSource = "f32" | "fp16" | FormatSpec;

/**
 * The quantize kernel for one format. Bindings: 0 `src` (read; array<f32> for source "f32", else
 * array<u32> of the source format's words), 1 `dst: array<u32>` (read_write), 2 `jobs: array<vec4<u32>>` (read;
 * x = first source element, y = source stride, z = destination word). Dispatch ceil(jobs / 64)
 * workgroups (x, wrapping into y past 65535).
 *
 * @param spec the format
 * @param source what `src` holds (default "f32")
 * @returns the program
 */
export function quantizeProgram(spec: FormatSpec, source: QuantizeSource = "f32"): GpuProgram {
  if (typeof source !== "string" && source.kind === "fp16") source = "fp16";
  const decoded = typeof source === "string" ? undefined : source;
  const load = source === "f32"
    ? (i: string) => `src[${i}]`
    : decoded
    ? (i: string) => `_src_at(0u, ${i})`
    : (i: string) => `_half(${i})`;
  const key = source === "f32" ? "" : decoded ? `:src-${formatShaderKey(decoded)}` : ":src-fp16";
  return {
    shaderKey: `quantize:${formatShaderKey(spec)}${key}`,
    workgroupSize: WG,
    source: () =>
      `${WGSL_CODEC_HELPERS}
@group(0) @binding(0) var<storage, read> src: array<${source === "f32" ? "f32" : "u32"}>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<storage, read> jobs: array<vec4<u32>>;
${
        source === "f32"
          ? ""
          : decoded
          ? wgslDecoder(decoded, "_src_at", "src")
          : "fn _half(e: u32) -> f32 { return _f16_bits_to_f32((src[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu); }"
      }
${wgslGroupEncoder(spec, "encode_group", load, "dst")}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let j = gid.x + gid.y * nwg.x * ${WG}u;
  if (j >= arrayLength(&jobs)) { return; }
  let job = jobs[j];
  encode_group(job.x, job.y, job.z);
}
`,
  };
}

/**
 * Encodes `x` (length a multiple of the group) on the GPU into the format's words, as the codecs'
 * encode does for a flat array. Values are checked on the host first, since a header or code the
 * GPU cannot hold becomes Inf or NaN there unannounced: each must be within the format's
 * `clampLimit` (for unscaled floats that refuses the last half ulp the codecs round down).
 *
 * @param gpu the device
 * @param pipelines the pipeline cache
 * @param spec the format
 * @param x values (finite, within ±spec.clampLimit)
 * @returns the packed words
 * @throws {ShapeError} when the length does not fit the format
 * @throws {InvalidValueError} at the first non-finite element or one beyond the clamp limit
 * @throws {DeviceError} when the device is lost
 */
export async function gpuEncode(
  gpu: GpuDevice,
  pipelines: PipelineCache,
  spec: FormatSpec,
  x: Float32Array,
): Promise<Uint32Array> {
  checkGpuArgs(gpu, pipelines);
  checkSpec(spec);
  // a Float64Array's bytes were read as f32 words, and decoded to garbage
  checkInput(spec, x);
  for (let i = 0; i < x.length; i++) {
    if (!(Math.abs(x[i]) <= spec.clampLimit)) {
      throw new InvalidValueError(
        `x[${i}] is ${x[i]}, expected a finite number within ±${spec.clampLimit} (${spec.name})`,
        i,
      );
    }
  }
  gpu.check("gpuEncode");
  const nWords = wordsForLength(spec, x.length);
  const groups = x.length / spec.group;
  const jobs = new Uint32Array(4 * Math.max(groups, 1));
  for (let g = 0; g < groups; g++) {
    jobs[4 * g] = g * spec.group;
    jobs[4 * g + 1] = 1;
    jobs[4 * g + 2] = g * spec.wordsPerGroup;
  }
  const device = gpu.device;
  const pipeline = await pipelines.get(quantizeProgram(spec));
  const S = GPUBufferUsage.STORAGE;
  const src = bufferFrom(device, x, S, "encode src");
  const dst = device.createBuffer({
    size: Math.max(16, nWords * 4),
    usage: S | GPUBufferUsage.COPY_SRC,
  });
  const jobBuf = bufferFrom(device, jobs.subarray(0, 4 * groups), S, "encode jobs");
  const bindings = [{ buffer: src }, { buffer: dst }, {
    buffer: jobBuf,
    size: Math.max(groups, 1) * 16,
  }];
  return new Uint32Array(
    await computeAndRead(gpu, pipeline, bindings, groups, WG, dst, nWords * 4),
  );
}
