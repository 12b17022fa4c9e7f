/**
 * Saving and loading a {@linkcode MixedPrecisionKVCache} as bytes. Layout (little-endian):
 * magic "KVPC", u32 version, u32 JSON length, the JSON description, zero padding to 4 bytes, u32
 * CRC-32 of the JSON; then per layer and KV head (layer-major) the blocks:
 *
 * - sinks-K, sinks-V: min(sinkTokens, maxSeqLen) slots each;
 * - window-K, window-V, the ring: min(recentWindow, maxSeqLen) + evictQuantum slots each (files
 *   saved before that clamp hold recentWindow + evictQuantum and still load). A slot is
 *   wordsFor(windowFormat, headDim) u32 words; ring slot (windowStart + i) mod slots holds the
 *   i-th oldest of its windowN tokens, and a slot a token left keeps its old words;
 * - with a stagingFormat other than the windowFormat (version 4): the window blocks hold the
 *   recent window alone, min(recentWindow, maxSeqLen) slots, and staging-K, staging-V follow them:
 *   evictQuantum slots of wordsFor(stagingFormat, headDim) words, slot i holding the i-th oldest
 *   of the windowN − min(recentWindow, maxSeqLen) oldest ring tokens (if more than 0), the window
 *   ring then the rest;
 * - window scores: ⌈(recentWindow + evictQuantum) / evictQuantum⌉ f32, unclamped (the GPU cache
 *   numbers chunks so; core/cache/PAGES.md); an empty block (0 floats, still followed by its
 *   checksum) for single-pair policies;
 * - per pool, per page: its K words, its V words (core/cache/PAGES.md) and, for keys stored before
 *   RoPE, its key groups' first positions (i32, pageTokens / key group of them);
 *
 * every block followed by its u32 CRC-32. The JSON holds `shape`, `policy` (policyFromJSON's form),
 * the layers' `lengths` and `heads[layer][kvHead]`: `sinkN`, `windowN`, `windowStart` (the ring
 * slot of the oldest window token) and `pools`, each `{ pair: { keyFormat, valueFormat }, pages:
 * [valid tokens of each page] }` in the order their blocks follow. Loading checks the magic, the version, the padding, the exact total size (naming expected
 * vs actual bytes) and every checksum (naming the block and byte offset), and builds a new cache, so
 * a failed load changes nothing.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { loadCache, saveCache } from "./serialize.ts";
 * import { MixedPrecisionKVCache } from "./mixed_cache.ts";
 * import { uniformPolicy } from "./policy.ts";
 * const c = new MixedPrecisionKVCache({ nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 8, maxSeqLen: 8 },
 *   uniformPolicy({ keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" }));
 * c.append(0, 0, new Float32Array(8).fill(1), new Float32Array(8).fill(2));
 * const copy = loadCache(saveCache(c));
 * if (copy.length(0) !== 1) throw new Error("round trip");
 * ```
 * @module
 */

import { CapacityError, CorruptDataError, InvalidValueError, typeName } from "../errors.ts";
import { asBytes } from "../model/bytes.ts";
import type { KVCacheShape } from "../model/kv_cache.ts";
import { type MixedCacheOptions, MixedPrecisionKVCache } from "./mixed_cache.ts";
import { type FormatPair, policyFromJSON, type PolicyJSON } from "./policy.ts";

const MAGIC = 0x4350564b; // "KVPC" little-endian
// 2: window scores per eviction chunk (1 kept one per ring slot); 3: key group positions of
// pre-RoPE key pages (a version 2 file has none and loads as before, unless its policy has ropeBase)
// 4: a staging format apart from the window format (staging blocks; files without one are still
// written as version 3, their layout unchanged)
const VERSION = 4;

interface HeadJSON {
  sinkN: number;
  windowN: number;
  windowStart: number;
  pools: { pair: FormatPair; pages: number[] }[];
}

interface CacheJSON {
  shape: KVCacheShape;
  policy: PolicyJSON;
  lengths: number[];
  heads: HeadJSON[][];
}

let crcTable: Uint32Array | undefined;

/**
 * CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of bytes.
 * @param bytes input
 * @returns the checksum
 */
export function crc32(bytes: Uint8Array): number {
  crcTable ??= Uint32Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function blocksOf(
  cache: MixedPrecisionKVCache,
  layer: number,
  kv: number,
): [string, Uint32Array | Float32Array | Int32Array][] {
  const s = cache.segments(layer, kv);
  const blocks: [string, Uint32Array | Float32Array | Int32Array][] = [
    ["sinks K", s.sinkK],
    ["sinks V", s.sinkV],
    ["window K", s.windowK],
    ["window V", s.windowV],
  ];
  if (s.stageK.length > 0) blocks.push(["staging K", s.stageK], ["staging V", s.stageV]);
  blocks.push(["window scores", cache.windowScores(layer, kv)]);
  s.pools.forEach((pool, p) => {
    pool.pages.forEach((page, i) => {
      blocks.push([`pool ${p} page ${i} K`, page.kWords], [`pool ${p} page ${i} V`, page.vWords]);
      if (page.starts) blocks.push([`pool ${p} page ${i} key positions`, page.starts]);
    });
  });
  return blocks;
}

/**
 * Serialises a cache.
 * @param cache the cache
 * @returns the bytes
 * @throws {InvalidValueError} for anything but a MixedPrecisionKVCache
 */
export function saveCache(cache: MixedPrecisionKVCache): Uint8Array {
  if (!(cache instanceof MixedPrecisionKVCache)) {
    throw new InvalidValueError(
      `cache is ${typeName(cache)}, expected a MixedPrecisionKVCache (a GPU cache saves ` +
        "through saveCache(await gpuCache.toCpu()))",
    );
  }
  const { nLayers, nKvHeads } = cache.shape;
  const heads: HeadJSON[][] = [];
  for (let l = 0; l < nLayers; l++) {
    heads.push([]);
    for (let h = 0; h < nKvHeads; h++) {
      const s = cache.segments(l, h);
      heads[l].push({
        sinkN: s.sinkN,
        windowN: s.windowN,
        windowStart: s.windowStart,
        pools: s.pools.map((p) => ({
          pair: p.pair,
          pages: p.pages.map((g) => g.n),
        })),
      });
    }
  }
  const json: CacheJSON = {
    shape: cache.shape,
    policy: cache.policy.options,
    lengths: Array.from({ length: nLayers }, (_, l) => cache.length(l)),
    heads,
  };
  const text = new TextEncoder().encode(JSON.stringify(json));
  const textPadded = (text.length + 3) & ~3;
  const blocks = [];
  for (let l = 0; l < nLayers; l++) {
    for (let h = 0; h < nKvHeads; h++) blocks.push(...blocksOf(cache, l, h));
  }
  const size = 12 + textPadded + 4 + blocks.reduce((a, [, b]) => a + b.byteLength + 4, 0);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC, true);
  // a file without staged tokens apart keeps version 3's layout and number, so readers of
  // version 3 still load it
  const staged = cache.policy.stagingFormat !== cache.policy.windowFormat;
  view.setUint32(4, staged ? VERSION : 3, true);
  view.setUint32(8, text.length, true);
  out.set(text, 12);
  let o = 12 + textPadded;
  view.setUint32(o, crc32(text), true);
  o += 4;
  for (const [, block] of blocks) {
    const bytes = new Uint8Array(block.buffer, block.byteOffset, block.byteLength);
    out.set(bytes, o);
    o += bytes.length;
    view.setUint32(o, crc32(bytes), true);
    o += 4;
  }
  return out;
}

function descriptionError(what: string, got: unknown, expected: string): never {
  // a corrupted array can hold millions of entries: the message shows its start
  const shown = JSON.stringify(got) ?? String(got);
  throw new CorruptDataError(
    `cache description: ${what} is ${
      shown.length > 80 ? `${shown.slice(0, 80)}… (${shown.length} characters)` : shown
    }, expected ${expected}`,
    12,
  );
}

/**
 * Checks, before a cache of the description's shape is built, that its per-layer and per-head
 * arrays have the shape's lengths: the cache's buffers scale with nLayers × nKvHeads, the
 * description's arrays with the file, so a short file claiming millions of layers is refused
 * before it allocates (a 264-byte one once built 4.4 GB for 18 s first). A shape whose counts are
 * not positive integers is left to the cache's constructor, which names them.
 */
function checkDescriptionArrays(json: CacheJSON): void {
  const { nLayers, nKvHeads } = json.shape;
  if (!_isCount(nLayers) || !_isCount(nKvHeads)) return;
  if (!Array.isArray(json.lengths) || json.lengths.length !== nLayers) {
    descriptionError("lengths", json.lengths, `${nLayers} counts`);
  }
  if (!Array.isArray(json.heads) || json.heads.length !== nLayers) {
    descriptionError("heads", json.heads, `${nLayers} layers`);
  }
  json.heads.forEach((layer, l) => {
    if (!Array.isArray(layer) || layer.length !== nKvHeads) {
      descriptionError(`heads[${l}]`, layer, `${nKvHeads} KV heads`);
    }
  });
}

const _isCount = (x: unknown): x is number => Number.isInteger(x) && (x as number) > 0;

/**
 * Checks the description's counts against the cache its shape and policy built, so that a file
 * whose checksums hold but whose description is wrong (hand-edited, or written by a buggy saver)
 * is refused by name instead of loading into an inconsistent cache.
 */
function checkDescription(json: CacheJSON, cache: MixedPrecisionKVCache): void {
  const fail = descriptionError;
  const count = (what: string, x: unknown, max: number): number =>
    Number.isInteger(x) && (x as number) >= 0 && (x as number) <= max
      ? x as number
      : fail(what, x, `an integer in [0, ${max}]`);
  const { nLayers, nKvHeads, maxSeqLen } = cache.shape;
  const { pageTokens } = cache.policy;
  // the slots the cache holds: sinks and window never past maxSeqLen
  const sinkTokens = Math.min(cache.policy.sinkTokens, maxSeqLen);
  const recent = Math.min(cache.policy.recentWindow, maxSeqLen);
  const ring = recent + cache.evictQuantum;
  // slots of the window blocks: the recent window alone when tokens are staged apart
  const windowSlots = cache.policy.stagingFormat === cache.policy.windowFormat ? ring : recent;
  const declared = new Set(cache.policy.pairs().map((p) => `${p.keyFormat}|${p.valueFormat}`));
  for (let l = 0; l < nLayers; l++) {
    const length = count(`lengths[${l}]`, json.lengths[l], maxSeqLen);
    const layer = json.heads[l];
    for (let h = 0; h < nKvHeads; h++) {
      const at = `heads[${l}][${h}]`, head = layer[h];
      if (typeof head !== "object" || head === null) fail(at, head, "an object");
      const sinkN = count(`${at}.sinkN`, head.sinkN, sinkTokens);
      const windowN = count(`${at}.windowN`, head.windowN, ring - 1);
      count(`${at}.windowStart`, head.windowStart, Math.max(windowSlots - 1, 0));
      if (!Array.isArray(head.pools)) fail(`${at}.pools`, head.pools, "an array");
      let held = sinkN + windowN;
      const seen = new Set<string>();
      head.pools.forEach((pool, p) => {
        const key = `${pool?.pair?.keyFormat}|${pool?.pair?.valueFormat}`;
        if (!declared.has(key) || seen.has(key)) {
          fail(`${at}.pools[${p}].pair`, pool?.pair, `one of the policy's pairs, once`);
        }
        seen.add(key);
        if (!Array.isArray(pool.pages)) fail(`${at}.pools[${p}].pages`, pool.pages, "an array");
        pool.pages.forEach((n, i) => {
          // pages fill in order: only the last may be partly full
          const last = i === pool.pages.length - 1;
          const what = `${at}.pools[${p}].pages[${i}]`;
          if (!last && n !== pageTokens) fail(what, n, `${pageTokens} (a full page)`);
          // a page exists only once an eviction has filled part of it
          if (n === 0) fail(what, n, "a page with tokens");
          held += count(what, n, pageTokens);
          if (n % cache.evictQuantum !== 0) {
            fail(what, n, `a multiple of the eviction chunk ${cache.evictQuantum}`);
          }
        });
      });
      if (held !== length) {
        fail(`${at}: sinks + window + pages`, held, `lengths[${l}] = ${length}`);
      }
      if (sinkN < sinkTokens && held !== sinkN) {
        fail(`${at}.sinkN`, sinkN, `${sinkTokens} before any token enters the window`);
      }
    }
  }
}

/**
 * Words of each head's sinks and window blocks in a file saved before sinks and window were
 * clamped to maxSeqLen (commit 201444f): sinkTokens and recentWindow + evictQuantum slots, against
 * the cache's own; undefined when the policy's sinks and window fit maxSeqLen (the same layout).
 * Such a cache never evicted (its window could not fill), so its window starts at slot 0 and the
 * leading slots of each block are the cache's.
 */
function legacyBlockWords(
  cache: MixedPrecisionKVCache,
): Map<string, { stored: number; held: number }> | undefined {
  const { sinkTokens, recentWindow } = cache.policy, M = cache.shape.maxSeqLen;
  // such files predate staging formats (version 4), so a policy with one has no legacy layout
  if (cache.policy.stagingFormat !== cache.policy.windowFormat) return undefined;
  if (sinkTokens <= M && recentWindow <= M) return undefined;
  const s = cache.segments(0, 0),
    slot = s.windowK.length / (Math.min(recentWindow, M) +
      cache.evictQuantum);
  const sinks = { stored: sinkTokens * slot, held: s.sinkK.length };
  const ring = { stored: (recentWindow + cache.evictQuantum) * slot, held: s.windowK.length };
  return new Map([["sinks K", sinks], ["sinks V", sinks], ["window K", ring], ["window V", ring]]);
}

/**
 * Key group positions pass their checksum only if written so; a crafted file must still not send
 * attention outside the rope table: each must leave room for its group before maxSeqLen.
 */
function checkKeyPositions(
  name: string,
  starts: Int32Array,
  offset: number,
  cache: MixedPrecisionKVCache,
): void {
  const G = cache.policy.pageTokens / starts.length;
  const last = cache.shape.maxSeqLen - G;
  starts.forEach((p, i) => {
    if (p < 0 || p > last) {
      throw new CorruptDataError(
        `cache block "${name}" at byte ${offset}: position ${p} of group ${i} is outside ` +
          `[0, ${last}]`,
        offset + 4 * i,
      );
    }
  });
}

/**
 * Loads a cache saved by {@linkcode saveCache}. Throws {@linkcode CorruptDataError} for a wrong
 * magic or version, non-zero padding, truncated or oversized input (expected vs actual bytes) and
 * checksum mismatches (naming the block and its byte offset), a description whose counts do not
 * fit its shape and policy (naming the field) or whose shape cannot be allocated; BudgetError when
 * the cache would exceed `options.maxBytes`; ShapeError for input that is neither a Uint8Array nor
 * an ArrayBuffer.
 * @param input the serialised cache (its bytes, or a buffer of them)
 * @param options backend, integerDot, codecs and budget of the new cache (as its constructor's)
 * @returns a new cache equal to the saved one
 */
export function loadCache(
  input: Uint8Array | ArrayBuffer,
  options: MixedCacheOptions = {},
): MixedPrecisionKVCache {
  const bytes = asBytes(input, "cache data");
  if (bytes.length < 16) {
    throw new CorruptDataError(`cache data is ${bytes.length} bytes, shorter than its header`, 0);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0, true) !== MAGIC) {
    throw new CorruptDataError("cache data does not start with magic KVPC", 0);
  }
  const version = view.getUint32(4, true);
  if (version < 2 || version > VERSION) {
    throw new CorruptDataError(`cache format version ${version}, expected 2 to ${VERSION}`, 4);
  }
  const textLength = view.getUint32(8, true);
  // plain arithmetic: a corrupted length near 2^32 must not wrap around in 32-bit operators
  const textPadded = Math.ceil(textLength / 4) * 4;
  if (12 + textPadded + 4 > bytes.length) {
    throw new CorruptDataError(
      `cache data is ${bytes.length} bytes, its header alone needs ${12 + textPadded + 4} ` +
        `(truncated, or a corrupted description length ${textLength} at byte 8)`,
      8,
    );
  }
  const text = bytes.subarray(12, 12 + textLength);
  if (view.getUint32(12 + textPadded, true) !== crc32(text)) {
    throw new CorruptDataError(
      "cache description fails its checksum at byte 12 (or its length at byte 8 is corrupted)",
      12,
    );
  }
  // the checksum covers the description only: its padding must be the zeros saveCache writes
  for (let i = 12 + textLength; i < 12 + textPadded; i++) {
    if (bytes[i] !== 0) {
      throw new CorruptDataError(
        `cache description padding byte ${i} is ${bytes[i]}, expected 0`,
        i,
      );
    }
  }
  let json: CacheJSON;
  try {
    json = JSON.parse(new TextDecoder().decode(text));
  } catch (e) {
    throw new CorruptDataError(`cache description at byte 12 is not JSON: ${e}`, 12);
  }
  if (typeof json !== "object" || json === null) {
    throw new CorruptDataError("cache description at byte 12 is not an object", 12);
  }
  for (const field of ["shape", "policy"] as const) {
    if (typeof json[field] !== "object" || json[field] === null) {
      throw new CorruptDataError(`cache description has no ${field}`, 12);
    }
  }
  // files saved before policies recorded their window format resolved had the fp16 default, which
  // fp32 pages now change (WindowOptions.windowFormat)
  const policy = policyFromJSON(
    json.policy.windowFormat == null ? { ...json.policy, windowFormat: "fp16" } : json.policy,
  );
  if (version === 2 && policy.ropeBase !== undefined) {
    // version 2 predates keys stored before RoPE: such a file cannot hold their group positions
    throw new CorruptDataError(
      `cache format version 2 with a policy that stores keys before RoPE (ropeBase ` +
        `${policy.ropeBase}), which version 2 cannot hold; expected version ${VERSION}`,
      4,
    );
  }
  if (version < 4 && policy.stagingFormat !== policy.windowFormat) {
    throw new CorruptDataError(
      `cache format version ${version} with a staging format (${policy.stagingFormat}) other ` +
        `than the window format, which version ${version} cannot hold; expected version ${VERSION}`,
      4,
    );
  }
  checkDescriptionArrays(json);
  let cache: MixedPrecisionKVCache;
  try {
    // the shape's own fields: files saved before shapes refused others (a model config's dim,
    // say) held them, and load as they did
    const { nLayers, nHeads, nKvHeads, headDim, maxSeqLen } = json.shape;
    cache = new MixedPrecisionKVCache(
      { nLayers, nHeads, nKvHeads, headDim, maxSeqLen },
      policy,
      options,
    );
  } catch (e) {
    // a shape too large to allocate (a corrupted maxSeqLen, say): refused by the cache's size
    // checks, or a RangeError of the runtime
    if (!(e instanceof RangeError || e instanceof CapacityError)) throw e;
    throw new CorruptDataError(
      `cache description's shape ${
        JSON.stringify(json.shape)
      } cannot be allocated (${e.message}): ` +
        `corrupted, or larger than this runtime holds`,
      12,
    );
  }
  checkDescription(json, cache);
  // rebuild pools and pages from the description, then fill every block from the bytes
  for (let l = 0; l < json.shape.nLayers; l++) {
    for (let h = 0; h < json.shape.nKvHeads; h++) {
      const head = json.heads[l][h];
      const seg = cache.segments(l, h);
      const pools = head.pools.map((p) => {
        const pool = cache.createPool(p.pair);
        for (const n of p.pages) pool.newPage().n = n;
        return pool;
      });
      cache.restoreSegments(l, h, {
        ...seg,
        sinkN: head.sinkN,
        windowN: head.windowN,
        windowStart: head.windowStart,
        pools,
      });
    }
  }
  const blocks = [];
  for (let l = 0; l < json.shape.nLayers; l++) {
    for (let h = 0; h < json.shape.nKvHeads; h++) blocks.push(...blocksOf(cache, l, h));
  }
  const total = (stored: number[]) => 12 + textPadded + 4 + stored.reduce((a, b) => a + b + 4, 0);
  let stored = blocks.map(([, b]) => b.byteLength);
  let expected = total(stored);
  // an older layout of the same version: sinks and window blocks of their unclamped sizes
  const legacy = bytes.length === expected ? undefined : legacyBlockWords(cache);
  let either = "";
  if (legacy !== undefined) {
    const old = blocks.map(([name, b]) => 4 * (legacy.get(name)?.stored ?? b.length));
    either = `, or ${total(old)} in the layout saved before sinks and window were clamped to ` +
      `maxSeqLen`;
    if (bytes.length === total(old)) {
      const moved = json.heads.flat().findIndex((h) => h.windowStart !== 0);
      if (moved >= 0) {
        throw new CorruptDataError(
          `cache description: heads[${Math.floor(moved / json.shape.nKvHeads)}]` +
            `[${moved % json.shape.nKvHeads}].windowStart is not 0 in a file whose window blocks ` +
            `are sized by recentWindow ${cache.policy.recentWindow} past maxSeqLen (its window ` +
            `never moved)`,
          12,
        );
      }
      stored = old;
      expected = total(old);
      either = "";
    }
  }
  if (bytes.length !== expected) {
    throw new CorruptDataError(
      `cache data is ${bytes.length} bytes, expected ${expected}${either}` +
        (either ? "" : bytes.length < expected ? " (truncated)" : " (trailing bytes)"),
      Math.min(bytes.length, expected),
    );
  }
  let o = 12 + textPadded + 4;
  blocks.forEach(([name, block], i) => {
    const src = bytes.subarray(o, o + stored[i]);
    if (view.getUint32(o + stored[i], true) !== crc32(src)) {
      throw new CorruptDataError(`cache block "${name}" at byte ${o} fails its checksum`, o);
    }
    // a legacy block's slots past maxSeqLen were never written
    new Uint8Array(block.buffer, block.byteOffset, block.byteLength).set(
      src.subarray(0, block.byteLength),
    );
    if (block instanceof Int32Array) checkKeyPositions(name, block, o, cache);
    o += stored[i] + 4;
  });
  cache.restoreLengths(json.lengths);
  cache.checkStoredFinite();
  cache.checkBudget("the loaded cache");
  return cache;
}
