import assert from "node:assert/strict";
import { InvalidValueError, ShapeError } from "../../core/errors.ts";
import type { CalibrationModel } from "../../core/analyzer.ts";
import { attentionOutputGains, composeLayerBounds } from "../../core/verifier.ts";

Deno.test("composeLayerBounds() rejects a NaN or negative input error (was NaN or a negative bound)", () => {
  const [e] = composeLayerBounds([0.1], [2], 0.5); // 0.1 + 2·0.5, rounded upwards
  assert.ok(e >= 1.1 && e < 1.1 + 1e-12, String(e));
  for (const bad of [NaN, -1, Infinity]) {
    assert.throws(
      () => composeLayerBounds([0.1], [2], bad),
      (e) =>
        e instanceof InvalidValueError &&
        /input error is \S+, expected a finite number ≥ 0/.test(e.message),
      String(bad),
    );
  }
});

Deno.test("attentionOutputGains() rejects bad options and no tokens before running the model", async () => {
  let calls = 0;
  const model: CalibrationModel = {
    forward: () => (calls++, new Float32Array(4)),
  };
  const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 2, maxSeqLen: 4 };
  const table: [number[], Record<string, number>, unknown, RegExp][] = [
    [[1, 2], { size: 0 }, InvalidValueError, /size is 0, expected a finite number > 0/],
    [[1, 2], { size: NaN }, InvalidValueError, /size is NaN/],
    [[1, 2], { trials: 0 }, InvalidValueError, /trials is 0, expected an integer ≥ 1/],
    [[1, 2], { trials: 1.5 }, InvalidValueError, /trials is 1.5/],
    [[], {}, ShapeError, /no tokens/],
  ];
  for (const [tokens, options, cls, re] of table) {
    await assert.rejects(
      () => attentionOutputGains(model, shape, tokens, options),
      (e) => e instanceof (cls as typeof Error) && re.test((e as Error).message),
      JSON.stringify(options),
    );
  }
  assert.equal(calls, 0);
});
