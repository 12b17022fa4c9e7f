/**
 * Encode and decode throughput of the TS and WASM codecs on 16 MiB of f32 (`deno task bench`).
 * Each group's baseline is the TS path, so Deno prints the WASM/TS ratio measured in the same
 * run; bench/codecs_report.ts prints the same measurements as GB/s of f32 with ratios.
 * Correctness (TS and WASM bit-identical) is checked before anything is timed.
 *
 * @module
 */

import { tsCodec } from "../codecs/ts_codec.ts";
import { wasmCodec } from "../codecs/wasm.ts";
import { BENCH_FORMATS, benchInput, checkAgreement } from "./_codecs_cases.ts";

const x = benchInput();
const y = new Float32Array(x.length);

for (const name of BENCH_FORMATS) {
  const words = checkAgreement(name, x);
  const out = new Uint32Array(words.length);
  for (const [backend, codec] of [["ts", tsCodec(name)], ["wasm", wasmCodec(name)]] as const) {
    Deno.bench({
      name: `${name} encode ${backend} (16 MiB f32)`,
      group: `${name} encode`,
      baseline: backend === "ts",
      n: backend === "ts" ? 3 : 20,
      fn: () => codec.encodeInto(x, out),
    });
    Deno.bench({
      name: `${name} decode ${backend} (16 MiB f32)`,
      group: `${name} decode`,
      baseline: backend === "ts",
      n: backend === "ts" ? 3 : 20,
      fn: () => codec.decodeWords(words, x.length, y),
    });
  }
}
