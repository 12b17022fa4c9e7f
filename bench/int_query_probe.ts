/**
 * Probe for the next attention kernel (core/cache/PAGES.md, "The way under FP32"): K-side scores
 * of 4 query heads over T cached keys, d = 128, timed in one run for FP32 keys, INT4 keys decoded
 * exactly (as attention.ts does today) and INT4 keys with the query rounded to i16 (integer dot
 * products). Prints the times, their ratios to FP32 and each one's largest error against an f64
 * reference, relative to the largest score. The kernels live in asm/probes/int_query.ts; nothing
 * here is library code.
 *
 *     deno run -A bench/int_query_probe.ts [--T 512,4096,32768]
 *
 * @module
 */

import { compileWasm } from "../asm/build.ts";
import { mulberry32 } from "../core/mulberry32.ts";

interface ProbeKernels {
  memory: WebAssembly.Memory;
  scoreF32(q: number, k: number, T: number, d: number, out: number, stride: number): void;
  scoreInt4Exact(q: number, p: number, T: number, d: number, out: number, row: number): void;
  scoreInt4IntQ(
    qi: number,
    qv: number,
    sig: number,
    p: number,
    T: number,
    d: number,
    out: number,
  ): void;
}

const i = Deno.args.indexOf("--T");
const TS = (i >= 0 ? Deno.args[i + 1] : "512,4096,32768").split(",").map(Number);
const D = 128, HEADS = 4, GROUP = 32, GROUP_BYTES = 24;

const wasm = await compileWasm("asm/probes/int_query.ts");
const instance = new WebAssembly.Instance(new WebAssembly.Module(wasm as BufferSource), {
  env: { abort() {} },
});
const k = instance.exports as unknown as ProbeKernels;

const rand = mulberry32(2026);

/** Fastest of 30 runs after warm-up, ms. */
function best(f: () => void): number {
  for (let r = 0; r < 5; r++) f();
  let b = Infinity;
  for (let r = 0; r < 30; r++) {
    const t0 = performance.now();
    f();
    b = Math.min(b, performance.now() - t0);
  }
  return b;
}

// lane order of the i16 query within a group: the low nibbles of code bytes 0..7 (elements
// 0, 2, …, 14), of bytes 8..15 (16, …, 30), then the high nibbles (1, …, 15), (17, …, 31)
const LANE_ELEMENT = [0, 16, 1, 17].flatMap((start) =>
  Array.from({ length: 8 }, (_, j) => start + 2 * j)
);

for (const T of TS) {
  const groups = D / GROUP;
  const sizes = [HEADS * D * 4, T * D * 4, T * groups * GROUP_BYTES, 3 * HEADS * T * 4, 2 * D * 4];
  const total = sizes.reduce((a, b) => a + b, 0) + HEADS * D * 2 + HEADS * 16 + 16 + 1024;
  const have = k.memory.buffer.byteLength;
  if (have < total + 65536) k.memory.grow(Math.ceil((total + 65536 - have) / 65536));
  let at = 65536;
  const alloc = (bytes: number) => {
    const p = at;
    at += (bytes + 15) & ~15;
    return p;
  };
  const qP = alloc(HEADS * D * 4), kP = alloc(T * D * 4), pP = alloc(T * groups * GROUP_BYTES);
  const outs = [alloc(HEADS * T * 4), alloc(HEADS * T * 4), alloc(HEADS * T * 4)];
  const row = alloc(2 * D * 4), qiP = alloc(HEADS * D * 2), qvP = alloc(HEADS * 16);
  const sigP = alloc(16);
  const buf = k.memory.buffer, view = new DataView(buf);
  const q = new Float32Array(buf, qP, HEADS * D), keys = new Float32Array(buf, kP, T * D);
  for (let j = 0; j < q.length; j++) q[j] = 2 * rand() - 1;
  for (let t = 0; t < T; t++) {
    for (let g = 0; g < groups; g++) {
      const gp = pP + (t * groups + g) * GROUP_BYTES;
      const s = Math.fround(0.01 + 0.1 * rand()), m = Math.fround(-rand());
      view.setFloat32(gp, s, true);
      view.setFloat32(gp + 4, m, true);
      for (let b = 0; b < 16; b++) {
        const c0 = Math.floor(16 * rand()), c1 = Math.floor(16 * rand());
        view.setUint8(gp + 8 + b, c0 | (c1 << 4));
        const e = t * D + g * GROUP + 2 * b;
        keys[e] = Math.fround(Math.fround(c0 * s) + m);
        keys[e + 1] = Math.fround(Math.fround(c1 * s) + m);
      }
    }
  }
  const qi = new Int16Array(buf, qiP, HEADS * D), qv = new Float32Array(buf, qvP, HEADS * 4);
  const sig = new Float32Array(buf, sigP, HEADS);
  for (let h = 0; h < HEADS; h++) {
    let max = 0;
    for (let j = 0; j < D; j++) max = Math.max(max, Math.abs(q[h * D + j]));
    sig[h] = Math.fround(max / 32767);
    for (let g = 0; g < groups; g++) {
      let sum = 0;
      for (let j = 0; j < GROUP; j++) sum += q[h * D + g * GROUP + j];
      qv[h * 4 + g] = sum / sig[h];
      LANE_ELEMENT.forEach((el, lane) => {
        qi[h * D + g * GROUP + lane] = Math.round(q[h * D + g * GROUP + el] / sig[h]);
      });
    }
  }
  const runs = [
    () => k.scoreF32(qP, kP, T, D, outs[0], T),
    () => k.scoreInt4Exact(qP, pP, T, D, outs[1], row),
    () => k.scoreInt4IntQ(qiP, qvP, sigP, pP, T, D, outs[2]),
  ];
  runs.forEach(best); // every kernel compiled and warm before any is timed
  const ms = runs.map(best);
  const errs = outs.map(() => 0);
  let mag = 0;
  for (let h = 0; h < HEADS; h++) {
    for (let t = 0; t < T; t++) {
      let ref = 0;
      for (let j = 0; j < D; j++) ref += q[h * D + j] * keys[t * D + j];
      mag = Math.max(mag, Math.abs(ref));
      outs.forEach((o, n) => {
        const got = new Float32Array(buf, o, HEADS * T)[h * T + t];
        errs[n] = Math.max(errs[n], Math.abs(got - ref));
      });
    }
  }
  const names = ["fp32", "int4 exact decode", "int4, i16 query"];
  console.log(`T=${T}, d=${D}, ${HEADS} query heads, K-side scores:`);
  names.forEach((n, j) =>
    console.log(
      `  ${n.padEnd(18)} ${ms[j].toFixed(3).padStart(8)} ms  ${(ms[j] / ms[0]).toFixed(2)}× fp32` +
        `  max err / max|score| ${(errs[j] / mag).toExponential(1)}`,
    )
  );
}
