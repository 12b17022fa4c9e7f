// The GPU cache refuses shapes and policies too large to allocate by name, before it creates any
// buffer, as the CPU cache does (tests/core/cache/huge_shapes_test.ts); sinks and window beyond
// maxSeqLen allocate no more than maxSeqLen needs, and still copy to the CPU and back.
import assert from "node:assert/strict";
import { CapacityError, DeviceError, ShapeError } from "../../core/errors.ts";
import {
  createGpuKVCache,
  createKVCache,
  type GpuCachePolicy,
  GpuDevice,
  GpuKVCache,
} from "../../gpu/mod.ts";
import { uniformPolicy } from "../../core/cache/policy.ts";
import type { Tier } from "../../core/cache/policy.ts";
import { normals, rng } from "../_fixtures.ts";
import { testGpu } from "./_gpu.ts";

const SHAPE = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 32, maxSeqLen: 64 };
const int4 = (o: Partial<GpuCachePolicy> = {}): GpuCachePolicy => ({
  keyFormat: "int4-g32-token",
  valueFormat: "int4-g32-token",
  windowTokens: 4,
  ...o,
} as GpuCachePolicy);
const tiered = (windowTokens: number): GpuCachePolicy => ({
  tiers: Array.from(
    { length: SHAPE.nLayers },
    () =>
      Array.from({ length: SHAPE.nKvHeads }, (): Tier[] => [
        { keyFormat: "int8-g32-token", valueFormat: "int8-g32-token", minScore: 0.5 },
        { keyFormat: "int4-g32-token", valueFormat: "int4-g32-token", minScore: 0 },
      ]),
  ),
  windowTokens,
});

/**
 * The shared device behind a GpuDevice that counts the buffers created through it, and reports
 * `limits` in place of the device's own (with a hardware adapter's report when `hardware`).
 */
function countingGpu(gpu: GpuDevice, limits: Partial<GPUSupportedLimits> = {}, hardware = false) {
  const created: number[] = [];
  const all: Record<string, unknown> = {};
  for (const k in gpu.device.limits) all[k] = gpu.device.limits[k as keyof GPUSupportedLimits];
  Object.assign(all, limits);
  const device = new Proxy(gpu.device, {
    get(target, prop) {
      if (prop === "limits") return all;
      if (prop === "createBuffer") {
        return (descriptor: GPUBufferDescriptor) => {
          created.push(descriptor.size);
          return target.createBuffer(descriptor);
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const info = hardware ? { ...gpu.info, isFallbackAdapter: false } : gpu.info;
  return { gpu: new GpuDevice(device, info), created };
}

/** Asserts that creating the cache rejects with `cls`, every pattern matched, and no buffer made. */
async function refuses(
  gpu: GpuDevice,
  shape: typeof SHAPE,
  policy: GpuCachePolicy,
  cls: new (...a: never[]) => Error,
  ...patterns: RegExp[]
) {
  const counting = countingGpu(gpu);
  await assert.rejects(
    () => createGpuKVCache({ gpu: counting.gpu, shape, policy }),
    (e: Error) => {
      assert.ok(e instanceof cls, `${JSON.stringify(shape)}: ${e.name}: ${e.message}`);
      for (const p of patterns) assert.match(e.message, p);
      return true;
    },
  );
  assert.deepEqual(counting.created, [], `${JSON.stringify(shape)}: no buffer created`);
}

Deno.test("createGpuKVCache() refuses shapes it cannot allocate, naming shape and bytes, creating nothing", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  for (const nLayers of [1e7, 1e9]) {
    await refuses(
      env.gpu,
      { ...SHAPE, nLayers },
      int4(),
      CapacityError,
      new RegExp(`GpuKVCache of shape .*"nLayers":${nLayers}`),
      /staging buffer/,
      /\d+ bytes/,
    );
  }
  await refuses(
    env.gpu,
    { ...SHAPE, headDim: 2 ** 30 },
    int4(),
    CapacityError,
    /"headDim":1073741824/,
  );
  // dimensions past int32 are refused by their bytes too
  for (const key of ["headDim", "nLayers", "nKvHeads"] as const) {
    const shape = { ...SHAPE, nHeads: 2 ** 31, nKvHeads: 2 ** 31, [key]: 2 ** 31 };
    await refuses(env.gpu, shape, int4(), CapacityError, new RegExp(`"${key}":2147483648`));
  }
  // keys before RoPE: the angle tables of every position
  const channel = { keyFormat: "int4-g32-channel", valueFormat: "int4-g32-token", pageTokens: 32 };
  await refuses(
    env.gpu,
    { ...SHAPE, maxSeqLen: 1e9 },
    { ...channel, ropeBase: 10000 },
    CapacityError,
    /"maxSeqLen":1000000000/,
    /RoPE/,
  );
  // without them, only the pages grow with maxSeqLen: their buffer past what the device allows is
  // a DeviceError (createKVCache(auto) falls back to WebAssembly from it), naming it all the same
  for (const maxSeqLen of [1e9, 2 ** 31]) {
    await refuses(
      env.gpu,
      { ...SHAPE, maxSeqLen },
      int4(),
      DeviceError,
      new RegExp(`"maxSeqLen":${maxSeqLen}`),
      /int4-g32-token\|int4-g32-token page pool may grow to \d+ bytes/,
      new RegExp(`${env.gpu.device.limits.maxStorageBufferBindingSize} bytes`),
    );
  }
});

Deno.test("a tiered GPU policy's window scores beyond what one buffer holds are refused", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  await refuses(env.gpu, SHAPE, tiered(1e9), CapacityError, /window scores/, /\d{11} bytes/);
});

Deno.test("GPU pageTokens past what maxSeqLen can fill is a ShapeError; default pages always fit", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  for (const pageTokens of [1e9, 256]) {
    await refuses(
      env.gpu,
      SHAPE,
      int4({ pageTokens }),
      ShapeError,
      new RegExp(`pageTokens ${pageTokens}`),
      /maxSeqLen 64/,
    );
  }
  for (const maxSeqLen of [1, 2, 4]) {
    for (const pageTokens of [32, 128]) {
      const shape = { ...SHAPE, maxSeqLen };
      const cache = await createGpuKVCache({
        gpu: env.gpu,
        pipelines: env.pipelines,
        shape,
        policy: int4({ pageTokens }),
      });
      cache.destroy();
    }
  }
  // rounded up to the channel group: 130 positions fill pages of 160 but not of 192
  const channel = (pageTokens: number): GpuCachePolicy => ({
    keyFormat: "int4-g32-channel",
    valueFormat: "int4-g32-token",
    pageTokens,
  });
  const shape = { ...SHAPE, maxSeqLen: 130 };
  (await createGpuKVCache({ gpu: env.gpu, pipelines: env.pipelines, shape, policy: channel(160) }))
    .destroy();
  await refuses(env.gpu, shape, channel(192), ShapeError, /pageTokens 192/, /160/);
});

Deno.test("GPU sinkTokens and windowTokens beyond maxSeqLen allocate only maxSeqLen tokens", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const { gpu, pipelines } = env;
  const next = rng(9);
  const kv = SHAPE.nKvHeads * SHAPE.headDim, qDim = SHAPE.nHeads * SHAPE.headDim;
  const outA = new Float32Array(qDim), outB = new Float32Array(qDim);
  for (
    const [big, same] of [
      [{ sinkTokens: 100 }, { sinkTokens: 64 }],
      [{ sinkTokens: 1e9 }, { sinkTokens: 64 }],
      [{ windowTokens: 1e9 }, { windowTokens: 64 }],
      [{ sinkTokens: 1e9, windowTokens: 1e9 }, { sinkTokens: 64, windowTokens: 64 }],
    ] as Partial<GpuCachePolicy>[][]
  ) {
    const what = JSON.stringify(big);
    const a = await createGpuKVCache({ gpu, pipelines, shape: SHAPE, policy: int4(big) });
    const b = await createGpuKVCache({ gpu, pipelines, shape: SHAPE, policy: int4(same) });
    assert.equal(a.memory().bytes, b.memory().bytes, what);
    assert.equal(a.workingBytes, b.workingBytes, what);
    for (let p = 0; p < SHAPE.maxSeqLen; p++) {
      const k = normals(kv, next), v = normals(kv, next);
      for (const c of [a, b]) c.append(1, p, k, v);
      if (p % 21 === 0 || p === SHAPE.maxSeqLen - 1) {
        const q = normals(qDim, next);
        await a.attend(1, q, outA);
        await b.attend(1, q, outB);
        assert.deepEqual(outA, outB, `${what} position ${p}`);
      }
    }
    // to the CPU and back, attending alike
    const cpu = await a.toCpu();
    const back = await GpuKVCache.fromCpu(cpu, gpu, pipelines);
    const q = normals(qDim, next), want = new Float32Array(qDim);
    await a.attend(1, q, want);
    cpu.attend(1, q, outA);
    await back.attend(1, q, outB);
    assert.ok(outA.every((x, i) => Math.abs(x - want[i]) < 1e-5), `${what}: CPU copy`);
    assert.deepEqual(outB, want, `${what}: back on the GPU`);
    assert.equal(back.memory().bytes, a.memory().bytes, `${what}: back on the GPU`);
    for (const c of [a, b, back]) c.destroy();
  }
});

Deno.test("a tiered GPU window past maxSeqLen keeps the CPU cache's score slots and copies both ways", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const { gpu, pipelines } = env;
  const next = rng(11);
  const kv = SHAPE.nKvHeads * SHAPE.headDim, qDim = SHAPE.nHeads * SHAPE.headDim;
  const cache = await createGpuKVCache({ gpu, pipelines, shape: SHAPE, policy: tiered(100) });
  const out = new Float32Array(qDim), want = new Float32Array(qDim);
  for (let p = 0; p < 40; p++) {
    cache.append(0, p, normals(kv, next), normals(kv, next));
    if (p % 8 === 0) await cache.attend(0, normals(qDim, next), out);
  }
  const cpu = await cache.toCpu();
  assert.equal(cpu.windowScores(0, 0).length, 101);
  const back = await GpuKVCache.fromCpu(cpu, gpu, pipelines);
  for (let p = 40; p < SHAPE.maxSeqLen; p++) {
    const k = normals(kv, next), v = normals(kv, next), q = normals(qDim, next);
    for (const c of [cache, back, cpu]) c.append(0, p, k, v);
    await cache.attend(0, q, want);
    // the copies' rings start at their oldest token, so attention splits them elsewhere
    for (const c of [back, cpu]) {
      await c.attend(0, q, out);
      assert.ok(out.every((x, i) => Math.abs(x - want[i]) < 1e-5), `position ${p}`);
    }
  }
  const [a, b] = [await cache.toCpu(), await back.toCpu()];
  assert.deepEqual(a.windowScores(0, 1), b.windowScores(0, 1));
  cache.destroy();
  back.destroy();
});

Deno.test("a GPU cache past the device's buffer limits names the buffer; createKVCache(auto) falls back", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  // 16 KiB buffers: the staging buffer (9216 bytes) fits, the four pages of a pair do not
  const small = countingGpu(env.gpu, { maxStorageBufferBindingSize: 16384 }, true);
  await assert.rejects(
    () => createGpuKVCache({ gpu: small.gpu, shape: SHAPE, policy: int4() }),
    (e: Error) =>
      e instanceof DeviceError && /GpuKVCache of shape .*"nLayers":2/.test(e.message) &&
      /page pool may grow to \d+ bytes, over the 16384 bytes/.test(e.message),
  );
  assert.deepEqual(small.created, []);
  const policy = uniformPolicy({
    keyFormat: "int4-g32-token",
    valueFormat: "int4-g32-token",
    recentWindow: 4,
    pageTokens: 128,
  });
  const chosen = await createKVCache(SHAPE, policy, { gpu: small.gpu, minGpuElements: 0 });
  assert.equal(chosen.backend, "wasm");
  assert.match(chosen.reason, /the GPU cache failed \(GpuKVCache of shape .*page pool/);
  assert.deepEqual(small.created, []);
});

Deno.test("createGpuKVCache() counts the attention runner's partials among the buffers it checks", async () => {
  // they grow with the page table, and were checked only at an attend: appends were accepted
  // until every attend failed with a CapacityError (16 query heads of d = 256 over 70,000 tokens in
  // pages of 8 on llvmpipe's 128 MiB bindings), which createKVCache could not fall back from
  const env = await testGpu();
  if (env === undefined) return;
  const shape = { nLayers: 1, nHeads: 16, nKvHeads: 1, headDim: 256, maxSeqLen: 4096 };
  const policy = {
    keyFormat: "int8-g8-token",
    valueFormat: "int8-g8-token",
    pageTokens: 8,
    sinkTokens: 0,
    windowTokens: 0,
  };
  // 16 × (4096 / 128 + 3 + 4096 / 8 + 1) splits × 258 f32: 9.0 MB of partials; pages fit in 8 MiB
  const small = countingGpu(env.gpu, { maxStorageBufferBindingSize: 8 << 20 });
  await assert.rejects(
    () => createGpuKVCache({ gpu: small.gpu, shape, policy }),
    (e: Error) =>
      e instanceof DeviceError &&
      /attention partials may grow to \d+ bytes, over the 8388608/.test(e.message),
  );
  assert.deepEqual(small.created, []);
  const roomy = countingGpu(env.gpu, { maxStorageBufferBindingSize: 16 << 20 });
  const cache = await createGpuKVCache({ gpu: roomy.gpu, shape, policy });
  cache.destroy();
});

Deno.test("createGpuKVCache() on a software adapter refuses kernels past its loop limit before any buffer", async () => {
  const env = await testGpu();
  if (env === undefined || !env.gpu.info.isFallbackAdapter) return;
  // llvmpipe leaves loops after 65535 iterations (tests/gpu/loop_limit_cases.ts): attention's grow
  // with head_dim, the merge's with the records of a long page table
  await refuses(
    env.gpu,
    { ...SHAPE, headDim: 32768, maxSeqLen: 256 },
    int4(),
    DeviceError,
    /attention \(storage kernel\) over 128 tokens at head_dim 32768/,
    /65535/,
  );
  await refuses(
    env.gpu,
    { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 4096, maxSeqLen: 16384 },
    { keyFormat: "int2-g32-token", valueFormat: "int2-g32-token", pageTokens: 16 },
    DeviceError,
    /merge of \d+ records at head_dim 4096/,
  );
});
