// deno task demo: the end-to-end story on the bundled model. First version: load the real model,
// generate with the full-precision cache and report what that cache holds.
import { cacheShape, Float32KVCache, generateGreedy } from "../mod.ts";
import { loadFixture } from "../tests/_fixtures.ts";

const { model, tokenizer } = await loadFixture();
const c = model.config;
console.log(
  `model: stories260K, ${c.nLayers} layers, ${c.nHeads} query heads over ${c.nKvHeads} KV heads, head_dim ${c.headDim}`,
);
const prompt = tokenizer.encode("Once upon a time");
const cache = new Float32KVCache(cacheShape(c, prompt.length + 100));
const ids = await generateGreedy(model, cache, prompt, 100);
console.log(tokenizer.decode([...prompt, ...ids]));
const mem = cache.memory();
console.log(
  `KV cache: ${mem.elements} elements in ${mem.bytes} bytes (${
    mem.bitsPerElement.toFixed(1)
  } bits/element)`,
);
