// createKVCache: "auto" never changes what is stored (policies the GPU cache cannot hold as written
// stay on the CPU, saying why), prefers a hardware adapter over WebAssembly but not a software
// one, and "gpu" attends as the WASM cache does under the same policy.
import assert from "node:assert/strict";
import { DeviceError, FormatError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import {
  type CachePolicy,
  createKVCache,
  GpuDevice,
  type GpuKVCache,
  gpuPolicyFor,
  type KVCache,
  MIN_GPU_ELEMENTS,
  MixedPrecisionKVCache,
  uniformPolicy,
} from "../../mod.ts";
import { rng } from "../_fixtures.ts";
import { testGpu, threeTierPolicy } from "./_gpu.ts";
import { cpuPolicyOf, withDefaults } from "../../gpu/cache_policy.ts";

const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 16, maxSeqLen: 96 };
const ready = (windowFormat = "fp32") =>
  uniformPolicy({
    keyFormat: "int8-g16-token",
    valueFormat: "int4-g16-token",
    sinkTokens: 2,
    recentWindow: 8,
    windowFormat,
  });
// three tiers by the attention a chunk gathered in the window, per layer and KV head
const tiered = (windowFormat = "fp32", stagingFormat?: string) =>
  threeTierPolicy(windowFormat, 4, undefined, stagingFormat);
const notReady: [string, CachePolicy, RegExp][] = [
  [
    "a tiered policy with a bf16 window",
    tiered("bf16"),
    /keeps sinks, window and tokens awaiting eviction at bf16; the GPU cache keeps them at fp32, fp16 or an int format grouped per token/,
  ],
  [
    // no sinks or window, but channel-axis keys wait at bf16 for a whole group of 16 tokens
    "a bf16 eviction ring",
    uniformPolicy({
      keyFormat: "int8-g16-channel",
      valueFormat: "int4-g16-token",
      windowFormat: "bf16",
    }),
    /tokens awaiting eviction at bf16/,
  ],
  [
    "an fp16 window staging tokens at bf16",
    tiered("fp16", "bf16"),
    /stages tokens awaiting eviction at bf16; the GPU cache keeps them at fp32, fp16 or an int format grouped per token/,
  ],
];

Deno.test("createKVCache(auto) keeps policies the GPU cache cannot hold as written on WASM, saying why", async () => {
  for (const [what, policy, why] of notReady) {
    assert.equal(typeof gpuPolicyFor(policy), "string", what);
    const chosen = await createKVCache(shape, policy);
    assert.equal(chosen.backend, "wasm", what);
    assert.match(chosen.reason, why, what);
    assert.ok(chosen.cache instanceof MixedPrecisionKVCache && chosen.cache.backend === "wasm");
    // backend "gpu" refuses the same policy before touching any device
    await assert.rejects(
      () => createKVCache(shape, policy, { backend: "gpu" }),
      (e: Error) => e instanceof FormatError && why.test(e.message),
      what,
    );
  }
  const budget = await createKVCache(shape, ready(), { maxBytes: 1 << 20 });
  assert.equal(budget.backend, "wasm");
  assert.match(budget.reason, /memory budget of 1048576 bytes is set; the GPU cache has none/);
  assert.equal((budget.cache as MixedPrecisionKVCache).maxBytes, 1 << 20);
  // 32 query heads on one KV head: more than the GPU kernel holds, so WASM (and "gpu" refuses)
  const wide = { ...shape, nHeads: 32, nKvHeads: 1 };
  const many = await createKVCache(wide, ready());
  assert.equal(many.backend, "wasm");
  assert.match(
    many.reason,
    /32 query heads per KV head; the GPU attention kernel holds at most 16/,
  );
  await assert.rejects(() => createKVCache(wide, ready(), { backend: "gpu" }), ShapeError);
  // head_dim 6: no WASM kernel, so auto takes the TypeScript cache rather than fail
  const odd = await createKVCache(
    { ...shape, headDim: 6 },
    uniformPolicy({
      keyFormat: "fp16",
      valueFormat: "bf16",
    }),
  );
  assert.equal(odd.backend, "ts");
  assert.match(odd.reason, /WASM kernels need head_dim a multiple of 4, not 6/);
  odd.destroy();
  for (const b of ["ts", "wasm"] as const) {
    const c = await createKVCache(shape, ready(), { backend: b, integerDot: false });
    assert.equal(c.backend, b);
    assert.ok(c.cache instanceof MixedPrecisionKVCache);
    assert.equal(c.cache.backend, b);
    assert.equal(c.cache.integerDot, false);
  }
  await assert.rejects(
    () => createKVCache(shape, ready(), { backend: "cuda" as "gpu" }),
    (e: Error) => e instanceof InvalidValueError && /backend "cuda"/.test(e.message),
  );
  // a misspelt or meaningless option was dropped and the default used without a word
  const bad: [object, RegExp][] = [
    [{ minGPUElements: 0 }, /unknown field "minGPUElements"; the fields are .*minGpuElements/],
    [{ minGpuElements: NaN }, /^minGpuElements is NaN, expected a number ≥ 0/],
    [{ minGpuElements: -5 }, /^minGpuElements is -5/],
    [{ minGpuElements: "0" }, /^minGpuElements is "0"/],
    [{ backend: "wasm", integerDot: "no" }, /^integerDot is "no", expected a boolean/],
    [null as unknown as object, /^createKVCache options are null, expected an object/],
  ];
  for (const [options, message] of bad) {
    await assert.rejects(
      () => createKVCache(shape, ready(), options),
      (e: Error) => e instanceof InvalidValueError && message.test(e.message),
      message.source,
    );
  }
});

Deno.test("gpuPolicyFor() carries formats, pages, sinks and window over unchanged", () => {
  assert.deepEqual(gpuPolicyFor(ready()), {
    windowFormat: "fp32",
    keyFormat: "int8-g16-token",
    valueFormat: "int4-g16-token",
    pageTokens: 32,
    sinkTokens: 2,
    windowTokens: 8,
  });
  const policy = tiered();
  assert.deepEqual(gpuPolicyFor(policy), {
    windowFormat: "fp32",
    tiers: (policy.options as { tiers: unknown }).tiers,
    pageTokens: 16,
    sinkTokens: 2,
    windowTokens: 4,
  });
  // a staging format of its own goes over, and back through cpuPolicyOf
  const staged = gpuPolicyFor(tiered("fp16", "int8-g8-token"));
  assert.ok(typeof staged !== "string");
  assert.equal(staged.stagingFormat, "int8-g8-token");
  const back = cpuPolicyOf(withDefaults(staged), shape);
  assert.deepEqual([back.windowFormat, back.stagingFormat], ["fp16", "int8-g8-token"]);
  assert.equal(withDefaults({ ...staged, stagingFormat: undefined }).stagingFormat, "fp16");
});

/** Appends the same fresh random K/V to a cache (T tokens, every layer) and attends layer 1. */
async function fillAndAttend(cache: KVCache, T: number, seed: number): Promise<Float32Array> {
  const r = rng(seed), kv = shape.nKvHeads * shape.headDim;
  const x = () => Float32Array.from({ length: kv }, () => 2 * r() - 1);
  for (let pos = 0; pos < T; pos++) {
    for (let l = 0; l < shape.nLayers; l++) cache.append(l, pos, x(), x());
  }
  const q = Float32Array.from({ length: shape.nHeads * shape.headDim }, () => 2 * r() - 1);
  const out = new Float32Array(q.length);
  await cache.attend(1, q, out);
  return out;
}

Deno.test("createKVCache() uses a hardware adapter for a GPU-ready policy, not a software one", async () => {
  const env = await testGpu();
  if (!env) return;
  // minGpuElements 0: this test's cache is far below the size at which auto prefers the GPU
  const chosen = await createKVCache(shape, ready(), { gpu: env.gpu, minGpuElements: 0 });
  if (env.gpu.info.isFallbackAdapter) {
    assert.equal(chosen.backend, "wasm");
    assert.ok(
      chosen.reason.includes(`software one (${env.gpu.info.description})`),
      chosen.reason,
    );
  } else {
    assert.equal(chosen.backend, "gpu");
    assert.ok(chosen.reason.includes(env.gpu.info.description), chosen.reason);
  }
  chosen.destroy();
  assert.equal(env.gpu.lost, false, "a device the caller gave is left to the caller");
  // with no device given, auto requests one and, for a software adapter, releases it again
  const own = await createKVCache(shape, ready(), { minGpuElements: 0 });
  assert.equal(own.backend, env.gpu.info.isFallbackAdapter ? "wasm" : "gpu", own.reason);
  own.destroy();
});

Deno.test("createKVCache(gpu) attends as the WASM cache does under the same policy", async () => {
  const env = await testGpu();
  if (!env) return;
  // no sinks, no window: channel-axis keys still wait for whole groups of 16 (at fp32)
  const bare = (windowFormat = "fp32") =>
    uniformPolicy({
      keyFormat: "int8-g16-channel",
      valueFormat: "int4-g16-token",
      windowFormat,
    });
  // the CPU cache's default window format, fp16, rounds sinks, window and ring on both
  const fp16 = () => ready("fp16"), bare16 = () => bare("fp16");
  for (const policy of [() => ready(), () => bare(), fp16, bare16]) {
    const chosen = await createKVCache(shape, policy(), { backend: "gpu", gpu: env.gpu });
    assert.equal(chosen.backend, "gpu");
    const cpu = new MixedPrecisionKVCache(shape, policy(), { backend: "wasm", integerDot: false });
    // 70 tokens: sinks, pages of 32 (one partial), the window, channel groups awaiting eviction
    const g = await fillAndAttend(chosen.cache, 70, 71), c = await fillAndAttend(cpu, 70, 71);
    chosen.destroy();
    let worst = 0, scale = 0;
    for (let i = 0; i < c.length; i++) {
      worst = Math.max(worst, Math.abs(g[i] - c[i]));
      scale = Math.max(scale, Math.abs(c[i]));
    }
    // measured 4.5e-8 of 0.18 on llvmpipe: float summation order only
    const what = `${policy().label}: GPU vs WASM ${worst} of ${scale}`;
    assert.ok(scale > 0.01 && worst <= 1e-6 * scale, what);
  }
  assert.equal(env.gpu.lost, false);
});

for (
  const [windowFormat, stagingFormat] of [
    ["fp32"],
    ["fp16"],
    ["int8-g8-token"],
    ["fp16", "int8-g8-token"],
  ] as [string, string?][]
) {
  const ring = `${windowFormat} window${stagingFormat ? `, ${stagingFormat} staging` : ""}`;
  Deno.test(`createKVCache(gpu) runs a tiered policy as the WASM cache does: same tiers, same outputs (${ring})`, async () => {
    const env = await testGpu();
    if (!env) return;
    const chosen = await createKVCache(shape, tiered(windowFormat, stagingFormat), {
      backend: "gpu",
      gpu: env.gpu,
    });
    assert.equal(chosen.backend, "gpu", chosen.reason);
    const gpu = chosen.cache as GpuKVCache;
    const cpu = new MixedPrecisionKVCache(shape, tiered(windowFormat, stagingFormat), {
      backend: "wasm",
      integerDot: false,
    });
    // attention at every step: the window's scores decide each chunk's tier on both caches
    const r = rng(91), kv = shape.nKvHeads * shape.headDim, qd = shape.nHeads * shape.headDim;
    const x = (n: number, s = 1) => Float32Array.from({ length: n }, () => s * (2 * r() - 1));
    const g = new Float32Array(qd), c = new Float32Array(qd);
    let worst = 0, scale = 0;
    for (let pos = 0; pos < 90; pos++) {
      for (let l = 0; l < shape.nLayers; l++) {
        // a few tokens stand out, so that some chunks gather more attention than others
        const k = x(kv, pos % 11 < 3 ? 3 : 1), v = x(kv);
        gpu.append(l, pos, k, v);
        cpu.append(l, pos, k, v);
        const q = x(qd, 2);
        await gpu.attend(l, q, g);
        cpu.attend(l, q, c);
        for (let i = 0; i < qd; i++) {
          worst = Math.max(worst, Math.abs(g[i] - c[i]));
          scale = Math.max(scale, Math.abs(c[i]));
        }
      }
    }
    const tiers = gpu.tokensByFormat();
    assert.deepEqual(tiers, cpu.tokensByFormat(), "the same chunks went to the same tiers");
    for (const pair of tiered().pairs()) {
      const key = `${pair.keyFormat}|${pair.valueFormat}`;
      assert.ok(
        (tiers.get(key) ?? 0) >= 16,
        `every tier holds a page's worth: ${key} in ${[...tiers]}`,
      );
    }
    assert.ok(scale > 0.01 && worst <= 1e-5 * scale, `GPU vs WASM ${worst} of ${scale}`);
    // a page of one pool reads back as the words the WASM cache holds for it
    const pool = cpu.segments(1, 1).pools.find((p) => p.pair.keyFormat === "int8-g16-channel")!;
    const page = await gpu.readPage(1, 1, 0, pool.pair);
    assert.equal(page.tokens, pool.pages[0].n);
    assert.deepEqual(page.keyWords, pool.pages[0].kWords);
    assert.deepEqual(page.valueWords, pool.pages[0].vWords);
    await assert.rejects(() => gpu.readPage(1, 1, 0), /3 format pairs: name the page's pair/);
    // page memory follows the tiers: less than the same positions all in the widest tier's pages
    const widest = await createKVCache(
      shape,
      uniformPolicy({
        keyFormat: "int8-g16-token",
        valueFormat: "fp16",
        sinkTokens: 2,
        recentWindow: 4,
        pageTokens: 16,
        windowFormat,
      }),
      { backend: "gpu", gpu: env.gpu },
    );
    for (let pos = 0; pos < 90; pos++) {
      for (let l = 0; l < shape.nLayers; l++) widest.cache.append(l, pos, x(kv), x(kv));
    }
    const [mine, all] = [gpu.pageBytes, (widest.cache as GpuKVCache).pageBytes];
    assert.ok(mine < all, `tiered ${mine} bytes, all in the widest tier ${all}`);
    widest.destroy();
    chosen.destroy();
    assert.equal(env.gpu.lost, false);
  });
}

Deno.test("createKVCache(auto) falls back to WASM when the GPU cache cannot be created", async () => {
  const env = await testGpu();
  if (!env) return;
  // the shared device seen as a hardware adapter, then lost: auto must not fail, nor touch it
  const lost = new GpuDevice(env.gpu.device, { ...env.gpu.info, isFallbackAdapter: false });
  lost.markLost("test: lost on purpose");
  const chosen = await createKVCache(shape, ready(), { gpu: lost, minGpuElements: 0 });
  assert.equal(chosen.backend, "wasm");
  assert.match(chosen.reason, /the GPU cache failed \(.*lost on purpose/);
  await assert.rejects(
    () => createKVCache(shape, ready(), { backend: "gpu", gpu: lost }),
    (e: Error) => e instanceof DeviceError,
  );
  assert.equal(env.gpu.lost, false);
});

Deno.test("createKVCache(auto) keeps caches too small to pay for GPU readbacks on WASM", async () => {
  const env = await testGpu();
  if (!env) return;
  // the shared device seen as a hardware adapter: only the size can keep the cache on the CPU
  const hardware = new GpuDevice(env.gpu.device, { ...env.gpu.info, isFallbackAdapter: false });
  const elements = 2 * shape.maxSeqLen * shape.nKvHeads * shape.headDim; // 6144
  assert.ok(elements < MIN_GPU_ELEMENTS);
  const small = await createKVCache(shape, ready(), { gpu: hardware });
  assert.equal(small.backend, "wasm");
  assert.match(
    small.reason,
    /at most 6144 K\/V elements a layer, fewer than minGpuElements \(16777216\)/,
  );
  for (const least of [elements, 0]) {
    const chosen = await createKVCache(shape, ready(), { gpu: hardware, minGpuElements: least });
    assert.equal(chosen.backend, "gpu", chosen.reason);
    chosen.destroy();
  }
  const above = await createKVCache(shape, ready(), {
    gpu: hardware,
    minGpuElements: elements + 1,
  });
  assert.equal(above.backend, "wasm");
  // asked for by name, the GPU ignores the threshold
  const named = await createKVCache(shape, ready(), { backend: "gpu", gpu: hardware });
  assert.equal(named.backend, "gpu");
  named.destroy();
  assert.equal(env.gpu.lost, false);
});

Deno.test("createKVCache(auto) without WebGPU chooses WASM and says WebGPU is missing", async () => {
  const had = Object.getOwnPropertyDescriptor(navigator, "gpu");
  Object.defineProperty(navigator, "gpu", { value: undefined, configurable: true });
  try {
    const chosen = await createKVCache(shape, ready(), { minGpuElements: 0 });
    assert.equal(chosen.backend, "wasm");
    assert.match(chosen.reason, /^wasm: no WebGPU device \(WebGPU is not available/);
    await assert.rejects(
      () => createKVCache(shape, ready(), { backend: "gpu" }),
      (e: Error) => e instanceof DeviceError,
    );
  } finally {
    if (had) Object.defineProperty(navigator, "gpu", had);
    else delete (navigator as { gpu?: unknown }).gpu;
  }
  assert.ok(navigator.gpu !== undefined || Deno.env.get("CI") !== "true", "navigator.gpu restored");
});

Deno.test("GpuKVCache.attend() credits the window from the query it was given, whatever q holds later", async () => {
  // the credit after the readback read q again: with out === q it credited the outputs, and a q
  // reused while the call was in flight credited the new contents; tiers then left the CPU's
  const env = await testGpu();
  if (!env) return;
  for (const mode of ["out is q", "q reused in flight"]) {
    const chosen = await createKVCache(shape, tiered("fp32"), { backend: "gpu", gpu: env.gpu });
    const gpu = chosen.cache as GpuKVCache;
    const cpu = new MixedPrecisionKVCache(shape, tiered("fp32"), {
      backend: "wasm",
      integerDot: false,
    });
    const r = rng(93), kv = shape.nKvHeads * shape.headDim, qd = shape.nHeads * shape.headDim;
    const x = (n: number, s = 1) => Float32Array.from({ length: n }, () => s * (2 * r() - 1));
    for (let pos = 0; pos < 60; pos++) {
      for (let l = 0; l < shape.nLayers; l++) {
        const k = x(kv, pos % 11 < 3 ? 3 : 1), v = x(kv);
        gpu.append(l, pos, k, v);
        cpu.append(l, pos, k, v);
        const q = x(qd, 2), c = new Float32Array(qd);
        cpu.attend(l, q, c);
        const g = mode === "out is q" ? q : new Float32Array(qd);
        const pending = gpu.attend(l, q, g);
        if (mode === "q reused in flight") q.fill(0);
        await pending;
      }
    }
    assert.deepEqual(gpu.tokensByFormat(), cpu.tokensByFormat(), mode);
    chosen.destroy();
  }
});
