/**
 * The GPU cache's policies: which formats it stores and how many positions stay at full
 * precision, their defaults and checks, and the CPU cache policy each one equals, both ways
 * ({@linkcode gpuPolicyFor} of a CPU policy, {@linkcode cpuPolicyOf} of a GPU one). The GPU cache
 * chooses a chunk's tier through the CPU policy, so both caches put the same tokens in the same
 * formats.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { cpuPolicyOf, gpuPolicyFor, withDefaults } from "./cache_policy.ts";
 * const shape = { nLayers: 1, nKvHeads: 1 };
 * const gpu = withDefaults({ keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" });
 * const cpu = cpuPolicyOf(gpu, shape);
 * const back = gpuPolicyFor(cpu);
 * if (typeof back === "string" || back.windowTokens !== 64) throw new Error("round trip");
 * ```
 * @module
 */

import { checkOptionFields, FormatError, InvalidValueError } from "../core/errors.ts";
import { getFormat } from "../codecs/format.ts";
import {
  type CachePolicy,
  checkPolicyShape,
  type Tier,
  tieredPolicy,
  uniformPolicy,
} from "../core/cache/policy.ts";

/** How many positions stay at the window format, and the page size. */
export interface GpuWindowPolicy {
  /** Tokens per page P (default 128); a multiple of every channel-axis group. */
  pageTokens?: number;
  /** First positions kept at the window format forever (attention sinks; default 4). */
  sinkTokens?: number;
  /** Most recent positions kept at the window format (default 64). */
  windowTokens?: number;
  /**
   * Storage of sinks, window and (unless stagingFormat holds them) the positions awaiting
   * eviction: "fp32" (default), "fp16" (the CPU cache's default), or an asymmetric int format
   * grouped per token such as "int8-g8-token" (a budget plan's choice at tight budgets). Values are encoded on the host as the CPU cache
   * encodes them, and the kernels read them through the format's decoder.
   */
  windowFormat?: string;
  /**
   * Storage of the positions past the window that wait in the ring for a whole eviction chunk
   * (the CPU policy's stagingFormat): one of the window formats; windowFormat unless set. A token
   * leaving the window is decoded from its window words and re-encoded in it on the host, as the
   * CPU cache does.
   */
  stagingFormat?: string;
}

/** One format pair for every paged position. */
export interface GpuUniformPolicy extends GpuWindowPolicy {
  /** Format of keys in pages, e.g. `int8-g32-channel`. */
  keyFormat: string;
  /** Format of values in pages, e.g. `int8-g8-token`. */
  valueFormat: string;
  /** Not set: one pair. */
  tiers?: undefined;
}

/**
 * Per layer and KV head, the format pair of a chunk leaving the window is the first tier whose
 * minScore ≤ the chunk's mean attention while it sat in the window (core/cache/policy.ts,
 * `tieredPolicy`; a PrecisionPlan's tiers).
 */
export interface GpuTieredPolicy extends GpuWindowPolicy {
  /** tiers[layer][kvHead], each head's last tier with minScore 0. */
  tiers: Tier[][][];
  /** Not set: the tiers name the formats. */
  keyFormat?: undefined;
  /** Not set: the tiers name the formats. */
  valueFormat?: undefined;
}

/** Whether channel-axis key pages store keys before RoPE (core/cache/PAGES.md). */
export interface GpuRopePolicy {
  /**
   * The model's RoPE base: channel-axis key pages store keys turned back to before RoPE, as the
   * CPU cache does under the same `ropeBase` (core/cache/key_rope.ts). Unset: keys as received.
   */
  ropeBase?: number;
}

/** Which formats the cache stores and how many positions stay at the window format. */
export type GpuCachePolicy = (GpuUniformPolicy | GpuTieredPolicy) & GpuRopePolicy;

/** The fields of a {@linkcode GpuCachePolicy}. */
const GPU_POLICY_FIELDS = [
  "pageTokens",
  "sinkTokens",
  "windowTokens",
  "windowFormat",
  "stagingFormat",
  "keyFormat",
  "valueFormat",
  "tiers",
  "ropeBase",
];

/** A GPU policy with every window field filled in. */
export type ResolvedGpuPolicy = GpuCachePolicy & Required<GpuWindowPolicy>;

/**
 * Fills in the window defaults (pages of 128, 4 sinks, a window of 64 at fp32, staging at the
 * window format) and checks them.
 *
 * @param p the policy
 * @returns the policy with every window field set
 * @throws {InvalidValueError} for a page size, sink count or window that is not a (positive)
 *   integer, or a field a GPU policy does not have
 * @throws {FormatError} for a window or staging format other than fp32, fp16 or an int format
 *   grouped per token
 */
export function withDefaults(p: GpuCachePolicy): ResolvedGpuPolicy {
  // a misspelt field was dropped without a word; the CPU policy's recentWindow is windowTokens here
  if (typeof p === "object" && p !== null && "recentWindow" in p) {
    throw new InvalidValueError(
      "GPU cache policy has recentWindow, the CPU policy's name: the GPU policy calls it windowTokens",
    );
  }
  checkOptionFields(p, GPU_POLICY_FIELDS, "GPU cache policy");
  const policy = {
    ...p,
    pageTokens: p.pageTokens ?? 128,
    sinkTokens: p.sinkTokens ?? 4,
    windowTokens: p.windowTokens ?? 64,
    windowFormat: p.windowFormat ?? "fp32",
    stagingFormat: p.stagingFormat ?? p.windowFormat ?? "fp32",
  };
  for (const k of ["pageTokens", "sinkTokens", "windowTokens"] as const) {
    const v = policy[k];
    if (!Number.isInteger(v) || v < (k === "pageTokens" ? 1 : 0)) {
      throw new InvalidValueError(
        `policy ${k} is ${v}, expected a ${
          k === "pageTokens" ? "positive" : "non-negative"
        } integer`,
      );
    }
  }
  for (const k of ["windowFormat", "stagingFormat"] as const) {
    const why = _windowUnfit(policy[k]);
    if (why) {
      throw new FormatError(
        `${k === "windowFormat" ? "window" : "staging"} format ${policy[k]}: ${why}`,
      );
    }
  }
  return policy;
}

// Why the GPU cache cannot keep sinks, window and ring (or the ring's staged tokens) in a format, or "" when it can: fp32, fp16,
// or an asymmetric int format grouped per token (decoded on the GPU as the CPU decodes it, so the
// GPU's eviction re-encodes what the CPU cache's would: word for word on llvmpipe; gpu/NOTES.md on
// compilers that fuse the decoder's multiply-add)
function _windowUnfit(name: string): string {
  if (name === "fp32" || name === "fp16") return "";
  let spec;
  try {
    spec = getFormat(name);
  } catch {
    return `unknown format ${JSON.stringify(name)}`;
  }
  return spec.kind === "int" && spec.axis === "token"
    ? ""
    : "the GPU cache keeps them at fp32, fp16 or an int format grouped per token";
}

/**
 * The GPU cache's policy for a CPU cache policy that it stores exactly as written, or why it
 * cannot: the GPU cache keeps sinks, window and the tokens awaiting eviction (in a staging format
 * of their own or not) at fp32, fp16 or an int format grouped per token. Uniform and tiered policies (PrecisionPlans) both run there, with
 * keys as received or before RoPE.
 *
 * @param policy the policy
 * @returns the GPU policy, or the reason as a sentence
 */
export function gpuPolicyFor(policy: CachePolicy): GpuCachePolicy | string {
  const o = policy.options;
  if (o.kind !== "uniform" && o.kind !== "tiered") {
    return `policy "${policy.label}" is of kind ${(o as { kind: string }).kind}, which the GPU ` +
      `cache does not know`;
  }
  // the window format also holds the tokens waiting for a whole channel group (unless a staging
  // format does), so it matters even without sinks and window
  const windowFormat = policy.windowFormat;
  const why = _windowUnfit(windowFormat);
  if (why) {
    return `policy "${policy.label}" keeps sinks, window and tokens awaiting eviction at ` +
      `${windowFormat}; ${why}`;
  }
  const stagingFormat = policy.stagingFormat ?? windowFormat;
  const unfit = _windowUnfit(stagingFormat);
  if (unfit) {
    return `policy "${policy.label}" stages tokens awaiting eviction at ${stagingFormat}; ${unfit}`;
  }
  const window = {
    windowFormat,
    ...(stagingFormat === windowFormat ? {} : { stagingFormat }),
    pageTokens: policy.pageTokens,
    sinkTokens: policy.sinkTokens,
    windowTokens: policy.recentWindow,
    ...(policy.ropeBase === undefined ? {} : { ropeBase: policy.ropeBase }),
  };
  return o.kind === "uniform"
    ? { keyFormat: o.keyFormat, valueFormat: o.valueFormat, ...window }
    : { tiers: o.tiers, ...window };
}

/**
 * The CPU cache policy a GPU policy is. The GPU cache also chooses each chunk's pair through it
 * (per layer, KV head and score), with the CPU cache's own semantics.
 *
 * @param p the GPU policy, defaults filled in
 * @param shape the cache's layers and KV heads
 * @returns a uniform or tiered policy with the same window, sinks and pages
 * @throws {FormatError} for a policy that names both formats and tiers, or neither
 * @throws {ShapeError} for tiers that do not cover every layer and KV head
 */
export function cpuPolicyOf(
  p: ResolvedGpuPolicy,
  shape: { nLayers: number; nKvHeads: number },
): CachePolicy {
  const window = {
    sinkTokens: p.sinkTokens,
    recentWindow: p.windowTokens,
    windowFormat: p.windowFormat,
    stagingFormat: p.stagingFormat,
    pageTokens: p.pageTokens,
    ...(p.ropeBase === undefined ? {} : { ropeBase: p.ropeBase }),
  };
  if (p.tiers === undefined) {
    if (typeof p.keyFormat !== "string" || typeof p.valueFormat !== "string") {
      throw new FormatError("a GPU cache policy names keyFormat and valueFormat, or tiers");
    }
    return uniformPolicy({ keyFormat: p.keyFormat, valueFormat: p.valueFormat, ...window });
  }
  if (p.keyFormat !== undefined || p.valueFormat !== undefined) {
    throw new FormatError("a GPU cache policy names keyFormat and valueFormat, or tiers, not both");
  }
  const policy = tieredPolicy({ label: "gpu tiers", tiers: p.tiers, ...window });
  checkPolicyShape(policy, shape);
  return policy;
}
