/**
 * The BPE tokenizer of llama2.c (tokenizer.bin: int32 max_token_length, then per token a float32
 * merge score, an int32 byte length and the bytes). Encoding follows run.c's `encode`: an optional
 * BOS, a dummy space before non-empty text, one token per UTF-8 code point with `<0xNN>` byte
 * fallback, then repeated merges of the adjacent pair whose concatenation has the highest score.
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { parseTokenizer } from "./tokenizer.ts";
 * import { CorruptDataError } from "../errors.ts";
 * try {
 *   parseTokenizer(new Uint8Array(6), 3);
 *   throw new Error("unreachable");
 * } catch (e) {
 *   if (!(e instanceof CorruptDataError)) throw e;
 * }
 * ```
 * @module
 */

import {
  checkOptionFields,
  CorruptDataError,
  InvalidValueError,
  ShapeError,
  showValue,
  typeName,
} from "../errors.ts";
import { asBytes } from "./bytes.ts";

/** Beginning-of-sequence token id in llama2.c vocabularies. */
export const BOS = 1;
/** End-of-sequence token id. */
export const EOS = 2;

/** run.c's merge search starts at best_score = −1e10: a pair scoring no more is never merged. */
const MIN_MERGE_SCORE = -1e10;

/**
 * A byte piece as run.c's decode reads it, sscanf("<0x%02hhx>"): one or two hex digits of either
 * case after "<0x", whatever follows them.
 */
const _BYTE_PIECE = /^<0x([0-9A-Fa-f]{1,2})/;

/** Options of {@linkcode Tokenizer.encode}. */
export interface TokenizeOptions {
  /** Prepend BOS (default true). */
  bos?: boolean;
  /** Append EOS (default false). */
  eos?: boolean;
}

/** A parsed llama2.c vocabulary with encode and decode. */
export class Tokenizer {
  /** Each token's bytes (copies of the constructor's; encode reads them). */
  readonly pieces: readonly Uint8Array[];
  /** Each token's merge score (a copy of the constructor's; encode reads it). */
  readonly scores: Float32Array;
  readonly #ids = new Map<string, number>();

  /**

   * Creates the instance.
   * @param pieces token bytes by id
   * @param scores merge scores by id
   * @throws ShapeError when pieces and scores differ in length
   * @throws InvalidValueError when a piece is not a Uint8Array or scores not a Float32Array
   */
  constructor(pieces: readonly Uint8Array[], scores: Float32Array) {
    if (!Array.isArray(pieces)) {
      throw new InvalidValueError(`pieces is ${typeName(pieces)}, expected an array`);
    }
    if (!(scores instanceof Float32Array)) {
      throw new InvalidValueError(`scores is ${typeName(scores)}, expected a Float32Array`);
    }
    if (pieces.length !== scores.length) {
      throw new ShapeError(`${pieces.length} pieces but ${scores.length} scores`);
    }
    // copies: the id map below is built once, so later changes to the caller's arrays must not
    // reach encode
    this.pieces = Object.freeze(pieces.map((p, id) => {
      if (!(p instanceof Uint8Array)) {
        throw new InvalidValueError(`pieces[${id}] is ${typeName(p)}, expected a Uint8Array`);
      }
      return p.slice();
    }));
    this.scores = scores.slice();
    this.pieces.forEach((p, id) => {
      const key = latin1(p);
      if (!this.#ids.has(key)) this.#ids.set(key, id);
    });
  }

  /** Number of tokens. */
  get vocabSize(): number {
    return this.pieces.length;
  }

  /**
   * Encodes text as run.c does.
   *
   * @param text the text
   * @param options BOS/EOS
   * @returns token ids
   * @throws ShapeError when BOS, EOS or a byte fallback id is outside the vocabulary;
   *   InvalidValueError when text is not a string
   */
  encode(text: string, options: TokenizeOptions = {}): number[] {
    if (typeof text !== "string") {
      throw new InvalidValueError(`text is ${typeName(text)}, expected a string`);
    }
    checkOptionFields(options, { bos: true, eos: true }, "encode options");
    const { bos = true, eos = false } = options;
    const n = this.pieces.length;
    for (const [name, id, on] of [["BOS", BOS, bos], ["EOS", EOS, eos]] as const) {
      if (on && id >= n) throw new ShapeError(`${name} id ${id} is outside [0, ${n})`);
    }
    const tokens: number[] = [];
    if (bos) tokens.push(BOS);
    // the dummy space takes part in merges (" Once" is one token)
    const start = tokens.length;
    const bytes = new TextEncoder().encode(text);
    if (bytes.length > 0) {
      const space = this.#ids.get(" ");
      if (space !== undefined) tokens.push(space);
    }
    let i = 0;
    while (i < bytes.length) {
      const len = utf8Length(bytes[i]);
      const end = Math.min(i + len, bytes.length);
      const id = this.#ids.get(latin1(bytes.subarray(i, end)));
      if (id !== undefined) tokens.push(id);
      else {
        for (let j = i; j < end; j++) {
          const id = bytes[j] + 3; // run.c's fallback, whatever the vocabulary names its bytes
          // A vocabulary without <0xNN> tokens and under 259 ids has no piece for the fallback.
          if (id >= n) {
            throw new ShapeError(
              `byte 0x${bytes[j].toString(16).padStart(2, "0")} at ${j} has no token: ` +
                `fallback id ${id} is outside [0, ${n})`,
            );
          }
          tokens.push(id);
        }
      }
      i = end;
    }
    this.#merge(tokens, start);
    if (eos) tokens.push(EOS);
    return tokens;
  }

  /**
   * Greedy BPE as run.c does it: merge the best-scoring adjacent pair (the leftmost on a tie) until
   * no pair is in the vocabulary. run.c rescans every pair after each merge (quadratic: 16,000
   * characters took 14 s); here pairs wait in a heap, the tokens form a linked list, and a merge
   * re-enters only the two pairs it changed, so each step costs log n and picks the same pair.
   */
  #merge(tokens: number[], start: number): void {
    const n = tokens.length - start;
    if (n < 2) return;
    const ids = tokens.slice(start), keys = ids.map((t) => latin1(this.pieces[t]));
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1);
    const version = new Int32Array(n); // bumped when a node merges, which voids its queued pairs
    const heap = new _PairHeap();
    const offer = (i: number) => {
      const j = next[i];
      if (j < 0) return;
      const id = this.#ids.get(keys[i] + keys[j]);
      // run.c takes a pair only when its score beats its search's start, −1e10, strictly (never
      // a NaN score)
      if (id !== undefined && this.scores[id] > MIN_MERGE_SCORE) {
        heap.push({
          score: this.scores[id],
          left: i,
          right: j,
          id,
          vl: version[i],
          vr: version[j],
        });
      }
    };
    for (let i = 0; i < n - 1; i++) offer(i);
    for (let p = heap.pop(); p !== undefined; p = heap.pop()) {
      const { left: i, right: j } = p;
      if (version[i] !== p.vl || version[j] !== p.vr || next[i] !== j) continue; // stale
      ids[i] = p.id;
      keys[i] += keys[j];
      version[i]++;
      version[j]++;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      next[j] = -1;
      if (prev[i] >= 0) offer(prev[i]);
      offer(i);
    }
    tokens.length = start;
    for (let i = 0; i >= 0; i = next[i]) tokens.push(ids[i]);
  }

  /**
   * Decodes ids to text as run.c decodes them: BOS and EOS print nothing, the space after BOS is
   * dropped, and `<0xNN>` tokens are raw bytes (kept even where run.c's safe_printf would drop a
   * non-printable single byte).
   *
   * @param ids token ids
   * @returns the text (invalid UTF-8 becomes U+FFFD)
   * @throws {ShapeError} for ids that are not an array (one id alone decoded to "" in silence) or
   *   an id out of the vocabulary
   */
  decode(ids: ArrayLike<number>): string {
    if (!Array.isArray(ids) && !ArrayBuffer.isView(ids)) {
      throw new ShapeError(`ids is ${showValue(ids)}, expected an array of token ids`);
    }
    const out: number[] = [];
    let prev = -1;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.pieces.length) {
        throw new ShapeError(
          `token id ${id} at index ${i} out of range [0, ${this.pieces.length})`,
        );
      }
      if (id === BOS || id === EOS) {
        prev = id;
        continue;
      }
      let piece = this.pieces[id];
      const m = _BYTE_PIECE.exec(latin1(piece));
      if (m) piece = Uint8Array.of(parseInt(m[1], 16));
      else if (prev === BOS && piece[0] === 0x20) piece = piece.subarray(1);
      for (const b of piece) out.push(b);
      prev = id;
    }
    return new TextDecoder().decode(Uint8Array.from(out));
  }
}

/**
 * Parses tokenizer.bin. Throws {@linkcode CorruptDataError} naming the token and the expected vs
 * actual bytes when the file ends early or has trailing bytes, or naming a token whose merge score
 * is NaN.
 *
 * @param input the file (a Uint8Array or an ArrayBuffer)
 * @param vocabSize number of tokens (the model's vocab_size)
 * @returns the tokenizer
 */
export function parseTokenizer(input: Uint8Array | ArrayBuffer, vocabSize: number): Tokenizer {
  const bytes = asBytes(input, "tokenizer bytes");
  if (!Number.isInteger(vocabSize) || vocabSize <= 0) {
    throw new ShapeError(`vocabSize is ${vocabSize}, expected a positive integer`);
  }
  // each token takes at least 8 bytes: a vocabulary the file cannot hold is refused before
  // anything of its size is allocated
  if (4 + 8 * vocabSize > bytes.byteLength) {
    throw new CorruptDataError(
      `tokenizer cannot hold ${vocabSize} tokens: needs ${4 + 8 * vocabSize} bytes or more, ` +
        `file has ${bytes.byteLength}`,
      bytes.byteLength,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (offset: number, n: number, what: string) => {
    if (offset + n > bytes.byteLength) {
      throw new CorruptDataError(
        `tokenizer ends early reading ${what}: needs ${
          offset + n
        } bytes, file has ${bytes.byteLength}`,
        bytes.byteLength,
      );
    }
  };
  need(0, 4, "max_token_length");
  const maxLen = view.getInt32(0, true);
  const pieces: Uint8Array[] = [];
  const scores = new Float32Array(vocabSize);
  let o = 4;
  for (let id = 0; id < vocabSize; id++) {
    need(o, 8, `the header of token ${id} of ${vocabSize}`);
    scores[id] = view.getFloat32(o, true);
    // a NaN score never merges: the token would be dropped from every text without a word
    if (Number.isNaN(scores[id])) {
      throw new CorruptDataError(`token ${id} has a NaN merge score`, o);
    }
    const len = view.getInt32(o + 4, true);
    o += 8;
    if (len < 0 || len > maxLen) {
      throw new CorruptDataError(`token ${id} has length ${len}, outside [0, ${maxLen}]`, o - 4);
    }
    need(o, len, `the ${len} bytes of token ${id}`);
    pieces.push(bytes.slice(o, o + len));
    o += len;
  }
  if (o !== bytes.byteLength) {
    throw new CorruptDataError(
      `tokenizer has ${
        bytes.byteLength - o
      } trailing bytes after ${vocabSize} tokens (expected ${o} bytes)`,
      o,
    );
  }
  return new Tokenizer(pieces, scores);
}

/** Bytes as a string of code units 0–255, a cheap exact map key. */
function latin1(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return s;
}

/** Length of a UTF-8 sequence from its lead byte (1 for stray continuation bytes). */
function utf8Length(lead: number): number {
  if (lead < 0xc0) return 1;
  if (lead < 0xe0) return 2;
  if (lead < 0xf0) return 3;
  return 4;
}

/** A queued merge: the pair (left, right) of list nodes at their versions, and its token. */
interface _Pair {
  score: number;
  left: number;
  right: number;
  id: number;
  vl: number;
  vr: number;
}

/** Max-heap of pairs by score, then leftmost first (node indices keep the text's order). */
class _PairHeap {
  readonly #a: _Pair[] = [];

  #before(x: _Pair, y: _Pair): boolean {
    return x.score > y.score || (x.score === y.score && x.left < y.left);
  }

  push(p: _Pair): void {
    const a = this.#a;
    let i = a.push(p) - 1;
    while (i > 0) {
      const up = (i - 1) >> 1;
      if (!this.#before(a[i], a[up])) break;
      [a[i], a[up]] = [a[up], a[i]];
      i = up;
    }
  }

  pop(): _Pair | undefined {
    const a = this.#a, top = a[0], last = a.pop();
    if (a.length === 0 || last === undefined) return top;
    a[0] = last;
    for (let i = 0;;) {
      const l = 2 * i + 1, r = l + 1;
      let best = i;
      if (l < a.length && this.#before(a[l], a[best])) best = l;
      if (r < a.length && this.#before(a[r], a[best])) best = r;
      if (best === i) return top;
      [a[i], a[best]] = [a[best], a[i]];
      i = best;
    }
  }
}
