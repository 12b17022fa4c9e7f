/**
 * The largest key and value magnitudes a cache policy can store. A cache checks every token
 * against them before it changes anything, so that no encode can fail halfway through an append.
 *
 * Browser compatible.
 *
 * @module
 */

import {
  bf16BitsToF32,
  bitsToF32,
  f16BitsToF32,
  f32Bits,
  f32ToBf16Bits,
  f32ToF16Bits,
  f32ToFp8Bits,
  fp8BitsToF32,
} from "../../codecs/float_bits.ts";
import { type FormatSpec, getFormat } from "../../codecs/format.ts";
import { InvalidValueError } from "../errors.ts";
import type { CachePolicy, FormatPair } from "./policy.ts";

/** Largest magnitude any cache accepts: every grouped format's scale and minimum are fp16. */
export const MAX_CACHE_VALUE = 65504;

/**
 * How much turning a key back before RoPE can grow one component: √2 for the turn of its pair, and
 * 1% to spare for the f32 rounding of the turn's products.
 */
const TURN_GROWTH = Math.SQRT2 * 1.01;

/**
 * How far a grouped window format's rounding can carry a decoded element past its group's largest
 * input magnitude, as a factor: the fp16 minimum rounds down and the fp16 scale up, by under 2^-10
 * each, so the top code decodes at most 2^-10 of the group's span (≤ 2·limit) past its input.
 * 2^-8 holds twice that (codecs/FORMAT.md, "Integer formats"; int8s and scaled fp8 round only
 * their scale up).
 */
const GROUPED_WINDOW_GROWTH = 1 + 2 ** -8;

/** The unscaled float format's value nearest x (ties to even), as the window stores it. */
function _roundTo(window: FormatSpec, x: number): number {
  switch (window.kind) {
    case "fp16":
      return f16BitsToF32(f32ToF16Bits(x));
    case "bf16":
      return bf16BitsToF32(f32ToBf16Bits(x));
    case "fp8e4m3":
      return fp8BitsToF32(f32ToFp8Bits(x, "e4m3"), "e4m3");
    case "fp8e5m2":
      return fp8BitsToF32(f32ToFp8Bits(x, "e5m2"), "e5m2");
    default:
      return Math.fround(x);
  }
}

/** The unscaled float format's value next below a positive value v of its grid. */
function _below(window: FormatSpec, v: number): number {
  switch (window.kind) {
    case "fp16":
      return f16BitsToF32(f32ToF16Bits(v) - 1);
    case "bf16":
      return bf16BitsToF32(f32ToBf16Bits(v) - 1);
    case "fp8e4m3":
      return fp8BitsToF32(f32ToFp8Bits(v, "e4m3") - 1, "e4m3");
    case "fp8e5m2":
      return fp8BitsToF32(f32ToFp8Bits(v, "e5m2") - 1, "e5m2");
    default:
      return bitsToF32(f32Bits(v) - 1);
  }
}

/**
 * The largest input magnitude that the window format stores as at most `limit`: a token waits in
 * the window, and eviction encodes what the window decodes into the page format, so a window that
 * rounds past the page's limit (bf16 stores 65504 as 65536) would fail halfway through an append.
 * A float grid rounds to nearest, monotonically, so its largest value within the limit is exact;
 * inputs within the window's own clamp limit round at most to that limit, on the grid.
 */
function _windowInput(window: FormatSpec, limit: number): number {
  if (window.scaled) return Math.fround(limit / GROUPED_WINDOW_GROWTH);
  if (limit >= window.clampLimit) return limit;
  const r = _roundTo(window, limit);
  return r <= limit ? limit : _below(window, r);
}

/** One limit and the format that sets it. */
export interface ValueLimit {
  /** Largest accepted magnitude. */
  readonly limit: number;
  /** Why: the format (and for turned keys, the turn) that holds no more. */
  readonly reason: string;
}

/** The limits of keys and of values under one policy. */
export interface CacheValueLimits {
  /** Keys. */
  readonly key: ValueLimit;
  /** Values. */
  readonly value: ValueLimit;
}

/**
 * The limits a policy's formats impose: each format's clamp limit (capped at MAX_CACHE_VALUE),
 * over the window format, the staging format and every pair, for channel-axis keys stored before
 * RoPE the limit shrunk by the turn's growth, and each later format's limit shrunk to what the
 * roundings before it (window, then staging) keep within it.
 *
 * @param policy window and staging formats (staging: the window's unless set), format pairs and
 *   RoPE base of a cache policy (formats valid)
 * @returns key and value limits
 */
export function cacheValueLimits(
  policy: Pick<CachePolicy, "windowFormat" | "ropeBase"> & {
    stagingFormat?: string;
    pairs: readonly FormatPair[];
  },
): CacheValueLimits {
  let key: ValueLimit = { limit: MAX_CACHE_VALUE, reason: "fp16 group headers" };
  let value = key;
  const tighter = (now: ValueLimit, limit: number, reason: string) =>
    limit < now.limit ? { limit, reason } : now;
  const window = getFormat(policy.windowFormat);
  key = tighter(key, window.clampLimit, `window format ${window.name}`);
  value = tighter(value, window.clampLimit, `window format ${window.name}`);
  // a later format's limit, and the window's rounding on the way there
  const afterWindow = (now: ValueLimit, limit: number, reason: string) => {
    const input = _windowInput(window, limit);
    return input < limit
      ? tighter(now, input, `${reason}, after window format ${window.name}'s rounding`)
      : tighter(now, limit, reason);
  };
  const sf = policy.stagingFormat ?? policy.windowFormat;
  const staging = sf === window.name ? undefined : getFormat(sf);
  if (staging) {
    key = afterWindow(key, staging.clampLimit, `staging format ${staging.name}`);
    value = afterWindow(value, staging.clampLimit, `staging format ${staging.name}`);
  }
  // a page's limit, through the staging format's rounding when tokens wait in one
  const page = (now: ValueLimit, limit: number, reason: string) => {
    if (!staging) return afterWindow(now, limit, reason);
    const input = _windowInput(staging, limit);
    return input < limit
      ? afterWindow(now, input, `${reason}, after staging format ${staging.name}'s rounding`)
      : afterWindow(now, limit, reason);
  };
  for (const pair of policy.pairs) {
    const k = getFormat(pair.keyFormat), v = getFormat(pair.valueFormat);
    const turned = policy.ropeBase !== undefined && k.axis === "channel";
    key = turned
      ? page(
        key,
        Math.fround(Math.min(k.clampLimit, MAX_CACHE_VALUE) / TURN_GROWTH),
        `key format ${k.name} with keys turned back before RoPE`,
      )
      : page(key, k.clampLimit, `key format ${k.name}`);
    value = page(value, v.clampLimit, `value format ${v.name}`);
  }
  return { key, value };
}

/**
 * Throws InvalidValueError naming the first element of x that is not a finite number within
 * ±limit; shared by the CPU and GPU caches.
 * @param x keys or values
 * @param what their name in the message
 * @param bound the limit and its reason (default: ±MAX_CACHE_VALUE)
 */
export function checkCacheValues(
  x: Float32Array,
  what: string,
  bound: ValueLimit = { limit: MAX_CACHE_VALUE, reason: "fp16 group headers" },
): void {
  for (let i = 0; i < x.length; i++) {
    const a = Math.abs(x[i]);
    if (!(a <= bound.limit)) {
      throw new InvalidValueError(
        `${what}[${i}] is ${x[i]}, expected a finite number within ±${bound.limit} ` +
          `(${bound.reason})`,
        i,
      );
    }
  }
}
