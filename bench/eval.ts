// deno task eval: the quality table of kvprec on the fixture model and text. One row per cache
// configuration: bits per element (all metadata, window and sinks at their stored width),
// compression vs FP16, perplexity and its change vs the FP32 cache, mean KL of the next-token
// distributions from the FP32 cache's (teacher-forced), top-1 agreement, and greedy-token match
// over 100 generated tokens.
// Usage: deno task eval [--context N] [--lines N] [--json FILE] [--only SUBSTRING]
import {
  cacheShape,
  compareCache,
  Float32KVCache,
  generateGreedy,
  MixedPrecisionKVCache,
  referenceRun,
} from "../mod.ts";
import { loadFixture } from "../tests/_fixtures.ts";
import { evalRows } from "./eval_rows.ts";

function flag(name: string): string | undefined {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : undefined;
}

const { model, tokenizer, sequences } = await loadFixture();
const context = Number(flag("--context") ?? model.config.seqLen);
const lines = Number(flag("--lines") ?? sequences.length);
const only = flag("--only");
const jsonPath = flag("--json");
const seqs = sequences.slice(0, lines);
const shape = cacheShape(model.config);

let t0 = performance.now();
const fp32 = new Float32KVCache(shape);
const reference = await referenceRun(model, fp32, seqs, context);
const prefillSeconds = (performance.now() - t0) / 1000;
const scored = reference.windows.reduce((a, w) => a + w.tokens.length - 1, 0);
const prompt = tokenizer.encode("Once upon a time");
t0 = performance.now();
const refGreedy = await generateGreedy(model, fp32, prompt, 100);
const decodeSeconds = (performance.now() - t0) / 1000;

console.log(
  `fixture: stories260K (dim ${model.config.dim}, ${model.config.nLayers} layers, ` +
    `${model.config.nHeads} heads, ${model.config.nKvHeads} KV heads, head_dim ${model.config.headDim}); ` +
    `${seqs.length} lines, context ${context}, ${scored} tokens scored`,
);
console.log(
  `FP32 forward: batched prefill ${(scored / prefillSeconds).toFixed(0)} tokens/s, ` +
    `greedy decode ${(100 / decodeSeconds).toFixed(0)} tokens/s`,
);
console.log(
  `greedy continuation (FP32): ${JSON.stringify(tokenizer.decode([...prompt, ...refGreedy]))}`,
);
console.log();

const rows = (await evalRows(model, seqs, shape)).filter((r) => !only || r.name.includes(only));
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
let fp32Ppl = NaN;
for (const row of rows) {
  const cache = new MixedPrecisionKVCache(shape, row.policy);
  const t = performance.now();
  const q = await compareCache(model, cache, reference);
  const greedy = await generateGreedy(model, cache, prompt, 100);
  const match = greedy.filter((id, i) => id === refGreedy[i]).length;
  if (row.kind === "reference") fp32Ppl = q.perplexity;
  const result = {
    name: row.name,
    kind: row.kind,
    ...q,
    greedyMatch: match / 100,
    boundHeld: row.boundHeld ?? null,
    seconds: (performance.now() - t) / 1000,
  };
  results.push(result);
  console.log([
    row.name,
    q.bitsPerElement.toFixed(3),
    `${(16 / q.bitsPerElement).toFixed(2)}×`,
    q.perplexity.toFixed(4),
    `${(100 * (q.perplexity / fp32Ppl - 1)).toFixed(2)}%`,
    q.meanKl.toExponential(2),
    `${(100 * q.top1Agreement).toFixed(2)}%`,
    `${match}/100`,
    row.boundHeld === undefined ? "—" : row.boundHeld ? "yes" : "NO",
  ].join(" | "));
}
if (jsonPath) {
  await Deno.writeTextFile(
    jsonPath,
    JSON.stringify({ context, lines: seqs.length, tokens: scored, rows: results }, null, 2),
  );
  console.log(`\nwrote ${jsonPath}`);
}
