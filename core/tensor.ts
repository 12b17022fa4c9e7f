/**
 * Float32 kernels for a llama-style transformer: matrix-vector and matrix-matrix products, RMSNorm,
 * softmax, SiLU gating and rotary position embedding. Plain typed arrays, row-major, no allocation
 * inside the kernels. Sums accumulate in float64 (JS numbers) and are stored as float32.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { matvec } from "./tensor.ts";
 * const out = new Float32Array(2);
 * matvec(out, new Float32Array([1, 2]), new Float32Array([1, 0, 0, 1]), 2, 2);
 * if (out[0] !== 1 || out[1] !== 2) throw new Error("identity matrix");
 * ```
 * @module
 */

import { CapacityError, InvalidValueError, ShapeError, showValue, typeName } from "./errors.ts";

// The kernels run inside every forward pass: each checks its sizes once at entry (a few
// comparisons), never per element.

/** Whether v is a size a kernel can loop to: an integer ≥ min (NaN, 1.5 and "2" are not). */
function _isSize(v: number, min = 0): boolean {
  return Number.isInteger(v) && v >= min;
}

/**
 * Whether a[0..aLen) and b[0..bLen) share memory: the same array, or typed-array views whose byte
 * ranges over one buffer intersect. Empty ranges share nothing.
 */
function _overlaps(
  a: ArrayLike<number>,
  aLen: number,
  b: ArrayLike<number>,
  bLen: number,
): boolean {
  if (aLen === 0 || bLen === 0) return false;
  if (a === b) return true;
  if (!ArrayBuffer.isView(a) || !ArrayBuffer.isView(b) || a.buffer !== b.buffer) return false;
  const aBytes = aLen * (a as Float32Array).BYTES_PER_ELEMENT;
  const bBytes = bLen * (b as Float32Array).BYTES_PER_ELEMENT;
  return a.byteOffset < b.byteOffset + bBytes && b.byteOffset < a.byteOffset + aBytes;
}

/**
 * Largest RoPE table allocated, 2^31 − 1 bytes: model/kv_cache.ts's MAX_BUFFER_BYTES, restated
 * because that module imports this one.
 */
const _MAX_TABLE_BYTES = 2 ** 31 - 1;

/**
 * out = W x, with W row-major rows × cols (llama2.c's `matmul(xout, x, w, n=cols, d=rows)`).
 *
 * @param out rows outputs, overwritten; must not share memory with x (row r would read the rows
 *   written before it). x itself is refused; a view overlapping x is not detected here: reading
 *   each view's .buffer cost 5–8% of the fixture model's forward pass, which calls this per token
 *   (matmul, called once per batch, does detect it)
 * @param x cols inputs
 * @param w rows × cols weights
 * @param rows output size
 * @param cols input size
 * @throws ShapeError for rows or cols not an integer ≥ 0 (NaN or −1 wrote nothing, 1.5 read past a
 *   row as NaN), an array shorter than rows and cols need (reads past it were NaN, writes past out
 *   dropped), or an out that is x
 */
export function matvec(
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  rows: number,
  cols: number,
): void {
  if (!_isSize(rows) || !_isSize(cols)) {
    throw new ShapeError(
      `matvec of ${showValue(rows)} × ${showValue(cols)}: rows and cols must be integers ≥ 0`,
    );
  }
  if (out.length < rows || x.length < cols || w.length < rows * cols) {
    throw new ShapeError(
      `matvec of ${rows} × ${cols}: out has ${out.length}, x ${x.length}, w ${w.length} elements`,
    );
  }
  if (out === x && rows > 0 && cols > 0) {
    throw new ShapeError(`matvec of ${rows} × ${cols}: out must not alias x`);
  }
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    // four accumulators break the dependency chain of one long sum
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    let c = 0;
    for (; c + 4 <= cols; c += 4) {
      s0 += w[o + c] * x[c];
      s1 += w[o + c + 1] * x[c + 1];
      s2 += w[o + c + 2] * x[c + 2];
      s3 += w[o + c + 3] * x[c + 3];
    }
    for (; c < cols; c++) s0 += w[o + c] * x[c];
    out[r] = s0 + s1 + s2 + s3;
  }
}

/**
 * out[n] = W x[n] for n batch rows: out is n × rows, x is n × cols, W rows × cols.
 *
 * @param out n × rows outputs
 * @param x n × cols inputs
 * @param w rows × cols weights
 * @param n batch size
 * @param rows output size
 * @param cols input size
 * @throws ShapeError, before any row is written: for out or x not a typed array, n, rows or cols
 *   not an integer ≥ 0, an array shorter than they need, or an out that overlaps x
 */
export function matmul(
  out: Float32Array,
  x: Float32Array,
  w: Float32Array,
  n: number,
  rows: number,
  cols: number,
): void {
  // rows are taken as subarray() views: a plain array failed as a TypeError
  for (const [name, a] of [["out", out], ["x", x]] as const) {
    if (typeof a?.subarray !== "function") {
      throw new ShapeError(`matmul: ${name} must be a Float32Array, got ${typeName(a)}`);
    }
  }
  if (!_isSize(n) || !_isSize(rows) || !_isSize(cols)) {
    throw new ShapeError(
      `matmul of ${showValue(n)} × (${showValue(rows)} × ${showValue(cols)}): ` +
        `n, rows and cols must be integers ≥ 0`,
    );
  }
  // checked whole here: matvec's own check stops at the first short row, the rows before written
  if (out.length < n * rows || x.length < n * cols || w.length < rows * cols) {
    throw new ShapeError(
      `matmul of ${n} × (${rows} × ${cols}): out has ${out.length}, x ${x.length}, ` +
        `w ${w.length} elements`,
    );
  }
  if (_overlaps(out, n * rows, x, n * cols)) {
    throw new ShapeError(`matmul of ${n} × (${rows} × ${cols}): out must not alias x`);
  }
  for (let b = 0; b < n; b++) {
    matvec(
      out.subarray(b * rows, (b + 1) * rows),
      x.subarray(b * cols, (b + 1) * cols),
      w,
      rows,
      cols,
    );
  }
}

/**
 * RMSNorm as llama2.c computes it: out = weight ⊙ x / √(mean(x²) + 1e-5).
 *
 * @param out output (at least x.length elements), may be x itself but must not overlap it
 *   otherwise (not checked: see {@linkcode matvec})
 * @param x input
 * @param weight per-element gain (at least x.length elements)
 * @throws ShapeError for an out or weight shorter than x (a short weight gave NaN, a short out
 *   dropped writes)
 */
export function rmsnorm(out: Float32Array, x: Float32Array, weight: Float32Array): void {
  const n = x.length;
  if (out.length < n || weight.length < n) {
    throw new ShapeError(
      `rmsnorm of ${n} elements: out has ${out.length}, weight ${weight.length} elements`,
    );
  }
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(Math.fround(ss / n + 1e-5));
  for (let i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

/**
 * In-place numerically stable softmax over x[0..n).
 *
 * @param x values, overwritten by probabilities
 * @param n number of leading elements to use (defaults to all)
 * @throws ShapeError for n not an integer in [1, x.length]; InvalidValueError, x unchanged, for a
 *   NaN, a +Infinity, or every value −Infinity (probabilities NaN: ∞/∞ or 0/0)
 */
export function softmax(x: Float32Array, n: number = x.length): void {
  if (!Number.isInteger(n) || n < 1 || n > x.length) {
    throw new ShapeError(`softmax over ${showValue(n)} of ${x.length} elements`);
  }
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[i];
    if (v > max) max = v;
    else if (v !== v) throw new InvalidValueError(`softmax: x[${i}] is NaN`, i);
  }
  if (max === Infinity) {
    const i = x.indexOf(Infinity);
    throw new InvalidValueError(`softmax: x[${i}] is Infinity, expected a finite maximum`, i);
  }
  if (max === -Infinity) {
    throw new InvalidValueError(`softmax: all ${n} values are -Infinity, expected a finite one`);
  }
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const e = Math.exp(x[i] - max);
    x[i] = e;
    sum += e;
  }
  const inv = 1 / sum;
  for (let i = 0; i < n; i++) x[i] *= inv;
}

/**
 * SwiGLU gate in place: h1 = silu(h1) ⊙ h3, silu(x) = x / (1 + e^{−x}).
 *
 * @param h1 gate input, overwritten
 * @param h3 up-projection, at least h1.length elements
 * @throws ShapeError for an h3 shorter than h1 (its missing elements gave NaN)
 */
export function siluGate(h1: Float32Array, h3: Float32Array): void {
  if (h3.length < h1.length) {
    throw new ShapeError(`siluGate: h1 has ${h1.length} elements, h3 ${h3.length}`);
  }
  for (let i = 0; i < h1.length; i++) {
    const x = h1[i];
    h1[i] = (x / (1 + Math.exp(-x))) * h3[i];
  }
}

/**
 * Precomputed rotary embedding tables for llama2.c's RoPE: adjacent pairs (2i, 2i+1) of each head
 * rotate by pos · base^(−2i/headDim).
 */
export class Rope {
  readonly #cos: Float32Array;
  readonly #sin: Float32Array;
  readonly #half: number;

  /**

   * Creates the instance.
   * @param headDim head dimension (even)
   * @param maxPos positions to precompute
   * @param base frequency base (10000 in llama2.c)
   */
  constructor(headDim: number, maxPos: number, base = 10000) {
    this.#half = headDim / 2;
    ({ cos: this.#cos, sin: this.#sin } = ropeTable(headDim, maxPos, base));
  }

  /**
   * Rotates every head of x (length a multiple of headDim) in place for position pos.
   *
   * @param x one or more heads, head-major
   * @param pos position
   * @throws ShapeError for a position outside the table (its angles would read as NaN), or a length
   *   that is not a multiple of headDim (its last pair would read past x as NaN)
   */
  apply(x: Float32Array, pos: number): void {
    const half = this.#half;
    if (x.length % (2 * half) !== 0) {
      throw new ShapeError(`RoPE input has length ${x.length}, not a multiple of ${2 * half}`);
    }
    if (!Number.isInteger(pos) || pos < 0 || (pos + 1) * half > this.#cos.length) {
      throw new ShapeError(`RoPE position ${pos} outside [0, ${this.#cos.length / half})`);
    }
    const base = pos * half;
    for (let o = 0; o < x.length; o += 2 * half) {
      for (let i = 0; i < half; i++) {
        const c = this.#cos[base + i], s = this.#sin[base + i];
        const v0 = x[o + 2 * i], v1 = x[o + 2 * i + 1];
        x[o + 2 * i] = v0 * c - v1 * s;
        x[o + 2 * i + 1] = v0 * s + v1 * c;
      }
    }
  }
}

/**
 * Smallest RoPE base accepted, 2⁻¹²⁶: below it base^(2i/d) can round to 0 in float32, and the
 * frequency 1/0 makes every angle NaN.
 */
export const MIN_ROPE_BASE = 2 ** -126;

/**
 * Whether a RoPE base gives finite float32 frequencies at every head dimension.
 * @param base the base
 * @returns true for a finite number ≥ {@linkcode MIN_ROPE_BASE}
 */
export function isRopeBase(base: unknown): boolean {
  return typeof base === "number" && Number.isFinite(base) && base >= MIN_ROPE_BASE;
}

/**
 * The cos and sin of llama2.c's RoPE angles, position-major ([pos · headDim/2 + i]), computed as
 * run.c does (f32 frequency and angle): one formula for the model and for caches that store keys
 * before RoPE (so rotating back and forth uses the model's own values).
 *
 * @param headDim head dimension (even)
 * @param maxPos positions
 * @param base frequency base (10000 in llama2.c)
 * @returns cos and sin, maxPos × headDim/2 each
 * @throws ShapeError for an odd or non-positive headDim, or a maxPos that is not an integer ≥ 0
 * @throws InvalidValueError for a base that is not finite and ≥ MIN_ROPE_BASE
 * @throws CapacityError, before allocating, when a table would exceed 2^31 − 1 bytes (the
 *   MAX_BUFFER_BYTES of caches)
 */
export function ropeTable(
  headDim: number,
  maxPos: number,
  base = 10000,
): { cos: Float32Array; sin: Float32Array } {
  if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 2 !== 0) {
    throw new ShapeError(`RoPE needs an even head dimension ≥ 2, got ${showValue(headDim)}`);
  }
  if (!Number.isInteger(maxPos) || maxPos < 0) {
    throw new ShapeError(`RoPE positions ${showValue(maxPos)}, expected an integer ≥ 0`);
  }
  if (!isRopeBase(base)) {
    throw new InvalidValueError(
      `RoPE base ${showValue(base)}, expected a finite number ≥ ${MIN_ROPE_BASE}`,
    );
  }
  const half = headDim / 2;
  // a huge maxPos failed as a RangeError from the allocation (or ran out of memory)
  const bytes = 4 * maxPos * half;
  if (bytes > _MAX_TABLE_BYTES) {
    throw new CapacityError(
      `RoPE tables of ${maxPos} positions × ${half} frequencies would take ${bytes} bytes each, ` +
        `over the ${_MAX_TABLE_BYTES} bytes one buffer may hold`,
    );
  }
  const cos = new Float32Array(maxPos * half), sin = new Float32Array(maxPos * half);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      // float32 like run.c: freq = 1 / powf(10000, headDim_i / head_size); val = pos * freq
      const freq = Math.fround(1 / Math.fround(Math.pow(base, Math.fround((2 * i) / headDim))));
      const val = Math.fround(p * freq);
      cos[p * half + i] = Math.cos(val);
      sin[p * half + i] = Math.sin(val);
    }
  }
  return { cos, sin };
}

/**
 * Index of the largest element, NaN passed over (the first one on ties; the last index when every
 * element is NaN).
 *
 * @param x values
 * @returns the argmax index
 * @throws ShapeError for an empty array (0 would name an element it does not have);
 *   InvalidValueError for x not an array
 */
export function argmax(x: Float32Array): number {
  if (typeof x !== "object" || x === null || typeof x.length !== "number") {
    throw new InvalidValueError(`argmax of ${typeName(x)}, expected an array of numbers`);
  }
  if (x.length === 0) throw new ShapeError("argmax of an empty array");
  // a NaN compares false both ways: it never wins, and a NaN first entry is passed over too
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best] || x[best] !== x[best]) best = i;
  return best;
}

/**
 * Attention of one query over n keys and values (row-major n × d): softmax(K q / √d)ᵀ V, the max
 * subtracted before exp for stability. The array types choose the precision: float32 arrays round
 * the weights and output as llama2.c does, float64 arrays keep the analyzer's full precision.
 *
 * @param q query, d elements from qOffset
 * @param keys n × d keys
 * @param values n × d values
 * @param n positions
 * @param d head dimension
 * @param weights at least n elements; overwritten with the attention weights α
 * @param out d outputs, overwritten
 * @param qOffset where the query starts in q
 * @throws ShapeError, out and weights unchanged, for n or d not an integer ≥ 1 (no positions gave
 *   zeros, d = 0 or NaN left out as it was), qOffset not an integer ≥ 0, or an array shorter than
 *   they need (reads past it were NaN)
 */
export function attention(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  n: number,
  d: number,
  weights: Float32Array | Float64Array,
  out: Float32Array | Float64Array,
  qOffset = 0,
): void {
  if (!_isSize(n, 1) || !_isSize(d, 1) || !_isSize(qOffset)) {
    throw new ShapeError(
      `attention of n = ${showValue(n)} positions, d = ${showValue(d)}, qOffset ${
        showValue(qOffset)
      }: ` +
        `expected integers n, d ≥ 1 and qOffset ≥ 0`,
    );
  }
  if (
    q.length < qOffset + d || keys.length < n * d || values.length < n * d ||
    weights.length < n || out.length < d
  ) {
    throw new ShapeError(
      `attention over ${n} × ${d}: q has ${q.length} elements (query at ${qOffset}), ` +
        `keys ${keys.length}, values ${values.length}, weights ${weights.length}, ` +
        `out ${out.length}`,
    );
  }
  const scale = 1 / Math.sqrt(d);
  let max = -Infinity;
  for (let t = 0; t < n; t++) {
    let s = 0;
    const o = t * d;
    for (let i = 0; i < d; i++) s += q[qOffset + i] * keys[o + i];
    s *= scale;
    weights[t] = s;
    // the max of the scores as stored: a Float32Array rounds them, and e^{stored − unrounded max}
    // of a score near 1e10 overflowed (one position gave Infinity, not its value)
    if (weights[t] > max) max = weights[t];
  }
  let sum = 0;
  for (let t = 0; t < n; t++) {
    const e = Math.exp(weights[t] - max);
    weights[t] = e;
    sum += e;
  }
  const inv = 1 / sum;
  out.fill(0, 0, d);
  for (let t = 0; t < n; t++) {
    const w = weights[t] * inv;
    weights[t] = w;
    const o = t * d;
    for (let i = 0; i < d; i++) out[i] += w * values[o + i];
  }
}
