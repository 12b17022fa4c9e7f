// Hand-made calibrations for plan and verifier tests: heads of unit weights and curvature.
import type { Analysis, HeadCalibration } from "../../core/analyzer.ts";

/**
 * A calibration head of unit weights and curvature whose window-1 scores are `scores`.
 * @param scores window-1 score per position
 * @param keyRange keys' [min, max]
 * @param valueRange values' [min, max]
 * @returns the head
 */
export function unitHead(
  scores: number[],
  keyRange: [number, number] = [-1, 1],
  valueRange: [number, number] = [-1, 1],
): HeadCalibration {
  const n = scores.length, ones = () => new Float64Array(n).fill(1);
  return {
    length: n,
    group: 1,
    attentionSum: ones(),
    attentionMax: ones(),
    keyGradSum: ones(),
    keyGradMax: ones(),
    hessianSum: ones(),
    curvatureSum: ones(),
    curvatureMax: ones(),
    windowScores: { "1": Float64Array.from(scores) },
    keyRange,
    valueRange,
    keyAbsMax: Math.max(...keyRange.map(Math.abs)),
    valueAbsMax: Math.max(...valueRange.map(Math.abs)),
    sinkMass: 0,
    recentMass: 0,
    queryCount: n,
  };
}

/**
 * An analysis of the given heads: sequences[s][layer][kvHead], one query head per KV head,
 * window 1.
 * @param heads heads per sequence, layer and KV head
 * @param d head dimension
 * @returns the analysis
 */
export function unitAnalysis(heads: HeadCalibration[][][], d = 16): Analysis {
  const n = heads[0][0][0].length;
  return {
    version: 1,
    shape: {
      nLayers: heads[0].length,
      nHeads: heads[0][0].length,
      nKvHeads: heads[0][0].length,
      headDim: d,
      maxSeqLen: n,
    },
    windows: [1],
    sinkTokens: 0,
    recentWindow: 1,
    sequences: heads.map((h) => ({ length: n, heads: h })),
  };
}
