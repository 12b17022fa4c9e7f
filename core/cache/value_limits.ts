/**
 * The largest key and value magnitudes a cache policy can store. A cache checks every token
 * against them before it changes anything, so that no encode can fail halfway through an append.
 *
 * Browser compatible.
 *
 * @module
 */

import { getFormat } from "../../codecs/format.ts";
import { InvalidValueError } from "../errors.ts";
import type { CachePolicy, FormatPair } from "./policy.ts";

/** Largest magnitude any cache accepts: every grouped format's scale and minimum are fp16. */
export const MAX_CACHE_VALUE = 65504;

/**
 * How much turning a key back before RoPE can grow one component: √2 for the turn of its pair, and
 * 1% for the window format's rounding of the key it turns (fp16 half an ulp, int8 a step's share).
 */
const TURN_GROWTH = Math.SQRT2 * 1.01;

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
 * over the window format and every pair, and for channel-axis keys stored before RoPE the limit
 * shrunk by the turn's growth.
 *
 * @param policy window format, format pairs and RoPE base of a cache policy (formats valid)
 * @returns key and value limits
 */
export function cacheValueLimits(
  policy: Pick<CachePolicy, "windowFormat" | "ropeBase"> & { pairs: readonly FormatPair[] },
): CacheValueLimits {
  let key: ValueLimit = { limit: MAX_CACHE_VALUE, reason: "fp16 group headers" };
  let value = key;
  const tighter = (now: ValueLimit, limit: number, reason: string) =>
    limit < now.limit ? { limit, reason } : now;
  const window = getFormat(policy.windowFormat);
  key = tighter(key, window.clampLimit, `window format ${window.name}`);
  value = tighter(value, window.clampLimit, `window format ${window.name}`);
  for (const pair of policy.pairs) {
    const k = getFormat(pair.keyFormat), v = getFormat(pair.valueFormat);
    const turned = policy.ropeBase !== undefined && k.axis === "channel";
    key = turned
      ? tighter(
        key,
        Math.fround(Math.min(k.clampLimit, MAX_CACHE_VALUE) / TURN_GROWTH),
        `key format ${k.name} with keys turned back before RoPE`,
      )
      : tighter(key, k.clampLimit, `key format ${k.name}`);
    value = tighter(value, v.clampLimit, `value format ${v.name}`);
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
