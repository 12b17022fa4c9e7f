/**
 * Writes the library for browsers, Node and edge runtimes: one ES module with the WebAssembly
 * embedded (kvprec.js, `deno bundle --platform browser mod.ts`), and the same WebAssembly as a file
 * (kvprec.wasm), for runtimes that refuse to compile WebAssembly from bytes and import a .wasm file
 * as a compiled module instead (give it to `useWasmModule`).
 *
 *     deno task bundle               # dist/kvprec.js and dist/kvprec.wasm
 *     deno task bundle --out DIR     # into DIR
 *
 * @module
 */

import { wasmBytes } from "../codecs/wasm.ts";

const ROOT = new URL("../", import.meta.url);
const at = Deno.args.indexOf("--out");
const out = at >= 0 ? Deno.args[at + 1] : new URL("dist", ROOT).pathname;
if (out === undefined) throw new Error("--out needs a directory");
await Deno.mkdir(out, { recursive: true });
const bundled = await new Deno.Command(Deno.execPath(), {
  args: ["bundle", "--quiet", "--platform", "browser", "-o", `${out}/kvprec.js`, "mod.ts"],
  cwd: ROOT.pathname,
}).output();
if (!bundled.success) Deno.exit(bundled.code || 1);
await Deno.writeFile(`${out}/kvprec.wasm`, wasmBytes());
console.log(`${out}/kvprec.js, ${out}/kvprec.wasm`);
