/**
 * Keys stored before RoPE. A cache receives keys after RoPE, whose channel pairs turn with position:
 * a per-channel group of 32 tokens then spans the whole circle of a fast pair, and its scale with
 * it. Rotated back to before RoPE, a channel keeps its own scale (KVQuant's observation), so
 * per-channel codes lose less. Pages store the un-rotated keys; attention rotates the decoded keys
 * forward again with the same table, the model's own angles (core/tensor.ts ropeTable).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { KeyRope } from "./key_rope.ts";
 * const rope = new KeyRope(4, 16, 10000);
 * const k = Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8); // two tokens at positions 5 and 6
 * const pre = k.slice();
 * rope.unrotate(pre, 2, 5);
 * rope.rotateRun(pre, 2, 5);
 * if (pre.some((x, i) => Math.abs(x - k[i]) > 1e-6)) throw new Error("back and forth");
 * ```
 * @module
 */

import { ropeTable } from "../tensor.ts";

/** The RoPE angles of one head dimension and the rotations a pre-RoPE key cache needs. */
export class KeyRope {
  /** cos, position-major [pos · d/2 + i]. */
  readonly cos: Float32Array;
  /** sin, position-major. */
  readonly sin: Float32Array;
  readonly #d: number;
  readonly #maxPos: number;

  /**
   * Precomputes the angles.
   * @param headDim head dimension (even)
   * @param maxPos positions
   * @param base the model's RoPE base
   */
  constructor(headDim: number, maxPos: number, base: number) {
    ({ cos: this.cos, sin: this.sin } = ropeTable(headDim, maxPos, base));
    this.#d = headDim;
    this.#maxPos = maxPos;
  }

  /**
   * Rotates `count` consecutive token-major keys back to before RoPE, in place.
   * @param x count × d keys
   * @param count tokens
   * @param pos position of the first
   */
  unrotate(x: Float32Array, count: number, pos: number): void {
    this.#turn(x, count, pos, -1);
  }

  /**
   * Rotates `count` consecutive token-major pre-RoPE keys forward, in place.
   * @param x count × d keys
   * @param count tokens
   * @param pos position of the first
   */
  rotateRun(x: Float32Array, count: number, pos: number): void {
    this.#turn(x, count, pos, 1);
  }

  /**
   * Rotates the decoded keys of a page forward, in place: runs of `group` consecutive tokens whose
   * first positions are `starts`.
   * @param x n × d keys, token-major
   * @param n tokens (a multiple of group)
   * @param starts first position of each run
   * @param group tokens per run
   */
  rotateGroups(x: Float32Array, n: number, starts: Int32Array, group: number): void {
    const d = this.#d;
    for (let g = 0; g * group < n; g++) {
      this.rotateRun(x.subarray(g * group * d), group, starts[g]);
    }
  }

  /**
   * The table as the WASM kernel reads it: cos then sin, each pair-major [i · maxPos + pos], so
   * that four consecutive positions are one vector load.
   * @returns d × maxPos floats
   */
  pairMajor(): Float32Array {
    const half = this.#d / 2, P = this.#maxPos;
    const out = new Float32Array(2 * half * P);
    for (let p = 0; p < P; p++) {
      for (let i = 0; i < half; i++) {
        out[i * P + p] = this.cos[p * half + i];
        out[(half + i) * P + p] = this.sin[p * half + i];
      }
    }
    return out;
  }

  // x' = R(±θ_p) x per pair, rounded once to f32 from exact products (the WASM kernel rounds each
  // product: they agree within an f32 ulp or two)
  #turn(x: Float32Array, count: number, pos: number, sign: number): void {
    const d = this.#d, half = d / 2;
    for (let t = 0; t < count; t++) {
      const row = t * d, at = (pos + t) * half;
      for (let i = 0; i < half; i++) {
        const c = this.cos[at + i], s = sign * this.sin[at + i];
        const a = x[row + 2 * i], b = x[row + 2 * i + 1];
        x[row + 2 * i] = a * c - b * s;
        x[row + 2 * i + 1] = a * s + b * c;
      }
    }
  }
}
