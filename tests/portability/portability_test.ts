// The library runs where JavaScript runs: mod.ts reaches only the library's own modules, by relative
// path, and no Deno API; its browser bundle gives Node and headless Chromium (WebAssembly, and
// WebGPU through Chromium's Dawn and SwiftShader, another WGSL compiler than Deno's) the same bytes
// and outputs as Deno. Node and Chromium are required under CI=true (.ci/run installs Chromium).
import assert from "node:assert/strict";
import { type ModelFiles, type ModelResult, workload, type WorkloadResult } from "./_workload.ts";
import { REFERENCE } from "../_fixtures.ts";
import { wasmBytes } from "../../mod.ts";

const root = new URL("../../", import.meta.url);
const ci = Deno.env.get("CI") === "true";

function installed(command: string): boolean {
  try {
    return new Deno.Command(command, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

async function run(command: string, args: string[], cwd?: string): Promise<string> {
  const out = await new Deno.Command(command, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  assert.ok(out.success, `${command} ${args.join(" ")} failed:\n${text(out.stderr)}`);
  return text(out.stdout);
}

/** Bundles `entry` for the browser into dir/name (deno bundle, esbuild from the npm registry). */
async function bundle(entry: string, dir: string, name: string, flags: string[] = []) {
  const file = `${dir}/${name}`;
  await run(Deno.execPath(), [
    "bundle",
    "--quiet",
    "--platform",
    "browser",
    ...flags,
    "-o",
    file,
    entry,
  ]);
  return await Deno.readTextFile(file);
}

Deno.test("mod.ts reaches only the library's own modules, by relative path", async () => {
  const info = JSON.parse(await run(Deno.execPath(), ["info", "--json", "mod.ts"], root.pathname));
  const modules: { specifier: string }[] = info.modules;
  assert.ok(modules.length > 20, `${modules.length} modules`);
  for (const { specifier } of modules) {
    assert.ok(specifier.startsWith(root.href), `${specifier} is outside the library`);
    const path = specifier.slice(root.href.length);
    assert.match(path, /^(mod\.ts|(core|codecs|gpu)\/.*\.ts)$/, `mod.ts reaches ${path}`);
    assert.ok(!/^(tests|bench|examples)\//.test(path), `mod.ts reaches ${path}`);
  }
  for (
    const { dependencies = [] } of info.modules as { dependencies?: { specifier: string }[] }[]
  ) {
    for (const d of dependencies) assert.match(d.specifier, /^\.\.?\//, `import "${d.specifier}"`);
  }
});

Deno.test("deno task bundle: kvprec.js uses no Deno API and imports nothing; both kvprec.wasm builds", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await run(Deno.execPath(), ["run", "-A", "asm/bundle.ts", "--out", dir], root.pathname);
    const code = await Deno.readTextFile(`${dir}/kvprec.js`);
    assert.ok(code.length > 100_000, `bundle is ${code.length} bytes`);
    const deno = code.match(/.{0,60}\bDeno\b.{0,60}/);
    assert.equal(deno, null, `the bundle names Deno: ${deno?.[0]}`);
    const imports = code.match(/^\s*import\b.*$|\bimport\s*\(|\brequire\s*\(/m);
    assert.equal(imports, null, `the bundle imports: ${imports?.[0]}`);
    assert.deepEqual(await Deno.readFile(`${dir}/kvprec.wasm`), wasmBytes("simd"));
    assert.deepEqual(await Deno.readFile(`${dir}/kvprec-relaxed.wasm`), wasmBytes("relaxed-simd"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("error names survive a minifying bundler", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await bundle(new URL("mod.ts", root).pathname, dir, "min.js", ["--minify"]);
    const m = await import(`file://${dir}/min.js`);
    const names = Object.keys(m).filter((k) => /^[A-Z]\w*Error$/.test(k));
    assert.ok(names.length >= 8, names.join());
    for (const name of names) assert.equal(new m[name]("x").name, name);
    assert.notEqual(m.ShapeError.name, "ShapeError", "the bundler renamed the classes");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const FIXTURES = ["stories260K.bin", "tok512.bin", "tinystories_valid_excerpt.txt"] as const;

async function modelFiles(): Promise<ModelFiles> {
  const [checkpoint, tokenizer, text] = await Promise.all(
    FIXTURES.map((f) => Deno.readFile(new URL(`fixtures/${f}`, root))),
  );
  return { checkpoint, tokenizer, text: new TextDecoder().decode(text) };
}

/**
 * The model part agrees to rounding: engines' Math.exp, log, pow and cos differ in the last ulp
 * for 1–10% of arguments (Node 20's V8 against Deno 2.9's, measured on 20,000 arguments each), so
 * the analyzer's doubles, and the plan's tier thresholds, may differ by ulps; greedy tokens, the
 * cache's bits and perplexities to 1e-9 may not.
 */
function assertSameModel(got: ModelResult | undefined, want: ModelResult | undefined): void {
  assert.ok(got && want, "a model result");
  assert.deepEqual(got.greedy, want.greedy);
  assert.equal(got.planBits, want.planBits);
  for (const key of ["perplexity", "planPerplexity"] as const) {
    const rel = Math.abs(got[key] / want[key] - 1);
    assert.ok(rel <= 1e-9, `${key}: ${got[key]} against ${want[key]}`);
  }
}

let native: Promise<WorkloadResult> | undefined;
const nativeResult = () => native ??= (async () => workload({ model: await modelFiles() }))();

Deno.test("the workload runs the real model: llama2.c's greedy tokens; a calibrated plan costs under 1% perplexity", async () => {
  const { model } = await nativeResult();
  assert.ok(model);
  assert.deepEqual(model.greedy, REFERENCE.greedy100.slice(0, model.greedy.length));
  assert.ok(model.planPerplexity > model.perplexity, "quantizing costs something");
  assert.ok(model.planPerplexity < model.perplexity * 1.01, `${model.planPerplexity}`);
});

/** Runs `fn` in a temporary directory holding the workload's bundle (workload.js), for Node. */
async function inNodeDir(fn: (dir: string) => Promise<void>): Promise<void> {
  assert.ok(installed("node"), "CI=true but node is not installed");
  const dir = await Deno.makeTempDir();
  try {
    await bundle(new URL("tests/portability/_workload.ts", root).pathname, dir, "workload.js");
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "Node runs the bundle to the same bytes and outputs as Deno",
  ignore: !installed("node") && !ci,
  async fn() {
    await inNodeDir(async (dir) => {
      const fixtures = new URL("fixtures/", root).pathname;
      await Deno.writeTextFile(
        `${dir}/run.mjs`,
        `import { readFileSync } from "node:fs";
import { workload } from "./workload.js";
const f = (name) => new Uint8Array(readFileSync(${JSON.stringify(fixtures)} + name));
const model = { checkpoint: f("${FIXTURES[0]}"), tokenizer: f("${FIXTURES[1]}"),
  text: new TextDecoder().decode(f("${FIXTURES[2]}")) };
console.log(JSON.stringify(await workload({ model })));
`,
      );
      const node: WorkloadResult = JSON.parse(await run("node", ["run.mjs"], dir));
      const want = await nativeResult();
      assert.equal(Object.keys(node.codecs).length, Object.keys(want.codecs).length);
      assert.deepEqual(node.codecs, want.codecs);
      assert.deepEqual(node.caches, want.caches);
      assertSameModel(node.model, want.model);
    });
  },
});

Deno.test({
  name:
    "edge runtimes (no compiling from bytes) run a given kvprec.wasm; old Chrome falls back to ts",
  ignore: !installed("node") && !ci,
  async fn() {
    await inNodeDir(async (dir) => {
      // the build every engine runs (this Node may predate relaxed SIMD)
      await Deno.writeFile(`${dir}/kvprec.wasm`, wasmBytes("simd"));
      // As Cloudflare's workerd does: a .wasm file the runtime compiled may be instantiated, but
      // WebAssembly.compile, instantiate and new Module refuse bytes.
      await Deno.writeTextFile(
        `${dir}/edge.mjs`,
        `import { readFileSync } from "node:fs";
const compiled = new WebAssembly.Module(readFileSync(new URL("./kvprec.wasm", import.meta.url)));
const Real = WebAssembly.Module, instantiate = WebAssembly.instantiate;
const refused = () => new WebAssembly.CompileError("Wasm code generation disallowed by embedder");
function Module() { throw refused(); }
Object.assign(Module, { exports: Real.exports, imports: Real.imports, prototype: Real.prototype });
Object.defineProperty(Module, Symbol.hasInstance, { value: (x) => x instanceof Real });
WebAssembly.Module = Module;
WebAssembly.compile = () => Promise.reject(refused());
WebAssembly.instantiate = (m, i) => m instanceof Real ? instantiate(m, i) : Promise.reject(refused());
const { autoBackend, workload } = await import("./workload.js");
const before = await autoBackend();
const result = await workload({ wasmModule: compiled });
console.log(JSON.stringify({ before, result, after: await autoBackend() }));
`,
      );
      const got = JSON.parse(await run("node", ["edge.mjs"], dir));
      // without the module, createKVCache falls back to TypeScript and says why
      assert.equal(got.before.backend, "ts");
      assert.match(got.before.reason, /WebAssembly SIMD did not load .*disallowed by embedder/);
      const want = await nativeResult();
      assert.deepEqual(got.result.codecs, want.codecs);
      assert.deepEqual(got.result.caches, want.caches);
      assert.equal(got.after.backend, "wasm");
      // Chrome before 114 on a page's main thread: synchronous compilation and instantiation of
      // a module over 4 KB refused, asynchronous allowed; the cache is made synchronously
      await Deno.writeTextFile(
        `${dir}/old_chrome.mjs`,
        `const refused = (what) => new RangeError(what + " is disallowed on the main thread, if the buffer size is larger than 4KB. Use WebAssembly.compile, or compile on a worker thread.");
const { Module, Instance } = WebAssembly;
WebAssembly.Module = Object.assign(function () { throw refused("WebAssembly.Module"); }, Module);
WebAssembly.Module.prototype = Module.prototype;
WebAssembly.Instance = Object.assign(function () { throw refused("WebAssembly.Instance"); }, Instance);
const { autoBackend } = await import("./workload.js");
console.log(JSON.stringify(await autoBackend()));
`,
      );
      const old = JSON.parse(await run("node", ["old_chrome.mjs"], dir));
      assert.equal(old.backend, "ts");
      assert.match(old.reason, /WebAssembly\.Instance is disallowed on the main thread/);
    });
  },
});

const chromium = ["chromium", "chromium-browser"].find(installed);

/** Removes a directory Chromium's helper processes may still be writing to as they exit. */
async function removeAfterChromium(dir: string): Promise<void> {
  for (let attempt = 1;; attempt++) {
    try {
      return await Deno.remove(dir, { recursive: true });
    } catch (e) {
      if (attempt === 20) throw e;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/**
 * Opens a page that runs the bundled workload in headless Chromium and returns what the page
 * logged: console messages reach stderr with --enable-logging, and the page's result is one line
 * marked KVPREC (URI-encoded, so no quoting gets in the way).
 */
async function inChromium(bundled: string, dir: string): Promise<WorkloadResult> {
  assert.ok(!bundled.includes("</script"), "the bundle can be inlined");
  const page = `${dir}/workload.html`;
  // the model's files inline (base64), since a page opened from file:// may not fetch
  const { checkpoint, tokenizer, text } = await modelFiles();
  const b64 = (b: Uint8Array) => btoa(Array.from(b, (x) => String.fromCharCode(x)).join(""));
  await Deno.writeTextFile(
    page,
    `<!doctype html><script type="module">\n${bundled}\n` +
      `const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
      const model = { checkpoint: bytes("${b64(checkpoint)}"), tokenizer: bytes("${
        b64(tokenizer)
      }"),
        text: ${JSON.stringify(text).replaceAll("<", "\\u003c")} };
      workload({ gpu: true, model }).then(
        (r) => console.log("KVPREC " + encodeURIComponent(JSON.stringify(r))),
        (e) => console.log("KVPREC-ERROR " + encodeURIComponent(String(e?.stack ?? e))));
      </script>`,
  );
  const child = new Deno.Command(chromium!, {
    args: [
      "--headless",
      "--no-sandbox",
      "--enable-unsafe-webgpu", // WebGPU on Linux is behind this flag; SwiftShader serves it
      "--enable-logging=stderr",
      "--v=0",
      `--user-data-dir=${dir}/profile`,
      `file://${page}`,
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // headless Chromium stays open after the page finishes: read until the marked line, then stop it
  const timer = setTimeout(() => child.kill(), 120_000);
  let log = "";
  try {
    const lines = child.stderr.pipeThrough(new TextDecoderStream());
    for await (const chunk of lines) {
      log += chunk;
      const m = log.match(/KVPREC(-ERROR)? (\S+?)"/);
      if (!m) continue;
      const text = decodeURIComponent(m[2]);
      assert.ok(!m[1], `the workload failed in Chromium: ${text}`);
      return JSON.parse(text);
    }
    throw new Error(`Chromium exited without a result:\n${log.slice(-2000)}`);
  } finally {
    clearTimeout(timer);
    try {
      child.kill();
    } catch { /* already exited */ }
    await child.status;
  }
}

Deno.test({
  name: "headless Chromium runs the bundle to the same bytes as Deno, and its WebGPU cache agrees",
  ignore: !chromium && !ci,
  async fn() {
    assert.ok(chromium, "CI=true but chromium is not installed (.ci/run installs it)");
    const dir = await Deno.makeTempDir();
    try {
      const code = await bundle(
        new URL("tests/portability/_workload.ts", root).pathname,
        dir,
        "workload.js",
      );
      const got = await inChromium(code, dir);
      const want = await nativeResult();
      assert.deepEqual(got.codecs, want.codecs);
      assert.deepEqual(got.caches, want.caches);
      assertSameModel(got.model, want.model);
      assert.ok(got.gpu, "a WebGPU result");
      // the GPU codecs encode and decode every format bit for bit as the WASM ones
      assert.deepEqual(
        got.gpu.codecs,
        Object.fromEntries(
          Object.entries(want.codecs).map((
            [name, c],
          ) => [name, { wasm: c.wasm, decoded: c.decoded }]),
        ),
      );
      assert.equal(Object.keys(got.gpu.caches).length, Object.keys(want.caches).length);
      for (const [label, c] of Object.entries(got.gpu.caches)) {
        // the GPU's f32 attention against the exact WASM path, as the GPU tests bound it
        assert.ok(
          c.relDiff <= 1e-5,
          `${label}: GPU output off by ${c.relDiff} (${got.gpu.adapter})`,
        );
        assert.ok(c.sameTiers, `${label}: GPU tiers differ (${got.gpu.adapter})`);
        // SwiftShader, like llvmpipe, does not fuse the quantize kernels' multiply-adds
        assert.ok(c.sameWords, `${label}: GPU page words differ (${got.gpu.adapter})`);
      }
    } finally {
      await removeAfterChromium(dir);
    }
  },
});
