/**
 * Small buffer helpers shared by the GPU modules: upload typed data into a new buffer and read a
 * buffer back. Readback failures (a lost device rejects mapAsync) become {@linkcode DeviceError}.
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
    gpu.markLost(`mapAsync failed: ${e}`);
    throw new DeviceError(`reading ${bytes} bytes back from the GPU failed: ${e}`, { cause: e });
  }
  const out = readback.getMappedRange(0, bytes).slice(0);
  readback.unmap();
  return out;
}
