import assert from "node:assert/strict";
import { FormatError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import { meanErrorBound, quantizeHead } from "../../core/quantize_head.ts";
import { makeRng, randomArray } from "./_rng.ts";

Deno.test("quantizeHead() keeps every element within its bound, token and channel axis", () => {
  const x = randomArray(makeRng(1), 5 * 8);
  for (const format of ["int4-g8-token", "int4-g8-channel", "fp16"]) {
    const { decoded, bound } = quantizeHead(x, 5, 8, format);
    assert.equal(decoded.length, 40);
    for (let i = 0; i < 40; i++) assert.ok(Math.abs(x[i] - decoded[i]) <= bound[i], format);
  }
  assert.equal(quantizeHead(x, 0, 8, "int4-g8-token").decoded.length, 0);
});

Deno.test("quantizeHead() rejects a token count or head dimension that is not a count (was an empty result or a RangeError)", () => {
  const x = randomArray(makeRng(2), 16);
  const table: [number, number, RegExp][] = [
    [NaN, 4, /tokens n is NaN, expected an integer ≥ 0/],
    [-1, 4, /tokens n is -1, expected an integer ≥ 0/],
    [1.5, 4, /tokens n is 1.5/],
    [2, 0, /head dimension d is 0, expected an integer ≥ 1/],
    [2, NaN, /head dimension d is NaN/],
    [5, 4, /x has 16 elements, expected 20/],
  ];
  for (const [n, d, re] of table) {
    for (const format of ["int8-g8-token", "int4-g8-channel"]) {
      assert.throws(
        () => quantizeHead(x, n, d, format),
        (e) => e instanceof ShapeError && re.test(e.message),
        `${n} ${d} ${format}`,
      );
    }
  }
  assert.throws(() => quantizeHead(x, 2, 4, "int3"), FormatError);
});

Deno.test("meanErrorBound() rejects no tokens (was NaN)", () => {
  const x = randomArray(makeRng(3), 16);
  assert.ok(meanErrorBound(x, 2, 8, "int8-g8-token") > 0);
  for (const n of [0, NaN, -2]) {
    assert.throws(
      () => meanErrorBound(x, n, 8, "int8-g8-token"),
      (e) =>
        e instanceof ShapeError &&
        new RegExp(`tokens n is ${n}, expected an integer ≥ 1`).test(e.message),
      String(n),
    );
  }
});

Deno.test("quantizeHead() names the element of x that is not finite or out of range, on both axes (was an index of the encoded block)", () => {
  const seed = crypto.getRandomValues(new Uint32Array(1))[0], rng = makeRng(seed);
  const formats = ["int4-g8-channel", "int8-g8-channel", "int4-g8-token", "int8s-g8-token", "fp16"];
  // ±1e8: beyond fp16, and every int group's fp16 scale (max 65504) can step at most 255·65504
  for (const bad of [NaN, Infinity, -Infinity, 1e8, -1e8]) {
    for (const format of formats) {
      const n = 1 + Math.floor(rng() * 20), d = 1 + Math.floor(rng() * 12);
      const x = randomArray(rng, n * d + Math.floor(rng() * 3));
      const j = Math.floor(rng() * n * d), t = Math.floor(j / d);
      x[j] = bad;
      const at = `seed ${seed} ${format} n ${n} d ${d} x[${j}] = ${bad}`;
      assert.throws(
        () => quantizeHead(x, n, d, format),
        (e) =>
          e instanceof InvalidValueError && e.index === j &&
          e.message.includes(`x[${j}]`) && !/clamp/.test(e.message) &&
          (Number.isFinite(bad) ? e.message.includes(`(token ${t}, element ${j - t * d})`) : true),
        at,
      );
    }
  }
  // the reviewer's case: 16 elements, the NaN at 13 was reported at 41
  const x = new Float32Array(16);
  x[13] = NaN;
  assert.throws(
    () => quantizeHead(x, 2, 8, "int4-g8-channel"),
    (e) => e instanceof InvalidValueError && e.index === 13 && /x\[13\] is NaN/.test(e.message),
  );
});
