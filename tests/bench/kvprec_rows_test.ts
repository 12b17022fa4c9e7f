// kvprecFittedPlan's choice of sensitivity for a budget: both candidates fitted and measured on the
// calibration lines, the lower mean KL kept, and its figures what an independent measurement gives.
import assert from "node:assert/strict";
import {
  calibrateModel,
  calibrationSequences,
  kvprecFittedPlan,
  planPolicy,
  SENSITIVITIES,
} from "../../bench/kvprec_rows.ts";
import {
  cacheShape,
  compareCache,
  Float32KVCache,
  measureCacheBits,
  MixedPrecisionKVCache,
  referenceRun,
} from "../../mod.ts";
import { loadFixture } from "../_fixtures.ts";

Deno.test("a budget plan keeps the sensitivity with the lower calibration KL; a fixed one is kept", async () => {
  const { model, sequences } = await loadFixture();
  const calibration = calibrationSequences([sequences.at(-1)!], [96, 192]);
  const line = calibration.at(-1)!;
  const analysis = await calibrateModel(model, calibration);
  const options = { sinkTokens: 2, recentWindow: 8 };
  const fitted = await kvprecFittedPlan(model, analysis, calibration, { budget: 6.5 }, options);

  const candidates = fitted.candidates!;
  assert.deepEqual(candidates.map((c) => c.sensitivity), SENSITIVITIES);
  const best = candidates.reduce((a, b) => (b.meanKl < a.meanKl ? b : a));
  assert.equal(fitted.plan.meta?.sensitivity, best.sensitivity);
  assert.equal(fitted.calibrationBits, best.bits);
  for (const c of candidates) assert.ok(c.meanKl > 0 && Number.isFinite(c.meanKl), `${c.meanKl}`);

  // the chosen plan's figures, measured again from scratch on the calibration line
  const shape = cacheShape(model.config);
  const cache = () =>
    new MixedPrecisionKVCache(shape, planPolicy(fitted.plan, "check"), { backend: "wasm" });
  const reference = await referenceRun(model, new Float32KVCache(shape), [line], 512);
  assert.equal((await compareCache(model, cache(), reference)).meanKl, best.meanKl);
  assert.equal(await measureCacheBits(model, cache(), [line]), best.bits);

  const fixed = await kvprecFittedPlan(model, analysis, calibration, { budget: 6.5 }, {
    ...options,
    sensitivity: "attention",
  });
  assert.equal(fixed.candidates, undefined);
  assert.equal(fixed.plan.meta?.sensitivity, "attention");
  const rule = await kvprecFittedPlan(model, analysis, calibration, { epsilon: 1 });
  assert.equal(rule.candidates, undefined);
  assert.equal(rule.plan.meta?.sensitivity, "curvature");
});
