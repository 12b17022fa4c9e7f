/**
 * Typed errors for kvprec. Every error names the offending value, index or byte offset, and every
 * operation that throws one leaves its inputs and its own state unchanged.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { KvprecError, ShapeError } from "./errors.ts";
 * const e = new ShapeError("k has length 31, expected 32");
 * if (!(e instanceof KvprecError)) throw new Error("unreachable");
 * ```
 * @module
 */

/** Base class of every error kvprec throws on purpose. */
export class KvprecError extends Error {
  /**
   * Creates the instance.
   * @param message what went wrong, with the offending value
   * @param options standard error options (a cause)
   */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    // kvprec's classes carry their name on the prototype (below); a subclass of the caller's
    // takes its class name
    if (!Object.hasOwn(new.target.prototype, "name")) this.name = new.target.name;
  }
}

/** An unknown or unsupported format name, or a format used where it cannot apply. */
export class FormatError extends KvprecError {}

/** A length, dimension or index that does not fit what the operation expects. */
export class ShapeError extends KvprecError {}

/** A value that is not allowed: NaN or ±Inf in data, ε ≤ 0, a negative budget. */
export class InvalidValueError extends KvprecError {
  /** Index of the first offending element, when the value came from an array. */
  readonly index?: number;
  /**
   * Creates the instance.
   * @param message what was wrong
   * @param index the first offending element's index, if any
   */
  constructor(message: string, index?: number) {
    super(message);
    this.index = index;
  }
}

/** Bytes that are truncated, oversized or fail a checksum or magic-number check. */
export class CorruptDataError extends KvprecError {
  /** Byte offset at which the problem was found, if known. */
  readonly offset?: number;
  /**
   * Creates the instance.
   * @param message what was wrong, with expected vs actual sizes
   * @param offset byte offset of the problem, if known
   */
  constructor(message: string, offset?: number) {
    super(message);
    this.offset = offset;
  }
}

/** WebGPU is unavailable, or the device was lost. Callers fall back to the WASM backend. */
export class DeviceError extends KvprecError {}

/** A bits-per-element or memory budget that cannot be met. */
export class BudgetError extends KvprecError {
  /** The smallest budget that can be met, when known. */
  readonly minimum?: number;
  /**
   * Creates the error.
   * @param message what was asked and what is possible
   * @param minimum the smallest budget that can be met, if known
   * @param options standard error options (a cause)
   */
  constructor(message: string, minimum?: number, options?: ErrorOptions) {
    super(message, options);
    this.minimum = minimum;
  }
}

/** Appending past a cache's capacity. */
export class CapacityError extends KvprecError {}

// Names written out, so that they survive a minifying bundler, which renames classes.
for (
  const [cls, name] of [
    [KvprecError, "KvprecError"],
    [FormatError, "FormatError"],
    [ShapeError, "ShapeError"],
    [InvalidValueError, "InvalidValueError"],
    [CorruptDataError, "CorruptDataError"],
    [DeviceError, "DeviceError"],
    [BudgetError, "BudgetError"],
    [CapacityError, "CapacityError"],
  ] as const
) cls.prototype.name = name;

/**
 * What a value is, for an error message: its class name ("Array", "Float64Array"), "null", or its
 * typeof ("number", "undefined").
 * @param v the value
 * @returns the name
 */
export function typeName(v: unknown): string {
  if (v === null) return "null";
  return typeof v === "object" ? (v.constructor?.name ?? "Object") : typeof v;
}

/**
 * A value as an error message shows it: strings quoted (so that "1" does not read as the number
 * 1), objects and arrays by their type name, bigints with their n, everything else as String().
 *
 * @param v any value
 * @returns the text
 */
export function showValue(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "bigint") return `${v}n`;
  return typeof v === "object" && v !== null ? typeName(v) : String(v);
}

/**
 * Checks an options argument: an object every field of which is known (optional options arrive as
 * their parameter's default, so undefined here is a missing required argument). A
 * misspelt field (`integerdot`, `minGPUElements`) was otherwise dropped without a word, and the
 * call went on with the default.
 *
 * @example
 * ```ts
 * import { checkOptionFields, InvalidValueError } from "./errors.ts";
 * try {
 *   checkOptionFields({ integerdot: false }, ["integerDot"], "cache options");
 *   throw new Error("unreachable");
 * } catch (e) {
 *   if (!(e instanceof InvalidValueError)) throw e;
 * }
 * ```
 * @param options the argument
 * @param known its fields: names, or a `Record<keyof Options, true>` (which the compiler checks
 *   against the interface both ways)
 * @param what what the options are for, as the message names them ("cache options")
 * @throws InvalidValueError for options that are not a non-array object, or
 *   naming the first unknown field with the known ones
 */
export function checkOptionFields(
  options: unknown,
  known: readonly string[] | Readonly<Record<string, true>>,
  what: string,
): void {
  // a Record<keyof Options, true> lists every field once, checked by the compiler both ways
  const names = Array.isArray(known) ? known : Object.keys(known);
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    throw new InvalidValueError(`${what} are ${showValue(options)}, expected an object`);
  }
  const unknown = Object.keys(options).find((k) => !names.includes(k));
  if (unknown !== undefined) {
    throw new InvalidValueError(
      `${what} have unknown field ${JSON.stringify(unknown)}; the fields are ${names.join(", ")}`,
    );
  }
}

/**
 * Throws {@linkcode InvalidValueError} naming the first non-finite element of `x` (of
 * x[from … from + count) when given).
 *
 * @param x values to check
 * @param what name of the array, used in the message
 * @param from first index checked
 * @param count elements checked
 */
export function assertFinite(
  x: ArrayLike<number>,
  what: string,
  from = 0,
  count: number = x.length - from,
): void {
  for (let i = from; i < from + count; i++) {
    const v = x[i];
    if (v - v !== 0) {
      throw new InvalidValueError(`${what}[${i}] is ${v}, expected a finite number`, i);
    }
  }
}

/**
 * Checks the settings of a random perturbation estimate: a relative size that is a finite number
 * > 0 (0 or NaN moves nothing: gains of 0/0) and a whole number of trials ≥ 1 (none gives gains of
 * 0). Shared by the layer-gain and attention-gain estimates.
 *
 * @param size relative perturbation size
 * @param trials random perturbations averaged
 * @throws {InvalidValueError} naming the setting out of range
 */
export function checkPerturbation(size: number, trials: number): void {
  if (!(size > 0) || size === Infinity) {
    throw new InvalidValueError(`size is ${size}, expected a finite number > 0`);
  }
  if (!Number.isInteger(trials) || trials < 1) {
    throw new InvalidValueError(`trials is ${trials}, expected an integer ≥ 1`);
  }
}
