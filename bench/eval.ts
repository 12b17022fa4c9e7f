// deno task eval: the quality table of kvprec on the fixture model and text. One row per cache
// configuration: bits per element (all metadata, window and sinks at their stored width),
// compression vs FP16, perplexity and its change vs the FP32 cache, mean KL of the next-token
// distributions from the FP32 cache's (teacher-forced), top-1 agreement, and greedy-token match
// over 100 generated tokens. --eps / --budget add the kvprec plan row for that target (calibrated
// on the text's last two lines, as `deno task analyze` does).
// --backend wasm (default), ts, or gpu (every row, each followed by the WASM cache's perplexity
// and bits under the same policy; the bits column is then the GPU cache's own memory()). Single attention calls of the three agree to float rounding (TS and WASM
// within 1e-6); over a model, a rounding difference in one layer's output now and then moves a
// later layer's K or V across a code boundary, so perplexities of quantized rows differ by up to
// about 1e-4 relative (gpu/NOTES.md). Flags: deno task eval --help (bench/eval_args.ts).
// --breakdown: under each CPU row, where its bits go (codes, scales, WASM padding, page tables,
// ring, window scores, sinks), summed over the scoring windows as the bits/elem column is.
import { loadFixture } from "../tests/_fixtures.ts";
import { evalSetup, measureRow } from "./eval_measure.ts";
import {
  cacheShape,
  type GpuDevice,
  gpuPolicyFor,
  MixedPrecisionKVCache,
  requestGpu,
  signTest,
} from "../mod.ts";
import {
  baselineRows,
  type EvalRow,
  planRows,
  type PlanRowSpec,
  planRowSpecs,
} from "./eval_rows.ts";
import { defaultPlanOptions, kvprecRowName, windowChoiceName } from "./kvprec_rows.ts";
import { EVAL_HELP, type EvalArgs, parseEvalArgs } from "./eval_args.ts";
import { UsageError } from "./cli_args.ts";

const { model, tokenizer, sequences } = await loadFixture();
let args: EvalArgs;
try {
  args = parseEvalArgs(Deno.args, model.config.seqLen, sequences.length);
} catch (e) {
  if (!(e instanceof UsageError)) throw e;
  console.error(`eval: ${e.message}`);
  Deno.exit(2);
}
if (args.help) {
  console.log(EVAL_HELP);
  Deno.exit(0);
}
const { context, lines, only, backend, targets } = args;
const matches = (name: string) => !only || name.includes(only);
const allSpecs: PlanRowSpec[] = [
  ...planRowSpecs(),
  ...targets.map((target) => ({
    name: kvprecRowName(target),
    kind: "kvprec" as const,
    target,
    options: defaultPlanOptions(target),
  })),
];
const rows: EvalRow[] = baselineRows().filter((r) => matches(r.name));
const specs = allSpecs.filter((s) => matches(s.name));
// a mistyped --only ran the FP32 reference and printed an empty table
if (rows.length === 0 && specs.length === 0) {
  const names = [...baselineRows().map((r) => r.name), ...allSpecs.map((s) => s.name)];
  console.error(`eval: --only ${JSON.stringify(only)} matches no row; rows: ${names.join("; ")}`);
  Deno.exit(2);
}
const gpu: GpuDevice | undefined = backend === "gpu" ? await requestGpu() : undefined;
const jsonPath = args.json;
const seqs = sequences.slice(0, lines);

const setup = await evalSetup(model, tokenizer, seqs, context);

console.log(
  `fixture: stories260K (dim ${model.config.dim}, ${model.config.nLayers} layers, ` +
    `${model.config.nHeads} heads, ${model.config.nKvHeads} KV heads, head_dim ${model.config.headDim}); ` +
    `${seqs.length} lines, context ${context}, ${setup.tokens} tokens scored`,
);
console.log(
  `FP32 forward: batched prefill ${(setup.tokens / setup.prefillSeconds).toFixed(0)} tokens/s, ` +
    `greedy decode ${(100 / setup.decodeSeconds).toFixed(0)} tokens/s`,
);
console.log(
  `greedy continuation (FP32): ${
    JSON.stringify(tokenizer.decode([...setup.prompt, ...setup.referenceGreedy]))
  }`,
);
console.log();

rows.push(...(await planRows(model, sequences, specs)));
const header = [
  "configuration",
  "bits/elem",
  "vs FP16",
  "perplexity",
  "Δppl",
  "mean KL",
  "top-1",
  "greedy",
  "bound",
];
console.log(header.join(" | "));
console.log(header.map(() => "---").join(" | "));
const results = [];
const fp32Ppl = setup.referencePerplexity;
// on the GPU every row runs as written, and the WASM cache runs the same policy beside it
for (const row of rows) {
  const notOnGpu = backend === "gpu" ? gpuPolicyFor(row.policy) : undefined;
  if (typeof notOnGpu === "string") {
    console.log(`${row.name} | skipped: ${notOnGpu}`);
    continue;
  }
  const r = await measureRow(model, row, setup, undefined, backend, gpu);
  results.push(r);
  const floor =
    (row.fitted?.withinBudget === false ? " [below the cache's floor: cheapest plan]" : "") +
    (row.fitted?.candidates
      ? ` [${row.plan?.meta?.sensitivity}${
        row.plan && windowChoiceName(row.plan) !== "fp16"
          ? `, ${windowChoiceName(row.plan)} window`
          : ""
      }]`
      : "");
  console.log([
    row.name + floor,
    r.bitsPerElement.toFixed(3),
    `${(16 / r.bitsPerElement).toFixed(2)}×`,
    r.perplexity.toFixed(4),
    `${(100 * (r.perplexity / fp32Ppl - 1)).toFixed(2)}%`,
    r.meanKl.toExponential(2),
    `${(100 * r.top1Agreement).toFixed(2)}%`,
    `${Math.round(r.greedyMatch * 100)}/100`,
    row.boundHeld === undefined ? "—" : row.boundHeld ? "yes" : "NO",
  ].join(" | "));
  if (args.breakdown && backend !== "gpu") {
    console.log(`  ↳ bits by part: ${await bitsByPart(row)}`);
  }
  const epsilon = row.plan?.meta?.epsilon;
  if (typeof epsilon === "number" && row.maxHeadError !== undefined) {
    // what the rule promises: every head's output within ε
    console.log(
      `  ↳ largest head-output error on calibration line 1: ${
        row.maxHeadError.toExponential(2)
      } = ${(row.maxHeadError / epsilon).toExponential(2)} ε`,
    );
  }
  if (backend === "gpu") {
    // the same policy on the WASM cache
    const w = await measureRow(model, row, setup, undefined, "wasm");
    const rel = Math.abs(r.perplexity - w.perplexity) / w.perplexity;
    // bits differ by design: the GPU cache counts its page buffers at their allocated size (grown
    // in steps) and keeps its page lists on the host; the CPU cache counts each page it holds with
    // a page-table entry (gpu/cache.ts memory())
    console.log(
      `  ↳ WASM, same policy: perplexity ${w.perplexity.toFixed(6)}, ` +
        `GPU ${r.perplexity.toFixed(6)}, relative difference ${rel.toExponential(2)}; ` +
        `bits/elem WASM ${w.bitsPerElement.toFixed(3)}, GPU ${r.bitsPerElement.toFixed(3)}`,
    );
  }
}
// Each kvprec row against the cheapest uniform baseline that holds at least as many bits.
const uniform = results.filter((r) => r.kind === "baseline" || r.kind === "reference");
const kvprec = results.filter((r) => r.kind === "kvprec" || r.kind === "ablation");
if (uniform.length > 0 && kvprec.length > 0) {
  console.log(
    "\nkvprec vs the cheapest uniform row with ≥ its bits (mean KL, lower is better; the sign " +
      "test asks whether lower KL in that many scoring windows could be chance):",
  );
  for (const r of kvprec) {
    const rival = uniform
      .filter((u) => u.bitsPerElement >= r.bitsPerElement)
      .sort((a, b) => a.bitsPerElement - b.bitsPerElement)[0];
    if (!rival) continue;
    const verdict = r.meanKl <= rival.meanKl ? "as good or better" : "WORSE";
    // per window, paired: is the difference in the mean a few windows or most of them?
    const t = signTest(r.windowKl, rival.windowKl);
    console.log(
      `  ${r.name} (${r.bitsPerElement.toFixed(2)} b, KL ${r.meanKl.toExponential(2)}) vs ` +
        `${rival.name} (${rival.bitsPerElement.toFixed(2)} b, KL ${
          rival.meanKl.toExponential(2)
        }): ${verdict}; lower KL in ${t.lower} of ${r.windowKl.length} windows (sign test ` +
        `p = ${t.p.toPrecision(2)})`,
    );
  }
}
// How each budget row chose its sensitivity and window format: the candidates' mean KL on the
// calibration lines.
const chosen = rows.filter((r) => r.fitted?.candidates);
if (chosen.length > 0) {
  console.log(
    "\nsensitivity and window format of the budget rows, chosen by mean KL on the calibration lines:",
  );
  for (const r of chosen) {
    const c = r.fitted!.candidates!.map((x) =>
      `${x.sensitivity}/${windowChoiceName(x)} ${x.meanKl.toExponential(2)} (${
        x.bits.toFixed(2)
      } b)`
    );
    console.log(
      `  ${r.name}: ${c.join(", ")} → ${r.plan?.meta?.sensitivity}/${
        r.plan ? windowChoiceName(r.plan) : ""
      }`,
    );
  }
}
if (jsonPath) {
  await Deno.writeTextFile(
    jsonPath,
    JSON.stringify(
      { context, lines: seqs.length, tokens: setup.tokens, backend, rows: results },
      null,
      2,
    ) + "\n",
  );
  console.log(`\nwrote ${jsonPath}`);
}

/** Bits per element by part of the cache, over the scoring windows (each measured when complete). */
async function bitsByPart(row: EvalRow): Promise<string> {
  const cache = new MixedPrecisionKVCache(cacheShape(model.config), row.policy, {
    backend: "wasm",
  });
  const sum: Record<string, number> = {};
  let elements = 0;
  for (const w of setup.reference.windows) {
    cache.reset();
    await model.prefill(w.tokens, 0, cache);
    elements += cache.memory().elements;
    for (const [part, bytes] of Object.entries(cache.memoryBreakdown())) {
      sum[part] = (sum[part] ?? 0) + bytes;
    }
  }
  return Object.entries(sum).map(([part, bytes]) => `${part} ${(8 * bytes / elements).toFixed(3)}`)
    .join(", ");
}
