import assert from "node:assert/strict";
import {
  CorruptDataError,
  FormatError,
  InvalidValueError,
  planPolicy,
  policyFromJSON,
  type PolicyJSON,
  type PrecisionPlan,
  ShapeError,
  tieredPolicy,
  uniformPolicy,
  validatePrecisionPlan,
} from "../../../mod.ts";
import { throwsLike } from "../../_fixtures.ts";

const pair = { keyFormat: "int4-g8-token", valueFormat: "int4-g8-token" };
const uniform = { kind: "uniform", ...pair };
const tiered = { kind: "tiered", label: "t", tiers: [[[{ minScore: 0, ...pair }]]] };

/** An error class, to check what was thrown. */
type ErrorClass = new (...args: never[]) => Error;

/** Asserts that policyFromJSON refuses `json` with `type`, the input left as it was. */
function refused(json: unknown, type: ErrorClass, message: RegExp): void {
  const before = JSON.stringify(json);
  assert.throws(
    () => policyFromJSON(json as PolicyJSON),
    (e: Error) => e instanceof type && message.test(e.message),
    before,
  );
  assert.equal(JSON.stringify(json), before, "a refused policy is left unchanged");
}

Deno.test("policyFromJSON() refuses unknown format names with a FormatError naming the field", () => {
  refused(
    { ...uniform, keyFormat: "nope" },
    FormatError,
    /^keyFormat: unknown format "nope"; a cache stores e\.g\. int4-g32-channel, int8-g8-token, fp16/,
  );
  refused({ ...uniform, valueFormat: "nope" }, FormatError, /^valueFormat: unknown format "nope"/);
  refused(
    { ...uniform, windowFormat: "nope" },
    FormatError,
    /^windowFormat: unknown format "nope"/,
  );
  refused({ ...tiered, windowFormat: "nope" }, FormatError, /^windowFormat: unknown format "nope"/);
  const tiers = [[[{ minScore: 0, ...pair }], [
    { minScore: 1, ...pair },
    { minScore: 0, ...pair, keyFormat: "nope" },
  ]]];
  refused(
    { ...tiered, tiers },
    FormatError,
    /^tiers\[0\]\[1\]\[1\]\.keyFormat: unknown format "nope"/,
  );
});

Deno.test("policyFromJSON() refuses fields of the wrong type with an InvalidValueError naming them", () => {
  refused({ ...uniform, windowFormat: 5 }, InvalidValueError, /^windowFormat is 5, expected a/);
  refused({ ...uniform, label: 5 }, InvalidValueError, /^label is 5, expected a string/);
  refused({ ...tiered, label: 5 }, InvalidValueError, /^label is 5, expected a string/);
  const { label: _, ...unlabelled } = tiered;
  refused(unlabelled, InvalidValueError, /^label is undefined, expected a string/);
});

Deno.test("policyFromJSON() refuses a tiered policy without layers, KV heads or tiers", () => {
  refused({ ...tiered, tiers: [] }, InvalidValueError, /^tiers has no layers/);
  refused({ ...tiered, tiers: [[]] }, InvalidValueError, /^tiers\[0\] has no KV heads/);
  refused(
    { ...tiered, tiers: [[[{ minScore: 0, ...pair }], []]] },
    InvalidValueError,
    /^tiers\[0\]\[1\] has no tiers/,
  );
});

Deno.test("policyFromJSON() refuses a field its kind does not have, naming it", () => {
  refused(
    { ...uniform, extra: 1 },
    InvalidValueError,
    /uniform policy options have unknown field "extra"/,
  );
  refused(
    { ...tiered, extra: 1 },
    InvalidValueError,
    /tiered policy options have unknown field "extra"/,
  );
  // a field of the other kind is as unknown
  refused(
    { ...uniform, tiers: tiered.tiers },
    InvalidValueError,
    /uniform policy options have unknown field "tiers"/,
  );
  refused(
    { ...tiered, ...pair },
    InvalidValueError,
    /tiered policy options have unknown field "keyFormat"/,
  );
});

Deno.test("a negative last tier is refused, naming its head: the last tier has minScore 0", () => {
  const tiers = [[[{ minScore: 0, ...pair }], [{ minScore: 1, ...pair }, {
    minScore: -5,
    ...pair,
  }]]];
  refused({ ...tiered, tiers }, InvalidValueError, /layer 0 head 1 .*minScore -5/);
  assert.throws(
    () => tieredPolicy({ label: "t", tiers }),
    (e: Error) => e instanceof InvalidValueError && /layer 0 head 1 .*minScore -5/.test(e.message),
  );
});

Deno.test("uniformPolicy() and tieredPolicy() check formats and label as policyFromJSON does", () => {
  const cases: [() => unknown, ErrorClass, RegExp][] = [
    [() => uniformPolicy({} as never), InvalidValueError, /^keyFormat is undefined/],
    [
      () => uniformPolicy(undefined as never),
      InvalidValueError,
      /^uniform policy options are undefined/,
    ],
    [
      () => uniformPolicy({ keyFormat: "bogus", valueFormat: "fp16" }),
      FormatError,
      /^keyFormat: unknown format "bogus"/,
    ],
    [
      () => uniformPolicy({ ...pair, windowFormat: "bogus" }),
      FormatError,
      /^windowFormat: unknown format "bogus"/,
    ],
    [() => uniformPolicy({ ...pair, label: 5 } as never), InvalidValueError, /^label is 5/],
    [
      () => tieredPolicy({ tiers: tiered.tiers } as never),
      InvalidValueError,
      /^label is undefined, expected a string/,
    ],
    [() => tieredPolicy({ label: "t", tiers: [] }), InvalidValueError, /^tiers has no layers/],
    [
      () => tieredPolicy({ label: "t", tiers: [[[{ minScore: 0, ...pair, valueFormat: "x" }]]] }),
      FormatError,
      /^tiers\[0\]\[0\]\[0\]\.valueFormat: unknown format "x"/,
    ],
  ];
  for (const [make, type, message] of cases) {
    assert.throws(
      make,
      (e: Error) => e instanceof type && message.test(e.message),
      String(message),
    );
  }
});

Deno.test("well-formed policies are still accepted, and their options rebuild them", () => {
  const policies = [
    policyFromJSON(uniform as PolicyJSON),
    policyFromJSON({ ...uniform, label: "", windowFormat: "int8-g8-token" } as PolicyJSON),
    policyFromJSON(tiered as PolicyJSON),
    // unsorted tiers are sorted; -0 is 0
    tieredPolicy({
      label: "t",
      tiers: [[[{ minScore: -0, ...pair }, { minScore: 2, ...pair, keyFormat: "fp16" }]]],
      sinkTokens: 1,
      recentWindow: 4,
      ropeBase: 10000,
    }),
  ];
  for (const p of policies) {
    const again = policyFromJSON(JSON.parse(JSON.stringify(p.options)));
    assert.deepEqual(JSON.stringify(again.options), JSON.stringify(p.options));
    assert.equal(again.label, p.label);
  }
  assert.equal(policies[3].formatFor(0, 0, 3).keyFormat, "fp16");
  assert.equal(policies[3].formatFor(0, 0, 1).keyFormat, pair.keyFormat);
});

Deno.test("uniformPolicy() and tieredPolicy() refuse a field they do not have, naming it", () => {
  // a misspelt ropeBase was dropped without a word: keys were then stored after RoPE
  const tiers = [[[{ minScore: 0, ...pair }]]];
  const cases: [() => unknown, RegExp][] = [
    [
      () => uniformPolicy({ ...pair, ropebase: 10000 } as never),
      /^uniform policy options have unknown field "ropebase"; the fields are .*ropeBase/,
    ],
    [
      () => uniformPolicy({ ...pair, recentWindw: 8 } as never),
      /unknown field "recentWindw"/,
    ],
    [() => uniformPolicy({ ...pair, tiers } as never), /unknown field "tiers"/],
    [
      () => tieredPolicy({ tiers, label: "t", keyFormat: "fp16" } as never),
      /^tiered policy options have unknown field "keyFormat"/,
    ],
    [
      () => uniformPolicy({ ...pair, kind: "tiered" } as never),
      /uniform policy options have kind "tiered"/,
    ],
    [() => uniformPolicy(null as never), /^uniform policy options are null, expected an object/],
    [() => tieredPolicy(undefined as never), /^tiered policy options are undefined/],
  ];
  for (const [build, message] of cases) throwsLike(build, InvalidValueError, message);
  // its own kind is accepted, as policyFromJSON passes it
  assert.equal(uniformPolicy({ ...pair, kind: "uniform" } as never).label, pair.keyFormat);
});

Deno.test("policy fields of the wrong type are shown as what they are", () => {
  throwsLike(
    () => uniformPolicy({ ...pair, ropeBase: "10000" } as never),
    InvalidValueError,
    /^ropeBase is "10000", expected a finite number/,
  );
  throwsLike(
    () => uniformPolicy({ ...pair, pageTokens: "32" } as never),
    InvalidValueError,
    /^pageTokens is "32", expected a positive integer/,
  );
  throwsLike(
    () => uniformPolicy({ ...pair, recentWindow: "8" } as never),
    InvalidValueError,
    /^recentWindow is "8", expected an integer ≥ 0/,
  );
});

Deno.test("validatePrecisionPlan() refuses a non-finite minScore with a CorruptDataError", () => {
  const plan = (minScore: number): PrecisionPlan => ({
    version: 1,
    sinkTokens: 0,
    recentWindow: 4,
    windowFormat: "fp16",
    layers: [{ heads: [{ tiers: [{ minScore, ...pair }, { minScore: 0, ...pair }] }] }],
  });
  for (const bad of [Infinity, NaN, -Infinity]) {
    for (const check of [validatePrecisionPlan, planPolicy]) {
      assert.throws(
        () => check(plan(bad)),
        (e: Error) =>
          e instanceof CorruptDataError &&
          new RegExp(`layer 0 head 0 tier 0 minScore is ${bad}, expected a finite number`).test(
            e.message,
          ),
        `${check.name} ${bad}`,
      );
    }
  }
  assert.equal(planPolicy(plan(1e300)).formatFor(0, 0, 1e300).keyFormat, pair.keyFormat);
});

Deno.test("a tiered policy's formatFor names a layer or KV head outside its tiers", () => {
  const pair = { keyFormat: "fp16", valueFormat: "int8-g8-token", minScore: 0 };
  const p = tieredPolicy({ label: "t", tiers: [[[pair], [pair]]] });
  assert.equal(p.formatFor(0, 1, 0.5).valueFormat, "int8-g8-token");
  for (const [l, h] of [[5, 0], [0, 2], [-1, 0]]) {
    assert.throws(
      () => p.formatFor(l, h, 1),
      (e: Error) =>
        e instanceof ShapeError && /outside the tiers \(1 layers of 2 KV heads\)/.test(e.message),
    );
  }
});

Deno.test("policies refuse, when built, formats no cache stores where they are asked for", () => {
  const cases: [() => unknown, RegExp][] = [
    [
      () => uniformPolicy({ ...pair, keyFormat: "int8s-g32-heads" }),
      /^keyFormat: int8s-g32-heads groups across KV heads/,
    ],
    [
      () => uniformPolicy({ ...pair, windowFormat: "int8-g32-channel" }),
      /^windowFormat: int8-g32-channel groups along tokens; the window holds tokens one at a time/,
    ],
    [
      () => uniformPolicy({ ...pair, windowFormat: "int4-g32-heads" }),
      /^windowFormat: int4-g32-heads groups across KV heads/,
    ],
    [
      () =>
        tieredPolicy({
          label: "t",
          tiers: [[[{ minScore: 0, ...pair, valueFormat: "int2-g8-heads" }]]],
        }),
      /^tiers\[0\]\[0\]\[0\]\.valueFormat: int2-g8-heads groups across KV heads/,
    ],
  ];
  for (const [make, message] of cases) {
    assert.throws(
      make,
      (e: Error) => e instanceof FormatError && message.test(e.message),
      String(message),
    );
  }
  // channel-axis pages and per-token windows still are
  uniformPolicy({
    keyFormat: "int4-g32-channel",
    valueFormat: "int4-g8-token",
    windowFormat: "int8-g8-token",
  });
});

Deno.test("tieredPolicy() keeps its own copy of the tiers it was given", () => {
  // it once kept the caller's objects: a later change moved its choices and its saved options
  const tiers = [[[
    { minScore: 0.5, keyFormat: "int8-g32-token", valueFormat: "int8-g32-token" },
    { minScore: 0, keyFormat: "int2-g32-token", valueFormat: "int2-g32-token" },
  ]]];
  const policy = tieredPolicy({ label: "t", tiers });
  const saved = JSON.stringify(policy.options);
  tiers[0][0][0].minScore = 2;
  tiers[0][0][1].keyFormat = "int4-g32-token";
  tiers[0][0].push({ minScore: 1, keyFormat: "fp16", valueFormat: "fp16" });
  assert.equal(policy.formatFor(0, 0, 1).keyFormat, "int8-g32-token");
  assert.equal(policy.formatFor(0, 0, 0.1).keyFormat, "int2-g32-token");
  assert.equal(JSON.stringify(policy.options), saved);
  assert.deepEqual(policy.pairs().map((p) => p.keyFormat), ["int8-g32-token", "int2-g32-token"]);
});
