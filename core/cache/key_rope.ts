/**
 * Keys stored before RoPE. A cache receives keys after RoPE, whose channel pairs turn with
 * position: a per-channel group of 32 tokens then spans the whole circle of a fast pair, and its
 * scale with it. Rotated back to before RoPE, a channel keeps its own scale (KVQuant's
 * observation), so per-channel codes lose less. Pages store the keys turned back, and attention
 * turns the decoded keys forward again.
 *
 * The turn of the token at offset τ of a group starting at position p0 is R(p0)·R(τ): R(p0) from
 * the model's own angle table (core/tensor.ts ropeTable; one row per group, d floats), R(τ) from a
 * table of G offsets that stays in the first-level cache. Here the two compose per token; the WASM
 * kernel turns the keys by R(τ) and the query back by R(p0) instead (hq·d products per group),
 * where reading the angle of every position would read a table as large as the keys in f32 on every
 * attention call. The round trip is exact up to float rounding whatever the angles' own rounding:
 * forward and back use the same composition. (Turning by τ alone, with no R(p0),
 * stores nothing per group, but leaves each group rotated by its start angle, and per-channel
 * ranges grow: on the fixture INT2 per channel measured KL 0.17 that way against 0.082.)
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { KeyRope } from "./key_rope.ts";
 * const rope = new KeyRope(4, 16, 2, 10000);
 * const k = Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8); // a group of two tokens at positions 6 and 7
 * const turned = k.slice();
 * rope.unrotate(turned, 2, 2, 6);
 * rope.rotate(turned, 2, 2, Int32Array.of(6));
 * if (turned.some((x, i) => Math.abs(x - k[i]) > 1e-6)) throw new Error("back and forth");
 * ```
 * @module
 */

import { ropeTable } from "../tensor.ts";

/** RoPE's angles for every position and for the offsets in a group, and the turns they give. */
export class KeyRope {
  /** Offsets a group's table holds: the largest channel group. */
  readonly span: number;
  readonly #d: number;
  readonly #pos: { cos: Float32Array; sin: Float32Array };
  readonly #off: { cos: Float32Array; sin: Float32Array };

  /**
   * Precomputes the angles.
   * @param headDim head dimension (even)
   * @param maxPos positions
   * @param span offsets in a group (the largest channel group a page uses)
   * @param base the model's RoPE base
   */
  constructor(headDim: number, maxPos: number, span: number, base: number) {
    this.#pos = ropeTable(headDim, maxPos, base);
    this.#off = ropeTable(headDim, span, base);
    this.#d = headDim;
    this.span = span;
  }

  /**
   * Turns `count` consecutive token-major keys back to before RoPE, in place, grouped as pages
   * store them: groups of `group` tokens from position pos.
   * @param x count × d keys
   * @param count tokens
   * @param group tokens per channel group (≤ span)
   * @param pos position of the first token
   */
  unrotate(x: Float32Array, count: number, group: number, pos: number): void {
    for (let g = 0; g * group < count; g++) {
      this.#turn(x, g * group, Math.min(group, count - g * group), pos + g * group, -1);
    }
  }

  /**
   * Turns the decoded keys of a page forward, in place.
   * @param x n × d keys, token-major
   * @param n tokens (a last group may be partial, as the verifier's are)
   * @param group tokens per channel group (≤ span)
   * @param starts first position of each group
   */
  rotate(x: Float32Array, n: number, group: number, starts: Int32Array): void {
    for (let g = 0; g * group < n; g++) {
      this.#turn(x, g * group, Math.min(group, n - g * group), starts[g], 1);
    }
  }

  /**
   * Turns the decoded keys of a page forward by their offset in their group only, as the WASM
   * kernel does (the query takes the group's start: {@linkcode turnQueryBack}), in place.
   * @param x n × d keys, token-major
   * @param n tokens
   * @param group tokens per channel group (≤ span)
   */
  rotateByOffset(x: Float32Array, n: number, group: number): void {
    for (let g = 0; g * group < n; g++) {
      // offset angles are the positions' first rows, whose start turn is cos 1, sin 0 exactly
      this.#turn(x, g * group, Math.min(group, n - g * group), 0, 1);
    }
  }

  /**
   * One query head turned back by a group's start angle in the WASM kernel's f32 steps
   * (asm/assembly/attention.ts `_ropeQuery`): a' = a·C0 + b·S0, b' = b·C0 − a·S0 per pair.
   * @param q the query head, d elements from qAt
   * @param qAt offset of the head in q
   * @param out d elements: the turned query
   * @param p0 the group's first position
   */
  turnQueryBack(q: ArrayLike<number>, qAt: number, out: Float32Array, p0: number): void {
    const half = this.#d / 2, { cos: C, sin: S } = this.#pos;
    for (let i = 0; i < half; i++) {
      const c = C[p0 * half + i], s = S[p0 * half + i];
      const a = q[qAt + 2 * i], b = q[qAt + 2 * i + 1];
      out[2 * i] = Math.fround(a * c) + Math.fround(b * s);
      out[2 * i + 1] = Math.fround(b * c) - Math.fround(a * s);
    }
  }

  /**
   * The forward turn's cos and sin for pair i of the token at offset t of a group at p0, as
   * {@linkcode rotate} computes them in f32 (the verifier bounds a turned key error with them).
   * @param p0 first position of the group
   * @param t offset in the group (< span)
   * @param i channel pair (< d / 2)
   * @returns cos φ and sin φ
   */
  turnOf(p0: number, t: number, i: number): { cos: number; sin: number } {
    const half = this.#d / 2;
    const { cos: C, sin: S } = this.#pos, { cos: c, sin: s } = this.#off;
    const C0 = C[p0 * half + i], S0 = S[p0 * half + i];
    const ct = c[t * half + i], st = s[t * half + i];
    return {
      cos: Math.fround(Math.fround(C0 * ct) - Math.fround(S0 * st)),
      sin: Math.fround(Math.fround(S0 * ct) + Math.fround(C0 * st)),
    };
  }

  /**
   * The tables as the WASM kernel reads them: the offsets' token-major, row τ of 2d floats: d
   * cosines, each pair's twice ([τ · 2d + 2i] and [+ 1]: cos φ), then d signed sines
   * ([τ · 2d + d + 2i]: −sin φ, [+ 1]: sin φ), so a vector of a key's four channels turns by two
   * loads of its row (asm/assembly/attention.ts `_turn`); then the positions' cos and sin
   * interleaved per position, [p · d + i] cos and [p · d + d/2 + i] sin (a group reads one row).
   * @returns the offset table (2d × span floats) and the position table (maxPos × d floats)
   */
  kernelTables(): { offsets: Float32Array; positions: Float32Array } {
    const d = this.#d, half = d / 2, S = this.span, P = this.#pos.cos.length / half;
    const offsets = new Float32Array(2 * d * S);
    for (let t = 0; t < S; t++) {
      for (let i = 0; i < half; i++) {
        const c = this.#off.cos[t * half + i], s = this.#off.sin[t * half + i];
        offsets[t * 2 * d + 2 * i] = c;
        offsets[t * 2 * d + 2 * i + 1] = c;
        offsets[t * 2 * d + d + 2 * i] = -s;
        offsets[t * 2 * d + d + 2 * i + 1] = s;
      }
    }
    const positions = new Float32Array(2 * half * P);
    for (let p = 0; p < P; p++) {
      positions.set(this.#pos.cos.subarray(p * half, (p + 1) * half), p * 2 * half);
      positions.set(this.#pos.sin.subarray(p * half, (p + 1) * half), p * 2 * half + half);
    }
    return { offsets, positions };
  }

  /**
   * The tables as the GPU kernels read them: rows of d floats, a row's cos for pairs 0 … d/2 − 1
   * then its sin; the span offsets' rows first, then every position's.
   * @returns (span + maxPos) × d floats
   */
  angleRows(): Float32Array<ArrayBuffer> {
    const half = this.#d / 2, S = this.span, P = this.#pos.cos.length / half;
    const rows = new Float32Array((S + P) * this.#d);
    const put = (row: number, t: { cos: Float32Array; sin: Float32Array }, from: number) => {
      rows.set(t.cos.subarray(from * half, (from + 1) * half), row * this.#d);
      rows.set(t.sin.subarray(from * half, (from + 1) * half), row * this.#d + half);
    };
    for (let t = 0; t < S; t++) put(t, this.#off, t);
    for (let p = 0; p < P; p++) put(S + p, this.#pos, p);
    return rows;
  }

  // Tokens from..from+count−1 (offsets 0…) of a group at p0: x' = R(±φ) x per pair with cos φ =
  // C0·cτ − S0·sτ, sin φ = S0·cτ + C0·sτ and the turn itself in f32 steps, as the GPU cache's
  // kernels take them, so that both caches store the same words where the GPU's compiler does not
  // fuse the multiply-adds (gpu/NOTES.md, finding 14); the WASM kernel's split of the same turn
  // between query and keys lands a few f32 ulps away
  #turn(x: Float32Array, from: number, count: number, p0: number, sign: number): void {
    const d = this.#d, half = d / 2;
    const { cos: C, sin: S } = this.#pos, { cos: c, sin: s } = this.#off;
    for (let t = 0; t < count; t++) {
      const row = (from + t) * d;
      for (let i = 0; i < half; i++) {
        const C0 = C[p0 * half + i], S0 = S[p0 * half + i];
        const ct = c[t * half + i], st = s[t * half + i];
        const cf = Math.fround(Math.fround(C0 * ct) - Math.fround(S0 * st));
        const sf = sign * Math.fround(Math.fround(S0 * ct) + Math.fround(C0 * st));
        const a = x[row + 2 * i], b = x[row + 2 * i + 1];
        x[row + 2 * i] = Math.fround(a * cf) - Math.fround(b * sf);
        x[row + 2 * i + 1] = Math.fround(a * sf) + Math.fround(b * cf);
      }
    }
  }
}
