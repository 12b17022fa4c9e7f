/**
 * Writes the library for browsers, Node and edge runtimes: one ES module with the WebAssembly
 * embedded (kvprec.js, `deno bundle --platform browser mod.ts`), and the same WebAssembly as files,
 * for runtimes that refuse to compile WebAssembly from bytes and import a .wasm file as a compiled
 * module instead (give it to `useWasmModule`): kvprec.wasm (v128 SIMD, every engine) and
 * kvprec-relaxed.wasm (relaxed SIMD: the same bits, faster integer-dot attention where the engine
 * validates it).
 *
 *     deno task bundle               # dist/kvprec.js, dist/kvprec.wasm, dist/kvprec-relaxed.wasm
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
  stdout: "inherit",
  stderr: "inherit", // the bundler's reason: captured, a failure exited 1 without a word
}).output();
if (!bundled.success) {
  console.error(`deno bundle failed (exit code ${bundled.code}) writing ${out}/kvprec.js`);
  Deno.exit(bundled.code || 1);
}
await Deno.writeFile(`${out}/kvprec.wasm`, wasmBytes("simd"));
await Deno.writeFile(`${out}/kvprec-relaxed.wasm`, wasmBytes("relaxed-simd"));
console.log(`${out}/kvprec.js, ${out}/kvprec.wasm, ${out}/kvprec-relaxed.wasm`);
