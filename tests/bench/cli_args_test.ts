import assert from "node:assert/strict";
import { loadAnalyzeInputs, parseAnalyzeArgs, UsageError } from "../../bench/cli_args.ts";
import { parseReportFlags } from "../../bench/report_flags.ts";

Deno.test("parseAnalyzeArgs() reads every flag, both spellings", () => {
  const cases: [string[], Partial<ReturnType<typeof parseAnalyzeArgs>>][] = [
    [[], { target: { budget: 5.4 }, backend: "auto", out: "analysis_out", lines: 3 }],
    [["--eps", "0.25", "--lines", "2"], { target: { epsilon: 0.25 }, lines: 2 }],
    [["--budget=7.5", "--out", "x"], { target: { budget: 7.5 }, out: "x" }],
    [["--model", "m.bin", "--tokenizer=t.bin", "--text", "a.txt"], {
      model: "m.bin",
      tokenizer: "t.bin",
      text: "a.txt",
    }],
    [["--backend", "ts", "--context", "128", "--calib-lines", "1"], {
      backend: "ts",
      context: 128,
      calibrationLines: 1,
    }],
    [["--sensitivity", "attention"], { sensitivity: "attention" }],
    [[], { sensitivity: undefined }],
    [["--help"], { help: true }],
  ];
  for (const [args, want] of cases) {
    const got = parseAnalyzeArgs(args);
    for (const [k, v] of Object.entries(want)) {
      assert.deepEqual(got[k as keyof typeof got], v, `${args.join(" ")}: ${k}`);
    }
  }
});

Deno.test("parseAnalyzeArgs() rejects bad flags and values with one line naming them", () => {
  const cases: [string[], RegExp][] = [
    [["--eps", "0"], /--eps is 0, expected a number > 0/],
    [["--eps", "-1e-3"], /--eps is -0.001/],
    [["--eps", "abc"], /--eps is "abc"/],
    [["--budget", "0"], /--budget is 0/],
    [["--eps", "1", "--budget", "4"], /not both/],
    [["--backend", "gpu"], /--backend gpu: analyze reports bits as the CPU cache holds them/],
    [["--backend", "cuda"], /expected one of ts, wasm, auto/],
    [["--sensitivity", "kappa"], /--sensitivity is "kappa", expected one of curvature, attention/],
    [["--lines", "0"], /--lines is 0/],
    [["--lines", "2.5"], /expected an integer/],
    [["--context", "1"], /--context is 1/],
    [["--frobnicate"], /unknown flag --frobnicate/],
    [["--model"], /--model needs a value/],
    // a value-taking flag once swallowed the next flag, and a repeat silently kept the last value
    [["--out", "--help"], /--out needs a value, not the flag --help/],
    [["--model", "-h"], /--model needs a value, not the flag -h/],
    [["--eps", "0.1", "--eps", "0.3"], /--eps is given twice/],
    [["--lines", "3", "--lines=7"], /--lines is given twice/],
  ];
  for (const [args, re] of cases) {
    assert.throws(() => parseAnalyzeArgs(args), (e: Error) => {
      assert.ok(e instanceof UsageError, `${args.join(" ")}: ${e}`);
      assert.match(e.message, re);
      assert.ok(!e.message.includes("\n"));
      return true;
    });
  }
});

Deno.test("parseReportFlags() refuses unknown flags, repeats and sizes that are not positive integers", () => {
  // the report scripts once read `--name value` wherever it stood and ignored the rest: a
  // mistyped --t 512 ran every shape
  const valued = ["--T", "--reps"], switches = ["--no-ts"];
  const f = parseReportFlags(["--T", "512,4096", "--no-ts", "--reps=3"], valued, switches);
  assert.deepEqual(f.sizes("--T", "1"), [512, 4096]);
  assert.equal(f.size("--reps", "8"), 3);
  assert.equal(f.size("--warm", "0", 0), 0);
  assert.ok(f.has("--no-ts") && !f.help);
  const cases: [string[], RegExp, (g: ReturnType<typeof parseReportFlags>) => unknown][] = [
    [["--t", "512"], /unknown flag --t/, () => 0],
    [["--T", "512", "--T", "64"], /--T is given twice/, () => 0],
    [
      ["--T", "512,abc"],
      /--T is "512,abc", expected positive integers/,
      (g) => g.sizes("--T", "1"),
    ],
    [["--reps", "0"], /--reps is "0", expected an integer ≥ 1/, (g) => g.size("--reps", "1")],
    [["--reps", "2,3"], /--reps is "2,3"/, (g) => g.size("--reps", "1")],
    // Number() read these as 2, 2 and 1000
    [["--reps", "0x2"], /--reps is "0x2"/, (g) => g.size("--reps", "1")],
    [["--reps", " 2"], /--reps is " 2"/, (g) => g.size("--reps", "1")],
    [["--T", "1e3"], /--T is "1e3"/, (g) => g.sizes("--T", "1")],
    [["--reps", "99999999999999999999"], /--reps is "9+"/, (g) => g.size("--reps", "1")],
    [
      ["--reps", "20"],
      /--reps is "20", expected an integer in \[1, 19\]/,
      (g) => g.size("--reps", "1", 1, 19),
    ],
    [
      ["--T", "64,7"],
      /--T is "64,7", expected positive integers that are multiples of 32/,
      (g) => g.sizes("--T", "1", 32),
    ],
  ];
  for (const [args, message, read] of cases) {
    assert.throws(
      () => read(parseReportFlags(args, valued, switches)),
      (e: Error) => e instanceof UsageError && message.test(e.message),
      args.join(" "),
    );
  }
});

Deno.test("loadAnalyzeInputs() refuses more --lines or --calib-lines than the text has", async () => {
  // eval refused them; analyze took the lines there were without a word
  for (const extra of [["--lines", "20"], ["--calib-lines", "20"]]) {
    await assert.rejects(
      () => loadAnalyzeInputs(parseAnalyzeArgs(extra)),
      (e: Error) =>
        e instanceof UsageError &&
        new RegExp(`^${extra[0]} is 20, the text has 19 lines`).test(e.message),
    );
  }
  const { sequences } = await loadAnalyzeInputs(parseAnalyzeArgs(["--lines", "19"]));
  assert.equal(sequences.length, 19);
});
