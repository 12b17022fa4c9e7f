/**
 * Compute programs and the pipeline cache. A {@linkcode GpuProgram} is one kernel variant: its
 * WGSL source, entry point, workgroup size and a `shaderKey` naming everything the source was
 * specialised on (formats, head_dim, queries per KV head, page size). {@linkcode PipelineCache}
 * compiles each key once per device, so a variant costs one compilation however often it runs.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requestGpu } from "./device.ts";
 * import { PipelineCache } from "./program.ts";
 * import { DeviceError } from "../core/errors.ts";
 * try {
 *   const gpu = await requestGpu();
 *   const cache = new PipelineCache(gpu);
 *   const program = {
 *     shaderKey: "noop",
 *     workgroupSize: 1,
 *     source: () => "@compute @workgroup_size(1) fn main() {}",
 *   };
 *   const a = await cache.get(program), b = await cache.get(program);
 *   if (a !== b || cache.size !== 1) throw new Error("one pipeline per key");
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof DeviceError)) throw e;
 * }
 * ```
 * @module
 */

import { DeviceError } from "../core/errors.ts";
import type { GpuDevice } from "./device.ts";

/** One compute-kernel variant. */
export interface GpuProgram {
  /** Pipeline-cache key: the kernel's name and every parameter its source depends on. */
  readonly shaderKey: string;
  /** Threads per workgroup (x); the source declares the same number. */
  readonly workgroupSize: number;
  /**
   * The WGSL source, entry point `main`.
   * @returns WGSL text
   */
  source(): string;
}

/** Compiled compute pipelines of one device, keyed by {@linkcode GpuProgram.shaderKey}. */
export class PipelineCache {
  readonly #gpu: GpuDevice;
  readonly #pipelines = new Map<string, Promise<GPUComputePipeline>>();

  /**
   * Creates an empty cache for a device.
   * @param gpu the device pipelines are compiled for
   */
  constructor(gpu: GpuDevice) {
    this.#gpu = gpu;
  }

  /** Number of distinct pipelines compiled or being compiled. */
  get size(): number {
    return this.#pipelines.size;
  }

  /**
   * The pipeline of a program, compiled on first use.
   * @param program the kernel variant
   * @returns its compute pipeline (layout "auto", entry point `main`)
   * @throws {DeviceError} when the device is lost or the WGSL fails to compile
   */
  get(program: GpuProgram): Promise<GPUComputePipeline> {
    this.#gpu.check(`compiling ${program.shaderKey}`);
    let p = this.#pipelines.get(program.shaderKey);
    if (p === undefined) {
      p = this.#compile(program);
      this.#pipelines.set(program.shaderKey, p);
      // a failed compilation is not cached: the next call reports it again
      p.catch(() => this.#pipelines.delete(program.shaderKey));
    }
    return p;
  }

  async #compile(program: GpuProgram): Promise<GPUComputePipeline> {
    const device = this.#gpu.device;
    const module = device.createShaderModule({ code: program.source(), label: program.shaderKey });
    try {
      return await device.createComputePipelineAsync({
        layout: "auto",
        compute: { module, entryPoint: "main" },
        label: program.shaderKey,
      });
    } catch (e) {
      const info = await module.getCompilationInfo().catch(() => undefined);
      const messages = info?.messages.map((m) => `${m.lineNum}:${m.linePos} ${m.message}`) ?? [];
      throw new DeviceError(
        `pipeline ${program.shaderKey} failed to compile: ${e}${
          messages.length ? "\n" + messages.join("\n") : ""
        }`,
        { cause: e },
      );
    }
  }
}
