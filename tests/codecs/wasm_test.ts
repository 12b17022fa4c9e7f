import assert from "node:assert/strict";
import { formatNames, getFormat } from "../../codecs/format.ts";
import { tsCodec } from "../../codecs/ts_codec.ts";
import { loadWasmCodecs, loadWasmCodecsSync, wasmCodec } from "../../codecs/wasm.ts";
import { CorruptDataError, InvalidValueError, ShapeError } from "../../core/errors.ts";
import { DISTRIBUTIONS, normal, rng } from "./_inputs.ts";

function bitsOf(x: Float32Array): Uint32Array {
  return new Uint32Array(x.buffer, x.byteOffset, x.length);
}

/** Encodes with both back ends; asserts identical words, or identical error class and index. */
function crossEncode(
  name: string,
  x: Float32Array,
  what: string,
  clamp = false,
): Uint32Array | undefined {
  const run = (c: typeof tsCodec extends (n: string) => infer C ? C : never) => {
    try {
      return { words: c.encode(x, { clamp }).words };
    } catch (e) {
      return { error: e as InvalidValueError };
    }
  };
  const t = run(tsCodec(name)), w = run(wasmCodec(name) as never);
  if (t.error || w.error) {
    assert.ok(t.error instanceof InvalidValueError, `${what}: ts ${t.error}`);
    assert.ok(w.error instanceof InvalidValueError, `${what}: wasm ${w.error} vs ts ${t.error}`);
    assert.equal(w.error.index, t.error.index, `${what}: error index`);
    assert.equal(w.error.message, t.error.message, `${what}: message`);
    return undefined;
  }
  const i = t.words!.findIndex((v, k) => v !== w.words![k]);
  if (i >= 0) {
    assert.fail(
      `${what}: word ${i} ts 0x${t.words![i].toString(16)} wasm 0x${w.words![i].toString(16)}`,
    );
  }
  return t.words;
}

function crossDecode(name: string, words: Uint32Array, n: number, what: string): Float32Array {
  const a = new Float32Array(n), b = new Float32Array(n);
  tsCodec(name).decodeWords(words, n, a);
  wasmCodec(name).decodeWords(words, n, b);
  const ab = bitsOf(a), bb = bitsOf(b);
  const i = ab.findIndex((v, k) => v !== bb[k]);
  if (i >= 0) {
    assert.fail(
      `${what}: element ${i} ts ${a[i]} (0x${ab[i].toString(16)}) wasm ${b[i]} (0x${
        bb[i].toString(16)
      })`,
    );
  }
  return a;
}

Deno.test("WasmCodec encodes and decodes bit-identically to TsCodec for every format and distribution", () => {
  const r = rng(41);
  for (const name of formatNames()) {
    const G = getFormat(name).group;
    for (const dist of DISTRIBUTIONS) {
      // odd group counts exercise the SIMD tails
      const n = Math.max(G, 4) * (3 + Math.floor(r() * 40)) + (G === 1 ? 3 : G === 2 ? 2 : 0);
      const x = dist.make(r, n - (n % G), G);
      const what = `${name} ${dist.name} n=${x.length}`;
      const words = crossEncode(name, x, what) ?? crossEncode(name, x, what + " clamped", true)!;
      crossDecode(name, words, x.length, what);
    }
  }
});

Deno.test("WasmCodec decodes all 65,536 fp16/bf16 patterns and all 256 fp8 codes like TsCodec", () => {
  const all16 = new Uint32Array(32768);
  for (let i = 0; i < 32768; i++) all16[i] = (2 * i) | ((2 * i + 1) << 16);
  crossDecode("fp16", all16, 65536, "fp16");
  crossDecode("bf16", all16, 65536, "bf16");
  const all8 = new Uint32Array(64);
  for (let i = 0; i < 64; i++) {
    all8[i] = (4 * i) | ((4 * i + 1) << 8) | ((4 * i + 2) << 16) | ((4 * i + 3) << 24);
  }
  for (const name of ["fp8e4m3", "fp8e5m2"]) {
    const y = crossDecode(name, all8, 256, name);
    // and back: every finite value encodes to its own code on both back ends
    const finite = y.filter((v) => Number.isFinite(v));
    const words = crossEncode(name, finite.slice(0, finite.length - (finite.length % 4)), name)!;
    assert.ok(words.length > 0);
  }
});

Deno.test("WasmCodec encodes random f32 bit patterns to fp16/bf16/fp8 like TsCodec", () => {
  const r = rng(42);
  const x = new Float32Array(4096);
  const xb = bitsOf(x);
  for (
    const [name, maxBits] of [["fp16", 0x477fefff], ["bf16", 0x7f7f7fff], ["fp8e4m3", 0x43e80000], [
      "fp8e5m2",
      0x476fffff,
    ]] as const
  ) {
    for (let i = 0; i < x.length; i++) {
      xb[i] = (Math.floor(r() * maxBits) | (r() < 0.5 ? 0x80000000 : 0)) >>> 0;
    }
    crossDecode(name, crossEncode(name, x, name)!, x.length, name);
  }
});

Deno.test("WasmCodec reports the same typed errors as TsCodec and writes nothing", () => {
  const r = rng(43);
  for (
    const name of [
      "int4-g32-token",
      "int3-g8-heads",
      "int8s-g16-heads",
      "fp16",
      "bf16",
      "fp32",
      "fp8e4m3",
      "fp8e5m2-g32-channel",
    ]
  ) {
    const w = wasmCodec(name);
    for (const bad of [NaN, Infinity, -Infinity, 1e30]) {
      const x = Float32Array.from({ length: 128 }, () => normal(r));
      const at = 9 + Math.floor(r() * 100);
      x[at] = bad;
      const words = new Uint32Array(w.wordsFor(128)).fill(0xdeadbeef);
      if (bad === 1e30 && (name === "fp32" || name === "bf16")) continue; // both hold 1e30
      assert.throws(
        () => w.encodeInto(x, words),
        (e: Error) => e instanceof InvalidValueError && e.index === at,
        `${name} ${bad}`,
      );
      assert.ok(words.every((v) => v === 0xdeadbeef), `${name}: nothing written`);
      crossEncode(name, x, `${name} ${bad}`);
      crossEncode(name, x, `${name} ${bad} clamped`, true);
    }
  }
  const c = wasmCodec("int4-g32-token");
  const x = Float32Array.from({ length: 64 }, () => normal(r));
  const block = c.encode(x);
  const out = new Float32Array(64).fill(3);
  assert.throws(() => c.decode(block, new Float32Array(65)), ShapeError);
  assert.throws(() => c.decodeWords(block.words.subarray(0, 7), 64, out), CorruptDataError);
  const corrupt = block.words.slice();
  corrupt[5] = 0xfc00_3c00; // group 1: minimum −Inf
  assert.throws(
    () => c.decodeWords(corrupt, 64, out),
    (e: Error) => e instanceof CorruptDataError && e.offset === 20,
  );
  assert.throws(
    () => tsCodec("int4-g32-token").decodeWords(corrupt, 64, out),
    (e: Error) => e instanceof CorruptDataError && e.offset === 20,
  );
  assert.ok(out.every((v) => v === 3), "nothing written");
});

Deno.test("encode options are checked on both codecs: a misspelt field or a clamp not boolean is named", () => {
  const r = rng(81), x = Float32Array.from({ length: 16 }, () => normal(r));
  for (const c of [tsCodec("int4-g8-token"), wasmCodec("int4-g8-token")]) {
    const words = new Uint32Array(c.wordsFor(16)).fill(0xdeadbeef);
    const bad: [unknown, RegExp][] = [
      [{ clmap: true }, /encode options have unknown field "clmap"; the fields are clamp/],
      [{ clamp: "yes" }, /int4-g8-token: clamp is "yes", expected true or false/],
      [{ clamp: 1 }, /clamp is 1, expected true or false/],
      [null, /encode options are null, expected an object/],
    ];
    for (const [opts, message] of bad) {
      assert.throws(
        () => c.encode(x, opts as never),
        (e: Error) => e instanceof InvalidValueError && message.test(e.message),
        String(opts),
      );
      assert.throws(() => c.encodeInto(x, words, opts as never), InvalidValueError);
      assert.ok(words.every((w) => w === 0xdeadbeef), "nothing written");
    }
    assert.deepEqual(c.encode(x, { clamp: false }).words, c.encode(x).words);
  }
});

Deno.test("a bad header in any of four groups checked together is named like the TS reference", () => {
  // the WASM header checks (the int decoder's and firstBadHeader's) take four groups at a time,
  // then a tail one by one: every lane and the tail must name the group and byte offset TS names
  const r = rng(47);
  const names = ["int4-g32-token", "int8-g32-token", "int2-g32-token", "int8s-g32-token"];
  for (const name of [...names, "fp8e4m3-g32-token"]) {
    const spec = getFormat(name), n = 9 * spec.group;
    const words = wasmCodec(name).encode(Float32Array.from({ length: n }, () => normal(r))).words;
    // +Inf scale, NaN scale, negative scale, and for int formats −Inf minimum
    const bads = spec.kind === "int"
      ? [0x7c00, 0x7e00, 0xbc00, 0xfc00_3c00]
      : [0x7c00, 0x7e00, 0xbc00];
    for (let g = 0; g < 9; g++) {
      for (const bad of bads) {
        const w = words.slice();
        w[g * spec.wordsPerGroup] = bad;
        const out = new Float32Array(n).fill(3);
        const offset = 4 * g * spec.wordsPerGroup;
        let message = "";
        assert.throws(() => tsCodec(name).decodeWords(w, n, out), (e: Error) => {
          message = e.message;
          return e instanceof CorruptDataError && e.offset === offset && /group/.test(message);
        }, `${name} ts group ${g}`);
        // the same error, message included
        const named = (e: Error) =>
          e instanceof CorruptDataError && e.offset === offset && e.message === message;
        assert.throws(() => wasmCodec(name).decodeWords(w, n, out), named, `${name} group ${g}`);
        assert.throws(() => wasmCodec(name).decodeView(w, n), named, `${name} view group ${g}`);
        assert.ok(out.every((v) => v === 3), `${name} group ${g}: nothing written`);
      }
    }
  }
});

Deno.test("loadWasmCodecs() shares one instance whose memory stops growing across many calls", async () => {
  const a = await loadWasmCodecs();
  assert.equal(a, loadWasmCodecsSync());
  const r = rng(44);
  const c = a.codec("int4-g32-token");
  const x = Float32Array.from({ length: 1 << 16 }, () => normal(r));
  const y = new Float32Array(x.length);
  c.decode(c.encode(x), y);
  const size = a.kernels.memory.buffer.byteLength;
  for (let i = 0; i < 200; i++) {
    const n = 32 * (1 + Math.floor(r() * 2047));
    const xs = x.subarray(0, n);
    c.decode(c.encode(xs), y.subarray(0, n));
  }
  assert.equal(
    a.kernels.memory.buffer.byteLength,
    size,
    "no growth for calls no larger than before",
  );
  assert.ok(size < (x.length * 4) * 3, `memory ${size} bytes stays near one call's footprint`);
});

Deno.test("WasmCodec.decodeView() returns the decodeWords() values without copying out", () => {
  const r = rng(45);
  for (const name of ["int4-g32-token", "int3-g16-heads", "fp8e4m3-g8-channel", "fp16", "bf16"]) {
    const c = wasmCodec(name);
    const x = Float32Array.from({ length: 512 }, () => normal(r));
    const block = c.encode(x);
    const y = new Float32Array(512);
    c.decodeWords(block.words, 512, y);
    const v = c.decodeView(block.words, 512);
    assert.ok(v.buffer !== y.buffer && v.every((e, i) => Object.is(e, y[i])), name);
  }
  // a bad header gives decodeWords()'s error, whether the kernel meets it (int) or a check first
  for (const name of ["int4-g32-token", "int8s-g32-token"]) {
    const c = wasmCodec(name), wpg = getFormat(name).wordsPerGroup;
    const w = c.encode(Float32Array.from({ length: 64 }, () => normal(r))).words;
    w[wpg] = 0x7c00;
    const message = (() => {
      try {
        c.decodeWords(w, 64, new Float32Array(64));
      } catch (e) {
        return (e as Error).message;
      }
    })();
    assert.match(message ?? "", /group 1/, name);
    assert.throws(
      () => c.decodeView(w, 64),
      (e: Error) => e instanceof CorruptDataError && e.message === message,
      name,
    );
    assert.throws(() => c.decodeView(w.subarray(0, wpg + 4), 64), CorruptDataError);
  }
});

Deno.test("decoding and bounding in place (out over the words) give the same values on TS and WASM", async () => {
  await loadWasmCodecs();
  const next = rng(31);
  for (const name of ["fp16", "bf16", "fp8e4m3", "int4-g32-token", "int8s-g16-token", "fp32"]) {
    // 65536: past the WASM decoder's 16384-element chunks, whose output once overwrote words a
    // later chunk still had to read
    for (const n of [256, 65536]) {
      const x = Float32Array.from({ length: n }, () => 4 * next() - 2);
      const words = tsCodec(name).encode(x).words;
      const want = new Float32Array(n), bound = new Float32Array(n);
      tsCodec(name).decodeWords(words, n, want);
      tsCodec(name).errorBound(words, n, bound);
      for (const codec of [tsCodec(name), wasmCodec(name)]) {
        // the words at the start of a buffer big enough for the decoded floats
        for (const [what, expected] of [["decodeWords", want], ["errorBound", bound]] as const) {
          const buf = new ArrayBuffer(4 * n);
          new Uint32Array(buf).set(words);
          const out = new Float32Array(buf);
          codec[what](new Uint32Array(buf, 0, words.length), n, out);
          assert.deepEqual(out, expected, `${name} n=${n} ${what} ${codec.constructor.name}`);
        }
      }
    }
  }
});

Deno.test("a decodeView() result passed back in is read from a copy, or refused as an output", async () => {
  await loadWasmCodecs();
  const n = 65536, r = rng(32), x = Float32Array.from({ length: n }, () => normal(r));
  const int2 = wasmCodec("int2-g128-token"), fp32 = wasmCodec("fp32");
  const view = int2.decodeView(int2.encode(x).words, n);
  const copy = view.slice();
  // as input: the same words as from a copy (the call lays its own buffers over the view)
  const words = fp32.encode(copy).words, fromView = fp32.encode(view).words;
  assert.ok(fromView.every((w, i) => w === words[i]), "encode of a view reads a copy");
  // as output: refused by name, nothing written
  const again = int2.decodeView(int2.encode(x).words, n);
  assert.throws(
    () => fp32.decodeWords(words, n, again),
    (e: Error) =>
      e instanceof InvalidValueError && /out is a view into this codec module/.test(e.message),
  );
  assert.ok(again.every((v, i) => v === copy[i]), "the refused output view is unchanged");
});
