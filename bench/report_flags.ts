/**
 * Flags of the report scripts (`deno run -A bench/<name>_report.ts`): known flags only, `--help`
 * prints the script's usage. They once read `--name value` wherever it stood and ignored the rest,
 * so a mistyped `--t 512` ran every shape (17 minutes) without a word.
 *
 * @module
 */

import { readFlags, UsageError } from "./cli_args.ts";

/** The flags a report was given. */
export interface ReportFlags {
  /** `--help` was given. */
  help: boolean;
  /** The value of a valued flag, or `fallback`. */
  value(name: string, fallback: string): string;
  /** Positive integers (multiples of multipleOf) from a comma-separated valued flag, or `fallback`. */
  sizes(name: string, fallback: string, multipleOf?: number): number[];
  /** One integer in [min, max] (default 1, no limit) from a valued flag, or from `fallback`. */
  size(name: string, fallback: string, min?: number, max?: number): number;
  /** Whether a switch was given. */
  has(name: string): boolean;
}

/**
 * Reads the flags of a report.
 * @param args command-line arguments
 * @param valued flags that take a value (`--T 512,4096` or `--T=512,4096`)
 * @param switches flags that take none
 * @returns the flags
 * @throws UsageError for an unknown flag, a missing value, a repeat, or sizes that are not
 *   positive integers
 */
export function parseReportFlags(
  args: string[],
  valued: readonly string[],
  switches: readonly string[] = [],
): ReportFlags {
  const read = readFlags(args, valued, switches);
  const values = new Map(read.values);
  const value = (name: string, fallback: string) => values.get(name) ?? fallback;
  return {
    help: read.switches.has("--help"),
    value,
    sizes(name, fallback, multipleOf = 1) {
      const text = value(name, fallback);
      const sizes = text.split(",").map(decimal);
      if (!sizes.every((x) => x > 0 && x % multipleOf === 0)) {
        throw new UsageError(
          `${name} is ${JSON.stringify(text)}, expected positive integers` +
            (multipleOf > 1 ? ` that are multiples of ${multipleOf}` : ""),
        );
      }
      return sizes;
    },
    size(name, fallback, min = 1, max = Infinity) {
      const text = value(name, fallback), x = decimal(text);
      if (!(x >= min && x <= max)) {
        throw new UsageError(
          `${name} is ${JSON.stringify(text)}, expected an integer ` +
            (max < Infinity ? `in [${min}, ${max}]` : `≥ ${min}`),
        );
      }
      return x;
    },
    has: (name) => read.switches.has(name),
  };
}

/** A decimal integer, NaN for anything else: Number() took "0x2", " 2" and "1e3". */
export function decimal(text: string): number {
  const n = /^[0-9]+$/.test(text) ? Number(text) : NaN;
  return Number.isSafeInteger(n) ? n : NaN;
}

/**
 * parseReportFlags for a script's own command line: prints `usage` and exits 0 on `--help`, prints
 * the error and exits 2 on a bad flag.
 * @param script the script's name, for the message
 * @param usage the --help text
 * @param valued flags that take a value
 * @param switches flags that take none
 * @returns the flags
 */
export function reportFlags(
  script: string,
  usage: string,
  valued: readonly string[],
  switches: readonly string[] = [],
): ReportFlags {
  let flags: ReportFlags;
  try {
    flags = parseReportFlags(Deno.args, valued, switches);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`${script}: ${e.message}`);
    Deno.exit(2);
  }
  if (flags.help) {
    console.log(usage);
    Deno.exit(0);
  }
  // a bad value exits as a bad flag does
  const exiting = <A extends unknown[], R>(f: (...a: A) => R) => (...a: A): R => {
    try {
      return f(...a);
    } catch (e) {
      if (!(e instanceof UsageError)) throw e;
      console.error(`${script}: ${e.message}`);
      Deno.exit(2);
    }
  };
  return { ...flags, sizes: exiting(flags.sizes), size: exiting(flags.size) };
}
