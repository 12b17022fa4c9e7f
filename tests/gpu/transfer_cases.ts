// GpuKVCache.toCpu() / fromCpu(): a cache moves between the GPU and the CPU word for word, and both
// copies go on attending, evicting and choosing tiers as the original does.
import assert from "node:assert/strict";
import {
  type CachePolicy,
  createKVCache,
  Float32KVCache,
  GpuKVCache,
  type KVCache,
  loadCache,
  MixedPrecisionKVCache,
  saveCache,
  tieredPolicy,
  uniformPolicy,
} from "../../mod.ts";
import { rng } from "../_fixtures.ts";
import { relativeError, testGpu, threeTierPolicy } from "./_gpu.ts";
import { InvalidValueError, ShapeError } from "../../core/errors.ts";
import { getFormat, wordsForLength } from "../../codecs/format.ts";

const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 16, maxSeqLen: 128 };
/** int4 keys per channel, int8 values per token, no window. */
const channelKeys = (windowFormat: string, ropeBase?: number, stagingFormat?: string) =>
  uniformPolicy({
    keyFormat: "int4-g16-channel",
    valueFormat: "int8-g16-token",
    sinkTokens: 3,
    pageTokens: 32,
    windowFormat,
    stagingFormat,
    ropeBase,
  });
const policies: [string, (windowFormat: string, stagingFormat?: string) => CachePolicy][] = [
  ["three tiers", (w, s) => threeTierPolicy(w, 5, undefined, s)],
  ["channel keys, no window", (w, s) => channelKeys(w, undefined, s)],
  // channel-axis key pages store keys before RoPE (token-axis ones as received)
  ["three tiers, keys before RoPE", (w, s) => threeTierPolicy(w, 5, 10000, s)],
  ["channel keys before RoPE, no window", (w, s) => channelKeys(w, 500, s)],
];
/** Window formats, and staging formats of their own (tokens awaiting eviction re-encoded). */
const RINGS: [string, string?][] = [
  ["fp32"],
  ["fp16"],
  ["int8-g8-token"],
  ["fp16", "int8-g8-token"],
  ["fp32", "fp16"],
];

/**
 * Asserts that two CPU caches hold the same ring: staged tokens and the recent window's tokens,
 * oldest first, word for word (the slots they sit in may differ).
 */
function sameRing(got: MixedPrecisionKVCache, want: MixedPrecisionKVCache, what: string): void {
  const { nLayers, nKvHeads, headDim } = want.shape;
  const sw = wordsForLength(getFormat(want.policy.windowFormat), headDim);
  const ssw = wordsForLength(getFormat(want.policy.stagingFormat), headDim);
  const ring = (s: ReturnType<MixedPrecisionKVCache["segments"]>) => {
    const R = s.windowK.length / sw, tokens: Uint32Array[] = [];
    for (let i = 0; i < s.stageN; i++) {
      tokens.push(s.stageK.subarray(i * ssw, (i + 1) * ssw));
      tokens.push(s.stageV.subarray(i * ssw, (i + 1) * ssw));
    }
    for (let i = 0; i < s.windowN - s.stageN; i++) {
      const at = ((s.windowStart + i) % R) * sw;
      tokens.push(s.windowK.subarray(at, at + sw), s.windowV.subarray(at, at + sw));
    }
    return { staged: s.stageN, tokens };
  };
  for (let l = 0; l < nLayers; l++) {
    for (let h = 0; h < nKvHeads; h++) {
      assert.deepEqual(ring(got.segments(l, h)), ring(want.segments(l, h)), `${what}: ${l}, ${h}`);
    }
  }
}

/** Appends and attends positions [from, to) on every cache; returns the worst output difference. */
async function step(
  caches: KVCache[],
  from: number,
  to: number,
  seed: number,
  { nLayers, nKvHeads, nHeads, headDim } = shape,
): Promise<number> {
  const r = rng(seed), kv = nKvHeads * headDim, qd = nHeads * headDim;
  const x = (n: number, s = 1) => Float32Array.from({ length: n }, () => s * (2 * r() - 1));
  const outs = caches.map(() => new Float32Array(qd));
  let worst = 0;
  for (let pos = from; pos < to; pos++) {
    for (let l = 0; l < nLayers; l++) {
      const k = x(kv, pos % 11 < 3 ? 3 : 1), v = x(kv), q = x(qd, 2);
      for (const c of caches) c.append(l, pos, k, v);
      for (let i = 0; i < caches.length; i++) await caches[i].attend(l, q, outs[i]);
      for (const o of outs.slice(1)) {
        for (let i = 0; i < qd; i++) worst = Math.max(worst, Math.abs(o[i] - outs[0][i]));
      }
    }
  }
  return worst;
}

/**
 * Asserts that the GPU cache holds the CPU cache's page words and key-group positions (keys before
 * RoPE: turned back in the same f32 steps; llvmpipe, gpu/NOTES.md finding 14); returns the key
 * formats of the pages that store keys before RoPE.
 */
async function samePages(cpu: MixedPrecisionKVCache, gpu: GpuKVCache): Promise<Set<string>> {
  const preRope = new Set<string>();
  for (let l = 0; l < cpu.shape.nLayers; l++) {
    for (let h = 0; h < cpu.shape.nKvHeads; h++) {
      for (const pool of cpu.segments(l, h).pools) {
        for (const [i, page] of pool.pages.entries()) {
          const got = await gpu.readPage(l, h, i, pool.pair);
          assert.deepEqual(got.keyWords, page.kWords, `keys of ${pool.pair.keyFormat}`);
          assert.deepEqual(got.valueWords, page.vWords);
          assert.deepEqual(got.starts, page.starts);
          if (page.starts) preRope.add(pool.pair.keyFormat);
        }
      }
    }
  }
  return preRope;
}

for (const [name, policy] of policies) {
  for (const [windowFormat, stagingFormat] of RINGS) {
    const ring = `${windowFormat} window${stagingFormat ? `, ${stagingFormat} staging` : ""}`;
    Deno.test(`GpuKVCache.toCpu() / fromCpu() move the cache as stored: ${name}, ${ring}`, async () => {
      const env = await testGpu();
      if (!env) return;
      const chosen = await createKVCache(shape, policy(windowFormat, stagingFormat), {
        backend: "gpu",
        gpu: env.gpu,
      });
      assert.equal(chosen.backend, "gpu", chosen.reason);
      const gpu = chosen.cache as GpuKVCache;
      const opts = { backend: "wasm" as const, integerDot: false };
      const cpu = new MixedPrecisionKVCache(shape, policy(windowFormat, stagingFormat), opts);
      // 61 positions: full and partial pages, tokens waiting in the ring, credited scores
      assert.ok(await step([cpu, gpu], 0, 61, 7) <= 1e-5);
      const preRope = await samePages(cpu, gpu);
      assert.equal(preRope.size > 0, name.includes("before RoPE"), "pages with keys before RoPE");
      const gpuToCpu = await gpu.toCpu(opts);
      const cpuToGpu = await GpuKVCache.fromCpu(cpu, env.gpu, env.pipelines);
      // the attention credited to the ring's chunks so far moves with them (it decides their tier)
      const back = await cpuToGpu.toCpu(opts);
      // the ring word for word, staged tokens included (61 positions: 2 or 3 sinks, 16-token
      // chunks, so some wait staged)
      sameRing(gpuToCpu, cpu, "GPU to CPU");
      sameRing(back, cpu, "CPU to GPU to CPU");
      if (stagingFormat) assert.ok(cpu.segments(0, 0).stageN > 0, "tokens staged");
      for (let l = 0; l < shape.nLayers; l++) {
        for (let h = 0; h < shape.nKvHeads; h++) {
          const want = cpu.windowScores(l, h), moved = gpuToCpu.windowScores(l, h);
          assert.deepEqual(back.windowScores(l, h), want, `scores of layer ${l}, head ${h}`);
          assert.equal(moved.length, want.length);
          assert.equal(
            want.length,
            name.startsWith("three tiers") ? 2 : 0,
            "a 5-token window, chunks of 16",
          );
          moved.forEach((x, i) => assert.ok(Math.abs(x - want[i]) <= 1e-6 + 1e-5 * want[i]));
        }
      }
      const tiers = cpu.tokensByFormat();
      for (const c of [gpu, gpuToCpu, cpuToGpu]) assert.deepEqual(c.tokensByFormat(), tiers);
      // the copies go on as the originals: same outputs, same tiers chosen from here on
      const worst = await step([cpu, gpu, gpuToCpu, cpuToGpu], 61, 120, 8);
      assert.ok(worst <= 1e-5, `outputs after the move differ by ${worst}`);
      const later = cpu.tokensByFormat();
      assert.notDeepEqual(later, tiers, "more pages after the move");
      for (const c of [gpu, gpuToCpu, cpuToGpu]) assert.deepEqual(c.tokensByFormat(), later);
      // through bytes and back: the pages read back word for word
      const restored = await GpuKVCache.fromCpu(loadCache(saveCache(await gpu.toCpu())), env.gpu);
      const pair = cpu.segments(1, 1).pools[0].pair;
      for (let page = 0; page < cpu.segments(1, 1).pools[0].pages.length; page++) {
        assert.deepEqual(
          await restored.readPage(1, 1, page, pair),
          await gpu.readPage(1, 1, page, pair),
        );
      }
      assert.equal(restored.length(1), 120);
      for (const c of [restored, cpuToGpu]) c.destroy();
      chosen.destroy();
    });
  }
}

Deno.test("GpuKVCache.fromCpu() refuses a policy the GPU cache cannot hold as written", async () => {
  const env = await testGpu();
  if (!env) return;
  // anything but a mixed cache was a TypeError reading its policy
  for (
    const [cache, name] of [[undefined, "undefined"], [new Float32KVCache(shape), "Float32KVCache"]]
  ) {
    await assert.rejects(
      () => GpuKVCache.fromCpu(cache as never, env.gpu),
      (e: Error) =>
        e instanceof InvalidValueError &&
        e.message === `fromCpu: cache is ${name}, expected a MixedPrecisionKVCache`,
    );
  }
  const cpu = new MixedPrecisionKVCache(shape, policies[1][1]("bf16"));
  await assert.rejects(
    () => GpuKVCache.fromCpu(cpu, env.gpu),
    /fromCpu: .*keeps sinks, window and tokens awaiting eviction at bf16/,
  );
  const staged = new MixedPrecisionKVCache(shape, policies[0][1]("fp16", "bf16"));
  await assert.rejects(
    () => GpuKVCache.fromCpu(staged, env.gpu),
    /fromCpu: .*stages tokens awaiting eviction at bf16; the GPU cache keeps them at fp32, fp16/,
  );
});

Deno.test("GpuKVCache stores keys before RoPE as the CPU cache does with key groups shorter than a chunk", async () => {
  const env = await testGpu();
  if (!env) return;
  const long = { ...shape, nLayers: 1, maxSeqLen: 300 };
  // chunks of 64 tokens (a value tier grouped by 64), key groups of 32, 8 and 16 inside them
  const policy = tieredPolicy({
    label: "mixed key groups",
    tiers: [Array.from({ length: 2 }, () => [
      { minScore: 0.05, keyFormat: "int4-g32-channel", valueFormat: "int8-g8-channel" },
      { minScore: 0.025, keyFormat: "int8-g8-channel", valueFormat: "int4-g64-channel" },
      { minScore: 0, keyFormat: "int2-g16-channel", valueFormat: "fp16" },
    ])],
    sinkTokens: 3,
    recentWindow: 7,
    pageTokens: 128,
    windowFormat: "int8-g8-token",
    ropeBase: 10000,
  });
  const chosen = await createKVCache(long, policy, { backend: "gpu", gpu: env.gpu });
  const gpu = chosen.cache as GpuKVCache;
  const opts = { backend: "wasm" as const, integerDot: false };
  const cpu = new MixedPrecisionKVCache(long, policy, opts);
  assert.ok(await step([cpu, gpu], 0, 280, 9, long) <= 1e-5);
  assert.equal(gpu.chunk, 64);
  const preRope = await samePages(cpu, gpu);
  assert.ok(preRope.size >= 2, `key groups of several sizes: ${[...preRope]}`);
  const moved = await gpu.toCpu(opts);
  assert.ok(await step([cpu, gpu, moved], 280, 300, 10, long) <= 1e-5);
  chosen.destroy();
});

Deno.test("GpuKVCache.fromCpu() skips an empty last page and goes on as the CPU cache does", async () => {
  const env = await testGpu();
  if (!env) return;
  const small = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 64 };
  const policy = uniformPolicy({
    keyFormat: "int8-g8-token",
    valueFormat: "int8-g8-token",
    recentWindow: 2,
    sinkTokens: 1,
    pageTokens: 4,
  });
  const opts = { backend: "wasm" as const, integerDot: false };
  const seed = 196, r = rng(seed);
  const x = (n: number) => Float32Array.from({ length: n }, () => 2 * r() - 1);
  const cpuWith = (pages: number[]) => {
    const cpu = new MixedPrecisionKVCache(small, policy, opts);
    // 1 sink, 2 in the window, the rest paged
    for (let pos = 0; pos < 7; pos++) cpu.append(0, pos, x(8), x(8));
    const seg = cpu.segments(0, 0);
    seg.pools[0].pages[0].n = pages[0];
    for (const n of pages.slice(1)) seg.pools[0].newPage().n = n;
    cpu.restoreSegments(0, 0, seg);
    cpu.restoreLengths([3 + pages.reduce((a, n) => a + n, 0)]);
    return cpu;
  };
  // an empty page after a full one: restoreSegments takes it (loadCache no longer does)
  const cpu = cpuWith([4, 0]);
  const gpu = await GpuKVCache.fromCpu(cpu, env.gpu, env.pipelines);
  const got = new Float32Array(16), want = new Float32Array(16);
  const agree = async (when: string) => {
    const q = x(16);
    cpu.attend(0, q, want);
    await gpu.attend(0, q, got);
    const error = relativeError(got, want);
    assert.ok(error <= 1e-5, `${when}, seed ${seed}: relative error ${error}`);
  };
  await agree("as copied");
  for (let pos = 7; pos < 19; pos++) {
    const k = x(8), v = x(8);
    cpu.append(0, pos, k, v);
    gpu.append(0, pos, k, v);
    await agree(`position ${pos}`);
  }
  // the CPU cache filled its empty page; the GPU cache's page i holds the same tokens, i·P onward
  const pages = cpu.segments(0, 0).pools[0].pages;
  assert.deepEqual(pages.map((p) => p.n), [4, 4, 4, 4]);
  for (const [i, page] of pages.entries()) {
    const read = await gpu.readPage(0, 0, i);
    assert.deepEqual([read.keyWords, read.valueWords], [page.kWords, page.vWords], `page ${i}`);
  }
  assert.deepEqual(gpu.tokensByFormat(), cpu.tokensByFormat());
  gpu.destroy();
  // a partial page before a full one would put tokens where the page table does not look
  await assert.rejects(
    () => GpuKVCache.fromCpu(cpuWith([2, 4]), env.gpu, env.pipelines),
    (e: Error) => e instanceof ShapeError && /2 tokens/.test(e.message),
  );
});

Deno.test("GpuKVCache.fromCpu() takes a staged cache without sinks or recent window (a ring of no slots)", async () => {
  const env = await testGpu();
  if (!env) return;
  // its ring buffer has no slots: a zero-length write to it once killed the process
  const small = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 16 };
  const policy = uniformPolicy({
    keyFormat: "int4-g8-channel",
    valueFormat: "fp16",
    windowFormat: "int4-g8-token",
    stagingFormat: "fp16",
    pageTokens: 8,
  });
  const r = rng(77), x = (n: number) => Float32Array.from({ length: n }, () => 2 * r() - 1);
  const cpu = new MixedPrecisionKVCache(small, policy, { backend: "wasm", integerDot: false });
  for (let pos = 0; pos < 10; pos++) cpu.append(0, pos, x(8), x(8));
  assert.equal(cpu.segments(0, 0).stageN, 2, "2 tokens staged");
  const gpu = await GpuKVCache.fromCpu(cpu, env.gpu, env.pipelines);
  const back = await gpu.toCpu({ backend: "wasm", integerDot: false });
  // the same words (the policies' JSON differs: the GPU's names its zero sinks and window)
  const [was, now] = [cpu, back].map((c) => c.segments(0, 0));
  // the staged tokens' words (slots a token left keep old words on the CPU, zeros on the copy)
  const held = (x: Uint32Array) => x.subarray(0, 2 * (x.length / 8)); // 2 of 8 slots
  assert.equal(now.stageN, was.stageN);
  assert.deepEqual([held(now.stageK), held(now.stageV)], [held(was.stageK), held(was.stageV)]);
  assert.deepEqual(now.pools[0].pages[0].kWords, was.pools[0].pages[0].kWords);
  assert.deepEqual(now.pools[0].pages[0].vWords, was.pools[0].pages[0].vWords);
  const q = x(16), want = new Float32Array(16), got = new Float32Array(16);
  cpu.attend(0, q, want);
  await gpu.attend(0, q, got);
  assert.ok(relativeError(got, want) <= 1e-5, `${relativeError(got, want)}`);
  gpu.destroy();
});
