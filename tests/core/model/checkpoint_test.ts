import assert from "node:assert/strict";
import { CorruptDataError, FormatError, parseCheckpoint, ShapeError } from "../../../mod.ts";
import { ropeTable } from "../../../core/tensor.ts";
import { fixtureBytes } from "../../_fixtures.ts";

function withHeader(bytes: Uint8Array, header: number[]): Uint8Array {
  const copy = bytes.slice();
  const view = new DataView(copy.buffer);
  header.forEach((v, i) => view.setInt32(4 * i, v, true));
  return copy;
}

Deno.test("parseCheckpoint() reads the fixture's header and weights", async () => {
  const w = parseCheckpoint(await fixtureBytes("stories260K.bin"));
  assert.deepEqual(
    [w.config.dim, w.config.hiddenDim, w.config.nLayers, w.config.nHeads, w.config.nKvHeads],
    [64, 172, 5, 8, 4],
  );
  assert.equal(w.config.vocabSize, 512);
  assert.equal(w.config.headDim, 8);
  assert.ok(w.config.sharedClassifier);
  assert.equal(w.classifier, w.tokenEmbedding);
  assert.equal(w.w2[4].length, 64 * 172);
  // weights are real numbers, not zeros
  assert.ok(w.rmsFinal.some((x) => x !== 0) && w.rmsFinal.every(Number.isFinite));
});

Deno.test("parseCheckpoint() names expected vs actual bytes of truncated and oversized files", async () => {
  const bytes = await fixtureBytes("stories260K.bin");
  for (const bad of [bytes.subarray(0, bytes.length - 1), bytes.subarray(0, 1000)]) {
    assert.throws(() => parseCheckpoint(bad), (e: Error) => {
      return e instanceof CorruptDataError && e.message.includes(`is ${bad.length} bytes`) &&
        e.message.includes(`expected ${bytes.length}`) && e.message.includes("truncated");
    });
  }
  const long = new Uint8Array(bytes.length + 4);
  long.set(bytes);
  assert.throws(() => parseCheckpoint(long), /trailing bytes/);
  assert.throws(() => parseCheckpoint(bytes.subarray(0, 20)), CorruptDataError);
  assert.equal(
    parseCheckpoint(bytes.slice().buffer).config.dim,
    64,
    "an ArrayBuffer is read whole",
  );
  assert.throws(() => parseCheckpoint(null as never), ShapeError);
});

Deno.test("parseCheckpoint() rejects impossible header sizes", async () => {
  const bytes = await fixtureBytes("stories260K.bin");
  const cases: [number[], RegExp][] = [
    [[0, 172, 5, 8, 4, 512, 512], /dim is 0/],
    [[64, -1, 5, 8, 4, 512, 512], /hidden_dim is -1/],
    [[64, 172, 0, 8, 4, 512, 512], /n_layers is 0/],
    [[64, 172, 5, 7, 4, 512, 512], /n_heads 7 does not divide dim 64/],
    [[64, 172, 5, 8, 3, 512, 512], /n_kv_heads 3 does not divide n_heads 8/],
    [[64, 172, 5, 8, 4, 0, 512], /vocab_size is 0/],
    [[64, 172, 5, 8, 4, 512, -5], /seq_len is -5/],
  ];
  for (const [header, message] of cases) {
    assert.throws(() => parseCheckpoint(withHeader(bytes, header)), (e: Error) => {
      return e instanceof ShapeError && message.test(e.message);
    }, String(header));
  }
  // a plausible header that does not match the file's size
  assert.throws(
    () => parseCheckpoint(withHeader(bytes, [64, 172, 6, 8, 4, 512, 512])),
    CorruptDataError,
  );
  // a negative vocab size means an unshared classifier, which needs more bytes
  assert.throws(
    () => parseCheckpoint(withHeader(bytes, [64, 172, 5, 8, 4, -512, 512])),
    /truncated/,
  );
});

Deno.test("parseCheckpoint() names a NaN or infinite weight by tensor, layer, index and offset", async () => {
  const bytes = await fixtureBytes("stories260K.bin");
  const { config } = parseCheckpoint(bytes);
  const { dim, hiddenDim, vocabSize, kvDim } = config;
  // file order: token_embedding, then per-layer tensors; w2 of layer 3 at its element 7
  const L = config.nLayers;
  const before = vocabSize * dim + L * (dim + dim * dim + 2 * kvDim * dim + dim * dim + dim) +
    L * hiddenDim * dim + 3 * dim * hiddenDim;
  const cases: [number, number, RegExp][] = [
    [5, NaN, /weight token_embedding\[5\] is NaN/],
    [before + 7, Infinity, /weight w2\[layer 3\]\[7\] is Infinity/],
  ];
  for (const [index, value, message] of cases) {
    const bad = bytes.slice();
    new DataView(bad.buffer).setFloat32(28 + 4 * index, value, true);
    assert.throws(
      () => parseCheckpoint(bad),
      (e: Error) =>
        e instanceof CorruptDataError && message.test(e.message) &&
        (e as CorruptDataError).offset === 28 + 4 * index,
    );
  }
});

Deno.test("parseCheckpoint() refuses legacy RoPE tables other than the base-10000 RoPE it computes", async () => {
  // the tables were skipped unread: a checkpoint exported with another base ran with base 10000
  const bytes = await fixtureBytes("stories260K.bin");
  const { config } = parseCheckpoint(bytes);
  const { seqLen, headDim } = config;
  const half = headDim / 2, n = seqLen * half;
  const at = bytes.length - 8 * n; // the shared classifier: the tables end the file
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  // the file's own tables are base-10000 RoPE to f32 rounding
  const other = ropeTable(headDim, seqLen, 500000);
  for (const [table, offset, name] of [[other.cos, 0, "real"], [other.sin, n, "imag"]] as const) {
    const bad = bytes.slice();
    const badView = new DataView(bad.buffer);
    for (let i = 0; i < n; i++) badView.setFloat32(at + 4 * (offset + i), table[i], true);
    assert.throws(
      () => parseCheckpoint(bad),
      (e: Error) =>
        e instanceof FormatError &&
        new RegExp(
          `freq_cis_${name} at position 1, pair 1 .*byte offset ${at + 4 * (offset + half + 1)}`,
        )
          .test(e.message),
      name,
    );
  }
  // a table one f32 step off everywhere still loads
  const nudged = bytes.slice();
  const nudgedView = new DataView(nudged.buffer);
  for (let i = 0; i < 2 * n; i++) {
    const x = view.getFloat32(at + 4 * i, true);
    nudgedView.setFloat32(at + 4 * i, x + Math.abs(x) * 2 ** -23, true);
  }
  assert.equal(parseCheckpoint(nudged).config.seqLen, seqLen);
  // tables left as zeros are no RoPE to honour: loaded, as run.c loads them
  const zeros = bytes.slice();
  zeros.fill(0, at);
  assert.equal(parseCheckpoint(zeros).config.seqLen, seqLen);
});
