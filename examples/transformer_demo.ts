// deno task demo: the end-to-end story on the bundled model. Calibrates over several sequence
// lengths (with progress), shows per layer the curvature and the precision chosen across positions
// (one character per bucket of positions), measures the plan with the eval harness (the same
// figures as `deno task eval --budget B --lines N`, or `--eps E`) and derives recommendations.
// Flags as examples/simple_demo.ts; evaluates 3 lines by default to stay under a minute.
import { pairBits, runAnalysis } from "../bench/analysis_run.ts";
import { loadAnalyzeInputs } from "../bench/cli_args.ts";
import { calibrationLines } from "../bench/kvprec_rows.ts";
import { stderrProgress } from "../bench/progress.ts";
import { demoArgs } from "./_demo_args.ts";

const args = demoArgs(Deno.args);
const { model, tokenizer, sequences } = await loadAnalyzeInputs(args);
const c = model.config;
console.log(
  `model: stories260K, ${c.nLayers} layers, ${c.nHeads} query heads over ${c.nKvHeads} KV heads, ` +
    `head_dim ${c.headDim}`,
);
const bar = stderrProgress();
const a = await runAnalysis({
  model,
  tokenizer,
  evaluation: sequences.slice(0, args.lines),
  calibration: calibrationLines(sequences, args.calibrationLines),
  target: args.target,
  context: args.context ?? c.seqLen,
  backend: "wasm",
  baselines: false,
  onProgress: (phase, done, total) => bar(phase, done, total),
});
if (args.json) await Deno.writeTextFile(args.json, JSON.stringify(a));
console.log(
  `calibration: ${a.config.calibrationLengths.length} sequences of ${
    a.config.calibrationLengths.join(", ")
  } tokens, ${a.seconds.calibrate.toFixed(1)} s`,
);

// One character per format, fewest bits first; '#' is the format of sinks and window.
const formats = a.heatmap.formats;
const windowPair = `${a.plan.windowFormat}|${a.plan.windowFormat}`;
const order = [...formats.keys()].sort((x, y) => pairBits(formats[x]) - pairBits(formats[y]));
const glyphs = "123456789abcdefghijklmnopqrstuvwxyz";
const glyph = new Map(order.map((f, i) => [f, formats[f] === windowPair ? "#" : glyphs[i]]));
const width = 64;
console.log(
  `\nprecision across positions (${width} buckets, the most frequent format per bucket):`,
);
for (const l of a.layers) {
  console.log(
    `\nlayer ${l.layer}: curvature mean ${l.meanCurvature.toExponential(2)}, max ${
      l.maxCurvature.toExponential(2)
    }, sink attention ${(100 * l.sinkShare).toFixed(1)}%`,
  );
  for (const row of a.heatmap.rows.filter((r) => r.layer === l.layer)) {
    const n = row.cells.length, per = Math.ceil(n / width);
    let s = "";
    for (let b = 0; b * per < n; b++) {
      const cells = row.cells.slice(b * per, (b + 1) * per);
      // The most frequent format of the bucket (ties: the more precise).
      const count = new Map<number, number>();
      for (const f of cells) count.set(f, (count.get(f) ?? 0) + 1);
      const best = [...count].reduce((x, y) =>
        y[1] > x[1] || (y[1] === x[1] && pairBits(formats[y[0]]) > pairBits(formats[x[0]])) ? y : x
      );
      s += glyph.get(best[0]);
    }
    console.log(`  head ${row.head} |${s}|`);
  }
}
console.log("\nlegend:");
for (const f of order) {
  console.log(`  ${glyph.get(f)}  ${formats[f]} (${pairBits(formats[f]).toFixed(2)} bits)`);
}

const ref = a.rows.find((r) => r.kind === "reference")!;
const kv = a.rows.find((r) => r.name === a.kvprecRow)!;
console.log(
  `\n${kv.name}: ${kv.bitsPerElement.toFixed(3)} bits/element (${
    (16 / kv.bitsPerElement).toFixed(2)
  }× vs FP16), perplexity ${kv.perplexity.toFixed(4)} vs FP32 ${ref.perplexity.toFixed(4)} (${
    (100 * (kv.perplexity / ref.perplexity - 1)).toFixed(2)
  }%), greedy match ${Math.round(100 * kv.greedyMatch)}/100`,
);

console.log("\nrecommendations:");
const meanCurv = a.layers.reduce((s, l) => s + l.meanCurvature, 0) / a.layers.length;
for (const l of a.layers) {
  const wf = a.plan.windowFormat; // sinks and window: fp16, or int8 when the budget chose it
  const held = l.tokensByFormat[`${wf}|${wf}`] ?? 0;
  const total = Object.values(l.tokensByFormat).reduce((x, y) => x + y, 0);
  if (l.meanCurvature > 1.2 * meanCurv) {
    console.log(
      `- layer ${l.layer} needs more precision: mean curvature ${
        (l.meanCurvature / meanCurv).toFixed(2)
      }× the model average; ${(100 * held / total).toFixed(0)}% of its positions stay at ${wf}`,
    );
  } else if (l.meanCurvature < 0.8 * meanCurv) {
    console.log(
      `- layer ${l.layer} tolerates fewer bits: mean curvature ${
        (l.meanCurvature / meanCurv).toFixed(2)
      }× the average`,
    );
  }
}
const base = a.windowStudy.find((w) => w.recentWindow === a.plan.recentWindow)!;
for (const w of a.windowStudy) {
  if (w.recentWindow === base.recentWindow) continue;
  // a budget target plans every window within the same bits (the mapper's count): then only the
  // predicted error decides; under the precision rule the window moves the bits too
  const dBits = w.bitsPerElement - base.bitsPerElement;
  const sameBits = Math.abs(dBits) < 0.01;
  const dErr = w.predictedError / base.predictedError - 1;
  const better = sameBits
    ? dErr < 0
    : dBits < 0
    ? dErr <= 0.05
    : dErr < 0 && -dErr > dBits / base.bitsPerElement;
  const bits = sameBits ? "same bits" : `${dBits > 0 ? "+" : ""}${dBits.toFixed(3)} bits/element`;
  console.log(
    `- recent window ${w.recentWindow} instead of ${base.recentWindow}: ${bits}, predicted error ` +
      `${dErr >= 0 ? "+" : ""}${(100 * dErr).toFixed(1)}% → ${
        better ? "worth measuring" : "not worth it"
      }`,
  );
}
if (kv.bitsPerElement > a.predicted.plan.bitsPerElement + 0.5) {
  console.log(
    `- measured ${kv.bitsPerElement.toFixed(2)} bits vs ${
      a.predicted.plan.bitsPerElement.toFixed(2)
    } counted by the mapper: the cache also holds the 32-token eviction ring (tokens wait ` +
      `there until a whole channel group leaves), window scores, page-table entries and the last ` +
      `page of each pool, which weigh most on short texts; the budget fit aims at measured bits, ` +
      `but measures them on the calibration lines`,
  );
}
