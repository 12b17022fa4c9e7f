/**
 * Per-layer Lipschitz bounds of a llama-style decoder, from its weights and the activations it
 * produces on a sequence, for the composition law of verifier.ts. The norm on the residual stream
 * is E = max_j ‖δx_j‖₂ over positions j (attention mixes positions, so a per-position norm alone
 * does not compose).
 *
 * - {@linkcode traceResidualStream} re-runs the model's math (core/tensor.ts, the weights of
 *   {@linkcode ModelWeights}) and keeps the residual stream and every layer's q, k, v: the
 *   model's own forward pass and its KVCache interface stay untouched.
 * - {@linkcode spectralNormUpper}: an upper bound on ‖A‖₂ from ‖(AᵀA)^(2^p)‖_F^(1/2^p) ≥ λ_max
 *   (repeated squaring, within a factor n^(1/2^(p+1)) of the true norm).
 * - {@linkcode layerLipschitz}: for every layer the bounds A_l on the attention branch and F_l on
 *   the feed-forward branch, so that the layer maps an input error E to at most
 *   (1 + F_l)(1 + A_l)·E, and the gain of the final RMSNorm and classifier. The branch bounds are
 *   Jacobian norms at the observed activations: rigorous to first order in E (they bound the
 *   linearization; second-order terms are not covered).
 *
 *   RMSNorm u = g ⊙ x/r, r = √(mean x² + 1e-5): J = diag(g)/r·(I − xxᵀ/(n r²)), ‖J‖ ≤ max|g|/r.
 *   Attention, head h at query j: δo = Σ_t α_t δv_t + Σ_t α_t (v_t − o)(q·δk_t)/√d
 *   + [Σ_t α_t (v_t − o)k_tᵀ/√d] δq, so ‖δo‖ ≤ (‖W_v‖ Σ_t α_t N_t + ‖W_k‖ Σ_t α_t‖v_t − o‖‖q‖/√d·N_t
 *   + ‖W_q‖ ‖Σ_t α_t (v_t − o)k_tᵀ‖_F/√d · N_j)·E with N_t the RMSNorm gain at t (RoPE is a
 *   rotation); the heads concatenate, then W_o: A_l = ‖W_o‖ max_j √Σ_h c_{h,j}².
 *   Feed-forward W_2(silu(a) ⊙ b), a = W_1 u, b = W_3 u: F_l = ‖W_2‖ max_j N_j
 *   (max|silu′(a) b|‖W_1‖ + max|silu(a)|‖W_3‖).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { spectralNormUpper } from "./layer_lipschitz.ts";
 * // diag(3, 1): the bound is at least 3 and close to it.
 * const s = spectralNormUpper(new Float32Array([3, 0, 0, 1]), 2, 2);
 * if (!(s >= 3 && s < 3.01)) throw new Error("spectral norm bound");
 * ```
 * @module
 */

import {
  assertFinite,
  checkOptionFields,
  checkPerturbation,
  InvalidValueError,
  ShapeError,
  showValue,
} from "./errors.ts";
import { attentionWeights } from "./attention_sensitivity.ts";
import { nextUp } from "./interval.ts";
import type { ModelWeights } from "./model/checkpoint.ts";
import { matmul, matvec, rmsnorm, Rope, siluGate } from "./tensor.ts";
import { mulberry32 } from "./mulberry32.ts";

/** The residual stream and attention inputs of one sequence, every layer. */
export interface ResidualTrace {
  /** Positions n. */
  length: number;
  /** Per layer: the residual stream entering the layer, n × dim. */
  input: Float32Array[];
  /** Per layer: the residual stream entering the feed-forward block, n × dim. */
  mid: Float32Array[];
  /** The residual stream after the last layer, n × dim. */
  final: Float32Array;
  /** Per layer: queries after RoPE, n × dim. */
  q: Float32Array[];
  /** Per layer: keys after RoPE, n × kvDim. */
  k: Float32Array[];
  /** Per layer: values, n × kvDim. */
  v: Float32Array[];
  /** Logits, n × vocab. */
  logits: Float32Array;
}

/**
 * Runs the model's forward pass over a sequence (full-precision attention in float64) and keeps
 * the residual stream and every layer's queries, keys and values.
 *
 * @param w the model's weights
 * @param tokens token ids (1 ≤ length ≤ seqLen)
 * @returns the trace
 * @throws InvalidValueError for tokens that are not an array (or array-like object);
 *   ShapeError for a length that is not an integer in 1..seqLen or a token id that is not an
 *   integer in [0, vocabSize)
 */
export function traceResidualStream(w: ModelWeights, tokens: ArrayLike<number>): ResidualTrace {
  // a number gave a trace of length undefined, {length: NaN} one of length NaN, undefined a
  // TypeError and a fractional length a RangeError
  if (typeof tokens !== "object" || tokens === null) {
    throw new InvalidValueError(`tokens is ${showValue(tokens)}, expected an array of token ids`);
  }
  const c = w.config, n = tokens.length;
  if (!Number.isInteger(n) || n < 1 || n > c.seqLen) {
    throw new ShapeError(`sequence of ${showValue(n)} tokens, expected an integer 1..${c.seqLen}`);
  }
  for (let i = 0; i < n; i++) {
    const t = tokens[i];
    if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) {
      throw new ShapeError(`token id ${showValue(t)} at ${i} out of range [0, ${c.vocabSize})`);
    }
  }
  const x = new Float32Array(n * c.dim), fb = new Float32Array(c.dim);
  for (let i = 0; i < n; i++) {
    const t = tokens[i];
    x.set(w.tokenEmbedding.subarray(t * c.dim, (t + 1) * c.dim), i * c.dim);
  }
  const rope = new Rope(c.headDim, c.seqLen);
  const row = (a: Float32Array, i: number, width: number) => a.subarray(i * width, (i + 1) * width);
  const out: ResidualTrace = {
    length: n,
    input: [],
    mid: [],
    final: x,
    q: [],
    k: [],
    v: [],
    logits: new Float32Array(n * c.vocabSize),
  };
  for (let l = 0; l < c.nLayers; l++) {
    out.input.push(x.slice());
    const { q, k, v } = _attentionBlock(w, l, x, n, rope);
    out.q.push(q);
    out.k.push(k);
    out.v.push(v);
    out.mid.push(x.slice());
    _feedForwardBlock(w, l, x, n);
  }
  out.final = x.slice();
  for (let i = 0; i < n; i++) {
    rmsnorm(fb, row(x, i, c.dim), w.rmsFinal);
    matvec(row(out.logits, i, c.vocabSize), fb, w.classifier, c.vocabSize, c.dim);
  }
  return out;
}

/** x += W_o·attention(x) for layer l over n positions (causal); returns q, k, v. */
function _attentionBlock(
  w: ModelWeights,
  l: number,
  x: Float32Array,
  n: number,
  rope: Rope,
): { q: Float32Array; k: Float32Array; v: Float32Array } {
  const c = w.config, hd = c.headDim, group = c.nHeads / c.nKvHeads;
  const row = (a: Float32Array, i: number, width: number) => a.subarray(i * width, (i + 1) * width);
  const xb = new Float32Array(n * c.dim), att = new Float32Array(n * c.dim);
  for (let i = 0; i < n; i++) rmsnorm(row(xb, i, c.dim), row(x, i, c.dim), w.rmsAtt[l]);
  const q = new Float32Array(n * c.dim), k = new Float32Array(n * c.kvDim);
  const v = new Float32Array(n * c.kvDim);
  matmul(q, xb, w.wq[l], n, c.dim, c.dim);
  matmul(k, xb, w.wk[l], n, c.kvDim, c.dim);
  matmul(v, xb, w.wv[l], n, c.kvDim, c.dim);
  for (let i = 0; i < n; i++) {
    rope.apply(row(q, i, c.dim), i);
    rope.apply(row(k, i, c.kvDim), i);
  }
  const alpha = new Float64Array(n), o = new Float64Array(hd);
  for (let kh = 0; kh < c.nKvHeads; kh++) {
    const keys = _headRows(k, n, c.kvDim, kh * hd, hd),
      values = _headRows(v, n, c.kvDim, kh * hd, hd);
    for (let j = 0; j < n; j++) {
      for (let g = 0; g < group; g++) {
        const qo = j * c.dim + (kh * group + g) * hd;
        attentionWeights(q, keys, values, j + 1, hd, alpha, o, qo);
        for (let i = 0; i < hd; i++) att[qo + i] = o[i];
      }
    }
  }
  matmul(xb, att, w.wo[l], n, c.dim, c.dim);
  for (let i = 0; i < n * c.dim; i++) x[i] += xb[i];
  return { q, k, v };
}

/** x += W_2(silu(W_1 u) ⊙ W_3 u), u = RMSNorm(x), per position, for layer l. */
function _feedForwardBlock(w: ModelWeights, l: number, x: Float32Array, n: number): void {
  const c = w.config;
  const fb = new Float32Array(c.dim), hb = new Float32Array(c.hiddenDim);
  const hb2 = new Float32Array(c.hiddenDim);
  for (let i = 0; i < n; i++) {
    const xi = x.subarray(i * c.dim, (i + 1) * c.dim);
    rmsnorm(fb, xi, w.rmsFfn[l]);
    matvec(hb, fb, w.w1[l], c.hiddenDim, c.dim);
    matvec(hb2, fb, w.w3[l], c.hiddenDim, c.dim);
    siluGate(hb, hb2);
    matvec(fb, hb, w.w2[l], c.dim, c.hiddenDim);
    for (let e = 0; e < c.dim; e++) xi[e] += fb[e];
  }
}

/** Empirical gains of one layer (finite differences on the residual stream). */
export interface LayerGain {
  /** max over trials of max_j ‖Δ out_j‖ / max_j ‖Δ in_j‖ for the whole layer. */
  layer: number;
  /** The same for the feed-forward block alone (input: the residual after attention). */
  feedForward: number;
}

/** Options of {@linkcode empiricalLayerGains}. */
export interface GainEstimateOptions {
  /**
   * Perturbation size per position, relative to the residual's RMS (default 1e-3). Below about
   * 1e-6 float32 rounding dominates the difference: on the fixture model the layer gains read
   * 1.4–1.9 from 1e-3 to 1e-6, then 2–5 at 1e-7 and 8–237 at 1e-9.
   */
  size?: number;
  /** Random directions per layer; the largest gain is kept (default 4). */
  trials?: number;
  /** Seed of the directions (default 1). */
  seed?: number;
}

/**
 * Empirical Jacobian-norm estimates by finite differences on the real residual stream: every
 * position's input to layer l (or to its feed-forward block) moves by a random vector of the same
 * norm η, the block is re-run from the trace's activations, and the gain is
 * max_j ‖Δout_j‖ / η. Random directions see a typical singular value, not the largest: these are
 * estimates, not bounds.
 *
 * @param w the model's weights
 * @param trace the exact run's activations
 * @param options perturbation size, trials and seed
 * @returns per layer the estimated gains
 * @throws InvalidValueError for options that are not an object, a size not finite and > 0 or
 *   trials not an integer ≥ 1, or a perturbation that moves no input element in float32; and as
 *   {@linkcode checkTrace}
 */
export function empiricalLayerGains(
  w: ModelWeights,
  trace: ResidualTrace,
  options: GainEstimateOptions = {},
): LayerGain[] {
  // null was a TypeError reading options.size
  if (typeof options !== "object" || options === null) {
    throw new InvalidValueError(`options is ${showValue(options)}, expected an object`);
  }
  checkOptionFields(options, { size: true, trials: true, seed: true }, "gain options");
  const rel = options.size ?? 1e-3, trials = options.trials ?? 4;
  checkPerturbation(rel, trials);
  checkTrace(w, trace);
  const c = w.config, n = trace.length, dim = c.dim;
  const uniform = mulberry32(options.seed ?? 1);
  const rand = () => uniform() - 0.5;
  const rope = new Rope(c.headDim, c.seqLen);
  const gain = (input: Float32Array, block: (x: Float32Array) => void) => {
    let rms = 0;
    for (let i = 0; i < input.length; i++) rms += input[i] * input[i];
    const eta = rel * Math.sqrt(rms / n);
    const base = input.slice();
    block(base);
    let best = 0;
    for (let trial = 0; trial < trials; trial++) {
      const x = input.slice();
      for (let j = 0; j < n; j++) {
        const dir = Float64Array.from({ length: dim }, rand);
        let s = 0;
        for (const e of dir) s += e * e;
        const f = eta / Math.sqrt(s);
        for (let i = 0; i < dim; i++) x[j * dim + i] += Math.fround(dir[i] * f);
      }
      // The realized input perturbation after float32 rounding, per position.
      let inMax = 0;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let i = 0; i < dim; i++) s += (x[j * dim + i] - input[j * dim + i]) ** 2;
        inMax = Math.max(inMax, Math.sqrt(s));
      }
      // a zero input or a size below float32's resolution moves nothing: the gain would be 0/0
      if (!(inMax > 0)) {
        throw new InvalidValueError(
          `a perturbation of relative size ${rel} moves no input element in float32 ` +
            `(input rms ${Math.sqrt(rms / n)})`,
        );
      }
      block(x);
      let outMax = 0;
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let i = 0; i < dim; i++) s += (x[j * dim + i] - base[j * dim + i]) ** 2;
        outMax = Math.max(outMax, Math.sqrt(s));
      }
      best = Math.max(best, outMax / inMax);
    }
    return best;
  };
  const out: LayerGain[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    out.push({
      layer: gain(trace.input[l], (x) => {
        _attentionBlock(w, l, x, n, rope);
        _feedForwardBlock(w, l, x, n);
      }),
      feedForward: gain(trace.mid[l], (x) => _feedForwardBlock(w, l, x, n)),
    });
  }
  return out;
}

/** The rows [offset, offset + width) of every position of an n × stride array, packed. */
function _headRows(
  a: Float32Array,
  n: number,
  stride: number,
  offset: number,
  width: number,
): Float32Array {
  const out = new Float32Array(n * width);
  for (let t = 0; t < n; t++) {
    out.set(a.subarray(t * stride + offset, t * stride + offset + width), t * width);
  }
  return out;
}

/**
 * Throws unless the trace holds every layer of the weights at their sizes, as finite float32
 * values (a trace of fewer layers was a TypeError deep inside, a longer `length` NaN bounds, and a
 * NaN in input, mid or final NaN bounds).
 * @param w the model's weights
 * @param trace activations
 * @throws InvalidValueError for a trace that is not an object, an activation array that is not a
 *   Float32Array, or a NaN or ±Inf element (naming the array, layer and index);
 *   ShapeError for a length or layer count or array size that does not match the weights
 */
export function checkTrace(w: ModelWeights, trace: ResidualTrace): void {
  if (typeof trace !== "object" || trace === null) {
    throw new InvalidValueError(`trace is ${showValue(trace)}, expected a ResidualTrace object`);
  }
  const c = w.config, n = trace.length;
  if (!Number.isInteger(n) || n < 1) {
    throw new ShapeError(`trace length ${showValue(n)}, expected an integer ≥ 1`);
  }
  const checkArray = (x: unknown, what: string, size: number) => {
    if (!(x instanceof Float32Array)) {
      throw new InvalidValueError(`${what} is ${showValue(x)}, expected a Float32Array`);
    }
    if (x.length !== n * size) {
      throw new ShapeError(`${what} has ${x.length} elements, expected ${n} positions × ${size}`);
    }
    assertFinite(x, what);
  };
  const per = { input: c.dim, mid: c.dim, q: c.dim, k: c.kvDim, v: c.kvDim } as const;
  for (const [key, size] of Object.entries(per) as [keyof typeof per, number][]) {
    const arrays: unknown = trace[key];
    if (!Array.isArray(arrays) || arrays.length !== c.nLayers) {
      throw new ShapeError(
        `trace ${key} holds ${Array.isArray(arrays) ? arrays.length : showValue(arrays)} layers, ` +
          `the model ${c.nLayers}`,
      );
    }
    for (let l = 0; l < c.nLayers; l++) checkArray(arrays[l], `trace ${key}[${l}]`, size);
  }
  checkArray(trace.final, "trace final", c.dim);
}

/**
 * An upper bound on the spectral norm of a rows × cols matrix (or of its sub-block of rows
 * [rowStart, rowStart + rowCount)): with M = AᵀA, λ_max(M) ≤ ‖M^(2^p)‖_F^(1/2^p), computed by p
 * normalized squarings, then widened by 1e-9 relative for rounding.
 *
 * @param a row-major matrix
 * @param rows rows of a
 * @param cols columns of a
 * The matrix is scaled by a power of two near 1/max|a| first (exact), so that neither the squares
 * of AᵀA's entries nor their normalizations overflow or underflow whatever the elements' magnitude
 * (elements of 1e80 or 1e-90 gave a "bound" of 0); the result is scaled back and rounded up. It is
 * 0 only when every element of the block is 0.
 *
 * @param squarings p, at most 64 (default 6: within a factor cols^(1/128) of the norm)
 * @param rowStart first row of the block (default 0)
 * @param rowCount rows of the block (default rows − rowStart)
 * @returns a number ≥ ‖A‖₂
 * @throws ShapeError when rows, cols, squarings, rowStart or rowCount is not an integer ≥ 0,
 *   squarings is above 64, the block runs past the last row, or a is shorter than rows × cols;
 *   InvalidValueError for an element of the block that is NaN or beyond ±1e150
 */
export function spectralNormUpper(
  a: ArrayLike<number>,
  rows: number,
  cols: number,
  squarings = 6,
  rowStart = 0,
  rowCount = rows - rowStart,
): number {
  // NaN sizes skipped every row and returned 0, which bounds nothing; a negative rowStart read
  // undefined elements and returned NaN.
  const sizes = { rows, cols, squarings, rowStart, rowCount };
  for (const [key, x] of Object.entries(sizes)) {
    if (!Number.isInteger(x) || x < 0) {
      throw new ShapeError(`${key} is ${showValue(x)}, expected an integer ≥ 0`);
    }
  }
  // The bound is within cols^(1/2^(p+1)) of the norm: 64 squarings leave nothing to tighten in
  // float64 (past about 1074 nothing changes at all), and 1e9 of them ran for hours.
  if (squarings > MAX_SQUARINGS) {
    throw new ShapeError(`squarings is ${squarings}, expected at most ${MAX_SQUARINGS}`);
  }
  if (rowStart + rowCount > rows) {
    const last = rowStart + rowCount - 1;
    throw new ShapeError(
      `rowStart ${rowStart} + rowCount ${rowCount}: rows ${rowStart}..${last} of a matrix of ` +
        `${rows} rows`,
    );
  }
  if (a.length < rows * cols) {
    throw new ShapeError(`matrix of ${a.length} elements, expected ${rows} × ${cols}`);
  }
  // a NaN or infinite element made the bound NaN
  let max = 0;
  for (let i = rowStart * cols; i < (rowStart + rowCount) * cols; i++) {
    const x = Math.abs(a[i]);
    if (!(x <= 1e150)) {
      throw new InvalidValueError(`matrix element ${i} is ${a[i]}, expected |x| ≤ 1e150`, i);
    }
    if (x > max) max = x;
  }
  if (max === 0) return 0;
  // Ã = A·2^-e with max|ã| near 1, in two exact factors (2^1074, for a subnormal max, is past the
  // float64 range). An element that underflows in the scaling is below 2^-1000 of max|a| ≤ ‖A‖:
  // far inside the 1e-9 widening.
  const e = Math.floor(Math.log2(max));
  const e1 = Math.max(-1000, Math.min(1000, -e)), f1 = 2 ** e1, f2 = 2 ** (-e - e1);
  let m = new Float64Array(cols * cols);
  const row = new Float64Array(cols);
  for (let r = rowStart; r < rowStart + rowCount; r++) {
    const b = r * cols;
    for (let i = 0; i < cols; i++) row[i] = a[b + i] * f1 * f2;
    for (let i = 0; i < cols; i++) {
      const x = row[i];
      if (x === 0) continue;
      for (let k = 0; k < cols; k++) m[i * cols + k] += x * row[k];
    }
  }
  // log λ ≤ (log ‖M^(2^p)‖_F) / 2^p; normalize each step by the Frobenius norm to avoid overflow.
  let logScale = 0, power = 1;
  let next = new Float64Array(cols * cols);
  for (let s = 0; s < squarings; s++) {
    // ‖M‖_F ≥ λ_max(M) ≥ max|ã|² (about 1 after the scaling): never 0 here
    const f = _frobenius(m);
    for (let i = 0; i < m.length; i++) m[i] /= f;
    logScale += Math.log(f) / power;
    next.fill(0);
    for (let i = 0; i < cols; i++) {
      for (let k = 0; k < cols; k++) {
        const x = m[i * cols + k];
        if (x === 0) continue;
        for (let j = 0; j < cols; j++) next[i * cols + j] += x * m[k * cols + j];
      }
    }
    [m, next] = [next, m];
    power *= 2;
  }
  const logLambda = logScale + Math.log(_frobenius(m)) / power;
  const scaled = Math.sqrt(Math.exp(logLambda)) * (1 + 1e-9);
  // ‖A‖ = ‖Ã‖·2^e: exact in the normal range, rounded once (then up) in the subnormal one
  return nextUp(e < -1000 ? scaled * 2 ** -1000 * 2 ** (e + 1000) : scaled * 2 ** e);
}

/** Most squarings {@linkcode spectralNormUpper} takes. */
const MAX_SQUARINGS = 64;

function _frobenius(m: Float64Array): number {
  let s = 0;
  for (let i = 0; i < m.length; i++) s += m[i] * m[i];
  return Math.sqrt(s);
}

/** Lipschitz bounds of one layer in the norm max_j ‖·‖₂. */
export interface LayerLipschitz {
  /** A_l: bound on the attention branch's Jacobian (the block is 1 + A_l). */
  attention: number;
  /** F_l: bound on the feed-forward branch's Jacobian (the block is 1 + F_l). */
  feedForward: number;
  /** (1 + A_l)(1 + F_l). */
  layer: number;
  /** ‖W_o‖₂ (upper bound), which maps attention-output errors into the residual stream. */
  outputNorm: number;
}

/** The per-layer bounds and the output gain. */
export interface ModelLipschitz {
  /** Per layer. */
  layers: LayerLipschitz[];
  /** max_j ‖W_cls diag(g_final)‖₂ / r(x_j): residual error after the last layer → logits. */
  output: number;
}

/**
 * Lipschitz bounds of every layer at the activations of a trace (see the module doc; rigorous to
 * first order: they bound the Jacobians at the trace, not over a neighbourhood).
 *
 * @param w the model's weights
 * @param trace the activations from {@linkcode traceResidualStream}
 * @returns per-layer bounds and the output gain
 * @throws ShapeError for a trace that does not match the weights' layers and sizes
 */
export function layerLipschitz(w: ModelWeights, trace: ResidualTrace): ModelLipschitz {
  checkTrace(w, trace);
  const c = w.config, n = trace.length, hd = c.headDim, group = c.nHeads / c.nKvHeads;
  const layers: LayerLipschitz[] = [];
  const alpha = new Float64Array(n), o = new Float64Array(hd), mq = new Float64Array(hd * hd);
  const fb = new Float32Array(c.dim), a1 = new Float32Array(c.hiddenDim);
  const a3 = new Float32Array(c.hiddenDim);
  for (let l = 0; l < c.nLayers; l++) {
    const gainAtt = _normGains(trace.input[l], n, c.dim, w.rmsAtt[l]);
    const wo = spectralNormUpper(w.wo[l], c.dim, c.dim);
    const nq = Array.from(
      { length: c.nHeads },
      (_, h) => spectralNormUpper(w.wq[l], c.dim, c.dim, 6, h * hd, hd),
    );
    const nk = Array.from(
      { length: c.nKvHeads },
      (_, h) => spectralNormUpper(w.wk[l], c.kvDim, c.dim, 6, h * hd, hd),
    );
    const nv = Array.from(
      { length: c.nKvHeads },
      (_, h) => spectralNormUpper(w.wv[l], c.kvDim, c.dim, 6, h * hd, hd),
    );
    const sq = new Float64Array(n);
    for (let kh = 0; kh < c.nKvHeads; kh++) {
      const keys = _headRows(trace.k[l], n, c.kvDim, kh * hd, hd);
      const values = _headRows(trace.v[l], n, c.kvDim, kh * hd, hd);
      const kNorm = new Float64Array(n);
      for (let t = 0; t < n; t++) {
        let s = 0;
        for (let i = 0; i < hd; i++) s += keys[t * hd + i] ** 2;
        kNorm[t] = Math.sqrt(s);
      }
      for (let j = 0; j < n; j++) {
        for (let g = 0; g < group; g++) {
          const h = kh * group + g, qo = j * c.dim + h * hd;
          attentionWeights(trace.q[l], keys, values, j + 1, hd, alpha, o, qo);
          let qn = 0;
          for (let i = 0; i < hd; i++) qn += trace.q[l][qo + i] ** 2;
          qn = Math.sqrt(qn);
          let viaV = 0, viaK = 0;
          mq.fill(0);
          for (let t = 0; t <= j; t++) {
            const a = alpha[t];
            let r = 0;
            for (let i = 0; i < hd; i++) {
              const e = values[t * hd + i] - o[i];
              r += e * e;
              const ae = a * e;
              for (let m = 0; m < hd; m++) mq[i * hd + m] += ae * keys[t * hd + m];
            }
            viaV += a * gainAtt[t];
            viaK += a * Math.sqrt(r) * qn * gainAtt[t];
          }
          const viaQ = _frobenius(mq) * gainAtt[j];
          const cHead = nv[kh] * viaV + (nk[kh] * viaK + nq[h] * viaQ) / Math.sqrt(hd);
          sq[j] += cHead * cHead;
        }
      }
    }
    let attention = 0;
    for (let j = 0; j < n; j++) attention = Math.max(attention, wo * Math.sqrt(sq[j]));

    const gainFfn = _normGains(trace.mid[l], n, c.dim, w.rmsFfn[l]);
    const n1 = spectralNormUpper(w.w1[l], c.hiddenDim, c.dim);
    const n2 = spectralNormUpper(w.w2[l], c.dim, c.hiddenDim);
    const n3 = spectralNormUpper(w.w3[l], c.hiddenDim, c.dim);
    let feedForward = 0;
    for (let j = 0; j < n; j++) {
      rmsnorm(fb, trace.mid[l].subarray(j * c.dim, (j + 1) * c.dim), w.rmsFfn[l]);
      matvec(a1, fb, w.w1[l], c.hiddenDim, c.dim);
      matvec(a3, fb, w.w3[l], c.hiddenDim, c.dim);
      let d1 = 0, d3 = 0;
      for (let i = 0; i < c.hiddenDim; i++) {
        const a = a1[i], sig = 1 / (1 + Math.exp(-a));
        // silu(a) = a·σ(a), silu′(a) = σ(a)(1 + a(1 − σ(a))).
        d1 = Math.max(d1, Math.abs(sig * (1 + a * (1 - sig)) * a3[i]));
        d3 = Math.max(d3, Math.abs(a * sig));
      }
      feedForward = Math.max(feedForward, n2 * gainFfn[j] * (d1 * n1 + d3 * n3));
    }
    layers.push({
      attention,
      feedForward,
      layer: (1 + attention) * (1 + feedForward),
      outputNorm: wo,
    });
  }
  // Output: ‖W_cls diag(g)‖ / r(x_j), bounded with the scaled classifier's spectral norm.
  const scaled = new Float32Array(c.vocabSize * c.dim);
  for (let r = 0; r < c.vocabSize; r++) {
    for (let i = 0; i < c.dim; i++) {
      scaled[r * c.dim + i] = w.classifier[r * c.dim + i] * w.rmsFinal[i];
    }
  }
  const cls = spectralNormUpper(scaled, c.vocabSize, c.dim);
  const invR = _normGains(trace.final, n, c.dim, new Float32Array(c.dim).fill(1));
  let output = 0;
  for (let j = 0; j < n; j++) output = Math.max(output, cls * invR[j]);
  return { layers, output };
}

/** max|g| / r(x_t) per position: the RMSNorm Jacobian norm bound. */
function _normGains(x: Float32Array, n: number, dim: number, g: Float32Array): Float64Array {
  let gMax = 0;
  for (let i = 0; i < dim; i++) gMax = Math.max(gMax, Math.abs(g[i]));
  const out = new Float64Array(n);
  for (let t = 0; t < n; t++) {
    let s = 0;
    for (let i = 0; i < dim; i++) s += x[t * dim + i] ** 2;
    out[t] = gMax / Math.sqrt(s / dim + 1e-5);
  }
  return out;
}

/**
 * Replaces the first-order bounds of the layers by empirical gains (an estimate): F_l = G^ffn_l − 1
 * (at least 0), layer factor max(G_l, 1 + F_l), A_l = layer/(1 + F_l) − 1; ‖W_o‖ and the output
 * gain are kept.
 *
 * The layer factor is raised to 1 + F_l where the whole layer measured below its feed-forward block
 * (G_l < G^ffn_l happens, the directions being random: in bench/composed_bound_report.ts layer 0
 * measures 3.42 against 3.89 and layer 4 2.137 against 2.155). Keeping G_l there broke
 * layer = (1 + A_l)(1 + F_l) with A_l ≥ 0, which {@linkcode LayerLipschitz} states; the larger of
 * the two is the direction a bound errs on.
 *
 * @param bounds bounds from {@linkcode layerLipschitz}
 * @param gains gains from {@linkcode empiricalLayerGains}
 * @returns the same shape, usable by the composition of verifier.ts
 * @throws InvalidValueError for bounds or gains that are not a ModelLipschitz and an array, a
 *   gain entry that is not an object, or a gain that is not a finite number ≥ 0;
 *   ShapeError when the layer counts differ
 */
export function withEmpiricalGains(bounds: ModelLipschitz, gains: LayerGain[]): ModelLipschitz {
  if (typeof bounds !== "object" || bounds === null || !Array.isArray(bounds.layers)) {
    throw new InvalidValueError(
      `bounds is ${showValue(bounds)}, expected the ModelLipschitz of layerLipschitz()`,
    );
  }
  // undefined was a TypeError; holes passed forEach and failed as one in the map below
  if (!Array.isArray(gains)) {
    throw new InvalidValueError(`gains is ${showValue(gains)}, expected an array of LayerGain`);
  }
  if (gains.length !== bounds.layers.length) {
    throw new ShapeError(`${gains.length} gains for ${bounds.layers.length} layers`);
  }
  for (let l = 0; l < gains.length; l++) {
    const g: unknown = gains[l];
    if (typeof g !== "object" || g === null) {
      throw new InvalidValueError(
        `gains[${l}] is ${showValue(g)}, expected {layer, feedForward}`,
        l,
      );
    }
    for (const key of ["layer", "feedForward"] as const) {
      const x = (g as LayerGain)[key];
      if (!(Number.isFinite(x) && x >= 0)) {
        throw new InvalidValueError(
          `layer ${l} ${key} gain is ${showValue(x)}, expected a finite ≥ 0`,
        );
      }
    }
  }
  return {
    output: bounds.output,
    layers: bounds.layers.map((b, l) => {
      const feedForward = Math.max(0, gains[l].feedForward - 1);
      const layer = Math.max(gains[l].layer, 1 + feedForward);
      return {
        attention: Math.max(0, layer / (1 + feedForward) - 1),
        feedForward,
        layer,
        outputNorm: b.outputNorm,
      };
    }),
  };
}
