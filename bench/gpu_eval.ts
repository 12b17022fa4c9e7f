// Perplexity of the fixture model with its attention on the GPU cache, against the same policy on
// the CPU (pages encoded and decoded by the WASM codecs, attention by attendHead) and the FP32 cache.
// Usage: deno run -A bench/gpu_eval.ts [--lines N] [--format int8-g32-channel]
import { cacheShape, Float32KVCache, perplexity } from "../mod.ts";
import { createGpuKVCache, requestGpu } from "../gpu/mod.ts";
import { loadFixture } from "../tests/_fixtures.ts";
import { CpuPagedReference } from "../tests/gpu/_cpu_reference.ts";

const arg = (name: string, fallback: string) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : fallback;
};
const lines = Number(arg("--lines", "8"));
const formats = arg("--format", "int8-g32-channel,int4-g32-channel,fp32").split(",");
const fx = await loadFixture();
const sequences = fx.sequences.slice(0, lines);
const shape = cacheShape(fx.model.config);
const gpu = await requestGpu();
console.log(
  `adapter: ${gpu.info.description}; ${lines} lines, ${
    sequences.reduce((a, s) => a + s.length - 1, 0)
  } tokens scored`,
);
const fp32 = await perplexity(fx.model, new Float32KVCache(shape), sequences);
console.log(`FP32 cache (CPU): perplexity ${fp32.perplexity.toFixed(6)}`);
for (const format of formats) {
  const policy = { keyFormat: format, valueFormat: format, sinkTokens: 4, windowTokens: 32 };
  const cpu = await perplexity(fx.model, new CpuPagedReference(shape, policy), sequences);
  const cache = await createGpuKVCache({ gpu, shape, policy });
  const t0 = performance.now();
  const gpuPpl = await perplexity(fx.model, cache, sequences);
  const s = (performance.now() - t0) / 1000;
  const rel = Math.abs(gpuPpl.perplexity - cpu.perplexity) / cpu.perplexity;
  console.log(
    `${format.padEnd(18)} GPU ${gpuPpl.perplexity.toFixed(6)}  CPU/WASM ${
      cpu.perplexity.toFixed(6)
    }  ` +
      `relative difference ${rel.toExponential(2)}  (GPU ${
        (gpuPpl.tokens / s).toFixed(0)
      } tokens/s)`,
  );
  cache.destroy();
}
