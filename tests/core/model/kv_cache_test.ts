import assert from "node:assert/strict";
import { attendHead, CapacityError, Float32KVCache, ShapeError } from "../../../mod.ts";
import { normals, rng } from "../../_fixtures.ts";

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
