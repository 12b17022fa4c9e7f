import assert from "node:assert/strict";
import {
  analysisToJSON,
  analyzeHeadGroup,
  calibrate,
  summarizeAnalysis,
} from "../../core/analyzer.ts";
import { headSensitivity } from "../../core/attention_sensitivity.ts";
import { FormatError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import type { KVCache } from "../../core/model/kv_cache.ts";
import { makeRng, randomArray } from "./_rng.ts";

function close(a: number, b: number, tol = 1e-9): boolean {
  return Math.abs(a - b) <= tol * Math.max(1, Math.abs(a), Math.abs(b));
}

Deno.test("analyzeHeadGroup() matches per-query headSensitivity() accumulated by hand", () => {
  const cases = [
    { seed: 11, n: 9, d: 4, group: 1 },
    { seed: 12, n: 23, d: 8, group: 2 },
    { seed: 13, n: 40, d: 16, group: 4 },
  ];
  for (const { seed, n, d, group } of cases) {
    const rng = makeRng(seed);
    const queries = randomArray(rng, n * group * d, 2);
    const keys = randomArray(rng, n * d);
    const values = randomArray(rng, n * d);
    const windows = [1, 3, 8];
    const got = analyzeHeadGroup({ queries, keys, values, length: n, headDim: d, group }, {
      windows,
      sinkTokens: 2,
      recentWindow: 5,
    });
    const attn = new Float64Array(n), kg = new Float64Array(n), kMax = new Float64Array(n);
    const hess = new Float64Array(n), curv = new Float64Array(n);
    const win = windows.map(() => new Float64Array(n));
    let sink = 0;
    for (let j = 0; j < n; j++) {
      for (let h = 0; h < group; h++) {
        const q = queries.subarray((j * group + h) * d, (j * group + h + 1) * d);
        const s = headSensitivity(q, keys, values, j + 1, d);
        for (let t = 0; t <= j; t++) {
          attn[t] += s.attention[t];
          kg[t] += s.keyGradNorm[t];
          kMax[t] = Math.max(kMax[t], s.keyGradNorm[t]);
          hess[t] += s.hessianTraceNorm[t];
          curv[t] += s.curvature[t];
          windows.forEach((w, wi) => {
            if (j - t < w) win[wi][t] += s.attention[t] / group;
          });
        }
        sink += s.attention[0] + (j >= 1 ? s.attention[1] : 0);
      }
    }
    for (let t = 0; t < n; t++) {
      assert.ok(close(got.attentionSum[t], attn[t]), `attention t=${t}`);
      assert.ok(close(got.keyGradSum[t], kg[t]), `key grad t=${t}`);
      assert.ok(close(got.keyGradMax[t], kMax[t]), `key grad max t=${t}`);
      assert.ok(close(got.hessianSum[t], hess[t]), `hessian t=${t}`);
      assert.ok(close(got.curvatureSum[t], curv[t]), `curvature t=${t}`);
      windows.forEach((w, wi) => {
        assert.ok(close(got.windowScores[String(w)][t], win[wi][t]), `window ${w} t=${t}`);
      });
    }
    assert.ok(close(got.sinkMass, sink));
    assert.equal(got.queryCount, n * group);
    // Every query's weights sum to one.
    let total = 0;
    for (const a of got.attentionSum) total += a;
    assert.ok(close(total, n * group));
  }
});

Deno.test("analyzeHeadGroup() rejects NaN, empty sequences and short arrays with typed errors", () => {
  const rng = makeRng(3);
  const base = () => ({
    queries: randomArray(rng, 8 * 4),
    keys: randomArray(rng, 8 * 4),
    values: randomArray(rng, 8 * 4),
    length: 8,
    headDim: 4,
  });
  const table: { name: string; edit: (x: ReturnType<typeof base>) => void; error: unknown }[] = [
    { name: "NaN query", edit: (x) => (x.queries[5] = NaN), error: InvalidValueError },
    { name: "Inf key", edit: (x) => (x.keys[9] = Infinity), error: InvalidValueError },
    { name: "NaN value", edit: (x) => (x.values[31] = NaN), error: InvalidValueError },
    { name: "empty", edit: (x) => (x.length = 0), error: ShapeError },
    { name: "short keys", edit: (x) => (x.keys = x.keys.subarray(0, 7)), error: ShapeError },
  ];
  for (const { name, edit, error } of table) {
    const input = base();
    edit(input);
    assert.throws(() => analyzeHeadGroup(input), error as Error, name);
  }
  const input = base();
  input.values[31] = NaN;
  try {
    analyzeHeadGroup(input);
  } catch (e) {
    assert.equal((e as InvalidValueError).index, 31);
  }
});

/** A fake model: deterministic q, k, v from the token and position, through any KVCache. */
class FakeModel {
  constructor(
    readonly nLayers: number,
    readonly nHeads: number,
    readonly nKvHeads: number,
    readonly d: number,
  ) {}
  forward(token: number, pos: number, cache: KVCache): Float32Array {
    const rng = makeRng(token * 1000 + pos);
    const out = new Float32Array(this.nHeads * this.d);
    for (let l = 0; l < this.nLayers; l++) {
      cache.append(
        l,
        pos,
        randomArray(rng, this.nKvHeads * this.d),
        randomArray(rng, this.nKvHeads * this.d),
      );
      cache.attend(l, randomArray(rng, this.nHeads * this.d, 2), out);
    }
    return out;
  }
}

Deno.test("calibrate() analyzes every layer and head of each sequence and reports progress", async () => {
  const model = new FakeModel(2, 4, 2, 4);
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 4 };
  const seen: number[] = [];
  const analysis = await calibrate(model, shape, [[1, 2, 3, 4, 5], [7, 8, 9]], {
    onProgress: (p) => seen.push(p.done),
    windows: [2],
  });
  assert.equal(analysis.sequences.length, 2);
  assert.equal(analysis.sequences[1].length, 3);
  assert.equal(analysis.sequences[0].heads.length, 2);
  assert.equal(analysis.sequences[0].heads[1].length, 2);
  assert.equal(seen.length, 5 + 3 + 2 * 2);
  assert.equal(seen.at(-1), 12);
  const summary = summarizeAnalysis(analysis);
  assert.equal(summary.heads.length, 4);
  assert.equal(summary.layers.length, 2);
  for (const s of summary.heads) {
    assert.ok(s.sinkShare > 0 && s.sinkShare <= 1 + 1e-12);
    assert.ok(s.maxCurvature >= s.meanCurvature);
  }
  await assert.rejects(() => calibrate(model, shape, []), ShapeError);
  // a string had failed as a TypeError (sequences.forEach is not a function)
  await assert.rejects(
    () => calibrate(model, shape, "abc" as never),
    (e: Error) =>
      e instanceof InvalidValueError && /sequences is "abc", expected an array/.test(e.message),
  );
  await assert.rejects(() => calibrate(model, shape, [[1], []]), ShapeError);
});

Deno.test("analyzeHeadGroup() rejects summary settings and a query offset out of range", () => {
  const rng = makeRng(5);
  const input = {
    queries: randomArray(rng, 8),
    keys: randomArray(rng, 8),
    values: randomArray(rng, 8),
    length: 2,
    headDim: 4,
  };
  const table: [Record<string, number>, Record<string, number>, RegExp][] = [
    [{}, { sinkTokens: NaN }, /sinkTokens is NaN, expected an integer ≥ 0/],
    [{}, { sinkTokens: -1 }, /sinkTokens is -1/],
    [{}, { recentWindow: 1.5 }, /recentWindow is 1.5, expected an integer ≥ 0/],
    [{ queryOffset: -4 }, {}, /query offset -4, expected an integer ≥ 0/],
  ];
  for (const [change, options, re] of table) {
    assert.throws(
      () => analyzeHeadGroup({ ...input, ...change }, options),
      (e) => e instanceof ShapeError && re.test((e as Error).message),
      JSON.stringify([change, options]),
    );
  }
});

/** A FakeModel of 2 layers, 4 heads over 2 KV heads, head_dim 4, counting its forward calls. */
function countingModel(config?: { vocabSize: number; seqLen: number }) {
  const inner = new FakeModel(2, 4, 2, 4);
  const model = {
    calls: 0,
    forward: (token: number, pos: number, cache: KVCache) => (
      model.calls++, inner.forward(token, pos, cache)
    ),
    config,
  };
  return model;
}

Deno.test("calibrate() rejects bad summary options and formats before running the model (was after every forward pass)", async () => {
  const model = countingModel();
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 4 };
  const table: [Record<string, unknown>, unknown, RegExp][] = [
    [{ windows: [0] }, ShapeError, /window size 0, expected an integer ≥ 1/],
    [{ windows: [4, 2.5] }, ShapeError, /window size 2.5/],
    [{ sinkTokens: NaN }, ShapeError, /sinkTokens is NaN, expected an integer ≥ 0/],
    [{ recentWindow: -1 }, ShapeError, /recentWindow is -1, expected an integer ≥ 0/],
    [{ measureFormats: ["int8-g32-channel", "int3"] }, FormatError, /unknown format "int3"/],
    // no cache stores these: measured, they fed a planner that refuses them
    [
      { measureFormats: ["fp16", "int4-g8-heads"] },
      FormatError,
      /measureFormats\[1\] int4-g8-heads groups across KV heads/,
    ],
    [
      { measureFormats: ["int8-g8-token"] },
      FormatError,
      /measureFormats\[0\] int8-g8-token: head_dim 4 is not a multiple of its group 8/,
    ],
  ];
  for (const [options, cls, re] of table) {
    await assert.rejects(
      () => calibrate(model, shape, [[1, 2, 3]], options),
      (e) => e instanceof (cls as typeof Error) && re.test((e as Error).message),
      JSON.stringify(options),
    );
  }
  assert.equal(model.calls, 0);
});

Deno.test("calibrate() refuses a sequence past the model's context before running the model", async () => {
  // the model refused position seqLen only when it reached it, after every earlier sequence ran
  const model = countingModel({ vocabSize: 16, seqLen: 8 });
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 4 };
  await assert.rejects(
    () => calibrate(model, shape, [[1, 2, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9]]),
    (e) =>
      e instanceof ShapeError &&
      /calibration sequence 1 has 9 tokens, past the model's context of 8/.test(e.message),
  );
  assert.equal(model.calls, 0);
  // a sequence of exactly seqLen tokens runs
  const analysis = await calibrate(model, shape, [[1, 2, 3, 4, 5, 6, 7, 8]]);
  assert.equal(analysis.sequences[0].length, 8);
});

Deno.test("analysisToJSON() keeps every field of a head, its key and value magnitudes included", async () => {
  const model = new FakeModel(2, 4, 2, 4);
  const shape = { nLayers: 2, nHeads: 4, nKvHeads: 2, headDim: 4 };
  const analysis = await calibrate(model, shape, [[1, 2, 3, 4]]);
  const head = analysis.sequences[0].heads[1][0];
  const json = JSON.parse(JSON.stringify(analysisToJSON(analysis))) as {
    sequences: { heads: Record<string, unknown>[][] }[];
  };
  const plain = json.sequences[0].heads[1][0];
  // every scalar field of the head, not only those once listed (keyAbsMax, valueAbsMax were lost)
  for (const [k, v] of Object.entries(head)) {
    if (typeof v === "number") assert.equal(plain[k], v, k);
  }
  assert.ok(head.keyAbsMax > 0 && head.valueAbsMax > 0);
});
