// The configurations `deno task eval` compares: uniform baselines through the mixed-precision cache,
// and kvprec plans from the analyzer.
import {
  type CachePolicy,
  getFormat,
  type KVCacheShape,
  type Transformer,
  uniformPolicy,
} from "../mod.ts";

/** One row of the eval table. */
export interface EvalRow {
  name: string;
  kind: "reference" | "baseline" | "kvprec" | "ablation";
  /** undefined: the FP32 reference cache. */
  policy: CachePolicy;
  /** Whether the verifier's bound held for this configuration (kvprec rows). */
  boundHeld?: boolean;
}

/**
 * Baselines. head_dim is 8 on the fixture, so per-token groups are 8 wide (4 metadata bits per
 * element); per-channel groups run along 32–64 tokens of a page.
 */
export function baselineRows(): EvalRow[] {
  const u = (name: string, keyFormat: string, valueFormat: string, extra = {}) => ({
    name,
    kind: "baseline" as const,
    policy: uniformPolicy({
      keyFormat,
      valueFormat,
      pageTokens: pageTokensFor(keyFormat, valueFormat),
      ...extra,
    }),
  });
  return [
    {
      name: "FP32 (reference)",
      kind: "reference",
      policy: uniformPolicy({ keyFormat: "fp32", valueFormat: "fp32", windowFormat: "fp32" }),
    },
    u("FP16", "fp16", "fp16"),
    u("INT8 per token (g8)", "int8-g8-token", "int8-g8-token"),
    u("INT4 per token (g8)", "int4-g8-token", "int4-g8-token"),
    u("INT2 per token (g8)", "int2-g8-token", "int2-g8-token"),
    u("6-bit packed (int6, g32 channel)", "int6-g32-channel", "int6-g32-channel"),
    u("INT4 per channel (g32)", "int4-g32-channel", "int4-g32-channel"),
    u("INT3 per channel (g32)", "int3-g32-channel", "int3-g32-channel"),
    u("INT2 per channel (g32)", "int2-g32-channel", "int2-g32-channel"),
    u("INT2 per channel (g64)", "int2-g64-channel", "int2-g64-channel"),
    u("KIVI-4 (K ch g32, V tok g8, fp16 window 32)", "int4-g32-channel", "int4-g8-token", {
      recentWindow: 32,
    }),
    u("KIVI-2 (K ch g32, V tok g8, fp16 window 32)", "int2-g32-channel", "int2-g8-token", {
      recentWindow: 32,
    }),
  ];
}

/** Smallest page (at least 32 tokens) that holds whole channel groups of both formats. */
export function pageTokensFor(...formats: string[]): number {
  return Math.max(32, ...formats.map((f) => (f.endsWith("-channel") ? getFormat(f).group : 1)));
}

/** All rows: baselines, then kvprec plans (added when the analyzer is wired in). */
export function evalRows(
  _model: Transformer,
  _sequences: number[][],
  _shape: KVCacheShape,
): Promise<EvalRow[]> {
  return Promise.resolve(baselineRows());
}
