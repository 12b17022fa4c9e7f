// Channel-axis key pages stored before RoPE (policy.ropeBase): ts ⇄ wasm, an independent
// reference, what it buys on rotating keys, accounting, serialisation and bad input.
import assert from "node:assert/strict";
import { formatNames, getFormat } from "../../../codecs/format.ts";
import { KeyRope } from "../../../core/cache/key_rope.ts";
import { MixedPrecisionKVCache } from "../../../core/cache/mixed_cache.ts";
import { type CachePolicy, tieredPolicy, uniformPolicy } from "../../../core/cache/policy.ts";
import { crc32, loadCache, saveCache } from "../../../core/cache/serialize.ts";
import { CorruptDataError, InvalidValueError, ShapeError } from "../../../core/errors.ts";
import { quantizeHead } from "../../../core/quantize_head.ts";
import { ropeTable } from "../../../core/tensor.ts";
import { cpuPolicyOf, gpuPolicyFor, withDefaults } from "../../../gpu/cache_policy.ts";
import { normals, relError, rng } from "../../_fixtures.ts";

const BASE = 10000;

/** Keys whose pre-RoPE channels hold steady (a per-channel offset plus small noise), then RoPE. */
function rotatingKeys(T: number, H: number, d: number, next: () => number): Float32Array[] {
  const offset = normals(H * d, next).map((x) => 2 * x);
  const { cos, sin } = ropeTable(d, T, BASE);
  const half = d / 2;
  return Array.from({ length: T }, (_, t) => {
    const k = offset.map((o, i) => o + 0.1 * normals(1, next)[0] + 0 * i);
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < half; i++) {
        const a = k[h * d + 2 * i], b = k[h * d + 2 * i + 1];
        const c = cos[t * half + i], s = sin[t * half + i];
        k[h * d + 2 * i] = a * c - b * s;
        k[h * d + 2 * i + 1] = a * s + b * c;
      }
    }
    return k;
  });
}

/** Exact attention in f64 of every query head over keys K and values V (token-major per head). */
function exactAttention(
  q: Float32Array,
  K: Float32Array[],
  V: Float32Array[],
  hq: number,
  d: number,
): Float64Array {
  const nHeads = q.length / d, out = new Float64Array(q.length);
  for (let h = 0; h < nHeads; h++) {
    const kv = Math.floor(h / hq);
    const s = K.map((k) => {
      let a = 0;
      for (let i = 0; i < d; i++) a += q[h * d + i] * k[kv * d + i];
      return a / Math.sqrt(d);
    });
    const m = Math.max(...s);
    const w = s.map((x) => Math.exp(x - m));
    const z = w.reduce((a, b) => a + b, 0);
    for (let i = 0; i < d; i++) {
      let a = 0;
      for (let t = 0; t < K.length; t++) a += w[t] * V[t][kv * d + i];
      out[h * d + i] = a / z;
    }
  }
  return out;
}

Deno.test("pre-RoPE key pages: ts and wasm agree to 1e-6 for every channel-axis key format", () => {
  const channelFormats = formatNames().filter((f) => getFormat(f).axis === "channel");
  assert.ok(channelFormats.length >= 6, `channel formats: ${channelFormats}`);
  for (const [hq, d] of [[4, 8], [1, 16], [6, 32]] as const) {
    for (const keyFormat of channelFormats) {
      const G = getFormat(keyFormat).group;
      const shape = { nLayers: 1, nHeads: 2 * hq, nKvHeads: 2, headDim: d, maxSeqLen: 320 };
      const policy = (): CachePolicy =>
        uniformPolicy({
          keyFormat,
          valueFormat: "int4-g8-token",
          sinkTokens: 3,
          recentWindow: 5,
          pageTokens: Math.max(64, G),
          ropeBase: BASE,
        });
      const ts = new MixedPrecisionKVCache(shape, policy());
      const wasm = new MixedPrecisionKVCache(shape, policy(), { backend: "wasm" });
      const next = rng(hq * 100 + d);
      const K = rotatingKeys(300, 2, d, next);
      const outTs = new Float32Array(2 * hq * d), outWasm = new Float32Array(2 * hq * d);
      for (let t = 0; t < 300; t++) {
        const v = normals(2 * d, next);
        ts.append(0, t, K[t], v);
        wasm.append(0, t, K[t], v);
        if (![1, 40, 72, 130, 300].includes(t + 1)) continue;
        const q = normals(2 * hq * d, next);
        ts.attend(0, q, outTs);
        wasm.attend(0, q, outWasm);
        const err = relError(outWasm, outTs);
        assert.ok(err <= 1e-6, `${keyFormat} hq ${hq} d ${d} T=${t + 1}: ${err}`);
      }
      assert.ok(ts.segments(0, 0).pools[0].preRope, `${keyFormat}: pages hold pre-RoPE keys`);
    }
  }
});

Deno.test("pre-RoPE key pages match quantizing the un-rotated keys and rotating them back", () => {
  const d = 8, hq = 2, T = 150, S = 2, W = 4, G = 32;
  const shape = { nLayers: 1, nHeads: 2 * hq, nKvHeads: 2, headDim: d, maxSeqLen: 256 };
  const policy = uniformPolicy({
    keyFormat: "int3-g32-channel",
    valueFormat: "fp32",
    windowFormat: "fp32",
    sinkTokens: S,
    recentWindow: W,
    ropeBase: BASE,
  });
  const next = rng(5);
  const K = rotatingKeys(T, 2, d, next), V = K.map(() => normals(2 * d, next));
  const cache = new MixedPrecisionKVCache(shape, policy);
  for (let t = 0; t < T; t++) cache.append(0, t, K[t], V[t]);
  // independently: which tokens are paged (whole groups after the sinks, the ring keeps the rest)
  const ring = W + G, paged = Math.floor((T - S - W) / G) * G;
  assert.equal(T - S - paged < ring, true);
  const { cos, sin } = ropeTable(d, T, BASE);
  const expectK = K.map((k) => k.slice());
  for (let h = 0; h < 2; h++) {
    for (let g = 0; g < paged / G; g++) {
      const x = new Float32Array(G * d);
      for (let t = 0; t < G; t++) {
        const p = S + g * G + t;
        for (let i = 0; i < d / 2; i++) {
          const a = K[p][h * d + 2 * i], b = K[p][h * d + 2 * i + 1];
          const c = cos[p * 4 + i], s = sin[p * 4 + i];
          x[t * d + 2 * i] = a * c + b * s;
          x[t * d + 2 * i + 1] = -a * s + b * c;
        }
      }
      const back = quantizeHead(x, G, d, "int3-g32-channel").decoded;
      for (let t = 0; t < G; t++) {
        const p = S + g * G + t;
        for (let i = 0; i < d / 2; i++) {
          const a = back[t * d + 2 * i], b = back[t * d + 2 * i + 1];
          const c = cos[p * 4 + i], s = sin[p * 4 + i];
          expectK[p][h * d + 2 * i] = a * c - b * s;
          expectK[p][h * d + 2 * i + 1] = a * s + b * c;
        }
      }
    }
  }
  const q = normals(2 * hq * d, next), out = new Float32Array(2 * hq * d);
  cache.attend(0, q, out);
  const err = relError(out, exactAttention(q, expectK, V, hq, d));
  assert.ok(err < 1e-5, `against the reference: ${err}`);
  // and the rotation mattered: quantizing the rotated keys instead differs by far more
  const plain = new MixedPrecisionKVCache(shape, { ...policy, ropeBase: undefined });
  for (let t = 0; t < T; t++) plain.append(0, t, K[t], V[t]);
  const outPlain = new Float32Array(2 * hq * d);
  plain.attend(0, q, outPlain);
  assert.ok(relError(outPlain, out) > 100 * err, "keys after RoPE quantize differently");
});

Deno.test("pre-RoPE keys lower the attention error of per-channel codes on rotating keys", () => {
  const d = 16, hq = 4, T = 300;
  const shape = { nLayers: 1, nHeads: 2 * hq, nKvHeads: 2, headDim: d, maxSeqLen: 512 };
  const next = rng(11);
  const K = rotatingKeys(T, 2, d, next), V = K.map(() => normals(2 * d, next));
  const q = normals(2 * hq * d, next);
  const exact = exactAttention(q, K, V, hq, d);
  for (const keyFormat of ["int2-g32-channel", "int4-g32-channel"]) {
    const errors = [undefined, BASE].map((ropeBase) => {
      const c = new MixedPrecisionKVCache(
        shape,
        uniformPolicy({ keyFormat, valueFormat: "fp16", ropeBase }),
        { backend: "wasm" },
      );
      for (let t = 0; t < T; t++) c.append(0, t, K[t], V[t]);
      const out = new Float32Array(2 * hq * d);
      c.attend(0, q, out);
      return relError(out, exact);
    });
    assert.ok(
      errors[1] < errors[0] / 3,
      `${keyFormat}: after RoPE ${errors[0]}, before ${errors[1]}`,
    );
  }
});

Deno.test("pre-RoPE key pages count their key groups' positions and serialise them", () => {
  const d = 8, shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: d, maxSeqLen: 200 };
  const tiers = [0, 1].map(() =>
    [0, 1].map(() => [
      { minScore: 0.05, keyFormat: "int4-g32-channel", valueFormat: "int4-g32-channel" },
      { minScore: 0, keyFormat: "int2-g8-token", valueFormat: "int2-g32-channel" },
    ])
  );
  const policy = tieredPolicy({
    label: "t",
    tiers,
    sinkTokens: 1,
    recentWindow: 3,
    ropeBase: BASE,
  });
  for (const backend of ["ts", "wasm"] as const) {
    const cache = new MixedPrecisionKVCache(shape, policy, { backend });
    const next = rng(3);
    for (let t = 0; t < 170; t++) {
      for (let l = 0; l < 2; l++) {
        cache.append(l, t, normals(2 * d, next), normals(2 * d, next));
        cache.attend(l, normals(4 * d, next), new Float32Array(4 * d)); // scores route the tiers
      }
    }
    const pools = cache.segments(0, 0).pools;
    const pre = pools.filter((p) => p.preRope), post = pools.filter((p) => !p.preRope);
    assert.ok(pre.length === 1 && post.length === 1, `${backend}: both tiers used`);
    assert.equal(post[0].pages[0].starts, undefined, "token-axis keys stay as received");
    const parts = cache.memoryBreakdown();
    const sum = Object.values(parts).reduce((a, b) => a + b, 0);
    assert.equal(sum, cache.memory().bytes);
    const bytes = saveCache(cache);
    const copy = loadCache(bytes, { backend });
    const copied = copy.segments(0, 0).pools.find((p) => p.preRope)!;
    assert.deepEqual(copied.pages.map((p) => p.starts), pre[0].pages.map((p) => p.starts));
    assert.ok(pre[0].pages[0].starts!.every((p) => p >= 1), "positions after the sink");
    const q = normals(4 * d, next), a = new Float32Array(4 * d), b = new Float32Array(4 * d);
    cache.attend(1, q, a);
    copy.attend(1, q, b);
    assert.deepEqual(b, a);
    // a position outside the rope table, with a valid checksum, is named
    const name = "key positions";
    const bad = bytes.slice();
    const at = findKeyPositions(copy, bytes);
    new DataView(bad.buffer).setInt32(at, 1_000_000, true);
    const n = 4 * (policy.pageTokens / 32);
    new DataView(bad.buffer).setUint32(at + n, crc32(bad.subarray(at, at + n)), true);
    assert.throws(
      () => loadCache(bad),
      (e) =>
        e instanceof CorruptDataError && e.message.includes(name) && e.message.includes("outside"),
    );
  }
});

/** Byte offset of the first key-positions block of a saved cache (walks the blocks as saved). */
function findKeyPositions(cache: MixedPrecisionKVCache, bytes: Uint8Array): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  let o = 12 + Math.ceil(view.getUint32(8, true) / 4) * 4 + 4;
  for (let l = 0; l < cache.shape.nLayers; l++) {
    for (let h = 0; h < cache.shape.nKvHeads; h++) {
      const s = cache.segments(l, h);
      for (const b of [s.sinkK, s.sinkV, s.windowK, s.windowV, cache.windowScores(l, h)]) {
        o += b.byteLength + 4;
      }
      for (const pool of s.pools) {
        for (const page of pool.pages) {
          o += page.kWords.byteLength + 4 + page.vWords.byteLength + 4;
          if (page.starts) return o;
        }
      }
    }
  }
  throw new Error("no key positions block");
}

Deno.test("ropeBase: bad values and shapes are named; the GPU cache's policy keeps it", () => {
  for (const ropeBase of [0, -1, NaN, Infinity]) {
    assert.throws(
      () => uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16", ropeBase }),
      (e) => e instanceof InvalidValueError && e.message.includes("ropeBase"),
    );
  }
  const odd = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 3, maxSeqLen: 8 };
  assert.throws(
    () =>
      new MixedPrecisionKVCache(
        odd,
        uniformPolicy({ keyFormat: "fp32", valueFormat: "fp32", ropeBase: BASE }),
      ),
    ShapeError,
  );
  const cpu = uniformPolicy({ keyFormat: "int4-g32-channel", valueFormat: "fp16", ropeBase: BASE });
  const gpu = gpuPolicyFor(cpu);
  assert.ok(typeof gpu !== "string", `${gpu}`);
  assert.equal(gpu.ropeBase, BASE);
  const back = cpuPolicyOf(withDefaults(gpu), { nLayers: 1, nKvHeads: 1 });
  assert.equal(back.ropeBase, BASE);
  const asReceived = gpuPolicyFor(uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" }));
  assert.ok(typeof asReceived !== "string" && !("ropeBase" in asReceived));
  const rope = new KeyRope(4, 16, 3, BASE);
  const x = normals(24, rng(1)), y = x.slice();
  rope.unrotate(y, 6, 3, 5); // groups at positions 5 and 8
  assert.ok(relError(y, x) > 0.01, "the rotation moved the keys");
  // the composed angle is the table's: back by position with the model's own Rope gives y
  const z = x.slice(), table = ropeTable(4, 16, BASE);
  for (let t = 0; t < 6; t++) {
    for (let i = 0; i < 2; i++) {
      const c = table.cos[(5 + t) * 2 + i], s = table.sin[(5 + t) * 2 + i];
      const a = z[t * 4 + 2 * i], b = z[t * 4 + 2 * i + 1];
      z[t * 4 + 2 * i] = a * c + b * s;
      z[t * 4 + 2 * i + 1] = -a * s + b * c;
    }
  }
  assert.ok(relError(y, z) < 1e-6, `against the model's angles: ${relError(y, z)}`);
  rope.rotate(y, 6, 3, Int32Array.of(5, 8));
  assert.ok(relError(y, x) < 1e-6);
});

Deno.test("KeyRope: a query turned back by the group's start meets keys turned by their offset as the full turn does", () => {
  // the reference's copy of the WASM kernel's split (turnQueryBack, rotateByOffset) against the
  // full turn R(p0 + τ) of rotate(): q·R(p0)R(τ)k = (R(−p0)q)·(R(τ)k), up to f32 rounding
  const d = 16, G = 32, next = rng(515);
  const rope = new KeyRope(d, 400, G, BASE);
  const starts = Int32Array.of(96, 352);
  const keys = normals(2 * G * d, next), q = normals(d, next);
  const full = keys.slice(), split = keys.slice();
  rope.rotate(full, 2 * G, G, starts);
  rope.rotateByOffset(split, 2 * G, G);
  const turned = new Float32Array(d);
  let worst = 0, moved = 0;
  for (let t = 0; t < 2 * G; t++) {
    rope.turnQueryBack(q, 0, turned, starts[Math.floor(t / G)]);
    let a = 0, b = 0, plain = 0;
    for (let i = 0; i < d; i++) {
      a += q[i] * full[t * d + i];
      b += turned[i] * split[t * d + i];
      plain += q[i] * split[t * d + i];
    }
    worst = Math.max(worst, Math.abs(a - b));
    moved = Math.max(moved, Math.abs(a - plain));
  }
  assert.ok(worst < 1e-5, `split vs full turn: ${worst}`);
  assert.ok(moved > 0.1, `without the query's turn the scores move: ${moved}`);
});
