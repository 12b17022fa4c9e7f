// One compiled module for the codecs and every cache, and a precompiled one for runtimes that
// refuse to compile WebAssembly from bytes (useWasmModule).
import assert from "node:assert/strict";
import {
  loadWasmCodecs,
  loadWasmCodecsSync,
  useWasmModule,
  wasmBytes,
  wasmCodec,
  wasmExportNames,
  wasmModuleSync,
  wasmVariant,
} from "../../codecs/wasm.ts";
import { InvalidValueError } from "../../core/errors.ts";
import { WasmAttention } from "../../core/cache/wasm_attention.ts";
import { MixedPrecisionKVCache } from "../../core/cache/mixed_cache.ts";
import { uniformPolicy } from "../../core/cache/policy.ts";
import { normal, rng } from "./_inputs.ts";

/** A module exporting one function of the given name: (func (export name) nop). */
function moduleExporting(name: string): WebAssembly.Module {
  const n = new TextEncoder().encode(name);
  return new WebAssembly.Module(Uint8Array.of(
    ...[0, 0x61, 0x73, 0x6d, 1, 0, 0, 0],
    ...[1, 4, 1, 0x60, 0, 0], // type: () -> ()
    ...[3, 2, 1, 0], // function 0 of type 0
    ...[7, n.length + 4, 1, n.length, ...n, 0, 0], // export "name" = func 0
    ...[10, 4, 1, 2, 0, 0x0b], // body: end
  ));
}

Deno.test("wasmExportNames reads the export section as the engine does", () => {
  const names = wasmExportNames(wasmBytes());
  assert.deepEqual(names, WebAssembly.Module.exports(wasmModuleSync()).map((e) => e.name));
  for (const n of ["memory", "heapBase", "attendPage"]) assert.ok(names.includes(n), n);
  assert.deepEqual(WebAssembly.Module.exports(moduleExporting("heapBase")).map((e) => e.name), [
    "heapBase",
  ]);
});

Deno.test("two builds: Deno runs the relaxed-SIMD one; both export the same names", () => {
  assert.equal(wasmVariant(), "relaxed-simd"); // V8 validates relaxed SIMD
  assert.deepEqual(wasmBytes(), wasmBytes("relaxed-simd"));
  const simd = wasmBytes("simd"), relaxed = wasmBytes("relaxed-simd");
  assert.notDeepEqual(simd, relaxed);
  assert.deepEqual(wasmExportNames(simd), wasmExportNames(relaxed));
  for (const v of ["relaxed", "", 1, null]) {
    assert.throws(
      () => wasmBytes(v as "simd"),
      (e: Error) =>
        e instanceof InvalidValueError && /variant is .*expected "simd"/.test(e.message),
    );
  }
  // relaxed SIMD's opcodes (0xfd 0x80–0x93 0x02) appear in the relaxed build only
  const relaxedOps = (b: Uint8Array) =>
    b.filter((x, i) => x === 0xfd && b[i + 2] === 0x02 && b[i + 1] >= 0x80 && b[i + 1] <= 0x93)
      .length;
  assert.equal(relaxedOps(simd), 0);
  assert.ok(relaxedOps(relaxed) > 0);
});

Deno.test("useWasmModule refuses what is not this kvprec's module, and changes nothing", () => {
  const before = wasmModuleSync(), codecs = loadWasmCodecsSync();
  const refused = (m: unknown, re: RegExp) =>
    assert.throws(
      () => useWasmModule(m as WebAssembly.Module),
      (e: Error) => e instanceof InvalidValueError && re.test(e.message),
    );
  refused(wasmBytes(), /module is Uint8Array, expected a WebAssembly\.Module/);
  refused(undefined, /module is undefined/);
  refused(moduleExporting("memory"), /exports differ .*\(no "/);
  refused(moduleExporting("somethingElse"), /exports differ/);
  // a WasmAttention given a module checks it the same way
  assert.throws(
    () => new WasmAttention({ module: moduleExporting("memory") }),
    (e: Error) => e instanceof InvalidValueError && /exports differ .*\(no "/.test(e.message),
  );
  assert.equal(wasmModuleSync(), before);
  assert.equal(loadWasmCodecsSync(), codecs);
});

Deno.test("a module given to useWasmModule serves the codecs and caches created after", async () => {
  const next = rng(5);
  const x = Float32Array.from({ length: 256 }, () => normal(next));
  const want = wasmCodec("int4-g32-token").encode(x).words;
  const module = await WebAssembly.compile(wasmBytes("simd")); // the build other engines get
  useWasmModule(module);
  try {
    assert.equal(wasmModuleSync(), module);
    const codecs = await loadWasmCodecs();
    assert.equal(loadWasmCodecsSync(), codecs);
    assert.deepEqual(codecs.codec("int4-g32-token").encode(x).words, want);
    // a cache instantiates the same module: it attends as the TS reference within 1e-6
    const shape = { nLayers: 1, nHeads: 4, nKvHeads: 2, headDim: 32, maxSeqLen: 64 };
    const policy = () => uniformPolicy({ keyFormat: "fp16", valueFormat: "fp16", pageTokens: 16 });
    const wasm = new MixedPrecisionKVCache(shape, policy(), { backend: "wasm" });
    const ts = new MixedPrecisionKVCache(shape, policy(), { backend: "ts" });
    for (let p = 0; p < 40; p++) {
      const k = x.subarray(p % 4 * 64, p % 4 * 64 + 64).map((v) => v + p / 40);
      for (const c of [wasm, ts]) c.append(0, p, k, k.map((v) => -v));
    }
    const q = x.subarray(0, 128), a = new Float32Array(128), b = new Float32Array(128);
    wasm.attend(0, q, a);
    ts.attend(0, q, b);
    a.forEach((v, i) => assert.ok(Math.abs(v - b[i]) <= 1e-6 * (1 + Math.abs(b[i])), `${i}`));
    // giving it again changes nothing
    useWasmModule(module);
    assert.equal(await loadWasmCodecs(), codecs);
  } finally {
    useWasmModule(new WebAssembly.Module(wasmBytes()));
  }
});
