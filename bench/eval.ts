// deno task eval: perplexity of the fixture model on the fixture text, forward-pass speed, and the
// greedy continuation of "Once upon a time", with the full-precision cache.
// Usage: deno task eval [--context N]
import { cacheShape, Float32KVCache, generateGreedy, perplexity } from "../mod.ts";
import { loadFixture } from "../tests/_fixtures.ts";

const args = Deno.args;
const contextArg = args.indexOf("--context");
const fx = await loadFixture();
const { model, tokenizer, sequences } = fx;
const context = contextArg >= 0 ? Number(args[contextArg + 1]) : model.config.seqLen;
const cache = new Float32KVCache(cacheShape(model.config));

let t0 = performance.now();
const ppl = await perplexity(model, cache, sequences, { context });
const prefillSeconds = (performance.now() - t0) / 1000;
console.log(
  `fixture: stories260K (dim ${model.config.dim}, ${model.config.nLayers} layers, ` +
    `${model.config.nHeads} heads, ${model.config.nKvHeads} KV heads, head_dim ${model.config.headDim})`,
);
console.log(
  `perplexity (FP32 cache, context ${context}): ${ppl.perplexity.toFixed(6)} ` +
    `(mean NLL ${ppl.meanNll.toFixed(6)} over ${ppl.tokens} tokens)`,
);
console.log(`batched prefill: ${(ppl.tokens / prefillSeconds).toFixed(0)} tokens/s`);

const prompt = tokenizer.encode("Once upon a time");
t0 = performance.now();
const ids = await generateGreedy(model, cache, prompt, 100);
const decodeSeconds = (performance.now() - t0) / 1000;
console.log(`greedy decode: ${(100 / decodeSeconds).toFixed(0)} tokens/s (one token at a time)`);
console.log(`greedy ids: ${ids.join(" ")}`);
console.log(`continuation: ${JSON.stringify(tokenizer.decode([...prompt, ...ids]))}`);
