/**
 * Outward-rounded float64 arithmetic for bounds whose verdict rounding could flip: every `*Up`
 * result is ≥ the exact real result and every `*Down` result is ≤ it. Basic operations and the
 * square root are correctly rounded in IEEE 754, so one ulp outward suffices for them (`sqrtUp`;
 * ECMAScript only asks `Math.sqrt` for an approximation, but engines compute it with the correctly
 * rounded hardware instruction); `Math.exp`, whose accuracy engines leave to their libm (V8's
 * fdlibm port is within one ulp), is given two (`expUp`, `expDown`).
 *
 * Every function refuses an argument that is not a number (InvalidValueError): JavaScript would
 * otherwise concatenate strings (`addUp("1", "2")` returned a string) or coerce them.
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

import { InvalidValueError, ShapeError, showValue, typeName } from "./errors.ts";

/** Throws InvalidValueError naming the arguments of op, one of which is not a number. */
function _notNumbers(op: string, ...args: unknown[]): never {
  throw new InvalidValueError(`${op}(${args.map(showValue).join(", ")}): expected numbers`);
}

/**
 * A float64 strictly above x and at most two ulps above it, three in the two smallest normal
 * binades, where 2⁻¹⁰⁷⁴ is a larger share of an ulp (x itself for +Infinity and NaN;
 * −Number.MAX_VALUE for −Infinity, which an overflowing lower-rounded result stands for: the exact
 * value is finite, so the largest finite float is still a bound on it).
 * Computed as x + (|x|·2⁻⁵² + 2⁻¹⁰⁷⁴): the exact sum is ≥ x + ulp(x), which is representable, so
 * round-to-nearest cannot land below it; cheaper than stepping the bit pattern.
 * @param x a float64
 * @returns a value above x
 * @throws InvalidValueError for x not a number
 */
export function nextUp(x: number): number {
  if (typeof x !== "number") _notNumbers("nextUp", x);
  if (x === -Infinity) return -Number.MAX_VALUE;
  if (x !== x || x === Infinity) return x;
  return x + (Math.abs(x) * 2.220446049250313e-16 + Number.MIN_VALUE);
}

/**
 * A float64 strictly below x and at most two ulps below it (Number.MAX_VALUE for +Infinity: a
 * lower bound on an exact value that overflowed).
 * @param x a float64
 * @returns the next representable value towards -Infinity
 * @throws InvalidValueError for x not a number
 */
export function nextDown(x: number): number {
  if (typeof x !== "number") _notNumbers("nextDown", x);
  return -nextUp(-x);
}

/**
 * a + b rounded towards +Infinity.
 * @param a addend
 * @param b addend
 * @returns an upper bound on the exact sum
 */
export function addUp(a: number, b: number): number {
  if (typeof a !== "number" || typeof b !== "number") _notNumbers("addUp", a, b);
  return nextUp(a + b);
}

/**
 * a − b rounded towards +Infinity.
 * @param a minuend
 * @param b subtrahend
 * @returns an upper bound on the exact difference
 */
export function subUp(a: number, b: number): number {
  if (typeof a !== "number" || typeof b !== "number") _notNumbers("subUp", a, b);
  return nextUp(a - b);
}

/**
 * a · b rounded towards +Infinity.
 * @param a factor
 * @param b factor
 * @returns an upper bound on the exact product
 */
export function mulUp(a: number, b: number): number {
  if (typeof a !== "number" || typeof b !== "number") _notNumbers("mulUp", a, b);
  return nextUp(a * b);
}

/**
 * a / b rounded towards +Infinity.
 * @param a dividend
 * @param b divisor
 * @returns an upper bound on the exact quotient
 */
export function divUp(a: number, b: number): number {
  if (typeof a !== "number" || typeof b !== "number") _notNumbers("divUp", a, b);
  return nextUp(a / b);
}

/**
 * a / b rounded towards −Infinity.
 * @param a dividend
 * @param b divisor
 * @returns a lower bound on the exact quotient
 */
export function divDown(a: number, b: number): number {
  if (typeof a !== "number" || typeof b !== "number") _notNumbers("divDown", a, b);
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
  if (typeof x !== "number") _notNumbers("expUp", x);
  return nextUp(nextUp(Math.exp(x)));
}

/**
 * e^x rounded towards −Infinity, never below 0.
 * @param x exponent
 * @returns a lower bound on e^x
 */
export function expDown(x: number): number {
  if (typeof x !== "number") _notNumbers("expDown", x);
  return Math.max(0, nextDown(nextDown(Math.exp(x))));
}

/**
 * √x rounded towards +Infinity: one ulp, as √ is correctly rounded (IEEE 754).
 * @param x a non-negative number
 * @returns an upper bound on √x
 */
export function sqrtUp(x: number): number {
  if (typeof x !== "number") _notNumbers("sqrtUp", x);
  return nextUp(Math.sqrt(x));
}

/**
 * Euclidean norm of x, rounded towards +Infinity: a sum of squares accumulated upwards, then √.
 * @param x the vector
 * @param offset first element
 * @param length elements (default: to the end of x)
 * @returns an upper bound on ‖x[offset .. offset+length)‖₂
 * @throws InvalidValueError for x not an array, or an element that is not a number (by index);
 *   ShapeError for offset or length not an integer ≥ 0, or a range past x's end (was read as NaN,
 *   or as an empty range with an offset past the end)
 */
export function normUp(x: ArrayLike<number>, offset = 0, length?: number): number {
  if (typeof x !== "object" || x === null || typeof x.length !== "number") {
    throw new InvalidValueError(`normUp of ${typeName(x)}, expected an array of numbers`);
  }
  if (!Number.isInteger(offset) || offset < 0) {
    throw new ShapeError(`normUp: offset is ${showValue(offset)}, expected an integer ≥ 0`);
  }
  if (length !== undefined && (!Number.isInteger(length) || length < 0)) {
    throw new ShapeError(`normUp: length is ${showValue(length)}, expected an integer ≥ 0`);
  }
  const end = length === undefined ? Math.max(offset, x.length) : offset + length;
  if (end > x.length) {
    throw new ShapeError(`normUp of x[${offset} .. ${end}): x has ${x.length} elements`);
  }
  let s = 0;
  for (let i = offset; i < end; i++) {
    const v = x[i];
    if (typeof v !== "number") {
      throw new InvalidValueError(`normUp: x[${i}] is ${showValue(v)}, expected a number`, i);
    }
    s = addUp(s, mulUp(v, v));
  }
  return sqrtUp(s);
}
