/**
 * WGSL generated from the format table (codecs/format.ts): per-format element decoders and group
 * encoders, with every constant (group size, bits, words per group, qmax) read from the
 * {@linkcode FormatSpec}, so the GPU cannot drift from the TypeScript and WASM codecs. Kernels
 * paste the generated functions into their source; the format's name is part of their shader key.
 *
 * Bit-exactness notes (FORMAT.md): decoders build f32 bit patterns with integer operations or
 * exact products (q·s has ≤ 24 significant bits), so fused multiply-add cannot change them.
 * Encoders use pack2x16float/unpack2x16float for fp16 scales (no shader-f16 feature needed) with a
 * one-step correction that turns any faithful rounding into the directed rounding FORMAT.md asks
 * for, and correctly rounded division (`_div_rn`, exact without trusting WGSL's division or fma),
 * so encoding is bit-identical to the TS and WASM codecs (tested on llvmpipe and an H100).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { wgslDecoder } from "./wgsl_format.ts";
 * import { getFormat } from "../codecs/format.ts";
 * const src = wgslDecoder(getFormat("int4-g32-token"), "k_decode", "kwords");
 * if (!src.includes("fn k_decode(base: u32, e: u32) -> f32")) throw new Error("decoder emitted");
 * ```
 * @module
 */

import { FormatError } from "../core/errors.ts";
import { type FormatSpec, FP8E4M3_MAX, FP8E5M2_MAX } from "../codecs/format.ts";

/**
 * WGSL helpers shared by every generated codec function: fp16/fp8 bit conversions, directed fp16
 * rounding and correctly rounded division. Paste once per shader, before the generated functions.
 */
export const WGSL_CODEC_HELPERS = /* wgsl */ `
// f32 value of fp16 pattern h (exact; NaN payload kept): integer construction as in float_bits.ts
fn _f16_bits_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 31u;
  let m = h & 0x3ffu;
  if (e == 31u) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); }
  if (e != 0u) { return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u)); }
  return bitcast<f32>(sign | bitcast<u32>(f32(m) * 5.9604644775390625e-8));
}
fn _fp8e4m3_to_f32(c: u32) -> f32 {
  let sign = (c & 0x80u) << 24u;
  if ((c & 0x7fu) == 0x7fu) { return bitcast<f32>(sign | 0x7fc00000u); }
  let e = (c >> 3u) & 15u;
  let m = c & 7u;
  if (e == 0u) { return bitcast<f32>(sign | bitcast<u32>(f32(m) * 0.001953125)); }
  return bitcast<f32>(sign | ((e + 120u) << 23u) | (m << 20u));
}
fn _fp8e5m2_to_f32(c: u32) -> f32 { return _f16_bits_to_f32(c << 8u); }
// fp16 scale from the low half of a header word; unpack2x16float is exact for finite scales
fn _scale_lo(h: u32) -> f32 { return unpack2x16float(h).x; }
// fp16 bits of v rounded to nearest by pack2x16float
fn _f16_near(v: f32) -> u32 { return pack2x16float(vec2<f32>(v, 0.0)) & 0xffffu; }
// largest fp16 <= v: step one fp16 toward -inf when the nearest rounding went up
fn _f16_down(v: f32) -> u32 {
  let h = _f16_near(v);
  if (unpack2x16float(h).x <= v) { return h; }
  if (h == 0u) { return 0x8001u; }
  return select(h - 1u, h + 1u, (h & 0x8000u) != 0u);
}
// smallest fp16 >= v
fn _f16_up(v: f32) -> u32 {
  let h = _f16_near(v);
  if (unpack2x16float(h).x >= v) { return h; }
  if (h == 0x8000u) { return 1u; }
  return select(h + 1u, h - 1u, (h & 0x8000u) != 0u);
}
// a / b rounded to nearest for a >= 0 and b > 0 with at most 11 significant bits (qmax, fp8
// maxima, fp16 scales). WGSL lets a / b be 2.5 ulp off (an H100 returned (hi − m) / 7 one ulp high
// where the quotient is an exact fp16 value) and lets fma be unfused (llvmpipe), so the candidate
// c is moved to whichever side of the midpoints c ± ulp/2 the quotient lies, decided exactly: with
// c = ch + cl (ch its top 12 bits), ch·b and (cl ± ulp/2)·b carry ≤ 24 bits and a − ch·b is exact
// (Sterbenz), so a > (c + ulp/2)·b ⇔ a − ch·b > (cl + ulp/2)·b holds in f32. No exact ties exist:
// a midpoint has 25 significant bits. Quotients below 2^−100 (near flushed subnormals) stay as
// the division gave them.
fn _div_rn(a: f32, b: f32) -> f32 {
  var c = a / b;
  if (!(c >= 7.888609e-31) || c > 1.0e37) { return c; }
  for (var i = 0u; i < 4u; i = i + 1u) {
    let u = bitcast<u32>(c);
    let ch = bitcast<f32>(u & 0xfffff000u);
    let t = a - ch * b;
    let cl = c - ch;
    if (t > (cl + 0.5 * (bitcast<f32>(u + 1u) - c)) * b) {
      c = bitcast<f32>(u + 1u);
    } else if (t < (cl - 0.5 * (c - bitcast<f32>(u - 1u))) * b) {
      c = bitcast<f32>(u - 1u);
    } else {
      break;
    }
  }
  return c;
}
// magnitude a (f32 bits, sign clear, finite) rounded to a float with the given bias and mantissa
// bits, ties to even, no overflow handling (float_bits.ts _roundMagnitude)
fn _round_magnitude(a: u32, bias: u32, man: u32) -> u32 {
  if (a < ((128u - bias) << 23u)) {
    let magic_bits = (151u - bias - man) << 23u;
    return bitcast<u32>(bitcast<f32>(a) + bitcast<f32>(magic_bits)) - magic_bits;
  }
  let shift = 23u - man;
  let odd = (a >> shift) & 1u;
  return (a + ((bias - 127u) << 23u) + ((1u << (shift - 1u)) - 1u) + odd) >> shift;
}
fn _f32_to_bf16(v: f32) -> u32 {
  let bits = bitcast<u32>(v);
  return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}
fn _f32_to_fp8e4m3(v: f32) -> u32 {
  let bits = bitcast<u32>(v);
  let sign = (bits >> 24u) & 0x80u;
  let c = _round_magnitude(bits & 0x7fffffffu, 7u, 3u);
  return sign | min(c, 0x7eu);
}
fn _f32_to_fp8e5m2(v: f32) -> u32 {
  let bits = bitcast<u32>(v);
  let sign = (bits >> 24u) & 0x80u;
  let c = _round_magnitude(bits & 0x7fffffffu, 15u, 2u);
  return sign | min(c, 0x7cu);
}
// min/max with -0 below +0, as the reference's Math.min/Math.max
fn _lt(a: f32, b: f32) -> bool {
  return a < b || (a == b && (bitcast<u32>(a) & 0x80000000u) > (bitcast<u32>(b) & 0x80000000u));
}
`;

/**
 * The part of a format's identity that its WGSL depends on (kind, bits, group, header): formats
 * that differ only in their axis share generated code and therefore pipelines.
 *
 * @param spec the format
 * @returns a short key, e.g. `int4g32h`
 */
export function formatShaderKey(spec: FormatSpec): string {
  return `${spec.kind}${spec.kind === "int" ? spec.bits : ""}g${spec.group}${
    spec.scaled ? "h" : ""
  }`;
}

function _u(n: number): string {
  return `${n >>> 0}u`;
}

/**
 * Throws {@linkcode FormatError} unless a format can be stored in per-head pages on the GPU.
 * @param spec the format
 */
export function checkGpuFormat(spec: FormatSpec): void {
  if (spec.axis === "heads") {
    throw new FormatError(
      `format ${spec.name} groups across KV heads; the GPU cache stores per-head pages`,
    );
  }
}

/**
 * WGSL function `fn <name>(base: u32, e: u32) -> f32` returning element `e` of an array encoded in
 * `spec` starting at word `base` of the u32 storage array `arrayName`.
 *
 * @param spec the format
 * @param name the function's name
 * @param arrayName the storage array (array<u32>) holding the words
 * @returns WGSL source of the function
 */
export function wgslDecoder(spec: FormatSpec, name: string, arrayName: string): string {
  const A = arrayName;
  if (spec.kind === "fp32") {
    return `fn ${name}(base: u32, e: u32) -> f32 { return bitcast<f32>(${A}[base + e]); }\n`;
  }
  const G = spec.group, B = spec.bits, hdr = spec.headerWords;
  const straddle = 32 % B !== 0;
  const mask = B === 32 ? "" : `c = c & ${_u(2 ** B - 1)};`;
  let value: string;
  switch (spec.kind) {
    case "int":
      value = `let h = unpack2x16float(${A}[w0]); return f32(c) * h.x + h.y;`;
      break;
    case "int8s":
      value = `return f32(bitcast<i32>(c << 24u) >> 24u) * _scale_lo(${A}[w0]);`;
      break;
    case "fp16":
      value = `return _f16_bits_to_f32(c);`;
      break;
    case "bf16":
      value = `return bitcast<f32>(c << 16u);`;
      break;
    case "fp8e4m3":
    case "fp8e5m2": {
      const f = `_${spec.kind}_to_f32(c)`;
      value = spec.scaled ? `return ${f} * _scale_lo(${A}[w0]);` : `return ${f};`;
      break;
    }
  }
  return `fn ${name}(base: u32, e: u32) -> f32 {
  let g = e / ${_u(G)};
  let i = e - g * ${_u(G)};
  let w0 = base + g * ${_u(spec.wordsPerGroup)};
  let pos = i * ${_u(B)};
  let w = w0 + ${_u(hdr)} + (pos >> 5u);
  let off = pos & 31u;
  var c = ${A}[w] >> off;
  ${straddle ? `if (off + ${_u(B)} > 32u) { c = c | (${A}[w + 1u] << (32u - off)); }` : ""}
  ${mask}
  ${value}
}
`;
}

/**
 * WGSL function `fn <name>(first: u32, stride: u32, out: u32)` encoding one group: its elements are
 * `load(first + i·stride)` (f32 values), its `wordsPerGroup` words go to `dstArray[out..]`
 * (array<u32>), every word written (padding bits zero). Follows FORMAT.md's encoder step by step.
 *
 * @param spec the format
 * @param name the function's name
 * @param load the WGSL expression of source element `index` (e.g. an array<f32> read)
 * @param dstArray the u32 storage array written
 * @returns WGSL source of the function
 */
export function wgslGroupEncoder(
  spec: FormatSpec,
  name: string,
  load: (index: string) => string,
  dstArray: string,
): string {
  const D = dstArray, G = spec.group, B = spec.bits, hdr = spec.headerWords;
  const x = load("first + i * stride");
  if (spec.kind === "fp32") {
    return `fn ${name}(first: u32, stride: u32, out: u32) { ${D}[out] = bitcast<u32>(${
      load("first")
    }); }\n`;
  }
  let header = "";
  let code: string;
  switch (spec.kind) {
    case "int":
      // m = fp16 down(lo), s = fp16 up(f32(hi − m) / qmax), q = rne(f32(x − m) · f32(1/s))
      header = `
  var lo = ${load("first")};
  var hi = lo;
  for (var i = 1u; i < ${_u(G)}; i = i + 1u) {
    let v = ${x};
    if (_lt(v, lo)) { lo = v; }
    if (_lt(hi, v)) { hi = v; }
  }
  // FORMAT.md step 1, lo + 0 and hi + 0: a −0 extreme becomes +0 (by its bits, which no compiler
  // folds away as it may fold an addition of 0)
  lo = bitcast<f32>(select(bitcast<u32>(lo), 0u, bitcast<u32>(lo) == 0x80000000u));
  hi = bitcast<f32>(select(bitcast<u32>(hi), 0u, bitcast<u32>(hi) == 0x80000000u));
  let mb = _f16_down(lo);
  let m = unpack2x16float(mb).x;
  let sb = max(_f16_up(_div_rn(hi - m, ${spec.qmax}.0)), select(0u, 1u, m < hi));
  let s = unpack2x16float(sb).x;
  let inv = select(_div_rn(1.0, s), 0.0, s == 0.0);
  ${D}[out] = sb | (mb << 16u);`;
      code = `u32(min(round((${x} - m) * inv), ${spec.qmax}.0))`;
      break;
    case "int8s":
      header = _amaxHeader(D, G, x, 127);
      code = `bitcast<u32>(i32(clamp(round(${x} * inv), -127.0, 127.0))) & 0xffu`;
      break;
    case "fp16":
      code = `_f16_near(${x})`;
      break;
    case "bf16":
      code = `_f32_to_bf16(${x})`;
      break;
    case "fp8e4m3":
    case "fp8e5m2": {
      if (spec.scaled) {
        header = _amaxHeader(D, G, x, spec.kind === "fp8e4m3" ? FP8E4M3_MAX : FP8E5M2_MAX);
        code = `_f32_to_${spec.kind}(${x} * inv)`;
      } else {
        code = `_f32_to_${spec.kind}(${x})`;
      }
      break;
    }
  }
  // codes form one LSB-first bit stream over the code words; a code may straddle two words
  return `fn ${name}(first: u32, stride: u32, out: u32) {${header}
  var acc = 0u;
  var wi = 0u;
  for (var i = 0u; i < ${_u(G)}; i = i + 1u) {
    let q = ${code};
    let pos = i * ${_u(B)};
    let w = pos >> 5u;
    let off = pos & 31u;
    if (w != wi) { ${D}[out + ${_u(hdr)} + wi] = acc; acc = 0u; wi = w; }
    acc = acc | (q << off);
    if (off + ${_u(B)} > 32u) {
      ${D}[out + ${_u(hdr)} + wi] = acc;
      wi = wi + 1u;
      acc = q >> (32u - off);
    }
  }
  ${D}[out + ${_u(hdr)} + wi] = acc;
}
`;
}

// s = fp16 up(f32(max|x| / fmax)), inv = f32(1/s) (0 when s = 0); writes the header word
function _amaxHeader(D: string, G: number, x: string, fmax: number): string {
  return `
  var amax = 0.0;
  for (var i = 0u; i < ${_u(G)}; i = i + 1u) { amax = max(amax, abs(${x})); }
  let sb = max(_f16_up(_div_rn(amax, ${fmax}.0)), select(0u, 1u, amax > 0.0));
  let s = unpack2x16float(sb).x;
  let inv = select(_div_rn(1.0, s), 0.0, s == 0.0);
  ${D}[out] = sb;`;
}
