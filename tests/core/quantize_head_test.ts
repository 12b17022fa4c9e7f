import assert from "node:assert/strict";
import { FormatError, ShapeError } from "../../core/errors.ts";
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
