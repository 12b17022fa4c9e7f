// Argument parsing and input loading of `deno task analyze`, kept apart from the script so tests
// can call them. Every bad input becomes a UsageError with one line naming the flag or file.
import {
  KvprecError,
  parseCheckpoint,
  parseTokenizer,
  type Tokenizer,
  Transformer,
} from "../mod.ts";
import { type PlanTarget, SENSITIVITIES, type Sensitivity } from "./kvprec_rows.ts";

/** A bad flag, value or input file: printed as one line, exit code 2. */
export class UsageError extends Error {}

/**
 * Splits command-line arguments into flags with values (`--flag value` or `--flag=value`, in
 * order) and switches (`--help`/`-h` as "--help", and the given ones).
 * @param args command-line arguments
 * @param valued flags that take a value
 * @param switches flags that take none, besides --help
 * @param repeatable valued flags that may come more than once (each value kept, in order)
 * @returns the flags and the switches seen
 * @throws UsageError for an unknown flag, a flag without its value (the next argument a flag:
 *   `--json --breakdown` once wrote the JSON to a file named "--breakdown"), or a repeat of a flag
 *   not repeatable (the last one once won without a word)
 */
export function readFlags(
  args: string[],
  valued: readonly string[],
  switches: readonly string[] = [],
  repeatable: readonly string[] = [],
): { values: [string, string][]; switches: Set<string> } {
  const values: [string, string][] = [], seen = new Set<string>();
  const isFlag = (x: string) => x.startsWith("--") || x === "-h";
  for (let i = 0; i < args.length; i++) {
    let a = args[i], v: string | undefined;
    if (a === "--help" || a === "-h" || switches.includes(a)) {
      seen.add(a === "-h" ? "--help" : a);
      continue;
    }
    const eq = a.indexOf("=");
    if (a.startsWith("--") && eq > 0) [a, v] = [a.slice(0, eq), a.slice(eq + 1)];
    if (!valued.includes(a)) throw new UsageError(`unknown flag ${a} (see --help)`);
    if (v === undefined) {
      const next = args[i + 1];
      if (next !== undefined && isFlag(next)) {
        throw new UsageError(
          `${a} needs a value, not the flag ${next} (${a}=VALUE for one like it)`,
        );
      }
      v = args[++i];
    }
    if (v === undefined || v === "") throw new UsageError(`${a} needs a value`);
    if (!repeatable.includes(a) && values.some(([b]) => b === a)) {
      throw new UsageError(`${a} is given twice: once is enough`);
    }
    values.push([a, v]);
  }
  return { values, switches: seen };
}

/** Parsed options of the analyze command. */
export interface AnalyzeArgs {
  /** llama2.c checkpoint path. */
  model: string;
  /** llama2.c tokenizer path. */
  tokenizer: string;
  /** Text file: one sequence per line. */
  text: string;
  /** ε or budget. */
  target: PlanTarget;
  /** "ts", "wasm" or "auto" (= wasm). */
  backend: string;
  /** Output directory. */
  out: string;
  /** Evaluation lines. */
  lines: number;
  /** Calibration lines (the text's last ones). */
  calibrationLines: number;
  /** Scoring window (default: the model's seqLen). */
  context?: number;
  /** What ranks positions; unset: a budget chooses by calibration KL, the rule uses curvature. */
  sensitivity?: Sensitivity;
  /** Print help and exit. */
  help: boolean;
}

const _FIXTURES = new URL("../fixtures/", import.meta.url).pathname;

/** The --help text: every flag. */
export const HELP = `deno task analyze [flags]

Calibrates a model on a text, builds a kvprec precision plan, measures it against the FP32
cache and the uniform baselines (the same figures as deno task eval) and writes analysis.json
and a self-contained report.html.

  --model FILE       llama2.c checkpoint (default fixtures/stories260K.bin)
  --tokenizer FILE   llama2.c tokenizer (default fixtures/tok512.bin)
  --text FILE        text, one sequence per line (default fixtures/tinystories_valid_excerpt.txt);
                     the last --calib-lines lines calibrate, the first --lines lines evaluate
  --eps E            target error ε > 0 of the precision rule
  --budget B         bits per element the cache may hold, every byte counted (default 5.4;
                     below the cache's floor the cheapest plan is used and the report says so)
  --backend NAME     ts | wasm | auto (default auto = wasm; the GPU runs the same plans in
                     "deno task eval --backend gpu")
  --out DIR          output directory (default analysis_out)
  --lines N          evaluation lines (default 3, to stay under a minute)
  --calib-lines N    calibration lines (default 2)
  --context N        scoring window in tokens (default the model's sequence length)
  --sensitivity S    curvature | attention: what ranks positions for bits (default: a budget fits
                     both and keeps the lower KL on the calibration lines; the rule uses curvature)
  --help             this text
`;

/** The target when neither --eps nor --budget is given: the measured bits of uniform INT3 per channel. */
export const DEFAULT_BUDGET = 5.4;

const _BACKENDS = ["ts", "wasm", "auto"];

/**
 * Parses the analyze flags.
 * @param args command-line arguments
 * @returns the options
 * @throws UsageError naming the first bad flag or value
 */
export function parseAnalyzeArgs(args: string[]): AnalyzeArgs {
  const values = new Map<string, string>();
  const known = [
    "--model",
    "--tokenizer",
    "--text",
    "--eps",
    "--budget",
    "--backend",
    "--out",
    "--lines",
    "--calib-lines",
    "--context",
    "--sensitivity",
  ];
  const read = readFlags(args, known);
  for (const [a, v] of read.values) values.set(a, v);
  const help = read.switches.has("--help");
  const num = (flag: string, def: number, integer: boolean): number => {
    const s = values.get(flag);
    if (s === undefined) return def;
    const n = Number(s);
    if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) {
      throw new UsageError(
        `${flag} is ${JSON.stringify(s)}, expected ${integer ? "an integer" : "a number"}`,
      );
    }
    return n;
  };
  if (values.has("--eps") && values.has("--budget")) {
    throw new UsageError("give --eps or --budget, not both");
  }
  let target: PlanTarget;
  if (values.has("--budget")) {
    const b = num("--budget", 0, false);
    if (!(b > 0)) throw new UsageError(`--budget is ${b}, expected a number > 0 bits per element`);
    target = { budget: b };
  } else if (values.has("--eps")) {
    const e = num("--eps", 0.5, false);
    if (!(e > 0)) throw new UsageError(`--eps is ${e}, expected a number > 0`);
    target = { epsilon: e };
  } else {
    target = { budget: DEFAULT_BUDGET };
  }
  const backend = values.get("--backend") ?? "auto";
  if (!_BACKENDS.includes(backend)) {
    throw new UsageError(
      backend === "gpu"
        ? "--backend gpu: analyze reports bits as the CPU cache holds them, and the GPU cache " +
          "also holds device buffers (readback, staging) that would swamp them on short texts " +
          "(use wasm or ts; `deno task eval --backend gpu` runs the same rows on the GPU beside " +
          "the WASM cache)"
        : `--backend is ${JSON.stringify(backend)}, expected one of ts, wasm, auto`,
    );
  }
  const lines = num("--lines", 3, true), calibrationLines = num("--calib-lines", 2, true);
  if (lines < 1) throw new UsageError(`--lines is ${lines}, expected ≥ 1`);
  if (calibrationLines < 1) {
    throw new UsageError(`--calib-lines is ${calibrationLines}, expected ≥ 1`);
  }
  const context = values.has("--context") ? num("--context", 0, true) : undefined;
  if (context !== undefined && context < 2) {
    throw new UsageError(`--context is ${context}, expected ≥ 2`);
  }
  const sensitivity = values.get("--sensitivity") as Sensitivity | undefined;
  if (sensitivity !== undefined && !SENSITIVITIES.includes(sensitivity)) {
    throw new UsageError(
      `--sensitivity is ${JSON.stringify(sensitivity)}, expected one of ${
        SENSITIVITIES.join(", ")
      }`,
    );
  }
  return {
    model: values.get("--model") ?? _FIXTURES + "stories260K.bin",
    tokenizer: values.get("--tokenizer") ?? _FIXTURES + "tok512.bin",
    text: values.get("--text") ?? _FIXTURES + "tinystories_valid_excerpt.txt",
    target,
    backend,
    out: values.get("--out") ?? "analysis_out",
    lines,
    calibrationLines,
    context,
    sensitivity,
    help,
  };
}

async function _read(path: string, what: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new UsageError(`${what} file ${path} not found`);
    if (e instanceof Deno.errors.IsADirectory) {
      throw new UsageError(`${what} ${path} is a directory`);
    }
    throw new UsageError(`cannot read ${what} file ${path}: ${(e as Error).message}`);
  }
}

/** Loaded inputs of the analyze command. */
export interface AnalyzeInputs {
  /** The model. */
  model: Transformer;
  /** The tokenizer. */
  tokenizer: Tokenizer;
  /** Token ids per non-empty line with at least 2 tokens (BOS included). */
  sequences: number[][];
}

/**
 * Reads and checks the model, tokenizer and text.
 * @param args parsed options
 * @returns the inputs
 * @throws UsageError for a missing or corrupt file or a text without a token
 */
export async function loadAnalyzeInputs(args: AnalyzeArgs): Promise<AnalyzeInputs> {
  const modelBytes = await _read(args.model, "model");
  const tokBytes = await _read(args.tokenizer, "tokenizer");
  const textBytes = await _read(args.text, "text");
  let model: Transformer, tokenizer: Tokenizer;
  try {
    model = new Transformer(parseCheckpoint(modelBytes));
  } catch (e) {
    if (e instanceof KvprecError || e instanceof RangeError) {
      throw new UsageError(`model ${args.model} is not a valid llama2.c checkpoint: ${e.message}`);
    }
    throw e;
  }
  try {
    tokenizer = parseTokenizer(tokBytes, model.config.vocabSize);
  } catch (e) {
    if (e instanceof KvprecError || e instanceof RangeError) {
      throw new UsageError(`tokenizer ${args.tokenizer} is not valid for this model: ${e.message}`);
    }
    throw e;
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(textBytes);
  } catch {
    throw new UsageError(`text ${args.text} is not UTF-8`);
  }
  const sequences = text.split("\n").filter((l) => l.trim().length > 0)
    .map((l) => tokenizer.encode(l)).filter((s) => s.length >= 2);
  if (sequences.length === 0) {
    throw new UsageError(`text ${args.text} has no line of at least one token`);
  }
  if (args.context !== undefined && args.context > model.config.seqLen) {
    throw new UsageError(
      `--context is ${args.context}, the model's sequence length is ${model.config.seqLen}`,
    );
  }
  // as eval refuses more lines than the text has (analyze once took fewer without a word)
  for (
    const [flag, n] of [["--lines", args.lines], ["--calib-lines", args.calibrationLines]] as const
  ) {
    if (n > sequences.length) {
      throw new UsageError(
        `${flag} is ${n}, the text has ${sequences.length} lines of at least two tokens`,
      );
    }
  }
  return { model, tokenizer, sequences };
}
