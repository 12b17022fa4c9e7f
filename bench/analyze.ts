// deno task analyze: calibrate a model on a text, build the kvprec plan, measure it and the uniform
// baselines with the eval harness, write analysis.json and report.html. Flags: see --help
// (bench/cli_args.ts). Bad input: one line on stderr and exit code 2, never a stack trace.
import { runAnalysis } from "./analysis_run.ts";
import { HELP, loadAnalyzeInputs, parseAnalyzeArgs, UsageError } from "./cli_args.ts";
import { calibrationLines } from "./kvprec_rows.ts";
import { stderrProgress } from "./progress.ts";
import { renderReport } from "./report_html.ts";
import { KvprecError } from "../mod.ts";

async function main(): Promise<void> {
  const args = parseAnalyzeArgs(Deno.args);
  if (args.help) {
    console.log(HELP);
    return;
  }
  const { model, tokenizer, sequences } = await loadAnalyzeInputs(args);
  const bar = stderrProgress();
  const result = await runAnalysis({
    model,
    tokenizer,
    evaluation: sequences.slice(0, args.lines),
    calibration: calibrationLines(sequences, args.calibrationLines),
    target: args.target,
    context: args.context ?? model.config.seqLen,
    backend: args.backend === "auto" ? "wasm (auto)" : args.backend,
    sensitivity: args.sensitivity,
    onProgress: (phase, done, total) => bar(phase, done, total),
  });
  try {
    await Deno.mkdir(args.out, { recursive: true });
    await Deno.writeTextFile(`${args.out}/analysis.json`, JSON.stringify(result, null, 1));
    await Deno.writeTextFile(`${args.out}/report.html`, renderReport(result));
  } catch (e) {
    throw new UsageError(`cannot write to ${args.out}: ${(e as Error).message}`);
  }
  const kv = result.rows.find((r) => r.name === result.kvprecRow)!;
  const ref = result.rows.find((r) => r.kind === "reference")!;
  console.log(
    `${kv.name}: ${kv.bitsPerElement.toFixed(3)} bits/element (${
      (16 / kv.bitsPerElement).toFixed(2)
    }× vs FP16), perplexity ${kv.perplexity.toFixed(4)} (${
      (100 * (kv.perplexity / ref.perplexity - 1)).toFixed(2)
    }% vs FP32), greedy match ${Math.round(100 * kv.greedyMatch)}/100`,
  );
  console.log(`wrote ${args.out}/analysis.json and ${args.out}/report.html`);
}

try {
  await main();
} catch (e) {
  if (e instanceof UsageError || e instanceof KvprecError) {
    console.error(`analyze: ${e.message}`);
    Deno.exit(2);
  }
  console.error(`analyze: internal error: ${(e as Error)?.message ?? e}`);
  Deno.exit(1);
}
