import assert from "node:assert/strict";
import {
  attendHead,
  CapacityError,
  Float32KVCache,
  MixedPrecisionKVCache,
  RecordingKVCache,
  ShapeError,
  uniformPolicy,
} from "../../../mod.ts";
import { normals, rng, throwsLike } from "../../_fixtures.ts";

Deno.test("Float32KVCache.attend() equals a direct softmax-weighted sum with GQA", () => {
  const next = rng(7);
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8, maxSeqLen: 16 };
  const cache = new Float32KVCache(shape);
  const ks: Float32Array[] = [], vs: Float32Array[] = [];
  for (let p = 0; p < 11; p++) {
    ks.push(normals(16, next));
    vs.push(normals(16, next));
    cache.append(1, p, ks[p], vs[p]);
  }
  const q = normals(32, next);
  const out = new Float32Array(32);
  cache.attend(1, q, out);
  for (let h = 0; h < 4; h++) {
    const kv = h >> 1;
    const s = ks.map((k) => {
      let d = 0;
      for (let i = 0; i < 8; i++) d += q[h * 8 + i] * k[kv * 8 + i];
      return d / Math.sqrt(8);
    });
    const m = Math.max(...s);
    const e = s.map((x) => Math.exp(x - m));
    const z = e.reduce((a, b) => a + b);
    for (let i = 0; i < 8; i++) {
      const want = e.reduce((a, w, t) => a + (w / z) * vs[t][kv * 8 + i], 0);
      assert.ok(Math.abs(out[h * 8 + i] - want) < 1e-5, `head ${h} elem ${i}`);
    }
  }
  assert.equal(cache.length(1), 11);
  assert.equal(cache.length(0), 0);
});

Deno.test("Float32KVCache.append() rejects bad input and changes nothing", () => {
  const cache = new Float32KVCache({
    nLayers: 1,
    nHeads: 2,
    nKvHeads: 1,
    headDim: 4,
    maxSeqLen: 2,
  });
  const v = Float32Array.of(1, 2, 3, 4);
  assert.throws(() => cache.append(0, 0, new Float32Array(3), v), ShapeError);
  assert.throws(() => cache.append(0, 1, v, v), /out of order: expected 0/);
  // a position of the wrong type is named as what it is, not as the number it prints as
  assert.throws(
    () => cache.append(0, "0" as unknown as number, v, v),
    /position "0" \(string\) appended to layer 0 out of order: expected 0/,
  );
  assert.throws(() => cache.append(1, 0, v, v), /layer 1 out of range/);
  assert.equal(cache.length(0), 0);
  cache.append(0, 0, v, v);
  cache.append(0, 1, v, v);
  assert.throws(() => cache.append(0, 2, v, v), CapacityError);
  assert.throws(
    () => new Float32KVCache({ nLayers: 1, nHeads: 3, nKvHeads: 2, headDim: 4, maxSeqLen: 2 }),
    /multiple/,
  );
});

Deno.test("attendHead() is stable for large scores", () => {
  const q = Float32Array.of(1000, 0),
    keys = Float32Array.of(1000, 0, 999, 0),
    values = Float32Array.of(1, 0, 0, 1);
  const out = new Float32Array(2);
  attendHead(q, keys, values, 2, 2, new Float32Array(2), out);
  assert.ok(Number.isFinite(out[0]) && out[0] > 0.99);
});

Deno.test("Float32KVCache and RecordingKVCache attend over keys near the f32 limit without NaN", () => {
  // scores past f32's 3.4e38 were stored as ±Infinity, and softmax gave e^{Inf − Inf} = NaN
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 4, maxSeqLen: 4 };
  for (const cache of [new Float32KVCache(shape), new RecordingKVCache(shape)]) {
    cache.append(0, 0, Float32Array.of(1e30, 0, 0, 0), Float32Array.of(1, 2, 3, 4));
    cache.append(0, 1, Float32Array.of(-1e30, 0, 0, 0), Float32Array.of(5, 6, 7, 8));
    const out = new Float32Array(4);
    cache.attend(0, Float32Array.of(1e10, 0, 0, 0), out);
    assert.deepEqual([...out], [1, 2, 3, 4], cache.constructor.name);
    cache.attend(0, Float32Array.of(-1e10, 0, 0, 0), out);
    assert.deepEqual([...out], [5, 6, 7, 8], cache.constructor.name);
    // the largest finite f32 key with an ordinary query: one score of 6.8e38 dominates
    cache.append(0, 2, Float32Array.of(3.4e38, 0, 0, 0), Float32Array.of(-1, -2, -3, -4));
    cache.attend(0, Float32Array.of(4, 0, 0, 0), out);
    assert.deepEqual([...out], [-1, -2, -3, -4], cache.constructor.name);
  }
});

Deno.test("a cache shape with a field it does not have is refused by every cache, naming it", () => {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 8 };
  const policy = uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" });
  // a policy's ropeBase on the shape had left keys stored after RoPE without a word
  for (const extra of [{ ropeBase: 10000 }, { maxseqlen: 1 }]) {
    const bad = { ...shape, ...extra };
    const field = JSON.stringify(Object.keys(extra)[0]);
    const make = [
      () => new Float32KVCache(bad),
      () => new RecordingKVCache(bad),
      () => new MixedPrecisionKVCache(bad, policy),
    ];
    for (const run of make) {
      throwsLike(run, ShapeError, new RegExp(`cache shape has unknown field ${field}; the fields`));
    }
  }
});

Deno.test("a layer, KV head or position of the wrong type is a ShapeError that names it", () => {
  // the message itself threw a TypeError: JSON.stringify(0n), or a Symbol in a template
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8, maxSeqLen: 16 };
  const format = "int8-g8-token";
  const mixed = new MixedPrecisionKVCache(
    shape,
    uniformPolicy({ keyFormat: format, valueFormat: format }),
  );
  const kv = normals(16, rng(3));
  const f32 = new Float32KVCache(shape), recording = new RecordingKVCache(shape);
  for (const cache of [f32, recording, mixed]) {
    const name = cache.constructor.name;
    throwsLike(
      () => cache.append(0, 0n as unknown as number, kv, kv),
      ShapeError,
      /position 0n \(bigint\) appended to layer 0 out of order: expected 0/,
    );
    throwsLike(
      () => cache.append(Symbol("l") as unknown as number, 0, kv, kv),
      ShapeError,
      /layer Symbol\(l\) out of range \[0, 2\)/,
    );
    throwsLike(() => cache.length(Symbol() as unknown as number), ShapeError, /layer Symbol\(\)/);
    assert.equal(cache.length(0), 0, name);
  }
  // the mixed cache's per-head accessors, which serialisation uses and mod.ts exports
  const segments = mixed.segments(0, 0);
  const wrong: [() => unknown, RegExp][] = [
    [() => mixed.segments(0, 2), /KV head 2 out of range \[0, 2\)/],
    [() => mixed.segments(2, 0), /layer 2 out of range \[0, 2\)/],
    [() => mixed.segments(-1, 0), /layer -1 out of range/],
    [() => mixed.segments(0, 0.5), /KV head 0.5 out of range/],
    [() => mixed.segments(0, "1" as unknown as number), /KV head "1" out of range/],
    [() => mixed.windowScores(0, 2), /KV head 2 out of range/],
    [() => mixed.windowScores(5, 0), /layer 5 out of range/],
    [() => mixed.restoreSegments(0, 7, segments), /KV head 7 out of range/],
    [() => f32.headOffset(0, Symbol() as unknown as number), /KV head Symbol\(\)/],
    [() => recording.keys(0, -1), /KV head -1 out of range/],
  ];
  for (const [run, message] of wrong) throwsLike(run, ShapeError, message);
});
