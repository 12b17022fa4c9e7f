/**
 * TS reference vs WASM kernels on the fixture model: for every uniform row of `deno task eval`,
 * the worst relative difference of an attention output over every attend call of a forward pass
 * over the first lines of the evaluation text (issue 5 asks ≤ 1e-6).
 *
 *     deno run -A bench/agreement_report.ts [--lines 3]
 *
 * @module
 */

import { parseCheckpoint } from "../core/model/checkpoint.ts";
import { parseTokenizer } from "../core/model/tokenizer.ts";
import { cacheShape, Transformer } from "../core/model/transformer.ts";
import { backendAgreement } from "./backend_agreement.ts";
import { baselineRows } from "./eval_rows.ts";
import { reportFlags } from "./report_flags.ts";

const flags = reportFlags(
  "agreement_report",
  "deno run -A bench/agreement_report.ts [--lines 3]",
  ["--lines"],
);
const text = new TextDecoder().decode(
  await Deno.readFile("fixtures/tinystories_valid_excerpt.txt"),
);
const lines = text.split("\n").filter((l) => l.trim().length > 0);
const LINES = flags.size("--lines", "3", 1, lines.length);
const weights = parseCheckpoint(await Deno.readFile("fixtures/stories260K.bin"));
const model = new Transformer(weights);
const tokenizer = parseTokenizer(
  await Deno.readFile("fixtures/tok512.bin"),
  weights.config.vocabSize,
);
const shape = cacheShape(weights.config);
const sequences = lines.slice(0, LINES)
  .map((l) => tokenizer.encode(l, { bos: true }).slice(0, shape.maxSeqLen));
console.log(
  `fixture model, ${sequences.length} lines (${sequences.reduce((n, s) => n + s.length, 0)} ` +
    `tokens): worst |WASM − TS| / max |TS| of a query head's attention output`,
);
let overall = 0;
for (const row of baselineRows()) {
  const { worst, calls } = await backendAgreement(model, shape, row.policy, sequences);
  overall = Math.max(overall, worst);
  console.log(`${row.name.padEnd(52)} ${worst.toExponential(2)} over ${calls} calls`);
}
console.log(
  `worst ${overall.toExponential(2)} (issue 5: ≤ 1e-6) ${overall <= 1e-6 ? "holds" : "MISSED"}`,
);
