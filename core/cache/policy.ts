/**
 * Cache policies: which tokens stay at the window format (sinks, recent window) and which format
 * pair a token gets when it leaves the window, from the attention it accumulated there.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { uniformPolicy } from "./policy.ts";
 * const p = uniformPolicy({ keyFormat: "int4-g32-channel", valueFormat: "int4-g32-channel" });
 * if (p.formatFor(0, 0, 0.5).keyFormat !== "int4-g32-channel") throw new Error("uniform");
 * ```
 * @module
 */

import { type FormatSpec, getFormat } from "../../codecs/format.ts";
import {
  checkOptionFields,
  FormatError,
  InvalidValueError,
  ShapeError,
  showValue,
} from "../errors.ts";
import { isRopeBase, MIN_ROPE_BASE } from "../tensor.ts";

/** The formats of one token's key and value. */
export interface FormatPair {
  /** Format of the key. */
  readonly keyFormat: string;
  /** Format of the value. */
  readonly valueFormat: string;
}

/** Decides where each token of a {@linkcode MixedPrecisionKVCache} is stored. */
export interface CachePolicy {
  /** Short human-readable name, e.g. "int4-g32-channel" or "plan ε=0.01". */
  readonly label: string;
  /** The first sinkTokens positions stay in the window format for good. */
  readonly sinkTokens: number;
  /** The most recent tokens kept in the window format. */
  readonly recentWindow: number;
  /** Format of sinks and window: fp32, fp16 or a format grouped per token (e.g. int8-g8-token). */
  readonly windowFormat: string;
  /**
   * Format of the tokens past the recent window that wait in the ring until a whole eviction chunk
   * leaves for the pages (a channel group of keys needs all its tokens): windowFormat unless set.
   * They are re-quantized for the pages anyway and no longer the newest, so a narrower format than
   * the window's saves ring bytes at little cost.
   */
  readonly stagingFormat: string;
  /** Tokens per page. */
  readonly pageTokens: number;
  /**
   * When set, pages of channel-axis key formats hold keys rotated back to before RoPE (llama2.c's
   * rotation of pairs (2i, 2i+1) with this base; the keys the cache receives carry RoPE). A channel
   * then keeps its scale along a group of tokens instead of turning with position, which lowers
   * the error of per-channel key codes; attention rotates the decoded keys forward again.
   */
  readonly ropeBase?: number;
  /**
   * Format pair for a token leaving the recent window.
   * @param layer layer index
   * @param kvHead KV head index
   * @param score attention the token accumulated while in the window (mean over the query heads
   *   of its group, summed over the queries it saw); 0 when there is no window
   * @returns the formats to store it in
   */
  formatFor(layer: number, kvHead: number, score: number): FormatPair;
  /**
   * Every pair formatFor can return, so a cache can check them all up front.
   * @returns the pairs
   */
  pairs(): FormatPair[];
  /** The options that rebuild this policy with {@linkcode policyFromJSON} (serialisation). */
  readonly options: PolicyJSON;
}

/** The JSON form of a policy: how a serialised cache records where its tokens go. */
export type PolicyJSON =
  | ({ kind: "uniform" } & UniformOptions)
  | ({ kind: "tiered" } & TieredOptions);

/**
 * Rebuilds a policy from its JSON form.
 *
 * @param json the `options` of a policy
 * @returns the policy
 * @throws InvalidValueError naming the first malformed field (a field its kind does not have
 *   included); FormatError naming the field of an unknown format
 */
export function policyFromJSON(json: PolicyJSON): CachePolicy {
  if (typeof json !== "object" || json === null) {
    throw new InvalidValueError(`policy is ${json}, expected an object with a kind`);
  }
  if (json.kind !== "uniform" && json.kind !== "tiered") {
    throw new InvalidValueError(
      `unknown policy kind ${JSON.stringify((json as { kind: unknown }).kind)}`,
    );
  }
  // the constructors refuse a field their kind does not have
  return json.kind === "uniform" ? uniformPolicy(json) : tieredPolicy(json);
}

const _WINDOW_KEYS = [
  "sinkTokens",
  "recentWindow",
  "windowFormat",
  "stagingFormat",
  "pageTokens",
  "ropeBase",
];
/** The fields of each kind's JSON form. */
const _KEYS = {
  uniform: ["kind", ..._WINDOW_KEYS, "keyFormat", "valueFormat", "label"],
  tiered: ["kind", ..._WINDOW_KEYS, "tiers", "label"],
};

// a policy's options keep only its kind's fields, so what a cache saves policyFromJSON loads
function _own<T extends object>(options: T, kind: keyof typeof _KEYS): T {
  return Object.fromEntries(
    Object.entries(options).filter(([k]) => k !== "kind" && _KEYS[kind].includes(k)),
  ) as T;
}

function _checkFields(options: unknown, kind: keyof typeof _KEYS): void {
  checkOptionFields(options, _KEYS[kind], `${kind} policy options`);
  const k = (options as { kind?: unknown }).kind;
  if (k !== undefined && k !== kind) {
    throw new InvalidValueError(`${kind} policy options have kind ${showValue(k)}`);
  }
}

const _TIER_FIELDS: Record<keyof Tier, true> = {
  minScore: true,
  keyFormat: true,
  valueFormat: true,
};

// tiers from JSON or a caller: every level is checked so a malformed one is named, not a TypeError
function _checkTiers(tiers: unknown): void {
  if (!Array.isArray(tiers)) throw new InvalidValueError("tiers must be an array of layers");
  if (tiers.length === 0) throw new InvalidValueError("tiers has no layers");
  tiers.forEach((layer: unknown, l) => {
    if (!Array.isArray(layer)) {
      throw new InvalidValueError(`tiers[${l}] must be an array of KV heads`);
    }
    if (layer.length === 0) throw new InvalidValueError(`tiers[${l}] has no KV heads`);
    layer.forEach((head: unknown, h) => {
      if (!Array.isArray(head)) {
        throw new InvalidValueError(`tiers[${l}][${h}] must be an array of tiers`);
      }
      if (head.length === 0) throw new InvalidValueError(`tiers[${l}][${h}] has no tiers`);
      head.forEach((t: Tier, i) => {
        const at = `tiers[${l}][${h}][${i}]`;
        if (typeof t !== "object" || t === null) {
          throw new InvalidValueError(
            `${at} is ${showValue(t)}, expected { minScore, keyFormat, valueFormat }`,
          );
        }
        checkOptionFields(t, _TIER_FIELDS, at);
        _checkPair(t, `${at}.`);
        // a NaN would sort anywhere and match no score: the tier would silently never be used
        if (!Number.isFinite(t.minScore)) {
          throw new InvalidValueError(
            `layer ${l} head ${h} tier ${i} has minScore ${
              showValue(t.minScore)
            }, expected a finite number`,
          );
        }
      });
    });
  });
}

/** Options shared by the policies' constructors. */
export interface WindowOptions {
  /** Sink tokens kept at the window format (default 0). */
  sinkTokens?: number;
  /** Recent tokens kept at the window format (default 0). */
  recentWindow?: number;
  /**
   * Format of sinks and window. Default "fp16", or "fp32" when a page format is fp32: every token
   * passes the window on its way to a page, so an fp16 window would round fp32 pages' tokens.
   */
  windowFormat?: string;
  /**
   * Format of the tokens waiting in the ring for a whole eviction chunk (default windowFormat;
   * see {@linkcode CachePolicy.stagingFormat}).
   */
  stagingFormat?: string;
  /** Tokens per page (default 32). */
  pageTokens?: number;
  /**
   * RoPE base of the model: channel-axis key pages store keys before RoPE (see
   * {@linkcode CachePolicy.ropeBase}). Default: keys stored as received.
   */
  ropeBase?: number;
}

/** Options of {@linkcode uniformPolicy}. */
export interface UniformOptions extends WindowOptions {
  /** Format of every key outside sinks and window. */
  keyFormat: string;
  /** Format of every value outside sinks and window. */
  valueFormat: string;
  /** Label (defaults to the formats). */
  label?: string;
}

/** The window format a policy of these page pairs gets by default (WindowOptions.windowFormat). */
export function defaultWindowFormat(pairs: readonly FormatPair[]): string {
  return pairs.some((p) => p.keyFormat === "fp32" || p.valueFormat === "fp32") ? "fp32" : "fp16";
}

function windowFields(o: WindowOptions, pairs: readonly FormatPair[]) {
  const sinkTokens = o.sinkTokens ?? 0, recentWindow = o.recentWindow ?? 0;
  const pageTokens = o.pageTokens ?? 32;
  for (const [name, v] of [["sinkTokens", sinkTokens], ["recentWindow", recentWindow]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new InvalidValueError(`${name} is ${showValue(v)}, expected an integer ≥ 0`);
    }
  }
  if (!Number.isInteger(pageTokens) || pageTokens <= 0) {
    throw new InvalidValueError(
      `pageTokens is ${showValue(pageTokens)}, expected a positive integer`,
    );
  }
  if (o.ropeBase !== undefined && !isRopeBase(o.ropeBase)) {
    throw new InvalidValueError(
      `ropeBase is ${showValue(o.ropeBase)}, expected a finite number ≥ ${MIN_ROPE_BASE}`,
    );
  }
  const windowFormat = o.windowFormat ?? defaultWindowFormat(pairs);
  _checkFormat(windowFormat, "windowFormat", true);
  const stagingFormat = o.stagingFormat ?? windowFormat;
  _checkFormat(stagingFormat, "stagingFormat", true);
  return {
    sinkTokens,
    recentWindow,
    windowFormat,
    stagingFormat,
    pageTokens,
    ...(o.ropeBase === undefined ? {} : { ropeBase: o.ropeBase }),
  };
}

/**
 * One format pair for every token outside sinks and window: the uniform baselines (FP16, INT8,
 * INT4, KIVI-style with a residual window, …).
 *
 * @param options formats and window
 * @returns the policy
 * @throws InvalidValueError naming the first malformed field, or a field a uniform policy does not
 *   have; FormatError naming the field of an unknown format, or of one a cache cannot store there
 *   (grouped across KV heads, or a window format grouped along tokens)
 */
export function uniformPolicy(options: UniformOptions): CachePolicy {
  _checkFields(options, "uniform");
  _checkPair(options, "");
  if (options.label !== undefined) _checkLabel(options.label);
  const pair = { keyFormat: options.keyFormat, valueFormat: options.valueFormat };
  const window = windowFields(options, [pair]);
  const label = options.label ??
    (pair.keyFormat === pair.valueFormat
      ? pair.keyFormat
      : `K ${pair.keyFormat} / V ${pair.valueFormat}`);
  return {
    label,
    ...window,
    formatFor: () => pair,
    pairs: () => [pair],
    // the window format resolved: a saved cache's layout must not follow a later default
    options: { kind: "uniform", ..._own(options, "uniform"), windowFormat: window.windowFormat },
  };
}

/** One tier of a tiered policy: tokens whose score is at least minScore get these formats. */
export interface Tier extends FormatPair {
  /** Lowest observed score for this tier. */
  readonly minScore: number;
}

/** Options of {@linkcode tieredPolicy}. */
export interface TieredOptions extends WindowOptions {
  /** tiers[layer][kvHead]: tiers sorted by minScore descending; the last has minScore 0. */
  tiers: Tier[][][];
  /** Label. */
  label: string;
}

/**
 * A policy that picks the first tier whose minScore ≤ the token's observed score, per layer and
 * KV head: the online form of a PrecisionPlan.
 *
 * @param options tiers and window
 * @returns the policy
 * @throws InvalidValueError naming the first malformed tier or field (or a head without a last
 *   tier at 0, or a field a tiered policy does not have); FormatError naming the field of an
 *   unknown format, or of one a cache cannot store there
 */
export function tieredPolicy(options: TieredOptions): CachePolicy {
  _checkFields(options, "tiered");
  _checkTiers(options.tiers);
  _checkLabel(options.label);
  // copies: a caller's later change to its tiers once set the choices and the saved options apart
  const tiers = _copyTiers(options.tiers).map((layer) =>
    layer.map((head) => head.sort((a, b) => b.minScore - a.minScore))
  );
  const unique = new Map<string, FormatPair>();
  for (const [l, layer] of tiers.entries()) {
    for (const [h, head] of layer.entries()) {
      // scores are ≥ 0: below 0 a last tier would still catch every token, contradicting the plan
      const lowest = head[head.length - 1].minScore;
      if (lowest !== 0) {
        throw new InvalidValueError(
          `layer ${l} head ${h} has lowest minScore ${lowest}; every head needs a last tier with ` +
            `minScore 0`,
        );
      }
      for (const t of head) {
        unique.set(`${t.keyFormat}|${t.valueFormat}`, {
          keyFormat: t.keyFormat,
          valueFormat: t.valueFormat,
        });
      }
    }
  }
  const window = windowFields(options, [...unique.values()]);
  return {
    label: options.label,
    ...window,
    formatFor(layer, kvHead, score) {
      const head = tiers[layer]?.[kvHead];
      if (head === undefined) {
        throw new ShapeError(
          `layer ${layer}, KV head ${kvHead} is outside the tiers (${tiers.length} layers of ` +
            `${tiers[0].length} KV heads)`,
        );
      }
      for (const t of head) if (score >= t.minScore) return t;
      return head[head.length - 1];
    },
    pairs: () => [...unique.values()],
    options: {
      kind: "tiered",
      ..._own({ ...options, tiers: _copyTiers(options.tiers) }, "tiered"),
      windowFormat: window.windowFormat,
    },
  };
}

function _copyTiers(tiers: Tier[][][]): Tier[][][] {
  return tiers.map((layer) =>
    layer.map((head) =>
      head.map(({ minScore, keyFormat, valueFormat }) => ({ minScore, keyFormat, valueFormat }))
    )
  );
}

/**
 * Checks that a policy fits a cache's layers and KV heads: a tiered policy needs tiers for every
 * layer and KV head (a uniform one fits any shape).
 *
 * @param policy the policy
 * @param shape the cache's layers and KV heads
 * @throws {ShapeError} naming the first mismatch; {InvalidValueError} for something that is not a
 *   policy
 */
export function checkPolicyShape(
  policy: CachePolicy,
  shape: { nLayers: number; nKvHeads: number },
): void {
  // a cache built without one read `policy.options` of undefined, a TypeError
  const p = policy as Partial<CachePolicy> | null | undefined;
  if (
    typeof p !== "object" || p === null || typeof p.formatFor !== "function" ||
    typeof p.pairs !== "function" || typeof p.options !== "object"
  ) {
    throw new InvalidValueError(
      `policy is ${showValue(policy)}, expected a CachePolicy (uniformPolicy, tieredPolicy or ` +
        "planPolicy)",
    );
  }
  if (policy.options.kind !== "tiered") return;
  const { tiers } = policy.options;
  if (tiers.length !== shape.nLayers) {
    throw new ShapeError(
      `policy ${policy.label} has tiers for ${tiers.length} layers, the cache has ${shape.nLayers}`,
    );
  }
  tiers.forEach((layer, l) => {
    if (layer.length !== shape.nKvHeads) {
      throw new ShapeError(
        `policy ${policy.label}: layer ${l} has tiers for ${layer.length} KV heads, the cache ` +
          `has ${shape.nKvHeads}`,
      );
    }
  });
}

function _checkPair(p: Partial<FormatPair>, where: string): void {
  for (const key of ["keyFormat", "valueFormat"] as const) _checkFormat(p?.[key], `${where}${key}`);
}

/**
 * The registry's spec of a format a cache is asked to store.
 *
 * @param name format name
 * @param field what names it, for the message ("keyFormat", "windowFormat"; default "format")
 * @returns the spec
 * @throws FormatError for an unknown name, suggesting formats a cache stores (the codecs' own
 *   examples include one grouped across KV heads, which no cache stores)
 */
export function cacheFormatSpec(name: string, field = "format"): FormatSpec {
  try {
    return getFormat(name);
  } catch (e) {
    if (!(e instanceof FormatError)) throw e;
    throw new FormatError(
      `${field}: unknown format ${showValue(name)}; a cache stores e.g. int4-g32-channel, ` +
        "int8-g8-token, fp16, bf16, fp32, fp8e4m3 (codecs/FORMAT.md)",
      { cause: e },
    );
  }
}

// an unknown name, or one no cache stores there, would otherwise fail only when a cache is built,
// without naming the field: pages hold one KV head, and the window holds tokens one at a time
function _checkFormat(name: unknown, field: string, window = false): void {
  if (typeof name !== "string") {
    throw new InvalidValueError(`${field} is ${showValue(name)}, expected a format name`);
  }
  const axis = cacheFormatSpec(name, field).axis;
  if (axis === "heads") {
    throw new FormatError(
      `${field}: ${name} groups across KV heads; a cache holds each KV head apart`,
    );
  }
  if (window && axis === "channel") {
    throw new FormatError(
      `${field}: ${name} groups along tokens; the window holds tokens one at a time (fp32, fp16 ` +
        "or a per-token format)",
    );
  }
}

function _checkLabel(label: unknown): void {
  if (typeof label !== "string") {
    throw new InvalidValueError(`label is ${showValue(label)}, expected a string`);
  }
}
