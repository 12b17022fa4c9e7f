import assert from "node:assert/strict";
import { BOS, CorruptDataError, parseTokenizer, ShapeError, Tokenizer } from "../../../mod.ts";
import { fixtureBytes, loadFixture, REFERENCE } from "../../_fixtures.ts";

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
