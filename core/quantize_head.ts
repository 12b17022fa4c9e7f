/**
 * Quantizes the keys or values of one (layer, KV head) with the real codecs, laid out as the cache
 * stores them (core/cache/PAGES.md): token-axis and ungrouped formats encode tokens one after the
 * other; channel-axis formats encode blocks of G tokens channel-major, so each group is G tokens of
 * one channel. Returns the decoded values and the codec's rigorous per-element error bounds.
 *
 * A trailing partial group is padded by repeating its last element (token axis) or last token
 * (channel axis), which leaves every group's range unchanged; the padding is dropped afterwards.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { quantizeHead } from "./quantize_head.ts";
 * const x = Float32Array.from({ length: 40 }, (_, i) => Math.sin(i));
 * const { decoded, bound } = quantizeHead(x, 5, 8, "int4-g8-channel");
 * if (!x.every((v, i) => Math.abs(v - decoded[i]) <= bound[i])) throw new Error("bounded");
 * ```
 * @module
 */

import { getFormat } from "../codecs/format.ts";
import { tsCodec } from "../codecs/ts_codec.ts";
import { assertFinite, InvalidValueError, ShapeError, showValue, typeName } from "./errors.ts";

/**
 * Round trip of n tokens × d elements (row-major) through a format.
 *
 * @param x n × d values, token-major
 * @param n tokens
 * @param d elements per token (head dimension)
 * @param format registered format name
 * @returns decoded values and per-element error bounds, both n × d token-major
 * @throws FormatError for an unknown format; ShapeError when n is not an integer ≥ 0, d not an
 *   integer ≥ 1 or x is shorter than n × d; InvalidValueError for x not a Float32Array (a plain
 *   array would be rounded to float32, so the bounds would not cover its values), and naming the
 *   element of x (its index in x, token and element) that is NaN or ±Inf or that the format
 *   cannot hold
 */
export function quantizeHead(
  x: Float32Array,
  n: number,
  d: number,
  format: string,
): { decoded: Float32Array; bound: Float32Array } {
  // A plain array failed as a TypeError (x.subarray) on the token axis.
  if (!(x instanceof Float32Array)) {
    throw new InvalidValueError(`x is ${typeName(x)}, expected a Float32Array`);
  }
  // A NaN n passed the length check and gave an empty result, a negative one a raw RangeError.
  if (!Number.isInteger(n) || n < 0) {
    throw new ShapeError(`tokens n is ${showValue(n)}, expected an integer ≥ 0`);
  }
  if (!Number.isInteger(d) || d < 1) {
    throw new ShapeError(`head dimension d is ${showValue(d)}, expected an integer ≥ 1`);
  }
  const spec = getFormat(format);
  if (x.length < n * d) throw new ShapeError(`x has ${x.length} elements, expected ${n * d}`);
  // Here, not in the codec: a channel-axis codec sees a transposed, padded block, so it named an
  // index of that block (x[41] of 16 elements) and offered a clamp option quantizeHead lacks.
  assertFinite(x, "x", 0, n * d);
  const decoded = new Float32Array(n * d), bound = new Float32Array(n * d);
  if (n === 0) return { decoded, bound };
  const codec = tsCodec(format);
  // flat index of the encoded block → index in x (the padding repeats an element of x)
  const roundTrip = (flat: Float32Array, source: (i: number) => number) => {
    let block;
    try {
      block = codec.encode(flat);
    } catch (e) {
      if (!(e instanceof InvalidValueError && e.index !== undefined)) throw e;
      const i = source(e.index), t = Math.floor(i / d);
      // the codec's reason, without its index, value or clamp hint (which name the block)
      const why = e.message.replace(/^.*? is out of range: /, "")
        .replace(/ \(or encode with \{clamp: true\}\)$/, "").replace(/^group \d+ /, "its group ");
      throw new InvalidValueError(
        `${format}: x[${i}] = ${x[i]} (token ${t}, element ${i - t * d}) cannot be encoded: ${why}`,
        i,
      );
    }
    const y = new Float32Array(flat.length), b = new Float32Array(flat.length);
    codec.decode(block, y);
    codec.errorBound(block.words, flat.length, b);
    return { y, b };
  };
  if (spec.axis === "channel") {
    const g = spec.group;
    for (let start = 0; start < n; start += g) {
      const flat = new Float32Array(g * d);
      for (let c = 0; c < d; c++) {
        for (let t = 0; t < g; t++) flat[c * g + t] = x[Math.min(start + t, n - 1) * d + c];
      }
      const { y, b } = roundTrip(
        flat,
        (f) => Math.min(start + (f % g), n - 1) * d + Math.floor(f / g),
      );
      for (let t = 0; t < g && start + t < n; t++) {
        for (let c = 0; c < d; c++) {
          decoded[(start + t) * d + c] = y[c * g + t];
          bound[(start + t) * d + c] = b[c * g + t];
        }
      }
    }
    return { decoded, bound };
  }
  // Token-major: pad to a whole number of groups (and of 4 elements, for fp8 words).
  const unit = Math.max(spec.group, 4);
  const len = Math.ceil((n * d) / unit) * unit;
  const flat = new Float32Array(len);
  flat.set(x.subarray(0, n * d));
  flat.fill(x[n * d - 1], n * d);
  const { y, b } = roundTrip(flat, (f) => Math.min(f, n * d - 1));
  decoded.set(y.subarray(0, n * d));
  bound.set(b.subarray(0, n * d));
  return { decoded, bound };
}

/**
 * Mean per-element error bound of a format on one head's data: the error model the planner uses
 * when the calibration measured it.
 *
 * @param x n × d values
 * @param n tokens
 * @param d head dimension
 * @param format format name
 * @returns mean of the codec's per-element bounds
 * @throws ShapeError when n is not an integer ≥ 1 (no elements: the mean was NaN) or as
 *   {@linkcode quantizeHead}; FormatError for an unknown format
 */
export function meanErrorBound(x: Float32Array, n: number, d: number, format: string): number {
  return errorBoundStats(x, n, d, format).mean;
}

/**
 * Mean and largest per-element error bound of a format on one head's data (one quantization):
 * the mean is the planner's error model, the largest what the precision rule credits a format
 * with (plan.ts rulePrecision), a bound on every element it measured.
 *
 * @param x n × d values
 * @param n tokens
 * @param d head dimension
 * @param format format name
 * @returns mean and max of the codec's per-element bounds
 * @throws as {@linkcode meanErrorBound}
 */
export function errorBoundStats(
  x: Float32Array,
  n: number,
  d: number,
  format: string,
): { mean: number; max: number } {
  if (!Number.isInteger(n) || n < 1) {
    throw new ShapeError(`tokens n is ${showValue(n)}, expected an integer ≥ 1`);
  }
  const { bound } = quantizeHead(x, n, d, format);
  let s = 0, max = 0;
  for (let i = 0; i < n * d; i++) {
    s += bound[i];
    max = Math.max(max, bound[i]);
  }
  return { mean: s / (n * d), max };
}
