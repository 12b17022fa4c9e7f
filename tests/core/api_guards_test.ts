// Guards at the entry of the tensor kernels, generateGreedy and RecordingKVCache: sizes, kinds and
// aliasing that used to give NaN, a silent no-op, wrong values or a TypeError/RangeError (from a
// review of input handling). Each case also checks that the refused call changed nothing.
import assert from "node:assert/strict";
import {
  argmax,
  attention,
  cacheShape,
  CapacityError,
  Float32KVCache,
  generateGreedy,
  InvalidValueError,
  matmul,
  matvec,
  RecordingKVCache,
  rmsnorm,
  Rope,
  ropeTable,
  ShapeError,
  siluGate,
  softmax,
  Transformer,
} from "../../mod.ts";
import { loadFixture } from "../_fixtures.ts";

// deno-lint-ignore no-explicit-any
const named = (cls: new (...a: any[]) => Error, re: RegExp) => (e: unknown) =>
  e instanceof cls && re.test((e as Error).message);
const f32 = (...v: number[]) => Float32Array.from(v);
const never = <T>(v: unknown) => v as T;

Deno.test("matvec() refuses sizes that are not integers ≥ 0, leaving out unchanged", () => {
  const cases: [number[], number, number][] = [
    [[1, 0, 0], 1.5, 2], // read past row 1 as NaN: [1, NaN]
    [[1, 0, 0, 1], 2, 1.5], // the same through cols
    [[1, 0, 0, 1], NaN, 2], // a silent no-op
    [[1, 0, 0, 1], -1, 2],
    [[1, 0, 0, 1], 2, NaN],
  ];
  for (const [w, rows, cols] of cases) {
    const out = f32(7, 7);
    assert.throws(
      () => matvec(out, f32(1, 2), Float32Array.from(w), rows, cols),
      named(ShapeError, /^matvec of \S+ × \S+: rows and cols must be integers ≥ 0$/),
      `${rows} × ${cols}`,
    );
    assert.deepEqual([...out], [7, 7], `${rows} × ${cols}: out unchanged`);
  }
  assert.throws(
    () => matvec(new Float32Array(2), f32(1, 2), f32(1, 0, 0, 1), never("2"), 2),
    named(ShapeError, /matvec of "2" × 2/),
  );
  // the ordinary product is unchanged, and 0 rows or cols is allowed (empty product)
  const out = new Float32Array(2);
  matvec(out, f32(1, 2), f32(0, 1, 1, 0), 2, 2);
  assert.deepEqual([...out], [2, 1]);
  matvec(out, f32(), f32(), 2, 0);
  assert.deepEqual([...out], [0, 0]);
});

Deno.test("matvec() refuses an out that aliases x (W·x of [1, 2] read back as [2, 2])", () => {
  const x = f32(1, 2);
  assert.throws(
    () => matvec(x, x, f32(0, 1, 1, 0), 2, 2),
    named(ShapeError, /matvec of 2 × 2: out must not alias x/),
  );
  assert.deepEqual([...x], [1, 2], "x unchanged");
  // disjoint views of one buffer are fine (overlapping ones are refused by matmul only: see its test)
  const buf = f32(1, 2, 3, 0);
  matvec(buf.subarray(2, 4), buf.subarray(0, 2), f32(0, 1, 1, 0), 2, 2);
  assert.deepEqual([...buf], [1, 2, 2, 1]);
});

Deno.test("matmul() names a plain array and checks every row before writing one", () => {
  const out = f32(7, 7);
  assert.throws(
    () => matmul(out, never([1, 2]), f32(1, 0, 0, 1), 1, 2, 2),
    named(ShapeError, /matmul: x must be a Float32Array, got Array/),
  );
  // x holds one row of two: matvec refused row 1 only after row 0 was written
  const big = f32(7, 7, 7, 7);
  assert.throws(
    () => matmul(big, f32(1, 2), f32(1, 0, 0, 1), 2, 2, 2),
    named(ShapeError, /matmul of 2 × \(2 × 2\): out has 4, x 2, w 4 elements/),
  );
  assert.deepEqual([...big], [7, 7, 7, 7], "no row written");
  assert.throws(
    () => matmul(big, f32(1, 2, 3, 4), f32(1, 0, 0, 1), 1.5, 2, 2),
    named(ShapeError, /n, rows and cols must be integers ≥ 0/),
  );
  assert.throws(
    () => matmul(big, big, f32(1, 0, 0, 1), 2, 2, 2),
    named(ShapeError, /out must not alias x/),
  );
  // views of one buffer: out's row 0 would overwrite x's row 1 before it is read
  const buf = f32(1, 2, 3, 4, 0, 0);
  assert.throws(
    () => matmul(buf.subarray(2), buf.subarray(0, 4), f32(1, 0, 0, 1), 2, 2, 2),
    named(ShapeError, /out must not alias x/),
  );
  assert.deepEqual([...buf], [1, 2, 3, 4, 0, 0], "nothing written");
  matmul(buf.subarray(4), buf.subarray(0, 2), f32(0, 1, 1, 0), 1, 2, 2);
  assert.deepEqual([...buf], [1, 2, 3, 4, 2, 1], "disjoint views are fine");
  matmul(big, f32(1, 2, 3, 4), f32(0, 1, 1, 0), 2, 2, 2);
  assert.deepEqual([...big], [2, 1, 4, 3]);
});

Deno.test("rmsnorm() and siluGate() refuse a short weight, out or h3 (were NaN or dropped writes)", () => {
  const out = f32(7, 7, 7);
  assert.throws(
    () => rmsnorm(out, f32(1, 2, 3), f32(1, 1)),
    named(ShapeError, /rmsnorm of 3 elements: out has 3, weight 2 elements/),
  );
  assert.deepEqual([...out], [7, 7, 7]);
  assert.throws(
    () => rmsnorm(f32(7, 7), f32(1, 2, 3), f32(1, 1, 1)),
    named(ShapeError, /rmsnorm of 3 elements: out has 2, weight 3 elements/),
  );
  // in place stays allowed
  const x = f32(3, 4);
  rmsnorm(x, x, f32(1, 1));
  const r = 1 / Math.sqrt(Math.fround(12.5 + 1e-5));
  assert.deepEqual([...x], [Math.fround(3 * r), Math.fround(4 * r)]);
  const h1 = f32(1, 2);
  assert.throws(() => siluGate(h1, f32(1)), named(ShapeError, /siluGate: h1 has 2 elements, h3 1/));
  assert.deepEqual([...h1], [1, 2]);
});

Deno.test("softmax() refuses a NaN, +Infinity or all −Infinity (was all NaN), x unchanged", () => {
  const cases: [number[], RegExp, number | undefined][] = [
    [[-Infinity, -Infinity], /all 2 values are -Infinity/, undefined],
    [[Infinity, 1], /x\[0\] is Infinity/, 0],
    [[1, Infinity, Infinity], /x\[1\] is Infinity/, 1],
    [[1, NaN], /x\[1\] is NaN/, 1],
    [[NaN, 1], /x\[0\] is NaN/, 0],
  ];
  for (const [v, re, index] of cases) {
    const x = Float32Array.from(v);
    assert.throws(
      () => softmax(x),
      (e) => named(InvalidValueError, re)(e) && (e as InvalidValueError).index === index,
      String(v),
    );
    assert.deepEqual([...x], v.map(Math.fround), `${v}: unchanged`);
  }
  // −Infinity beside a finite value is probability 0, as before
  const x = f32(-Infinity, 0);
  softmax(x);
  assert.deepEqual([...x], [0, 1]);
});

Deno.test("attention() refuses n or d < 1 and short arrays (were zeros, NaN or a no-op)", () => {
  const q = f32(1, 1), kv = [1, 0, 0, 1];
  const cases: [() => void, RegExp][] = [
    [
      () => attention(q, [], [], 0, 2, new Float32Array(2), out),
      /n = 0 positions, d = 2, qOffset 0: expected integers n, d ≥ 1/,
    ],
    [() => attention(q, kv, kv, 2, 0, new Float32Array(2), out), /d = 0/],
    [() => attention(q, kv, kv, 2, NaN, new Float32Array(2), out), /d = NaN/],
    [() => attention(q, kv, kv, 1, 2, new Float32Array(1), out, -1), /qOffset -1/],
    [
      () => attention(q, [1, 1], kv, 2, 2, new Float32Array(2), out),
      /attention over 2 × 2: q has 2 elements \(query at 0\), keys 2, values 4, weights 2, out 2/,
    ],
    [() => attention(q, kv, [1], 2, 2, new Float32Array(2), out), /values 1,/],
    [() => attention(q, kv, kv, 2, 2, new Float32Array(1), out), /weights 1,/],
    [() => attention(q, kv, kv, 2, 2, new Float32Array(2), f32(5)), /out 1$/],
    [() => attention(q, kv, kv, 2, 2, new Float32Array(2), out, 1), /query at 1/],
  ];
  const out = f32(5, 5);
  for (const [call, re] of cases) {
    assert.throws(call, named(ShapeError, re), String(re));
    assert.deepEqual([...out], [5, 5], `${re}: out unchanged`);
  }
  // unchanged result on valid input: equal scores, the mean of the values
  const w = new Float32Array(2);
  attention(f32(0, 0), kv, kv, 2, 2, w, out);
  assert.deepEqual([...w], [0.5, 0.5]);
  assert.deepEqual([...out], [0.5, 0.5]);
});

Deno.test("ropeTable() and Rope quote a string size and refuse huge tables with CapacityError", () => {
  assert.throws(
    () => ropeTable(never("4"), 2),
    named(ShapeError, /even head dimension ≥ 2, got "4"/),
  );
  assert.throws(() => ropeTable(2, never("8")), named(ShapeError, /RoPE positions "8"/));
  assert.throws(
    () => ropeTable(2, 2, never("10000")),
    named(InvalidValueError, /RoPE base "10000"/),
  );
  // each was a RangeError from the allocation
  assert.throws(
    () => new Rope(2, 1e12),
    named(CapacityError, /1000000000000 positions × 1 .* 4000000000000 bytes .* 2147483647 bytes/),
  );
  assert.throws(() => ropeTable(2, 2 ** 33), named(CapacityError, /34359738368 bytes/));
  assert.throws(() => ropeTable(8, 2 ** 27), named(CapacityError, /2147483648 bytes/));
  assert.equal(ropeTable(4, 3).cos.length, 6);
});

Deno.test("argmax() names what is not an array (was a TypeError)", () => {
  for (const x of [undefined, null, 3]) {
    assert.throws(
      () => argmax(never(x)),
      named(InvalidValueError, new RegExp(`argmax of ${x === null ? "null" : typeof x}, expected`)),
    );
  }
  assert.equal(argmax(f32(1, 3, 2)), 1);
});

Deno.test("generateGreedy() names a prompt, cache or steps of the wrong kind (were TypeErrors)", async () => {
  const { model } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  await model.forward(1, 0, cache);
  const I = InvalidValueError;
  // deno-lint-ignore no-explicit-any
  const cases: [unknown, unknown, unknown, new (...a: any[]) => Error, RegExp][] = [
    [cache, "abc", 3, I, /^prompt is "abc", expected an array of token ids$/],
    [cache, 5, 3, I, /^prompt is 5, expected an array of token ids$/],
    [cache, undefined, 3, I, /^prompt is undefined, expected/],
    [undefined, [1], 3, I, /^cache is undefined, expected a KVCache$/],
    [{}, [1], 3, I, /^cache is Object, expected a KVCache$/],
    [cache, [1], "3", I, /^steps is "3", expected an integer ≥ 0$/],
    [cache, [1], [1], I, /^steps is Array, expected an integer ≥ 0$/],
    [cache, 3, [1], I, /^prompt is 3, expected an array of token ids$/], // swapped
    [cache, ["1"], 3, ShapeError, /^prompt\[0\] is token id "1", out of range \[0, 512\)$/],
  ];
  for (const [c, prompt, steps, cls, re] of cases) {
    await assert.rejects(
      () => generateGreedy(model, never(c), never(prompt), never(steps)),
      named(cls, re),
      String(re),
    );
  }
  await assert.rejects(
    () => generateGreedy(never(undefined), cache, [1], 3),
    named(InvalidValueError, /^model is undefined, expected a Transformer$/),
  );
  assert.equal(cache.length(0), 1, "no refused call reset the cache");
});

Deno.test("generateGreedy() with steps = 0 returns [] and leaves the cache as it was", async () => {
  const { model, weights } = await loadFixture();
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  await model.prefill([1, 403], 0, cache);
  assert.deepEqual(await generateGreedy(model, cache, [1, 2, 3], 0), []);
  assert.equal(cache.length(0), 2, "not reset, nothing prefilled");
  // a model whose logits are NaN: steps = 0 computes nothing, so nothing to refuse
  const classifier = weights.classifier.slice().fill(NaN);
  const broken = new Transformer({ ...weights, classifier });
  assert.deepEqual(await generateGreedy(broken, cache, [1], 0), []);
  await assert.rejects(() => generateGreedy(broken, cache, [1], 1), InvalidValueError);
});

Deno.test("RecordingKVCache refuses queries too large to allocate with CapacityError (was a RangeError)", () => {
  const shape = { nLayers: 1, nHeads: 2 ** 16, nKvHeads: 1, headDim: 256, maxSeqLen: 2 ** 16 };
  // Float32KVCache accepts this shape (keys and values of 64 MiB each); the queries are 2^16 × larger
  assert.throws(
    () => new RecordingKVCache(shape),
    named(
      CapacityError,
      /RecordingKVCache of shape .*: its queries of one layer would take 4398046511104 bytes/,
    ),
  );
  // queries of each layer fit, all layers together do not
  assert.throws(
    () =>
      new RecordingKVCache({ nLayers: 8, nHeads: 64, nKvHeads: 1, headDim: 256, maxSeqLen: 8192 }),
    named(CapacityError, /would allocate \d+ bytes up front \(.*queries of one layer 4294967296/),
  );
  // a dimension that is not an integer is named as a shape error, not measured as bytes first
  assert.throws(
    () => new RecordingKVCache({ ...shape, nHeads: 2 ** 40 + 0.5 }),
    named(ShapeError, /nHeads/),
  );
  const small = new RecordingKVCache({
    nLayers: 2,
    nHeads: 2,
    nKvHeads: 1,
    headDim: 2,
    maxSeqLen: 4,
  });
  assert.equal(small.queries(1).length, 16);
});

Deno.test("attention() into f32 weights takes the max of the scores as stored", () => {
  // the max came from the unrounded f64 scores: e^{f32(s) − s} of a score near 1e10 overflowed,
  // so one cached position (whose weight must be 1) gave Infinity, 0 or NaN
  for (const magnitude of [1e4, 1e5, 3e5, 1e6]) {
    const q = Float32Array.of(magnitude, magnitude / 7);
    const keys = Float32Array.of(magnitude, magnitude / 3);
    const out = new Float32Array(2), weights = new Float32Array(1);
    attention(q, keys, Float32Array.of(1, 2), 1, 2, weights, out);
    assert.deepEqual([...weights, ...out], [1, 1, 2], `|q|, |k| ~ ${magnitude}`);
  }
  // two positions: the f32 and f64 weight arrays pick the same token
  const q = Float32Array.of(1e6, 1e6 / 7), keys = Float32Array.of(1e6, 1e6 / 3, 1e6, 1e6 / 3 + 1);
  const values = Float32Array.of(1, 2, 3, 4);
  const w32 = new Float32Array(2), o32 = new Float32Array(2);
  attention(q, keys, values, 2, 2, w32, o32);
  assert.deepEqual([...w32, ...o32], [0, 1, 3, 4]);
});
