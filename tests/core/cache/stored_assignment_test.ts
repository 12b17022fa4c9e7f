// The verifier's model of what a cache stores (storedHead) against the cache itself, on the
// assignment a replay reads from the cache (storedAssignment): keys before RoPE, an int8 window
// whose rounding stays in paged tokens, and chunk-wise tier decisions.
import assert from "node:assert/strict";
import { MixedPrecisionKVCache } from "../../../core/cache/mixed_cache.ts";
import { type CachePolicy, tieredPolicy } from "../../../core/cache/policy.ts";
import { storedAssignment } from "../../../core/cache/stored_assignment.ts";
import { InvalidValueError, ShapeError } from "../../../core/errors.ts";
import { RecordingKVCache } from "../../../core/recording_cache.ts";
import { ropeTable } from "../../../core/tensor.ts";
import { storedHead, verifyHeads } from "../../../core/verifier.ts";
import { normals, rng } from "../../_fixtures.ts";

const SHAPE = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 8 };
const N = 150, BASE = 10000, SINKS = 4, WINDOW = 16;

function policy(
  windowFormat: string,
  ropeBase: number | undefined,
  stagingFormat?: string,
  recentWindow = WINDOW,
): CachePolicy {
  const head = () => [
    { minScore: 0.15, keyFormat: "int4-g32-channel", valueFormat: "int4-g32-channel" },
    { minScore: 0, keyFormat: "int2-g32-channel", valueFormat: "int2-g32-channel" },
  ];
  return tieredPolicy({
    label: "two tiers",
    sinkTokens: SINKS,
    recentWindow,
    windowFormat,
    ...(stagingFormat === undefined ? {} : { stagingFormat }),
    pageTokens: 32,
    tiers: Array.from({ length: SHAPE.nLayers }, () => [head(), head()]),
    ...(ropeBase === undefined ? {} : { ropeBase }),
  });
}

/** A sequence whose keys hold steady per channel before RoPE, recorded with random queries. */
function recording(seed: number): RecordingKVCache {
  const next = rng(seed), { nLayers, nHeads, nKvHeads, headDim: d } = SHAPE;
  const rec = new RecordingKVCache({ ...SHAPE, maxSeqLen: N });
  const { cos, sin } = ropeTable(d, N, BASE);
  const offsets = Array.from({ length: nLayers }, () => normals(nKvHeads * d, next));
  const out = new Float32Array(nHeads * d);
  for (let t = 0; t < N; t++) {
    for (let l = 0; l < nLayers; l++) {
      const k = offsets[l].map((o) => 2 * o + 0.2 * normals(1, next)[0]);
      for (let h = 0; h < nKvHeads; h++) {
        for (let i = 0; i < d / 2; i++) {
          const a = k[h * d + 2 * i], b = k[h * d + 2 * i + 1];
          const c = cos[t * (d / 2) + i], s = sin[t * (d / 2) + i];
          k[h * d + 2 * i] = a * c - b * s;
          k[h * d + 2 * i + 1] = a * s + b * c;
        }
      }
      rec.append(l, t, k, normals(nKvHeads * d, next));
      rec.attend(l, normals(nHeads * d, next).map((x) => 2 * x), out);
    }
  }
  return rec;
}

/** The same sequence in a cache, attended in the model's order (as storedAssignment replays it). */
function replayed(rec: RecordingKVCache, p: CachePolicy): MixedPrecisionKVCache {
  const { nLayers, nHeads, nKvHeads, headDim: d } = SHAPE;
  const cache = new MixedPrecisionKVCache({ ...SHAPE, maxSeqLen: N }, p, { integerDot: false });
  const k = new Float32Array(nKvHeads * d), v = new Float32Array(nKvHeads * d);
  const out = new Float32Array(nHeads * d);
  for (let t = 0; t < N; t++) {
    for (let l = 0; l < nLayers; l++) {
      for (let h = 0; h < nKvHeads; h++) {
        k.set(rec.keys(l, h).subarray(t * d, (t + 1) * d), h * d);
        v.set(rec.values(l, h).subarray(t * d, (t + 1) * d), h * d);
      }
      cache.append(l, t, k, v);
      cache.attend(l, rec.queries(l).subarray(t * nHeads * d, (t + 1) * nHeads * d), out);
    }
  }
  return cache;
}

/** Attention of one query head in float64 over n × d keys and values. */
function attend64(q: ArrayLike<number>, K: ArrayLike<number>, V: ArrayLike<number>, d: number) {
  const n = K.length / d, s = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    for (let i = 0; i < d; i++) s[j] += q[i] * K[j * d + i];
    s[j] /= Math.sqrt(d);
  }
  const m = Math.max(...s), out = new Float64Array(d);
  let z = 0;
  for (let j = 0; j < n; j++) {
    const w = Math.exp(s[j] - m);
    z += w;
    for (let i = 0; i < d; i++) out[i] += w * V[j * d + i];
  }
  return out.map((x) => x / z);
}

Deno.test("storedAssignment reads sinks, chunks and ring as the cache holds them", () => {
  const rec = recording(1), p = policy("int8-g8-token", BASE);
  const a = storedAssignment(rec, p, { integerDot: false });
  const cache = replayed(rec, p);
  assert.equal(a.ropeBase, BASE);
  assert.equal(a.windowFormat, "int8-g8-token");
  const paged = new Map<string, number>();
  for (let l = 0; l < SHAPE.nLayers; l++) {
    for (let h = 0; h < SHAPE.nKvHeads; h++) {
      const { key, value } = a.sequences[0][l][h];
      assert.deepEqual(
        [...key],
        [...value].map((f) => f < 0 ? f : a.keyFormats.indexOf(a.valueFormats[f])),
      );
      for (let t = 0; t < SINKS; t++) assert.equal(key[t], -1, "a sink is in the window format");
      // whole chunks of one format from the first position after the sinks, then the ring
      let t = SINKS;
      while (t < N && key[t] >= 0) {
        assert.ok(key.subarray(t, t + 32).every((f) => f === key[t]), `chunk at ${t}`);
        const pair = `${a.keyFormats[key[t]]}|${a.valueFormats[value[t]]}`;
        paged.set(pair, (paged.get(pair) ?? 0) + 32);
        t += 32;
      }
      assert.ok(key.subarray(t).every((f) => f === -1), "the rest is in the ring");
      assert.ok(N - t >= WINDOW && N - t < WINDOW + 32, `${N - t} tokens in the ring`);
    }
  }
  // the cache's own count per pair, and both tiers in use (else this would test one pool)
  const byFormat = cache.tokensByFormat();
  for (const [pair, count] of paged) assert.equal(byFormat.get(pair), count, pair);
  assert.equal(paged.size, 2, `tiers used: ${[...paged.keys()]}`);
});

/**
 * The largest difference between the cache's output and attention in float64 over what
 * storedHead says the cache holds under `assignment`, for fresh queries.
 */
function modelGap(
  rec: RecordingKVCache,
  cache: MixedPrecisionKVCache,
  next: () => number,
): (assignment: ReturnType<typeof storedAssignment>) => number {
  const { nHeads, nKvHeads, headDim: d } = SHAPE, group = nHeads / nKvHeads;
  return (assignment) => {
    let worst = 0;
    for (let l = 0; l < SHAPE.nLayers; l++) {
      const q = normals(nHeads * d, next).map((x) => 2 * x), out = new Float32Array(nHeads * d);
      cache.attend(l, q, out);
      for (let h = 0; h < nKvHeads; h++) {
        const cell = assignment.sequences[0][l][h];
        const { k, v } = storedHead(rec.keys(l, h), rec.values(l, h), N, d, cell, assignment);
        for (let g = 0; g < group; g++) {
          const qh = (h * group + g) * d;
          const o = attend64(q.subarray(qh, qh + d), k.decoded, v.decoded, d);
          for (let i = 0; i < d; i++) worst = Math.max(worst, Math.abs(o[i] - out[qh + i]));
        }
      }
    }
    return worst;
  };
}

Deno.test("storedHead models tokens staged apart: an fp16 window, int8 while awaiting eviction", () => {
  const rec = recording(6), p = policy("fp16", BASE, "int8-g8-token");
  const a = storedAssignment(rec, p, { integerDot: false });
  assert.equal(a.stagingFormat, "int8-g8-token");
  // 150 − 4 sinks = 146 through a ring of 16 + 32: 128 paged (all staged on the way), 16 recent
  // and 2 waiting in the staging format
  for (const row of a.sequences[0]) {
    for (const { key } of row) {
      assert.deepEqual([...key.subarray(N - 18, N - 16)], [-2, -2]);
      assert.equal(key.filter((f) => f === -2).length, 2);
      assert.deepEqual([...key.subarray(N - 16)], new Array(16).fill(-1), "the recent window");
    }
  }
  const gap = modelGap(rec, replayed(rec, p), rng(7));
  const faithful = gap(a);
  assert.ok(faithful < 2e-6, `model vs cache ${faithful}`);
  // the same assignment without the staging hop: tokens straight from fp16 to their page
  const { stagingFormat: _, ...direct } = a;
  const unstaged = {
    ...direct,
    sequences: a.sequences.map((s) =>
      s.map((row) =>
        row.map((c) => ({
          key: c.key.map((f) => Math.max(f, -1)),
          value: c.value.map((f) => Math.max(f, -1)),
        }))
      )
    ),
  };
  const noStaging = gap(unstaged);
  assert.ok(noStaging > 100 * faithful, `staging left out: ${noStaging}`);
  for (const c of verifyHeads(rec, a, 0)) assert.equal(c.exceeded, 0, `${c.layer}/${c.head}`);
  // with no recent window every token is staged as it comes, through the window format first
  const none = policy("int8-g8-token", BASE, "fp16", 0);
  const b = storedAssignment(rec, none, { integerDot: false });
  const noWindow = modelGap(rec, replayed(rec, none), rng(8))(b);
  assert.ok(noWindow < 2e-6, `no recent window: model vs cache ${noWindow}`);
});

Deno.test("storedHead decodes what the cache attends over: keys before RoPE, an int8 window", () => {
  const rec = recording(2), p = policy("int8-g8-token", BASE);
  const a = storedAssignment(rec, p, { integerDot: false });
  // the model's output against the cache's for fresh queries, and the same with a model that
  // leaves out one stage of the storage (its distance shows the comparison can tell them apart)
  const gap = modelGap(rec, replayed(rec, p), rng(3));
  const faithful = gap(a);
  assert.ok(faithful < 2e-6, `model vs cache ${faithful}`);
  const { ropeBase: _, ...afterRope } = a;
  const noRope = gap(afterRope);
  assert.ok(noRope > 100 * faithful && noRope > 1e-3, `keys after RoPE: ${noRope}`);
  const noWindow = gap({ ...a, windowFormat: "fp32" });
  assert.ok(noWindow > 100 * faithful, `window rounding left out: ${noWindow}`);
});

Deno.test("storedHead's bounds cover every element, keys turned before RoPE included", () => {
  const rec = recording(4);
  for (
    const [windowFormat, staging] of [["fp32"], ["fp16"], ["int8-g8-token"], ["fp16", "fp8e4m3"]]
  ) {
    const a = storedAssignment(rec, policy(windowFormat, BASE, staging), { integerDot: false });
    for (let l = 0; l < SHAPE.nLayers; l++) {
      for (let h = 0; h < SHAPE.nKvHeads; h++) {
        const keys = rec.keys(l, h), values = rec.values(l, h), d = SHAPE.headDim;
        const { k, v } = storedHead(keys, values, N, d, a.sequences[0][l][h], a);
        for (const [x, s] of [[keys, k], [values, v]] as const) {
          let slack = Infinity;
          for (let i = 0; i < N * d; i++) {
            const e = Math.abs(s.decoded[i] - x[i]);
            assert.ok(e <= s.bound[i], `${windowFormat} element ${i}: error ${e} > ${s.bound[i]}`);
            if (e > 0) slack = Math.min(slack, s.bound[i] / e);
          }
          assert.ok(slack < Infinity, "something was rounded");
        }
      }
    }
  }
});

Deno.test("verifyHeads holds on the stored assignment of keys before RoPE", () => {
  const rec = recording(5);
  const a = storedAssignment(rec, policy("int8-g8-token", BASE), { integerDot: false });
  const checks = verifyHeads(rec, a, 0);
  assert.equal(checks.length, SHAPE.nLayers * SHAPE.nKvHeads);
  for (const c of checks) {
    assert.equal(c.exceeded, 0, `layer ${c.layer} head ${c.head}`);
    assert.equal(c.queries, N * (SHAPE.nHeads / SHAPE.nKvHeads));
    // a bound that means something: within 100× of the error it covers
    assert.ok(
      c.maxRealized > 0 && c.maxBound < 100 * c.maxRealized,
      `${c.maxBound} ${c.maxRealized}`,
    );
  }
});

Deno.test("storedAssignment names an empty or ragged recording", () => {
  const p = policy("fp16", BASE);
  const empty = new RecordingKVCache({ ...SHAPE, maxSeqLen: 4 });
  assert.throws(
    () => storedAssignment(empty, p),
    (e) => e instanceof ShapeError && /no position/.test(e.message),
  );
  const x = new Float32Array(SHAPE.nKvHeads * SHAPE.headDim).fill(0.5);
  empty.append(0, 0, x, x);
  assert.throws(
    () => storedAssignment(empty, p),
    (e) => e instanceof ShapeError && /layer 1 holds 0/.test(e.message),
  );
});

Deno.test("a position appended with no attend after it is named, not read as a zero query", async () => {
  // its query slot held zeros, or the query of the sequence before a reset: verified and analyzed
  // as if it were a real one
  const { analyzeRecording } = await import("../../../core/analyzer.ts");
  const rec = recording(6);
  assert.equal(rec.firstUnqueried(0), N);
  const stale = (e: unknown) =>
    e instanceof ShapeError && /layer 0 position 0 has no recorded query/.test(e.message);
  rec.reset();
  const x = new Float32Array(SHAPE.nKvHeads * SHAPE.headDim).fill(0.5);
  for (let l = 0; l < SHAPE.nLayers; l++) rec.append(l, 0, x, x);
  assert.equal(rec.firstUnqueried(0), 0);
  const a = storedAssignment(recording(7), policy("fp16", BASE));
  assert.throws(() => storedAssignment(rec, policy("fp16", BASE)), stale);
  assert.throws(() => verifyHeads(rec, { ...a, sequences: [] }), stale);
  assert.throws(() => analyzeRecording(rec), stale);
});

Deno.test("storedAssignment replays at the recording's maxSeqLen: a page the cache takes there is taken", () => {
  // replayed at the sequence's length, pages of 256 tokens were refused for 150 positions
  const rec = recording(8), big = new RecordingKVCache({ ...SHAPE, maxSeqLen: 512 });
  const out = new Float32Array(SHAPE.nHeads * SHAPE.headDim);
  for (let t = 0; t < N; t++) {
    for (let l = 0; l < SHAPE.nLayers; l++) {
      const k = new Float32Array(SHAPE.nKvHeads * SHAPE.headDim), v = k.slice();
      for (let h = 0; h < SHAPE.nKvHeads; h++) {
        k.set(rec.keys(l, h).subarray(t * 8, t * 8 + 8), h * 8);
        v.set(rec.values(l, h).subarray(t * 8, t * 8 + 8), h * 8);
      }
      big.append(l, t, k, v);
      big.attend(l, rec.queries(l).subarray(t * 32, t * 32 + 32), out);
    }
  }
  const p = tieredPolicy(
    { ...policy("fp16", BASE).options, label: "pages of 256", pageTokens: 256 } as never,
  );
  const a = storedAssignment(big, p);
  const paged = a.sequences[0][0][0].key.filter((f) => f >= 0).length;
  assert.ok(paged >= 96, `${paged} positions paged`);
});

Deno.test("storedHead names the received element a format cannot hold, and refuses malformed arguments", () => {
  const rec = recording(9), a = storedAssignment(rec, policy("fp16", BASE));
  const cell = a.sequences[0][0][0], d = SHAPE.headDim;
  const keys = rec.keys(0, 0).slice();
  keys[100] = 1e6; // position 12, element 4: past fp16 in the window
  assert.throws(
    () => storedHead(keys, rec.values(0, 0), N, d, cell, a),
    (e) =>
      e instanceof InvalidValueError && e.index === 100 &&
      /keys\[100\] = 1000000 \(position 12, element 4\) cannot be stored in the window format fp16/
        .test(e.message),
  );
  const table: [() => unknown, unknown, RegExp][] = [
    [() => storedHead(keys, keys, N, -8, cell, a), ShapeError, /head dimension d is -8/],
    [
      () => storedHead(keys, keys, N, d, undefined as never, a),
      InvalidValueError,
      /cell is undefined/,
    ],
    [
      () => storedHead(keys, keys, N, d, cell, undefined as never),
      InvalidValueError,
      /assignment is undefined/,
    ],
    [
      () => storedHead(keys, keys, N, d, cell, { ...a, keyFormats: undefined } as never),
      InvalidValueError,
      /assignment keyFormats is undefined/,
    ],
    [
      () => storedAssignment(rec, undefined as never),
      InvalidValueError,
      /policy is undefined, expected a CachePolicy/,
    ],
    [
      () => storedAssignment(undefined as never, policy("fp16", BASE)),
      InvalidValueError,
      /recording is undefined/,
    ],
  ];
  for (const [call, cls, re] of table) {
    assert.throws(
      call,
      (e) => e instanceof (cls as typeof Error) && re.test((e as Error).message),
      re.source,
    );
  }
});
