/**
 * Shared setup of the codec benchmarks: the formats measured, a 16 MiB f32 input, and a
 * correctness check (TS and WASM encode to identical words and decode to identical floats) that
 * runs before anything is timed.
 *
 * @module
 */

import { tsCodec } from "../codecs/ts_codec.ts";
import { wasmCodec } from "../codecs/wasm.ts";
import { mulberry32 } from "../core/mulberry32.ts";

/** Formats whose throughput the acceptance criteria name. */
export const BENCH_FORMATS = ["int2-g32-token", "int4-g32-token", "int8-g32-token", "fp16"];

/** Elements in 16 MiB of f32. */
export const BENCH_LENGTH = (16 << 20) / 4;

/**
 * A fresh normal-ish input (seeded), 16 MiB of f32.
 *
 * @param seed PRNG seed
 * @returns the input
 */
export function benchInput(seed = 1): Float32Array {
  const u = mulberry32(seed);
  const x = new Float32Array(BENCH_LENGTH);
  for (let i = 0; i < x.length; i++) x[i] = (u() + u() + u() - 1.5) * 2;
  return x;
}

/**
 * Throws unless TS and WASM agree bit for bit on `x` for format `name`.
 *
 * @param name format
 * @param x input
 * @returns the packed words
 */
export function checkAgreement(name: string, x: Float32Array): Uint32Array {
  const t = tsCodec(name), w = wasmCodec(name);
  const a = t.encode(x).words, b = w.encode(x).words;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) throw new Error(`${name}: TS and WASM encodings differ at word ${i}`);
  }
  const y1 = new Float32Array(x.length), y2 = new Float32Array(x.length);
  t.decodeWords(a, x.length, y1);
  w.decodeWords(a, x.length, y2);
  const u1 = new Uint32Array(y1.buffer), u2 = new Uint32Array(y2.buffer);
  for (let i = 0; i < u1.length; i++) {
    if (u1[i] !== u2[i]) throw new Error(`${name}: TS and WASM decodings differ at element ${i}`);
  }
  return a;
}
