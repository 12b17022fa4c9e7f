// deno task eval refuses a bad flag or value by name before the model loads (a typo used to start
// the 10-minute full run; --lines 0 ended in a stack trace after loading).
import assert from "node:assert/strict";
import { UsageError } from "../../bench/cli_args.ts";
import { EVAL_HELP, parseEvalArgs } from "../../bench/eval_args.ts";

Deno.test("parseEvalArgs() reads every flag, with defaults from the model and text", () => {
  assert.deepEqual(parseEvalArgs([], 512, 19), {
    context: 512,
    lines: 19,
    only: undefined,
    backend: "wasm",
    json: undefined,
    targets: [],
    breakdown: false,
    help: false,
  });
  const a = parseEvalArgs(
    ["--only", "kvprec budget", "--lines=2", "--context", "128", "--backend", "gpu", "--eps", "10"]
      .concat(["--budget", "5.4", "--eps=0.1", "--json", "out.json", "--breakdown"]),
    512,
    19,
  );
  assert.equal(a.only, "kvprec budget");
  assert.equal(a.lines, 2);
  assert.equal(a.context, 128);
  assert.equal(a.backend, "gpu");
  assert.deepEqual(a.targets, [{ epsilon: 10 }, { budget: 5.4 }, { epsilon: 0.1 }]);
  assert.equal(a.json, "out.json");
  assert.equal(a.breakdown, true);
  assert.equal(parseEvalArgs(["-h"], 512, 19).help, true);
  for (const flag of ["--only", "--lines", "--context", "--eps", "--budget", "--json"]) {
    assert.ok(EVAL_HELP.includes(flag), `help names ${flag}`);
  }
});

Deno.test("parseEvalArgs() names an unknown flag, a missing value and every value out of range", () => {
  const cases: [string[], RegExp][] = [
    [["--onyl", "FP16"], /unknown flag --onyl/],
    [["--only"], /--only needs a value/],
    [["--lines", "0"], /--lines is "0", expected an integer in \[1, 19\]/],
    [["--lines", "abc"], /--lines is "abc"/],
    [["--lines", "20"], /\[1, 19\]/],
    [["--context", "100000"], /--context is "100000", expected an integer in \[2, 512\]/],
    [["--budget", "abc"], /--budget is "abc", expected a number > 0/],
    [["--eps", "-1"], /--eps is "-1"/],
    [["--eps", "Infinity"], /--eps is "Infinity"/],
    [["--backend", "cuda"], /--backend is "cuda", expected wasm, ts or gpu/],
    [["--json", "--breakdown"], /--json needs a value, not the flag --breakdown/],
    [["--only", "--help"], /--only needs a value, not the flag --help/],
    [["--lines", "3", "--lines", "7"], /--lines is given twice/],
  ];
  for (const [args, message] of cases) {
    assert.throws(
      () => parseEvalArgs(args, 512, 19),
      (e: Error) => e instanceof UsageError && message.test(e.message),
      args.join(" "),
    );
  }
});
