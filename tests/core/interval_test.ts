import assert from "node:assert/strict";
import { InvalidValueError, ShapeError } from "../../core/errors.ts";
import {
  addUp,
  divDown,
  divUp,
  expDown,
  expUp,
  mulUp,
  nextDown,
  nextUp,
  normUp,
  sqrtUp,
  subUp,
} from "../../core/interval.ts";
import { makeRng } from "./_rng.ts";

/** Exact next float above x by stepping the bit pattern (independent reference). */
function stepUp(x: number): number {
  const f = new Float64Array([x]);
  const i = new BigInt64Array(f.buffer);
  if (x === 0) return Number.MIN_VALUE;
  i[0] += x > 0 ? 1n : -1n;
  return f[0];
}

Deno.test("nextUp() lands one or two ulps above x, nextDown() below", () => {
  const rng = makeRng(5);
  const table = [
    0,
    -0,
    1,
    -1,
    Number.MIN_VALUE,
    -Number.MIN_VALUE,
    2.2250738585072014e-308,
    1e300,
    -1e-300,
  ];
  for (let i = 0; i < 2000; i++) table.push((rng() - 0.5) * 10 ** (Math.floor(rng() * 40) - 20));
  for (const x of table) {
    const up = nextUp(x);
    assert.ok(up > x && up <= stepUp(stepUp(x)), `nextUp(${x}) = ${up}`);
    const down = nextDown(x);
    assert.ok(down < x && down >= -stepUp(stepUp(-x)), `nextDown(${x}) = ${down}`);
  }
  assert.ok(Number.isNaN(nextUp(NaN)));
  assert.equal(nextUp(Infinity), Infinity);
});

Deno.test("addUp()/mulUp()/divUp()/expUp() bound the exact result from above, *Down from below", () => {
  const rng = makeRng(6);
  for (let i = 0; i < 2000; i++) {
    const a = (rng() - 0.5) * 100, b = (rng() - 0.5) * 100 || 1;
    // Exact rational checks via BigInt-free reasoning: the correctly rounded result r satisfies
    // |r − exact| ≤ ulp(r)/2, so r's next float up is ≥ exact.
    assert.ok(addUp(a, b) > a + b);
    assert.ok(mulUp(a, b) > a * b);
    assert.ok(divUp(a, b) > a / b && divDown(a, b) < a / b);
    const x = (rng() - 0.5) * 40;
    assert.ok(expUp(x) > Math.exp(x) && expDown(x) < Math.exp(x));
  }
  assert.ok(normUp([3, 4]) >= 5 && normUp([3, 4]) < 5 + 1e-14);
});

Deno.test("interval functions refuse an argument that is not a number (strings were concatenated)", () => {
  const never = <T>(v: unknown) => v as T;
  const s = never<number>("1");
  const cases: [string, () => number, RegExp][] = [
    ["nextUp", () => nextUp(s), /^nextUp\("1"\): expected numbers$/], // was "12.22…e-16"
    ["nextDown", () => nextDown(s), /^nextDown\("1"\)/], // was coerced to a number
    ["addUp", () => addUp(s, never("2")), /^addUp\("1", "2"\): expected numbers$/], // was "122.66…"
    ["subUp", () => subUp(1, never(null)), /^subUp\(1, null\)/],
    ["mulUp", () => mulUp(never("2"), 3), /^mulUp\("2", 3\)/], // was 6, coerced
    ["divUp", () => divUp(1, never(undefined)), /^divUp\(1, undefined\)/],
    ["divDown", () => divDown(never([4]), 2), /^divDown\(Array, 2\)/],
    ["expUp", () => expUp(s), /^expUp\("1"\)/],
    ["expDown", () => expDown(never(1n)), /^expDown\(1n\)/],
    ["sqrtUp", () => sqrtUp(never("4")), /^sqrtUp\("4"\)/],
  ];
  for (const [what, call, re] of cases) {
    assert.throws(call, (e) => e instanceof InvalidValueError && re.test(e.message), what);
  }
});

Deno.test("normUp() refuses a range past x, bad offsets and non-arrays (were NaN or a tiny bound)", () => {
  const never = <T>(v: unknown) => v as T;
  const cases: [() => number, typeof ShapeError | typeof InvalidValueError, RegExp][] = [
    [() => normUp([1, 2], 0, 5), ShapeError, /^normUp of x\[0 \.\. 5\): x has 2 elements$/], // NaN
    [() => normUp([1, 2], 5), ShapeError, /^normUp of x\[5 \.\. 5\): x has 2 elements$/], // 5e-324
    [() => normUp([1, 2], -1), ShapeError, /^normUp: offset is -1, expected an integer ≥ 0$/],
    [() => normUp([1, 2], 0.5), ShapeError, /^normUp: offset is 0\.5/],
    [() => normUp([1, 2], 0, NaN), ShapeError, /^normUp: length is NaN/],
    [() => normUp([1, 2], 0, never("2")), ShapeError, /^normUp: length is "2"/],
    [() => normUp(never(undefined)), InvalidValueError, /^normUp of undefined, expected an array/],
    [
      () => normUp(never([3, "4"])),
      InvalidValueError,
      /^normUp: x\[1\] is "4", expected a number$/,
    ],
  ];
  for (const [call, cls, re] of cases) {
    assert.throws(call, (e) => e instanceof cls && re.test((e as Error).message), String(re));
  }
  // unchanged on valid ranges, an empty one included
  assert.ok(normUp([0, 3, 4, 9], 1, 2) >= 5 && normUp([0, 3, 4, 9], 1, 2) < 5 + 1e-14);
  assert.ok(normUp([1, 2], 2) <= Number.MIN_VALUE);
});
