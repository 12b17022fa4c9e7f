/**
 * How far the WASM kernels' attention is from the TypeScript reference's on a real forward pass:
 * the model runs with the TS cache while a WASM cache of the same policy takes the same appends,
 * and every attend call's outputs are compared (the largest |a − b| over a query head relative to
 * that head's largest |b|, issue 5's criterion). Used by bench/agreement_report.ts and
 * tests/core/cache/real_model_agreement_test.ts.
 *
 * @module
 */

import { MixedPrecisionKVCache } from "../core/cache/mixed_cache.ts";
import type { CachePolicy } from "../core/cache/policy.ts";
import type { KVCache, KVCacheShape } from "../core/model/kv_cache.ts";
import type { Transformer } from "../core/model/transformer.ts";

/** The worst disagreement over a run and how many attend calls it compared. */
export interface Agreement {
  /** Largest relative difference of a query head's output over every call. */
  worst: number;
  /** Attend calls compared. */
  calls: number;
}

/** Largest |a − b| over a query head of d elements, relative to that head's largest |b|. */
export function headRelError(a: Float32Array, b: Float32Array, d: number): number {
  let worst = 0;
  for (let h = 0; h < a.length / d; h++) {
    let err = 0, mag = 0;
    for (let i = h * d; i < (h + 1) * d; i++) {
      err = Math.max(err, Math.abs(a[i] - b[i]));
      mag = Math.max(mag, Math.abs(b[i]));
    }
    worst = Math.max(worst, err / mag);
  }
  return worst;
}

/**
 * Runs the model over each sequence (teacher-forced, from position 0) with a TS cache and a WASM
 * cache of one policy side by side.
 * @param model the transformer
 * @param shape the cache shape
 * @param policy the policy both caches use
 * @param sequences token ids, each at most shape.maxSeqLen long
 * @returns the worst disagreement
 */
export async function backendAgreement(
  model: Transformer,
  shape: KVCacheShape,
  policy: CachePolicy,
  sequences: readonly number[][],
): Promise<Agreement> {
  const ts = new MixedPrecisionKVCache(shape, policy);
  const wasm = new MixedPrecisionKVCache(shape, policy, { backend: "wasm" });
  const d = shape.headDim, other = new Float32Array(shape.nHeads * d);
  let worst = 0, calls = 0;
  const both: KVCache = {
    shape,
    length: (layer) => ts.length(layer),
    append(layer, pos, k, v) {
      ts.append(layer, pos, k, v);
      wasm.append(layer, pos, k, v);
    },
    attend(layer, q, out) {
      ts.attend(layer, q, out);
      wasm.attend(layer, q, other);
      worst = Math.max(worst, headRelError(other, out, d));
      calls++;
    },
    memory: () => ts.memory(),
    reset() {
      ts.reset();
      wasm.reset();
    },
  };
  for (const seq of sequences) {
    both.reset();
    for (let p = 0; p < seq.length; p++) await model.forward(seq[p], p, both);
  }
  return { worst, calls };
}
