/**
 * The WebAssembly SIMD codecs: the {@linkcode Codec} interface over the embedded module built from
 * asm/ (see codecs/_wasm_bytes.ts). Each call copies its input into a {@linkcode WasmArena} once,
 * runs the kernel there and copies the result out once; on error nothing is copied out, so the
 * caller's buffers stay untouched. Encode and decode are bit-identical to the TypeScript reference;
 * `errorBound` is the reference's (it reads only the packed words).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { loadWasmCodecs } from "./wasm.ts";
 * import { tsCodec } from "./ts_codec.ts";
 * const wasm = await loadWasmCodecs();
 * const x = Float32Array.from({ length: 64 }, (_, i) => Math.sin(i));
 * const a = wasm.codec("int4-g32-token").encode(x).words;
 * const b = tsCodec("int4-g32-token").encode(x).words;
 * if (a.join() !== b.join()) throw new Error("WASM and TS encode identically");
 * ```
 * @module
 */

import {
  CorruptDataError,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "../core/errors.ts";
import { WASM_BASE64, WASM_RELAXED_BASE64 } from "./_wasm_bytes.ts";
import {
  checkDecodeArgs,
  checkEncodeArgs,
  CodecBase,
  encodeClamp,
  type EncodeOptions,
  nonFiniteError,
  overlaps,
  rangeError,
} from "./codec.ts";
import { type FormatSpec, getFormat, wordsForLength } from "./format.ts";
import { checkGroupHeaders, tsCodec } from "./ts_codec.ts";
import { WasmArena } from "./wasm_arena.ts";

/**
 * Elements per chunk staged through WASM memory (64 KiB of f32: stays in L2 between the copy and
 * the kernel). A multiple of every group size.
 */
const CHUNK = 16384;

/** The kernels the module exports (pointers are byte offsets into `memory`). */
export interface WasmKernels {
  /** The module's linear memory. */
  readonly memory: WebAssembly.Memory;
  /** First byte free for the host's arena. */
  heapBase(): number;
  /** Kind of the last error a kernel returned: 1 non-finite, 2 out of range, 3 corrupt header. */
  lastErrorKind(): number;
  /** In-place clamp to ±limit, NaN → 0. */
  clampInPlace(src: number, n: number, limit: number): void;
  /** First corrupt group header (asym: `int` rules, else int8s/fp8 rules), or −1. */
  firstBadHeader(src: number, groups: number, wpg: number, asym: number): number;
  /** Asymmetric integer encode. */
  encodeInt(src: number, dst: number, n: number, bits: number, group: number): number;
  /** Asymmetric integer decode. */
  decodeInt(src: number, dst: number, n: number, bits: number, group: number): number;
  /** Symmetric int8 encode. */
  encodeInt8s(src: number, dst: number, n: number, group: number): number;
  /** Symmetric int8 decode. */
  decodeInt8s(src: number, dst: number, n: number, group: number): number;
  /** fp32 copy with finite check. */
  encodeF32(src: number, dst: number, n: number): number;
  /** fp16 (brain = 0) or bf16 (brain = 1) encode. */
  encodeHalf(src: number, dst: number, n: number, brain: number): number;
  /** fp16 or bf16 decode. */
  decodeHalf(src: number, dst: number, n: number, brain: number): void;
  /** Unscaled fp8 encode (bias 7: e4m3, 15: e5m2). */
  encodeFp8(src: number, dst: number, n: number, bias: number): number;
  /** Unscaled fp8 decode. */
  decodeFp8(src: number, dst: number, n: number, bias: number): void;
  /** Scaled fp8 encode. */
  encodeFp8Scaled(src: number, dst: number, n: number, group: number, bias: number): number;
  /** Scaled fp8 decode. */
  decodeFp8Scaled(src: number, dst: number, n: number, group: number, bias: number): number;
}

/**
 * The two builds of the embedded module: v128 SIMD, which every engine with WebAssembly SIMD runs,
 * and the same sources with relaxed SIMD, whose integer-dot key pass multiplies 16 codes per
 * instruction (asm/assembly/int_dot.ts). Both give the same bits for every export.
 */
export type WasmVariant = "simd" | "relaxed-simd";

let _variant: WasmVariant | undefined;

/**
 * The build this engine runs: relaxed SIMD where it validates (V8, as in Deno, Node and Chrome;
 * Firefox from 146), else v128 SIMD (Safari). Decided once.
 *
 * @returns the variant that {@linkcode wasmBytes} gives by default
 */
export function wasmVariant(): WasmVariant {
  _variant ??= WebAssembly.validate(decodeBase64(WASM_RELAXED_BASE64)) ? "relaxed-simd" : "simd";
  return _variant;
}

/**
 * The embedded module's bytes (decoded from base64 on each call).
 *
 * @param variant which build: by default the one this engine runs ({@linkcode wasmVariant})
 * @returns the .wasm bytes
 * @throws {InvalidValueError} for a variant other than "simd" or "relaxed-simd"
 */
export function wasmBytes(variant: WasmVariant = wasmVariant()): Uint8Array<ArrayBuffer> {
  if (variant === "simd") return decodeBase64(WASM_BASE64);
  if (variant === "relaxed-simd") return decodeBase64(WASM_RELAXED_BASE64);
  throw new InvalidValueError(
    `variant is ${showValue(variant)}, expected "simd" or "relaxed-simd"`,
  );
}

function decodeBase64(b64: string): Uint8Array<ArrayBuffer> {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** An instantiated module: its kernels, its scratch arena and a codec per format. */
export class WasmCodecs {
  /** The module's exports. */
  readonly kernels: WasmKernels;
  /** Scratch memory shared by every codec of this instance. */
  readonly arena: WasmArena;
  #codecs = new Map<string, WasmCodec>();

  /**
   * Wraps an instance of the embedded module.
   *
   * @param instance the instantiated module
   */
  constructor(instance: WebAssembly.Instance) {
    this.kernels = instance.exports as unknown as WasmKernels;
    this.arena = new WasmArena(this.kernels.memory, this.kernels.heapBase());
  }

  /**
   * The WASM codec of a format.
   *
   * @param name registry name
   * @returns the codec (cached per name)
   * @throws {FormatError} for an unknown name
   */
  codec(name: string): WasmCodec {
    let c = this.#codecs.get(name);
    if (c === undefined) {
      c = new WasmCodec(getFormat(name), this);
      this.#codecs.set(name, c);
    }
    return c;
  }
}

let _shared: WasmCodecs | undefined;
let _module: WebAssembly.Module | undefined;

/**
 * The names a module's export section lists, read from its bytes (no compilation).
 * @param bytes a .wasm binary
 * @returns the export names in order
 */
export function wasmExportNames(bytes: Uint8Array): string[] {
  let at = 8; // magic and version
  const leb = () => {
    let v = 0, shift = 0, b;
    do {
      b = bytes[at++];
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    return v;
  };
  while (at < bytes.length) {
    const id = bytes[at++], size = leb(), end = at + size;
    if (id !== 7) {
      at = end;
      continue;
    }
    const names: string[] = [];
    for (let n = leb(); n > 0; n--) {
      const length = leb();
      names.push(new TextDecoder().decode(bytes.subarray(at, at + length)));
      at += length + 1; // the name, then its kind
      leb(); // its index
    }
    return names;
  }
  return [];
}

/**
 * Checks that `module` is a compiled kvprec module of this version (either build).
 *
 * @param module what to check
 * @throws {InvalidValueError} when it is not a WebAssembly.Module, or its exports differ from this
 *   version's module, naming the first difference
 */
export function checkWasmModule(module: WebAssembly.Module): void {
  if (!(module instanceof WebAssembly.Module)) {
    throw new InvalidValueError(`module is ${typeName(module)}, expected a WebAssembly.Module`);
  }
  const want = wasmExportNames(wasmBytes("simd")); // both builds export the same names
  const got = WebAssembly.Module.exports(module).map((e) => e.name);
  const missing = want.find((n) => !got.includes(n)), extra = got.find((n) => !want.includes(n));
  if (missing !== undefined || extra !== undefined) {
    throw new InvalidValueError(
      `the module's exports differ from this kvprec's kvprec.wasm (${
        missing !== undefined ? `no "${missing}"` : `an extra "${extra}"`
      }): build it with this version's \`deno task bundle\``,
    );
  }
}

/**
 * Uses an already compiled kvprec module instead of compiling the embedded bytes, for runtimes
 * that refuse to compile WebAssembly from bytes (Cloudflare Workers and other edge runtimes
 * import a .wasm file as a module instead; a page whose Content-Security-Policy lacks
 * 'wasm-unsafe-eval' refuses both). `deno task bundle` writes both builds beside the bundle, as
 * dist/kvprec.wasm (v128 SIMD, for every engine) and dist/kvprec-relaxed.wasm (relaxed SIMD, for
 * engines that validate it: faster integer-dot attention, the same bits). Codecs and caches created
 * afterwards instantiate it; ones created before keep their instance.
 *
 * @example
 * ```ts
 * import { useWasmModule, wasmBytes, wasmCodec } from "./wasm.ts";
 * // in a Worker: import module from "./kvprec.wasm";
 * const module = await WebAssembly.compile(wasmBytes());
 * useWasmModule(module);
 * if (wasmCodec("fp16").encode(new Float32Array(4).fill(1)).words[0] !== 0x3c003c00) throw 0;
 * ```
 * @param module the compiled kvprec.wasm or kvprec-relaxed.wasm of this version of the library
 * @throws {InvalidValueError} when it is not a WebAssembly.Module, or its exports differ from
 *   this version's module (another version's kvprec.wasm, or another module), naming the first
 *   difference
 */
export function useWasmModule(module: WebAssembly.Module): void {
  checkWasmModule(module);
  if (module !== _module) {
    _module = module;
    _shared = undefined;
  }
}

/**
 * The compiled module, compiling the embedded bytes synchronously on first use (after
 * {@linkcode loadWasmCodecs} or {@linkcode useWasmModule}, without compiling again).
 *
 * @returns the module that codecs and caches instantiate
 */
export function wasmModuleSync(): WebAssembly.Module {
  _module ??= new WebAssembly.Module(wasmBytes());
  return _module;
}

/**
 * Compiles and instantiates the embedded module without blocking (once; later calls return the
 * same instance, and caches created afterwards reuse the compiled module).
 *
 * @returns the codecs
 */
export async function loadWasmCodecs(): Promise<WasmCodecs> {
  if (_shared === undefined) {
    const module = _module ?? await WebAssembly.compile(wasmBytes());
    _module ??= module;
    const instance = await WebAssembly.instantiate(module, {});
    _shared ??= new WasmCodecs(instance);
  }
  return _shared;
}

/**
 * Instantiates the embedded module synchronously (Deno, servers, workers; Chrome before 114
 * refused synchronous compilation and instantiation of modules over 4 KB on a page's main thread:
 * there await {@linkcode loadWasmCodecs} first).
 *
 * @returns the codecs (the same instance as {@linkcode loadWasmCodecs})
 */
export function loadWasmCodecsSync(): WasmCodecs {
  _shared ??= new WasmCodecs(new WebAssembly.Instance(wasmModuleSync(), {}));
  return _shared;
}

/**
 * The WASM codec of a format, instantiating the module synchronously on first use.
 *
 * @param name registry name
 * @returns the codec
 */
export function wasmCodec(name: string): WasmCodec {
  return loadWasmCodecsSync().codec(name);
}

/** One format's codec over the WASM kernels. */
export class WasmCodec extends CodecBase {
  /** Always `"wasm"`. */
  readonly backend = "wasm" as const;
  #owner: WasmCodecs;

  /**
   * Creates the codec (prefer {@linkcode WasmCodecs.codec}, which caches).
   *
   * @param spec the format
   * @param owner the module instance
   */
  constructor(spec: FormatSpec, owner: WasmCodecs) {
    super(spec);
    this.#owner = owner;
  }

  /**
   * Encodes into `words`; writes nothing on error.
   *
   * @param x values
   * @param words destination
   * @param opts clamping
   */
  encodeInto(x: Float32Array, words: Uint32Array, opts?: EncodeOptions): void {
    const nw = checkEncodeArgs(this.spec, x, words);
    const n = x.length, s = this.spec;
    const { kernels: k, arena } = this.#owner;
    // a decodeView() result lies in the memory this call lays its stages over: read a copy
    if (x.buffer === k.memory.buffer) x = x.slice();
    this.#refuseModuleView(words, "words");
    // input goes through an L2-sized chunk; the packed output stays whole in WASM memory and is
    // copied out only when every chunk encoded, so an error writes nothing
    const chunk = Math.min(n, CHUNK);
    const [src, dst] = arena.layout(4 * chunk, 4 * nw);
    const stage = arena.f32(src, chunk);
    const clamp = encodeClamp(s, opts);
    for (let off = 0; off < n; off += chunk) {
      const len = Math.min(chunk, n - off);
      stage.set(len === n ? x : x.subarray(off, off + len));
      if (clamp) k.clampInPlace(src, len, s.clampLimit);
      const bad = this.#encodeKernel(src, dst + 4 * (off / s.group) * s.wordsPerGroup, len);
      if (bad >= 0) {
        // the kernel says where; the reference says why, in the words every back end uses
        tsCodec(s.name).encodeInto(x, new Uint32Array(nw), opts);
        throw k.lastErrorKind() === 1
          ? nonFiniteError(s, x, off + bad)
          : rangeError(s, x, off + bad, `the ${s.name} encoding of its group cannot hold it`);
      }
    }
    words.set(arena.u32(dst, nw));
  }

  #encodeKernel(src: number, dst: number, n: number): number {
    const s = this.spec, k = this.#owner.kernels;
    switch (s.kind) {
      case "int":
        return k.encodeInt(src, dst, n, s.bits, s.group);
      case "int8s":
        return k.encodeInt8s(src, dst, n, s.group);
      case "fp32":
        return k.encodeF32(src, dst, n);
      case "fp16":
      case "bf16":
        return k.encodeHalf(src, dst, n, s.kind === "bf16" ? 1 : 0);
      default: {
        const bias = s.kind === "fp8e4m3" ? 7 : 15;
        return s.scaled
          ? k.encodeFp8Scaled(src, dst, n, s.group, bias)
          : k.encodeFp8(src, dst, n, bias);
      }
    }
  }

  #decodeKernel(src: number, dst: number, n: number): number {
    const s = this.spec, k = this.#owner.kernels;
    switch (s.kind) {
      case "int":
        return k.decodeInt(src, dst, n, s.bits, s.group);
      case "int8s":
        k.decodeInt8s(src, dst, n, s.group);
        return -1;
      case "fp32":
        this.#owner.arena.u32(dst, n).set(this.#owner.arena.u32(src, n));
        return -1;
      case "fp16":
      case "bf16":
        k.decodeHalf(src, dst, n, s.kind === "bf16" ? 1 : 0);
        return -1;
      default: {
        const bias = s.kind === "fp8e4m3" ? 7 : 15;
        if (s.scaled) k.decodeFp8Scaled(src, dst, n, s.group, bias);
        else k.decodeFp8(src, dst, n, bias);
        return -1;
      }
    }
  }

  /**
   * Decodes `length` elements from `words`; writes nothing on error.
   *
   * @param words packed words
   * @param length element count
   * @param out destination
   */
  decodeWords(words: Uint32Array, length: number, out: Float32Array): void {
    const nw = checkDecodeArgs(this.spec, words, length, out);
    const s = this.spec;
    const { arena, kernels } = this.#owner;
    // the chunked paths write out while later words are still to be read: out over the words, or
    // words in the module's own memory (a view), are read from a copy
    if (overlaps(words, out) || words.buffer === kernels.memory.buffer) {
      words = words.slice(0, nw);
    }
    this.#refuseModuleView(out, "out");
    const chunk = Math.min(length, CHUNK);
    const chunkWords = (chunk / s.group) * s.wordsPerGroup;
    if (s.scaled) {
      // whole packed input in (it is small), headers checked before any output is written, then
      // the output goes through an L2-sized chunk
      const [src, dst] = arena.layout(4 * nw, 4 * chunk);
      arena.u32(src, nw).set(nw === words.length ? words : words.subarray(0, nw));
      this.#checkHeaders(src, words, length);
      const stage = arena.f32(dst, chunk);
      for (let off = 0; off < length; off += chunk) {
        const len = Math.min(chunk, length - off);
        this.#decodeKernel(src + 4 * (off / s.group) * s.wordsPerGroup, dst, len);
        out.set(len === chunk ? stage : stage.subarray(0, len), off);
      }
      return;
    }
    // no headers, nothing can fail: input and output both go through chunks
    const [src, dst] = arena.layout(4 * chunkWords, 4 * chunk);
    const inStage = arena.u32(src, chunkWords), outStage = arena.f32(dst, chunk);
    for (let off = 0; off < length; off += chunk) {
      const len = Math.min(chunk, length - off);
      const w0 = (off / s.group) * s.wordsPerGroup, wn = (len / s.group) * s.wordsPerGroup;
      inStage.set(words.subarray(w0, w0 + wn));
      this.#decodeKernel(src, dst, len);
      out.set(len === chunk ? outStage : outStage.subarray(0, len), off);
    }
  }

  /**
   * Decodes into WASM memory and returns a view of the result, with no copy out: for callers that
   * read the values once. The view is valid until the next call on any codec of this module
   * instance; copy it to keep it. Passed back in, a view is read from a copy (as x of encode or
   * words of a decode) or refused (as the words of encodeInto or the out of decodeWords).
   *
   * @param words packed words, at least `wordsFor(length)` long
   * @param length element count
   * @returns a view of the decoded values in WASM memory
   */
  decodeView(words: Uint32Array, length: number): Float32Array {
    const s = this.spec;
    if (!(words instanceof Uint32Array)) {
      throw new ShapeError(`${s.name}: words must be a Uint32Array, got ${typeName(words)}`);
    }
    const nw = wordsForLength(s, length);
    if (words.length < nw) {
      throw new CorruptDataError(
        `${s.name}: packed data has ${words.length * 4} bytes, ${length} elements need ${
          nw * 4
        } bytes`,
        words.length * 4,
      );
    }
    const { arena, kernels } = this.#owner;
    // a view into the module's memory would be overwritten, or detached by a grow: read a copy
    if (words.buffer === kernels.memory.buffer) words = words.slice(0, nw);
    const [src, dst] = arena.layout(4 * nw, 4 * length);
    arena.u32(src, nw).set(nw === words.length ? words : words.subarray(0, nw));
    // int kernels check each header as they go (the output is scratch until returned); the
    // int8s and fp8 kernels do not, so their headers are checked first
    if (s.scaled && s.kind !== "int") this.#checkHeaders(src, words, length);
    const bad = this.#decodeKernel(src, dst, length);
    if (bad >= 0) throw _headerError(s, words, bad);
    return arena.f32(dst, length);
  }

  /** Throws naming the first group header (already copied to src) an encoder cannot write. */
  // an output view into the module's memory would be written through the stages laid over it,
  // and detached if the memory grows: refused by name
  #refuseModuleView(view: ArrayBufferView, what: string): void {
    if (view.buffer === this.#owner.kernels.memory.buffer) {
      throw new InvalidValueError(
        `${what} is a view into this codec module's WebAssembly memory (a decodeView() result), ` +
          `which the call's own buffers overwrite: pass a copy`,
      );
    }
  }

  #checkHeaders(src: number, words: Uint32Array, length: number): void {
    const s = this.spec;
    const bad = this.#owner.kernels.firstBadHeader(
      src,
      length / s.group,
      s.wordsPerGroup,
      s.kind === "int" ? 1 : 0,
    );
    if (bad >= 0) throw _headerError(s, words, bad);
  }

  /**
   * Writes per-element error bounds (the reference implementation's; FORMAT.md, "Error bounds").
   *
   * @param words packed words
   * @param length element count
   * @param out destination
   */
  errorBound(words: Uint32Array, length: number, out: Float32Array): void {
    tsCodec(this.spec.name).errorBound(words, length, out);
  }
}

/**
 * The error of the first bad group header, which the kernel found at group g: the reference's
 * (checkGroupHeaders), so both back ends say the same; a generic one should they ever disagree.
 */
function _headerError(s: FormatSpec, words: Uint32Array, g: number): CorruptDataError {
  checkGroupHeaders(s, words, (g + 1) * s.group);
  const h = words[g * s.wordsPerGroup];
  return new CorruptDataError(
    `${s.name}: group ${g} header 0x${h.toString(16).padStart(8, "0")} is not one an encoder ` +
      `writes (non-finite or negative scale, non-finite minimum, non-zero high half)`,
    g * s.wordsPerGroup * 4,
  );
}
