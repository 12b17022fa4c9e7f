// deno run -A examples/simple_demo.ts [--eps E | --budget B] [--lines N] [--context N]
// The short story: configure, analyze, see what the plan keeps and what it saves. Figures come from
// bench/analysis_run.ts, which measures with the eval harness, so they equal `deno task eval
// --budget B --lines N` (or `--eps E`) for the same flags. Evaluates 3 lines by default to stay under a minute. Where
// WebGPU is available it also decodes with the plan on the GPU cache, against the WASM cache.
import { runAnalysis } from "../bench/analysis_run.ts";
import { loadAnalyzeInputs } from "../bench/cli_args.ts";
import { calibrationLines } from "../bench/kvprec_rows.ts";
import {
  cacheShape,
  createKVCache,
  DeviceError,
  generateGreedy,
  type GpuDevice,
  gpuPolicyFor,
  MixedPrecisionKVCache,
  requestGpu,
} from "../mod.ts";
import { planPolicy } from "../bench/kvprec_rows.ts";
import { demoArgs } from "./_demo_args.ts";

const args = demoArgs(Deno.args);
const { model, tokenizer, sequences } = await loadAnalyzeInputs(args);
const c = model.config;
const context = args.context ?? c.seqLen;
const target = "epsilon" in args.target
  ? `precision rule, target error ε = ${args.target.epsilon}`
  : `budget ${args.target.budget} bits per element`;
console.log("== configuration");
console.log(
  `model stories260K: ${c.nLayers} layers, ${c.nHeads} query heads / ${c.nKvHeads} KV heads, ` +
    `head size ${c.headDim}; quality target: ${target}`,
);

const a = await runAnalysis({
  model,
  tokenizer,
  evaluation: sequences.slice(0, args.lines),
  calibration: calibrationLines(sequences, args.calibrationLines),
  target: args.target,
  context,
  backend: "wasm",
  baselines: false,
});
if (args.json) await Deno.writeTextFile(args.json, JSON.stringify(a));
const ref = a.rows.find((r) => r.kind === "reference")!;
const kv = a.rows.find((r) => r.name === a.kvprecRow)!;

console.log("\n== analysis report");
console.log(
  `calibrated on ${a.config.calibrationLengths.length} sequences (${
    a.config.calibrationLengths.join(", ")
  } tokens) in ${a.seconds.calibrate.toFixed(1)} s; evaluated on ${a.config.evalLines} lines, ` +
    `${kv.tokens} tokens, context ${context}`,
);
console.log(`bits per element held  ${kv.bitsPerElement.toFixed(3)}`);
console.log(`compression vs FP16    ${(16 / kv.bitsPerElement).toFixed(2)}×`);
console.log(
  `perplexity             ${kv.perplexity.toFixed(4)} (FP32 ${ref.perplexity.toFixed(4)}, ${
    (100 * (kv.perplexity / ref.perplexity - 1)).toFixed(2)
  }%)`,
);
console.log(`greedy match           ${Math.round(100 * kv.greedyMatch)}/100 tokens`);
console.log(`top-1 agreement        ${(100 * kv.top1Agreement).toFixed(2)}%`);

console.log("\n== per layer (first evaluation window)");
console.log("layer | bytes | FP16 bytes | vs FP16");
for (const l of a.layers) {
  console.log(
    `L${l.layer} | ${l.bytes} | ${l.fp16Bytes} | ${(l.fp16Bytes / l.bytes).toFixed(2)}×`,
  );
}

console.log("\n== precision distribution (share of stored positions, K|V formats)");
for (const [pair, share] of Object.entries(a.distribution).sort((x, y) => y[1] - x[1])) {
  console.log(`${(100 * share).toFixed(1).padStart(5)}%  ${pair}`);
}

console.log("\n== memory while appending tokens (first evaluation line)");
const cache = new MixedPrecisionKVCache(cacheShape(c), planPolicy(a.plan, a.kvprecRow));
const line = sequences[0].slice(0, context);
console.log("tokens | bytes held | FP16 bytes | FP32 bytes | vs FP16");
for (let pos = 0; pos < line.length; pos++) {
  await model.forward(line[pos], pos, cache);
  const n = pos + 1;
  if (n === 64 || n === 128 || n === 256 || n === line.length) {
    const m = cache.memory();
    console.log(
      `${n} | ${m.bytes} | ${m.elements * 2} | ${m.elements * 4} | ${
        (m.elements * 2 / m.bytes).toFixed(2)
      }×`,
    );
  }
}
console.log(
  `predicted on the calibration data: ${a.predicted.plan.bitsPerElement.toFixed(3)} bits → ${
    (16 / a.predicted.plan.bitsPerElement).toFixed(2)
  }× vs FP16; measured by eval: ${(16 / kv.bitsPerElement).toFixed(2)}×`,
);

console.log("\n== where the plan runs");
// createKVCache chooses the backend without changing what is stored; a hardware GPU takes caches
// of at least minGpuElements K/V elements a layer (this model's are far smaller)
const chosen = await createKVCache(cacheShape(c), planPolicy(a.plan, a.kvprecRow));
console.log(`auto: ${chosen.reason}`);
chosen.destroy();
// the GPU cache holds the same plan as written (tiers, its window format, keys before RoPE):
// same tokens, same formats; a plan whose window it cannot keep (say bf16) runs on WebAssembly
const policy = planPolicy(a.plan, a.kvprecRow);
const notOnGpu = gpuPolicyFor(policy);
let gpu: GpuDevice | undefined;
if (typeof notOnGpu === "string") {
  console.log(`GPU: not this plan (${notOnGpu})`);
} else {
  try {
    gpu = await requestGpu();
  } catch (e) {
    if (!(e instanceof DeviceError)) throw e;
    console.log(`no WebGPU here (${e.message}): the plan runs on WebAssembly`);
  }
}
if (gpu) {
  const onGpu = await createKVCache(cacheShape(c), policy, { backend: "gpu", gpu });
  const wasm = new MixedPrecisionKVCache(cacheShape(c), policy, { backend: "wasm" });
  const prompt = tokenizer.encode("Once upon a time");
  const t0 = performance.now();
  const g = await generateGreedy(model, onGpu.cache, prompt, 50);
  const seconds = (performance.now() - t0) / 1000;
  const w = await generateGreedy(model, wasm, prompt, 50);
  const same = g.filter((id, i) => id === w[i]).length;
  console.log(
    `GPU (${gpu.info.description || "adapter"}${
      gpu.info.isFallbackAdapter ? ", software" : ""
    }): ` +
      `50 greedy tokens in ${seconds.toFixed(1)} s, ${same}/50 identical to the WASM cache's`,
  );
  onGpu.destroy();
  gpu.destroy();
}
