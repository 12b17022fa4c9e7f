/**
 * Outward-rounded float64 arithmetic for bounds whose verdict rounding could flip: every `*Up`
 * result is ≥ the exact real result and every `*Down` result is ≤ it. Basic operations are
 * correctly rounded in IEEE 754, so one ulp outward suffices for them; `Math.exp`, `Math.log` and
 * `Math.sqrt` are given two ulps (V8's fdlibm ports are within one).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { addUp, nextDown, nextUp } from "./interval.ts";
 * if (!(nextUp(1) > 1 && nextDown(1) < 1)) throw new Error("next float");
 * if (!(addUp(0.1, 0.2) >= 0.1 + 0.2)) throw new Error("rounded up");
 * ```
 * @module
 */

/**
 * A float64 strictly above x and at most two ulps above it, three in the two smallest normal
 * binades, where 2⁻¹⁰⁷⁴ is a larger share of an ulp (x itself for +Infinity and NaN;
 * −Number.MAX_VALUE for −Infinity, which an overflowing lower-rounded result stands for: the exact
 * value is finite, so the largest finite float is still a bound on it).
 * Computed as x + (|x|·2⁻⁵² + 2⁻¹⁰⁷⁴): the exact sum is ≥ x + ulp(x), which is representable, so
 * round-to-nearest cannot land below it; cheaper than stepping the bit pattern.
 * @param x a float64
 * @returns a value above x
 */
export function nextUp(x: number): number {
  if (x === -Infinity) return -Number.MAX_VALUE;
  if (x !== x || x === Infinity) return x;
  return x + (Math.abs(x) * 2.220446049250313e-16 + Number.MIN_VALUE);
}

/**
 * A float64 strictly below x and at most two ulps below it (Number.MAX_VALUE for +Infinity: a
 * lower bound on an exact value that overflowed).
 * @param x a float64
 * @returns the next representable value towards -Infinity
 */
export function nextDown(x: number): number {
  return -nextUp(-x);
}

/**
 * a + b rounded towards +Infinity.
 * @param a addend
 * @param b addend
 * @returns an upper bound on the exact sum
 */
export function addUp(a: number, b: number): number {
  return nextUp(a + b);
}

/**
 * a − b rounded towards +Infinity.
 * @param a minuend
 * @param b subtrahend
 * @returns an upper bound on the exact difference
 */
export function subUp(a: number, b: number): number {
  return nextUp(a - b);
}

/**
 * a · b rounded towards +Infinity.
 * @param a factor
 * @param b factor
 * @returns an upper bound on the exact product
 */
export function mulUp(a: number, b: number): number {
  return nextUp(a * b);
}

/**
 * a / b rounded towards +Infinity.
 * @param a dividend
 * @param b divisor
 * @returns an upper bound on the exact quotient
 */
export function divUp(a: number, b: number): number {
  return nextUp(a / b);
}

/**
 * a / b rounded towards −Infinity.
 * @param a dividend
 * @param b divisor
 * @returns a lower bound on the exact quotient
 */
export function divDown(a: number, b: number): number {
  return nextDown(a / b);
}

/**
 * e^x rounded towards +Infinity (two ulps of margin for the library exp: ECMAScript leaves its
 * accuracy to the engine; V8 and SpiderMonkey port fdlibm, within 1 ulp, and engines do differ by
 * an ulp: Node 20's V8 and Deno 2.9's disagree on 10% of arguments, tests/portability).
 * @param x exponent
 * @returns an upper bound on e^x
 */
export function expUp(x: number): number {
  return nextUp(nextUp(Math.exp(x)));
}

/**
 * e^x rounded towards −Infinity, never below 0.
 * @param x exponent
 * @returns a lower bound on e^x
 */
export function expDown(x: number): number {
  return Math.max(0, nextDown(nextDown(Math.exp(x))));
}

/**
 * √x rounded towards +Infinity.
 * @param x a non-negative number
 * @returns an upper bound on √x
 */
export function sqrtUp(x: number): number {
  return nextUp(Math.sqrt(x));
}

/**
 * Euclidean norm of x, rounded towards +Infinity: a sum of squares accumulated upwards, then √.
 * @param x the vector
 * @param offset first element
 * @param length elements
 * @returns an upper bound on ‖x[offset .. offset+length)‖₂
 */
export function normUp(x: ArrayLike<number>, offset = 0, length = x.length - offset): number {
  let s = 0;
  for (let i = 0; i < length; i++) s = addUp(s, mulUp(x[offset + i], x[offset + i]));
  return sqrtUp(s);
}
