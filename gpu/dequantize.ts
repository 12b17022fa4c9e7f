/**
 * Dequantization on the GPU: packed words of any format → f32, eight elements per invocation, with
 * the same generated decoder the attention kernel fuses into its dot products. Its output is
 * bit-identical to the codecs' decode (tests check every format).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { PipelineCache } from "./program.ts";
 * import { gpuDecode } from "./dequantize.ts";
 * import { getFormat } from "../codecs/format.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   // bf16 0x3fc0 is 1.5, 0xc000 is -2
 *   const y = await gpuDecode(gpu, new PipelineCache(gpu), getFormat("bf16"), Uint32Array.of(0xc0003fc0), 2);
 *   if (y[0] !== 1.5 || y[1] !== -2) throw new Error("bf16 decodes by shifting");
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e;
 * }
 * ```
 * @module
 */

import { ShapeError, typeName } from "../core/errors.ts";
import { type FormatSpec, wordsForLength } from "../codecs/format.ts";
import { checkGroupHeaders } from "../codecs/ts_codec.ts";
import type { GpuDevice } from "./device.ts";
import { checkGpuArgs, checkSpec, type GpuProgram, type PipelineCache } from "./program.ts";
import { formatShaderKey, WGSL_CODEC_HELPERS, wgslDecoder } from "./wgsl_format.ts";
import { bufferFrom, computeAndRead } from "./_io.ts";

const WG = 64;

/** Elements each dequantize thread decodes. */
export const DEQUANTIZE_PER_THREAD = 8;

/**
 * The dequantize kernel for one format. Bindings: 0 `words: array<u32>` (read), 1
 * `out: array<u32>` (read_write, f32 bit patterns), 2 `params: vec4<u32>` (uniform; x = first
 * word, y = element count). Dispatch ceil(count / {@linkcode DEQUANTIZE_PER_THREAD}) invocations
 * (ceil of that / 64 workgroups): each thread decodes elements id, id + N, … with N the
 * invocations dispatched, so neighbouring threads still write neighbouring floats. One element
 * per thread capped an H100 at 200 GB/s of f32 for every format: the rate of starting
 * 64-thread workgroups, not the decoding.
 *
 * @param spec the format
 * @returns the program
 */
export function dequantizeProgram(spec: FormatSpec): GpuProgram {
  return {
    shaderKey: `dequantize:${formatShaderKey(spec)}`,
    workgroupSize: WG,
    source: () =>
      `${WGSL_CODEC_HELPERS}
@group(0) @binding(0) var<storage, read> words: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<uniform> params: vec4<u32>;
${wgslDecoder(spec, "decode_element", "words")}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let stride = nwg.x * nwg.y * ${WG}u;
  for (var e = gid.x + gid.y * nwg.x * ${WG}u; e < params.y; e = e + stride) {
    out[e] = bitcast<u32>(decode_element(params.x, e));
  }
}
`,
  };
}

/**
 * Decodes `length` elements of `words` on the GPU.
 *
 * @param gpu the device
 * @param pipelines the pipeline cache
 * @param spec the format
 * @param words packed words (at least wordsForLength(spec, length))
 * @param length element count, a multiple of the group
 * @returns the decoded values
 * @throws {ShapeError} when the words are too few or the length does not fit
 * @throws {CorruptDataError} at the first group header no encoder writes (as the TS and WASM
 *   decoders)
 * @throws {DeviceError} when the device is lost
 */
export async function gpuDecode(
  gpu: GpuDevice,
  pipelines: PipelineCache,
  spec: FormatSpec,
  words: Uint32Array,
  length: number,
): Promise<Float32Array> {
  checkGpuArgs(gpu, pipelines);
  checkSpec(spec);
  if (!(words instanceof Uint32Array)) {
    throw new ShapeError(`${spec.name}: words must be a Uint32Array, got ${typeName(words)}`);
  }
  const need = wordsForLength(spec, length);
  if (words.length < need) {
    throw new ShapeError(
      `${spec.name}: ${length} elements need ${need} words, got ${words.length}`,
    );
  }
  // the kernel decodes what it is given: a header no encoder writes is named here, as the TS and
  // WASM decoders name it (it once came back as Infinity and NaN)
  checkGroupHeaders(spec, words, length);
  gpu.check("gpuDecode");
  const device = gpu.device;
  const pipeline = await pipelines.get(dequantizeProgram(spec));
  const S = GPUBufferUsage.STORAGE;
  const src = bufferFrom(device, words.subarray(0, need), S, "decode words");
  const out = device.createBuffer({
    size: Math.max(16, length * 4),
    usage: S | GPUBufferUsage.COPY_SRC,
  });
  const params = bufferFrom(
    device,
    Uint32Array.of(0, length, 0, 0),
    GPUBufferUsage.UNIFORM,
    "decode params",
  );
  const bindings = [{ buffer: src }, { buffer: out }, { buffer: params }];
  return new Float32Array(
    await computeAndRead(
      gpu,
      pipeline,
      bindings,
      Math.ceil(length / DEQUANTIZE_PER_THREAD),
      WG,
      out,
      length * 4,
    ),
  );
}
