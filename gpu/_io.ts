/**
 * Small helpers shared by the GPU modules: upload typed data into a new buffer, read a buffer
 * back, size a dispatch, and run one pass whose result is read back. Readback failures (a lost device rejects mapAsync) become {@linkcode DeviceError}.
 *
 * Browser compatible.
 *
 * @module
 */

import { DeviceError } from "../core/errors.ts";
import type { GpuDevice } from "./device.ts";

/**
 * A new buffer holding `data` (size rounded up to 4 bytes, at least 16).
 * @param device the device
 * @param data bytes to upload
 * @param usage usage flags (COPY_DST is added)
 * @param label debug label
 * @returns the buffer
 */
export function bufferFrom(
  device: GPUDevice,
  data: ArrayBufferView,
  usage: GPUBufferUsageFlags,
  label: string,
): GPUBuffer {
  const size = Math.max(16, Math.ceil(data.byteLength / 4) * 4);
  const buffer = device.createBuffer({ size, usage: usage | GPUBufferUsage.COPY_DST, label });
  if (data.byteLength > 0) {
    device.queue.writeBuffer(
      buffer,
      0,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      data.byteLength,
    );
  }
  return buffer;
}

/**
 * Copies `bytes` bytes from `src` (which needs COPY_SRC) into `readback` (MAP_READ | COPY_DST),
 * submits, and returns a copy of them.
 * @param gpu the device
 * @param src source buffer
 * @param readback a mappable buffer of at least `bytes` bytes
 * @param bytes bytes to read, a multiple of 4
 * @param encoder commands to submit before the copy (optional)
 * @param srcOffset byte offset in `src` (a multiple of 4)
 * @returns the bytes
 */
export async function readBack(
  gpu: GpuDevice,
  src: GPUBuffer,
  readback: GPUBuffer,
  bytes: number,
  encoder: GPUCommandEncoder = gpu.device.createCommandEncoder(),
  srcOffset = 0,
): Promise<ArrayBuffer> {
  encoder.copyBufferToBuffer(src, srcOffset, readback, 0, bytes);
  gpu.device.queue.submit([encoder.finish()]);
  try {
    await readback.mapAsync(GPUMapMode.READ, 0, bytes);
  } catch (e) {
    // a lost device marks itself (device.lost); a rejection alone may be a misuse of this buffer
    // (one destroyed, or mapped twice), which must not condemn every cache on the device
    throw new DeviceError(`reading ${bytes} bytes back from the GPU failed: ${e}`, { cause: e });
  }
  const out = readback.getMappedRange(0, bytes).slice(0);
  readback.unmap();
  return out;
}

/**
 * Workgroup counts covering `n` invocations of `wg` threads, wrapping x at 65535.
 * @param n invocations
 * @param wg threads per workgroup
 * @returns [x, y]
 */
export function dispatchSize(n: number, wg: number): [number, number] {
  const groups = Math.ceil(n / wg);
  if (groups <= 65535) return [Math.max(groups, 1), 1];
  return [65535, Math.ceil(groups / 65535)];
}

/**
 * Runs `pipeline` once over `invocations` threads (`wg` a workgroup; none when 0) with
 * `bindings[i]` at binding i of group 0, then reads the first `bytes` bytes of `out` back. Destroys
 * every bound buffer and the readback buffer, also on failure.
 * @param gpu the device
 * @param pipeline the compute pipeline
 * @param bindings the buffers of bindings 0, 1, …
 * @param invocations threads to run
 * @param wg threads per workgroup
 * @param out the buffer to read (COPY_SRC)
 * @param bytes bytes to read, a multiple of 4
 * @returns the bytes
 */
export async function computeAndRead(
  gpu: GpuDevice,
  pipeline: GPUComputePipeline,
  bindings: GPUBufferBinding[],
  invocations: number,
  wg: number,
  out: GPUBuffer,
  bytes: number,
): Promise<ArrayBuffer> {
  const device = gpu.device;
  const rb = device.createBuffer({
    size: Math.max(16, bytes),
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  try {
    const enc = device.createCommandEncoder();
    if (invocations > 0) {
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(
        0,
        device.createBindGroup({
          layout: pipeline.getBindGroupLayout(0),
          entries: bindings.map((resource, binding) => ({ binding, resource })),
        }),
      );
      pass.dispatchWorkgroups(...dispatchSize(invocations, wg));
      pass.end();
    }
    return await readBack(gpu, out, rb, bytes, enc);
  } finally {
    for (const b of [rb, ...bindings.map((x) => x.buffer)]) b.destroy();
  }
}
