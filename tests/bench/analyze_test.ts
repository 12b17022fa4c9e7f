// End-to-end: `deno task analyze`, the demos and `deno task eval` on the fixture model agree on the
// kvprec figures; bad input exits with code 2 and one line; report.html renders in headless
// Chromium with non-empty SVG charts (required when CI=true). Runs on 1 line, context 128, to stay
// fast.
import assert from "node:assert/strict";
import type { AnalysisResult } from "../../bench/analysis_run.ts";
import type { RowResult } from "../../bench/eval_measure.ts";
import { renderReport } from "../../bench/report_html.ts";
import { layerFigures } from "../../bench/analysis_run.ts";
import { planPolicy } from "../../bench/kvprec_rows.ts";
import { cacheShape, MixedPrecisionKVCache } from "../../mod.ts";
import { loadFixture, normals, rng } from "../_fixtures.ts";

const root = new URL("../../", import.meta.url).pathname;
const SMALL = ["--lines", "1", "--context", "128", "--eps", "1"];

async function run(script: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", root + script, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

let analyzed: Promise<{ dir: string; result: AnalysisResult }> | undefined;
function analyzeOnce() {
  analyzed ??= (async () => {
    const dir = await Deno.makeTempDir();
    const r = await run("bench/analyze.ts", [...SMALL, "--out", dir]);
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(await Deno.readTextFile(`${dir}/analysis.json`));
    return { dir, result };
  })();
  return analyzed;
}

const FIELDS = ["tokens", "perplexity", "meanKl", "top1Agreement", "bitsPerElement", "greedyMatch"];

Deno.test("analyze, simple_demo and transformer_demo report the figures of deno task eval", async () => {
  const dir = await Deno.makeTempDir();
  const ev = await run("bench/eval.ts", [
    ...SMALL,
    "--only",
    "kvprec ε=",
    "--json",
    `${dir}/eval.json`,
  ]);
  assert.equal(ev.code, 0, ev.stderr);
  const evalRow: RowResult = JSON.parse(await Deno.readTextFile(`${dir}/eval.json`)).rows[0];
  assert.equal(evalRow.name, "kvprec ε=1");
  const { result } = await analyzeOnce();
  const sources: [string, AnalysisResult][] = [["analyze", result]];
  for (const demo of ["simple_demo", "transformer_demo"]) {
    const r = await run(`examples/${demo}.ts`, [...SMALL, "--json", `${dir}/${demo}.json`]);
    assert.equal(r.code, 0, r.stderr);
    sources.push([demo, JSON.parse(await Deno.readTextFile(`${dir}/${demo}.json`))]);
    // What the demo prints is the measured row.
    const kv = sources.at(-1)![1].rows.find((x) => x.kind === "kvprec")!;
    assert.ok(r.stdout.includes(kv.perplexity.toFixed(4)), `${demo} prints the perplexity`);
    if (demo === "simple_demo" && Deno.env.get("CI") === "true") {
      // CI has WebGPU (llvmpipe): the plan runs there as written and decodes as the WASM cache does
      assert.match(r.stdout, /50 greedy tokens in [\d.]+ s, 50\/50 identical to the WASM cache's/);
    }
  }
  for (const [name, a] of sources) {
    const row = a.rows.find((x) => x.name === evalRow.name)!;
    for (const f of FIELDS) {
      assert.equal(row[f as keyof RowResult], evalRow[f as keyof RowResult], `${name} ${f}`);
    }
  }
});

Deno.test("layerFigures() splits memory() exactly across layers", async () => {
  const { model } = await loadFixture();
  const { result } = await analyzeOnce();
  const shape = cacheShape(model.config, 200);
  const next = rng(11);
  for (const n of [1, 37, 200]) {
    const cache = new MixedPrecisionKVCache(shape, planPolicy(result.plan, "plan"));
    const d = shape.nKvHeads * shape.headDim;
    for (let pos = 0; pos < n; pos++) {
      for (let l = 0; l < shape.nLayers; l++) {
        cache.append(l, pos, normals(d, next), normals(d, next));
      }
      cache.attend(
        0,
        normals(shape.nHeads * shape.headDim, next),
        new Float32Array(shape.nHeads * shape.headDim),
      );
    }
    const layers = layerFigures(cache, result.layers);
    assert.equal(layers.reduce((s, l) => s + l.bytes, 0), cache.memory().bytes, `n=${n}`);
    const tokens = layers.flatMap((l) => Object.values(l.tokensByFormat)).reduce((a, b) => a + b);
    assert.equal(tokens, n * shape.nLayers * shape.nKvHeads);
    assert.equal(layers[0].fp16Bytes, n * d * 2 * 2);
  }
});

Deno.test("renderReport() is self-contained with four non-empty charts", async () => {
  const { result } = await analyzeOnce();
  const html = renderReport(result);
  assert.doesNotMatch(html, /<script|https?:\/\/|<link|@import|src=/i);
  // kvprec's plans store channel-axis keys before RoPE, with the model's base; the report says so
  assert.equal(result.plan.ropeBase, 10000);
  assert.match(html, /store keys before RoPE \(base 10000\)/);
  for (const id of ["heatmap", "curvature", "memory", "frontier"]) {
    const m = html.match(new RegExp(`<svg id="${id}"[^>]*>([\\s\\S]*?)</svg>`));
    assert.ok(m, `svg#${id}`);
    assert.match(m[1], /<(rect|circle)[^>]*(width="[1-9]|r="[1-9])/, `svg#${id} draws marks`);
  }
  // Every kvprec and baseline row is a frontier point.
  const points = html.match(/class="point /g)?.length ?? 0;
  assert.equal(points, result.rows.filter((r) => r.kind !== "reference" && r.meanKl > 0).length);
});

const chromium = ["chromium", "chromium-browser"].find((c) => {
  try {
    return new Deno.Command(c, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
});

Deno.test({
  name: "report.html renders in headless Chromium with non-empty SVG charts",
  ignore: !chromium && Deno.env.get("CI") !== "true",
  async fn() {
    assert.ok(chromium, "CI=true but chromium is not installed (.ci/run installs it)");
    const { dir } = await analyzeOnce();
    const url = `file://${dir}/report.html`;
    const flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"];
    const dom = await new Deno.Command(chromium, {
      args: [...flags, "--dump-dom", url],
      stdout: "piped",
      stderr: "null",
    }).output();
    assert.ok(dom.success);
    const text = new TextDecoder().decode(dom.stdout);
    for (const id of ["heatmap", "curvature", "memory", "frontier"]) {
      const m = text.match(new RegExp(`<svg id="${id}"[^>]*>([\\s\\S]*?)</svg>`));
      assert.ok(m, `rendered DOM has svg#${id}`);
      const marks = m[1].match(/<(rect|circle) /g)?.length ?? 0;
      assert.ok(marks > 0, `svg#${id} has ${marks} marks`);
    }
    const shot = `${dir}/report.png`;
    const s = await new Deno.Command(chromium, {
      args: [...flags, `--screenshot=${shot}`, "--window-size=1000,1600", url],
      stdout: "null",
      stderr: "null",
    }).output();
    assert.ok(s.success);
    const png = await Deno.readFile(shot);
    assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
    assert.ok(png.length > 10_000, `screenshot is ${png.length} bytes`);
  },
});

Deno.test("analyze exits with code 2 and one line on bad input", async () => {
  const dir = await Deno.makeTempDir();
  const next = rng(7);
  const junk = Uint8Array.from({ length: 4096 }, () => Math.floor(next() * 256));
  await Deno.writeFile(`${dir}/corrupt.bin`, junk);
  await Deno.writeFile(`${dir}/short.bin`, junk.subarray(0, 10));
  await Deno.writeTextFile(`${dir}/empty.txt`, "\n  \n");
  const cases: [string[], RegExp][] = [
    [["--model", `${dir}/missing.bin`], /model file .*missing\.bin not found/],
    [["--text", `${dir}/nope.txt`], /text file .*nope\.txt not found/],
    [["--model", `${dir}/corrupt.bin`], /not a valid llama2\.c checkpoint/],
    [["--model", `${dir}/short.bin`], /not a valid llama2\.c checkpoint/],
    [["--tokenizer", `${dir}/corrupt.bin`], /tokenizer .* is not valid/],
    [["--text", `${dir}/empty.txt`], /has no line of at least one token/],
    [["--eps", "0"], /--eps is 0, expected a number > 0/],
    [["--eps", "-2"], /--eps is -2/],
    [["--budget", "0.5"], /budget 0\.5 bits per element is below what the cache can hold/],
  ];
  for (const [args, re] of cases) {
    const r = await run("bench/analyze.ts", [...args, "--lines", "1", "--out", `${dir}/o`]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    // Progress bars (redrawn with \r) may precede the message on their own line.
    const lines = r.stderr.split("\n").filter((l) => l.trim() && !l.includes("\r"));
    assert.equal(lines.length, 1, `${args.join(" ")}: one line, got ${r.stderr}`);
    assert.match(lines[0], /^analyze: /);
    assert.match(lines[0], re);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
  }
});
