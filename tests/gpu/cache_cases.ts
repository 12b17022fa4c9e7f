import assert from "node:assert/strict";
import {
  BudgetError,
  CapacityError,
  DeviceError,
  FormatError,
  InvalidValueError,
  ShapeError,
} from "../../core/errors.ts";
import { getFormat } from "../../codecs/mod.ts";
import { wordsForLength } from "../../codecs/format.ts";
import {
  createGpuKVCache,
  createKVCache,
  type GpuCachePolicy,
  gpuDecode,
  GpuDevice,
  gpuEncode,
  GpuKVCache,
  type GpuUniformPolicy,
  PipelineCache,
  requestGpu,
} from "../../gpu/mod.ts";
import { MixedPrecisionKVCache } from "../../core/cache/mixed_cache.ts";
import { uniformPolicy } from "../../core/cache/policy.ts";
import { loadFixture, normals, rng } from "../_fixtures.ts";
import { cacheShape } from "../../core/model/transformer.ts";
import { perplexity } from "../../core/eval/perplexity.ts";
import { packPage, relativeError, testGpu } from "./_gpu.ts";
import { PageSlots } from "../../gpu/page_slots.ts";
import { readBack } from "../../gpu/_io.ts";
import { CpuPagedReference } from "./_cpu_reference.ts";

const POLICIES: [string, GpuUniformPolicy, number, number][] = [
  // policy, head_dim, positions
  [
    "int8 channel keys / int8 token values",
    {
      keyFormat: "int8-g32-channel",
      valueFormat: "int8-g32-token",
      pageTokens: 64,
      sinkTokens: 2,
      windowTokens: 8,
    },
    64,
    150,
  ],
  [
    "int4 channel, d 8 (fixture)",
    {
      keyFormat: "int4-g16-channel",
      valueFormat: "int4-g16-channel",
      pageTokens: 32,
      sinkTokens: 4,
      windowTokens: 16,
    },
    8,
    120,
  ],
  [
    "int4 token / fp8 token, d 128",
    {
      keyFormat: "int4-g32-token",
      valueFormat: "fp8e4m3-g32-token",
      pageTokens: 32,
      sinkTokens: 1,
      windowTokens: 5,
    },
    128,
    80,
  ],
  [
    "fp32 pages",
    { keyFormat: "fp32", valueFormat: "fp16", pageTokens: 16, sinkTokens: 0, windowTokens: 3 },
    16,
    50,
  ],
];

for (const [name, policy, d, T] of POLICIES) {
  Deno.test(`GpuKVCache.attend() matches the CPU paged reference: ${name}`, async () => {
    const env = await testGpu();
    if (env === undefined) return;
    const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: d, maxSeqLen: T + 8 };
    const cache = await createGpuKVCache({ gpu: env.gpu, pipelines: env.pipelines, shape, policy });
    const ref = new CpuPagedReference(shape, policy);
    const next = rng(d + T);
    const kv = shape.nKvHeads * d, qd = shape.nHeads * d;
    const got = new Float32Array(qd), want = new Float32Array(qd);
    let worst = 0;
    for (let pos = 0; pos < T; pos++) {
      for (let layer = 0; layer < 2; layer++) {
        const k = normals(kv, next), v = normals(kv, next);
        cache.append(layer, pos, k, v);
        ref.append(layer, pos, k, v);
        if (pos % 7 === 0 || pos === T - 1) {
          const q = normals(qd, next);
          await cache.attend(layer, q, got);
          ref.attend(layer, q, want);
          for (let h = 0; h < shape.nHeads; h++) {
            worst = Math.max(
              worst,
              relativeError(got.subarray(h * d, (h + 1) * d), want.subarray(h * d, (h + 1) * d)),
            );
          }
        }
      }
    }
    assert.ok(
      cache.pagedLength(0) > policy.pageTokens!,
      `${cache.pagedLength(0)} positions paged: several pages`,
    );
    assert.ok(worst <= 1e-5, `relative error ${worst}`);
    // pages hold the CPU cache's words: the first page equals the WASM encoding of its tokens
    const m = cache.memory();
    assert.equal(m.elements, 2 * T * kv * 2);
    cache.destroy();
  });
}

Deno.test("GpuKVCache.readPage() returns the WASM codec's words for the page's tokens", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  for (
    const policy of [
      {
        keyFormat: "int4-g16-channel",
        valueFormat: "int3-g8-token",
        pageTokens: 32,
        sinkTokens: 3,
        windowTokens: 4,
      },
      {
        keyFormat: "fp8e5m2-g16-channel",
        valueFormat: "bf16",
        pageTokens: 32,
        sinkTokens: 0,
        windowTokens: 0,
      },
    ]
  ) {
    const d = 16, shape = { nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: d, maxSeqLen: 80 };
    const cache = await createGpuKVCache({ gpu: env.gpu, pipelines: env.pipelines, shape, policy });
    const next = rng(77);
    const keys: Float32Array[] = [[], []].map(() => new Float32Array(80 * d));
    const values: Float32Array[] = [[], []].map(() => new Float32Array(80 * d));
    for (let pos = 0; pos < 80; pos++) {
      const k = normals(2 * d, next), v = normals(2 * d, next);
      for (let h = 0; h < 2; h++) {
        keys[h].set(k.subarray(h * d, (h + 1) * d), pos * d);
        values[h].set(v.subarray(h * d, (h + 1) * d), pos * d);
      }
      cache.append(0, pos, k, v);
    }
    const S = policy.sinkTokens, P = policy.pageTokens;
    for (const [h, page] of [[0, 0], [1, 1]]) {
      const { keyWords, valueWords, tokens } = await cache.readPage(0, h, page);
      const t0 = S + page * P;
      const wantK = packPage(getFormat(policy.keyFormat), keys[h].subarray(t0 * d), tokens, d, P);
      const wantV = packPage(
        getFormat(policy.valueFormat),
        values[h].subarray(t0 * d),
        tokens,
        d,
        P,
      );
      assert.deepEqual(keyWords, wantK, `${policy.keyFormat} keys, head ${h}, page ${page}`);
      assert.deepEqual(valueWords, wantV, `${policy.valueFormat} values, head ${h}, page ${page}`);
    }
    await assert.rejects(() => cache.readPage(0, 0, 5), ShapeError);
    cache.destroy();
  }
});

const tier = (f: string) => [{ minScore: 0, keyFormat: f, valueFormat: "fp32" }];

Deno.test("createGpuKVCache() rejects formats and shapes it cannot page", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 64 };
  const bad: [GpuCachePolicy, new (...a: never[]) => Error][] = [
    [{ keyFormat: "int4-g8-heads", valueFormat: "fp32" }, FormatError],
    [{ keyFormat: "int9-g8-token", valueFormat: "fp32" }, FormatError],
    // the CPU cache's error types for the same faults
    [{ keyFormat: "int4-g32-token", valueFormat: "fp32" }, FormatError], // 32 does not divide d = 8
    [{ keyFormat: "int4-g32-channel", valueFormat: "fp32", pageTokens: 48 }, FormatError],
    [{ keyFormat: "fp32", valueFormat: "fp32", windowTokens: -1 }, InvalidValueError],
    [{ keyFormat: "fp32", valueFormat: "fp32", windowFormat: "bf16" as "fp16" }, FormatError],
    [{ keyFormat: "fp32", valueFormat: "fp32", stagingFormat: "bf16" }, FormatError],
    // tiered: one table per layer and KV head, whose last tier takes every score, of pageable formats
    [{ tiers: [[tier("int8-g8-token")], [tier("int8-g8-token")]] }, ShapeError],
    [{ tiers: [[[{ ...tier("int8-g8-token")[0], minScore: 0.5 }]]] }, InvalidValueError],
    [{ tiers: [[[{ ...tier("int8-g8-token")[0], minScore: NaN }]]] }, InvalidValueError],
    [{ tiers: [[tier("int4-g8-heads")]] }, FormatError],
    [{ tiers: [[tier("fp32")]], keyFormat: "fp32" } as unknown as GpuCachePolicy, FormatError],
    [{ keyFormat: "int4-g8-channel", valueFormat: "fp32", ropeBase: 0 }, InvalidValueError],
  ];
  for (const [policy, type] of bad) {
    await assert.rejects(
      () => createGpuKVCache({ gpu: env.gpu, pipelines: env.pipelines, shape, policy }),
      type,
      JSON.stringify(policy),
    );
  }
  // keys before RoPE turn pairs of channels
  await assert.rejects(
    () =>
      createGpuKVCache({
        gpu: env.gpu,
        shape: { ...shape, headDim: 3 },
        policy: { keyFormat: "fp32", valueFormat: "fp32", ropeBase: 10000 },
      }),
    (e: Error) => e instanceof ShapeError && /even head_dim, got 3/.test(e.message),
  );
  // with no channel-axis key format nothing turns: no angle table is held
  const held = [];
  for (const ropeBase of [undefined, 10000]) {
    const policy = { keyFormat: "int8-g8-token", valueFormat: "fp32", ropeBase };
    const cache = await createGpuKVCache({ gpu: env.gpu, pipelines: env.pipelines, shape, policy });
    held.push(cache.workingBytes);
    cache.destroy();
  }
  assert.equal(held[1], held[0]);
  // a misspelt field was dropped without a word, and the CPU policy's name for the window with it
  const misspelt: [object, RegExp][] = [
    [
      { keyFormat: "fp32", valueFormat: "fp32", windowtokens: 8 },
      /unknown field "windowtokens"; the fields are (?!.*recentWindow)/,
    ],
    [{ keyFormat: "fp32", valueFormat: "fp32", recentWindow: 8 }, /calls it windowTokens/],
  ];
  for (const [policy, message] of misspelt) {
    await assert.rejects(
      () =>
        createGpuKVCache({
          gpu: env.gpu,
          pipelines: env.pipelines,
          shape,
          policy: policy as GpuCachePolicy,
        }),
      (e: Error) => e instanceof InvalidValueError && message.test(e.message),
    );
  }
});

Deno.test("GpuKVCache.append() rejects bad input and a lost device without changing state", async () => {
  const gpu = await requestGpu().catch((e) => {
    if (Deno.env.get("CI") === "true") throw e;
    return undefined;
  });
  if (gpu === undefined) return;
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 2 };
  const cache = await createGpuKVCache({
    gpu,
    shape,
    policy: { keyFormat: "int8-g8-token", valueFormat: "int8-g8-token" },
  });
  const k = new Float32Array(8).fill(1), v = new Float32Array(8).fill(2);
  assert.throws(() => cache.append(0, 1, k, v), ShapeError);
  const nan = k.slice();
  nan[3] = NaN;
  assert.throws(
    () => cache.append(0, 0, nan, v),
    (e: Error & { index?: number }) => e.name === "InvalidValueError" && e.index === 3,
  );
  assert.equal(cache.length(0), 0);
  cache.append(0, 0, k, v);
  cache.append(0, 1, k, v);
  assert.throws(() => cache.append(0, 2, k, v), CapacityError);
  const out = new Float32Array(16);
  // attend() reads the cache across awaits: nothing may change it or read it again meanwhile
  cache.reset();
  cache.append(0, 0, k, v);
  const pending = cache.attend(0, new Float32Array(16).fill(0.1), out);
  assert.throws(() => cache.append(0, 1, k, v), /append\(\) called while attend\(\) is in flight/);
  assert.throws(() => cache.reset(), DeviceError);
  await assert.rejects(() => cache.attend(0, new Float32Array(16), out), DeviceError);
  await assert.rejects(() => cache.toCpu(), DeviceError);
  await pending;
  assert.equal(cache.length(0), 1, "the refused append changed nothing");
  assert.equal(out[0], 2);
  const copying = cache.toCpu();
  assert.throws(() => cache.append(0, 1, k, v), /append\(\) called while toCpu\(\) is in flight/);
  assert.equal((await copying).length(0), 1);
  cache.append(0, 1, k, v);
  await assert.rejects(
    () => createGpuKVCache({ shape, policy: { keyFormat: "fp32", valueFormat: "fp32" } } as never),
    (e: Error) => e instanceof InvalidValueError && /options.gpu is undefined/.test(e.message),
  );
  gpu.destroy();
  assert.throws(() => cache.append(0, 2, k, v), CapacityError);
  cache.reset();
  assert.throws(() => cache.append(0, 0, k, v), DeviceError);
  assert.equal(cache.length(0), 0, "a failed append leaves the length");
  await assert.rejects(async () => await cache.attend(0, new Float32Array(16), out), ShapeError);
});

Deno.test("GpuKVCache refuses what the CPU cache refuses, and misuse leaves the device alive", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const { gpu, pipelines } = env;
  const shape = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: 8, maxSeqLen: 64 };
  const policy = {
    keyFormat: "int8-g8-token",
    valueFormat: "int8-g8-token",
    pageTokens: 8,
    sinkTokens: 0,
    windowTokens: 4,
  };
  const make = () => createGpuKVCache({ gpu, pipelines, shape, policy });
  const cache = await make(), other = await make();
  const next = rng(4);
  // a value no header can hold (int8 window: the GPU cache once took 1e9 and attended to NaN)
  const big = normals(8, next);
  big[6] = 1e9;
  assert.throws(
    () => cache.append(0, 0, big, normals(8, next)),
    (e: Error) => e instanceof InvalidValueError && /k\[6\] is 1000000000/.test(e.message),
  );
  assert.equal(cache.length(0), 0);
  // keys turned back before RoPE can grow by √2, so such a cache holds less, as the CPU cache does
  const turned = await createGpuKVCache({
    gpu,
    pipelines,
    shape,
    policy: { ...policy, keyFormat: "int4-g8-channel", ropeBase: 10000 },
  });
  big[6] = -46000;
  assert.throws(
    () => turned.append(0, 0, big, normals(8, next)),
    (e: Error) =>
      e instanceof InvalidValueError &&
      /k\[6\] is -46000, .*turned back before RoPE/.test(e.message),
  );
  assert.equal(turned.length(0), 0);
  turned.destroy();
  for (let p = 0; p < 20; p++) {
    const k = normals(8, next), v = normals(8, next);
    cache.append(0, p, k, v);
    other.append(0, p, k, v);
  }
  // page arguments are checked before any read; a read while attend runs waits its turn
  for (const [layer, head, page] of [[0.5, 0, 0], [0, 0, -1], [0, 0, 1.5]]) {
    await assert.rejects(() => cache.readPage(layer, head, page), ShapeError, `${layer} ${page}`);
  }
  await assert.rejects(() => cache.readPage(0, 0, 0, null as never), InvalidValueError);
  const out = new Float32Array(32);
  const pending = cache.attend(0, normals(32, next), out);
  await assert.rejects(() => cache.readPage(0, 0, 0), /readPage\(\) called while attend/);
  await pending;
  const [reading, second] = [cache.readPage(0, 0, 0), cache.readPage(0, 0, 0)];
  await assert.rejects(() => second, /readPage\(\) called while readPage/);
  assert.equal((await reading).tokens, 8);
  // a copy over its budget is refused, not returned
  await assert.rejects(() => cache.toCpu({ maxBytes: 64 }), BudgetError);
  // a layer out of range is refused by name, as the CPU cache refuses it (checkLayer)
  for (const layer of [1, -1, 0.5]) {
    for (const read of [() => cache.length(layer), () => cache.pagedLength(layer)]) {
      assert.throws(
        read,
        (e: Error) => e instanceof ShapeError && /out of range \[0, 1\)/.test(e.message),
        `layer ${layer}`,
      );
    }
  }
  assert.ok(cache.memory().bytes > 0);
  cache.destroy();
  // its buffers are gone: it holds nothing
  assert.deepEqual(cache.memory(), { bytes: 0, elements: 0, bitsPerElement: 0 });
  // a destroyed cache refuses every call by name; the device and the other cache carry on
  assert.throws(() => cache.append(0, 20, normals(8, next), normals(8, next)), /after destroy/);
  await assert.rejects(() => cache.attend(0, normals(32, next), out), /after destroy/);
  await assert.rejects(() => cache.readPage(0, 0, 0), /after destroy/);
  await assert.rejects(() => cache.toCpu(), /after destroy/);
  assert.throws(() => cache.reset(), /after destroy/);
  cache.destroy();
  assert.equal(gpu.lost, false);
  await other.attend(0, normals(32, next), out);
  assert.ok(out.every(Number.isFinite));
  other.destroy();
  // more query heads per KV head than the kernel holds: refused when created, not at attend
  await assert.rejects(
    () => createGpuKVCache({ gpu, pipelines, shape: { ...shape, nHeads: 32 }, policy }),
    (e: Error) => e instanceof ShapeError && /32 query heads per KV head/.test(e.message),
  );
});

Deno.test("GpuKVCache with a staging format holds as many bytes as the CPU cache, plus the window's staged copies", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 16, maxSeqLen: 64 };
  const heads = 4, d = 16, window = 8;
  const policy = (stagingFormat?: string) =>
    uniformPolicy({
      keyFormat: "int8-g16-channel",
      valueFormat: "int8-g8-token",
      sinkTokens: 2,
      recentWindow: window,
      pageTokens: 16,
      windowFormat: "fp16",
      stagingFormat,
    });
  const bytes = [];
  for (const stagingFormat of [undefined, "int8-g8-token"]) {
    const cpu = new MixedPrecisionKVCache(shape, policy(stagingFormat));
    const gpu = await GpuKVCache.fromCpu(cpu, env.gpu, env.pipelines);
    // empty: sinks, window ring and staged slots (chunks of 16) as the CPU cache counts them; the
    // GPU cache also keeps each window slot's token in the staging format on the host, ready to
    // move when it leaves the window
    const copies = stagingFormat
      ? heads * 2 * window * wordsForLength(getFormat(stagingFormat), d) * 4
      : 0;
    assert.equal(gpu.memory().bytes, cpu.memory().bytes + copies, stagingFormat);
    bytes.push(cpu.memory().bytes);
    gpu.destroy();
  }
  // the 16 tokens awaiting eviction at int8-g8-token instead of fp16
  const fp16 = 8, int8 = wordsForLength(getFormat("int8-g8-token"), d);
  assert.equal(bytes[0] - bytes[1], heads * 2 * 16 * (fp16 - int8) * 4);
});

Deno.test("GpuKVCache with an fp16 window rejects what fp16 cannot hold, changing nothing", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: 8, maxSeqLen: 4 };
  const cache = await createGpuKVCache({
    gpu: env.gpu,
    pipelines: env.pipelines,
    shape,
    policy: { keyFormat: "int8-g8-token", valueFormat: "int8-g8-token", windowFormat: "fp16" },
  });
  const k = new Float32Array(16).fill(1), v = new Float32Array(16).fill(2);
  const big = v.slice();
  big[12] = 70000; // second KV head: the first head's words must not be written either
  assert.throws(
    () => cache.append(0, 0, k, big),
    (e: Error & { index?: number }) => e.name === "InvalidValueError" && e.index === 12,
  );
  assert.equal(cache.length(0), 0);
  cache.append(0, 0, k, v);
  const out = new Float32Array(16);
  await cache.attend(0, new Float32Array(16).fill(0.1), out);
  assert.deepEqual([...out], new Array(16).fill(2), "the one position's values, both heads");
  // fp16 holds 2 exactly; 1/3 is rounded as the CPU cache rounds it
  cache.append(0, 1, k, v.map(() => 1 / 3));
  await cache.attend(0, new Float32Array(16).fill(0), out);
  // (an fp32 window would give 1.1666667: 8e-5 away)
  const want = (2 + 0.333251953125) / 2;
  assert.ok(
    Math.abs(out[0] - want) <= 1e-6,
    `${out[0]}: fp16(1/3) = 0.333251953125, equal weights`,
  );
  // memory() counts what is held for positions (the fp16 staging is half the fp32 one), not the
  // working buffers an attend() grows
  const wide = await createGpuKVCache({
    gpu: env.gpu,
    pipelines: env.pipelines,
    shape,
    policy: { keyFormat: "int8-g8-token", valueFormat: "int8-g8-token", windowFormat: "fp32" },
  });
  // sinks, then a ring of window + chunk (1) slots; the default 4 sinks and 64-token window hold
  // at most maxSeqLen (4) tokens each, as the CPU cache's do
  const slots = 4 + 4 + 1;
  // 2 KV heads × K and V × slots × 8 elements × 2 bytes saved
  assert.equal(wide.memory().bytes - cache.memory().bytes, 2 * 2 * slots * 8 * 2);
  const held = cache.memory().bytes, working = cache.workingBytes;
  await cache.attend(0, new Float32Array(16).fill(1), out);
  assert.equal(cache.memory().bytes, held);
  assert.ok(working > 0 && cache.workingBytes >= working);
  wide.destroy();
  cache.destroy();
});

Deno.test("GpuKVCache gives the fixture model the CPU paged reference's perplexity within 1e-4", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const fx = await loadFixture();
  const shape = cacheShape(fx.model.config, 96);
  const sequences = [fx.sequences[0].slice(0, 96)];
  for (
    const policy of [
      {
        keyFormat: "int8-g16-channel",
        valueFormat: "int4-g8-token",
        pageTokens: 32,
        sinkTokens: 2,
        windowTokens: 8,
      },
      {
        keyFormat: "int4-g32-channel",
        valueFormat: "int4-g32-channel",
        pageTokens: 32,
        sinkTokens: 2,
        windowTokens: 8,
      },
    ]
  ) {
    const cache = await createGpuKVCache({ gpu: env.gpu, pipelines: env.pipelines, shape, policy });
    const got = await perplexity(fx.model, cache, sequences, { context: 96 });
    const want = await perplexity(fx.model, new CpuPagedReference(shape, policy), sequences, {
      context: 96,
    });
    const rel = Math.abs(got.perplexity - want.perplexity) / want.perplexity;
    assert.ok(cache.pagedLength(0) >= 64, "most positions are in pages");
    assert.ok(rel <= 1e-4, `${policy.keyFormat}: GPU ${got.perplexity} vs CPU ${want.perplexity}`);
    cache.destroy();
  }
});

Deno.test("PageSlots grows by copying the slots in use, zeroes new ones, and stops at maxSlots", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const dev = env.gpu.device, words = 24;
  const slots = new PageSlots(dev, words, 9, "test slots");
  assert.equal(slots.byteLength, 0, "nothing before the first slot");
  const want: number[] = [];
  const r = rng(5);
  for (let i = 0; i < 9; i++) {
    assert.equal(slots.take(), i);
    // fill the slot through the current buffer; later growth must carry it over
    const w = Uint32Array.from({ length: words - 4 }, () => Math.floor(r() * 2 ** 32));
    dev.queue.writeBuffer(slots.buffer, i * words * 4, w);
    want.push(...w, 0, 0, 0, 0);
  }
  assert.ok(slots.byteLength >= 9 * words * 4 && slots.byteLength <= 16 * words * 4);
  assert.throws(() => slots.take(), CapacityError);
  const rb = dev.createBuffer({
    size: 9 * words * 4,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const got = await readBack(env.gpu, slots.buffer, rb, 9 * words * 4);
  assert.deepEqual([...new Uint32Array(got)], want, "contents survive 4 → 8 → 9 slots");
  slots.clear();
  assert.equal(slots.take(), 0);
  const cleared = await readBack(env.gpu, slots.buffer, rb, words * 4);
  assert.deepEqual([...new Uint32Array(cleared)], new Array(words).fill(0));
  // a readback of a destroyed buffer fails by name and does not mark the device lost
  rb.destroy();
  await assert.rejects(() => readBack(env.gpu, slots.buffer, rb, words * 4), DeviceError);
  assert.equal(env.gpu.lost, false);
  slots.destroy();
  assert.equal(slots.byteLength, 0);
});

Deno.test("GpuKVCache attends on a hardware adapter whose workgroup memory cannot hold 16 heads of d 256", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const d = 256, shape = { nLayers: 1, nHeads: 16, nKvHeads: 1, headDim: d, maxSeqLen: 24 };
  // the workgroup kernel keeps 16 heads' scores and a reduction row: 4·(16·256 + 256) bytes
  const limit = env.gpu.device.limits.maxComputeWorkgroupStorageSize;
  assert.ok(
    4 * (16 * d + d) > limit,
    `the device allows ${limit} bytes: nothing to fall back from`,
  );
  // the same device reported as a hardware adapter (as an H100 is): the workgroup kernel's choice
  const gpu = new GpuDevice(env.gpu.device, { ...env.gpu.info, isFallbackAdapter: false });
  const policy = {
    keyFormat: "int8-g32-token",
    valueFormat: "int4-g32-token",
    pageTokens: 8,
    sinkTokens: 1,
    windowTokens: 4,
  };
  const cache = await createGpuKVCache({ gpu, pipelines: env.pipelines, shape, policy });
  const ref = new CpuPagedReference(shape, policy);
  const seed = 505, next = rng(seed);
  const got = new Float32Array(16 * d), want = new Float32Array(16 * d);
  for (let pos = 0; pos < 20; pos++) {
    const k = normals(d, next), v = normals(d, next);
    cache.append(0, pos, k, v);
    ref.append(0, pos, k, v);
    if (pos % 6 === 0 || pos === 19) {
      const q = normals(16 * d, next);
      await cache.attend(0, q, got);
      ref.attend(0, q, want);
      const error = relativeError(got, want);
      assert.ok(error <= 1e-5, `position ${pos}, seed ${seed}: relative error ${error}`);
    }
  }
  assert.ok(cache.pagedLength(0) > policy.pageTokens, "several pages attended");
  cache.destroy();
});

/**
 * The shared device behind a GpuDevice that records the buffers created through it and which of
 * them were destroyed (GPUBuffer reports neither).
 */
function trackingGpu(gpu: GpuDevice) {
  const created: GPUBuffer[] = [], destroyed = new Set<GPUBuffer>();
  const device = new Proxy(gpu.device, {
    get(target, prop) {
      if (prop === "createBuffer") {
        return (descriptor: GPUBufferDescriptor) => {
          const buffer = target.createBuffer(descriptor), free = buffer.destroy.bind(buffer);
          buffer.destroy = () => {
            destroyed.add(buffer);
            free();
          };
          created.push(buffer);
          return buffer;
        };
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  return { gpu: new GpuDevice(device, gpu.info), created, destroyed };
}

Deno.test("createGpuKVCache() and fromCpu() destroy the buffers they made when they fail", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 16 };
  const policy = {
    keyFormat: "int8-g8-token",
    valueFormat: "int8-g8-token",
    pageTokens: 4,
    sinkTokens: 1,
    windowTokens: 2,
  };
  // kernels that fail to compile (as on a device lost meanwhile): the cache is never returned
  const failing = trackingGpu(env.gpu);
  const broken = {
    get: () => Promise.reject(new DeviceError("compilation failed")),
  } as unknown as PipelineCache;
  await assert.rejects(
    () => createGpuKVCache({ gpu: failing.gpu, pipelines: broken, shape, policy }),
    /compilation failed/,
  );
  assert.ok(failing.created.length >= 5, `${failing.created.length} buffers created`);
  assert.deepEqual(failing.created.filter((b) => !failing.destroyed.has(b)), [], "none left");
  // a CPU cache whose pages exceed the GPU cache's capacity (5 full pages; 16 positions fit 4)
  const cpu = new MixedPrecisionKVCache(
    shape,
    uniformPolicy({
      keyFormat: policy.keyFormat,
      valueFormat: policy.valueFormat,
      pageTokens: policy.pageTokens,
      sinkTokens: policy.sinkTokens,
      recentWindow: 2,
      windowFormat: "fp32",
    }),
  );
  const next = rng(576);
  for (let pos = 0; pos < 7; pos++) cpu.append(0, pos, normals(8, next), normals(8, next));
  const seg = cpu.segments(0, 0);
  for (let i = 0; i < 4; i++) seg.pools[0].newPage().n = 4;
  cpu.restoreSegments(0, 0, seg);
  const copying = trackingGpu(env.gpu);
  await assert.rejects(
    () => GpuKVCache.fromCpu(cpu, copying.gpu, new PipelineCache(copying.gpu)),
    CapacityError,
  );
  assert.ok(copying.created.length >= 6, "a page buffer was made");
  assert.deepEqual(copying.created.filter((b) => !copying.destroyed.has(b)), [], "none left");
  assert.equal(env.gpu.lost, false);
});

Deno.test("GPU entry points refuse what is not a GpuDevice, another device's pipelines, a format name and a Float64Array", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 8, maxSeqLen: 64 };
  const policy: GpuUniformPolicy = {
    keyFormat: "fp16",
    valueFormat: "fp16",
    pageTokens: 8,
    windowTokens: 2,
    sinkTokens: 0,
  };
  const fp16 = getFormat("fp16"), x = normals(8, rng(91));
  // another device's pipelines had bound in silence: every output 0 behind validation errors
  const other = await requestGpu();
  try {
    await assert.rejects(
      () => createGpuKVCache({ gpu: other, pipelines: env.pipelines, shape, policy }),
      (e: Error) => e instanceof InvalidValueError && /compiled for another device/.test(e.message),
    );
    await assert.rejects(
      () => gpuEncode(other, env.pipelines, fp16, x),
      (e: Error) => e instanceof InvalidValueError && /another device/.test(e.message),
    );
  } finally {
    other.destroy();
  }
  const cpu = new MixedPrecisionKVCache(
    shape,
    uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" }),
  );
  const notDevices: [unknown, RegExp][] = [
    [null, /is null, expected a GpuDevice from requestGpu\(\)/],
    [{}, /is Object, expected a GpuDevice/],
    [
      env.gpu.device,
      /is GPUDevice, expected a GpuDevice .*\(a GPUDevice is wrapped by requestGpu\)/,
    ],
  ];
  for (const [gpu, message] of notDevices) {
    const refused = (e: Error) => e instanceof InvalidValueError && message.test(e.message);
    await assert.rejects(() => createGpuKVCache({ gpu: gpu as never, shape, policy }), refused);
    await assert.rejects(() => GpuKVCache.fromCpu(cpu, gpu as never), refused);
    await assert.rejects(
      () => gpuDecode(gpu as never, env.pipelines, fp16, new Uint32Array(4), 8),
      refused,
    );
    // whichever backend the call would end on
    await assert.rejects(
      () =>
        createKVCache(shape, uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" }), {
          gpu: gpu as never,
        }),
      refused,
    );
  }
  await assert.rejects(
    () => createGpuKVCache({ gpu: env.gpu, pipelines: {} as never, shape, policy }),
    (e: Error) =>
      e instanceof InvalidValueError &&
      /pipelines is Object, expected a PipelineCache/.test(e.message),
  );
  // a Float64Array's bytes had been read as f32 words; a name read every field as undefined
  await assert.rejects(
    () => gpuEncode(env.gpu, env.pipelines, fp16, Float64Array.from(x) as never),
    (e: Error) => e instanceof ShapeError && /Float32Array, got Float64Array/.test(e.message),
  );
  // a spec equal to the registry's field by field (another copy of kvprec) serves
  assert.deepEqual(
    await gpuEncode(env.gpu, env.pipelines, { ...fp16 }, x),
    await gpuEncode(env.gpu, env.pipelines, fp16, x),
  );
  await assert.rejects(
    () => gpuEncode(env.gpu, env.pipelines, { ...fp16, group: 16 }, x),
    (e: Error) =>
      e instanceof InvalidValueError && /format is Object, expected a FormatSpec/.test(e.message),
  );
  await assert.rejects(
    () => gpuEncode(env.gpu, env.pipelines, "fp16" as never, x),
    (e: Error) =>
      e instanceof InvalidValueError && /format is "fp16", expected a FormatSpec/.test(e.message),
  );
  await assert.rejects(
    () => gpuDecode(env.gpu, env.pipelines, fp16, [1, 2, 3, 4] as never, 8),
    (e: Error) =>
      e instanceof ShapeError && /words must be a Uint32Array, got Array/.test(e.message),
  );
});
