/**
 * Shared by the GPU benchmarks: printing a table, and busy work that holds a hardware
 * GPU at its working clock. An H100 idling between submissions sat at 345 MHz of 1,980 and timed
 * the same kernel 3–4× slower (gpu/NOTES.md, finding 9); a software adapter has no clock to hold,
 * so there the busy work is skipped.
 *
 * @module
 */

import type { GpuDevice } from "../gpu/mod.ts";

/**
 * Prints a Markdown table with padded columns.
 * @param head column titles
 * @param rows cells, one array per row
 */
export function printTable(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => "| " + r.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |";
  console.log(line(head));
  console.log("| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |");
  for (const r of rows) console.log(line(r));
}

/** Busy work for one device: about a millisecond of arithmetic per dispatch on an H100. */
export class ClockHolder {
  readonly #dev: GPUDevice;
  readonly #pipeline: GPUComputePipeline | undefined;
  readonly #group: GPUBindGroup | undefined;
  readonly #sink: GPUBuffer;

  /**
   * Compiles the busy kernel, on hardware adapters only.
   * @param gpu the device
   */
  constructor(gpu: GpuDevice) {
    const dev = this.#dev = gpu.device;
    this.#sink = dev.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
    if (gpu.info.isFallbackAdapter) return;
    this.#pipeline = dev.createComputePipeline({
      layout: "auto",
      compute: {
        entryPoint: "main",
        module: dev.createShaderModule({
          code: `@group(0) @binding(0) var<storage, read_write> sink: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  var x = f32(id.x);
  for (var i = 0u; i < 100000u; i = i + 1u) { x = fma(x, 0.9999, 1.0); }
  if (x == 0.0) { sink[0] = x; }
}`,
        }),
      },
    });
    this.#group = dev.createBindGroup({
      layout: this.#pipeline.getBindGroupLayout(0),
      entries: [{ binding: 0, resource: { buffer: this.#sink } }],
    });
  }

  /**
   * Appends `n` busy dispatches to `enc` (none on a software adapter).
   * @param enc the command encoder
   * @param n dispatches
   */
  encode(enc: GPUCommandEncoder, n: number): void {
    if (!this.#pipeline) return;
    const pass = enc.beginComputePass();
    pass.setPipeline(this.#pipeline);
    pass.setBindGroup(0, this.#group!);
    for (let i = 0; i < n; i++) pass.dispatchWorkgroups(1024);
    pass.end();
  }

  /**
   * Keeps a hardware GPU busy for `ms` of wall time (returns at once on a software adapter).
   * @param ms milliseconds
   */
  async warmUp(ms: number): Promise<void> {
    if (!this.#pipeline) return;
    const t0 = performance.now();
    while (performance.now() - t0 < ms) {
      const enc = this.#dev.createCommandEncoder();
      this.encode(enc, 20);
      this.#dev.queue.submit([enc.finish()]);
      await this.#dev.queue.onSubmittedWorkDone();
    }
  }
}
