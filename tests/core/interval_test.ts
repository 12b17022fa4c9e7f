import assert from "node:assert/strict";
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
