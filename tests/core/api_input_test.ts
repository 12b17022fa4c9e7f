// Bad input to the reference cache, the recording, the evaluation helpers and the sensitivity
// functions: typed errors naming what was wrong, where each used to return NaN, another head's data
// or a half-changed cache (found by an input audit, 2026-11-23).
import assert from "node:assert/strict";
import { attentionErrorFirstOrder } from "../../core/attention_bound.ts";
import { attentionWeights, keySecondDerivative } from "../../core/attention_sensitivity.ts";
import { measureCacheBits } from "../../core/eval/compare.ts";
import { logProbability } from "../../core/eval/perplexity.ts";
import { CapacityError, FormatError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import { divDown, expDown, nextDown, nextUp } from "../../core/interval.ts";
import {
  empiricalLayerGains,
  layerLipschitz,
  spectralNormUpper,
  traceResidualStream,
  withEmpiricalGains,
} from "../../core/layer_lipschitz.ts";
import { precisionBits, selectFormat } from "../../core/mapper.ts";
import { argmax, matvec, MIN_ROPE_BASE, Rope, ropeTable, softmax } from "../../core/tensor.ts";
import { calibrate } from "../../core/analyzer.ts";
import { uniformPolicy } from "../../core/cache/policy.ts";
import { generateGreedy } from "../../core/model/generate.ts";
import { Float32KVCache } from "../../core/model/kv_cache.ts";
import { cacheShape } from "../../core/model/transformer.ts";
import { RecordingKVCache } from "../../core/recording_cache.ts";
import { composeModelBound, verifyHeads } from "../../core/verifier.ts";
import { loadFixture, normals, rng } from "../_fixtures.ts";

const { model, weights } = await loadFixture();

// deno-lint-ignore no-explicit-any
const named = (cls: new (...a: any[]) => Error, re: RegExp) => (e: unknown) =>
  e instanceof cls && re.test((e as Error).message);

Deno.test("Float32KVCache refuses NaN and infinite K/V and names layers and heads out of range", () => {
  const shape = { nLayers: 2, nHeads: 2, nKvHeads: 1, headDim: 2, maxSeqLen: 4 };
  const c = new Float32KVCache(shape);
  c.append(0, 0, Float32Array.of(1, 2), Float32Array.of(3, 4));
  assert.throws(
    () => c.append(0, 1, Float32Array.of(NaN, 1), Float32Array.of(1, 1)),
    named(InvalidValueError, /k\[0\] is NaN/),
  );
  assert.throws(
    () => c.append(0, 1, Float32Array.of(1, 1), Float32Array.of(1, Infinity)),
    named(InvalidValueError, /v\[1\] is Infinity/),
  );
  assert.equal(c.length(0), 1, "the refused appends changed nothing");
  assert.throws(() => c.length(5), named(ShapeError, /layer 5/));
  assert.throws(() => c.headOffset(0, 1), named(ShapeError, /KV head 1/));
  const r = new RecordingKVCache(shape);
  r.append(0, 0, Float32Array.of(1, 2), Float32Array.of(3, 4));
  assert.throws(() => r.keys(0, 1), ShapeError); // was layer 1's keys
  assert.throws(() => r.values(-1, 0), ShapeError);
  assert.throws(() => r.queries(9), ShapeError);
  assert.deepEqual(r.keys(0, 0), Float32Array.of(1, 2));
});

Deno.test("logProbability and generateGreedy refuse NaN logits; generateGreedy checks before reset", async () => {
  assert.throws(
    () => logProbability(Float32Array.of(NaN, 1), 1),
    named(InvalidValueError, /logits\[0\] is NaN/),
  );
  assert.throws(() => logProbability(Float32Array.of(-Infinity, -Infinity), 0), InvalidValueError);
  const cache = new Float32KVCache(cacheShape(model.config, 16));
  await generateGreedy(model, cache, [1, 403], 3);
  assert.equal(cache.length(0), 4);
  await assert.rejects(
    () => generateGreedy(model, cache, [1, 99999], 3),
    named(ShapeError, /prompt\[1\] is token id 99999/),
  );
  await assert.rejects(
    () => generateGreedy(model, cache, [1, 2, 3, 4, 5], 13),
    named(CapacityError, /need 17 positions/),
  );
  assert.equal(cache.length(0), 4, "the cache was not reset by a refused call");
  // exactly full is fine: the last generated token is not forwarded
  assert.equal((await generateGreedy(model, cache, [1, 2, 3, 4, 5], 12)).length, 12);
});

Deno.test("verifyHeads names an empty or ragged recording; measureCacheBits skips empty sequences", async () => {
  const shape = { nLayers: 2, nHeads: 2, nKvHeads: 1, headDim: 8, maxSeqLen: 4 };
  const empty = new RecordingKVCache(shape);
  const assignment = {
    keyFormats: ["fp16"],
    valueFormats: ["fp16"],
    windowFormat: "fp16",
    sequences: [[[{ key: new Int16Array(0), value: new Int16Array(0) }]]],
  };
  // deno-lint-ignore no-explicit-any
  assert.throws(() => verifyHeads(empty, assignment as any), named(ShapeError, /no position/));
  const next = rng(2);
  empty.append(0, 0, normals(8, next), normals(8, next));
  empty.append(0, 1, normals(8, next), normals(8, next));
  empty.append(1, 0, normals(8, next), normals(8, next));
  // deno-lint-ignore no-explicit-any
  assert.throws(() => verifyHeads(empty, assignment as any), named(ShapeError, /layer 1 holds 1/));
  const cache = new Float32KVCache(cacheShape(model.config, 8));
  const one = await measureCacheBits(model, cache, [[1, 2, 3]]);
  assert.equal(await measureCacheBits(model, cache, [[1, 2, 3], []]), one);
});

Deno.test("attention sensitivities name a NaN or infinite input instead of returning NaN", () => {
  const q = [1, 0], k = [1, 0, 0, 1], v = [1, 2, 3, 4];
  const w = Float64Array.of(0.25, 0.75), o = Float64Array.of(7, 8);
  assert.throws(
    () => attentionWeights(q, [1, 0, NaN, 1], v, 2, 2, w, o),
    named(InvalidValueError, /keys\[2\] is NaN/),
  );
  assert.throws(
    () => attentionWeights(q, k, [1, 2, 3, Infinity], 2, 2, w, o),
    named(InvalidValueError, /values\[3\]/),
  );
  assert.throws(
    () => attentionWeights([1e200, 0], [1e200, 0, 0, 1], v, 2, 2, w, o),
    named(InvalidValueError, /out of range/),
  );
  // scores that overflowed once left NaN in the caller's weights and output
  assert.deepEqual([...w, ...o], [0.25, 0.75, 7, 8], "a refused call writes nothing");
  attentionWeights(q, k, v, 2, 2, w, o);
  assert.ok(Math.abs(w[0] + w[1] - 1) < 1e-15 && w[0] > w[1], `weights ${w}`);
  assert.throws(
    () => keySecondDerivative(q, k, v, 2, 2, 0, [NaN, 1]),
    named(InvalidValueError, /u\[0\] is NaN/),
  );
  // an infinite error bound at a position with no weight adds nothing (was 0·∞ = NaN)
  const far = [1000, 0, -1000, 0];
  const e = attentionErrorFirstOrder([1, 0], far, v, 2, 2, [0, 0, Infinity, 0], [0, 0, 0, 0]);
  assert.ok(Number.isFinite(e), `first-order error ${e}`);
});

Deno.test("mapper formats, interval bounds and tensor kernels refuse what they cannot honour", () => {
  const int = (bits: number, bitsPerElement = bits + 1) =>
    ({ name: `int${bits}`, kind: "int", bits, bitsPerElement }) as const;
  for (const bits of [NaN, -3, 0, 2.5]) {
    assert.throws(() => precisionBits(int(bits)), named(FormatError, /bits/));
  }
  assert.throws(
    () => selectFormat(2, [int(4, NaN), int(8, 9)]),
    named(InvalidValueError, /int4 costs NaN/),
  );
  assert.equal(selectFormat(2, [int(4), int(8)]).format.bits, 4);
  // an overflowed lower bound is still a lower bound: the largest finite float
  assert.equal(nextDown(Infinity), Number.MAX_VALUE);
  assert.ok(Number.isFinite(expDown(710)) && expDown(710) > 1e308);
  assert.equal(divDown(1e308, 0.1), Number.MAX_VALUE);
  assert.equal(nextUp(-Infinity), -Number.MAX_VALUE);
  assert.ok(nextDown(1) < 1 && nextUp(1) > 1);
  const rope = new Rope(2, 4);
  for (const pos of [4, -1, 1.5]) {
    assert.throws(() => rope.apply(Float32Array.of(1, 0), pos), named(ShapeError, /position/));
  }
  assert.throws(() => softmax(Float32Array.of(1, 2), 3), ShapeError);
  assert.throws(() => argmax(new Float32Array(0)), ShapeError);
  assert.equal(argmax(Float32Array.of(NaN, 1, 2, NaN)), 2, "NaN passed over, a first one too");
  assert.throws(() => rope.apply(new Float32Array(3), 0), named(ShapeError, /length 3, not a/));
  assert.throws(
    () => matvec(new Float32Array(2), new Float32Array(3), new Float32Array(5), 2, 3),
    named(ShapeError, /w 5/),
  );
});

Deno.test("composeModelBound names a shape that disagrees with the trace and a NaN output bound", () => {
  const n = 2, d = 2, next = rng(9);
  const trace = {
    length: n,
    input: [],
    mid: [],
    final: new Float32Array(n * d),
    q: [normals(n * d, next)],
    k: [normals(n * d, next)],
    v: [normals(n * d, next)],
    logits: new Float32Array(0),
  };
  const lip = { output: 1, layers: [{ attention: 1, feedForward: 1, layer: 4, outputNorm: 1 }] };
  const b = { key: new Float32Array(n * d).fill(0.01), value: new Float32Array(n * d).fill(0.01) };
  const shape = { nHeads: 1, nKvHeads: 1, headDim: d };
  assert.ok(composeModelBound(trace, lip, [[b]], shape).logits > 0);
  assert.throws(
    () => composeModelBound(trace, { ...lip, output: NaN }, [[b]], shape),
    named(InvalidValueError, /output Lipschitz bound is NaN/),
  );
  assert.throws(
    () => composeModelBound(trace, lip, [[b, b]], { nHeads: 3, nKvHeads: 2, headDim: 1 }),
    named(ShapeError, /3 query heads/),
  );
  assert.throws(
    () => composeModelBound(trace, lip, [[b]], { ...shape, headDim: 4 }),
    named(ShapeError, /trace q\[0\] has 4 elements/),
  );
});

Deno.test("layer Lipschitz helpers name a trace that does not fit the weights and a NaN matrix", () => {
  const w = weights;
  const trace = traceResidualStream(w, [1, 403, 407]);
  assert.ok(layerLipschitz(w, trace).output > 0);
  const short = { ...trace, input: trace.input.slice(0, 2) };
  assert.throws(() => layerLipschitz(w, short), named(ShapeError, /input holds 2 layers/));
  assert.throws(
    () => empiricalLayerGains(w, { ...trace, length: 6 }, { trials: 1 }),
    named(ShapeError, /expected 6 positions/),
  );
  assert.throws(
    () => empiricalLayerGains(w, trace, { size: 1e-40, trials: 1 }),
    named(InvalidValueError, /moves no input element/),
  );
  assert.throws(
    () => spectralNormUpper([NaN, 1, 0, 1], 2, 2),
    named(InvalidValueError, /element 0 is NaN/),
  );
});

Deno.test("withEmpiricalGains refuses a NaN or negative gain", () => {
  const bounds = { output: 1, layers: [{ attention: 1, feedForward: 1, layer: 4, outputNorm: 1 }] };
  assert.throws(
    () => withEmpiricalGains(bounds, [{ layer: NaN, feedForward: 1 }]),
    named(InvalidValueError, /layer 0 layer gain is NaN/),
  );
  assert.throws(
    () => withEmpiricalGains(bounds, [{ layer: 1, feedForward: -5 }]),
    InvalidValueError,
  );
  assert.equal(withEmpiricalGains(bounds, [{ layer: 2, feedForward: 1.5 }]).layers[0].layer, 2);
});

Deno.test("a RoPE base too small for float32 frequencies is refused up front, by name", async () => {
  const tiny = 1e-100;
  const named = (e: Error) =>
    e instanceof InvalidValueError && /base 1e-100, expected/i.test(e.message);
  assert.throws(() => ropeTable(8, 4, tiny), named);
  assert.ok(ropeTable(8, 4, MIN_ROPE_BASE).cos.every(Number.isFinite));
  assert.throws(
    () => uniformPolicy({ keyFormat: "int4-g8-channel", valueFormat: "fp16", ropeBase: tiny }),
    (e: Error) => e instanceof InvalidValueError && /ropeBase is 1e-100/.test(e.message),
  );
  // calibrate refuses it before running the model (a model that counts its forward passes)
  let steps = 0;
  const counting = { forward: () => (steps++, Promise.resolve(new Float32Array(4))) };
  await assert.rejects(
    () =>
      calibrate(counting as never, { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 8 }, [[1, 2]], {
        measureFormats: ["int4-g8-channel"],
        ropeBase: tiny,
      }),
    named,
  );
  assert.equal(steps, 0);
});
