import assert from "node:assert/strict";
import {
  attendHead,
  BudgetError,
  cacheShape,
  CapacityError,
  Float32KVCache,
  FormatError,
  InvalidValueError,
  MixedPrecisionKVCache,
  perplexity,
  planPolicy,
  policyFromJSON,
  type PolicyJSON,
  saveCache,
  ShapeError,
  tieredPolicy,
  tsCodec,
  uniformPolicy,
  wasmCodec,
} from "../../../mod.ts";
import { loadFixture, normals, rng, throwsLike } from "../../_fixtures.ts";

const FORMATS = [
  "fp32",
  "fp16",
  "bf16",
  "fp8e4m3",
  "int8-g8-token",
  "int4-g8-token",
  "int8s-g8-token",
  "int4-g32-channel",
  "int2-g16-channel",
  "int3-g64-channel",
  "fp8e5m2-g8-channel",
];

/** Reference: every stored token decoded on its own, then plain softmax attention. */
function referenceAttend(
  keys: Float32Array[],
  values: Float32Array[],
  q: Float32Array,
  d: number,
): Float32Array {
  const n = keys.length;
  const K = new Float32Array(n * d), V = new Float32Array(n * d);
  keys.forEach((k, t) => K.set(k, t * d));
  values.forEach((v, t) => V.set(v, t * d));
  const out = new Float32Array(d);
  attendHead(q, K, V, n, d, new Float32Array(n), out);
  return out;
}

Deno.test("MixedPrecisionKVCache with fp32 pages equals Float32KVCache across pages and GQA", () => {
  const next = rng(11);
  const shape = { nLayers: 2, nHeads: 6, nKvHeads: 2, headDim: 8, maxSeqLen: 100 };
  const ref = new Float32KVCache(shape);
  const cache = new MixedPrecisionKVCache(
    shape,
    uniformPolicy({
      keyFormat: "fp32",
      valueFormat: "fp32",
      sinkTokens: 2,
      recentWindow: 5,
      pageTokens: 16,
    }), // the window format defaults to fp32 with fp32 pages
  );
  const a = new Float32Array(48), b = new Float32Array(48);
  for (let p = 0; p < 70; p++) {
    const k = normals(16, next), v = normals(16, next);
    for (const l of [0, 1]) {
      ref.append(l, p, k, v);
      cache.append(l, p, k, v);
      const q = normals(48, next);
      ref.attend(l, q, a);
      cache.attend(l, q, b);
      for (let i = 0; i < 48; i++) {
        assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 * (1 + Math.abs(a[i])), `p ${p} i ${i}`);
      }
    }
  }
});

Deno.test("MixedPrecisionKVCache.attend() equals attention over individually decoded tokens, every format", () => {
  const next = rng(12);
  const d = 8;
  const cases = FORMATS.flatMap((format) =>
    [undefined, "int8-g8-token"].map((staging) => ({ format, staging }))
  );
  for (const { format, staging } of cases) {
    const codec = tsCodec(format);
    for (const T of [1, 7, 33, 100]) {
      const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: d, maxSeqLen: 128 };
      const cache = new MixedPrecisionKVCache(
        shape,
        uniformPolicy({
          keyFormat: format,
          valueFormat: format,
          recentWindow: 3,
          pageTokens: 64,
          windowFormat: "fp16",
          ...(staging ? { stagingFormat: staging } : {}),
        }),
      );
      const ks: Float32Array[] = [], vs: Float32Array[] = [];
      for (let p = 0; p < T; p++) {
        const k = normals(d, next), v = normals(d, next);
        cache.append(0, p, k, v);
        ks.push(k);
        vs.push(v);
      }
      // what the cache should hold: window tokens at fp16, the rest decoded from `format`
      const seg = cache.segments(0, 0);
      // tokens pass through the fp16 window before they are evicted to a page
      const via = (name: string) => (x: Float32Array) => {
        const y = new Float32Array(d);
        tsCodec(name).decode(tsCodec(name).encode(x), y);
        return y;
      };
      const viaWindow = via("fp16");
      // with a staging format, tokens past the newest 3 of the ring pass through it too, on
      // their way to a page or while they wait for one
      const recentFrom = T - Math.min(3, seg.windowN);
      const viaRing = (x: Float32Array, p: number) =>
        staging && p < recentFrom ? via(staging)(viaWindow(x)) : viaWindow(x);
      const stored = (raw: Float32Array[], p: number) => {
        const x = raw.map(viaRing);
        // the ring holds the window and the tokens waiting to be evicted as one group
        if (p >= T - seg.windowN) return x[p];
        if (codec.spec.axis === "channel") {
          // channel groups: decode the group of G tokens containing p along each channel
          const G = codec.spec.group, g0 = Math.floor(p / G) * G, out = new Float32Array(d);
          for (let ch = 0; ch < d; ch++) {
            const col = Float32Array.from({ length: G }, (_, t) => x[g0 + t][ch]);
            const dec = new Float32Array(G);
            codec.decode(codec.encode(col), dec);
            out[ch] = dec[p - g0];
          }
          return out;
        }
        const dec = new Float32Array(d);
        codec.decode(codec.encode(x[p]), dec);
        return dec;
      };
      const K = ks.map((_, p) => stored(ks, p)), V = vs.map((_, p) => stored(vs, p));
      const q = normals(2 * d, next);
      const out = new Float32Array(2 * d);
      cache.attend(0, q, out);
      for (let h = 0; h < 2; h++) {
        const want = referenceAttend(K, V, q.subarray(h * d, (h + 1) * d), d);
        for (let i = 0; i < d; i++) {
          assert.ok(
            Math.abs(out[h * d + i] - want[i]) <= 1e-6 * (1 + Math.abs(want[i])),
            `${format} (staging ${staging}) T=${T}: ${out[h * d + i]} vs ${want[i]}`,
          );
        }
      }
    }
  }
});

Deno.test("fp32 pages get an fp32 window by default: no token is rounded to fp16 on its way", () => {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 8 };
  const k = normals(8, rng(41)), v = normals(8, rng(42));
  const tiers = [[[
    { minScore: 1, keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" },
    { minScore: 0, keyFormat: "fp32", valueFormat: "fp32" }, // no window: every token's tier
  ]]];
  const policies = [
    uniformPolicy({ keyFormat: "fp32", valueFormat: "fp32" }),
    uniformPolicy({ keyFormat: "int4-g8-token", valueFormat: "fp32", pageTokens: 1 }),
    tieredPolicy({ label: "fp32 tier", tiers }),
  ];
  for (const policy of policies) {
    assert.equal(policy.windowFormat, "fp32", policy.label);
    // saved resolved, so a cache file's layout never follows a later default
    assert.equal(policy.options.windowFormat, "fp32", policy.label);
    for (const backend of ["ts", "wasm"] as const) {
      const cache = new MixedPrecisionKVCache(shape, policy, { backend });
      cache.append(0, 0, k, v);
      // one token: attention returns its value as stored, here v itself
      const out = new Float32Array(16);
      cache.attend(0, normals(16, rng(43)), out);
      assert.deepEqual(out, Float32Array.from([...v, ...v]), `${policy.label} ${backend}`);
    }
  }
  // pages no more precise than fp16 keep the fp16 window
  const int4 = uniformPolicy({ keyFormat: "int4-g8-token", valueFormat: "fp16" });
  assert.equal(int4.windowFormat, "fp16");
  assert.equal(
    uniformPolicy({ keyFormat: "fp32", valueFormat: "fp32", windowFormat: "fp16" })
      .windowFormat,
    "fp16",
  );
});

Deno.test("restoreLengths() refuses lengths its segments do not hold, changing nothing", () => {
  const shape = { nLayers: 2, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 40 };
  const cache = new MixedPrecisionKVCache(
    shape,
    uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" }),
  );
  const next = rng(71);
  for (let p = 0; p < 5; p++) cache.append(0, p, normals(8, next), normals(8, next));
  for (const bad of [[NaN, 0], [5, 40], [5], [4, 0]]) {
    assert.throws(() => cache.restoreLengths(bad), ShapeError, JSON.stringify(bad));
    assert.deepEqual([cache.length(0), cache.length(1)], [5, 0]);
  }
  cache.restoreLengths([5, 0]);
  cache.append(0, 5, normals(8, next), normals(8, next));
  assert.equal(cache.length(0), 6);
});

Deno.test("with no recent window a staged token passes through the window format first", () => {
  // as a token leaving a recent window does, and as the verifier models it: int4 then fp16
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 8, maxSeqLen: 16 };
  // keys in channel groups of 8, so a token waits in staging for seven more
  const policy = uniformPolicy({
    keyFormat: "int4-g8-channel",
    valueFormat: "fp32",
    pageTokens: 8,
    windowFormat: "int4-g8-token",
    stagingFormat: "fp16",
  });
  const v = normals(8, rng(31)), k = normals(8, rng(32));
  const want = new Float32Array(8), int4 = new Float32Array(8);
  tsCodec("int4-g8-token").decode(tsCodec("int4-g8-token").encode(v), int4);
  tsCodec("fp16").decode(tsCodec("fp16").encode(int4), want);
  for (const backend of ["ts", "wasm"] as const) {
    const cache = new MixedPrecisionKVCache(shape, policy, { backend });
    cache.append(0, 0, k, v);
    assert.equal(cache.segments(0, 0).stageN, 1);
    // one token: attention returns its value as stored
    const out = new Float32Array(8);
    cache.attend(0, normals(8, rng(33)), out);
    assert.deepEqual(out, want, backend);
  }
});

Deno.test("MixedPrecisionKVCache.memory() counts exactly the bytes in its buffers", () => {
  const next = rng(13);
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: 8, maxSeqLen: 200 };
  const options = {
    keyFormat: "int4-g32-channel",
    valueFormat: "int4-g8-token",
    sinkTokens: 4,
    recentWindow: 8,
    pageTokens: 64,
    windowFormat: "fp16",
  };
  const cache = new MixedPrecisionKVCache(shape, uniformPolicy(options));
  for (let p = 0; p < 150; p++) cache.append(0, p, normals(16, next), normals(16, next));
  // 150 = 4 sinks + 146 through the ring of 8 + 32 slots: groups of 32 leave whenever the ring
  // fills, so 4 groups (128 tokens = 2 full pages of 64) are paged and 18 tokens wait in the ring
  const sinks = 2 * 4 * 16; // K and V, 4 tokens × 8 fp16
  const ring = 2 * 40 * 16; // 40 slots of K and V at fp16 (a uniform policy keeps no scores)
  const kPage = 8 * (64 / 32) * 5 * 4; // 8 channels × 2 groups × 5 words
  const vPage = 64 * tsCodec("int4-g8-token").wordsFor(8) * 4;
  const expected = 2 * (sinks + ring + 2 * (kPage + vPage + 16));
  const mem = cache.memory();
  assert.equal(mem.bytes, expected);
  assert.equal(mem.elements, 150 * 16 * 2);
  // codes and group headers: int4-g32-channel keys 4 code words and 1 header per 32 elements,
  // int4-g8-token values 1 and 1 per 8
  assert.deepEqual(cache.memoryBreakdown(), {
    codes: 2 * 2 * (8 * 2 * 4 * 4 + 64 * 4),
    scales: 2 * 2 * (8 * 2 * 4 + 64 * 4),
    padding: 0,
    pageTables: 2 * 2 * 16,
    sinks: 2 * sinks,
    ring: 2 * ring,
    windowScores: 0,
  });
  const seg = cache.segments(0, 1);
  assert.equal(seg.pools[0].pages.length, 2);
  assert.equal(seg.windowN, 18);
  // WASM pages hold the same words, in 16-byte aligned blocks: the parts still sum to memory()
  // 5 tokens of 12 fp16 elements: 120 bytes in a block of 128
  const odd = uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16", pageTokens: 5 });
  for (const backend of ["ts", "wasm"] as const) {
    const c = new MixedPrecisionKVCache({ ...shape, headDim: 12 }, odd, { backend });
    for (let p = 0; p < 150; p++) c.append(0, p, normals(24, next), normals(24, next));
    const parts = Object.values(c.memoryBreakdown()).reduce((a, x) => a + x, 0);
    assert.equal(parts, c.memory().bytes, backend);
    assert.equal(c.memoryBreakdown().padding > 0, backend === "wasm", `${backend} padding`);
  }
  // a choice of formats also keeps one f32 score per eviction chunk the ring can hold: ⌈40 / 32⌉
  const tiers = [
    { minScore: 0.5, keyFormat: "int8-g32-channel", valueFormat: "int8-g8-token" },
    { minScore: 0, keyFormat: "int4-g32-channel", valueFormat: "int4-g8-token" },
  ];
  const tiered = new MixedPrecisionKVCache(
    shape,
    tieredPolicy({
      label: "t",
      tiers: [[tiers, tiers]],
      sinkTokens: 4,
      recentWindow: 8,
      pageTokens: 64,
      windowFormat: "fp16",
    }),
  );
  tiered.append(0, 0, normals(16, next), normals(16, next));
  assert.equal(tiered.memoryBreakdown().windowScores, 2 * 2 * 4);
  assert.equal(tiered.memory().bytes, 2 * (sinks + ring) + 2 * 2 * 4);
  // tokens staged apart: the window ring keeps its 8 recent slots at fp16 and 32 staging slots
  // hold int8-g8-token (2 code words + 1 header word per token), whatever they hold now
  const staged = new MixedPrecisionKVCache(
    shape,
    uniformPolicy({ ...options, stagingFormat: "int8-g8-token" }),
  );
  for (let p = 0; p < 150; p++) staged.append(0, p, normals(16, next), normals(16, next));
  const stagedRing = 2 * (8 * 16 + 32 * 12); // K and V
  assert.equal(staged.memoryBreakdown().ring, 2 * stagedRing);
  assert.equal(staged.memory().bytes, expected - 2 * ring + 2 * stagedRing);
  const s1 = staged.segments(0, 1);
  assert.equal(s1.windowN, 18);
  assert.equal(s1.stageK.length, 32 * 3);
  // per head 4 sinks and 8 recent at fp16, the 10 older ring tokens staged at int8, 128 paged
  assert.deepEqual(
    staged.tokensByFormat(),
    new Map([
      ["fp16|fp16", 2 * 12],
      ["int8-g8-token|int8-g8-token", 2 * 10],
      ["int4-g32-channel|int4-g8-token", 2 * 128],
    ]),
  );
});

Deno.test("an append whose eviction cannot be placed fails before any KV head changes", () => {
  // two KV heads evict together at position 2 (a ring of 2 + 1 slots); the second one's placement fails
  const shape = { nLayers: 1, nHeads: 4, nKvHeads: 2, headDim: 128, maxSeqLen: 64 };
  const pair = { keyFormat: "fp32", valueFormat: "fp32" };
  const base = uniformPolicy({ ...pair, recentWindow: 2, pageTokens: 32 });
  // a policy that names a pair it never declared, for KV head 1 only
  const stray = {
    ...base,
    formatFor: (_l: number, h: number) => (h === 1 ? { ...pair, valueFormat: "fp16" } : pair),
  };
  const next = rng(11);
  const kv = () => [normals(256, next), normals(256, next)] as const;
  const tokens = Array.from({ length: 3 }, kv);
  for (const backend of ["ts", "wasm"] as const) {
    const cache = new MixedPrecisionKVCache(shape, stray, { backend });
    for (let p = 0; p < 2; p++) cache.append(0, p, ...tokens[p]);
    const before = saveCache(cache);
    assert.throws(
      () => cache.append(0, 2, ...tokens[2]),
      (e: Error) => e instanceof FormatError && /fp32\|fp16 for layer 0 KV head 1/.test(e.message),
    );
    assert.deepEqual(saveCache(cache), before, `${backend}: nothing changed`);
    assert.equal(cache.length(0), 2);
  }
  // memory that cannot grow (WASM): the first head's page is given back, the cache is as it was,
  // and the same append succeeds once memory can grow again
  const cache = new MixedPrecisionKVCache(shape, base, { backend: "wasm" });
  const reference = new MixedPrecisionKVCache(shape, base);
  const grow = WebAssembly.Memory.prototype.grow;
  let p = 0, failed = false;
  try {
    // fill until an eviction needs memory the module does not have yet
    WebAssembly.Memory.prototype.grow = function () {
      throw new RangeError("test: no more memory");
    };
    for (; p < shape.maxSeqLen && !failed; p++) {
      const [k, v] = kv(), before = saveCache(cache), bytes = cache.memory().bytes;
      try {
        cache.append(0, p, k, v);
      } catch (e) {
        assert.ok(e instanceof CapacityError && /no memory for a new page/.test(e.message), `${e}`);
        assert.deepEqual(saveCache(cache), before, "nothing changed");
        assert.equal(cache.memory().bytes, bytes);
        assert.equal(cache.length(0), p);
        failed = true;
        WebAssembly.Memory.prototype.grow = grow;
        cache.append(0, p, k, v);
      }
      reference.append(0, p, k, v);
    }
  } finally {
    WebAssembly.Memory.prototype.grow = grow;
  }
  assert.ok(failed, "memory never needed to grow");
  const q = normals(4 * 128, next), a = new Float32Array(q.length), b = new Float32Array(q.length);
  cache.attend(0, q, a);
  reference.attend(0, q, b);
  for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-6, `out[${i}]`);
});

Deno.test("a WASM attend whose scratch cannot grow fails with CapacityError, touching nothing", () => {
  // 300 fp16 tokens in the window: the kernel's copy of them needs more memory than the module has
  const shape = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: 128, maxSeqLen: 300 };
  const policy = uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16", recentWindow: 300 });
  const cache = new MixedPrecisionKVCache(shape, policy, { backend: "wasm" });
  const reference = new MixedPrecisionKVCache(shape, policy);
  const next = rng(9);
  for (let p = 0; p < 300; p++) {
    const k = normals(128, next), v = normals(128, next);
    cache.append(0, p, k, v);
    reference.append(0, p, k, v);
  }
  const before = saveCache(cache);
  const q = normals(512, next), out = new Float32Array(512).fill(7);
  const grow = WebAssembly.Memory.prototype.grow;
  WebAssembly.Memory.prototype.grow = function () {
    throw new RangeError("test: no more memory");
  };
  try {
    assert.throws(
      () => cache.attend(0, q, out),
      (e: Error) => e instanceof CapacityError && /attention scratch/.test(e.message),
    );
  } finally {
    WebAssembly.Memory.prototype.grow = grow;
  }
  assert.ok(out.every((x) => x === 7), "out untouched");
  assert.deepEqual(saveCache(cache), before);
  const want = new Float32Array(512);
  cache.attend(0, q, out);
  reference.attend(0, q, want);
  for (let i = 0; i < 512; i++) {
    assert.ok(Math.abs(out[i] - want[i]) <= 1e-6 * Math.max(1, Math.abs(want[i])), `out[${i}]`);
  }
});

Deno.test("MixedPrecisionKVCache rejects bad input and is unchanged after a failed call", () => {
  // two KV heads (a fault in the second one is caught before the first one changes), both backends
  const shape = { nLayers: 1, nHeads: 4, nKvHeads: 2, headDim: 8, maxSeqLen: 4 };
  for (const backend of ["ts", "wasm"] as const) {
    const cache = new MixedPrecisionKVCache(
      shape,
      uniformPolicy({ keyFormat: "int4-g8-token", valueFormat: "int4-g8-token", recentWindow: 1 }),
      { backend },
    );
    const good = normals(16, rng(1));
    cache.append(0, 0, good, good);
    cache.append(0, 1, good, good);
    const before = saveCache(cache);
    const bad = good.slice();
    bad[5] = NaN;
    assert.throws(
      () => cache.append(0, 2, good, bad),
      (e: Error) =>
        e instanceof InvalidValueError && e.index === 5 && /v\[5\] is NaN/.test(e.message),
    );
    bad[5] = 1e6;
    assert.throws(() => cache.append(0, 2, bad, good), /k\[5\] is 1000000/);
    const second = good.slice();
    second[13] = -Infinity; // KV head 1, element 5
    assert.throws(() => cache.append(0, 2, good, second), /v\[13\] is -Infinity/);
    assert.throws(() => cache.append(0, 3, good, good), /out of order: expected 2/);
    assert.throws(() => cache.append(0, 1, good, good), /out of order: expected 2/);
    assert.throws(() => cache.append(0, 2, good.subarray(1), good), ShapeError);
    assert.throws(() => cache.append(0, 2, good, good.subarray(0, 8)), /v has length 8/);
    assert.deepEqual(saveCache(cache), before, `${backend}: failed appends change nothing`);
    const q = normals(32, rng(2)), out = new Float32Array(32).fill(7);
    q[11] = Infinity;
    assert.throws(
      () => cache.attend(0, q, out),
      (e: Error) =>
        e instanceof InvalidValueError && e.index === 11 && /q\[11\] is Infinity/.test(e.message),
    );
    assert.ok(out.every((x) => x === 7), "a rejected query writes nothing");
    assert.deepEqual(saveCache(cache), before, "nor changes the cache (window scores included)");
    cache.append(0, 2, good, good);
    cache.append(0, 3, good, good);
    const full = saveCache(cache);
    assert.throws(() => cache.append(0, 4, good, good), CapacityError);
    assert.deepEqual(saveCache(cache), full, `${backend}: an append past capacity changes nothing`);
  }
  assert.throws(
    () =>
      new MixedPrecisionKVCache(
        shape,
        uniformPolicy({ keyFormat: "int4-g32-token", valueFormat: "fp16" }),
      ),
    /head_dim 8 is not a multiple of group 32/,
  );
  assert.throws(
    () =>
      new MixedPrecisionKVCache(
        shape,
        uniformPolicy({ keyFormat: "int4-g32-heads", valueFormat: "fp16" }),
      ),
    /groups across KV heads/,
  );
});

Deno.test("an append beyond what the policy's formats hold is refused before any head changes", () => {
  // fp8e4m3 pages hold ±448 and an fp8e5m2 window ±57344; keys turned back before RoPE can grow by
  // √2, so int channel-axis keys then hold 65504/(√2·1.01). Each refused value sits in KV head 1,
  // so a check made while encoding (the pages' own) would have changed head 0 already.
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: 8, maxSeqLen: 40 };
  const cases = [
    { policy: { keyFormat: "fp8e4m3", valueFormat: "fp16", recentWindow: 0 }, k: 449, v: 0 },
    { policy: { keyFormat: "fp16", valueFormat: "fp8e4m3", recentWindow: 0 }, k: 0, v: -449 },
    {
      policy: { keyFormat: "fp16", valueFormat: "fp16", windowFormat: "fp8e5m2" },
      k: 0,
      v: 60000,
    },
    {
      policy: { keyFormat: "int4-g16-channel", valueFormat: "fp16", ropeBase: 10000 },
      k: -46000,
      v: 0,
    },
    // tokens waiting for eviction in fp8e4m3: the window holds 449, their staging does not
    {
      policy: { keyFormat: "int4-g16-channel", valueFormat: "fp16", stagingFormat: "fp8e4m3" },
      k: 0,
      v: 449,
    },
  ];
  for (const backend of ["ts", "wasm"] as const) {
    for (const { policy, k, v } of cases) {
      const cache = new MixedPrecisionKVCache(
        shape,
        uniformPolicy({ recentWindow: 2, pageTokens: 16, ...policy }),
        { backend },
      );
      const good = () => normals(16, rng(cache.length(0) + 1));
      for (let pos = 0; pos < 17; pos++) cache.append(0, pos, good(), good());
      const before = saveCache(cache);
      const [bk, bv] = [good(), good()];
      if (k) bk[9] = k;
      if (v) bv[9] = v;
      assert.throws(
        () => cache.append(0, 17, bk, bv),
        (e: Error) =>
          e instanceof InvalidValueError && e.index === 9 &&
          new RegExp(`${k ? "k" : "v"}\\[9\\] is ${k || v}, .*\\(.*format`).test(e.message),
        `${backend} ${JSON.stringify(policy)}`,
      );
      assert.deepEqual(saveCache(cache), before, `${backend}: the refused append changes nothing`);
      // values within the limit still go in, so the limit is not stricter than it says
      const fit = Math.sign(k || v) * 440;
      if (k) bk[9] = fit;
      else bv[9] = fit;
      cache.append(0, 17, bk, bv);
      assert.equal(cache.length(0), 18);
    }
  }
});

Deno.test("attend refuses a query past ±2^64 and stays finite up to it on every backend", () => {
  // f32 scores of |q| near 1e31 once overflowed to Inf in the WASM kernels, softmax then NaN
  const shape = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: 32, maxSeqLen: 40 };
  const next = rng(91);
  for (const keyFormat of ["fp16", "int4-g32-token", "int4-g32-channel"]) {
    const caches = (["ts", "wasm"] as const).map((backend) =>
      new MixedPrecisionKVCache(
        shape,
        uniformPolicy({ keyFormat, valueFormat: "int4-g32-token", recentWindow: 2 }),
        { backend },
      )
    );
    for (let p = 0; p < 40; p++) {
      const k = normals(32, next).map((x) => x * 60000 / 4), v = normals(32, next);
      for (const c of caches) c.append(0, p, k, v);
    }
    const q = normals(128, next).map((x) => Math.sign(x) * 2 ** 64);
    const outs = caches.map((c) => {
      const out = new Float32Array(128);
      c.attend(0, q, out);
      return out;
    });
    assert.ok(outs.every((o) => o.every(Number.isFinite)), `${keyFormat}: finite at ±2^64`);
    q[70] = -(2 ** 65);
    for (const c of caches) {
      const out = new Float32Array(128).fill(3);
      assert.throws(
        () => c.attend(0, q, out),
        (e: Error) =>
          e instanceof InvalidValueError && e.index === 70 && /q\[70\] is -3689/.test(e.message),
      );
      assert.ok(out.every((x) => x === 3), "a refused query writes nothing");
    }
  }
});

Deno.test("attend on a layer with no positions is a ShapeError in every CPU cache, out untouched", () => {
  const shape = { nLayers: 2, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 4 };
  const k = normals(8, rng(3)), q = normals(16, rng(4));
  const caches = [
    new Float32KVCache(shape),
    new MixedPrecisionKVCache(shape, uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" })),
    new MixedPrecisionKVCache(
      shape,
      uniformPolicy({ keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" }),
      { backend: "wasm", codecFor: wasmCodec },
    ),
  ];
  for (const cache of caches) {
    cache.append(0, 0, k, k);
    const out = new Float32Array(16).fill(7);
    assert.throws(
      () => cache.attend(1, q, out),
      (e: Error) => e instanceof ShapeError && /layer 1 holds no positions/.test(e.message),
      cache.constructor.name,
    );
    assert.ok(out.every((x) => x === 7), "nothing written");
    cache.attend(0, q, out); // the layer with a position still attends
    assert.ok(out.every(Number.isFinite));
  }
});

Deno.test("tiered policies: a non-finite minScore or tiers that do not match the shape are refused", () => {
  const fp16 = { keyFormat: "fp16", valueFormat: "fp16" };
  for (const bad of [NaN, Infinity, -Infinity]) {
    assert.throws(
      () =>
        tieredPolicy({
          label: "bad",
          tiers: [[[{ minScore: bad, ...fp16 }, { minScore: 0, ...fp16 }]]],
        }),
      (e: Error) =>
        e instanceof InvalidValueError &&
        new RegExp(`layer 0 head 0 tier 0 has minScore ${bad}`).test(e.message),
    );
  }
  // malformed tables from a caller, not only from JSON, are named (they were TypeErrors)
  const malformed: [unknown, RegExp][] = [
    [undefined, /tiers must be an array of layers/],
    ["x", /tiers must be an array of layers/],
    [[null], /tiers\[0\] must be an array of KV heads/],
    [[[null]], /tiers\[0\]\[0\] must be an array of tiers/],
    [[[[null]]], /tiers\[0\]\[0\]\[0\] is null/],
    [[[[{ minScore: 0, keyFormat: "fp16" }]]], /tiers\[0\]\[0\]\[0\]\.valueFormat is undefined/],
    // a misspelt field was dropped: "minscore" left minScore undefined (NaN, refused), but
    // "keyformat" beside keyFormat, say, passed without a word
    [
      [[[{ minScore: 0, ...fp16, keyformat: "int2-g8-token" }]]],
      /tiers\[0\]\[0\]\[0\] have unknown field "keyformat"; the fields are minScore, keyFormat, valueFormat/,
    ],
  ];
  for (const [tiers, message] of malformed) {
    assert.throws(
      () => tieredPolicy({ label: "bad", tiers } as never),
      (e: Error) => e instanceof InvalidValueError && message.test(e.message),
      String(message),
    );
  }
  assert.throws(() => policyFromJSON(null as never), /policy is null, expected an object/);
  assert.throws(() => planPolicy({} as never), /precision plan: version is undefined/);
  const policy = tieredPolicy({ label: "one layer", tiers: [[[{ minScore: 0, ...fp16 }]]] });
  const shape = { nLayers: 2, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 4 };
  assert.throws(
    () => new MixedPrecisionKVCache(shape, policy),
    (e: Error) => e instanceof ShapeError && /tiers for 1 layers, the cache has 2/.test(e.message),
  );
  const twoHeads = tieredPolicy({
    label: "two heads",
    tiers: [[[{ minScore: 0, ...fp16 }], [{ minScore: 0, ...fp16 }]], [[{ minScore: 0, ...fp16 }]]],
  });
  assert.throws(
    () => new MixedPrecisionKVCache(shape, twoHeads),
    /layer 0 has tiers for 2 KV heads, the cache has 1/,
  );
});

Deno.test("caches refuse K, V, q and out that are not Float32Arrays, changing nothing", () => {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 4 };
  const good = normals(8, rng(5));
  for (
    const cache of [
      new Float32KVCache(shape),
      new MixedPrecisionKVCache(shape, uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" })),
    ]
  ) {
    const plain = Array.from(good) as unknown as Float32Array;
    const wide = Float64Array.from(good) as unknown as Float32Array;
    assert.throws(() => cache.append(0, 0, plain, good), /k must be a Float32Array, got Array/);
    assert.throws(() => cache.append(0, 0, good, wide), /v must be a Float32Array, got Float64/);
    assert.equal(cache.length(0), 0);
    cache.append(0, 0, good, good);
    const q = normals(16, rng(6)), out = new Float32Array(16);
    assert.throws(
      () => cache.attend(0, Array.from(q) as unknown as Float32Array, out),
      (e: Error) =>
        e instanceof ShapeError && /q must be a Float32Array, got Array/.test(e.message),
    );
    assert.throws(() => cache.attend(0, q, [] as unknown as Float32Array), /out must be a Float32/);
  }
});

Deno.test("policyFromJSON() names what a malformed policy lacks", () => {
  const cases: [unknown, RegExp][] = [
    [{ kind: "tiered", label: "x" }, /tiers must be an array of layers/],
    [{ kind: "tiered", label: "x", tiers: [{}] }, /tiers\[0\] must be an array of KV heads/],
    [{ kind: "tiered", label: "x", tiers: [[{}]] }, /tiers\[0\]\[0\] must be an array of tiers/],
    [
      {
        kind: "tiered",
        label: "x",
        tiers: [[[{ minScore: 0, keyFormat: 4, valueFormat: "fp16" }]]],
      },
      /tiers\[0\]\[0\]\[0\].keyFormat is 4, expected a format name/,
    ],
    [{ kind: "uniform", keyFormat: "fp16" }, /valueFormat is undefined, expected a format name/],
  ];
  for (const [json, message] of cases) {
    assert.throws(
      () => policyFromJSON(json as PolicyJSON),
      (e: Error) => e instanceof InvalidValueError && message.test(e.message),
      JSON.stringify(json),
    );
  }
});

Deno.test("tieredPolicy sends tokens that drew attention in the window to the higher tier", () => {
  const d = 8;
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: d, maxSeqLen: 64 };
  const policy = tieredPolicy({
    label: "two tiers",
    recentWindow: 4,
    tiers: [[[
      { minScore: 0.5, keyFormat: "fp16", valueFormat: "fp16" },
      { minScore: 0, keyFormat: "int2-g8-token", valueFormat: "int2-g8-token" },
    ]]],
  });
  const cache = new MixedPrecisionKVCache(shape, policy);
  const hot = Float32Array.from({ length: d }, () => 3),
    cold = Float32Array.from({ length: d }, (_, i) => (i % 2 ? -3 : 3));
  const out = new Float32Array(d);
  for (let p = 0; p < 20; p++) {
    cache.append(0, p, p % 5 === 0 ? hot : cold, hot);
    cache.attend(0, hot, out); // the query matches `hot` keys
  }
  const counts = cache.tokensByFormat();
  assert.equal(counts.get("fp16|fp16"), 4 + 4, "window (4) + evicted hot tokens 0, 5, 10, 15");
  assert.equal(counts.get("int2-g8-token|int2-g8-token"), 12);
});

Deno.test("window scores: each eviction chunk sums its tokens' attention while they were recent", () => {
  // an independent reference: exact softmax weights (keys stay fp32 in every tier), credited to
  // the newest recentWindow tokens of the ring, summed per chunk of Q = 8 (the channel group)
  const d = 8, W = 3, Q = 8, S = 2;
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: d, maxSeqLen: 80 };
  const tiers = [
    { minScore: 0.06, keyFormat: "fp32", valueFormat: "fp16" },
    { minScore: 0, keyFormat: "fp32", valueFormat: "int8-g8-channel" },
  ];
  const next = rng(23);
  for (const backend of ["ts", "wasm"] as const) {
    const policy = tieredPolicy({
      label: "two tiers",
      sinkTokens: S,
      recentWindow: W,
      windowFormat: "fp32",
      pageTokens: 16,
      tiers: [[tiers]],
    });
    const cache = new MixedPrecisionKVCache(shape, policy, { backend, integerDot: false });
    assert.equal(cache.windowScores(0, 0).length, Math.ceil((W + Q) / Q), "one float per chunk");
    const keys: Float32Array[] = [], credit: number[] = [];
    let ring: number[] = []; // token indices awaiting eviction, oldest first
    const routed = new Map<string, number>();
    const out = new Float32Array(2 * d);
    for (let p = 0; p < 70; p++) {
      const k = normals(d, next).map((x) => (p % 7 === 0 ? 3 * x : x)), v = normals(d, next);
      cache.append(0, p, k, v);
      keys.push(k);
      credit.push(0);
      if (p >= S) ring.push(p);
      if (ring.length === W + Q) {
        const chunk = ring.slice(0, Q), score = chunk.reduce((a, t) => a + credit[t], 0) / Q;
        const tier = score >= tiers[0].minScore ? tiers[0] : tiers[1];
        const key = `${tier.keyFormat}|${tier.valueFormat}`;
        routed.set(key, (routed.get(key) ?? 0) + Q);
        ring = ring.slice(Q);
      }
      const q = normals(2 * d, next);
      cache.attend(0, q, out);
      for (let h = 0; h < 2; h++) {
        const s = keys.map((kt) => kt.reduce((a, x, c) => a + x * q[h * d + c], 0) / Math.sqrt(d));
        const m = Math.max(...s), z = s.reduce((a, x) => a + Math.exp(x - m), 0);
        for (const t of ring.slice(Math.max(0, ring.length - W))) {
          credit[t] += Math.exp(s[t] - m) / z / 2;
        }
      }
    }
    const paged = 70 - S - ring.length, scores = cache.windowScores(0, 0);
    for (let c = 0; c * Q < ring.length; c++) {
      const want = ring.slice(c * Q, (c + 1) * Q).reduce((a, t) => a + credit[t], 0);
      const got = scores[(paged / Q + c) % scores.length];
      assert.ok(
        Math.abs(got - want) <= 1e-5 * want + 1e-7,
        `${backend} chunk ${c}: ${got} vs ${want}`,
      );
    }
    const counts = cache.tokensByFormat();
    for (const [key, n] of routed) assert.equal(counts.get(key), n, `${backend}: ${key}`);
    assert.equal(routed.size, 2, "both tiers used");
  }
});

Deno.test("MixedPrecisionKVCache with fp32 pages reproduces the FP32 perplexity", async () => {
  const { model, sequences } = await loadFixture();
  const cache = new MixedPrecisionKVCache(
    cacheShape(model.config),
    uniformPolicy({
      keyFormat: "fp32",
      valueFormat: "fp32",
      sinkTokens: 4,
      recentWindow: 16,
      windowFormat: "fp32",
    }),
  );
  const r = await perplexity(model, cache, sequences.slice(0, 4), { context: 512 });
  const ref = await perplexity(
    model,
    new Float32KVCache(cacheShape(model.config)),
    sequences.slice(0, 4),
    { context: 512 },
  );
  assert.equal(r.tokens, ref.tokens);
  // equal up to rounding, not bit for bit: pages, window and sinks are attended as separate
  // partials merged by log-sum-exp, so the f64 sums run in another order (measured gap 1.2e-8;
  // Float32KVCache itself matches llama2.c's reference in tests/core/model/transformer_test.ts)
  assert.ok(Math.abs(r.meanNll - ref.meanNll) < 1e-7, `${r.meanNll} vs ${ref.meanNll}`);
});

Deno.test("MixedPrecisionKVCache keeps to a memory budget and is unchanged by the append it refuses", () => {
  const next = rng(15);
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 200 };
  const policy = uniformPolicy({
    keyFormat: "int4-g32-channel",
    valueFormat: "int4-g32-channel",
    sinkTokens: 2,
    recentWindow: 4,
    pageTokens: 32,
  });
  for (const backend of ["ts", "wasm"] as const) {
    const fixed = new MixedPrecisionKVCache(shape, policy, { backend }).memory().bytes;
    assert.throws(
      () => new MixedPrecisionKVCache(shape, policy, { backend, maxBytes: fixed - 1 }),
      (e: Error) => e instanceof BudgetError && e.message.includes(`${fixed} bytes`),
    );
    const cache = new MixedPrecisionKVCache(shape, policy, { backend, maxBytes: fixed + 400 });
    let pos = 0, refused: Error | undefined;
    for (; pos < 200; pos++) {
      const k = normals(8, next), v = normals(8, next);
      const before = saveCache(cache);
      try {
        cache.append(0, pos, k, v);
      } catch (e) {
        refused = e as Error;
        assert.deepEqual(saveCache(cache), before, `${backend}: a refused append changes nothing`);
        break;
      }
      assert.ok(cache.memory().bytes <= fixed + 400, `${backend}: within budget at ${pos}`);
    }
    // one int4-g32-channel page of 32 tokens × 8 is 2 × 8 × 5 words + 16 = 336 bytes: the second
    // group evicted needs a second page
    assert.ok(refused instanceof BudgetError, `${backend}: ${refused}`);
    assert.equal(pos, 2 + 4 + 32 + 32 - 1, `${backend}: refused at the second eviction`);
    assert.match(refused.message, /exceed the memory budget/);
  }
});

Deno.test("new MixedPrecisionKVCache() names a missing policy, a misspelt option and a bad value", () => {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 16 };
  const policy = uniformPolicy({ keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" });
  const cases: [() => unknown, new (...args: never[]) => Error, RegExp][] = [
    // each read a field of undefined: a TypeError deep inside
    [
      () => new MixedPrecisionKVCache(shape, undefined as never),
      InvalidValueError,
      /^policy is undefined, expected a CachePolicy/,
    ],
    [
      () => new MixedPrecisionKVCache(undefined as never, policy),
      ShapeError,
      /^cache shape is undefined/,
    ],
    [
      () => new MixedPrecisionKVCache(shape, policy, null as never),
      InvalidValueError,
      /options are null/,
    ],
    // dropped without a word: the cache then ran with integer dot products
    [
      () => new MixedPrecisionKVCache(shape, policy, { integerdot: false } as never),
      InvalidValueError,
      /unknown field "integerdot"; the fields are .*integerDot/,
    ],
    [
      () => new MixedPrecisionKVCache(shape, policy, { integerDot: "no" } as never),
      InvalidValueError,
      /^integerDot is "no", expected a boolean/,
    ],
    [
      () => new MixedPrecisionKVCache(shape, policy, { codecFor: "wasm" } as never),
      InvalidValueError,
      /^codecFor is "wasm"/,
    ],
    [
      () => new MixedPrecisionKVCache({ ...shape, headDim: "8" } as never, policy),
      ShapeError,
      /^cache shape headDim is "8"/,
    ],
  ];
  for (const [build, cls, message] of cases) throwsLike(build, cls, message);
});
