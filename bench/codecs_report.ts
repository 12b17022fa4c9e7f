/**
 * Prints the codec throughput table: GB/s of f32 (input for encode, output for decode) for the
 * TS and WASM paths on 16 MiB of f32 through the Codec interface (one copy into and one out of
 * WASM memory), the WASM/TS ratio measured in the same run, WasmCodec.decodeView (no copy out)
 * with its ratio, and the WASM kernel alone (data already in WASM memory), with bits per element.
 * Times are the fastest of several runs (the least disturbed by other load on a shared machine).
 *
 *     deno run -A bench/codecs_report.ts
 *
 * @module
 */

import { getFormat } from "../codecs/format.ts";
import { tsCodec } from "../codecs/ts_codec.ts";
import { loadWasmCodecsSync, wasmCodec } from "../codecs/wasm.ts";
import { BENCH_FORMATS, BENCH_LENGTH, benchInput, checkAgreement } from "./_codecs_cases.ts";
import { reportFlags } from "./report_flags.ts";

// no flags but --help (it once ran the report for any flag)
reportFlags("codecs_report", "deno run -A bench/codecs_report.ts (no flags)", []);

/** Fastest of `reps` runs of fn after one warm-up (the least disturbed by other load). */
function timeIt(fn: () => void, reps: number): number {
  fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    t.push((performance.now() - t0) / 1000);
  }
  t.sort((a, b) => a - b);
  return t[0];
}

const x = benchInput();
const y = new Float32Array(x.length);
const bytes = BENCH_LENGTH * 4;
const gbs = (s: number) => bytes / s / 1e9;
const mod = loadWasmCodecsSync();
const k = mod.kernels;

const rows: string[][] = [];
for (const name of BENCH_FORMATS) {
  const spec = getFormat(name);
  const words = checkAgreement(name, x);
  const out = new Uint32Array(words.length);
  const ts = tsCodec(name), wasm = wasmCodec(name);
  // kernel only: input and output already in WASM memory
  const kernel = (op: "encode" | "decode") => {
    const nw = words.length, n = x.length;
    const [src, dst] = op === "encode"
      ? mod.arena.layout(4 * n, 4 * nw)
      : mod.arena.layout(4 * nw, 4 * n);
    if (op === "encode") mod.arena.f32(src, n).set(x);
    else mod.arena.u32(src, nw).set(words);
    const run = spec.kind === "int"
      ? op === "encode"
        ? () => k.encodeInt(src, dst, n, spec.bits, spec.group)
        : () => k.decodeInt(src, dst, n, spec.bits, spec.group)
      : op === "encode"
      ? () => k.encodeHalf(src, dst, n, 0)
      : () => k.decodeHalf(src, dst, n, 0);
    return timeIt(run, 15);
  };
  for (const op of ["encode", "decode"] as const) {
    const tTs = timeIt(
      op === "encode" ? () => ts.encodeInto(x, out) : () => ts.decodeWords(words, x.length, y),
      3,
    );
    const tW = timeIt(
      op === "encode" ? () => wasm.encodeInto(x, out) : () => wasm.decodeWords(words, x.length, y),
      15,
    );
    const tK = kernel(op);
    const tV = op === "decode" ? timeIt(() => wasm.decodeView(words, x.length), 15) : NaN;
    rows.push([
      name,
      String(spec.bitsPerElement),
      op,
      gbs(tTs).toFixed(2),
      gbs(tW).toFixed(2),
      (tTs / tW).toFixed(1) + "×",
      op === "decode" ? gbs(tV).toFixed(2) : "",
      op === "decode" ? (tTs / tV).toFixed(1) + "×" : "",
      gbs(tK).toFixed(2),
    ]);
  }
}

const head = [
  "format",
  "bits/elem",
  "op",
  "TS GB/s",
  "WASM GB/s",
  "WASM/TS",
  "WASM view GB/s",
  "view/TS",
  "WASM kernel GB/s",
];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r: string[]) => "| " + r.map((c, i) => c.padEnd(widths[i])).join(" | ") + " |";
console.log(`codec throughput, 16 MiB of f32 (${BENCH_LENGTH} elements), GB/s of f32, one core`);
console.log(line(head));
console.log("| " + widths.map((w) => "-".repeat(w)).join(" | ") + " |");
for (const r of rows) console.log(line(r));

// What the core itself moves, for reading the table: 16 MiB copied within WASM memory, and copied
// out of it into a JS array in the 64 KiB pieces decodeWords uses (its copy-out). decodeWords pays
// the kernel and that copy-out one after the other, so its GB/s is at most 1/(1/kernel + 1/copy-out).
const [a, b] = mod.arena.layout(bytes, bytes);
const wa = mod.arena.f32(a, BENCH_LENGTH), wb = mod.arena.f32(b, BENCH_LENGTH);
wa.set(x);
const tCopy = timeIt(() => wb.set(wa), 15);
const stage = mod.arena.f32(a, 16384);
const tOut = timeIt(() => {
  for (let off = 0; off < BENCH_LENGTH; off += 16384) y.set(stage, off);
}, 15);
console.log(
  `\nthis core, 16 MiB: memcpy in WASM memory ${gbs(tCopy).toFixed(1)} GB/s; copy-out to a JS ` +
    `array in 64 KiB pieces ${gbs(tOut).toFixed(1)} GB/s`,
);
const i4 = rows.find((r) => r[0] === "int4-g32-token" && r[2] === "decode")!;
const tsGbs = Number(i4[3]), need = 8 * tsGbs, copyOut = gbs(tOut);
console.log(
  `int4 decode, target ≥ 8× TS = ${need.toFixed(1)} GB/s: decodeWords ${i4[4]}, decodeView ` +
    `${i4[6]}, kernel alone ${i4[8]}; ` +
    (copyOut > need
      ? `through decodeWords the kernel would need ${
        (1 / (1 / need - 1 / copyOut)).toFixed(1)
      } GB/s to reach it`
      : `decodeWords cannot reach it: its copy-out alone runs at ${copyOut.toFixed(1)} GB/s`),
);
