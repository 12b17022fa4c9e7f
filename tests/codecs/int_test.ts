import assert from "node:assert/strict";
import { readGroupHeader } from "../../codecs/codec.ts";
import { f16BitsToF32 } from "../../codecs/float_bits.ts";
import { getFormat, GROUP_SIZES, INT_BITS } from "../../codecs/format.ts";
import {
  checkIntHeaders,
  decodeIntGroups,
  encodeIntGroups,
  intErrorBound,
  roundHalfEven,
} from "../../codecs/int.ts";
import { CorruptDataError } from "../../core/errors.ts";
import { DISTRIBUTIONS, rng } from "./_inputs.ts";

function encode(name: string, x: Float32Array): Uint32Array {
  const spec = getFormat(name);
  const words = new Uint32Array((x.length / spec.group) * spec.wordsPerGroup);
  encodeIntGroups(spec, x, words);
  return words;
}

Deno.test("roundHalfEven() rounds ties to the even neighbour", () => {
  const table: [number, number][] = [
    [0, 0],
    [0.5, 0],
    [1.5, 2],
    [2.5, 2],
    [3.49, 3],
    [254.5, 254],
    [7.5000005, 8],
  ];
  for (const [u, want] of table) assert.equal(roundHalfEven(Math.fround(u)), want, String(u));
});

Deno.test("encodeIntGroups() packs codes as one LSB-first bit stream per group", () => {
  const r = rng(21);
  for (const b of INT_BITS) {
    for (const G of [8, 16, 32]) {
      // codes 0..qmax with both ends present: m = 0 and s = qmax/qmax = 1, so codes = values
      const qmax = 2 ** b - 1;
      const codes = Array.from({ length: G }, () => Math.floor(r() * (qmax + 1)));
      codes[0] = 0;
      codes[G - 1] = qmax;
      const words = encode(`int${b}-g${G}-token`, Float32Array.from(codes));
      let stream = 0n;
      codes.forEach((q, i) => stream |= BigInt(q) << BigInt(i * b));
      assert.equal(words[0], 0x3c00, "scale 1.0 low, min +0 high");
      for (let w = 1; w < words.length; w++) {
        assert.equal(
          BigInt(words[w]),
          (stream >> BigInt(32 * (w - 1))) & 0xffffffffn,
          `b=${b} G=${G} w=${w}`,
        );
      }
    }
  }
  // a hand-checked word: int4, codes 0,15,1,2,3,4,5,6
  assert.deepEqual([...encode("int4-g8-heads", Float32Array.of(0, 15, 1, 2, 3, 4, 5, 6))], [
    0x3c00,
    0x654321f0,
  ]);
});

Deno.test("encodeIntGroups() rounds half-way values to the even code", () => {
  const x = Float32Array.of(0.5, 1.5, 2.5, 3.5, 0, 15, 14.5, 13.5);
  const y = new Float32Array(8);
  decodeIntGroups(getFormat("int4-g8-token"), encode("int4-g8-token", x), y);
  assert.deepEqual([...y], [0, 2, 2, 4, 0, 15, 14, 14]);
});

Deno.test("encodeIntGroups() keeps |x − x̂| ≤ s·(1/2 + qmax·2^−22) + 2^−24·|x̂| on every distribution", () => {
  const r = rng(22);
  for (const dist of DISTRIBUTIONS) {
    for (const b of INT_BITS) {
      for (const G of GROUP_SIZES) {
        const spec = getFormat(`int${b}-g${G}-token`);
        const x = dist.make(r, 4 * G, G);
        const words = encode(spec.name, x);
        const y = new Float32Array(x.length), bound = new Float32Array(x.length);
        decodeIntGroups(spec, words, y);
        intErrorBound(spec, words, bound);
        let overHalf = 0;
        for (let i = 0; i < x.length; i++) {
          const h = readGroupHeader(spec, words, Math.floor(i / G));
          const stated = h.scale * (0.5 + spec.qmax * 2 ** -22) + 2 ** -24 * Math.abs(y[i]);
          const err = Math.abs(x[i] - y[i]);
          if (!(err <= stated)) {
            assert.fail(`${spec.name} ${dist.name} [${i}]: |${x[i]} − ${y[i]}| > ${stated}`);
          }
          assert.ok(
            bound[i] >= stated && bound[i] <= stated * (1 + 2 ** -23),
            "errorBound is the stated bound",
          );
          if (err > h.scale / 2) overHalf++;
          assert.ok(y[i] >= h.min, "x̂ never below the stored minimum");
        }
        assert.ok(overHalf <= x.length / 8, `${spec.name} ${dist.name}: ${overHalf} beyond s/2`);
      }
    }
  }
});

Deno.test("encodeIntGroups() decodes constant groups exactly when the value is fp16", () => {
  const r = rng(23);
  for (const b of INT_BITS) {
    const spec = getFormat(`int${b}-g16-channel`);
    const exact = Math.round((r() - 0.5) * 4096) / 8; // on the fp16 grid
    const inexact = Math.fround(1 + r() * 2 ** -12); // between fp16 neighbours
    const x = new Float32Array(32);
    x.fill(exact, 0, 16).fill(inexact, 16, 32);
    const words = encode(spec.name, x);
    const y = new Float32Array(32);
    decodeIntGroups(spec, words, y);
    assert.equal(words[0] & 0xffff, 0, "zero scale for an fp16-exact constant group");
    assert.ok(y.subarray(0, 16).every((v) => v === exact));
    const s = f16BitsToF32(words[spec.wordsPerGroup] & 0xffff);
    assert.ok(s > 0 && y.subarray(16).every((v) => Math.abs(v - inexact) <= s / 2 + 2 ** -24 * v));
  }
});

Deno.test("readGroupHeader() returns the fp16 scale and minimum in the low and high halves", () => {
  const spec = getFormat("int8-g8-token");
  const x = Float32Array.of(-3, -2, -1, 0, 1, 2, 3, 4.5);
  const words = encode(spec.name, x);
  const h = readGroupHeader(spec, words, 0);
  assert.equal(h.min, -3);
  assert.equal(h.scale, f16BitsToF32(words[0] & 0xffff));
  assert.ok(h.scale >= 7.5 / 255 && h.scale < (7.5 / 255) * 1.001);
});

Deno.test("checkIntHeaders() rejects non-finite or negative scales and non-finite minimums", () => {
  const spec = getFormat("int4-g8-token");
  for (const bad of [0x7c00, 0x7e00, 0xbc00, 0x7c00_3c00, 0xfe00_3c00]) {
    const words = new Uint32Array(4);
    words[0] = 0x3c00;
    words[2] = bad;
    assert.throws(
      () => checkIntHeaders(spec, words, 16),
      (e: Error) =>
        e instanceof CorruptDataError && e.offset === 8 && e.message.includes("group 1"),
    );
  }
});
