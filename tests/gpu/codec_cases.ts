// GPU quantize/dequantize against the WASM codecs (the CPU production path) for every format:
// decode and encode must be bit-identical (encode measured so on llvmpipe and on an H100 once
// _div_rn stopped trusting the GPU's division and fma; a code one step off is still reported
// apart from a wrong header, to tell a rounding slip from a layout bug).
import assert from "node:assert/strict";
import { formatNames, type FormatSpec, getFormat, wasmCodec } from "../../codecs/mod.ts";
import {
  bufferFrom,
  computeAndRead,
  gpuDecode,
  gpuEncode,
  WGSL_CODEC_HELPERS,
} from "../../gpu/mod.ts";
import { CorruptDataError } from "../../core/errors.ts";
import { normals, rng } from "../_fixtures.ts";
import { testGpu } from "./_gpu.ts";

/** Code i of group g (the LSB-first bit stream after the header). */
function codeAt(spec: FormatSpec, words: Uint32Array, g: number, i: number): number {
  const w0 = g * spec.wordsPerGroup + spec.headerWords;
  const pos = i * spec.bits, w = w0 + (pos >>> 5), off = pos & 31;
  let c = words[w] >>> off;
  if (off + spec.bits > 32) c |= words[w + 1] << (32 - off);
  return spec.bits === 32 ? c >>> 0 : c & (2 ** spec.bits - 1);
}

/** Inputs: centred and shifted normals at several scales, and a grid of exact ties. */
function inputs(spec: FormatSpec, seed: number): Float32Array {
  const next = rng(seed);
  const n = 4096;
  const x = normals(n, next);
  for (let i = 0; i < n; i++) {
    const block = Math.floor(i / 512);
    if (block === 1) x[i] = x[i] * 0.01 + 3;
    else if (block === 2) x[i] *= 100;
    else if (block === 3) x[i] = (Math.floor(next() * 64) - 32) / 4; // coarse grid: many ties
    // ranges of a few f32 subnormal steps, whose range / qmax underflows (FORMAT.md step 3)
    else if (block === 4) x[i] = next() < 0.3 ? 0 : Math.floor(next() * 64) * 2 ** -149;
  }
  return spec.kind === "fp8e4m3" && !spec.scaled
    ? x.map((v) => Math.max(-400, Math.min(400, v)))
    : x;
}

Deno.test("gpuDecode() is bit-identical to the WASM decode for every format", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const names = formatNames();
  for (const [k, name] of names.entries()) {
    const spec = getFormat(name);
    const x = inputs(spec, 10 + k);
    const codec = wasmCodec(name);
    const words = codec.encode(x).words;
    const want = new Float32Array(x.length);
    codec.decodeWords(words, x.length, want);
    const got = await gpuDecode(env.gpu, env.pipelines, spec, words, x.length);
    const a = new Uint32Array(want.buffer), b = new Uint32Array(got.buffer);
    for (let i = 0; i < a.length; i++) {
      if (a[i] !== b[i]) {
        assert.fail(`${name}[${i}]: GPU ${got[i]} (0x${b[i].toString(16)}) vs WASM ${want[i]}`);
      }
    }
  }
  assert.ok(names.length > 100, `${names.length} formats`);
});

Deno.test("gpuEncode() is bit-identical to the WASM encode for every format", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  let codes = 0, slips = 0;
  const where = new Map<string, number>();
  for (const [k, name] of formatNames().entries()) {
    const spec = getFormat(name);
    const x = inputs(spec, 500 + k);
    const want = wasmCodec(name).encode(x).words;
    const got = await gpuEncode(env.gpu, env.pipelines, spec, x);
    assert.equal(got.length, want.length);
    const groups = x.length / spec.group;
    for (let g = 0; g < groups; g++) {
      for (let h = 0; h < spec.headerWords; h++) {
        const w = g * spec.wordsPerGroup + h;
        assert.equal(
          got[w],
          want[w],
          `${name} group ${g}: header 0x${got[w].toString(16)} vs 0x${want[w].toString(16)}`,
        );
      }
      for (let i = 0; i < spec.group; i++) {
        const a = codeAt(spec, got, g, i), b = codeAt(spec, want, g, i);
        codes++;
        if (a !== b) {
          slips++;
          where.set(name, (where.get(name) ?? 0) + 1);
          // a rounding slip moves an integer code or a float's last mantissa bit by one step
          assert.ok(
            Math.abs(a - b) === 1,
            `${name} element ${g * spec.group + i}: code ${a} vs ${b}`,
          );
        }
      }
    }
  }
  console.log(`encode cross-check: ${codes} codes over ${formatNames().length} formats`);
  assert.equal(slips, 0, `codes one step off: ${JSON.stringify(Object.fromEntries(where))}`);
});

Deno.test("gpuEncode() writes +0 for a group's −0 extreme, as the WASM encode does", async () => {
  // FORMAT.md step 1 takes lo + 0 and hi + 0; the WGSL kept −0, and its minimum's fp16 bits
  // were 0x8000 where TS and WASM write 0: the same values, different page words
  const env = await testGpu();
  if (env === undefined) return;
  const next = rng(61);
  for (const name of formatNames()) {
    const spec = getFormat(name);
    if (spec.kind === "fp32") continue;
    const G = spec.group;
    // a group whose minimum is −0, one whose maximum is −0, one of −0 only, one of ±0
    const x = new Float32Array(4 * G);
    for (let i = 0; i < G; i++) x[i] = i === 0 ? -0 : next();
    for (let i = 0; i < G; i++) x[G + i] = i === 0 ? -0 : -next();
    x.fill(-0, 2 * G, 3 * G);
    for (let i = 0; i < G; i++) x[3 * G + i] = i % 2 ? -0 : 0;
    const want = wasmCodec(name).encode(x).words;
    const got = await gpuEncode(env.gpu, env.pipelines, spec, x);
    const i = got.findIndex((w, k) => w !== want[k]);
    assert.equal(
      i,
      -1,
      `${name} word ${i}: 0x${got[i]?.toString(16)} vs 0x${want[i]?.toString(16)}`,
    );
  }
});

Deno.test("gpuDecode() names a group header no encoder writes, as the WASM decoder does", async () => {
  // the kernel decoded it: an infinite scale or NaN minimum came back as Infinity and NaN
  const env = await testGpu();
  if (env === undefined) return;
  for (
    const [name, bad] of [
      ["int8-g8-token", 0x7c00],
      ["int4-g32-token", 0x7e00_3c00],
      ["int8s-g16-token", 0x7e00],
      ["fp8e4m3-g8-token", 0xbc00],
    ] as const
  ) {
    const spec = getFormat(name);
    const words = wasmCodec(name).encode(normals(4 * spec.group, rng(5))).words;
    words[2 * spec.wordsPerGroup] = bad;
    let message = "";
    assert.throws(
      () => wasmCodec(name).decodeWords(words, 4 * spec.group, new Float32Array(4 * spec.group)),
      (e: Error) => {
        message = e.message;
        return true;
      },
    );
    await assert.rejects(
      () => gpuDecode(env.gpu, env.pipelines, spec, words, 4 * spec.group),
      (e: Error) =>
        e instanceof CorruptDataError && e.message === message && /group 2/.test(message),
      name,
    );
  }
});

Deno.test("gpuEncode() rejects non-finite input and bad lengths with typed errors", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  const spec = getFormat("int4-g32-token");
  await assert.rejects(
    () => gpuEncode(env.gpu, env.pipelines, spec, new Float32Array(33)),
    { name: "ShapeError" },
  );
  const x = normals(64, rng(3));
  x[40] = NaN;
  await assert.rejects(
    () => gpuEncode(env.gpu, env.pipelines, spec, x),
    (e: Error & { index?: number }) => {
      return e.name === "InvalidValueError" && e.index === 40;
    },
  );
  await assert.rejects(
    () => gpuDecode(env.gpu, env.pipelines, spec, new Uint32Array(4), 32),
    { name: "ShapeError" },
  );
  // values a header or code cannot hold: refused as the codecs refuse them (they once came back as
  // Inf or NaN words)
  for (
    const [name, value] of [["int8-g32-token", -1e6], ["fp16", 1e5], ["int8s-g32-token", 1e10]]
  ) {
    const y = normals(64, rng(4));
    y[5] = value as number;
    const f = getFormat(name as string);
    assert.throws(() => wasmCodec(f.name).encode(y), { name: "InvalidValueError" }, f.name);
    await assert.rejects(
      () => gpuEncode(env.gpu, env.pipelines, f, y),
      (e: Error & { index?: number }) =>
        e.name === "InvalidValueError" && e.index === 5 && new RegExp(f.name).test(e.message),
      f.name,
    );
  }
});

Deno.test("_div_rn rounds every quotient an encoder takes to nearest, as f32 division does", async () => {
  const env = await testGpu();
  if (env === undefined) return;
  // the encoders divide a group's range by qmax, max|x| by the format's largest value, and 1 by
  // an fp16 scale; exact quotients (an fp16 value times qmax) are the cases an approximate GPU
  // division gets wrong by one ulp, which then moves the fp16 scale rounded up from it
  const divisors = [3, 7, 15, 31, 63, 127, 255, 448, 57344];
  const next = rng(77);
  const a: number[] = [], b: number[] = [];
  for (let i = 0; i < 1 << 14; i++) {
    const d = divisors[i % divisors.length];
    const kind = (i >> 4) % 3;
    const h = new Float16Array([2 ** (next() * 30 - 15) * (1 + next())])[0];
    if (kind === 0) a.push(Math.fround(h * d)); // exact quotient h
    else if (kind === 1) a.push(Math.fround(2 ** (next() * 40 - 20) * next()));
    else a.push(1);
    b.push(kind === 2 ? h : d);
  }
  const A = new Float32Array(a), B = new Float32Array(b);
  const device = env.gpu.device, S = GPUBufferUsage.STORAGE;
  const pipeline = await env.pipelines.get({
    shaderKey: "test:div_rn",
    workgroupSize: 64,
    source: () =>
      `${WGSL_CODEC_HELPERS}
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  if (id.x < arrayLength(&q)) { q[id.x] = _div_rn(a[id.x], b[id.x]); }
}`,
  });
  const out = device.createBuffer({ size: A.byteLength, usage: S | GPUBufferUsage.COPY_SRC });
  const got = new Float32Array(
    await computeAndRead(
      env.gpu,
      pipeline,
      [
        { buffer: bufferFrom(device, A, S, "a") },
        { buffer: bufferFrom(device, B, S, "b") },
        { buffer: out },
      ],
      A.length,
      64,
      out,
      A.byteLength,
    ),
  );
  for (let i = 0; i < A.length; i++) {
    const want = Math.fround(A[i] / B[i]);
    assert.equal(got[i], want, `_div_rn(${A[i]}, ${B[i]}) = ${got[i]}, f32 division ${want}`);
  }
});
