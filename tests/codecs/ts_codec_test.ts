import assert from "node:assert/strict";
import type { Codec } from "../../codecs/codec.ts";
import { formatNames, getFormat } from "../../codecs/format.ts";
import { tsCodec } from "../../codecs/ts_codec.ts";
import { CorruptDataError, FormatError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import { DISTRIBUTIONS, normal, rng } from "./_inputs.ts";

/** Checks decode(encode(x)) against errorBound on every element; returns false when x cannot be encoded. */
export function checkRoundTrip(c: Codec, x: Float32Array, what: string): void {
  let block;
  try {
    block = c.encode(x);
  } catch (e) {
    // only unscaled fp8 cannot hold the near-fp16-limit values; the error names a real offender
    assert.ok(e instanceof InvalidValueError, `${what}: ${e}`);
    assert.ok(c.spec.kind.startsWith("fp8") && !c.spec.scaled, `${what}: ${e.message}`);
    assert.ok(Math.abs(x[e.index!]) > 464, `${what}: ${e.message}`);
    block = c.encode(x, { clamp: true });
    const y = new Float32Array(x.length);
    c.decode(block, y);
    assert.ok(
      y.every((v, i) => Math.abs(v) <= c.spec.clampLimit && Math.sign(v) * Math.sign(x[i]) >= 0),
    );
    return;
  }
  assert.equal(block.words.length * 4, c.byteSize(x.length));
  const y = new Float32Array(x.length), bound = new Float32Array(x.length);
  c.decode(block, y);
  c.errorBound(block.words, x.length, bound);
  for (let i = 0; i < x.length; i++) {
    if (!(Math.abs(x[i] - y[i]) <= bound[i])) {
      assert.fail(`${what}: x[${i}] = ${x[i]} decodes to ${y[i]}, bound ${bound[i]}`);
    }
  }
}

Deno.test("TsCodec.decode() stays within errorBound() for every format and distribution", () => {
  const r = rng(31);
  for (const name of formatNames()) {
    const c = tsCodec(name);
    for (const dist of DISTRIBUTIONS) {
      checkRoundTrip(
        c,
        dist.make(r, Math.max(256, 2 * c.spec.group), c.spec.group),
        `${name} ${dist.name}`,
      );
    }
  }
});

Deno.test("TsCodec.errorBound() is half an ulp for floats and s/2 plus slack for integers", () => {
  const x = Float32Array.of(1, 1.0009765625, 3, 1000);
  const b = new Float32Array(4);
  tsCodec("fp16").errorBound(tsCodec("fp16").encode(x).words, 4, b);
  assert.deepEqual([...b], [2 ** -11, 2 ** -11, 2 ** -10, 0.25]);
  tsCodec("fp32").errorBound(tsCodec("fp32").encode(x).words, 4, b);
  assert.deepEqual([...b], [0, 0, 0, 0]);
  const s8 = tsCodec("int8s-g8-token");
  const y = Float32Array.of(127, -1, 0, 1, 2, 3, 4, 5);
  const eb = new Float32Array(8);
  s8.errorBound(s8.encode(y).words, 8, eb);
  assert.ok(eb.every((v) => v >= 0.5 && v <= 0.5 + 1e-4));
});

Deno.test("TsCodec.encode() throws InvalidValueError naming the first non-finite index", () => {
  const r = rng(32);
  for (
    const name of [
      "int4-g32-token",
      "int8s-g16-heads",
      "fp16",
      "bf16",
      "fp32",
      "fp8e4m3",
      "fp8e5m2-g32-channel",
    ]
  ) {
    const c = tsCodec(name);
    for (const bad of [NaN, Infinity, -Infinity]) {
      const x = Float32Array.from({ length: 64 }, () => normal(r));
      const at = 5 + Math.floor(r() * 50);
      x[at] = bad;
      x[at + 3] = NaN;
      const words = new Uint32Array(c.wordsFor(64)).fill(0xdeadbeef);
      assert.throws(
        () => c.encodeInto(x, words),
        (e: Error) =>
          e instanceof InvalidValueError && e.index === at && e.message.includes(`x[${at}]`),
        `${name} ${bad}`,
      );
      assert.ok(words.every((w) => w === 0xdeadbeef), "nothing written");
      // opt-in clamp: NaN → 0, ±Inf → ±clampLimit
      const y = new Float32Array(64), eb = new Float32Array(64);
      const clamped = c.encode(x, { clamp: true });
      c.decode(clamped, y);
      c.errorBound(clamped.words, 64, eb);
      const want = bad !== bad ? 0 : Math.sign(bad) * c.spec.clampLimit;
      assert.ok(Math.abs(y[at + 3]) <= eb[at + 3], `${name}: NaN clamps to 0`);
      assert.ok(
        Math.abs(y[at] - want) <= eb[at],
        `${name}: ${bad} clamps to ${want}, got ${y[at]}`,
      );
    }
  }
});

Deno.test("TsCodec.encode() throws InvalidValueError for finite values the format cannot hold", () => {
  const table: [string, number, number][] = [
    ["int4-g8-token", 3, -70000], // minimum below −65504
    ["int2-g8-token", 2, 2e5], // (hi − m)/3 > 65504
    ["int8s-g8-token", 6, 9e6], // max|x|/127 > 65504
    ["fp16", 1, 65520], // rounds to Inf
    ["bf16", 2, 3.4e38],
    ["fp8e4m3", 7, -465],
    ["fp8e5m2", 0, 61440],
    ["fp8e4m3-g8-heads", 4, 3e7],
  ];
  for (const [name, at, v] of table) {
    const c = tsCodec(name);
    const x = Float32Array.from({ length: 8 }, (_, i) => i / 4 - 1);
    x[at] = v;
    assert.throws(
      () => c.encode(x),
      (e: Error) => e instanceof InvalidValueError && e.index === at,
      name,
    );
    const y = new Float32Array(8), eb = new Float32Array(8);
    const clamped = c.encode(x, { clamp: true });
    c.decode(clamped, y);
    c.errorBound(clamped.words, 8, eb);
    const want = Math.sign(v) * Math.min(Math.abs(v), c.spec.clampLimit);
    assert.ok(Math.abs(y[at] - want) <= eb[at], `${name} clamps to ${want}, got ${y[at]}`);
  }
  // fp8 e4m3 saturates within half an ulp above 448
  const y = new Float32Array(4);
  tsCodec("fp8e4m3").decode(tsCodec("fp8e4m3").encode(Float32Array.of(464, -460, 1, 2)), y);
  assert.deepEqual([...y], [448, -448, 1, 2]);
});

Deno.test("TsCodec rejects bad shapes, formats and truncated data without writing", () => {
  const c = tsCodec("int4-g32-token");
  const x = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i));
  const block = c.encode(x);
  const out = new Float32Array(64).fill(7);
  const unchanged = () => assert.ok(out.every((v) => v === 7), "nothing written");
  assert.throws(() => c.encode(new Float32Array(33)), ShapeError);
  assert.throws(() => c.encodeInto(x, new Uint32Array(9)), /destination has 9 words/);
  assert.throws(() => c.decode(block, new Float32Array(63)), /63 elements, expected 64/);
  assert.throws(() => c.decodeWords(block.words, 48, new Float32Array(48)), ShapeError);
  assert.throws(
    () => c.decodeWords(block.words.subarray(0, 9), 64, out),
    (e: Error) => e instanceof CorruptDataError && e.offset === 36,
  );
  unchanged();
  assert.throws(
    () => c.decode({ ...block, words: block.words.subarray(0, 9) }, out),
    CorruptDataError,
  );
  assert.throws(() => c.decode({ ...block, format: "int4-g32-heads" }, out), FormatError);
  assert.throws(() => tsCodec("int4-g33-token"), FormatError);
  const corrupt = block.words.slice();
  corrupt[5] = 0x7c00; // group 1's scale: +Inf
  assert.throws(
    () => c.decodeWords(corrupt, 64, out),
    (e: Error) => e instanceof CorruptDataError && e.offset === 20,
  );
  unchanged();
  const s8 = tsCodec("fp8e5m2-g8-token");
  const w8 = s8.encode(Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8)).words;
  w8[0] |= 0x10000; // high half must be zero
  assert.throws(() => s8.decodeWords(w8, 8, new Float32Array(8)), CorruptDataError);
  // longer word arrays are fine for decodeWords (pages hold more than one block)
  const big = new Uint32Array(100);
  big.set(block.words);
  c.decodeWords(big, 64, out);
  assert.ok(out.every((v, i) => Math.abs(v - x[i]) < 0.1));
  assert.equal(getFormat(block.format).name, "int4-g32-token");
});
