/**
 * Host side of the fused WASM attention (asm/assembly/attention.ts): one module instance per
 * cache, whose linear memory holds the cache's pages (a {@linkcode PageArena}) and the per-call
 * scratch. `attendSegment` runs the kernel over one page (or one token-major run copied into the
 * scratch) for all query heads of a KV head and leaves one flash-decoding partial per head.
 *
 * Browser compatible (compiles the embedded module synchronously; browsers allow that off the main
 * thread or for small modules).
 *
 * @example
 * ```ts
 * import { WasmAttention } from "./wasm_attention.ts";
 * import { tsCodec } from "../../codecs/mod.ts";
 * const wa = new WasmAttention();
 * const fp32 = tsCodec("fp32");
 * wa.reserve(4, 2, 1);
 * wa.q().set([1, 0, 0, 0]);
 * const words = (x: number[]) => new Uint32Array(new Float32Array(x).buffer); // fp32 pages hold f32 bits
 * wa.segK().set(words([1, 0, 0, 0, 0, 0, 0, 0]));
 * wa.segV().set(words([1, 2, 3, 4, 5, 6, 7, 8]));
 * wa.attendSegment(fp32, wa.segKPtr, fp32, wa.segVPtr, 2, 2, 4, 1);
 * const out = wa.out(); // [m, l, acc…]
 * // the kernel's exp is an f32 polynomial (about 1 ulp of f32), so l is compared to 1e-6
 * if (out[0] !== 0.5 || Math.abs(out[1] - (1 + Math.exp(-0.5))) > 1e-6) {
 *   throw new Error("scores 0.5 and 0");
 * }
 * ```
 * @module
 */

import type { Codec } from "../../codecs/mod.ts";
import { checkWasmModule, wasmModuleSync } from "../../codecs/wasm.ts";
import { CapacityError } from "../errors.ts";
import { PageArena } from "./page_arena.ts";

interface AttentionKernels {
  readonly memory: WebAssembly.Memory;
  heapBase(): number;
  attendScratchBytes(d: number, cap: number, hq: number): number;
  intQueryBytes(d: number, hq: number): number;
  intQuery(qPtr: number, hq: number, d: number): void;
  attendPage(
    kKind: number,
    kBits: number,
    kG: number,
    kWpg: number,
    kScaled: number,
    kChannel: number,
    kPtr: number,
    vKind: number,
    vBits: number,
    vG: number,
    vWpg: number,
    vScaled: number,
    vChannel: number,
    vPtr: number,
    n: number,
    cap: number,
    d: number,
    hq: number,
    qPtr: number,
    outPtr: number,
    scorePtr: number,
    scratch: number,
    flags: number,
    ropePtr: number,
    ropeSpan: number,
    positionsPtr: number,
    startsPtr: number,
  ): void;
}

/** attendPage flags (asm/assembly/attention.ts). */
const FLAG_SCORES = 1, FLAG_MERGE = 2, FLAG_INTDOT = 4;

/** Options of a {@linkcode WasmAttention}. */
export interface WasmAttentionOptions {
  /**
   * Integer dot products for int2/int4/int8 g32 pages (asm/assembly/int_dot.ts, mirrored by
   * core/cache/int_dot.ts): faster, and within intDotErrorBound of exact attention. Default false.
   */
  integerDot?: boolean;
  /**
   * The compiled module to instantiate (either build of wasmBytes, codecs/wasm.ts). Default: the
   * one the codecs use.
   */
  module?: WebAssembly.Module;
}

/** One module instance: page arena, scratch, and the attention kernel. */
export class WasmAttention {
  /** Where the cache's pages live. */
  readonly arena: PageArena;
  readonly #k: AttentionKernels;
  #scratch = 0;
  #scratchBytes = 0;
  #d = 0;
  #hq = 0;
  #tokens = 0;
  #segWords = 0;
  /** Byte offset of the query heads (f32, hq × d). */
  qPtr = 0;
  /** Byte offset of the kernel's output (f64, hq × (d + 2)). */
  outPtr = 0;
  /** Byte offset of the scores (f64, hq × tokens). */
  scorePtr = 0;
  /** Byte offset of the token-major key run copied per call (sinks and window). */
  segKPtr = 0;
  /** Byte offset of the matching value run. */
  segVPtr = 0;
  #kernelPtr = 0;
  #ropePtr = 0;
  #ropeSpan = 0;
  #positionsPtr = 0;
  /** Byte offset of the first positions of a page's key groups (i32, one per token at most). */
  #startsPtr = 0;
  readonly #flags: number;

  /**
   * Instantiates the module the codecs use (codecs/wasm.ts `wasmModuleSync`: compiled once per
   * process, or the one given to `useWasmModule`).
   * @param options integer dot products or exact arithmetic, and the module
   * @throws {InvalidValueError} when `module` is not this version's kvprec module (codecs/wasm.ts
   *   checkWasmModule)
   */
  constructor(options: WasmAttentionOptions = {}) {
    this.#flags = options.integerDot ? FLAG_INTDOT : 0;
    const module = options.module ?? wasmModuleSync();
    if (options.module !== undefined) checkWasmModule(module);
    this.#k = new WebAssembly.Instance(module, {}).exports as unknown as AttentionKernels;
    this.arena = new PageArena(this.#k.memory, this.#k.heapBase());
  }

  /**
   * Makes the scratch large enough for `tokens` tokens per call, d, hq heads and `segWords` words
   * per copied K or V run; may grow memory (views taken before are then stale).
   * @param d head dimension
   * @param tokens most tokens one kernel call sees
   * @param hq query heads per KV head
   * @param segWords words of the copied key (and value) run
   * @throws CapacityError when memory cannot grow (the previous scratch is kept)
   */
  reserve(d: number, tokens: number, hq: number, segWords = tokens * d): void {
    if (d === this.#d && hq === this.#hq && tokens <= this.#tokens && segWords <= this.#segWords) {
      return;
    }
    // at least double what grows: the freed block waits in a free list of its exact size, which a
    // run of slightly larger requests (a window filling) never asks for again
    if (d === this.#d && hq === this.#hq) {
      if (tokens > this.#tokens) tokens = Math.max(tokens, 2 * this.#tokens);
      if (segWords > this.#segWords) segWords = Math.max(segWords, 2 * this.#segWords);
    }
    tokens = Math.max(tokens, this.#tokens);
    segWords = Math.max(segWords, this.#segWords);
    const sizes = [
      4 * hq * d + this.#k.intQueryBytes(d, hq),
      8 * hq * (d + 2),
      8 * hq * tokens,
      4 * segWords,
      4 * segWords,
      this.#k.attendScratchBytes(d, tokens, hq),
      4 * tokens,
    ].map(PageArena.blockBytes);
    const bytes = sizes.reduce((a, b) => a + b, 0);
    let scratch: number;
    try {
      scratch = this.arena.alloc(bytes); // before the old block is freed: a failure keeps it
    } catch (cause) {
      throw new CapacityError(
        `no memory for ${bytes} bytes of attention scratch ` +
          `(${cause instanceof Error ? cause.message : String(cause)})`,
        { cause },
      );
    }
    if (this.#scratchBytes) this.arena.free(this.#scratch, this.#scratchBytes);
    this.#scratch = scratch;
    this.#scratchBytes = bytes;
    let p = this.#scratch;
    [
      this.qPtr,
      this.outPtr,
      this.scorePtr,
      this.segKPtr,
      this.segVPtr,
      this.#kernelPtr,
      this.#startsPtr,
    ] = sizes.map((s) => (p += s) - s);
    this.#d = d;
    this.#hq = hq;
    this.#tokens = tokens;
    this.#segWords = segWords;
  }

  /**
   * The query heads' f32 view.
   * @returns hq × d floats
   */
  q(): Float32Array {
    return new Float32Array(this.arena.memory.buffer, this.qPtr, this.#hq * this.#d);
  }

  /**
   * Prepares the query heads just written to q() for the integer path (rounding them to i16); call
   * after every q() update when integerDot is on. A no-op otherwise.
   */
  prepareQuery(): void {
    if (this.#flags & FLAG_INTDOT) this.#k.intQuery(this.qPtr, this.#hq, this.#d);
  }

  /**
   * Keys of the next attendSegment calls are stored before RoPE (core/cache/key_rope.ts): the
   * kernel turns each decoded key group forward. `setRope(0)` turns it off.
   * @param offsets byte offset of the offsets' table (KeyRope.kernelTables), 0: off
   * @param span offsets the table holds (at least the key format's group; its rows are token-major)
   * @param positions byte offset of the positions' table
   * @param starts first position of each key group of the page (at most the reserved tokens)
   */
  setRope(offsets: number, span = 0, positions = 0, starts?: Int32Array): void {
    this.#ropePtr = offsets;
    this.#ropeSpan = span;
    this.#positionsPtr = positions;
    if (offsets !== 0 && starts) {
      new Int32Array(this.arena.memory.buffer, this.#startsPtr, starts.length).set(starts);
    }
  }

  /**
   * The copied key run's words.
   * @returns the view
   */
  segK(): Uint32Array {
    return this.arena.u32(this.segKPtr, this.#segWords);
  }

  /**
   * The copied value run's words.
   * @returns the view
   */
  segV(): Uint32Array {
    return this.arena.u32(this.segVPtr, this.#segWords);
  }

  /**
   * The last call's partials: per head [m, l, acc_0 … acc_{d−1}].
   * @returns hq × (d + 2) doubles
   */
  out(): Float64Array {
    return new Float64Array(this.arena.memory.buffer, this.outPtr, this.#hq * (this.#d + 2));
  }

  /** Empties the running partials (l = 0) before a sequence of merging attendSegment calls. */
  clearOut(): void {
    this.out().fill(0);
  }

  /**
   * The last call's scores q_h·k_t/√d at [h·n + t] (written when attendSegment was asked to).
   * @param n tokens of the last call
   * @returns hq × n doubles
   */
  scores(n: number): Float64Array {
    return new Float64Array(this.arena.memory.buffer, this.scorePtr, this.#hq * n);
  }

  /**
   * Runs the fused kernel over n tokens stored at kPtr/vPtr (PAGES.md layout of the codecs'
   * formats; channel-axis formats channel-major with `cap` tokens per channel).
   * @param kc key codec
   * @param kPtr byte offset of the key words
   * @param vc value codec
   * @param vPtr byte offset of the value words
   * @param n valid tokens (> 0, ≤ the reserved tokens)
   * @param cap tokens per channel of channel-major blocks (the page capacity)
   * @param d head dimension (a multiple of 4)
   * @param hq query heads sharing this KV head
   * @param scores write the scores (see scores())
   * @param merge merge into the running partials (see clearOut()) instead of overwriting them
   * @param exact decode every element even when integer dot products are on (the window and
   *   sinks: the TS reference attends them exactly)
   */
  attendSegment(
    kc: Codec,
    kPtr: number,
    vc: Codec,
    vPtr: number,
    n: number,
    cap: number,
    d: number,
    hq: number,
    scores = true,
    merge = false,
    exact = false,
  ): void {
    const k = kc.spec, v = vc.spec;
    this.#k.attendPage(
      k.kindId,
      k.bits,
      k.group,
      k.wordsPerGroup,
      k.scaled ? 1 : 0,
      k.axis === "channel" ? 1 : 0,
      kPtr,
      v.kindId,
      v.bits,
      v.group,
      v.wordsPerGroup,
      v.scaled ? 1 : 0,
      v.axis === "channel" ? 1 : 0,
      vPtr,
      n,
      cap,
      d,
      hq,
      this.qPtr,
      this.outPtr,
      this.scorePtr,
      this.#kernelPtr,
      (scores ? FLAG_SCORES : 0) | (merge ? FLAG_MERGE : 0) |
        (exact ? this.#flags & ~FLAG_INTDOT : this.#flags),
      this.#ropePtr,
      this.#ropeSpan,
      this.#positionsPtr,
      this.#startsPtr,
    );
  }
}
