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

import { DeviceError, InvalidValueError, showValue } from "../core/errors.ts";
import type { GpuDevice } from "./device.ts";
import { getFormat } from "../codecs/format.ts";

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

  /** The device its pipelines are compiled for. */
  get gpu(): GpuDevice {
    return this.#gpu;
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

/**
 * Throws unless `gpu` is a GpuDevice and `pipelines`, when given, a PipelineCache of that device: a
 * raw GPUDevice failed later as a TypeError, and another device's pipelines bound in silence,
 * leaving every output zero behind the device's validation errors.
 *
 * @param gpu what was given as the device
 * @param pipelines what was given as its pipeline cache (undefined: none)
 * @param where the option or argument names, for the message
 * @throws {InvalidValueError} naming what was given
 */
export function checkGpuArgs(gpu: unknown, pipelines?: unknown, where = "gpu"): void {
  // by shape, not instanceof: a GpuDevice from another copy of kvprec (the bundle beside the
  // source, two versions in one dependency graph) serves as well
  const g = gpu as Partial<GpuDevice> | null;
  if (
    typeof g !== "object" || g === null || typeof g.check !== "function" ||
    typeof g.device?.createBuffer !== "function"
  ) {
    throw new InvalidValueError(
      `${where} is ${showValue(gpu)}, expected a GpuDevice from requestGpu()` +
        (typeof (gpu as GPUDevice | null)?.createBuffer === "function"
          ? " (a GPUDevice is wrapped by requestGpu)"
          : ""),
    );
  }
  if (pipelines === undefined) return;
  if (typeof (pipelines as { get?: unknown } | null)?.get !== "function") {
    throw new InvalidValueError(
      `pipelines is ${showValue(pipelines)}, expected a PipelineCache of the same device`,
    );
  }
  // pipelines bind on the GPUDevice they were compiled on, whichever GpuDevice wraps it
  if (pipelines instanceof PipelineCache && pipelines.gpu.device !== (gpu as GpuDevice).device) {
    throw new InvalidValueError(
      "pipelines were compiled for another device than the one given: a pipeline binds only on " +
        "its own device",
    );
  }
}

/**
 * Throws unless `spec` is a registry format's spec (getFormat(name)): a name passed in its place
 * read every field as undefined ("group size undefined").
 *
 * @param spec what was given as the format
 * @throws {InvalidValueError} naming it
 */
export function checkSpec(spec: unknown): void {
  const s = spec as Record<string, unknown> | null;
  let known = false;
  try {
    // the registry's spec or one equal to it field by field (from another copy of kvprec)
    const f = typeof s?.name === "string"
      ? getFormat(s.name) as unknown as Record<string, unknown>
      : undefined;
    known = f !== undefined &&
      Object.keys(f).every((k) => typeof f[k] === "object" || f[k] === s![k]);
  } catch {
    // an unknown name: not a registry spec
  }
  if (!known) {
    throw new InvalidValueError(
      `format is ${showValue(spec)}, expected a FormatSpec from getFormat(name)`,
    );
  }
}
