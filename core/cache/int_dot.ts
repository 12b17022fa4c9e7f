/**
 * The TypeScript reference of the integer-dot-product attention over one page
 * (asm/assembly/int_dot.ts, PAGES.md "Integer dot products"): every rounding step of the WASM
 * kernel taken in the same order in f32 (Math.fround), so the two agree to the last bit of every
 * weight and rounded product. It serves int2/int4/int8 pages with groups of 32: keys along tokens
 * (int4/int8 also along channels), values along tokens; {@linkcode intDotServes} says which.
 *
 * The arithmetic differs from exact attention over decoded values in two roundings, both small
 * beside the quantization error of the codes (PAGES.md, "Error"): for token-axis keys the query to
 * integers (|q − σq̂| ≤ σ/2, σ = max|q|/127 against int2 and int4 codes, which the relaxed-SIMD
 * build multiplies as i8, and max|q|/32767 against int8 codes), for channel-axis keys the products
 * q·s of query and key scale per channel and token group (|u − ρû| ≤ ρ/2), and for values the
 * products w·s of softmax weight and value scale per head and group.
 * {@linkcode intDotErrorBound} bounds their effect on the page's output.
 *
 * @example
 * ```ts
 * import { intDotServes } from "./int_dot.ts";
 * import { getFormat } from "../../codecs/mod.ts";
 * const token = getFormat("int4-g32-token"), channel = getFormat("int4-g32-channel");
 * if (!intDotServes(channel, token, 128, 128)) throw new Error("KIVI-style int4 is served");
 * if (intDotServes(token, channel, 128, 128)) throw new Error("channel-axis values are not");
 * ```
 * @module
 */

import type { FormatSpec } from "../../codecs/mod.ts";
import { f16BitsToF32 } from "../../codecs/float_bits.ts";
import { expF32, nearestEven } from "./kernel_score.ts";

const fr = Math.fround;

/** Whether a format is int2, int4 or int8 with groups of 32. */
function int32Group(spec: FormatSpec): boolean {
  return spec.kind === "int" && [2, 4, 8].includes(spec.bits) && spec.group === 32;
}

/**
 * Whether the integer path serves pages of these key and value formats, head_dim d and `cap`
 * tokens per page (any number of query heads): int2/int4/int8 g32 values along tokens, keys of the
 * same kinds along tokens or int4/int8 along channels (then d ≤ 256 and cap a multiple of 32), d a multiple of 32, cap a multiple
 * of 4 and ≤ 256.
 */
export function intDotServes(
  kSpec: FormatSpec,
  vSpec: FormatSpec,
  d: number,
  cap: number,
): boolean {
  if (!int32Group(kSpec) || !int32Group(vSpec) || vSpec.axis !== "token") return false;
  if (d % 32 !== 0 || cap % 4 !== 0 || cap > 256) return false;
  if (kSpec.axis === "token") return true;
  return kSpec.axis === "channel" && kSpec.bits !== 2 && d <= 256 && cap % 32 === 0;
}

/** The rounded query of one head: σ, q̂ (natural order) and per group Σq/σ. */
export interface RoundedQuery {
  /** The head's scale: f32(max|q| / limit), 0 for a zero head. */
  sigma: number;
  /** q̂ = nearest(f32(q/σ)) per element, natural order. */
  qi: Int16Array;
  /** Per group of 32: f32(Σ q / σ), the sum in f64. */
  qv: Float32Array;
}

/** The query's integer range against codes of `bits` bits: i8 for int2 and int4, i16 for int8. */
export function queryLimit(bits: number): number {
  return bits === 8 ? 32767 : 127;
}

/**
 * σ = f32(max|q| / limit), q̂ = nearest(f32(q/σ)) clamped to ±limit, qv_g = f32(Σ_{i∈g} q_i / σ)
 * (sum in f64, groupSum's order), as asm/assembly/int_dot.ts intQuery.
 */
export function roundQuery(q: Float32Array, limit: number): RoundedQuery {
  const d = q.length;
  let mx = 0;
  for (let i = 0; i < d; i++) mx = Math.max(mx, Math.abs(q[i]));
  const sigma = fr(mx / limit);
  const qi = new Int16Array(d), qv = new Float32Array(d / 32);
  for (let g = 0; g < d / 32; g++) {
    const sum = groupSum(q, g * 32);
    for (let j = 0; j < 32; j++) {
      const x = q[g * 32 + j];
      // clamped: where σ is subnormal its few bits can put q/σ past the limit (the kernel clamps)
      qi[g * 32 + j] = sigma > 0
        ? Math.min(Math.max(nearestEven(fr(x / sigma)), -limit), limit)
        : 0;
    }
    qv[g] = sigma > 0 ? fr(sum / sigma) : 0;
  }
  return { sigma, qi, qv };
}

/**
 * Σ of q[at … at + 32) in f64 in the kernel's order (intQuery's _groupSum): element j into chain
 * j mod 8, chain k = Σ in order; then ((c0 + c2) + (c4 + c6)) + ((c1 + c3) + (c5 + c7)).
 */
function groupSum(q: Float32Array, at: number): number {
  const c = [0, 0, 0, 0, 0, 0, 0, 0];
  for (let j = 0; j < 32; j++) c[j % 8] += q[at + j];
  return ((c[0] + c[2]) + (c[4] + c[6])) + ((c[1] + c[3]) + (c[5] + c[7]));
}

/** Group header: scale and minimum (fp16 low and high half). */
function header(words: Uint32Array, at: number): [number, number] {
  const w = words[at];
  return [f16BitsToF32(w & 0xffff), f16BitsToF32(w >>> 16)];
}

/** Code j (0 … 31) of the group whose header is at word `at`. */
function code(words: Uint32Array, at: number, bits: number, j: number): number {
  const per = 32 / bits;
  return (words[at + 1 + Math.floor(j / per)] >>> ((j % per) * bits)) & ((1 << bits) - 1);
}

/** The groups of a page decoded once: 32 codes, scale and minimum per group, in word order. */
interface Groups {
  codes: Uint8Array;
  scale: Float32Array;
  min: Float32Array;
}

function decodeGroups(words: Uint32Array, spec: FormatSpec, groups: number): Groups {
  const codes = new Uint8Array(groups * 32);
  const scale = new Float32Array(groups), min = new Float32Array(groups);
  const mask = (1 << spec.bits) - 1;
  for (let g = 0; g < groups; g++) {
    const at = g * spec.wordsPerGroup;
    [scale[g], min[g]] = header(words, at);
    // codes LSB-first in each word (32 / bits whole codes per word)
    for (let i = 0, j = g * 32; i < spec.codeWords; i++) {
      let x = words[at + 1 + i];
      for (let k = 0; k < 32 / spec.bits; k++, x >>>= spec.bits) codes[j++] = x & mask;
    }
  }
  return { codes, scale, min };
}

/** One page as the integer path reads it (PAGES.md layout; intDotServes). */
export interface IntDotPage {
  /** Key format. */
  kSpec: FormatSpec;
  /** Key words: token-major, or channel-major with cap tokens per channel. */
  k: Uint32Array;
  /** Value format (intDotServes). */
  vSpec: FormatSpec;
  /** Value words, token-major. */
  v: Uint32Array;
  /** Tokens (a multiple of 32 for channel-axis keys). */
  n: number;
  /** Head dimension, a multiple of 32. */
  d: number;
  /** Tokens per page. */
  cap: number;
}

/**
 * The kernel's partials for one page: per head [m, l, acc_0 … acc_{d−1}] as attendPage writes them
 * with the integer flag.
 * @param page the page
 * @param q hq × d query heads
 * @returns hq × (d + 2) doubles
 */
export function intDotPartials(page: IntDotPage, q: Float32Array): Float64Array {
  const { kSpec, vSpec, n, d, cap } = page;
  const hq = q.length / d, gpt = d / 32;
  const out = new Float64Array(hq * (d + 2));
  const inv32 = fr(1 / Math.sqrt(d));
  const w = new Float32Array(n), scratch = productScratch(n);
  // the integer sums are exact in f64 whatever their order; every f32 step keeps the kernel's
  const K = decodeGroups(page.k, kSpec, kSpec.axis === "channel" ? d * (cap / 32) : n * gpt);
  const V = decodeGroups(page.v, vSpec, n * gpt);
  for (let h = 0; h < hq; h++) {
    const qh = q.subarray(h * d, (h + 1) * d);
    const score = kSpec.axis === "channel"
      ? channelScores(K, page, qh)
      : tokenScores(K, n, qh, kSpec.bits);
    // 2. softmax weights
    let m32 = -Infinity;
    for (let t = 0; t < n; t++) m32 = Math.max(m32, score[t]);
    // + 0: a −0 max is +0, as in the kernel, whose lane max keeps whichever zero came first
    m32 = fr(m32 * inv32) + 0;
    let l = 0;
    for (let t = 0; t < n; t++) {
      w[t] = expF32(fr(fr(score[t] * inv32) - m32));
      l += w[t];
    }
    const o = h * (d + 2);
    out[o] = m32;
    out[o + 1] = l;
    valueSums(w, n, gpt, V, scratch, out, o + 2);
  }
  return out;
}

/** 3. values: per group û_t = nearest(w_t·s_t·32767/max), integer sums, ·ρ + Σ w·μ (f32). */
function valueSums(
  w: Float32Array,
  n: number,
  gpt: number,
  V: Groups,
  scratch: ProductScratch,
  out: Float64Array,
  at: number,
): void {
  for (let g = 0; g < gpt; g++) {
    const { rho, offset } = roundedProducts(w, n, (t) => t * gpt + g, V, scratch);
    for (let c = 0; c < 32; c++) out[at + g * 32 + c] = fr(fr(fr(scratch.sums[c]) * rho) + offset);
  }
}

/**
 * Whether the kernel sums a page's values with integers whatever its keys' path (integerDot on):
 * int2/int4/int8 g32 values along tokens, head_dim a multiple of 32, cap a multiple of 4 and ≤ 256.
 */
export function intValuesServe(vSpec: FormatSpec, d: number, cap: number): boolean {
  return int32Group(vSpec) && vSpec.axis === "token" && d % 32 === 0 && cap % 4 === 0 &&
    cap <= 256;
}

/**
 * One page's values as the kernel's integer value pass reads them, for a page whose keys took the
 * exact path: decoded once (per attend call), then summed per query head with {@linkcode sums}.
 */
export class IntValues {
  readonly #n: number;
  readonly #gpt: number;
  readonly #groups: Groups;
  readonly #scratch: ProductScratch;

  /**
   * Decodes a page's value codes, scales and minima.
   * @param vSpec value format (intValuesServe)
   * @param v value words, token-major
   * @param n tokens
   * @param d head dimension
   */
  constructor(vSpec: FormatSpec, v: Uint32Array, n: number, d: number) {
    this.#n = n;
    this.#gpt = d / 32;
    this.#groups = decodeGroups(v, vSpec, n * this.#gpt);
    this.#scratch = productScratch(n);
  }

  /**
   * The kernel's value sums for one head: Σ_t w_t·v_t with w·s rounded to i16 per group, as
   * attendPage's integer value pass (f32 per channel).
   * @param w the head's f32 softmax weights of the page's tokens (kernel step 2)
   * @param out destination of the d sums
   */
  sums(w: Float32Array, out: Float64Array): void {
    valueSums(w, this.#n, this.#gpt, this.#groups, this.#scratch, out, 0);
  }
}

/** Scratch of {@linkcode roundedProducts} for up to m items. */
interface ProductScratch {
  u: Float32Array;
  uq: Float64Array;
  sums: Float64Array;
}

function productScratch(m: number): ProductScratch {
  return { u: new Float32Array(m), uq: new Float64Array(m), sums: new Float64Array(32) };
}

/**
 * The kernel's rounded products over m items (tokens of a value group, or channels of a key token
 * group), item i in group `group(i)` of G: u_i = f32(x_i·s_i), ρ = f32(max|u| / 32767), û_i =
 * nearest(f32(u_i·f32(32767 / max|u|))); leaves Σ_i û_i·code_{i,k} in scratch.sums (exact in f64
 * whatever the order) and returns ρ and the offset Σ_i x_i·μ_i (f32, in lanes i mod 4). Output k is
 * then f32(f32(f32(sums_k)·ρ) + offset).
 */
function roundedProducts(
  x: ArrayLike<number>,
  m: number,
  group: (i: number) => number,
  G: Groups,
  scratch: ProductScratch,
): { rho: number; offset: number } {
  const { u, uq, sums } = scratch;
  let U = 0;
  const sm = [0, 0, 0, 0];
  for (let i = 0; i < m; i++) {
    const gi = group(i);
    u[i] = fr(x[i] * G.scale[gi]);
    U = Math.max(U, Math.abs(u[i]));
    sm[i % 4] = fr(sm[i % 4] + fr(x[i] * G.min[gi]));
  }
  const rho = fr(U / 32767), inv = U > 0 ? fr(32767 / U) : 0;
  // |u| ≤ U, so |u·inv| ≤ 32767·(1 + 2⁻²³) and rounds to at most 32767. Below U ≈ 9.6e-35,
  // 32767/U overflows f32: u·inv is then ±Inf or NaN, which the kernel's rounding (add 1.5·2²³,
  // keep the low 16 bits) turns into 0, so the mirror does too (it once returned NaN there)
  for (let i = 0; i < m; i++) {
    const y = fr(u[i] * inv);
    uq[i] = Number.isFinite(y) ? nearestEven(y) : 0;
  }
  sums.fill(0);
  for (let i = 0; i < m; i++) {
    const y = uq[i], base = group(i) * 32;
    for (let k = 0; k < 32; k++) sums[k] += y * G.codes[base + k];
  }
  return { rho, offset: fr(fr(sm[0] + sm[1]) + fr(sm[2] + sm[3])) };
}

/**
 * Raw scores (not yet /√d) of one head over token-axis keys: per group the integer sum Σ q̂·code
 * (exact, so the kernel's lane order does not matter), its f32 times s added in group order, then
 * the minimum terms μ_g·qv_g (summed in group order), and σ scales the total.
 */
function tokenScores(K: Groups, n: number, q: Float32Array, bits: number): Float32Array {
  const gpt = q.length / 32;
  const { sigma, qi, qv } = roundQuery(q, queryLimit(bits));
  const score = new Float32Array(n);
  for (let t = 0; t < n; t++) {
    let a = 0;
    for (let g = 0; g < gpt; g++) {
      const gi = t * gpt + g, base = gi * 32;
      let sum = 0;
      for (let i = 0; i < 32; i++) sum += qi[g * 32 + i] * K.codes[base + i];
      a = fr(a + fr(fr(sum) * K.scale[gi]));
    }
    let mins = fr(K.min[t * gpt] * qv[0]);
    for (let g = 1; g < gpt; g++) mins = fr(mins + fr(K.min[t * gpt + g] * qv[g]));
    score[t] = fr(fr(a + mins) * sigma);
  }
  return score;
}

/**
 * Raw scores of one head over channel-axis keys: per token group j, û_c = nearest(f32(q_c·s_{c,j})
 * · f32(32767 / max_c |q_c·s_{c,j}|)), score = f32(f32(f32(Σ_c û_c·code_{c,t})·ρ) + Σ_c q_c·μ_{c,j})
 * with ρ = f32(max / 32767) and the last sum in lanes c mod 4.
 */
function channelScores(K: Groups, page: IntDotPage, q: Float32Array): Float32Array {
  const { n, d, cap } = page;
  const perChannel = cap / 32;
  const score = new Float32Array(n);
  const scratch = productScratch(d);
  for (let j = 0; j < n / 32; j++) {
    const { rho, offset } = roundedProducts(q, d, (c) => c * perChannel + j, K, scratch);
    for (let i = 0; i < 32; i++) score[j * 32 + i] = fr(fr(fr(scratch.sums[i]) * rho) + offset);
  }
  return score;
}

/**
 * A bound on |integer path − exact attention| for one head's output over a page, from the two
 * roundings: each score moves by at most δ = (step/2)·Σ_i |x̂_i − μ| / √d, plus the f32 rounding of
 * its sums (each of its r roundings moves it by at most 2⁻²⁴ of Σ_i |q_i|·(|x̂_i − μ| + 2|μ|) / √d,
 * r = 4·d/32 + 8 for token-axis keys, d/4 + 8 for channel-axis keys, whose minimum terms sum in four
 * lanes: keys with a large common offset μ once passed a bound that left it out), which moves the
 * softmax output by at most (e^{2δ} − 1)·max|v̂|; each value channel by at most (ρ_g/2)·Σ_t
 * code_{t,c} / Σ_t w_t, times e^{4δ} as the kernel's weights are its own. Returns the sum, with
 * 1e-6·max|v̂| for the value pass's f32 arithmetic.
 * @param page the page
 * @param q one query head, length d
 * @param weights the exact softmax weights e^{s_t − max s} of the page's n tokens
 * @returns a bound on the largest |Δ| over the head's output channels
 */
export function intDotErrorBound(page: IntDotPage, q: Float32Array, weights: Float64Array): number {
  const { kSpec, k, vSpec, v, n, d, cap } = page;
  const gpt = d / 32, kG = kSpec.wordsPerGroup, vG = vSpec.wordsPerGroup;
  // largest score change: (rounding step / 2) · Σ_i s·code_i, the step σ (token-axis keys, per
  // element of q) or ρ_j (channel-axis keys, per channel product q·s)
  let delta = 0;
  const ulp = 2 ** -24, rootD = Math.sqrt(d);
  if (kSpec.axis === "channel") {
    const perChannel = cap / 32, rounds = d / 4 + 8;
    for (let j = 0; j < n / 32; j++) {
      let U = 0;
      for (let c = 0; c < d; c++) {
        U = Math.max(U, Math.abs(q[c] * header(k, (c * perChannel + j) * kG)[0]));
      }
      for (let i = 0; i < 32; i++) {
        let codes = 0, magnitude = 0;
        for (let c = 0; c < d; c++) {
          const at = (c * perChannel + j) * kG, [sc, mu] = header(k, at);
          const x = code(k, at, kSpec.bits, i);
          codes += x;
          // the rounded product û·ρ is within ρ/2 of q·s
          magnitude += (Math.abs(q[c] * sc) + U / 32767 / 2) * x + 2 * Math.abs(q[c] * mu);
        }
        delta = Math.max(delta, ((U / 32767 / 2) * codes + rounds * ulp * magnitude) / rootD);
      }
    }
  } else {
    const { sigma } = roundQuery(q, queryLimit(kSpec.bits));
    const rounds = 4 * gpt + 8;
    for (let t = 0; t < n; t++) {
      let s = 0, magnitude = 0;
      for (let g = 0; g < gpt; g++) {
        const at = (t * gpt + g) * kG, [sc, mu] = header(k, at);
        for (let j = 0; j < 32; j++) {
          const x = sc * code(k, at, kSpec.bits, j);
          s += x;
          // q̂·σ is within σ/2 of q
          magnitude += (Math.abs(q[g * 32 + j]) + sigma / 2) * (x + 2 * Math.abs(mu));
        }
      }
      delta = Math.max(delta, ((sigma / 2) * s + rounds * ulp * magnitude) / rootD);
    }
  }
  let vmax = 0;
  for (let at = 0; at < n * gpt * vG; at += vG) {
    const [vs, vm] = header(v, at);
    for (let c = 0; c < 32; c++) {
      vmax = Math.max(vmax, Math.abs(vs * code(v, at, vSpec.bits, c) + vm));
    }
  }
  let l = 0, valueErr = 0;
  for (let t = 0; t < n; t++) l += weights[t];
  for (let g = 0; g < gpt; g++) {
    let U = 0, codes = 0;
    for (let t = 0; t < n; t++) {
      const at = (t * gpt + g) * vG;
      U = Math.max(U, weights[t] * header(v, at)[0]);
      for (let c = 0; c < 32; c++) codes = Math.max(codes, code(v, at, vSpec.bits, c));
    }
    valueErr = Math.max(valueErr, (U / 32767 / 2) * codes * n / l);
  }
  // the kernel rounds its own weights, within e^{±2δ} of the exact ones: its ρ_g / Σ_t w_t within
  // e^{4δ} of the one measured above
  return (Math.exp(2 * delta) - 1) * vmax + valueErr * Math.exp(4 * delta) + 1e-6 * vmax;
}
