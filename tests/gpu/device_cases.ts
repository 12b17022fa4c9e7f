import assert from "node:assert/strict";
import { CapacityError, DeviceError } from "../../core/errors.ts";
import { getFormat } from "../../codecs/mod.ts";
import { gpuDecode, PipelineCache, requestGpu } from "../../gpu/mod.ts";
import { GrowableBuffer } from "../../gpu/growable_buffer.ts";
import { testGpu } from "./_gpu.ts";

const cases: [string, GPU | undefined, RegExp][] = [
  ["no adapter", { requestAdapter: () => Promise.resolve(null) } as unknown as GPU, /no adapter/],
  [
    "requestAdapter throws",
    { requestAdapter: () => Promise.reject(new Error("boom")) } as unknown as GPU,
    /requestAdapter\(\) failed: Error: boom/,
  ],
];
for (const [name, gpu, message] of cases) {
  Deno.test(`requestGpu() throws DeviceError when ${name}`, async () => {
    await assert.rejects(() => requestGpu({ gpu }), (e: Error) => {
      return e instanceof DeviceError && message.test(e.message);
    });
  });
}

/** An entry point whose adapter reports `fallback` through adapter.info, the adapter, or neither. */
function fakeGpu(where: "info" | "adapter" | "neither", fallback: boolean): GPU {
  const limits = { maxStorageBufferBindingSize: 1 << 27, maxBufferSize: 1 << 28 };
  const adapter = {
    info: { description: "fake", vendor: "", architecture: "" },
    features: new Set<string>(),
    limits,
    requestDevice: () => Promise.resolve({ limits, lost: new Promise(() => {}), destroy() {} }),
  };
  if (where === "info") Object.assign(adapter.info, { isFallbackAdapter: fallback });
  if (where === "adapter") Object.assign(adapter, { isFallbackAdapter: fallback });
  return { requestAdapter: () => Promise.resolve(adapter) } as unknown as GPU;
}

Deno.test("requestGpu() reads isFallbackAdapter from adapter.info, or the adapter where older", async () => {
  for (const where of ["info", "adapter"] as const) {
    for (const fallback of [true, false]) {
      const { info } = await requestGpu({ gpu: fakeGpu(where, fallback) });
      assert.equal(info.isFallbackAdapter, fallback, `${where}: ${fallback}`);
    }
  }
  assert.equal((await requestGpu({ gpu: fakeGpu("neither", true) })).info.isFallbackAdapter, false);
});

Deno.test("requestGpu() reports adapter info, features and limits", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const { info } = env.gpu;
  assert.equal(typeof info.description, "string");
  assert.ok(Array.isArray(info.features));
  assert.ok(info.limits.maxStorageBufferBindingSize >= 128 << 20, JSON.stringify(info.limits));
  assert.ok(info.limits.maxComputeWorkgroupSizeX >= 64);
});

Deno.test("GpuDevice.check() throws DeviceError once the device is lost, before any GPU work", async () => {
  const gpu = await requestGpu().catch((e) => {
    if (Deno.env.get("CI") === "true") throw e;
    return undefined;
  });
  if (gpu === undefined) return;
  const pipelines = new PipelineCache(gpu);
  const words = Uint32Array.of(0x3c00);
  assert.equal((await gpuDecode(gpu, pipelines, getFormat("fp16"), words, 2))[0], 1);
  gpu.destroy();
  assert.ok(gpu.lost);
  assert.throws(
    () => gpu.check("attend"),
    (e: Error) => e instanceof DeviceError && /attend: WebGPU device lost/.test(e.message),
  );
  await assert.rejects(() => gpuDecode(gpu, pipelines, getFormat("fp16"), words, 2), DeviceError);
  assert.equal(words[0], 0x3c00, "input untouched");
});

Deno.test("GrowableBuffer grows by doubling up to the device's binding limit, and refuses past it", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  // the real device under small limits: doubling past the binding limit once made a buffer that
  // failed validation unseen, and the attention kernel reading it wrote zeros
  const device = env.gpu.device;
  const limits = { maxBufferSize: 1 << 20, maxStorageBufferBindingSize: 10_000 };
  const small = new Proxy(device, {
    get: (d, key) => {
      if (key === "limits") return limits;
      const v = Reflect.get(d, key, d);
      return typeof v === "function" ? v.bind(d) : v;
    },
  });
  const buf = new GrowableBuffer(small, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, "t");
  assert.equal(buf.ensure(1000).size, 2048, "doubled, to whole 256s");
  assert.equal(buf.ensure(6000).size, 9984, "capped below the binding limit");
  assert.equal(buf.ensure(9990).size, 9992, "a request above the last 256 still fits");
  assert.throws(
    () => buf.ensure(10_001),
    (e: Error) =>
      e instanceof CapacityError && /t: 10001 bytes needed, .* of 10000/.test(e.message),
  );
  assert.equal(buf.byteLength, 9992, "a refused request keeps the buffer");
  buf.destroy();
});
