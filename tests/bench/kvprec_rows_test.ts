// kvprecFittedPlan's choice of sensitivity and window format for a budget: every candidate fitted
// and measured on the calibration lines, the lowest mean KL kept, and its figures what an
// independent measurement gives.
import assert from "node:assert/strict";
import {
  calibrateModel,
  calibrationSequences,
  chooseCandidate,
  kvprecFittedPlan,
  type PlanCandidate,
  planPolicy,
  SENSITIVITIES,
  WINDOW_CHOICES,
  windowChoiceName,
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

Deno.test("a budget plan keeps the sensitivity and window format with the lowest calibration KL; fixed ones are kept", async () => {
  const { model, sequences } = await loadFixture();
  const calibration = calibrationSequences([sequences.at(-1)!], model.config.seqLen, [96, 192]);
  const line = calibration.at(-1)!;
  const analysis = await calibrateModel(model, calibration);
  const options = { sinkTokens: 2, recentWindow: 8 };
  const fitted = await kvprecFittedPlan(model, analysis, calibration, { budget: 6.5 }, options);

  const candidates = fitted.candidates!;
  assert.deepEqual(
    candidates.map((c) => `${windowChoiceName(c)} ${c.sensitivity}`),
    WINDOW_CHOICES.flatMap((w) => SENSITIVITIES.map((s) => `${windowChoiceName(w)} ${s}`)),
  );
  // 6.5 b is above every candidate's floor on these lines: all fit, so the lowest KL wins
  for (const c of candidates) assert.equal(c.withinBudget, true);
  const best = candidates.reduce((a, b) => (b.meanKl < a.meanKl ? b : a));
  assert.equal(fitted.plan.meta?.sensitivity, best.sensitivity);
  assert.equal(fitted.plan.windowFormat, best.windowFormat);
  assert.equal(fitted.plan.stagingFormat, best.stagingFormat);
  // each window format's bits are its own: the int8 window frees bits the fit gives to codes
  for (const c of candidates) assert.ok(c.bits <= 6.5 + 1e-9, `${c.windowFormat} ${c.bits} b`);
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
    windowFormat: "int8-g8-token",
  });
  assert.equal(fixed.candidates, undefined);
  assert.equal(fixed.plan.meta?.sensitivity, "attention");
  assert.equal(fixed.plan.windowFormat, "int8-g8-token");
  const rule = await kvprecFittedPlan(model, analysis, calibration, { epsilon: 1 });
  assert.equal(rule.candidates, undefined);
  assert.equal(rule.plan.meta?.sensitivity, "curvature");
  assert.equal(rule.plan.windowFormat, "fp16");
});

Deno.test("a budget keeps the lowest-KL candidate within it, else the cheapest; never a lower KL over it", () => {
  const c = (windowFormat: string, meanKl: number, bits: number, withinBudget: boolean) =>
    ({ sensitivity: "curvature", windowFormat, meanKl, bits, withinBudget }) as PlanCandidate;
  // the over-budget candidate has the lowest KL, and is passed over
  assert.equal(
    chooseCandidate([
      c("fp16", 1e-4, 4.3, false),
      c("a", 3e-3, 3.9, true),
      c("b", 2e-3, 3.95, true),
    ]),
    2,
  );
  // none within: the fewest bits, whatever their KL; equal bits: the lower KL
  assert.equal(chooseCandidate([c("fp16", 1e-4, 4.6, false), c("int8", 5e-2, 4.3, false)]), 1);
  assert.equal(chooseCandidate([c("x", 5e-2, 4.3, false), c("y", 4e-2, 4.3, false)]), 1);
  assert.equal(chooseCandidate([c("only", 1, 9, false)]), 0);
});

Deno.test("calibrationSequences() keeps every prefix within the model's context", () => {
  // prefixes of 512 tokens once reached calibration with a model of seq_len 256 and failed there
  const line = Array.from({ length: 600 }, (_, i) => 3 + (i % 400));
  const lengths = (context: number) =>
    calibrationSequences([line, [1, 5, 6], [7]], context).map((s) => s.length);
  assert.deepEqual(lengths(512), [128, 256, 512, 3]);
  assert.deepEqual(lengths(256), [128, 256, 3]);
  assert.deepEqual(lengths(200), [128, 200, 3]);
  assert.deepEqual(lengths(2), [2, 2]);
});
