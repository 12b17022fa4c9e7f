import assert from "node:assert/strict";
import {
  BOS,
  CorruptDataError,
  InvalidValueError,
  parseTokenizer,
  ShapeError,
  Tokenizer,
} from "../../../mod.ts";
import { fixtureBytes, loadFixture, REFERENCE, rng } from "../../_fixtures.ts";

Deno.test("Tokenizer.encode() matches llama2.c on the reference prompt", async () => {
  const { tokenizer } = await loadFixture();
  assert.deepEqual(tokenizer.encode("Once upon a time"), REFERENCE.promptIds);
  assert.deepEqual(tokenizer.encode("Once upon a time", { bos: false, eos: true }), [
    403,
    407,
    261,
    378,
    2,
  ]);
  assert.deepEqual(tokenizer.encode("", { bos: true }), [BOS]);
});

Deno.test("Tokenizer.decode() round-trips every line of the evaluation text exactly", async () => {
  const { tokenizer, lines, sequences } = await loadFixture();
  assert.equal(lines.length, 19);
  let tokens = 0;
  for (let i = 0; i < lines.length; i++) {
    assert.equal(tokenizer.decode(sequences[i]), lines[i], `line ${i}`);
    tokens += sequences[i].length;
  }
  assert.ok(lines.some((l) => l.endsWith("\r")), "CRLF bytes are kept");
  assert.equal(tokens - lines.length, REFERENCE.tokensScored);
});

Deno.test("Tokenizer round-trips non-ASCII text through byte fallback", async () => {
  const { tokenizer } = await loadFixture();
  for (const text of ["café ünïcödé", "日本語 🎉", "tab\tand\u0000nul"]) {
    assert.equal(tokenizer.decode(tokenizer.encode(text)), text);
  }
  assert.throws(() => tokenizer.decode([1, 600]), ShapeError);
  // one id alone, not in an array, had decoded to "" without a word; null was a TypeError
  for (const bad of [400, null, "ab"]) {
    assert.throws(
      () => tokenizer.decode(bad as never),
      (e: Error) => e instanceof ShapeError && /expected an array of token ids/.test(e.message),
    );
  }
  assert.equal(tokenizer.decode(Int32Array.of(1, 400)), tokenizer.decode([1, 400]));
});

Deno.test("parseTokenizer() names where a short file ends", async () => {
  const bytes = await fixtureBytes("tok512.bin");
  for (const cut of [2, 100, bytes.length - 1]) {
    assert.throws(() => parseTokenizer(bytes.subarray(0, cut), 512), (e: Error) => {
      return e instanceof CorruptDataError && e.message.includes(`file has ${cut}`) &&
        /needs \d+ bytes/.test(e.message);
    });
  }
  assert.throws(() => parseTokenizer(bytes, 513), /ends early reading the header of token 512/);
  assert.throws(() => parseTokenizer(bytes, 511), /trailing bytes/);
  // a vocabulary the file cannot hold is refused before anything of its size is allocated (1e10
  // was a RangeError from the allocation; 3e9 allocated 12 GB first)
  for (const vocab of [1e10, 3e9]) {
    assert.throws(
      () => parseTokenizer(bytes, vocab),
      (e: Error) =>
        e instanceof CorruptDataError && e.message.includes(`cannot hold ${vocab} tokens`),
    );
  }
  // what fetch().arrayBuffer() gives is read as its bytes; other inputs are named
  const whole = bytes.slice();
  assert.equal(parseTokenizer(whole.buffer, 512).vocabSize, 512);
  for (const bad of [null, [1, 2, 3], new Float32Array(4)]) {
    assert.throws(
      () => parseTokenizer(bad as never, 512),
      /must be a Uint8Array or an ArrayBuffer/,
    );
  }
});

Deno.test("Tokenizer.encode() names text it cannot encode in a small vocabulary (was a TypeError)", () => {
  const bytes = (s: string) => new TextEncoder().encode(s);
  const t = new Tokenizer(
    [bytes("<unk>"), bytes("<s>"), bytes("</s>"), bytes("a")],
    new Float32Array(4),
  );
  assert.deepEqual(t.encode("a", { bos: false }), [3]);
  assert.throws(
    () => t.encode("ab"),
    (e) =>
      e instanceof ShapeError &&
      /byte 0x62 at 1 has no token: fallback id 101 is outside \[0, 4\)/.test(e.message),
  );
  const one = new Tokenizer([bytes("a")], new Float32Array(1));
  assert.throws(
    () => one.encode("a"),
    (e) => e instanceof ShapeError && /BOS id 1 is outside \[0, 1\)/.test(e.message),
  );
  assert.throws(
    () => new Tokenizer([bytes("a"), bytes("b")], new Float32Array(1)),
    (e) => e instanceof ShapeError && /2 pieces but 1 scores/.test(e.message),
  );
});

Deno.test("Tokenizer follows run.c at the edges: merge scores ≤ −1e10, byte fallback ids, byte pieces in lower case", () => {
  const bytes = (s: string) => new TextEncoder().encode(s);
  const hex = (b: number, lower: boolean) => {
    const h = b.toString(16).padStart(2, "0");
    return lower ? h : h.toUpperCase();
  };
  for (const lower of [false, true]) {
    const pieces = ["<unk>", "\n<s>\n", "\n</s>\n"];
    for (let b = 0; b < 256; b++) pieces.push(`<0x${hex(b, lower)}>`);
    pieces.push(" ", "a", "b", "ab", " ab"); // 259 … 263
    const scores = Float32Array.from(pieces, (p) => p === "ab" ? -1e10 : p === " ab" ? 5 : 0);
    const t = new Tokenizer(pieces.map(bytes), scores);
    // run.c's search starts at −1e10 and needs a score strictly above it: "ab" never merges
    // (kvprec once merged anything above −∞), so neither does " ab"
    assert.deepEqual(t.encode("ab"), [1, 259, 260, 261], `lower ${lower}`);
    scores[262] = Math.fround(-9.9e9);
    const merged = new Tokenizer(pieces.map(bytes), scores);
    assert.deepEqual(merged.encode("ab"), [1, 263], "just above −1e10 merges");
    // a byte with no piece of its own falls back to byte + 3, as run.c does; decode reads the
    // byte pieces in either case, as run.c's sscanf("<0x%02hhx>") does (upper case only, once)
    assert.deepEqual(t.encode("a\n"), [1, 259, 260, 13]);
    assert.equal(t.decode([1, 259, 260, 13]), "a\n", `lower ${lower}`);
  }
});

const latin1 = (bytes: Uint8Array) => String.fromCharCode(...bytes);

/** run.c's merge loop as the tokenizer had it: rescan every pair after each merge. */
function quadraticMerge(tok: Tokenizer, tokens: number[], start: number): number[] {
  const key = (t: number) => latin1(tok.pieces[t]);
  const ids = new Map<string, number>();
  tok.pieces.forEach((_, id) => ids.has(key(id)) || ids.set(key(id), id));
  const out = tokens.slice(), keys = out.map(key);
  for (;;) {
    let bestScore = -Infinity, bestId = -1, bestIdx = -1;
    for (let i = start; i < out.length - 1; i++) {
      const id = ids.get(keys[i] + keys[i + 1]);
      if (id !== undefined && tok.scores[id] > bestScore) {
        [bestScore, bestId, bestIdx] = [tok.scores[id], id, i];
      }
    }
    if (bestIdx < 0) return out;
    out.splice(bestIdx, 2, bestId);
    keys.splice(bestIdx, 2, keys[bestIdx] + keys[bestIdx + 1]);
  }
}

Deno.test("Tokenizer.encode() merges as run.c's quadratic loop: ties, NaN and −∞ scores, real text", async () => {
  const next = rng(9);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)];
  const enc = new TextEncoder();
  // small random vocabularies over "abc " with many tied, some NaN and −∞ scores
  for (let v = 0; v < 40; v++) {
    const pieces = ["<unk>", "<s>", "</s>", " ", "a", "b", "c"];
    while (pieces.length < 40) {
      const p = Array.from({ length: 2 + Math.floor(next() * 4) }, () => pick(["a", "b", "c", " "]))
        .join("");
      if (!pieces.includes(p)) pieces.push(p);
    }
    const scores = Float32Array.from(pieces, () => pick([0, 1, 1, 2, 2, 3, -1, NaN, -Infinity]));
    const tok = new Tokenizer(pieces.map((p) => enc.encode(p)), scores);
    for (let s = 0; s < 25; s++) {
      const text = Array.from({ length: Math.floor(next() * 60) }, () => pick(["a", "b", "c", " "]))
        .join("");
      const unmerged = [BOS, tok.pieces.findIndex((p) => p.length === 1 && p[0] === 32)];
      for (const ch of text) unmerged.push(pieces.indexOf(ch));
      const want = text.length ? quadraticMerge(tok, unmerged, 1) : [BOS];
      assert.deepEqual(tok.encode(text), want, `vocabulary ${v}, text "${text}"`);
    }
  }
  // the fixture's vocabulary on the evaluation text's ASCII lines, from one token per byte
  const { tokenizer, lines } = await loadFixture();
  const piece = (text: string) => tokenizer.pieces.findIndex((p) => latin1(p) === text);
  const hex = (c: string) => c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0");
  const byChar = (c: string) => piece(c) >= 0 ? piece(c) : piece(`<0x${hex(c)}>`);
  let compared = 0;
  for (const line of lines) {
    // a prefix: the reference is quadratic in the line's length
    const text = line.slice(0, 600);
    if (!/^[\x20-\x7e\r]+$/.test(text)) continue;
    const unmerged = [BOS, byChar(" "), ...Array.from(text, byChar)];
    assert.ok(unmerged.every((t) => t >= 0));
    assert.deepEqual(tokenizer.encode(text), quadraticMerge(tokenizer, unmerged, 1), text);
    compared++;
  }
  assert.ok(compared >= 5, `${compared} lines`);
});

Deno.test("parseTokenizer() refuses a NaN merge score; encode() refuses text that is not a string", async () => {
  const bytes = await fixtureBytes("tok512.bin");
  const { tokenizer } = await loadFixture();
  // token 403 ("Once") sits after the pieces before it: find its header by walking the file
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  let o = 4;
  for (let id = 0; id < 403; id++) o += 8 + view.getInt32(o + 4, true);
  const bad = bytes.slice();
  new DataView(bad.buffer).setFloat32(o, NaN, true);
  assert.throws(
    () => parseTokenizer(bad, 512),
    (e: Error) =>
      e instanceof CorruptDataError && /token 403 has a NaN merge score/.test(e.message),
  );
  for (const text of [null, 123, {}, undefined]) {
    assert.throws(
      () => tokenizer.encode(text as unknown as string),
      (e: Error) =>
        e instanceof InvalidValueError && /text is \w+, expected a string/.test(e.message),
    );
  }
});

Deno.test("Tokenizer keeps its own copy of pieces and scores; wrong kinds are named", async () => {
  const { tokenizer } = await loadFixture();
  const pieces = tokenizer.pieces.map((p) => p.slice()), scores = tokenizer.scores.slice();
  const own = new Tokenizer(pieces, scores);
  const text = "Once upon a time, there was a little girl.";
  const before = own.encode(text);
  assert.deepEqual(before, tokenizer.encode(text));
  // the caller's arrays change afterwards: " Once" forgotten, every merge score inverted
  const once = pieces.findIndex((p) => new TextDecoder().decode(p) === " Once");
  assert.ok(once > 0);
  pieces[once] = new Uint8Array([0]);
  scores.forEach((s, i) => scores[i] = -s);
  assert.deepEqual(own.encode(text), before);
  assert.ok(Object.isFrozen(own.pieces));
  for (
    const [p, s, message] of [
      [
        [new Uint8Array(1), "x"],
        new Float32Array(2),
        /pieces\[1\] is string, expected a Uint8Array/,
      ],
      [[new Uint8Array(1)], [0], /scores is .*expected a Float32Array/],
      ["ab", new Float32Array(2), /pieces is string, expected an array/],
    ] as const
  ) {
    assert.throws(
      () => new Tokenizer(p as unknown as Uint8Array[], s as unknown as Float32Array),
      (e: Error) => e instanceof InvalidValueError && message.test(e.message),
      String(message),
    );
  }
});

Deno.test("Tokenizer.encode() names an option it does not have (a misspelt one was dropped)", async () => {
  const { tokenizer } = await loadFixture();
  assert.throws(
    () => tokenizer.encode("Once", { BOS: false } as never),
    (e: Error) =>
      e instanceof InvalidValueError &&
      /^encode options have unknown field "BOS"; the fields are bos, eos/.test(e.message),
  );
  assert.equal(tokenizer.encode("Once", { bos: false })[0] !== 1, true);
});
