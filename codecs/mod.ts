/**
 * Codecs for the KV cache: the format table, the TypeScript reference codecs and the WebAssembly
 * SIMD codecs, all behind one {@linkcode Codec} interface. The byte-level spec is codecs/FORMAT.md.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { formatNames, tsCodec } from "./mod.ts";
 * const c = tsCodec("int8-g16-heads");
 * const x = Float32Array.from({ length: 32 }, (_, i) => Math.cos(i));
 * const y = new Float32Array(32);
 * c.decode(c.encode(x), y);
 * if (!formatNames().includes("fp8e4m3-g32-token")) throw new Error("registry");
 * if (Math.abs(y[3] - x[3]) > 0.01) throw new Error("round trip");
 * ```
 * @module
 */

export {
  type Codec,
  type CodecBackend,
  CodecBase,
  type EncodeOptions,
  type GroupHeader,
  type PackedBlock,
  readGroupHeader,
} from "./codec.ts";
export {
  BF16_MAX,
  F32_MAX,
  FORMAT_KIND_IDS,
  type FormatKind,
  formatNames,
  type FormatSpec,
  FP16_MAX,
  FP8E4M3_MAX,
  FP8E5M2_MAX,
  getFormat,
  GROUP_AXES,
  GROUP_SIZES,
  type GroupAxis,
  INT_BITS,
  wordsForLength,
} from "./format.ts";
export {
  bf16BitsToF32,
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  f32ToFp8Bits,
  fp8BitsToF32,
  type Fp8Kind,
} from "./float_bits.ts";
export { TsCodec, tsCodec } from "./ts_codec.ts";
export {
  loadWasmCodecs,
  loadWasmCodecsSync,
  useWasmModule,
  wasmBytes,
  WasmCodec,
  wasmCodec,
  WasmCodecs,
  wasmExportNames,
  type WasmKernels,
  wasmModuleSync,
  type WasmVariant,
  wasmVariant,
} from "./wasm.ts";
export { WasmArena } from "./wasm_arena.ts";
