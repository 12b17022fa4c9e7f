// The measurement behind one row of `deno task eval`, shared by bench/eval.ts, bench/analyze.ts and
// the demos so that every tool reports the same figures for the same configuration: perplexity,
// mean KL and top-1 agreement against the FP32 reference (teacher-forced, compareCache), bits per
// element held, and greedy-token match over a generated continuation.
import {
  cacheShape,
  compareCache,
  Float32KVCache,
  generateGreedy,
  MixedPrecisionKVCache,
  type ReferenceRun,
  referenceRun,
  type Tokenizer,
  type Transformer,
} from "../mod.ts";
import type { EvalRow } from "./eval_rows.ts";

/** The prompt of the greedy-match column. */
export const GREEDY_PROMPT = "Once upon a time";
/** Tokens generated for the greedy-match column. */
export const GREEDY_STEPS = 100;

/** What every row is measured against: the FP32 cache's logits and greedy continuation. */
export interface EvalSetup {
  /** Window length. */
  context: number;
  /** The FP32 reference run over the scoring windows. */
  reference: ReferenceRun;
  /** Prompt ids of the greedy column. */
  prompt: number[];
  /** The FP32 cache's greedy continuation. */
  referenceGreedy: number[];
  /** Tokens scored per configuration. */
  tokens: number;
  /** Seconds of the reference prefill and of the reference greedy decode. */
  prefillSeconds: number;
  /** Seconds of the reference greedy decode. */
  decodeSeconds: number;
}

/**
 * Runs the FP32 reference once.
 * @param model the transformer
 * @param tokenizer encodes the greedy prompt
 * @param sequences token ids per evaluation line
 * @param context window length
 * @returns the setup every row is compared against
 */
export async function evalSetup(
  model: Transformer,
  tokenizer: Tokenizer,
  sequences: number[][],
  context: number,
): Promise<EvalSetup> {
  const fp32 = new Float32KVCache(cacheShape(model.config));
  let t0 = performance.now();
  const reference = await referenceRun(model, fp32, sequences, context);
  const prefillSeconds = (performance.now() - t0) / 1000;
  const prompt = tokenizer.encode(GREEDY_PROMPT);
  t0 = performance.now();
  const referenceGreedy = await generateGreedy(model, fp32, prompt, GREEDY_STEPS);
  const decodeSeconds = (performance.now() - t0) / 1000;
  const tokens = reference.windows.reduce((a, w) => a + w.tokens.length - 1, 0);
  return { context, reference, prompt, referenceGreedy, tokens, prefillSeconds, decodeSeconds };
}

/** The figures of one row (the JSON of `deno task eval --json`). */
export interface RowResult {
  /** Row name. */
  name: string;
  /** Row kind. */
  kind: EvalRow["kind"];
  /** Tokens scored. */
  tokens: number;
  /** Perplexity with this cache. */
  perplexity: number;
  /** Mean KL(reference ‖ this), nats. */
  meanKl: number;
  /** Share of positions whose argmax matches the reference. */
  top1Agreement: number;
  /** Bits per element held (all metadata counted). */
  bitsPerElement: number;
  /** Share of the greedy continuation equal to the reference's. */
  greedyMatch: number;
  /** Whether the verifier's bound held (kvprec rows), else null. */
  boundHeld: boolean | null;
  /** Seconds this row took. */
  seconds: number;
}

/**
 * Measures one configuration against the setup.
 * @param model the transformer
 * @param row the configuration
 * @param setup from {@linkcode evalSetup}
 * @param onProgress called after each scoring window with (done, total)
 * @returns the row's figures
 */
export async function measureRow(
  model: Transformer,
  row: EvalRow,
  setup: EvalSetup,
  onProgress?: (done: number, total: number) => void,
): Promise<RowResult> {
  const cache = new MixedPrecisionKVCache(cacheShape(model.config), row.policy);
  const t = performance.now();
  const q = await compareCache(model, cache, setup.reference, onProgress);
  const greedy = await generateGreedy(model, cache, setup.prompt, GREEDY_STEPS);
  const match = greedy.filter((id, i) => id === setup.referenceGreedy[i]).length;
  return {
    name: row.name,
    kind: row.kind,
    ...q,
    greedyMatch: match / GREEDY_STEPS,
    boundHeld: row.boundHeld ?? null,
    seconds: (performance.now() - t) / 1000,
  };
}
