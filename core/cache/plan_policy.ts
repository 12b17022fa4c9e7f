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
import { BudgetError, InvalidValueError, showValue } from "../errors.ts";
import { type PrecisionPlan, validatePrecisionPlan } from "../plan.ts";
import { type CachePolicy, tieredPolicy } from "./policy.ts";

/**
 * Builds the cache policy of a plan. Pages are the smallest multiple of 32 tokens holding whole
 * channel groups of every format the plan uses.
 *
 * @param plan the plan
 * @param label a name for tables and reports (default from the plan's meta: mode and target)
 * @returns the policy
 * @throws CorruptDataError naming the first malformed field; FormatError for an unknown format
 */
export function planPolicy(plan: PrecisionPlan, label?: string): CachePolicy {
  // a malformed plan, or an unknown format, is named here by layer, head and tier; getFormat below
  // named the format alone
  validatePrecisionPlan(plan, isFormatName);
  label ??= planLabel(plan);
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
    ...(plan.stagingFormat === undefined ? {} : { stagingFormat: plan.stagingFormat }),
    pageTokens,
    tiers,
    ropeBase: plan.ropeBase,
  });
}

function planLabel(plan: PrecisionPlan): string {
  const m = plan.meta ?? {};
  if (m.mode === "rule") return `plan ε=${m.epsilon}`;
  if (m.mode === "budget") return `plan ${m.bitsPerElement} bpe`;
  return "plan";
}

// the names getFormat accepts
const isFormatName = (name: string) => {
  try {
    getFormat(name);
    return true;
  } catch {
    return false;
  }
};

/** Result of {@linkcode fitPlanToBudget}. */
export interface BudgetFit<P> {
  /** The chosen plan: the one with the most measured bits within the budget, else the cheapest. */
  plan: P;
  /** Bits per element the cache measured with it. */
  measuredBits: number;
  /** The budget handed to the mapper for it (lower than the target by the cache's overhead). */
  mapperBudget: number;
  /** Whether measuredBits ≤ target. False only when even the mapper's cheapest plan is over. */
  withinBudget: boolean;
  /** Every (mapper budget, measured bits) tried. */
  tries: { mapperBudget: number; measuredBits: number }[];
}

/**
 * Fits a plan to a bits-per-element budget as the cache actually measures it. The mapper counts
 * codes, scales, sinks and window; the cache also holds the eviction ring, page-table entries,
 * window scores and partly filled pages. This lowers the mapper's budget by the measured excess
 * (a few rounds; each round one measurement); once a mapper budget within the target and one over
 * it are known, it interpolates between them. When no round is within the target it measures the
 * mapper's cheapest plan and, if that fits, interpolates between it and the nearest budget over: the
 * result is within the target whenever any plan the mapper can build is. A target below the
 * cheapest plan yields that plan, with withinBudget false.
 *
 * @param target bits per element the cache may hold
 * @param build the plan for a mapper budget; throws BudgetError (with its minimum) below the
 *   cheapest allocation
 * @param measure the bits per element the cache holds with a plan
 * @param rounds measurements at most before the cheapest plan is tried (default 8: on the fixture
 *   the measured bits move about twice as fast as the mapper's budget, and 5 rounds stopped 0.25 b
 *   short of a 5.4 target, one try away from it); as many
 *   again at most after it
 * @returns the fitted plan and what was tried
 * @throws BudgetError when no plan can be built at all; InvalidValueError for a target that is not
 *   a finite number > 0, rounds not an integer ≥ 1, or a measurement that is not a finite number
 *   ≥ 0 (naming the mapper budget it measured)
 */
export async function fitPlanToBudget<P>(
  target: number,
  build: (mapperBudget: number) => P,
  measure: (plan: P) => Promise<number>,
  rounds = 8,
): Promise<BudgetFit<P>> {
  // a NaN target measured nothing as within; rounds NaN, 0 or negative tried nothing and reported
  // "no plan could be built", and a string "3" compared by coercion
  if (typeof target !== "number" || !(target > 0) || target === Infinity) {
    throw new InvalidValueError(`target is ${showValue(target)}, expected a finite number > 0`);
  }
  if (!Number.isInteger(rounds) || rounds < 1) {
    throw new InvalidValueError(`rounds is ${showValue(rounds)}, expected an integer ≥ 1`);
  }
  const tries: BudgetFit<P>["tries"] = [];
  let best: BudgetFit<P> | undefined, cheapest: BudgetFit<P> | undefined;
  // mapper budgets known to measure within (lo, measuring mLo) and over (hi, mHi) the target
  let lo: number | undefined, hi: number | undefined, mLo = 0, mHi = 0;
  // the mapper budget of its cheapest plan, once a budget below it has been asked for
  let floor: number | undefined;
  const attempt = async (b: number): Promise<BudgetFit<P> | undefined> => {
    let plan: P;
    try {
      plan = build(b);
    } catch (e) {
      if (!(e instanceof BudgetError)) throw e; // a real failure, not a budget too small
      if (e.minimum === undefined) return undefined;
      // below the mapper's floor: its cheapest allocation is the nearest honest plan
      b = floor = e.minimum * (1 + 1e-9);
      plan = build(b);
    }
    const measuredBits = await measure(plan);
    // a NaN was never within the target nor over it; a negative one always within
    if (typeof measuredBits !== "number" || !(measuredBits >= 0) || measuredBits === Infinity) {
      throw new InvalidValueError(
        `measure returned ${showValue(measuredBits)} bits per element for mapper budget ${b}, ` +
          "expected a finite number ≥ 0",
      );
    }
    tries.push({ mapperBudget: b, measuredBits });
    const fit = {
      plan,
      measuredBits,
      mapperBudget: b,
      withinBudget: measuredBits <= target,
      tries,
    };
    if (!cheapest || measuredBits < cheapest.measuredBits) cheapest = fit;
    if (fit.withinBudget) {
      if (!best || measuredBits > best.measuredBits) best = fit;
      if (lo === undefined || b > lo) [lo, mLo] = [b, measuredBits];
    } else if (hi === undefined || b < hi) {
      [hi, mHi] = [b, measuredBits];
    }
    return fit;
  };
  const close = (fit: BudgetFit<P>) => fit.withinBudget && target - fit.measuredBits < 0.05;
  // once a budget within and one over are known: where the line between them meets the target,
  // kept off the ends (a staircase response would otherwise creep along one side)
  const between = () => {
    const w = hi! - lo!, t = (target - mLo) / Math.max(mHi - mLo, 1e-12);
    return lo! + w * Math.min(0.9, Math.max(0.1, t));
  };
  const next = (fit: BudgetFit<P>) =>
    lo !== undefined && hi !== undefined && lo < hi
      ? between()
      : fit.mapperBudget - (fit.measuredBits - target + 0.01);

  let b = target;
  for (let i = 0; i < rounds; i++) {
    const fit = await attempt(b);
    if (!fit || close(fit)) break;
    b = next(fit);
    // at or below the floor already measured: nothing cheaper to try
    if (!(b > 0) || (floor !== undefined && b <= floor)) break;
  }
  if (!best && cheapest) {
    // never within: the mapper's cheapest plan (a budget far below any floor), then interpolate
    if (floor === undefined) await attempt(Number.MIN_VALUE);
    for (
      let i = 0;
      best && !close(best) && lo !== undefined && hi !== undefined && i < rounds;
      i++
    ) {
      if (!(lo < hi)) break;
      await attempt(between());
    }
  }
  if (!best && !cheapest) throw new BudgetError(`no plan could be built for budget ${target}`);
  return best ?? cheapest!;
}
