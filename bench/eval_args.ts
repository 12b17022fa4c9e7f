// Argument parsing of `deno task eval`, kept apart from the script so tests can call it. A bad
// flag or value is a UsageError naming it (one line, exit code 2) before the model loads; unknown
// flags are refused, so a typo does not start the 10-minute full run.
import { readFlags, UsageError } from "./cli_args.ts";
import type { EvalBackend } from "./eval_measure.ts";
import type { PlanTarget } from "./kvprec_rows.ts";
import { decimal } from "./report_flags.ts";

/** Parsed options of the eval command. */
export interface EvalArgs {
  /** Scoring window in tokens (default: the model's sequence length). */
  context: number;
  /** Evaluation lines, the text's first ones (default: all). */
  lines: number;
  /** Only rows whose name contains this. */
  only?: string;
  /** Cache backend of every row. */
  backend: EvalBackend;
  /** Where --json writes the table. */
  json?: string;
  /** Extra kvprec plan rows: --eps and --budget, in order. */
  targets: PlanTarget[];
  /** Print each CPU row's bits by part. */
  breakdown: boolean;
  /** Print help and exit. */
  help: boolean;
}

/** The --help text: every flag. */
export const EVAL_HELP = `deno task eval [flags]

The quality table of kvprec on the fixture model and text: one row per cache configuration
(uniform baselines, kvprec plans at the rule's ε and at budgets, ablations) with bits per element
(every byte held), perplexity, mean KL and top-1 agreement against the FP32 cache, greedy match and
whether the verifier's bound held. The full run takes about 10 minutes on 2 cores; --only and
--lines make it shorter.

  --only TEXT        only rows whose name contains TEXT (e.g. "INT4 per channel", "kvprec budget")
  --lines N          evaluation lines, the text's first N (default all 19)
  --context N        scoring window in tokens, 2 … the model's sequence length (default 512)
  --backend NAME     wasm | ts | gpu (default wasm; gpu runs every row on WebGPU and the WASM
                     cache beside it, printing both perplexities and both caches' bits: the GPU
                     counts its page buffers as allocated, without the CPU's page tables)
  --eps E            add a kvprec precision-rule row at ε = E > 0 (repeatable)
  --budget B         add a kvprec budget row at B > 0 bits per element (repeatable)
  --json FILE        also write the table as JSON
  --breakdown        under each CPU row, where its bits go (codes, scales, page tables, ring, ...)
  --help             this text
`;

const _VALUED = ["--only", "--lines", "--context", "--backend", "--eps", "--budget", "--json"];
const _BACKENDS = ["wasm", "ts", "gpu"];

/**
 * Parses the eval flags.
 * @param args command-line arguments
 * @param seqLen the model's sequence length (the largest --context)
 * @param available lines in the evaluation text (the largest --lines)
 * @returns the options
 * @throws UsageError naming the first bad flag or value
 */
export function parseEvalArgs(args: string[], seqLen: number, available: number): EvalArgs {
  const values = new Map<string, string>();
  const targets: PlanTarget[] = [];
  const read = readFlags(args, _VALUED, ["--breakdown"], ["--eps", "--budget"]);
  const help = read.switches.has("--help"), breakdown = read.switches.has("--breakdown");
  for (const [a, v] of read.values) {
    if (a === "--eps" || a === "--budget") {
      const x = Number(v);
      if (!(x > 0) || !Number.isFinite(x)) {
        throw new UsageError(`${a} is ${JSON.stringify(v)}, expected a number > 0`);
      }
      targets.push(a === "--eps" ? { epsilon: x } : { budget: x });
    } else {
      values.set(a, v);
    }
  }
  const integer = (flag: string, def: number, lo: number, hi: number): number => {
    const s = values.get(flag);
    if (s === undefined) return def;
    const n = decimal(s);
    if (!(n >= lo && n <= hi)) {
      throw new UsageError(
        `${flag} is ${JSON.stringify(s)}, expected an integer in [${lo}, ${hi}]`,
      );
    }
    return n;
  };
  const backend = values.get("--backend") ?? "wasm";
  if (!_BACKENDS.includes(backend)) {
    throw new UsageError(`--backend is ${JSON.stringify(backend)}, expected wasm, ts or gpu`);
  }
  return {
    context: integer("--context", seqLen, 2, seqLen),
    lines: integer("--lines", available, 1, available),
    only: values.get("--only"),
    backend: backend as EvalBackend,
    json: values.get("--json"),
    targets,
    breakdown,
    help,
  };
}
