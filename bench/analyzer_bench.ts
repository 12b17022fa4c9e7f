/**
 * Analyzer cost. Run: `deno bench -A bench/analyzer_bench.ts`.
 *
 * - "calibration": analyzeHeadGroup over a whole causal sequence of T = 1024 (every query sees
 *   every earlier position): the offline cost per layer per head group.
 * - "step": one new query per head of the group over T = 1024 cached positions with the
 *   allocation-free SensitivityStep kernel: the cost of analyzing one decoding step, per layer per
 *   head group; the target is ≤ 2.5 ms. "step (reference)" times the allocating per-head
 *   headSensitivity for comparison.
 *
 * Shapes: the fixture (d = 8, 2 query heads per KV head) and d = 128 with 4 query heads per KV head.
 * Before timing, analyzeHeadGroup and SensitivityStep are checked against headSensitivity (every
 * per-position output of the step within 1e-12 relative).
 */
import { analyzeHeadGroup } from "../core/analyzer.ts";
import { headSensitivity } from "../core/attention_sensitivity.ts";
import { SensitivityStep } from "../core/sensitivity_step.ts";
import { mulberry32 } from "../core/mulberry32.ts";

function rng(seed: number) {
  const u = mulberry32(seed);
  return () => u() - 0.5;
}

const T = 1024;
for (const { d, group } of [{ d: 8, group: 2 }, { d: 128, group: 4 }]) {
  const r = rng(d);
  const queries = Float32Array.from({ length: T * group * d }, () => 4 * r());
  const keys = Float32Array.from({ length: T * d }, () => 2 * r());
  const values = Float32Array.from({ length: T * d }, () => 2 * r());
  // Check: the last position is seen only by the last query of each head of the group.
  const small = 128;
  const a = analyzeHeadGroup({ queries, keys, values, length: small, headDim: d, group });
  let expect = 0;
  for (let h = 0; h < group; h++) {
    const q = queries.subarray(((small - 1) * group + h) * d, ((small - 1) * group + h + 1) * d);
    expect += headSensitivity(q, keys, values, small, d).attention[small - 1];
  }
  if (Math.abs(a.attentionSum[small - 1] - expect) > 1e-9) {
    throw new Error(
      `analyzeHeadGroup disagrees with headSensitivity: ${a.attentionSum[small - 1]} vs ${expect}`,
    );
  }

  const step = new SensitivityStep(T, d, group);
  const last = (T - 1) * group * d;
  step.run(queries, last, keys, values, T);
  for (let h = 0; h < group; h++) {
    const ref = headSensitivity(
      queries.subarray(last + h * d, last + (h + 1) * d),
      keys,
      values,
      T,
      d,
    );
    const pairs = [
      [step.attention, ref.attention],
      [step.keyGradNorm, ref.keyGradNorm],
      [step.hessianTraceNorm, ref.hessianTraceNorm],
      [step.curvature, ref.curvature],
    ] as const;
    for (const [got, want] of pairs) {
      for (let t = 0; t < T; t++) {
        const g = got[h * T + t], w = want[t];
        if (!(Math.abs(g - w) <= 1e-12 * Math.max(Math.abs(w), 1e-300))) {
          throw new Error(`SensitivityStep head ${h} t ${t}: ${g} vs headSensitivity ${w}`);
        }
      }
    }
  }

  Deno.bench(`calibration d=${d} group=${group} T=${T} (one layer, one head group)`, {
    group: `calibration d=${d}`,
  }, () => {
    analyzeHeadGroup({ queries, keys, values, length: T, headDim: d, group }, { windows: [32] });
  });
  Deno.bench(`step d=${d} group=${group} T=${T} (one query per head, one head group)`, {
    group: `step d=${d}`,
    baseline: true,
  }, () => {
    step.run(queries, last, keys, values, T);
  });
  Deno.bench(`step (reference) d=${d} group=${group} T=${T} (headSensitivity per head)`, {
    group: `step d=${d}`,
  }, () => {
    for (let h = 0; h < group; h++) {
      headSensitivity(
        queries.subarray(((T - 1) * group + h) * d, ((T - 1) * group + h + 1) * d),
        keys,
        values,
        T,
        d,
      );
    }
  });
}
