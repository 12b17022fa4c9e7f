// The kvprec WebAssembly module: one module, several source files. Kernels take byte pointers
// into linear memory that the host (codecs/wasm.ts) manages as a growable arena above heapBase().

export { attendPage, attendScratchBytes } from "./attention";
export { intQuery, intQueryBytes } from "./int_dot";
export { lastErrorKind } from "./errors";
export { clampInPlace, decodeInt, encodeInt, firstBadHeader } from "./int";
export {
  decodeFp8,
  decodeFp8Scaled,
  decodeHalf,
  decodeInt8s,
  encodeF32,
  encodeFp8,
  encodeFp8Scaled,
  encodeHalf,
  encodeInt8s,
} from "./float";

/** First free byte of linear memory: the host's arena starts here (16-byte aligned). */
export function heapBase(): usize {
  return (__heap_base + 15) & ~15;
}
