/**
 * Where a cache stores each position of a recorded sequence, as a verifier {@linkcode Assignment}.
 *
 * A plan's report.planAssignment decides every position by its own score; the cache decides a
 * chunk of evictQuantum tokens at once by the chunk's mean window score, and the score a token
 * earns depends on the cache's own attention. This replays the recording through a
 * {@linkcode MixedPrecisionKVCache} in the model's order (per position, every layer's append and
 * then its attend with the recorded queries) and reads which pool each evicted chunk went to, so
 * `verifyHeads(recording, storedAssignment(recording, policy))` checks what the cache holds once
 * the sequence is in. Sinks and the tokens still in the ring keep index −1 (the window format);
 * with a staging format of the policy's own, the ring's tokens waiting in it take −2, and the
 * assignment's stagingFormat says every other position passed through it.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { storedAssignment } from "./stored_assignment.ts";
 * import { uniformPolicy } from "./policy.ts";
 * import { RecordingKVCache } from "../recording_cache.ts";
 * const shape = { nLayers: 1, nHeads: 1, nKvHeads: 1, headDim: 4, maxSeqLen: 40 };
 * const rec = new RecordingKVCache(shape);
 * const out = new Float32Array(4);
 * for (let t = 0; t < 40; t++) {
 *   const x = Float32Array.from({ length: 4 }, (_, i) => Math.sin(t + i));
 *   rec.append(0, t, x, x);
 *   rec.attend(0, x, out);
 * }
 * const policy = uniformPolicy({
 *   keyFormat: "int4-g32-channel",
 *   valueFormat: "int4-g32-channel",
 *   sinkTokens: 2,
 *   recentWindow: 4,
 * });
 * const a = storedAssignment(rec, policy);
 * // 2 sinks, one chunk of 32 paged, 6 in the ring
 * if (a.sequences[0][0][0].key.filter((f) => f === 0).length !== 32) throw new Error("one chunk");
 * ```
 * @module
 */

import { InvalidValueError, ShapeError, typeName } from "../errors.ts";
import type { Assignment } from "../plan.ts";
import { checkRecorded, RecordingKVCache } from "../recording_cache.ts";
import { type MixedCacheOptions, MixedPrecisionKVCache } from "./mixed_cache.ts";
import type { CachePolicy } from "./policy.ts";

/**
 * The formats a cache with `policy` stores each recorded position in, after the whole recording.
 *
 * @param recording a recording cache holding one sequence (keys, values and every attend's
 *   queries)
 * @param policy the cache policy
 * @param options the cache's options (backend and integerDot move window scores, hence tiers)
 * @returns an assignment of one sequence; ropeBase is the policy's
 * @throws InvalidValueError for a recording that is not a RecordingKVCache or a policy that is not
 *   a CachePolicy; ShapeError for a recording with no position, layers of different lengths, or a
 *   position without its recorded query (no attend after its append); the cache's own errors for
 *   a policy or data it refuses
 */
export function storedAssignment(
  recording: RecordingKVCache,
  policy: CachePolicy,
  options: Omit<MixedCacheOptions, "maxBytes"> = {},
): Assignment {
  if (!(recording instanceof RecordingKVCache)) {
    throw new InvalidValueError(`recording is ${typeName(recording)}, expected a RecordingKVCache`);
  }
  if (typeof policy?.formatFor !== "function" || typeof policy.pairs !== "function") {
    throw new InvalidValueError(`policy is ${typeName(policy)}, expected a CachePolicy`);
  }
  const { nLayers, nHeads, nKvHeads, headDim: d } = recording.shape;
  const n = recording.length(0);
  if (n === 0) throw new ShapeError("the recording holds no position to replay");
  checkRecorded(recording, n);
  const queries = Array.from({ length: nLayers }, (_, l) => recording.queries(l));
  const perHead = (read: (l: number, h: number) => Float32Array) =>
    Array.from(
      { length: nLayers },
      (_, l) => Array.from({ length: nKvHeads }, (_, h) => read(l, h)),
    );
  const K = perHead((l, h) => recording.keys(l, h)), V = perHead((l, h) => recording.values(l, h));
  // the recording's own maxSeqLen: a page the cache accepts at that length is refused at n
  const cache = new MixedPrecisionKVCache(recording.shape, policy, options ?? {});

  const keyFormats: string[] = [], valueFormats: string[] = [];
  const indexOf = (list: string[], f: string) => {
    if (!list.includes(f)) list.push(f);
    return list.indexOf(f);
  };
  const cells = Array.from(
    { length: nLayers },
    () =>
      Array.from({ length: nKvHeads }, () => ({
        key: new Int16Array(n).fill(-1),
        value: new Int16Array(n).fill(-1),
      })),
  );
  // tokens each (layer, head) pool held before the append, by pool
  const held = cells.map((row) => row.map(() => new Map<string, number>()));
  const k = new Float32Array(nKvHeads * d), v = new Float32Array(nKvHeads * d);
  const out = new Float32Array(nHeads * d);
  for (let t = 0; t < n; t++) {
    for (let l = 0; l < nLayers; l++) {
      for (let h = 0; h < nKvHeads; h++) {
        k.set(K[l][h].subarray(t * d, (t + 1) * d), h * d);
        v.set(V[l][h].subarray(t * d, (t + 1) * d), h * d);
      }
      cache.append(l, t, k, v);
      for (let h = 0; h < nKvHeads; h++) {
        const before = held[l][h];
        let paged = 0;
        for (const c of before.values()) paged += c;
        for (const pool of cache.segments(l, h).pools) {
          const name = `${pool.pair.keyFormat}|${pool.pair.valueFormat}`;
          const grown = pool.length - (before.get(name) ?? 0);
          if (grown === 0) continue;
          // the chunk just evicted: the oldest ring tokens, right after those paged before
          const from = policy.sinkTokens + paged, cell = cells[l][h];
          cell.key.fill(indexOf(keyFormats, pool.pair.keyFormat), from, from + grown);
          cell.value.fill(indexOf(valueFormats, pool.pair.valueFormat), from, from + grown);
          before.set(name, pool.length);
        }
      }
      cache.attend(l, queries[l].subarray(t * nHeads * d, (t + 1) * nHeads * d), out);
    }
  }
  const staging = policy.stagingFormat ?? policy.windowFormat;
  if (staging !== policy.windowFormat) {
    // the ring's oldest tokens past the recent window wait in the staging format
    const recent = Math.min(policy.recentWindow, recording.shape.maxSeqLen);
    for (let l = 0; l < nLayers; l++) {
      for (let h = 0; h < nKvHeads; h++) {
        const ringN = cache.segments(l, h).windowN, staged = Math.max(0, ringN - recent);
        cells[l][h].key.fill(-2, n - ringN, n - ringN + staged);
        cells[l][h].value.fill(-2, n - ringN, n - ringN + staged);
      }
    }
  }
  return {
    keyFormats,
    valueFormats,
    windowFormat: policy.windowFormat,
    ...(staging === policy.windowFormat ? {} : { stagingFormat: staging }),
    sequences: [cells],
    ...(policy.ropeBase === undefined ? {} : { ropeBase: policy.ropeBase }),
  };
}
