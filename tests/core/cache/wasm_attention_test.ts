import assert from "node:assert/strict";
import { formatNames, getFormat } from "../../../codecs/format.ts";
import { MixedPrecisionKVCache } from "../../../core/cache/mixed_cache.ts";
import { type CachePolicy, tieredPolicy, uniformPolicy } from "../../../core/cache/policy.ts";
import { saveCache } from "../../../core/cache/serialize.ts";
import { ShapeError } from "../../../core/errors.ts";
import type { KVCacheShape } from "../../../core/model/kv_cache.ts";
import { normals, rng } from "../../_fixtures.ts";
import { headRelError } from "../../../bench/backend_agreement.ts";
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToF16Bits,
  fp8BitsToF32,
} from "../../../codecs/float_bits.ts";

const TOLERANCE = 1e-6;

/** Both backends over the same policy and shape. */
function pair(shape: KVCacheShape, policy: () => CachePolicy, integerDot = true) {
  return {
    ts: new MixedPrecisionKVCache(shape, policy(), { integerDot }),
    wasm: new MixedPrecisionKVCache(shape, policy(), { backend: "wasm", integerDot }),
  };
}

/**
 * Appends T random tokens to both caches, attending every `every` steps or at the lengths listed
 * (so window scores and therefore tiered routing evolve), and checks outputs and window scores
 * agree at each attend.
 */
function drive(
  c: ReturnType<typeof pair>,
  T: number,
  every: number | readonly number[],
  seed: number,
  label: string,
  keyOffset = 0,
): void {
  const { nLayers, nHeads, nKvHeads, headDim: d } = c.ts.shape;
  const next = rng(seed);
  const outTs = new Float32Array(nHeads * d), outWasm = new Float32Array(nHeads * d);
  for (let p = 0; p < T; p++) {
    for (let l = 0; l < nLayers; l++) {
      const k = normals(nKvHeads * d, next).map((x) => x + keyOffset);
      const v = normals(nKvHeads * d, next);
      c.ts.append(l, p, k, v);
      c.wasm.append(l, p, k, v);
      const due = typeof every === "number" ? (p + 1) % every === 0 : every.includes(p + 1);
      if (!due && p !== T - 1) continue;
      const q = normals(nHeads * d, next);
      c.ts.attend(l, q, outTs);
      c.wasm.attend(l, q, outWasm);
      const err = headRelError(outWasm, outTs, d);
      assert.ok(err <= TOLERANCE, `${label} T=${p + 1} layer ${l}: relative error ${err}`);
      for (let h = 0; h < nKvHeads; h++) {
        const a = c.ts.windowScores(l, h), b = c.wasm.windowScores(l, h);
        for (let i = 0; i < a.length; i++) {
          assert.ok(
            Math.abs(a[i] - b[i]) <= TOLERANCE * Math.max(Math.abs(a[i]), 1e-3),
            `${label} T=${p + 1} window score ${i}: ${b[i]} vs ${a[i]}`,
          );
        }
      }
    }
  }
  assert.deepEqual(c.wasm.tokensByFormat(), c.ts.tokensByFormat(), `${label}: routing`);
  assert.deepEqual(c.wasm.memory(), c.ts.memory(), `${label}: memory`);
  // the serialised form holds window scores (f32), which may differ in the last bits
  if (c.ts.policy.recentWindow === 0) {
    assert.deepEqual(saveCache(c.wasm), saveCache(c.ts), `${label}: stored words`);
  }
}

/**
 * Both backends for format pair i of every storable format at d = 128 (every token-axis group)
 * with 128-token pages (every channel-axis group), a sink and a 3-token window: query heads per
 * KV head in turn 4 (heads in fours, tokens in pairs), 1, and 6 (a block of four and two over).
 */
function formatCase(
  keyFormat: string,
  valueFormat: string,
  i: number,
  options: { windowFormat: string; integerDot: boolean; ropeBase?: number },
) {
  const hq = [4, 1, 6][i % 3];
  const shape = { nLayers: 1, nHeads: 2 * hq, nKvHeads: 2, headDim: 128, maxSeqLen: 300 };
  const { integerDot, ...window } = options;
  const policy = () =>
    uniformPolicy({
      keyFormat,
      valueFormat,
      pageTokens: 128,
      sinkTokens: 1,
      recentWindow: 3,
      ...window,
    });
  return { c: pair(shape, policy, integerDot), hq };
}

Deno.test("MixedPrecisionKVCache.attend() wasm matches ts for every storable format", () => {
  // Attends at T = 1 (window and sink only), 5, 33, a full page, a page and a bit, two pages and
  // one token, and 300 (two full pages, a partial page, staged channel groups); the exact kernels
  // and the integer path (where it serves the pair) in turn.
  const names = formatNames().filter((n) => getFormat(n).axis !== "heads");
  const lengths = [1, 5, 33, 128, 130, 257, 300];
  names.forEach((keyFormat, i) => {
    const valueFormat = names[(i * 7 + 3) % names.length];
    const integerDot = i % 2 === 0;
    const { c, hq } = formatCase(keyFormat, valueFormat, i, { windowFormat: "fp32", integerDot });
    drive(
      c,
      300,
      lengths,
      1000 + i,
      `${keyFormat}|${valueFormat} hq=${hq} integerDot=${integerDot}`,
    );
  });
  // the formats the integer path serves, on the exact kernels too (with integerDot on they always
  // take the integer path)
  for (const b of [2, 4, 8]) {
    for (const keyFormat of [`int${b}-g32-token`, `int${b}-g32-channel`]) {
      const valueFormat = `int${b}-g32-token`;
      const shape = { nLayers: 1, nHeads: 12, nKvHeads: 2, headDim: 64, maxSeqLen: 300 };
      const policy = () => uniformPolicy({ keyFormat, valueFormat, pageTokens: 128 });
      drive(
        pair(shape, policy, false),
        300,
        lengths,
        3000 + b,
        `${keyFormat}|${valueFormat} exact`,
      );
    }
  }
});

Deno.test("wasm matches ts to 1e-6 at scores in the hundreds, for every format, keys before RoPE too", () => {
  // keys of 40 + N(0, 1) give scores of ±40·Σq/√d, hundreds, where one f32 ulp of a score is
  // ~1e-5: the TS reference scores as the kernels do (core/cache/kernel_score.ts), so the two
  // agree there too. With f64 scores in the reference they differed by 1e-5 … 2e-4 (the fixture
  // model's scores reach 237: tests/core/cache/real_model_agreement_test.ts), and with the
  // kernels' one-head loop summing d = 128 in two chains instead of one, by the same.
  const names = formatNames().filter((n) => getFormat(n).axis !== "heads");
  names.forEach((keyFormat, i) => {
    const valueFormat = names[(i * 5 + 1) % names.length];
    const integerDot = i % 2 === 1;
    const preRope = getFormat(keyFormat).axis === "channel" && i % 4 < 2;
    const { c, hq } = formatCase(keyFormat, valueFormat, i, {
      windowFormat: "fp16",
      integerDot,
      ...(preRope ? { ropeBase: 10000 } : {}),
    });
    const label =
      `${keyFormat}|${valueFormat} hq=${hq} integerDot=${integerDot} preRope=${preRope}`;
    drive(c, 300, [1, 33, 130, 257, 300], 2000 + i, label, 40);
  });
});

Deno.test("MixedPrecisionKVCache.attend() wasm matches ts across GQA shapes, sinks and windows", () => {
  const cases = [
    { nHeads: 8, nKvHeads: 4, headDim: 8, T: 70, sinks: 0, window: 0, win: "fp16" },
    { nHeads: 8, nKvHeads: 4, headDim: 64, T: 1, sinks: 0, window: 0, win: "fp16" },
    { nHeads: 8, nKvHeads: 4, headDim: 64, T: 150, sinks: 4, window: 16, win: "fp16" },
    { nHeads: 4, nKvHeads: 1, headDim: 128, T: 140, sinks: 2, window: 8, win: "bf16" },
    { nHeads: 2, nKvHeads: 2, headDim: 64, T: 100, sinks: 3, window: 0, win: "fp32" },
    { nHeads: 8, nKvHeads: 4, headDim: 8, T: 90, sinks: 1, window: 24, win: "fp32" },
  ];
  cases.forEach((s, i) => {
    const shape = { nLayers: 2, nHeads: s.nHeads, nKvHeads: s.nKvHeads, headDim: s.headDim };
    const tiers = [
      { minScore: 0.05, keyFormat: "int8-g8-token", valueFormat: "int8-g8-token" },
      { minScore: 0.01, keyFormat: "int4-g32-channel", valueFormat: "int4-g8-token" },
      { minScore: 0, keyFormat: "int2-g16-channel", valueFormat: "int2-g8-token" },
    ];
    const policy = () =>
      tieredPolicy({
        label: "t",
        tiers: Array.from({ length: 2 }, () => Array.from({ length: s.nKvHeads }, () => tiers)),
        sinkTokens: s.sinks,
        recentWindow: s.window,
        windowFormat: s.win,
      });
    const c = pair({ ...shape, maxSeqLen: s.T }, policy);
    drive(c, s.T, 7, 2000 + i, JSON.stringify(s));
  });
  // an int window of groups of 32 at every length: the integer-dot path serves such pages, but
  // sinks and window stay exact as in the TS reference (they once took it at 4, 8, ... tokens)
  const shape = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: 32, maxSeqLen: 24 };
  const policy = () =>
    uniformPolicy({
      keyFormat: "int4-g32-token",
      valueFormat: "int4-g32-token",
      sinkTokens: 2,
      recentWindow: 16,
      windowFormat: "int8-g32-token",
    });
  drive(pair(shape, policy), 24, 1, 2100, "int8-g32-token window");
});

Deno.test("MixedPrecisionKVCache() wasm backend keeps pages in WASM memory and reuses it", () => {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 2, headDim: 64, maxSeqLen: 256 };
  const policy = () =>
    uniformPolicy({ keyFormat: "int4-g32-token", valueFormat: "int4-g32-token" });
  const c = pair(shape, policy);
  drive(c, 256, 64, 7, "fill");
  const seg = c.wasm.segments(0, 0).pools[0];
  const page = seg.pages[0];
  assert.ok(
    page.kPtr > 0 && page.kWords.buffer !== c.ts.segments(0, 0).pools[0].pages[0].kWords.buffer,
  );
  const held = page.kWords.buffer.byteLength;
  const ptrs = () =>
    [0, 1].flatMap((h) => c.wasm.segments(0, h).pools[0].pages.flatMap((p) => [p.kPtr, p.vPtr]))
      .sort();
  const before = ptrs();
  c.wasm.reset();
  c.ts.reset();
  // refilling after reset reuses the freed pages: same offsets, no growth
  drive(c, 256, 64, 8, "refill");
  assert.deepEqual(ptrs(), before);
  assert.equal(c.wasm.segments(0, 0).pools[0].pages[0].kWords.buffer.byteLength, held);
});

Deno.test("MixedPrecisionKVCache() wasm backend rejects a head_dim that is not a multiple of 4", () => {
  for (const headDim of [2, 6, 10]) {
    assert.throws(
      () =>
        new MixedPrecisionKVCache(
          { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim, maxSeqLen: 8 },
          uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" }),
          { backend: "wasm" },
        ),
      (e) => e instanceof ShapeError && e.message.includes(`${headDim}`),
    );
  }
});

Deno.test("a WASM cache attended at every step keeps its memory while a long window fills", () => {
  // each attend() once reserved scratch for the window's current length: the block freed at each
  // step went to a free list of its exact size, never asked for again, and memory grew with the
  // square of the window (290 MiB for a 1024-token window, no memory left at 4096)
  const d = 64, W = 1024;
  const shape = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: d, maxSeqLen: W + 64 };
  const policy = uniformPolicy({
    keyFormat: "int4-g32-token",
    valueFormat: "int4-g32-token",
    recentWindow: W,
    pageTokens: 32,
  });
  const next = rng(77);
  const sizes = [false, true].map((attendEachStep) => {
    const cache = new MixedPrecisionKVCache(shape, policy, { backend: "wasm" });
    const q = normals(4 * d, next), out = new Float32Array(4 * d);
    for (let pos = 0; pos < W + 33; pos++) {
      cache.append(0, pos, normals(d, next), normals(d, next));
      if (attendEachStep) cache.attend(0, q, out);
    }
    cache.attend(0, q, out);
    return cache.segments(0, 0).pools[0].pages[0].kWords.buffer.byteLength;
  });
  assert.ok(
    sizes[1] <= 2 * sizes[0],
    `memory ${sizes[1]} bytes attending every step, ${sizes[0]} once`,
  );
});

Deno.test("the WASM exact path stays within 1e-6 of exact f64 attention over long pages and windows", () => {
  // one f32 sum of the values over a 512-token page, or a window of thousands, once drifted to
  // 1.4e-6 (page) and 2.7e-6 (window) of f64 attention; the kernel adds f32 sums of 128 tokens into
  // f64. Checked against f64 attention over the fp16-rounded keys and values, not against the TS
  // backend, which takes the kernel's own f32 steps (and agrees with it exactly)
  const d = 64, H = 4;
  const next = rng(83);
  const half = (x: number) => f16BitsToF32(f32ToF16Bits(x));
  for (const [pageTokens, recentWindow, T] of [[512, 0, 512], [32, 4096, 4096]]) {
    const shape = { nLayers: 1, nHeads: H, nKvHeads: 1, headDim: d, maxSeqLen: T };
    const policy = uniformPolicy({
      keyFormat: "fp16",
      valueFormat: "fp16",
      recentWindow,
      pageTokens,
    });
    for (let trial = 0; trial < 3; trial++) {
      const wasm = new MixedPrecisionKVCache(shape, policy, { backend: "wasm", integerDot: false });
      // unit keys spread attention over many tokens; values in [0.5, 1.5] do not cancel
      const keys: Float32Array[] = [], values: Float32Array[] = [];
      for (let pos = 0; pos < T; pos++) {
        const k = Float32Array.from({ length: d }, () => next() * 2 - 1);
        const v = Float32Array.from({ length: d }, () => 0.5 + next());
        wasm.append(0, pos, k, v);
        keys.push(k.map(half));
        values.push(v.map(half));
      }
      const q = Float32Array.from({ length: H * d }, () => next() * 2 - 1);
      const b = new Float32Array(H * d);
      wasm.attend(0, q, b);
      let worst = 0;
      for (let h = 0; h < H; h++) {
        const s = keys.map((k) =>
          k.reduce((acc, x, i) => acc + q[h * d + i] * x, 0) / Math.sqrt(d)
        );
        const m = Math.max(...s), w = s.map((x) => Math.exp(x - m));
        const l = w.reduce((acc, x) => acc + x, 0);
        for (let i = 0; i < d; i++) {
          const want = w.reduce((acc, x, t) => acc + x * values[t][i], 0) / l;
          worst = Math.max(worst, Math.abs(b[h * d + i] - want) / Math.abs(want));
        }
      }
      assert.ok(worst <= 1e-6, `pages of ${pageTokens}, window ${recentWindow}: ${worst}`);
    }
  }
});

Deno.test("WASM window scores credit the top token exactly 1 however large the query", () => {
  // scores were f64(f32 dot)·(1/√d) while the softmax's max was f32(f32 dot · f32(1/√d)): e^{s−m}
  // of the top token was 1.06 at |q| = 1e6 and Infinity from 1e9, which moved tokens to other tiers
  const d = 8;
  const policy = tieredPolicy({
    label: "t",
    recentWindow: 4,
    pageTokens: 8,
    tiers: [[[
      { minScore: 0.5, keyFormat: "fp16", valueFormat: "fp16" },
      { minScore: 0, keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" },
    ]]],
  });
  for (const scale of [1, 1e6, 1e9, 2 ** 64]) {
    for (const backend of ["ts", "wasm"] as const) {
      const cache = new MixedPrecisionKVCache(
        { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: d, maxSeqLen: 16 },
        policy,
        { backend },
      );
      cache.append(
        0,
        0,
        Float32Array.from({ length: d }, (_, i) => 0.3 + 0.1 * i),
        new Float32Array(d).fill(1),
      );
      cache.attend(0, new Float32Array(d).fill(scale), new Float32Array(d));
      assert.equal(cache.windowScores(0, 0)[0], 1, `${backend} |q| ${scale}`);
    }
  }
});

/** Pages of 8 tokens and a window (of `window` tokens) all in one format. */
function allIn(format: string, window: number): CachePolicy {
  return uniformPolicy({
    keyFormat: format,
    valueFormat: format,
    windowFormat: format,
    recentWindow: window,
    pageTokens: 8,
  });
}

/**
 * Runs every finite value of an unscaled float format through a WASM page (and a window of that
 * format) holding one token: weight 1, so the output is the token's value as the kernel decodes it
 * (asm/assembly/attention.ts decodes these rows assuming finite values: _finiteHalfRow, _finiteFp8).
 */
function everyValueBack(format: string, values: number[]): void {
  const d = 64, shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: d, maxSeqLen: 8 };
  const random = rng(7);
  const k = new Float32Array(d), v = new Float32Array(d), q = new Float32Array(2 * d);
  const out = new Float32Array(2 * d);
  for (const window of [0, 4]) {
    const cache = new MixedPrecisionKVCache(shape, allIn(format, window), { backend: "wasm" });
    for (let at = 0; at < values.length; at += d) {
      for (let i = 0; i < d; i++) {
        v[i] = values[(at + i) % values.length];
        k[i] = values[Math.floor(random() * values.length)];
      }
      for (let i = 0; i < 2 * d; i++) q[i] = random() - 0.5;
      cache.reset();
      cache.append(0, 0, k, v);
      cache.attend(0, q, out);
      for (let i = 0; i < 2 * d; i++) {
        if (out[i] !== v[i % d]) {
          assert.fail(`${format}, window ${window}: ${v[i % d]} came back as ${out[i]}`);
        }
      }
    }
  }
}

Deno.test("every finite fp16, bf16 and fp8 value comes back exactly from a WASM page or window", () => {
  const fp16: number[] = [], bf16: number[] = [], e4m3: number[] = [], e5m2: number[] = [];
  for (let h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) !== 0x7c00) fp16.push(f16BitsToF32(h));
    // bf16 within fp16 headers' range, which every value stored beside them keeps to
    const b = bf16BitsToF32(h);
    if (Math.abs(b) <= 65280) bf16.push(b);
  }
  for (let c = 0; c < 256; c++) {
    if ((c & 0x7f) !== 0x7f) e4m3.push(fp8BitsToF32(c, "e4m3"));
    if ((c & 0x7c) !== 0x7c) e5m2.push(fp8BitsToF32(c, "e5m2"));
  }
  // subnormals and both zeros included
  assert.deepEqual([fp16.length, e4m3.length, e5m2.length], [63488, 254, 248]);
  everyValueBack("fp16", fp16);
  everyValueBack("bf16", bf16);
  everyValueBack("fp8e4m3", e4m3);
  everyValueBack("fp8e5m2", e5m2);
});

Deno.test("every code of int8s and scaled fp8 groups attends alike in TS and WASM, subnormal scales too", () => {
  // each group's first element sets its scale s (fmax·s), the others are codes·s: every finite
  // code meets the kernel's group decoders (asm/assembly/attention.ts _decodeGroup, _finiteFp8)
  const d = 32, G = 16;
  for (const format of ["fp8e4m3-g16-token", "fp8e5m2-g16-token", "int8s-g16-token"]) {
    const kind = format.startsWith("fp8e4m3") ? "e4m3" : format.startsWith("fp8e5m2") ? "e5m2" : "";
    const fmax = kind === "e4m3" ? 448 : kind === "e5m2" ? 57344 : 127;
    const codes: number[] = [];
    if (kind === "") { for (let q = -127; q <= 127; q++) codes.push(q); }
    else {
      for (let c = 0; c < 256; c++) {
        if (kind === "e4m3" ? (c & 0x7f) !== 0x7f : (c & 0x7c) !== 0x7c) {
          codes.push(fp8BitsToF32(c, kind));
        }
      }
    }
    for (const s of [2 ** -24, 3 * 2 ** -24, 2 ** -15, 0.5, 1.5, 146]) {
      if (fmax * s > 65504) continue;
      for (const keyFormat of [format, format.replace("token", "channel")]) {
        const shape = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: d, maxSeqLen: 32 };
        const policy = () =>
          uniformPolicy({ keyFormat, valueFormat: format, pageTokens: 16, recentWindow: 0 });
        const c = pair(shape, policy, false);
        const a = new Float32Array(4 * d), b = new Float32Array(4 * d);
        for (let at = 0; at < codes.length; at += 32 * (G - 1)) {
          c.ts.reset();
          c.wasm.reset();
          for (let t = 0; t < 32; t++) {
            const x = new Float32Array(d);
            for (let g = 0; g < d / G; g++) {
              x[g * G] = fmax * s;
              for (let i = 1; i < G; i++) {
                x[g * G + i] = Math.fround(
                  codes[(at + (t * 2 + g) * (G - 1) + i - 1) % codes.length] * s,
                );
              }
            }
            c.ts.append(0, t, x, x);
            c.wasm.append(0, t, x, x);
          }
          const q = Float32Array.from({ length: 4 * d }, (_, i) => Math.sin(7 * i) / (fmax * s));
          c.ts.attend(0, q, a);
          c.wasm.attend(0, q, b);
          for (let i = 0; i < a.length; i++) {
            if (!Object.is(a[i], b[i])) {
              assert.fail(`${keyFormat}/${format} at s = ${s}: output ${i} ${b[i]}, TS ${a[i]}`);
            }
          }
        }
      }
    }
  }
});

Deno.test("every finite fp16 and bf16 key scores alike in TS and WASM, four query heads per KV head", () => {
  // keys move the scores (a one-token cache would hide them): three tokens per call, every finite
  // half as some key element, scored by the fused half-row loop (asm/assembly/attention.ts
  // _score4x2 with half rows) against the TS reference's f32 steps
  const d = 64, T = 3, shape = { nLayers: 1, nHeads: 4, nKvHeads: 1, headDim: d, maxSeqLen: 8 };
  const random = rng(11);
  for (const format of ["fp16", "bf16"]) {
    const values: number[] = [];
    for (let h = 0; h < 0x10000; h++) {
      const x = format === "fp16" ? f16BitsToF32(h) : bf16BitsToF32(h);
      if (Number.isFinite(x) && Math.abs(x) <= 65280) values.push(x);
    }
    for (const window of [0, 4]) {
      const c = pair(shape, () => allIn(format, window), false);
      const a = new Float32Array(4 * d), b = new Float32Array(4 * d);
      const q = new Float32Array(4 * d), v = new Float32Array(d);
      for (let at = 0; at < values.length; at += T * d) {
        c.ts.reset();
        c.wasm.reset();
        for (let t = 0; t < T; t++) {
          const k = Float32Array.from(
            { length: d },
            (_, i) => values[(at + t * d + i) % values.length],
          );
          for (let i = 0; i < d; i++) v[i] = random() - 0.5;
          c.ts.append(0, t, k, v);
          c.wasm.append(0, t, k, v);
        }
        // scores of order one: q scaled by the keys' largest element
        const top = Math.max(...values.slice(at, at + T * d).map(Math.abs), 1e-12);
        for (let i = 0; i < q.length; i++) q[i] = Math.fround((random() - 0.5) / top);
        c.ts.attend(0, q, a);
        c.wasm.attend(0, q, b);
        for (let i = 0; i < a.length; i++) {
          if (!Object.is(a[i], b[i])) {
            assert.fail(
              `${format}, window ${window}, keys from ${at}: output ${i} ${b[i]}, TS ${a[i]}`,
            );
          }
        }
      }
    }
  }
});
