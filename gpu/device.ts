/**
 * WebGPU adapter and device acquisition for kvprec. {@linkcode requestGpu} asks for an adapter and
 * a device with the adapter's largest storage-buffer limits, reports what it got, and turns every
 * way of not getting one into a {@linkcode DeviceError} so callers can fall back to WASM. A lost
 * device marks the {@linkcode GpuDevice} lost; every later GPU call throws DeviceError while the
 * CPU-side state of whatever used it (page tables, lengths) stays as it was.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   if (typeof gpu.info.description !== "string") throw new Error("adapter info is reported");
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e; // no WebGPU here: fall back to WASM
 * }
 * ```
 * @module
 */

import { checkOptionFields, DeviceError } from "../core/errors.ts";

/** What the adapter is and what the device was created with. */
export interface GpuAdapterReport {
  /** Adapter description, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)" or a GPU's name. */
  description: string;
  /** Vendor string or id as the implementation reports it. */
  vendor: string;
  /** Architecture string (may be empty). */
  architecture: string;
  /** True for a software (fallback) adapter such as llvmpipe or SwiftShader. */
  isFallbackAdapter: boolean;
  /** Features the adapter offers, sorted. */
  features: string[];
  /** The device's limits that kvprec's kernels depend on. */
  limits: Record<string, number>;
}

/** Options of {@linkcode requestGpu}. */
export interface RequestGpuOptions {
  /** The WebGPU entry point; defaults to `navigator.gpu`. */
  gpu?: GPU;
  /** Adapter preference passed to `requestAdapter`. */
  powerPreference?: GPUPowerPreference;
}

const _REPORTED_LIMITS = [
  "maxStorageBufferBindingSize",
  "maxBufferSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupSizeX",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupStorageSize",
  "maxComputeWorkgroupsPerDimension",
] as const;

/**
 * A WebGPU device with its adapter report and lost-state tracking. Kernels call
 * {@linkcode GpuDevice.check} before touching the device, so a lost device surfaces as a
 * {@linkcode DeviceError} before any CPU-side state changes.
 */
export class GpuDevice {
  /** The underlying device. */
  readonly device: GPUDevice;
  /** Adapter description, features and limits. */
  readonly info: GpuAdapterReport;
  #lostReason: string | undefined;

  /**
   * Wraps a device; normally obtained from {@linkcode requestGpu}.
   * @param device the WebGPU device
   * @param info the adapter report
   */
  constructor(device: GPUDevice, info: GpuAdapterReport) {
    this.device = device;
    this.info = info;
    device.lost.then((lost) => {
      this.#lostReason = `${lost.reason}: ${lost.message || "no message"}`;
    });
  }

  /** True once the device has been lost or destroyed. */
  get lost(): boolean {
    return this.#lostReason !== undefined;
  }

  /**
   * Throws {@linkcode DeviceError} when the device is lost.
   * @param what the operation about to run, named in the message
   */
  check(what: string): void {
    if (this.#lostReason !== undefined) {
      throw new DeviceError(`${what}: WebGPU device lost (${this.#lostReason})`);
    }
  }

  /**
   * Marks the device lost as if the implementation had lost it (tests and callers that detect an
   * unrecoverable GPU error use this).
   * @param reason why
   */
  markLost(reason: string): void {
    this.#lostReason ??= reason;
  }

  /** Destroys the device; later calls throw {@linkcode DeviceError}. */
  destroy(): void {
    this.#lostReason ??= "destroyed: by the caller";
    this.device.destroy();
  }
}

/**
 * Requests a WebGPU adapter and device. The device gets the adapter's maximum storage-buffer
 * binding and buffer sizes (the paged cache lives in one storage buffer).
 *
 * @param options the WebGPU entry point and adapter preference
 * @returns the device with its adapter report
 * @throws {DeviceError} when WebGPU is missing, no adapter is available, or device creation fails
 */
export async function requestGpu(options: RequestGpuOptions = {}): Promise<GpuDevice> {
  checkOptionFields(options, { gpu: true, powerPreference: true }, "requestGpu options");
  const gpu = options.gpu ?? (globalThis.navigator as { gpu?: GPU } | undefined)?.gpu;
  if (gpu === undefined) {
    throw new DeviceError("WebGPU is not available: navigator.gpu is undefined");
  }
  let adapter: GPUAdapter | null;
  try {
    adapter = await gpu.requestAdapter({ powerPreference: options.powerPreference });
  } catch (e) {
    throw new DeviceError(`requestAdapter() failed: ${e}`, { cause: e });
  }
  if (adapter === null) throw new DeviceError("requestAdapter() returned no adapter");
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({
      // timestamps let benchmarks separate kernel time from submission overhead
      requiredFeatures: adapter.features.has("timestamp-query") ? ["timestamp-query"] : [],
      requiredLimits: {
        maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
        maxBufferSize: adapter.limits.maxBufferSize,
      },
    });
  } catch (e) {
    throw new DeviceError(`requestDevice() failed: ${e}`, { cause: e });
  }
  const limits: Record<string, number> = {};
  for (const k of _REPORTED_LIMITS) limits[k] = device.limits[k];
  const ai = adapter.info;
  const info: GpuAdapterReport = {
    description: ai?.description ?? "",
    vendor: ai?.vendor ?? "",
    architecture: ai?.architecture ?? "",
    // GPUAdapterInfo has it since Chrome 136; before, the adapter itself did
    isFallbackAdapter: (ai as { isFallbackAdapter?: boolean } | undefined)?.isFallbackAdapter ??
      (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? false,
    features: [...adapter.features].sort(),
    limits,
  };
  return new GpuDevice(device, info);
}
