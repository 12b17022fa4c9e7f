// Fused decode attention over mixed-format page tables, checked against the CPU reference path:
// decode every page with the WASM codecs (the CPU production path; bit-identical to the TS reference),
// then attendHead() over the decoded keys and values — what core/cache's TS path computes.
import assert from "node:assert/strict";
import { FormatError, ShapeError } from "../../core/errors.ts";
import { attendHead } from "../../core/model/kv_cache.ts";
import { formatNames, type FormatSpec, getFormat } from "../../codecs/mod.ts";
import { type AttentionGroup, PagedAttention, readBack, type ScoreMemory } from "../../gpu/mod.ts";
import { KeyRope } from "../../core/cache/key_rope.ts";
import { normals, rng } from "../_fixtures.ts";
import { packPage, relativeError, testGpu, unpackPage } from "./_gpu.ts";

interface Case {
  name: string;
  d: number;
  nHeads: number;
  nKvHeads: number;
  sequences: number;
  P: number;
  /** Per KV head: segments as [keyFormat, valueFormat, tokens]. */
  pages: [string, string, number][];
  /** Channel-axis key pages store keys before RoPE with this base, at random positions. */
  ropeBase?: number;
}

/** Positions the angle table of a case with keys before RoPE covers. */
const ROPE_POSITIONS = 4096;

/** Runs one case on the GPU and against the reference; returns the worst relative error per head. */
async function runCase(
  c: Case,
  seed: number,
  scores?: ScoreMemory,
  splitTokens?: number,
): Promise<number> {
  const env = await testGpu();
  if (env === undefined) return 0;
  const { gpu, pipelines } = env;
  const next = rng(seed);
  const { d, P } = c;
  const Q = c.nHeads / c.nKvHeads;
  const words: number[] = [];
  const groups: AttentionGroup[] = [];
  const refKeys: Float32Array[][] = [], refValues: Float32Array[][] = [];
  const pool = { label: "pool" } as unknown as GPUBuffer; // replaced below
  const nGroups = c.sequences * c.nKvHeads;
  // keys before RoPE: pages hold keys turned back; the reference turns the decoded ones forward
  const span = Math.max(1, ...c.pages.map(([kf]) => getFormat(kf)).map((f) => f.group));
  const rope = c.ropeBase === undefined
    ? undefined
    : new KeyRope(d, ROPE_POSITIONS, span, c.ropeBase);
  const device = gpu.device;
  const S = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  let anglesBuf: GPUBuffer | undefined;
  if (rope) {
    const rows = rope.angleRows();
    anglesBuf = device.createBuffer({ size: rows.byteLength, usage: S, label: "angles" });
    device.queue.writeBuffer(anglesBuf, 0, rows);
  }
  for (let g = 0; g < nGroups; g++) {
    const segs = [];
    refKeys.push([]);
    refValues.push([]);
    for (const [kf, vf, n] of c.pages) {
      const ks = getFormat(kf), vs = getFormat(vf);
      const k = normals(n * d, next), v = normals(n * d, next);
      for (let i = 0; i < k.length; i++) k[i] += 0.5 * Math.sin(i); // non-centred groups
      const kw = packPage(ks, k, n, d, P), vw = packPage(vs, v, n, d, P);
      const keys = unpackPage(ks, kw, n, d, P);
      refValues[g].push(unpackPage(vs, vw, n, d, P));
      const keyBase = words.length;
      words.push(...kw);
      const valueBase = words.length;
      words.push(...vw);
      const turned = rope !== undefined && ks.axis === "channel";
      if (turned) {
        // each key group at its own random position, its first position after the value block
        const starts = Int32Array.from(
          { length: P / ks.group },
          () => Math.floor(next() * (ROPE_POSITIONS - ks.group)),
        );
        words.push(...starts);
        rope.rotate(keys, n, ks.group, starts);
      }
      refKeys[g].push(keys);
      segs.push({
        words: pool,
        keyFormat: ks,
        valueFormat: vs,
        keyBase,
        valueBase,
        tokens: n,
        rope: turned ? { angles: anglesBuf!, span } : undefined,
      });
    }
    // each head's log-sum-exp after all outputs (what the GPU cache credits window attention from)
    const lseOffset = c.sequences * c.nKvHeads * Q * d + g * Q;
    groups.push({ queryOffset: g * Q * d, outputOffset: g * Q * d, lseOffset, segments: segs });
  }
  const poolBuf = device.createBuffer({ size: words.length * 4, usage: S, label: "pool" });
  device.queue.writeBuffer(poolBuf, 0, Uint32Array.from(words));
  for (const g of groups) for (const s of g.segments) s.words = poolBuf;
  const q = normals(nGroups * Q * d, next);
  const qBuf = device.createBuffer({ size: q.byteLength, usage: S });
  device.queue.writeBuffer(qBuf, 0, q as Float32Array<ArrayBuffer>);
  const outBytes = q.byteLength + nGroups * Q * 4;
  const outBuf = device.createBuffer({ size: outBytes, usage: S | GPUBufferUsage.COPY_SRC });
  const rb = device.createBuffer({
    size: outBytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  const attention = new PagedAttention(gpu, pipelines, { scores, splitTokens });
  const enc = device.createCommandEncoder();
  await attention.encode(enc, qBuf, outBuf, groups, { headDim: d, queriesPerKv: Q, pageTokens: P });
  const out = new Float32Array(await readBack(gpu, outBuf, rb, outBytes, enc));
  for (const b of [poolBuf, qBuf, outBuf, rb]) b.destroy();
  anglesBuf?.destroy();
  attention.destroy();

  let worst = 0;
  for (let g = 0; g < nGroups; g++) {
    const K = _concat(refKeys[g]), V = _concat(refValues[g]);
    const n = K.length / d;
    const want = new Float32Array(d), scores = new Float32Array(n);
    for (let j = 0; j < Q; j++) {
      const off = (g * Q + j) * d;
      attendHead(q.subarray(off, off + d), K, V, n, d, scores, want);
      worst = Math.max(worst, relativeError(out.subarray(off, off + d), want));
      // log-sum-exp of the scaled scores, in f64
      const s = Array.from({ length: n }, (_, t) => {
        let dot = 0;
        for (let i = 0; i < d; i++) dot += q[off + i] * K[t * d + i];
        return dot / Math.sqrt(d);
      });
      const m = Math.max(...s), lse = m + Math.log(s.reduce((a, x) => a + Math.exp(x - m), 0));
      const got = out[nGroups * Q * d + g * Q + j];
      worst = Math.max(worst, Math.abs(got - lse) / Math.max(1, Math.abs(lse)));
    }
  }
  return worst;
}

function _concat(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const CASES: Case[] = [
  {
    name: "fp32, T = 1",
    d: 64,
    nHeads: 1,
    nKvHeads: 1,
    sequences: 1,
    P: 128,
    pages: [["fp32", "fp32", 1]],
  },
  {
    name: "fp32, several pages + partial, d 128",
    d: 128,
    nHeads: 2,
    nKvHeads: 1,
    sequences: 1,
    P: 128,
    pages: [["fp32", "fp32", 128], ["fp32", "fp32", 128], ["fp32", "fp32", 37]],
  },
  {
    name: "mixed formats, GQA 4:2, 2 sequences, d 64",
    d: 64,
    nHeads: 4,
    nKvHeads: 2,
    sequences: 2,
    P: 128,
    pages: [["fp32", "fp32", 5], ["int8-g32-channel", "int8-g32-token", 128], [
      "int4-g32-channel",
      "int4-g32-token",
      64,
    ], ["fp16", "bf16", 100]],
  },
  {
    name: "fixture shape: d 8, 8 heads on 4 KV heads",
    d: 8,
    nHeads: 8,
    nKvHeads: 4,
    sequences: 1,
    P: 128,
    pages: [["fp32", "fp32", 4], ["int8-g8-channel", "int8-g8-token", 128], [
      "int4-g8-token",
      "int2-g8-token",
      40,
    ], ["fp32", "fp32", 60]],
  },
  {
    // 3 query heads per KV head: teams of 21 threads per head; d 24: two token teams, 16 idle
    name: "GQA 6:2, d 24",
    d: 24,
    nHeads: 6,
    nKvHeads: 2,
    sequences: 1,
    P: 128,
    pages: [["int8-g8-channel", "int4-g8-token", 128], ["fp32", "fp16", 45]],
  },
  {
    // 36+ records per head even with splits of a page: the merge's two stages on hardware
    name: "36 pages of two format pairs, d 32",
    d: 32,
    nHeads: 4,
    nKvHeads: 2,
    sequences: 1,
    P: 128,
    pages: Array.from(
      { length: 36 },
      (_, i): [string, string, number] =>
        i % 2 ? ["int4-g32-channel", "int4-g32-token", 128] : ["fp32", "fp16", i === 0 ? 7 : 128],
    ),
  },
  {
    // 256 threads a workgroup: one channel each for values, one merge team
    name: "d 256, GQA 2:1",
    d: 256,
    nHeads: 2,
    nKvHeads: 1,
    sequences: 1,
    P: 128,
    pages: [["fp32", "fp32", 130], ["int8-g32-token", "int4-g32-token", 60]],
  },
  {
    name: "d 128, long segment split into several workgroups, GQA 8:1",
    d: 128,
    nHeads: 8,
    nKvHeads: 1,
    sequences: 1,
    P: 128,
    pages: [["fp32", "fp32", 300], ["int3-g16-channel", "int5-g16-token", 96], [
      "fp8e4m3-g32-channel",
      "fp8e5m2-g32-token",
      128,
    ]],
  },
  {
    // channel-axis key pages of two group sizes before RoPE beside token-axis and window ones
    name: "keys before RoPE, GQA 4:2, d 64",
    d: 64,
    nHeads: 4,
    nKvHeads: 2,
    sequences: 2,
    P: 128,
    pages: [["fp32", "fp32", 5], ["int4-g32-channel", "int4-g32-token", 96], [
      "int8-g16-channel",
      "fp16",
      128,
    ], ["int4-g32-token", "int8-g32-token", 50]],
    ropeBase: 10000,
  },
  {
    name: "keys before RoPE, fixture shape: d 8, 8 heads on 4 KV heads",
    d: 8,
    nHeads: 8,
    nKvHeads: 4,
    sequences: 1,
    P: 64,
    pages: [["int2-g32-channel", "int8-g8-token", 64], ["fp16", "fp16", 40], [
      "fp8e4m3-g32-channel",
      "int4-g8-token",
      32,
    ]],
    ropeBase: 10000,
  },
];

// both kernels on every adapter: the workgroup-memory one is what hardware GPUs run, with its
// splits of a page or less
const KERNELS: [ScoreMemory, number | undefined][] = [
  ["storage", undefined],
  ["workgroup", 128],
  ["workgroup", 32],
];
for (const [i, c] of CASES.entries()) {
  for (const [scores, split] of KERNELS) {
    const kernel = `scores in ${scores}${split ? `, splits of ${split}` : ""}`;
    Deno.test(`PagedAttention.encode() matches decode + attendHead: ${c.name} (${kernel})`, async () => {
      const err = await runCase(c, 100 + i, scores, split);
      assert.ok(err <= 1e-5, `relative error ${err}`);
    });
  }
}

// every codec layout (kind, bits, group, header) once as keys and once as values, token and
// channel axes, at d 64 with a partial page
Deno.test("PagedAttention.encode() matches decode + attendHead for every format", async () => {
  const specs = formatNames().map(getFormat).filter((s) => s.axis !== "heads");
  const seen = new Set<string>();
  const formats: FormatSpec[] = [];
  for (const s of specs) {
    const key = `${s.kind}${s.bits}g${s.group}${s.axis}`;
    if (!seen.has(key)) {
      seen.add(key);
      formats.push(s);
    }
  }
  let worst = 0, worstName = "";
  for (const [i, f] of formats.entries()) {
    const partner = i % 2 === 0 ? "fp32" : "int8-g32-token";
    const n = f.axis === "channel" ? 128 - f.group * Math.floor(64 / f.group) : 77;
    const err = await runCase({
      name: f.name,
      d: f.axis === "token" && f.group === 128 ? 128 : 64,
      nHeads: 2,
      nKvHeads: 1,
      sequences: 1,
      P: 128,
      pages: [[f.name, partner, n], [partner, f.name, n], ["fp32", "fp32", 3]],
    }, 1000 + i);
    if (err > worst) [worst, worstName] = [err, f.name];
    assert.ok(err <= 1e-5, `${f.name}: relative error ${err}`);
  }
  assert.ok(formats.length >= 80, `${formats.length} formats covered`);
  console.log(
    `every format: ${formats.length} layouts, worst relative error ${
      worst.toExponential(2)
    } (${worstName})`,
  );
});

Deno.test("PagedAttention rejects a split size its kernel cannot take", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const { gpu, pipelines } = env;
  for (
    const [scores, split] of [["storage", 64], ["workgroup", 0], ["workgroup", 2048], [
      "workgroup",
      1.5,
    ]] as const
  ) {
    assert.throws(
      () => new PagedAttention(gpu, pipelines, { scores, splitTokens: split }),
      (e: Error) => e instanceof ShapeError && e.message.startsWith(`splitTokens ${split}:`),
    );
  }
  const a = new PagedAttention(gpu, pipelines, { scores: "workgroup", splitTokens: 64 });
  assert.equal(a.splitTokens, 64);
  a.destroy();
  // 16 query heads × 1024 tokens of scores: 64 KiB of workgroup memory, over the limit
  const big = new PagedAttention(gpu, pipelines, { scores: "workgroup", splitTokens: 1024 });
  const q = gpu.device.createBuffer({ size: 16 * 64 * 4, usage: GPUBufferUsage.STORAGE });
  await assert.rejects(
    () =>
      big.encode(gpu.device.createCommandEncoder(), q, q, [], {
        headDim: 64,
        queriesPerKv: 16,
        pageTokens: 128,
      }),
    (e: Error) => e instanceof ShapeError && /need 65792 bytes of workgroup memory/.test(e.message),
  );
  // pages of one buffer and format pair either all store keys before RoPE or none do
  const words = gpu.device.createBuffer({ size: 4096, usage: GPUBufferUsage.STORAGE });
  const ks = getFormat("int8-g32-channel"), vs = getFormat("fp32");
  const seg = { words, keyFormat: ks, valueFormat: vs, keyBase: 0, valueBase: 0, tokens: 32 };
  const runner = new PagedAttention(gpu, pipelines);
  await assert.rejects(
    () =>
      runner.encode(gpu.device.createCommandEncoder(), q, q, [{
        queryOffset: 0,
        outputOffset: 0,
        segments: [seg, { ...seg, rope: { angles: words, span: 32 } }],
      }], { headDim: 8, queriesPerKv: 1, pageTokens: 32 }),
    (e: Error) =>
      e instanceof ShapeError && /disagree on whether keys are stored before RoPE/.test(e.message),
  );
  // channel groups of 32 tokens in pages of 48: the kernels would address groups across pages
  await assert.rejects(
    () =>
      runner.encode(gpu.device.createCommandEncoder(), q, q, [{
        queryOffset: 0,
        outputOffset: 0,
        segments: [seg],
      }], { headDim: 8, queriesPerKv: 1, pageTokens: 48 }),
    (e: Error) =>
      e instanceof FormatError &&
      /int8-g32-channel groups 32 tokens .* pages of 48/.test(e.message),
  );
  // accepted once, and computed wrong: a channel-axis segment longer than its page (it read the
  // next channel's tokens), a second RoPE span (computed with the first's), fractional tokens and
  // a head_dim of 0 (1/√0 compiled into the shader: a failure taken for the device's)
  const encode = (
    segments: (typeof seg)[],
    dims = { headDim: 8, queriesPerKv: 1, pageTokens: 32 },
  ) =>
    runner.encode(gpu.device.createCommandEncoder(), q, q, [{
      queryOffset: 0,
      outputOffset: 0,
      segments,
    }], dims);
  const rope = (span: number) => ({ ...seg, rope: { angles: words, span } });
  for (
    const [segments, dims, message] of [
      [[{ ...seg, tokens: 200 }], undefined, /segment of 200 tokens in a page of 32/],
      [[rope(32), rope(8)], undefined, /disagree .* angle table or span/],
      [[{ ...seg, keyFormat: vs, tokens: 1.5 }], undefined, /segment with 1.5 tokens/],
      [[{ ...seg, keyFormat: vs }], { headDim: 0, queriesPerKv: 1, pageTokens: 32 }, /head_dim 0/],
    ] as const
  ) {
    await assert.rejects(
      () => encode(segments as never, dims),
      (e: Error) => e instanceof ShapeError && message.test(e.message),
      String(message),
    );
  }
  runner.destroy();
  words.destroy();
  q.destroy();
  big.destroy();
});
