// The measurement behind one row of `deno task eval`, shared by bench/eval.ts, bench/analyze.ts and
// the demos so that every tool reports the same figures for the same configuration: perplexity,
// mean KL and top-1 agreement against the FP32 reference (teacher-forced, compareCache), bits per
// element held, and the greedy tokens generated before the first one unlike FP32's.
import {
  type CacheQuality,
  cacheShape,
  compareCache,
  createKVCache,
  Float32KVCache,
  generateGreedy,
  type GpuDevice,
  type KVCache,
  type KVCacheShape,
  logProbability,
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
  /** Perplexity of the FP32 reference over the same windows. */
  referencePerplexity: number;
  /** Seconds of the reference prefill (batched, every scoring window). */
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
  const V = model.config.vocabSize;
  let nll = 0;
  for (const w of reference.windows) {
    for (let i = 0; i + 1 < w.tokens.length; i++) {
      nll -= logProbability(w.logits.subarray(i * V, (i + 1) * V), w.tokens[i + 1]);
    }
  }
  const referencePerplexity = Math.exp(nll / tokens);
  return {
    context,
    reference,
    prompt,
    referenceGreedy,
    tokens,
    referencePerplexity,
    prefillSeconds,
    decodeSeconds,
  };
}

/** The figures of one row (the JSON of `deno task eval --json`): compareCache's, and the row's. */
export interface RowResult extends CacheQuality {
  /** Row name. */
  name: string;
  /** Row kind. */
  kind: EvalRow["kind"];
  /** Share of the greedy continuation generated before its first token unlike the reference's. */
  greedyMatch: number;
  /** Whether the verifier's bound held (kvprec rows), else null. */
  boundHeld: boolean | null;
  /** kvprec rows: the largest head-output error on the first calibration line, else null. */
  maxHeadError: number | null;
  /** kvprec rows: what ranked positions for bits ("curvature" or "attention"), else null. */
  sensitivity: string | null;
  /** Seconds this row took. */
  seconds: number;
}

/** Where attention over the cache runs. */
export type EvalBackend = "ts" | "wasm" | "gpu";

/**
 * The cache of one row on a backend. The GPU cache keeps sinks and window in the policy's window
 * format (gpuPolicyFor); one it cannot hold is a clear error.
 */
export async function rowCache(
  shape: KVCacheShape,
  row: EvalRow,
  backend: EvalBackend,
  gpu?: GpuDevice,
): Promise<KVCache> {
  if (backend !== "gpu") return new MixedPrecisionKVCache(shape, row.policy, { backend });
  if (!gpu) throw new Error("backend gpu needs a device");
  return (await createKVCache(shape, row.policy, { backend: "gpu", gpu })).cache;
}

/**
 * Tokens of a greedy continuation before its first one unlike the reference's: once the two have
 * diverged, a token equal to the reference's at the same index is a coincidence, not agreement.
 * @param ids the continuation
 * @param reference the reference continuation
 * @param steps tokens compared at most
 * @returns the matching prefix length
 */
export function matchingPrefix(
  ids: readonly number[],
  reference: readonly number[],
  steps: number,
): number {
  let n = 0;
  while (n < steps && n < ids.length && ids[n] === reference[n]) n++;
  return n;
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
  backend: EvalBackend = "ts",
  gpu?: GpuDevice,
): Promise<RowResult> {
  const cache = await rowCache(cacheShape(model.config), row, backend, gpu);
  const t = performance.now();
  const q = await compareCache(model, cache, setup.reference, onProgress);
  const greedy = await generateGreedy(model, cache, setup.prompt, GREEDY_STEPS);
  const match = matchingPrefix(greedy, setup.referenceGreedy, GREEDY_STEPS);
  (cache as { destroy?: () => void }).destroy?.();
  return {
    name: row.name,
    kind: row.kind,
    ...q,
    greedyMatch: match / GREEDY_STEPS,
    boundHeld: row.boundHeld ?? null,
    maxHeadError: row.maxHeadError ?? null,
    sensitivity: (row.plan?.meta?.sensitivity as string | undefined) ?? null,
    seconds: (performance.now() - t) / 1000,
  };
}
