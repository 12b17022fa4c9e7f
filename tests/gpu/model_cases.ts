// The fixture model with its attention on the GPU cache: perplexity equals the WASM mixed-precision
// cache's under the same policy (sinks and window at fp32, whole channel groups evicted together),
// and the GPU cache's pages hold the same words as the CPU cache's.
import assert from "node:assert/strict";
import {
  cacheShape,
  createGpuKVCache,
  MixedPrecisionKVCache,
  perplexity,
  uniformPolicy,
} from "../../mod.ts";
import { loadFixture } from "../_fixtures.ts";
import { testGpu } from "./_gpu.ts";

Deno.test("GpuKVCache perplexity equals the WASM cache's within 1e-4 relative", async () => {
  const env = await testGpu();
  if (!env) return;
  const { model, sequences } = await loadFixture();
  // two short windows keep the llvmpipe run short (each attend is one GPU round trip)
  const seqs = [sequences[0].slice(0, 96), sequences[1].slice(0, 64)];
  const shape = cacheShape(model.config);
  // the last one stores keys before RoPE (the model's base, 10000), as kvprec's plans do
  for (
    const [format, ropeBase] of [
      ["int8-g32-channel"],
      ["int4-g32-channel"],
      ["int2-g32-channel", 10000],
    ] as const
  ) {
    const policy = {
      keyFormat: format,
      valueFormat: format,
      pageTokens: 32,
      sinkTokens: 4,
      windowTokens: 8,
      ropeBase,
    };
    const gpuCache = await createGpuKVCache({
      gpu: env.gpu,
      shape,
      policy,
      pipelines: env.pipelines,
    });
    const cpuCache = new MixedPrecisionKVCache(
      shape,
      uniformPolicy({
        keyFormat: format,
        valueFormat: format,
        pageTokens: 32,
        sinkTokens: 4,
        recentWindow: 8,
        windowFormat: "fp32",
        ropeBase,
      }),
      { backend: "wasm" },
    );
    const g = await perplexity(model, gpuCache, seqs, { context: 512 });
    const c = await perplexity(model, cpuCache, seqs, { context: 512 });
    gpuCache.destroy();
    assert.equal(g.tokens, c.tokens);
    const rel = Math.abs(g.perplexity - c.perplexity) / c.perplexity;
    assert.ok(
      rel <= 1e-4,
      `${format}: GPU ${g.perplexity} vs WASM ${c.perplexity} (relative ${rel})`,
    );
  }
});
