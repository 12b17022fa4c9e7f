/**
 * Loader for llama2.c checkpoints (the legacy format of run.c): a header of 7 int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means
 * the classifier is stored separately), then float32 weights in run.c's order. Legacy RoPE tables
 * after the layer weights are checked against the base-10000 RoPE the forward pass recomputes
 * (FormatError otherwise; all-zero tables pass).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { parseCheckpoint } from "./checkpoint.ts";
 * import { CorruptDataError } from "../errors.ts";
 * try {
 *   parseCheckpoint(new Uint8Array(10));
 *   throw new Error("unreachable");
 * } catch (e) {
 *   if (!(e instanceof CorruptDataError)) throw e;
 * }
 * ```
 * @module
 */

import { CorruptDataError, FormatError, ShapeError } from "../errors.ts";
import { ropeTable } from "../tensor.ts";
import { asBytes } from "./bytes.ts";

/** Hyperparameters of a llama-style model. */
export interface ModelConfig {
  /** Residual stream width. */
  dim: number;
  /** Feed-forward hidden width. */
  hiddenDim: number;
  /** Transformer layers. */
  nLayers: number;
  /** Query heads. */
  nHeads: number;
  /** Key/value heads (grouped-query attention when fewer than nHeads). */
  nKvHeads: number;
  /** Vocabulary size. */
  vocabSize: number;
  /** Context length the model was trained for. */
  seqLen: number;
  /** dim / nHeads. */
  headDim: number;
  /** nKvHeads × headDim. */
  kvDim: number;
  /** Whether the classifier reuses the token embedding. */
  sharedClassifier: boolean;
}

/** A model's weights as float32 views into one buffer. Matrices are row-major [out][in]. */
export interface ModelWeights {
  /** The model's hyperparameters. */
  config: ModelConfig;
  /** vocab × dim. */
  tokenEmbedding: Float32Array;
  /** Per layer: dim. */
  rmsAtt: Float32Array[];
  /** Per layer: dim × dim. */
  wq: Float32Array[];
  /** Per layer: kvDim × dim. */
  wk: Float32Array[];
  /** Per layer: kvDim × dim. */
  wv: Float32Array[];
  /** Per layer: dim × dim. */
  wo: Float32Array[];
  /** Per layer: dim. */
  rmsFfn: Float32Array[];
  /** Per layer: hidden × dim. */
  w1: Float32Array[];
  /** Per layer: dim × hidden. */
  w2: Float32Array[];
  /** Per layer: hidden × dim. */
  w3: Float32Array[];
  /** dim. */
  rmsFinal: Float32Array;
  /** vocab × dim (the token embedding when shared). */
  classifier: Float32Array;
}

const HEADER_BYTES = 28;

/**
 * Parses a llama2.c legacy checkpoint. Throws {@linkcode CorruptDataError} for a truncated or
 * oversized file (naming expected vs actual bytes) or a NaN or infinite weight (naming the tensor,
 * layer, index and byte offset), {@linkcode ShapeError} for impossible header values, and
 * {@linkcode FormatError} for RoPE tables other than the base-10000 RoPE the forward pass computes.
 *
 * @param input the whole checkpoint file (a Uint8Array or an ArrayBuffer)
 * @returns the weights (copied into a fresh, aligned buffer)
 */
export function parseCheckpoint(input: Uint8Array | ArrayBuffer): ModelWeights {
  const bytes = asBytes(input, "checkpoint bytes");
  if (bytes.byteLength < HEADER_BYTES) {
    throw new CorruptDataError(
      `checkpoint is ${bytes.byteLength} bytes, shorter than its ${HEADER_BYTES}-byte header`,
      bytes.byteLength,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const h = Array.from({ length: 7 }, (_, i) => view.getInt32(4 * i, true));
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = h;
  const names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
  h.forEach((value, i) => {
    if (i !== 5 && value <= 0) {
      throw new ShapeError(`checkpoint header ${names[i]} is ${value}, expected > 0`);
    }
  });
  if (vocabRaw === 0) throw new ShapeError("checkpoint header vocab_size is 0, expected non-zero");
  if (dim % nHeads !== 0) throw new ShapeError(`n_heads ${nHeads} does not divide dim ${dim}`);
  if (nHeads % nKvHeads !== 0) {
    throw new ShapeError(`n_kv_heads ${nKvHeads} does not divide n_heads ${nHeads}`);
  }
  const headDim = dim / nHeads;
  if (headDim % 2 !== 0) throw new ShapeError(`head dimension ${headDim} is odd; RoPE needs pairs`);
  const config: ModelConfig = {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: Math.abs(vocabRaw),
    seqLen,
    headDim,
    kvDim: nKvHeads * headDim,
    sharedClassifier: vocabRaw > 0,
  };
  const sizes = weightSizes(config);
  const floats = sizes.reduce((a, [, n]) => a + n, 0);
  const ropeFloats = seqLen * headDim; // legacy freq_cis_real and freq_cis_imag, seqLen × headDim/2 each
  const expected = HEADER_BYTES +
    4 * (floats + ropeFloats + (config.sharedClassifier ? 0 : config.vocabSize * dim));
  if (!Number.isSafeInteger(expected) || expected > 2 ** 31) {
    throw new ShapeError(`checkpoint header implies ${expected} bytes, too large to load`);
  }
  if (bytes.byteLength !== expected) {
    throw new CorruptDataError(
      `checkpoint is ${bytes.byteLength} bytes, expected ${expected} for dim ${dim}, ` +
        `hidden_dim ${hiddenDim}, ${nLayers} layers, vocab ${config.vocabSize}, seq_len ${seqLen}` +
        (bytes.byteLength < expected ? " (truncated)" : " (trailing bytes)"),
      Math.min(bytes.byteLength, expected),
    );
  }
  // Copy into an aligned buffer: the input may start at any byte offset.
  const all = new Float32Array(
    floats + ropeFloats + (config.sharedClassifier ? 0 : config.vocabSize * dim),
  );
  new Uint8Array(all.buffer).set(bytes.subarray(HEADER_BYTES));
  let offset = 0;
  const take = (n: number) => all.subarray(offset, offset += n);
  const perLayer = (n: number) => Array.from({ length: nLayers }, () => take(n));
  const tokenEmbedding = take(config.vocabSize * dim);
  const rmsAtt = perLayer(dim);
  const wq = perLayer(dim * dim);
  const wk = perLayer(config.kvDim * dim);
  const wv = perLayer(config.kvDim * dim);
  const wo = perLayer(dim * dim);
  const rmsFfn = perLayer(dim);
  const w1 = perLayer(hiddenDim * dim);
  const w2 = perLayer(dim * hiddenDim);
  const w3 = perLayer(hiddenDim * dim);
  const rmsFinal = take(dim);
  const rope = take(ropeFloats);
  const classifier = config.sharedClassifier ? tokenEmbedding : take(config.vocabSize * dim);
  // a NaN or infinite weight turns logits into NaN without a word, or stops a forward pass
  // midway; one pass over the weights names it instead
  const tensors: [string, Float32Array[]][] = [
    ["token_embedding", [tokenEmbedding]],
    ["rms_att", rmsAtt],
    ["wq", wq],
    ["wk", wk],
    ["wv", wv],
    ["wo", wo],
    ["rms_ffn", rmsFfn],
    ["w1", w1],
    ["w2", w2],
    ["w3", w3],
    ["rms_final", [rmsFinal]],
    ["classifier", config.sharedClassifier ? [] : [classifier]],
  ];
  for (const [name, layers] of tensors) {
    for (const [l, t] of layers.entries()) {
      for (let i = 0; i < t.length; i++) {
        if (Number.isFinite(t[i])) continue;
        const where = layers.length > 1 ? `${name}[layer ${l}]` : name;
        throw new CorruptDataError(
          `checkpoint weight ${where}[${i}] is ${t[i]}`,
          HEADER_BYTES + t.byteOffset + 4 * i,
        );
      }
    }
  }
  _checkRope(rope, config);
  return {
    config,
    tokenEmbedding,
    rmsAtt,
    wq,
    wk,
    wv,
    wo,
    rmsFfn,
    w1,
    w2,
    w3,
    rmsFinal,
    classifier,
  };
}

/**
 * Largest difference from base-10000 RoPE the legacy tables may show at position p: llama2.c's
 * exporter and run.c both compute the angle p·freq in f32, each within half an ulp (p·2^-24 rad),
 * so 1e-3 + p·2^-21 leaves room to spare; another base or a scaled RoPE differs by more than 1e-3
 * already at position 1, pair 1.
 */
function _ropeTolerance(p: number): number {
  return 1e-3 + p * 2 ** -21;
}

/**
 * The legacy file's freq_cis_real / freq_cis_imag tables must be base-10000 RoPE, which the forward
 * pass computes (as run.c does, which ignores them too): a checkpoint carrying another RoPE was
 * once run with the wrong one without a word.
 */
function _checkRope(rope: Float32Array, c: ModelConfig): void {
  // zeros are no RoPE at all (cos 0 is 1): a writer that leaves the tables empty, as run.c reads them
  if (rope.every((x) => x === 0)) return;
  const half = c.headDim / 2, n = c.seqLen * half;
  const { cos, sin } = ropeTable(c.headDim, c.seqLen);
  for (
    const [name, table, mine, at] of [
      ["freq_cis_real", rope.subarray(0, n), cos, 0],
      ["freq_cis_imag", rope.subarray(n), sin, n],
    ] as const
  ) {
    for (let i = 0; i < n; i++) {
      const diff = Math.abs(table[i] - mine[i]);
      if (!(diff <= _ropeTolerance(Math.floor(i / half)))) {
        throw new FormatError(
          `checkpoint ${name} at position ${Math.floor(i / half)}, pair ${i % half} is ` +
            `${table[i]}, base-10000 RoPE gives ${mine[i]} (byte offset ` +
            `${HEADER_BYTES + rope.byteOffset + 4 * (at + i)}): the forward pass computes ` +
            `base-10000 RoPE, as llama2.c's run.c does, and cannot run this checkpoint's`,
        );
      }
    }
  }
}

function weightSizes(c: ModelConfig): [string, number][] {
  const L = c.nLayers;
  return [
    ["token_embedding", c.vocabSize * c.dim],
    ["rms_att", L * c.dim],
    ["wq", L * c.dim * c.dim],
    ["wk", L * c.kvDim * c.dim],
    ["wv", L * c.kvDim * c.dim],
    ["wo", L * c.dim * c.dim],
    ["rms_ffn", L * c.dim],
    ["w1", L * c.hiddenDim * c.dim],
    ["w2", L * c.dim * c.hiddenDim],
    ["w3", L * c.hiddenDim * c.dim],
    ["rms_final", c.dim],
  ];
}
