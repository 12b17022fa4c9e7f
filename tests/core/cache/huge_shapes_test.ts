// Shapes and policies too large to allocate are refused by name before anything is allocated (they
// once ended in an uncatchable out-of-memory or a RangeError of the runtime); policy fields beyond
// maxSeqLen allocate no more than maxSeqLen needs. Nothing here allocates more than a few MB.
import assert from "node:assert/strict";
import {
  BudgetError,
  CapacityError,
  Float32KVCache,
  loadCache,
  MixedPrecisionKVCache,
  saveCache,
  ShapeError,
  tieredPolicy,
  uniformPolicy,
  type WindowOptions,
} from "../../../mod.ts";
import { PageArena } from "../../../core/cache/page_arena.ts";
import { normals, rng } from "../../_fixtures.ts";

const SHAPE = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 32, maxSeqLen: 64 };
const int4 = (o: WindowOptions = {}) =>
  uniformPolicy({
    keyFormat: "int4-g32-token",
    valueFormat: "int4-g32-token",
    recentWindow: 4,
    ...o,
  });

/** Asserts that `f` throws `cls` with a message matching every pattern. */
function refuses(f: () => unknown, cls: new (...a: never[]) => Error, ...patterns: RegExp[]) {
  assert.throws(f, (e: Error) => {
    assert.ok(e instanceof cls, `${e.name}: ${e.message}`);
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

Deno.test("MixedPrecisionKVCache refuses shapes it cannot allocate, naming shape and bytes", () => {
  for (const nLayers of [1e7, 1e9]) {
    refuses(
      () => new MixedPrecisionKVCache({ ...SHAPE, nLayers }, int4()),
      CapacityError,
      new RegExp(`"nLayers":${nLayers}`),
      /\d+ bytes/,
    );
  }
  refuses(
    () => new MixedPrecisionKVCache({ ...SHAPE, maxSeqLen: 1e9 }, int4()),
    CapacityError,
    /"maxSeqLen":1000000000/,
    /128000000000 bytes/,
  );
  refuses(
    () => new MixedPrecisionKVCache({ ...SHAPE, headDim: 2 ** 30 }, int4()),
    CapacityError,
    /"headDim":1073741824/,
  );
  // dimensions past int32 are refused by their bytes too (lengths are held in Int32Arrays)
  for (const key of ["maxSeqLen", "headDim", "nLayers", "nKvHeads"] as const) {
    const shape = { ...SHAPE, nHeads: 2 ** 31, [key]: 2 ** 31 };
    refuses(
      () => new MixedPrecisionKVCache(shape, int4()),
      CapacityError,
      new RegExp(`"${key}":2147483648`),
    );
  }
  // the wasm backend counts the same buffers
  refuses(
    () => new MixedPrecisionKVCache({ ...SHAPE, nLayers: 1e7 }, int4(), { backend: "wasm" }),
    CapacityError,
  );
});

Deno.test("Float32KVCache refuses shapes it cannot allocate, naming shape and bytes", () => {
  refuses(
    () => new Float32KVCache({ ...SHAPE, nLayers: 1e7 }),
    CapacityError,
    /"nLayers":10000000/,
    /keys/,
    /163840000000 bytes/,
  );
  refuses(() => new Float32KVCache({ ...SHAPE, maxSeqLen: 1e9 }), CapacityError, /keys/);
  // one buffer of 2^31 bytes: one byte over what a single buffer may hold
  refuses(
    () =>
      new Float32KVCache({
        nLayers: 1,
        nHeads: 1,
        nKvHeads: 1,
        headDim: 2 ** 15,
        maxSeqLen: 2 ** 14,
      }),
    CapacityError,
    /2147483648 bytes/,
  );
  refuses(() => new Float32KVCache({ ...SHAPE, maxSeqLen: 2 ** 31 }), CapacityError, /keys/);
});

Deno.test("sinkTokens and recentWindow beyond maxSeqLen allocate only maxSeqLen tokens", () => {
  const next = rng(3);
  const kv = SHAPE.nKvHeads * SHAPE.headDim, qDim = SHAPE.nHeads * SHAPE.headDim;
  for (
    const [big, same] of [
      [{ sinkTokens: 100 }, { sinkTokens: 64 }],
      [{ sinkTokens: 1e9 }, { sinkTokens: 64 }],
      [{ recentWindow: 1e9 }, { recentWindow: 64 }],
      [{ sinkTokens: 1e9, recentWindow: 1e9 }, { sinkTokens: 64, recentWindow: 64 }],
    ] as WindowOptions[][]
  ) {
    const a = new MixedPrecisionKVCache(SHAPE, int4(big));
    const b = new MixedPrecisionKVCache(SHAPE, int4(same));
    assert.equal(a.memory().bytes, b.memory().bytes, JSON.stringify(big));
    const outA = new Float32Array(qDim), outB = new Float32Array(qDim);
    for (let p = 0; p < SHAPE.maxSeqLen; p++) {
      const k = normals(kv, next), v = normals(kv, next), q = normals(qDim, next);
      for (const c of [a, b]) c.append(1, p, k, v);
      a.attend(1, q, outA);
      b.attend(1, q, outB);
      assert.deepEqual(outA, outB, `${JSON.stringify(big)} position ${p}`);
    }
    assert.equal(a.memory().bytes, b.memory().bytes, `${JSON.stringify(big)}: full`);
    // a saved cache loads back whole
    const copy = loadCache(saveCache(a));
    const q = normals(qDim, next);
    copy.attend(1, q, outA);
    a.attend(1, q, outB);
    assert.deepEqual(outA, outB, `${JSON.stringify(big)}: round trip`);
  }
  // the budget check at construction counts what is allocated, before allocating it
  const fixed = new MixedPrecisionKVCache(SHAPE, int4({ sinkTokens: 100 })).memory().bytes;
  refuses(
    () => new MixedPrecisionKVCache(SHAPE, int4({ sinkTokens: 100 }), { maxBytes: fixed - 1 }),
    BudgetError,
    new RegExp(`${fixed} bytes`),
  );
});

Deno.test("a tiered policy's window scores beyond what one buffer holds are refused", () => {
  const pair = (f: string) => ({ keyFormat: f, valueFormat: f });
  const tiers = Array.from(
    { length: SHAPE.nLayers },
    () =>
      Array.from({ length: SHAPE.nKvHeads }, () => [
        { ...pair("int8-g32-token"), minScore: 0.5 },
        { ...pair("int4-g32-token"), minScore: 0 },
      ]),
  );
  const policy = (recentWindow: number) => tieredPolicy({ label: "t", tiers, recentWindow });
  refuses(
    () => new MixedPrecisionKVCache(SHAPE, policy(1e9)),
    CapacityError,
    /window scores/,
    /4000000004 bytes/,
  );
  // a window a little past maxSeqLen keeps its score slots (the GPU cache keeps as many)
  const cache = new MixedPrecisionKVCache(SHAPE, policy(100));
  assert.equal(cache.windowScores(0, 0).length, 101);
});

Deno.test("pageTokens past what maxSeqLen can fill is a ShapeError; default pages always fit", () => {
  for (const pageTokens of [1e9, 256]) {
    refuses(
      () => new MixedPrecisionKVCache(SHAPE, int4({ pageTokens })),
      ShapeError,
      new RegExp(`pageTokens ${pageTokens}`),
      /maxSeqLen 64/,
    );
  }
  // the GPU cache's default page of 128 tokens, and the CPU default of 32, fit any maxSeqLen
  for (const maxSeqLen of [1, 2, 4]) {
    for (const pageTokens of [32, 128]) {
      new MixedPrecisionKVCache({ ...SHAPE, maxSeqLen }, int4({ pageTokens }));
    }
  }
  // rounded up to the channel group: 130 positions fill pages of 160 but not of 192
  const channel = (pageTokens: number) =>
    uniformPolicy({ keyFormat: "int4-g32-channel", valueFormat: "int4-g32-token", pageTokens });
  new MixedPrecisionKVCache({ ...SHAPE, maxSeqLen: 130 }, channel(160));
  refuses(
    () => new MixedPrecisionKVCache({ ...SHAPE, maxSeqLen: 130 }, channel(192)),
    ShapeError,
    /pageTokens 192/,
    /160/,
  );
});

Deno.test("PageArena.alloc() past what its memory can grow to is a CapacityError; nothing changes", () => {
  const arena = new PageArena(new WebAssembly.Memory({ initial: 1, maximum: 2 }), 1024);
  const a = arena.alloc(64);
  refuses(() => arena.alloc(1e6), CapacityError, /1000000 bytes/);
  refuses(() => arena.alloc(2 ** 40), CapacityError, /1099511627776 bytes/);
  assert.equal(arena.memory.buffer.byteLength, 65536, "memory did not grow");
  assert.equal(arena.alloc(64), a + 64, "the next block follows the last one");
});

Deno.test("a wasm cache counts its query-head partials: millions of query heads are refused before any is made", () => {
  // 2^22 query heads over one KV head took 4 GiB of f64 partials and 24 s, then reported 512 bytes
  const shape = { nLayers: 1, nHeads: 2 ** 22, nKvHeads: 1, headDim: 128, maxSeqLen: 16 };
  const policy = uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16" });
  assert.throws(
    () => new MixedPrecisionKVCache(shape, policy, { backend: "wasm" }),
    (e) => e instanceof CapacityError && /query-head partials \d+/.test(e.message),
  );
});
