// Flags shared by the demos: --eps E | --budget B, --lines N, --context N, --json FILE (the
// AnalysisResult, for the test that compares the demos with `deno task eval`).
import { parseAnalyzeArgs } from "../bench/cli_args.ts";

/**
 * Parses the demo flags with the analyze parser (same validation, same defaults), plus --json.
 * @param args command-line arguments
 * @returns the parsed options and the JSON path
 */
export function demoArgs(args: string[]) {
  const i = args.indexOf("--json");
  const json = i >= 0 ? args[i + 1] : undefined;
  const rest = i >= 0 ? [...args.slice(0, i), ...args.slice(i + 2)] : args;
  return { ...parseAnalyzeArgs(rest), json };
}
