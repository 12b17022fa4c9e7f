// loadCache refuses, by name, every way a file can be wrong: its header, its sizes, its checksums,
// and a description whose checksum holds but whose counts do not fit its shape and policy.
import assert from "node:assert/strict";
import {
  BudgetError,
  type CachePolicy,
  CorruptDataError,
  Float32KVCache,
  getFormat,
  InvalidValueError,
  loadCache,
  MixedPrecisionKVCache,
  saveCache,
  ShapeError,
  tieredPolicy,
  uniformPolicy,
} from "../../../mod.ts";
import { crc32 } from "../../../core/cache/serialize.ts";
import { normals, rng } from "../../_fixtures.ts";

/**
 * Two layers of channel-axis keys and token-axis values: sinks, full and partial pages, a ring;
 * `turned`: keys stored before RoPE, and an int8 window; `staged`: keys before RoPE, an fp16 window
 * and the tokens awaiting eviction in int8 (3 of them staged at the end).
 */
function filled(
  next = rng(21),
  turned = false,
  staged = false,
): MixedPrecisionKVCache {
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8, maxSeqLen: 80 };
  const cache = new MixedPrecisionKVCache(
    shape,
    uniformPolicy({
      keyFormat: "int3-g16-channel",
      valueFormat: "int4-g8-token",
      sinkTokens: 2,
      recentWindow: 6,
      pageTokens: 32,
      ...(turned ? { ropeBase: 10000, windowFormat: "int8-g8-token" } : {}),
      ...(staged ? { ropeBase: 10000, stagingFormat: "int8-g8-token" } : {}),
    }),
  );
  for (let p = 0; p < 75; p++) {
    for (const l of [0, 1]) cache.append(l, p, normals(16, next), normals(16, next));
  }
  return cache;
}

const saved = () => saveCache(filled());

Deno.test("saveCache()/loadCache() round-trip exactly and detect corruption", () => {
  const next = rng(14);
  const cache = filled(next);
  const bytes = saveCache(cache);
  const copy = loadCache(bytes);
  assert.deepEqual(saveCache(copy), bytes);
  const q = normals(32, next), a = new Float32Array(32), b = new Float32Array(32);
  cache.attend(1, q, a);
  copy.attend(1, q, b);
  assert.deepEqual(a, b);
  assert.deepEqual(copy.memory(), cache.memory());
  assert.throws(
    () => loadCache(bytes.subarray(0, bytes.length - 3)),
    (e: Error) =>
      e instanceof CorruptDataError && e.message.includes(`expected ${bytes.length}`) &&
      e.message.includes("truncated"),
  );
  for (const at of [bytes.length - 10, Math.floor(bytes.length / 2), 20]) {
    const bad = bytes.slice();
    bad[at] ^= 0x10;
    assert.throws(() => loadCache(bad), CorruptDataError, `flip at ${at}`);
  }
  const badMagic = bytes.slice();
  badMagic[0] = 0;
  assert.throws(() => loadCache(badMagic), /magic/);
  // a budget the saved cache exceeds is refused, not ignored
  const held = cache.memory().bytes;
  assert.throws(
    () => loadCache(bytes, { maxBytes: held - 1 }),
    (e: Error) => e instanceof BudgetError && e.message.includes(`holds ${held} bytes`),
  );
  assert.equal(loadCache(bytes, { maxBytes: held }).memory().bytes, held);
});

Deno.test("loadCache() refuses stored values that decode to NaN or ±Inf though every checksum holds", () => {
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 40 };
  const window = { sinkTokens: 2, recentWindow: 4 };
  const uniform = (f: string) => uniformPolicy({ keyFormat: f, valueFormat: f, ...window });
  const tiers = [[[
    { minScore: 0.5, keyFormat: "fp16", valueFormat: "fp16" },
    { minScore: 0, keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" },
  ]]];
  const tiered = tieredPolicy({ label: "two tiers", tiers, ...window });
  const corruptions: [string, CachePolicy, (c: MixedPrecisionKVCache) => void, RegExp][] = [
    [
      "an int4 group header of infinite scale",
      uniform("int4-g8-token"),
      (c) => pageOf(c).kWords[0] = 0x7c007c00,
      /layer 0 KV head 0: page 0 of pool int4-g8-token\|int4-g8-token: .*non-finite/,
    ],
    [
      "an fp16 NaN",
      uniform("fp16"),
      (c) => pageOf(c).vWords[1] = 0x7e000000,
      /page 0 of pool fp16\|fp16: value of token 0, element 3, decodes to NaN/,
    ],
    [
      "an fp16 sink of +Inf",
      uniform("fp16"),
      (c) => c.segments(0, 0).sinkK[0] = 0x7c00,
      /sinks: key of token 0, element 0, decodes to Infinity/,
    ],
    [
      "an fp16 window token of -Inf in an int4 cache",
      uniform("int4-g8-token"),
      (c) => c.segments(0, 0).windowV[0] = 0xfc00,
      /window or staged tokens: value of token \d+, element 0, decodes to -Infinity/,
    ],
    ["a NaN window score", tiered, (c) => c.windowScores(0, 0)[0] = NaN, /window score 0 is NaN/],
  ];
  for (const backend of ["ts", "wasm"] as const) {
    for (const [what, policy, corrupt, message] of corruptions) {
      const cache = new MixedPrecisionKVCache(shape, policy, { backend });
      const next = rng(61);
      for (let p = 0; p < 30; p++) cache.append(0, p, normals(8, next), normals(8, next));
      loadCache(saveCache(cache), { backend }); // sound before
      corrupt(cache);
      assert.throws(
        () => loadCache(saveCache(cache), { backend }),
        (e: Error) => e instanceof CorruptDataError && message.test(e.message),
        `${backend}: ${what}`,
      );
    }
  }
});

Deno.test("int and int8s pages decode finite whatever their codes, under the largest headers a load accepts", () => {
  // loadCache skips scanning these formats' decoded elements (mixed_cache.ts decodesFinite): with
  // the largest finite fp16 scale and minimum of either sign and random code bits, every element
  // still decodes finite, in both backends
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 64 };
  const next = rng(67);
  for (const f of ["int2-g8-token", "int4-g8-token", "int8-g8-token", "int8s-g8-token"]) {
    for (const backend of ["ts", "wasm"] as const) {
      const cache = new MixedPrecisionKVCache(
        shape,
        uniformPolicy({ keyFormat: f, valueFormat: f }),
        {
          backend,
        },
      );
      for (let p = 0; p < 50; p++) cache.append(0, p, normals(8, next), normals(8, next));
      const page = pageOf(cache), wpg = getFormat(f).wordsPerGroup;
      for (const words of [page.kWords, page.vWords]) {
        for (let i = 0; i < words.length; i++) {
          // headers: scale 65504 (0x7bff), minimum ±65504; int8s keeps its high half zero
          const min = i % (2 * wpg) === 0 ? 0xfbff : 0x7bff;
          words[i] = i % wpg !== 0
            ? Math.floor(next() * 2 ** 32) >>> 0
            : f.startsWith("int8s")
            ? 0x7bff
            : (0x7bff | (min << 16)) >>> 0;
        }
      }
      const loaded = loadCache(saveCache(cache), { backend });
      const k = new Float32Array(page.n * 8), v = new Float32Array(page.n * 8);
      pageOf(loaded).decodeKeys(k);
      pageOf(loaded).decodeValues(v);
      const big = [...k, ...v].reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      assert.ok([...k, ...v].every(Number.isFinite), `${backend} ${f}`);
      assert.ok(big > 2e5, `${backend} ${f}: the headers took effect (largest ${big})`);
    }
  }
});

/** The first page of layer 0, KV head 0. */
function pageOf(cache: MixedPrecisionKVCache) {
  return cache.segments(0, 0).pools[0].pages[0];
}

// the edits reach into any field of the description, some to make it malformed
// deno-lint-ignore no-explicit-any
type Description = any;

/** The bytes with their description edited and its length and checksum made right again. */
function withDescription(bytes: Uint8Array, edit: (json: Description) => void): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const length = view.getUint32(8, true), padded = Math.ceil(length / 4) * 4;
  const json = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + length)));
  edit(json);
  const text = new TextEncoder().encode(JSON.stringify(json));
  const textPadded = Math.ceil(text.length / 4) * 4, rest = bytes.subarray(12 + padded + 4);
  const out = new Uint8Array(12 + textPadded + 4 + rest.length);
  out.set(bytes.subarray(0, 8));
  const o = new DataView(out.buffer);
  o.setUint32(8, text.length, true);
  out.set(text, 12);
  o.setUint32(12 + textPadded, crc32(text), true);
  out.set(rest, 12 + textPadded + 4);
  return out;
}

function refused(bytes: Uint8Array, message: RegExp, label: string): void {
  assert.throws(
    () => loadCache(bytes),
    (e: Error) => e instanceof CorruptDataError && message.test(e.message),
    label,
  );
}

Deno.test("loadCache names a wrong header, size or checksum", () => {
  const bytes = saved();
  assert.deepEqual(
    saveCache(loadCache(withDescription(bytes, () => {}))),
    bytes,
    "helper is exact",
  );
  refused(bytes.subarray(0, 10), /10 bytes, shorter than its header/, "under 16 bytes");
  const version = bytes.slice();
  version[4] = 9;
  refused(version, /version 9, expected 2/, "version");
  const trailing = new Uint8Array(bytes.length + 8);
  trailing.set(bytes);
  refused(
    trailing,
    new RegExp(`${bytes.length + 8} bytes, expected ${bytes.length} \\(trailing`),
    "trailing",
  );
  // a length field near 2^32 (it once wrapped round in 32-bit arithmetic and threw a RangeError)
  for (const length of [0x7fffffff, 0xfffffffe]) {
    const bad = bytes.slice();
    new DataView(bad.buffer).setUint32(8, length, true);
    refused(
      bad,
      new RegExp(`corrupted description length ${length} at byte 8`),
      `length ${length}`,
    );
  }
  // the description's padding is outside its checksum, so it must be the zeros saveCache wrote
  for (const pad of ["", "x", "xx", "xxx"]) {
    const padded = withDescription(bytes, (j) => Object.assign(j, { pad }));
    const length = new DataView(padded.buffer).getUint32(8, true);
    if (length % 4 === 0) continue;
    assert.equal(saveCache(loadCache(padded)).length, bytes.length, "zero padding loads");
    padded[12 + length] = 7;
    refused(padded, new RegExp(`padding byte ${12 + length} is 7, expected 0`), "padding");
  }
  // version 2 predates keys stored before RoPE, so a file that has them is not version 2
  const turned = new MixedPrecisionKVCache(
    { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 40 },
    uniformPolicy({ keyFormat: "int4-g16-channel", valueFormat: "fp16", ropeBase: 10000 }),
  );
  for (let p = 0; p < 30; p++) turned.append(0, p, normals(8, rng(p)), normals(8, rng(p + 50)));
  const v2 = saveCache(turned);
  assert.equal(v2[4], 3, "no staging: version 3");
  v2[4] = 2;
  refused(v2, /version 2 with a policy that stores keys before RoPE \(ropeBase 10000\)/, "v2");
  // nor is a file with a staging format version 3 (the same layout as 4 otherwise)
  const staged = new MixedPrecisionKVCache(
    { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 40 },
    uniformPolicy({
      keyFormat: "int4-g16-channel",
      valueFormat: "fp16",
      recentWindow: 4,
      stagingFormat: "int8-g8-token",
    }),
  );
  for (let p = 0; p < 30; p++) staged.append(0, p, normals(8, rng(p)), normals(8, rng(p + 50)));
  const v3 = saveCache(staged);
  assert.equal(v3[4], 4, "staging: version 4");
  v3[4] = 3;
  refused(v3, /version 3 with a staging format \(int8-g8-token\)/, "v3");
  const v4 = saveCache(turned);
  v4[4] = 4;
  assert.deepEqual(saveCache(loadCache(v4)), saveCache(turned), "version 4 without staging loads");
  // a shape no runtime can allocate, its checksum intact
  refused(
    withDescription(bytes, (j) => j.shape.maxSeqLen = 2 ** 40),
    /shape .*cannot be allocated/,
    "huge maxSeqLen",
  );
  const shorter = bytes.slice();
  shorter[8] ^= 4;
  refused(shorter, /checksum at byte 12 \(or its length at byte 8/, "length off by 4");
  // a flipped bit inside a block names that block and where it starts
  const flipped = bytes.slice();
  flipped[bytes.length - 10] ^= 0x10;
  assert.throws(
    () => loadCache(flipped),
    (e: Error) =>
      e instanceof CorruptDataError && /cache block "pool 0 page 1 V" at byte \d+/.test(e.message),
  );
});

Deno.test("loadCache names a description whose counts do not fit its shape and policy", () => {
  const bytes = saved();
  const cases: [string, (j: Description) => void, RegExp][] = [
    [
      "windowN past the ring",
      (j) => j.heads[0][1].windowN = 40,
      /heads\[0\]\[1\]\.windowN is 40, expected an integer in \[0, 21\]/,
    ],
    [
      "length past maxSeqLen",
      (j) => j.lengths[1] = 500,
      /lengths\[1\] is 500, expected an integer in \[0, 80\]/,
    ],
    ["heads missing", (j) => delete j.heads, /heads is undefined, expected 2 layers/],
    ["one KV head short", (j) => j.heads[1].pop(), /heads\[1\] is .*expected 2 KV heads/],
    [
      "pair not in the policy",
      (j) => j.heads[0][0].pools[0].pair.valueFormat = "fp16",
      /pools\[0\]\.pair is .*fp16.*one of the policy's pairs/,
    ],
    [
      "a partial page before the last",
      (j) => j.heads[0][0].pools[0].pages[0] = 16,
      /pages\[0\] is 16, expected 32 \(a full page\)/,
    ],
    [
      "a page past capacity",
      (j) => j.heads[0][0].pools[0].pages[1] = 48,
      /pages\[1\] is 48, expected an integer in \[0, 32\]/,
    ],
    [
      "an empty page",
      (j) => j.heads[0][0].pools[0].pages.push(0),
      /pages\[2\] is 0, expected a page with tokens/,
    ],
    [
      "a page not in whole chunks",
      (j) => j.heads[0][0].pools[0].pages[1] = 8,
      /multiple of the eviction chunk 16/,
    ],
    [
      "counts that miss the length",
      (j) => j.lengths[0] = 74,
      /heads\[0\]\[0\]: sinks \+ window \+ pages is 75, expected lengths\[0\] = 74/,
    ],
    ["no shape", (j) => delete j.shape, /has no shape/],
    // refused before a cache of that shape is built: 3M layers was "cannot be allocated" (and
    // 1.9M were built, 4.4 GB for 18 s, before the lengths were compared)
    [
      "millions of layers claimed",
      (j) => j.shape.nLayers = 3_000_000,
      /lengths is \[\d+,\d+\], expected 3000000 counts/,
    ],
    [
      "millions of KV heads claimed",
      (j) => j.shape.nKvHeads = j.shape.nHeads = 3_000_000,
      /heads\[0\] is \[\{.{60,}… \(\d+ characters\), expected 3000000 KV heads/,
    ],
  ];
  for (const [label, edit, message] of cases) refused(withDescription(bytes, edit), message, label);
  const notJson = bytes.slice();
  notJson[12] = 0x7b + 1; // "{" → "|", checksum made right below
  const view = new DataView(notJson.buffer), length = view.getUint32(8, true);
  view.setUint32(12 + Math.ceil(length / 4) * 4, crc32(notJson.subarray(12, 12 + length)), true);
  refused(notJson, /description at byte 12 is not JSON/, "not JSON");
});

Deno.test("a tiered WASM cache saved mid-stream loads and goes on exactly as the original", () => {
  const shape = { nLayers: 1, nHeads: 8, nKvHeads: 2, headDim: 32, maxSeqLen: 200 };
  const policy = () =>
    tieredPolicy({
      label: "t",
      tiers: [[0, 1].map(() => [
        { minScore: 0.02, keyFormat: "int8-g32-token", valueFormat: "int8-g32-token" },
        { minScore: 0, keyFormat: "int4-g32-channel", valueFormat: "int4-g32-token" },
      ])],
      sinkTokens: 2,
      recentWindow: 8,
      windowFormat: "fp16",
    });
  const next = rng(5);
  const a = new MixedPrecisionKVCache(shape, policy(), { backend: "wasm" });
  const q = () => normals(8 * 32, next);
  const out = new Float32Array(8 * 32), out2 = new Float32Array(8 * 32);
  let p = 0;
  for (; p < 100; p++) {
    a.append(0, p, normals(64, next), normals(64, next));
    if (p % 5 === 4) a.attend(0, q(), out); // window scores steer the tiers
  }
  const b = loadCache(saveCache(a), { backend: "wasm" });
  assert.deepEqual(b.windowScores(0, 1), a.windowScores(0, 1));
  for (; p < 200; p++) {
    const k = normals(64, next), v = normals(64, next);
    a.append(0, p, k, v);
    b.append(0, p, k, v);
    if (p % 5 === 4) {
      const x = q();
      a.attend(0, x, out);
      b.attend(0, x, out2);
      assert.deepEqual(out2, out, `attend at ${p + 1}`);
    }
  }
  assert.deepEqual(b.tokensByFormat(), a.tokensByFormat());
  assert.equal(a.tokensByFormat().size, 3, "both tiers and the window in use");
  assert.deepEqual(saveCache(b), saveCache(a));
});

for (const [turned, staged] of [[false, false], [true, false], [false, true]]) {
  Deno.test(
    `every single-bit flip and every truncation is refused, or loads the same cache${
      turned
        ? " (keys before RoPE, int8 window)"
        : staged
        ? " (keys before RoPE, int8 staging)"
        : ""
    }`,
    () => {
      // CRC-32 catches every single-bit error in a checksummed block; header, sizes and padding
      // are checked by value. The one flip that loads is the version, 3 → 2, of a file without
      // keys before RoPE or staging, which means the same in both (a staged file is version 4,
      // which these bits turn into 5, 20 or 132). Any other outcome (another error type, a
      // different cache) is a hole. Bits 0, 4 and 7 of every byte, to keep the test short.
      const cache = filled(rng(21), turned, staged);
      if (staged) assert.equal(cache.segments(1, 1).stageN, 3, "tokens staged when saved");
      const bytes = saveCache(cache);
      const holes: string[] = [];
      let loaded = 0;
      const check = (bad: Uint8Array, what: string) => {
        let copy;
        try {
          copy = loadCache(bad);
        } catch (e) {
          if (!(e instanceof CorruptDataError)) holes.push(`${what}: ${(e as Error).name}`);
          return;
        }
        loaded++;
        const again = saveCache(copy);
        if (again.length !== bytes.length || again.some((b, i) => b !== bytes[i])) {
          holes.push(`${what}: loaded another cache`);
        }
      };
      for (let at = 0; at < bytes.length; at++) {
        for (const bit of [0, 4, 7]) {
          const bad = bytes.slice();
          bad[at] ^= 1 << bit;
          check(bad, `bit ${bit} of byte ${at}`);
        }
      }
      for (let n = 0; n < bytes.length; n++) check(bytes.subarray(0, n), `first ${n} bytes`);
      assert.deepEqual(
        holes.slice(0, 10),
        [],
        `${holes.length} of ${4 * bytes.length} not refused`,
      );
      // version 2 cannot hold keys before RoPE: there the version flip is refused too
      assert.equal(loaded, turned || staged ? 0 : 1, "only the version flip loads");
    },
  );
}

// Saved by the code before sinks and window were clamped to maxSeqLen (git archive 201444f~1):
// shape 2 layers × 1 KV head (2 query heads), head_dim 8, maxSeqLen 8, int4-g8-token pages, and
// k = (8p + i − 20) / 8, v = (i − p) / 4 at position p; window20.kvpc: 3 sinks, recentWindow 20,
// 8 and 5 positions; sinks12.kvpc: 12 sinks, recentWindow 4, 6 positions in layer 0. Their sinks
// and window blocks hold sinkTokens and recentWindow + 1 slots, more than maxSeqLen.
const LEGACY = [
  { file: "window20.kvpc", sinkTokens: 3, recentWindow: 20, lengths: [8, 5] },
  { file: "sinks12.kvpc", sinkTokens: 12, recentWindow: 4, lengths: [6, 0] },
];

Deno.test("caches saved before sinks and window were clamped to maxSeqLen load as the same cache", () => {
  const shape = { nLayers: 2, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 8 };
  for (const { file, sinkTokens, recentWindow, lengths } of LEGACY) {
    const bytes = Deno.readFileSync(new URL(`./legacy/${file}`, import.meta.url));
    const policy = uniformPolicy({
      keyFormat: "int4-g8-token",
      valueFormat: "int4-g8-token",
      sinkTokens,
      recentWindow,
    });
    const now = new MixedPrecisionKVCache(shape, policy, { backend: "ts" });
    lengths.forEach((n, l) => {
      for (let p = 0; p < n; p++) {
        const k = Float32Array.from({ length: 8 }, (_, i) => (p * 8 + i - 20) / 8);
        const v = Float32Array.from({ length: 8 }, (_, i) => (i - p) / 4);
        now.append(l, p, k, v);
      }
    });
    const loaded = loadCache(bytes);
    assert.ok(bytes.length > saveCache(now).length, `${file}: the old layout is larger`);
    // the same cache: the same file in today's layout, the same attention
    assert.deepEqual(saveCache(loaded), saveCache(now), file);
    const q = normals(16, rng(5)), a = new Float32Array(16), b = new Float32Array(16);
    for (let l = 0; l < 2; l++) {
      if (lengths[l] === 0) continue;
      loaded.attend(l, q, a);
      now.attend(l, q, b);
      assert.deepEqual(a, b, `${file} layer ${l}`);
    }
    // truncated or flipped, the old layout is refused as any file is
    refused(
      bytes.subarray(0, bytes.length - 4),
      /expected \d+, or \d+ in the layout saved before sinks and window were clamped/,
      `${file} truncated`,
    );
    const flipped = bytes.slice();
    flipped[bytes.length - 40] ^= 1;
    refused(flipped, /fails its checksum/, `${file} flipped`);
  }
});

Deno.test("a file saved before policies recorded their window format loads with the fp16 it had", () => {
  // fp32 pages now default to an fp32 window; such a file's window blocks hold fp16 words
  const shape = { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 40 };
  const policy = uniformPolicy({
    keyFormat: "fp32",
    valueFormat: "fp32",
    sinkTokens: 2,
    recentWindow: 4,
    pageTokens: 8,
    windowFormat: "fp16",
  });
  const cache = new MixedPrecisionKVCache(shape, policy);
  const next = rng(52);
  for (let p = 0; p < 30; p++) cache.append(0, p, normals(8, next), normals(8, next));
  const old = withDescription(saveCache(cache), (j) => delete j.policy.windowFormat);
  const loaded = loadCache(old);
  assert.equal(loaded.policy.windowFormat, "fp16");
  const q = normals(16, next), a = new Float32Array(16), b = new Float32Array(16);
  cache.attend(0, q, a);
  loaded.attend(0, q, b);
  assert.deepEqual(b, a);
  // saved again, the format is written out
  assert.deepEqual(saveCache(loaded), saveCache(cache));
  // a null window format is the one such a file had too
  const nulled = loadCache(withDescription(saveCache(cache), (j) => j.policy.windowFormat = null));
  assert.equal(nulled.policy.windowFormat, "fp16");
});

Deno.test("a file whose shape holds other fields (saved before shapes refused them) loads as before", () => {
  // the cache kept { ...shape }: a model config's dim and vocabSize went into the file
  const cache = filled();
  const bytes = withDescription(saveCache(cache), (j) => Object.assign(j.shape, { dim: 64 }));
  const loaded = loadCache(bytes);
  assert.deepEqual(saveCache(loaded), saveCache(cache));
});

Deno.test("a window that moved cannot come from the old layout, and windowStart is checked against the ring held", () => {
  const bytes = Deno.readFileSync(new URL("./legacy/window20.kvpc", import.meta.url));
  refused(
    withDescription(bytes, (j) => j.heads[1][0].windowStart = 3),
    /heads\[1\]\[0\]\.windowStart is not 0 .* recentWindow 20 past maxSeqLen/,
    "moved window",
  );
  // today's layout: a ring of min(20, 8) + 1 slots, so windowStart 9 is past it (it was accepted)
  const today = saveCache(loadCache(bytes));
  refused(
    withDescription(today, (j) => j.heads[0][0].windowStart = 9),
    /heads\[0\]\[0\]\.windowStart is 9, expected an integer in \[0, 8\]/,
    "windowStart past the ring",
  );
});

Deno.test("loadCache takes an ArrayBuffer too; saveCache names a cache it cannot save (was a TypeError)", () => {
  const bytes = saveCache(filled());
  const copy = bytes.slice().buffer;
  assert.deepEqual(saveCache(loadCache(copy)), bytes);
  assert.throws(() => loadCache("KVPC" as unknown as Uint8Array), ShapeError);
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 8, maxSeqLen: 8 };
  for (const cache of [new Float32KVCache(shape), undefined, {}]) {
    assert.throws(
      () => saveCache(cache as unknown as MixedPrecisionKVCache),
      (e: Error) =>
        e instanceof InvalidValueError && /expected a MixedPrecisionKVCache/.test(e.message),
    );
  }
});

Deno.test("a staged cache whose window outgrows maxSeqLen is never read in the pre-clamp layout", () => {
  // the layout saved before sinks and window were clamped (recentWindow past maxSeqLen) predates
  // staging formats: a wrong-sized file with one is truncated or trailing, not a legacy layout
  const cache = new MixedPrecisionKVCache(
    { nLayers: 1, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 8 },
    uniformPolicy({
      keyFormat: "int4-g8-token",
      valueFormat: "int4-g8-token",
      sinkTokens: 12,
      recentWindow: 20,
      stagingFormat: "int8-g8-token",
    }),
  );
  for (let p = 0; p < 6; p++) cache.append(0, p, normals(8, rng(p)), normals(8, rng(p + 9)));
  const bytes = saveCache(cache);
  assert.deepEqual(saveCache(loadCache(bytes)), bytes);
  assert.throws(
    () => loadCache(bytes.subarray(0, bytes.length - 8)),
    (e: Error) =>
      e instanceof CorruptDataError && e.message.includes(`expected ${bytes.length} (truncated)`),
  );
});
