/**
 * The cache policy that applies a {@linkcode PrecisionPlan} online: sinks and recent window at the
 * plan's window format, then per layer and KV head the first tier whose minScore ≤ the attention a
 * token accumulated in the window.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { planPolicy } from "./plan_policy.ts";
 * const p = planPolicy({
 *   version: 1, sinkTokens: 4, recentWindow: 8, windowFormat: "fp16",
 *   layers: [{ heads: [{ tiers: [{ minScore: 0, keyFormat: "int4-g32-channel", valueFormat: "int4-g32-channel" }] }] }],
 * }, "plan");
 * if (p.formatFor(0, 0, 1).keyFormat !== "int4-g32-channel") throw new Error("one tier");
 * ```
 * @module
 */

import { getFormat } from "../../codecs/mod.ts";
import type { PrecisionPlan } from "../plan.ts";
import { type CachePolicy, tieredPolicy } from "./policy.ts";

/**
 * Builds the cache policy of a plan. Pages are the smallest multiple of 32 tokens holding whole
 * channel groups of every format the plan uses.
 *
 * @param plan the plan
 * @param label a name for tables and reports
 * @returns the policy
 */
export function planPolicy(plan: PrecisionPlan, label: string): CachePolicy {
  const tiers = plan.layers.map((l) => l.heads.map((h) => h.tiers));
  let pageTokens = 32;
  for (const layer of tiers) {
    for (const head of layer) {
      for (const t of head) {
        for (const f of [t.keyFormat, t.valueFormat]) {
          const spec = getFormat(f);
          if (spec.axis === "channel") pageTokens = Math.max(pageTokens, spec.group);
        }
      }
    }
  }
  return tieredPolicy({
    label,
    sinkTokens: plan.sinkTokens,
    recentWindow: plan.recentWindow,
    windowFormat: plan.windowFormat,
    pageTokens,
    tiers,
  });
}
