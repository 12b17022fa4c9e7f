/**
 * Bad input to the numerical kernels (attention sensitivities, the sensitivity step, the layer
 * Lipschitz bounds, quantizeHead): each gets a typed error naming what was wrong, before any
 * allocation or work.
 */
import assert from "node:assert/strict";
import {
  attend64,
  attentionWeights,
  headSensitivity,
  keyJacobian,
} from "../../core/attention_sensitivity.ts";
import { CapacityError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import {
  checkTrace,
  empiricalLayerGains,
  layerLipschitz,
  type ResidualTrace,
  spectralNormUpper,
  traceResidualStream,
  withEmpiricalGains,
} from "../../core/layer_lipschitz.ts";
import { parseCheckpoint } from "../../core/model/checkpoint.ts";
import { quantizeHead } from "../../core/quantize_head.ts";
import { SensitivityStep } from "../../core/sensitivity_step.ts";
import { makeRng } from "./_rng.ts";

/** A fresh seed per run, printed in every failure message. */
function freshSeed(): number {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

type Case = [string, () => unknown, new (...a: never[]) => Error, RegExp];

function throwsAll(table: Case[]): void {
  for (const [what, f, cls, re] of table) {
    assert.throws(
      f,
      (e) => e instanceof cls && re.test((e as Error).message),
      `${what}: expected ${cls.name} matching ${re}`,
    );
  }
}

// Deliberately ill-typed arguments, as JavaScript callers can pass them.
// deno-lint-ignore no-explicit-any
const bad = (x: unknown) => x as any;

const q = [1, 0], k = [1, 0, 0, 1], v = [1, 2, 3, 4];

Deno.test("attend64() and headSensitivity() check sizes before allocating (were RangeError)", () => {
  // an array-like long enough for 2^35 positions, which cannot be allocated as float64
  const huge = { length: 2 ** 40 };
  throwsAll([
    [
      "attend64 n −1",
      () => attend64(q, k, v, -1, 2),
      ShapeError,
      /positions n is -1, expected an integer ≥ 1/,
    ],
    ["attend64 d −1", () => attend64(q, k, v, 2, -1), ShapeError, /head dimension d is -1/],
    [
      "headSensitivity n −2",
      () => headSensitivity(q, k, v, -2, 2),
      ShapeError,
      /positions n is -2/,
    ],
    [
      "keyJacobian d −1",
      () => keyJacobian(q, k, v, 2, -1, 0),
      ShapeError,
      /head dimension d is -1/,
    ],
    [
      "attend64 n 1e12",
      () => attend64(q, k, v, 1e12, 2),
      ShapeError,
      /keys has 4 elements, expected ≥ 1000000000000 × 2/,
    ],
    [
      "attend64 2^35",
      () => attend64([1], huge, huge, 2 ** 35, 1),
      CapacityError,
      /attend64: attention of 34359738368 float64s would take 274877906944 bytes/,
    ],
    [
      "headSensitivity 2^35",
      () => headSensitivity([1], huge, huge, 2 ** 35, 1),
      CapacityError,
      /headSensitivity/,
    ],
    [
      "keyJacobian d 2^20",
      () => keyJacobian(new Float64Array(2 ** 20), huge, huge, 1, 2 ** 20, 0),
      CapacityError,
      /keyJacobian: the Jacobian of 1099511627776 float64s/,
    ],
  ]);
});

Deno.test('attention sensitivities name arguments that are not arrays or not counts (were TypeError or printed "2" as 2)', () => {
  const w = new Float64Array(2), o = new Float64Array(2);
  throwsAll([
    [
      "q undefined",
      () => attend64(bad(undefined), k, v, 2, 2),
      InvalidValueError,
      /q is undefined, expected an array of numbers/,
    ],
    [
      "keys number",
      () => headSensitivity(q, bad(5), v, 2, 2),
      InvalidValueError,
      /keys is 5, expected an array/,
    ],
    [
      "values null",
      () => attentionWeights(q, k, bad(null), 2, 2, w, o),
      InvalidValueError,
      /values is null/,
    ],
    [
      "weights array",
      () => attentionWeights(q, k, v, 2, 2, bad([0, 0]), o),
      InvalidValueError,
      /weights is Array, expected a Float64Array/,
    ],
    [
      "out undefined",
      () => attentionWeights(q, k, v, 2, 2, w, bad(undefined)),
      InvalidValueError,
      /out is undefined/,
    ],
    [
      "n string",
      () => attend64(q, k, v, bad("2"), 2),
      ShapeError,
      /positions n is "2", expected an integer ≥ 1/,
    ],
    [
      "d string",
      () => headSensitivity(q, k, v, 2, bad("2")),
      ShapeError,
      /head dimension d is "2"/,
    ],
    [
      "t string",
      () => keyJacobian(q, k, v, 2, 2, bad("1")),
      ShapeError,
      /position t is "1", expected an integer in \[0, 2\)/,
    ],
    [
      "qOffset string",
      () => attentionWeights(q, k, v, 2, 2, w, o, bad("0")),
      ShapeError,
      /qOffset is "0", expected an integer ≥ 0/,
    ],
  ]);
});

Deno.test("SensitivityStep refuses sizes it cannot allocate and arrays of the wrong type (were RangeError, TypeError)", () => {
  const step = new SensitivityStep(2, 2, 1);
  const keys = new Float32Array([1, 0, 0, 1]), values = new Float32Array(4);
  const before = step.attention.slice();
  throwsAll([
    [
      "capacity 1e12",
      () => new SensitivityStep(1e12, 2, 1),
      CapacityError,
      /SensitivityStep\(capacity 1000000000000, headDim 2, group 1\) would allocate/,
    ],
    ["group 2^30", () => new SensitivityStep(1, 1, 2 ** 30), CapacityError, /over the limit/],
    [
      "capacity string",
      () => new SensitivityStep(bad("4"), 2),
      ShapeError,
      /capacity "4", expected an integer ≥ 1/,
    ],
    [
      "keys undefined",
      () => step.run(new Float32Array(2), 0, bad(undefined), values, 2),
      InvalidValueError,
      /keys is undefined, expected a Float32Array/,
    ],
    [
      "values Float64Array",
      () => step.run(new Float32Array(2), 0, keys, bad(new Float64Array(4)), 2),
      InvalidValueError,
      /values is Float64Array, expected a Float32Array/,
    ],
    [
      "queries array",
      () => step.run(bad([1, 0]), 0, keys, values, 2),
      InvalidValueError,
      /queries is Array, expected a Float32Array or Float64Array/,
    ],
    [
      "n string",
      () => step.run(new Float32Array(2), 0, keys, values, bad("2")),
      ShapeError,
      /positions "2", expected 1\.\.2/,
    ],
    [
      "qOffset string",
      () => step.run(new Float32Array(2), bad("0"), keys, values, 2),
      ShapeError,
      /query offset "0"/,
    ],
  ]);
  assert.deepEqual(step.attention, before);
});

Deno.test('quantizeHead() names an x that is not a Float32Array and quotes string sizes (were TypeError, "2" shown as 2)', () => {
  const x = new Float32Array(16);
  throwsAll([
    [
      "plain array",
      () => quantizeHead(bad(Array(8).fill(1)), 1, 8, "int4-g8-token"),
      InvalidValueError,
      /x is Array, expected a Float32Array/,
    ],
    [
      "undefined",
      () => quantizeHead(bad(undefined), 1, 8, "int4-g8-channel"),
      InvalidValueError,
      /x is undefined/,
    ],
    [
      "n string",
      () => quantizeHead(x, bad("2"), 8, "int4-g8-token"),
      ShapeError,
      /tokens n is "2", expected an integer ≥ 0/,
    ],
    [
      "d string",
      () => quantizeHead(x, 2, bad("8"), "int4-g8-token"),
      ShapeError,
      /head dimension d is "8"/,
    ],
  ]);
});

Deno.test("spectralNormUpper() quotes a size given as a string", () => {
  throwsAll([
    [
      "rows",
      () => spectralNormUpper([1, 0, 0, 1], bad("2"), 2),
      ShapeError,
      /rows is "2", expected an integer ≥ 0/,
    ],
    [
      "squarings",
      () => spectralNormUpper([1, 0, 0, 1], 2, 2, bad("6")),
      ShapeError,
      /squarings is "6"/,
    ],
  ]);
});

const w = parseCheckpoint(await Deno.readFile("fixtures/stories260K.bin"));
const c = w.config;

Deno.test("traceResidualStream() refuses tokens without a valid length or id (were a trace of length undefined or NaN, TypeError, RangeError)", () => {
  throwsAll([
    [
      "a number",
      () => traceResidualStream(w, bad(5)),
      InvalidValueError,
      /tokens is 5, expected an array of token ids/,
    ],
    [
      "undefined",
      () => traceResidualStream(w, bad(undefined)),
      InvalidValueError,
      /tokens is undefined/,
    ],
    ["null", () => traceResidualStream(w, bad(null)), InvalidValueError, /tokens is null/],
    ["a string", () => traceResidualStream(w, bad("12")), InvalidValueError, /tokens is "12"/],
    [
      "length NaN",
      () => traceResidualStream(w, bad({ length: NaN })),
      ShapeError,
      new RegExp(`sequence of NaN tokens, expected an integer 1\\.\\.${c.seqLen}`),
    ],
    [
      "length 2.5",
      () => traceResidualStream(w, bad({ length: 2.5, 0: 1, 1: 2, 2: 3 })),
      ShapeError,
      /sequence of 2\.5 tokens/,
    ],
    [
      "no length",
      () => traceResidualStream(w, bad({})),
      ShapeError,
      /sequence of undefined tokens/,
    ],
    [
      "length string",
      () => traceResidualStream(w, bad({ length: "2", 0: 1, 1: 2 })),
      ShapeError,
      /sequence of "2" tokens/,
    ],
    ["empty", () => traceResidualStream(w, []), ShapeError, /sequence of 0 tokens/],
    [
      "too long",
      () => traceResidualStream(w, new Array(c.seqLen + 1).fill(1)),
      ShapeError,
      new RegExp(`sequence of ${c.seqLen + 1} tokens`),
    ],
    [
      "fractional id",
      () => traceResidualStream(w, [1, 1.5]),
      ShapeError,
      new RegExp(`token id 1\\.5 at 1 out of range \\[0, ${c.vocabSize}\\)`),
    ],
    ["negative id", () => traceResidualStream(w, [-1]), ShapeError, /token id -1 at 0/],
    [
      "id = vocab",
      () => traceResidualStream(w, [3, c.vocabSize]),
      ShapeError,
      new RegExp(`token id ${c.vocabSize} at 1`),
    ],
    ["string id", () => traceResidualStream(w, bad(["1"])), ShapeError, /token id "1" at 0/],
  ]);
});

Deno.test("layerLipschitz(), checkTrace() and empiricalLayerGains() refuse a NaN or ±Inf anywhere in the trace (were NaN bounds)", () => {
  const seed = freshSeed(), rng = makeRng(seed);
  const n = 3;
  const trace = traceResidualStream(
    w,
    Array.from({ length: n }, () => Math.floor(rng() * c.vocabSize)),
  );
  for (const key of ["input", "mid", "final", "q", "k", "v"] as const) {
    const l = Math.floor(rng() * c.nLayers);
    const copy: ResidualTrace = {
      ...trace,
      input: trace.input.map((x) => x.slice()),
      mid: trace.mid.map((x) => x.slice()),
      q: trace.q.map((x) => x.slice()),
      k: trace.k.map((x) => x.slice()),
      v: trace.v.map((x) => x.slice()),
      final: trace.final.slice(),
    };
    const target = key === "final" ? copy.final : copy[key][l];
    const i = Math.floor(rng() * target.length),
      value = [NaN, Infinity, -Infinity][Math.floor(rng() * 3)];
    target[i] = value;
    const name = key === "final" ? "trace final" : `trace ${key}\\[${l}\\]`;
    const re = new RegExp(`^${name}\\[${i}\\] is ${value}, expected a finite number`);
    for (
      const [what, f] of [["layerLipschitz", () => layerLipschitz(w, copy)], [
        "checkTrace",
        () => checkTrace(w, copy),
      ], ["empiricalLayerGains", () => empiricalLayerGains(w, copy, { trials: 1 })]] as const
    ) {
      assert.throws(
        f,
        (e) => e instanceof InvalidValueError && e.index === i && re.test(e.message),
        `seed ${seed} ${what} ${key} layer ${l} [${i}] = ${value}`,
      );
    }
  }
});

Deno.test("layerLipschitz(), checkTrace(), empiricalLayerGains() and withEmpiricalGains() name a missing argument (were TypeError)", () => {
  const trace = traceResidualStream(w, [1, 2]);
  const bounds = {
    layers: Array.from(
      { length: c.nLayers },
      () => ({ attention: 1, feedForward: 1, layer: 4, outputNorm: 1 }),
    ),
    output: 1,
  };
  const gain = { layer: 2, feedForward: 1.5 };
  const holes = new Array(c.nLayers);
  holes[0] = gain;
  throwsAll([
    [
      "layerLipschitz",
      () => layerLipschitz(w, bad(undefined)),
      InvalidValueError,
      /trace is undefined, expected a ResidualTrace object/,
    ],
    ["checkTrace", () => checkTrace(w, bad(null)), InvalidValueError, /trace is null/],
    [
      "trace arrays",
      () => checkTrace(w, { ...trace, final: bad(Array.from(trace.final)) }),
      InvalidValueError,
      /trace final is Array, expected a Float32Array/,
    ],
    [
      "options null",
      () => empiricalLayerGains(w, trace, bad(null)),
      InvalidValueError,
      /options is null, expected an object/,
    ],
    [
      "gains undefined",
      () => withEmpiricalGains(bounds, bad(undefined)),
      InvalidValueError,
      /gains is undefined, expected an array of LayerGain/,
    ],
    [
      "gains with holes",
      () => withEmpiricalGains(bounds, holes),
      InvalidValueError,
      /gains\[1\] is undefined, expected \{layer, feedForward\}/,
    ],
    [
      "a null gain",
      () => withEmpiricalGains(bounds, bad([...Array(c.nLayers - 1).fill(gain), null])),
      InvalidValueError,
      new RegExp(`gains\\[${c.nLayers - 1}\\] is null`),
    ],
    [
      "a string gain",
      () => withEmpiricalGains(bounds, Array(c.nLayers).fill({ layer: bad("2"), feedForward: 1 })),
      InvalidValueError,
      /layer 0 layer gain is "2", expected a finite ≥ 0/,
    ],
    [
      "bounds undefined",
      () => withEmpiricalGains(bad(undefined), [gain]),
      InvalidValueError,
      /bounds is undefined/,
    ],
  ]);
});
