/**
 * The format table: one declarative {@linkcode FormatSpec} per storage format, read by the
 * TypeScript reference codecs, the AssemblyScript build and the WGSL generator, so that no back end
 * can drift from another. The byte-level layout is specified in codecs/FORMAT.md.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { getFormat } from "./format.ts";
 * const f = getFormat("int4-g32-token");
 * // one fp16 scale/min word + 4 code words per 32 elements: 4 + 32/32 bits per element
 * if (f.wordsPerGroup !== 5 || f.bitsPerElement !== 5) throw new Error("unexpected layout");
 * ```
 * @module
 */

import { FormatError, ShapeError, showValue } from "../core/errors.ts";

/**
 * How a format stores one element.
 *
 * - `int`: asymmetric integer group quantization (fp16 scale and minimum per group);
 * - `int8s`: symmetric int8, one fp16 scale per group;
 * - `fp16`, `bf16`, `fp32`: IEEE-style floats, no header;
 * - `fp8e4m3`, `fp8e5m2`: 8-bit floats, with a per-group fp16 scale when `scaled`.
 */
export type FormatKind = "int" | "int8s" | "fp16" | "bf16" | "fp32" | "fp8e4m3" | "fp8e5m2";

/**
 * Which elements a group gathers; layout metadata for the caller (the codec itself sees a flat
 * array where each `group` consecutive elements form one group).
 *
 * - `token`: along head_dim of one head of one token;
 * - `heads`: along the kv_dim of one token, across its KV heads (for small head_dim);
 * - `channel`: `group` consecutive tokens of one channel (the caller transposes);
 * - `none`: unscaled float formats, whose "group" is just the elements of one u32 word.
 */
export type GroupAxis = "token" | "heads" | "channel" | "none";

/** One storage format, with every constant a back end needs. */
export interface FormatSpec {
  /** Registry name, e.g. `int4-g32-token`, `fp16`, `fp8e4m3-g32-channel`. */
  readonly name: string;
  /** Element encoding. */
  readonly kind: FormatKind;
  /** Numeric id of `kind`, used by the WASM and WGSL back ends. */
  readonly kindId: number;
  /** Bits of one stored code. */
  readonly bits: number;
  /** Elements per group; an encoded length must be a multiple of it. */
  readonly group: number;
  /** What a group gathers (layout metadata). */
  readonly axis: GroupAxis;
  /** Whether each group carries a header word (scale, and minimum for `int`). */
  readonly scaled: boolean;
  /** Header words per group: 1 when `scaled`, else 0. */
  readonly headerWords: number;
  /** Code words per group: ceil(group·bits/32). */
  readonly codeWords: number;
  /** u32 words per group, header included. */
  readonly wordsPerGroup: number;
  /** Storage cost with all metadata counted: 32·wordsPerGroup/group. */
  readonly bitsPerElement: number;
  /** Largest integer code (`int`: 2^bits − 1; `int8s`: 127); 0 for float kinds. */
  readonly qmax: number;
  /**
   * Magnitude that `{clamp: true}` clamps inputs to (NaN becomes 0): 65504 for `int`, the format's
   * largest finite value for unscaled floats, 65504·fpmax for scaled fp8, 65504·127 for `int8s`.
   */
  readonly clampLimit: number;
}

/** Bit widths of the asymmetric integer formats. */
export const INT_BITS: readonly number[] = [2, 3, 4, 5, 6, 8];
/** Group sizes of the grouped formats. */
export const GROUP_SIZES: readonly number[] = [8, 16, 32, 64, 128];
/** Axes of the grouped formats. */
export const GROUP_AXES: readonly GroupAxis[] = ["token", "heads", "channel"];

/** Numeric ids of the kinds, shared with asm/ and gpu/. */
export const FORMAT_KIND_IDS: Readonly<Record<FormatKind, number>> = {
  int: 0,
  int8s: 1,
  fp16: 2,
  bf16: 3,
  fp32: 4,
  fp8e4m3: 5,
  fp8e5m2: 6,
};

/** Largest finite fp16 value. */
export const FP16_MAX = 65504;
/** Largest finite bf16 value, (2 − 2^−7)·2^127. */
export const BF16_MAX = 3.3895313892515355e38;
/** Largest finite f32 value. */
export const F32_MAX = 3.4028234663852886e38;
/** Largest finite fp8 e4m3 value (OCP: S.1111.110). */
export const FP8E4M3_MAX = 448;
/** Largest finite fp8 e5m2 value (S.11110.11). */
export const FP8E5M2_MAX = 57344;

function _spec(
  name: string,
  kind: FormatKind,
  bits: number,
  group: number,
  axis: GroupAxis,
  scaled: boolean,
  qmax: number,
  clampLimit: number,
): FormatSpec {
  const headerWords = scaled ? 1 : 0;
  const codeWords = Math.ceil(group * bits / 32);
  const wordsPerGroup = headerWords + codeWords;
  return Object.freeze({
    name,
    kind,
    kindId: FORMAT_KIND_IDS[kind],
    bits,
    group,
    axis,
    scaled,
    headerWords,
    codeWords,
    wordsPerGroup,
    bitsPerElement: 32 * wordsPerGroup / group,
    qmax,
    clampLimit,
  });
}

function _buildTable(): Map<string, FormatSpec> {
  const t = new Map<string, FormatSpec>();
  const add = (s: FormatSpec) => t.set(s.name, s);
  add(_spec("fp32", "fp32", 32, 1, "none", false, 0, F32_MAX));
  add(_spec("fp16", "fp16", 16, 2, "none", false, 0, FP16_MAX));
  add(_spec("bf16", "bf16", 16, 2, "none", false, 0, BF16_MAX));
  add(_spec("fp8e4m3", "fp8e4m3", 8, 4, "none", false, 0, FP8E4M3_MAX));
  add(_spec("fp8e5m2", "fp8e5m2", 8, 4, "none", false, 0, FP8E5M2_MAX));
  for (const axis of GROUP_AXES) {
    for (const g of GROUP_SIZES) {
      for (const b of INT_BITS) {
        add(_spec(`int${b}-g${g}-${axis}`, "int", b, g, axis, true, 2 ** b - 1, FP16_MAX));
      }
      add(_spec(`int8s-g${g}-${axis}`, "int8s", 8, g, axis, true, 127, FP16_MAX * 127));
      add(
        _spec(`fp8e4m3-g${g}-${axis}`, "fp8e4m3", 8, g, axis, true, 0, FP16_MAX * FP8E4M3_MAX),
      );
      add(
        _spec(`fp8e5m2-g${g}-${axis}`, "fp8e5m2", 8, g, axis, true, 0, FP16_MAX * FP8E5M2_MAX),
      );
    }
  }
  return t;
}

const _TABLE = _buildTable();

/**
 * Looks up a format by name.
 *
 * @example
 * ```ts
 * import { getFormat } from "./format.ts";
 * if (getFormat("fp16").bitsPerElement !== 16) throw new Error("fp16 is 16 bits");
 * ```
 * @param name registry name, e.g. `int4-g32-token`
 * @returns the format's spec
 * @throws {FormatError} for an unknown name
 */
export function getFormat(name: string): FormatSpec {
  const s = _TABLE.get(name);
  if (s === undefined) {
    throw new FormatError(
      `unknown format ${
        typeof name === "string" ? `"${name}"` : showValue(name)
      }; expected e.g. int4-g32-token, int8s-g32-heads, fp16, bf16, ` +
        `fp32, fp8e4m3, fp8e5m2-g16-channel`,
    );
  }
  return s;
}

/**
 * Names of every registered format, in table order.
 *
 * @returns the names
 */
export function formatNames(): string[] {
  return [..._TABLE.keys()];
}

/**
 * u32 words that `length` elements take in format `spec`.
 *
 * @param spec the format
 * @param length element count, a multiple of `spec.group`
 * @returns the word count
 * @throws {ShapeError} when `length` is negative, fractional or not a multiple of the group
 */
export function wordsForLength(spec: FormatSpec, length: number): number {
  checkLength(spec, length);
  return (length / spec.group) * spec.wordsPerGroup;
}

/**
 * Throws unless `length` is a non-negative integer multiple of the format's group size.
 *
 * @param spec the format
 * @param length element count to check
 */
export function checkLength(spec: FormatSpec, length: number): void {
  if (!Number.isInteger(length) || length < 0 || length % spec.group !== 0) {
    throw new ShapeError(
      `length ${length} does not fit format ${spec.name}: expected a non-negative multiple of ` +
        `its group size ${spec.group}`,
    );
  }
}
