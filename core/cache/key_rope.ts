/**
 * Channel-axis keys turned back by RoPE within their group. A cache receives keys after RoPE,
 * whose channel pairs turn with position: a per-channel group of 32 tokens then spans the whole
 * circle of a fast pair, and its scale with it. Before RoPE a channel keeps its own scale
 * (KVQuant's observation), so per-channel codes lose less. Rotating token t of a group back by t
 * steps of RoPE (t = 0 for the group's first token) gives the group's tokens the frame of its first
 * position: the keys before RoPE up to one rotation shared by the whole group, which per-channel
 * ranges barely notice. Attention rotates the decoded keys forward by the same t steps, so the round
 * trip is exact up to float rounding whatever the absolute positions, and the angles come from a
 * table of group-size rows that stays in the first-level cache (absolute positions would need a
 * table as large as the keys themselves, read on every attention call).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { KeyRope } from "./key_rope.ts";
 * const rope = new KeyRope(4, 2, 10000);
 * const k = Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8); // one group of two tokens
 * const turned = k.slice();
 * rope.unrotate(turned, 2, 2);
 * rope.rotate(turned, 2, 2);
 * if (turned.some((x, i) => Math.abs(x - k[i]) > 1e-6)) throw new Error("back and forth");
 * ```
 * @module
 */

import { ropeTable } from "../tensor.ts";

/** RoPE's angles for offsets 0 … span − 1 within a group, and the rotations they give. */
export class KeyRope {
  /** cos, offset-major [t · d/2 + i]. */
  readonly cos: Float32Array;
  /** sin, offset-major. */
  readonly sin: Float32Array;
  /** Offsets the table holds: the largest channel group. */
  readonly span: number;
  readonly #d: number;

  /**
   * Precomputes the angles.
   * @param headDim head dimension (even)
   * @param span offsets (the largest channel group a page uses)
   * @param base the model's RoPE base
   */
  constructor(headDim: number, span: number, base: number) {
    ({ cos: this.cos, sin: this.sin } = ropeTable(headDim, span, base));
    this.#d = headDim;
    this.span = span;
  }

  /**
   * Turns token-major keys back by their offset in groups of `group` tokens, in place.
   * @param x count × d keys
   * @param count tokens (a last partial group turns like the start of a whole one)
   * @param group tokens per channel group (≤ span)
   */
  unrotate(x: Float32Array, count: number, group: number): void {
    this.#turn(x, count, group, -1);
  }

  /**
   * Turns token-major keys forward by their offset in groups of `group` tokens, in place.
   * @param x count × d keys
   * @param count tokens (a last partial group turns like the start of a whole one)
   * @param group tokens per channel group (≤ span)
   */
  rotate(x: Float32Array, count: number, group: number): void {
    this.#turn(x, count, group, 1);
  }

  /**
   * The table as the WASM kernel reads it: cos then sin, each pair-major [i · span + t], so that
   * four consecutive offsets are one vector load.
   * @returns d × span floats
   */
  pairMajor(): Float32Array {
    const half = this.#d / 2, S = this.span;
    const out = new Float32Array(2 * half * S);
    for (let t = 0; t < S; t++) {
      for (let i = 0; i < half; i++) {
        out[i * S + t] = this.cos[t * half + i];
        out[(half + i) * S + t] = this.sin[t * half + i];
      }
    }
    return out;
  }

  // x' = R(±θ_t) x per pair, rounded once to f32 from exact products (the WASM kernel rounds each
  // product: they agree within an f32 ulp or two)
  #turn(x: Float32Array, count: number, group: number, sign: number): void {
    const d = this.#d, half = d / 2;
    for (let j = 0; j < count; j++) {
      const row = j * d, at = (j % group) * half;
      for (let i = 0; i < half; i++) {
        const c = this.cos[at + i], s = sign * this.sin[at + i];
        const a = x[row + 2 * i], b = x[row + 2 * i + 1];
        x[row + 2 * i] = a * c - b * s;
        x[row + 2 * i + 1] = a * s + b * c;
      }
    }
  }
}
