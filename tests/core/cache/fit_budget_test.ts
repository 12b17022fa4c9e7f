// fitPlanToBudget against synthetic mappers and caches whose measured bits respond to the mapper's
// budget in the ways real ones do: a constant overhead, a weak staircase response (one tier per
// head), and a floor above the target.
import assert from "node:assert/strict";
import { BudgetError, fitPlanToBudget } from "../../../mod.ts";

/** A mapper with a floor: budgets below it throw BudgetError with the floor as minimum. */
function mapper(floor: number) {
  return (b: number) => {
    if (b < floor) throw new BudgetError(`below ${floor}`, floor);
    return { b };
  };
}

Deno.test("fitPlanToBudget() lands within the target, close to it, when the cache adds a constant", async () => {
  const fit = await fitPlanToBudget(5.4, mapper(2), (p) => Promise.resolve(p.b + 1.3));
  assert.ok(fit.withinBudget && fit.measuredBits <= 5.4, JSON.stringify(fit.tries));
  assert.ok(5.4 - fit.measuredBits < 0.05, JSON.stringify(fit.tries));
});

Deno.test("fitPlanToBudget() stays within the target when the measured bits respond weakly", async () => {
  // a staircase with slope 1/4 in steps of 0.1 mapper bits: lowering the mapper's budget by the
  // measured excess crawls toward the target and stays just over it after five rounds
  const measure = (p: { b: number }) => Promise.resolve(4.4 + 0.25 * Math.floor(p.b * 10) / 10);
  const fit = await fitPlanToBudget(5.4, mapper(1), measure);
  assert.ok(fit.withinBudget && fit.measuredBits <= 5.4, JSON.stringify(fit.tries));
  // the floor (4.425) was measured, then bisection came back up toward the target
  assert.ok(fit.tries.some((t) => t.mapperBudget < 1.0001), "the cheapest plan was tried");
  assert.ok(5.4 - fit.measuredBits < 0.05, JSON.stringify(fit.tries));
  assert.ok(fit.tries.length <= 10, "at most rounds before and rounds after the floor");
});

Deno.test("fitPlanToBudget() gets close on the fixture's 5.4 budget, where five rounds stopped short", async () => {
  // what the fixture's cache measured for the mapper budgets the fit tried (5.4 budget, attention
  // ranking), joined by straight lines: steeper near the target than on average, so the fit nears
  // it from below in small steps; five rounds ended at 5.149 b, one try short of 5.38
  const trace = [[3.9895, 5.1493], [4.1196, 5.4013], [4.134, 5.4233], [4.2036, 5.5207], [
    5.4,
    6.8005,
  ]];
  const measure = (p: { b: number }) => {
    let i = 1;
    while (i < trace.length - 1 && p.b > trace[i][0]) i++;
    const [[b0, m0], [b1, m1]] = [trace[i - 1], trace[i]];
    return Promise.resolve(m0 + (m1 - m0) * (p.b - b0) / (b1 - b0));
  };
  const fit = await fitPlanToBudget(5.4, mapper(1), measure);
  assert.ok(fit.withinBudget && 5.4 - fit.measuredBits < 0.05, JSON.stringify(fit.tries));
});

Deno.test("fitPlanToBudget() returns the cheapest plan, marked over budget, below the floor", async () => {
  const fit = await fitPlanToBudget(4.5, mapper(4), (p) => Promise.resolve(p.b + 1));
  assert.equal(fit.withinBudget, false);
  assert.ok(Math.abs(fit.measuredBits - 5) < 1e-6, "the floor plan: 4 + 1");
  assert.ok(fit.tries.every((t) => t.measuredBits >= fit.measuredBits), "nothing cheaper tried");
  // far below the floor: the first step lands at the floor, and no negative budget is asked for
  const asked: number[] = [];
  const far = await fitPlanToBudget(
    0.5,
    (b) => (asked.push(b), mapper(4)(b)),
    (p) => Promise.resolve(p.b + 1),
  );
  assert.equal(far.withinBudget, false);
  assert.ok(asked.every((b) => b > 0), `budgets asked: ${asked}`);
  assert.equal(far.tries.length, 1, "the floor is measured once");
  await assert.rejects(
    () =>
      fitPlanToBudget(5, () => {
        throw new BudgetError("no plan at all");
      }, () => Promise.resolve(0)),
    (e: Error) => e instanceof BudgetError && /no plan could be built for budget 5/.test(e.message),
  );
  // any other failure of the mapper is its own error, not a budget verdict
  await assert.rejects(
    () =>
      fitPlanToBudget(5, () => {
        throw new RangeError("mapper bug");
      }, () => Promise.resolve(0)),
    (e: Error) => e instanceof RangeError && e.message === "mapper bug",
  );
});
