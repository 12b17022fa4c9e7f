import assert from "node:assert/strict";
import {
  bf16BitsToF32,
  bitsToF32,
  f16BitsToF32,
  f16BitsToF32Bits,
  f32Bits,
  f32ToBf16Bits,
  f32ToF16Bits,
  f32ToF16BitsDown,
  f32ToF16BitsUp,
  f32ToFp8Bits,
  fp8BitsToF32,
  type Fp8Kind,
  halfUlp,
} from "../../codecs/float_bits.ts";
import { FormatError, InvalidValueError } from "../../core/errors.ts";
import { rng } from "./_inputs.ts";

const hasF16 = typeof (Math as { f16round?: unknown }).f16round === "function" &&
  typeof (globalThis as { Float16Array?: unknown }).Float16Array === "function";

/** Independent fp16 reference: the runtime's Float16Array when present, else arithmetic. */
function refF16Value(h: number): number {
  if (hasF16) {
    const u = new Uint16Array([h]);
    // deno-lint-ignore no-explicit-any
    return new (globalThis as any).Float16Array(u.buffer)[0];
  }
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 31, m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15));
}

/** Independent round-to-nearest-even onto a float grid with `p` significant bits, min exponent `emin`. */
function refRound(v: number, p: number, emin: number, max: number, overflow: number): number {
  if (v === 0) return v;
  const a = Math.abs(v);
  const e = Math.max(Math.floor(Math.log2(a)), emin);
  // Math.log2 can be off by one near powers of two: correct it
  const ee = 2 ** e > a && e > emin ? e - 1 : 2 ** (e + 1) <= a ? e + 1 : e;
  const ulp = 2 ** (ee - p + 1);
  const r = a / ulp;
  let n = Math.round(r);
  if (n - r === 0.5 && n % 2 === 1) n -= 1;
  const out = n * ulp > max ? overflow : n * ulp;
  return v < 0 ? -out : out;
}

Deno.test("f16BitsToF32() matches the reference on all 65,536 patterns", () => {
  for (let h = 0; h < 65536; h++) {
    const v = f16BitsToF32(h), ref = refF16Value(h);
    if (Number.isNaN(ref)) {
      assert.ok(Number.isNaN(v), `0x${h.toString(16)}`);
      // NaN keeps its sign and payload: f32 bits are sign | 0x7f800000 | m << 13
      assert.equal(
        f16BitsToF32Bits(h),
        ((h & 0x8000) << 16 | 0x7f800000 | (h & 0x3ff) << 13) >>> 0,
      );
    } else assert.ok(Object.is(v, ref), `0x${h.toString(16)}: ${v} vs ${ref}`);
  }
});

Deno.test("f32ToF16Bits() returns every one of the 65,536 patterns for its own value", () => {
  for (let h = 0; h < 65536; h++) {
    const back = f32ToF16Bits(f16BitsToF32(h));
    if ((h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0) {
      assert.equal(back, h | 0x200, `NaN 0x${h.toString(16)} stays NaN, made quiet`);
    } else assert.equal(back, h, `0x${h.toString(16)}`);
  }
});

Deno.test("f32ToF16Bits() rounds random values and all midpoints to nearest even", () => {
  const r = rng(11);
  const cases: number[] = [];
  for (let h = 0; h < 0x7c00; h++) {
    // midpoints between neighbours, and one f32 ulp either side of them
    const lo = f16BitsToF32(h), hi = h === 0x7bff ? 65536 : f16BitsToF32(h + 1);
    const mid = Math.fround((lo + hi) / 2);
    cases.push(mid, -mid, bitsToF32(f32Bits(mid) + 1), bitsToF32(f32Bits(mid) - 1));
  }
  for (let i = 0; i < 100000; i++) {
    cases.push(bitsToF32(Math.floor(r() * 0x7f800000)) * (r() < 0.5 ? -1 : 1));
  }
  const f16round = hasF16
    ? (Math as unknown as { f16round(v: number): number }).f16round
    : (v: number) => refRound(v, 11, -14, 65504, Infinity);
  for (const v of cases) {
    const got = f16BitsToF32(f32ToF16Bits(v)), want = f16round(v);
    if (!Object.is(got, want)) assert.fail(`f32ToF16Bits(${v}) = ${got}, reference ${want}`);
  }
});

Deno.test("f32ToF16BitsDown() and f32ToF16BitsUp() bracket v with adjacent fp16 values", () => {
  const r = rng(12);
  for (let i = 0; i < 50000; i++) {
    const v = Math.fround((r() * 2 - 1) * 2 ** Math.floor(r() * 44 - 28));
    const d = f16BitsToF32(f32ToF16BitsDown(v)), u = f16BitsToF32(f32ToF16BitsUp(v));
    assert.ok(d <= v && v <= u, `${d} <= ${v} <= ${u}`);
    if (d === u) assert.equal(d, v);
    else {
      // no fp16 lies strictly between: the nearest-even result is one of the two
      const n = f16BitsToF32(f32ToF16Bits(v));
      assert.ok(n === d || n === u, `${v} rounds to ${n}, not ${d} or ${u}`);
    }
  }
  assert.equal(f32ToF16BitsDown(-1e-30), 0x8001);
  assert.equal(f32ToF16BitsUp(1e-30), 0x0001);
  assert.equal(f32ToF16BitsDown(-65505), 0xfc00);
  assert.equal(f32ToF16BitsUp(65504.5), 0x7c00);
  assert.equal(f32ToF16BitsUp(-0), 0x8000);
});

Deno.test("bf16BitsToF32() is the pattern shifted left 16 on all 65,536 patterns", () => {
  const dv = new DataView(new ArrayBuffer(4));
  for (let h = 0; h < 65536; h++) {
    dv.setUint16(0, h); // big-endian: the high half of the f32
    dv.setUint16(2, 0);
    const v = bf16BitsToF32(h), ref = dv.getFloat32(0);
    assert.ok(Object.is(v, ref) || (Number.isNaN(v) && Number.isNaN(ref)), `0x${h.toString(16)}`);
    if (!Number.isNaN(v)) assert.equal(f32ToBf16Bits(v), h);
  }
});

Deno.test("f32ToBf16Bits() rounds random values and all midpoints to nearest even", () => {
  const r = rng(13);
  const cases: number[] = [];
  for (let h = 0; h < 0x7f80; h += 1) cases.push(bitsToF32((h << 16 | 0x8000) >>> 0));
  for (let i = 0; i < 100000; i++) {
    cases.push(bitsToF32(Math.floor(r() * 0x7f800000)) * (r() < 0.5 ? -1 : 1));
  }
  for (const v of cases) {
    const got = bf16BitsToF32(f32ToBf16Bits(v));
    const want = refRound(v, 8, -126, 3.3895313892515355e38, Infinity);
    if (!Object.is(got, want)) assert.fail(`f32ToBf16Bits(${v}) = ${got}, reference ${want}`);
  }
  assert.equal(f32ToBf16Bits(NaN) & 0x7fc0, 0x7fc0);
});

/** Known fp8 values from the OCP 8-bit floating point specification (v1.0, table 1). */
const FP8_KNOWN: [Fp8Kind, number, number][] = [
  ["e4m3", 0x7e, 448],
  ["e4m3", 0x08, 2 ** -6],
  ["e4m3", 0x07, 0.875 * 2 ** -6],
  ["e4m3", 0x01, 2 ** -9],
  ["e4m3", 0x38, 1],
  ["e4m3", 0xfe, -448],
  ["e4m3", 0x80, -0],
  ["e5m2", 0x7b, 57344],
  ["e5m2", 0x04, 2 ** -14],
  ["e5m2", 0x03, 0.75 * 2 ** -14],
  ["e5m2", 0x01, 2 ** -16],
  ["e5m2", 0x3c, 1],
  ["e5m2", 0x7c, Infinity],
  ["e5m2", 0xfc, -Infinity],
];

Deno.test("fp8BitsToF32() matches the OCP spec's values on all 256 codes", () => {
  for (const [kind, c, v] of FP8_KNOWN) {
    assert.ok(Object.is(fp8BitsToF32(c, kind), v), `${kind} 0x${c.toString(16)}`);
  }
  for (const kind of ["e4m3", "e5m2"] as Fp8Kind[]) {
    const [E, M] = kind === "e4m3" ? [4, 3] : [5, 2];
    const bias = 2 ** (E - 1) - 1;
    for (let c = 0; c < 256; c++) {
      const e = (c >> M) & (2 ** E - 1), m = c & (2 ** M - 1), s = c & 0x80 ? -1 : 1;
      let want = s *
        (e === 0 ? (m / 2 ** M) * 2 ** (1 - bias) : (1 + m / 2 ** M) * 2 ** (e - bias));
      if (kind === "e4m3" && (c & 0x7f) === 0x7f) want = NaN;
      if (kind === "e5m2" && e === 31) want = m === 0 ? s * Infinity : NaN;
      const got = fp8BitsToF32(c, kind);
      assert.ok(Object.is(got, want) || (Number.isNaN(got) && Number.isNaN(want)), `${kind} ${c}`);
    }
  }
});

Deno.test("f32ToFp8Bits() returns every code for its own value and rounds like a nearest search", () => {
  const r = rng(14);
  for (const kind of ["e4m3", "e5m2"] as Fp8Kind[]) {
    const finite: [number, number][] = [];
    for (let c = 0; c < 256; c++) {
      const v = fp8BitsToF32(c, kind);
      if (Number.isNaN(v)) {
        assert.ok(Number.isNaN(fp8BitsToF32(f32ToFp8Bits(v, kind), kind)));
        continue;
      }
      assert.equal(f32ToFp8Bits(v, kind), c, `${kind} 0x${c.toString(16)}`);
      if (Number.isFinite(v)) finite.push([v, c]);
    }
    const max = kind === "e4m3" ? 448 : 57344;
    // brute-force reference: nearest finite code, ties to the even code; beyond the top:
    // e4m3 saturates, e5m2 goes to Inf at or above max + ulp/2
    const nearest = (x: number): number => {
      if (kind === "e5m2" && Math.abs(x) >= 61440) return x < 0 ? 0xfc : 0x7c;
      let best = -1, bestD = Infinity;
      for (const [v, c] of finite) {
        const d = Math.abs(v - x);
        if (d < bestD || (d === bestD && (c & 1) === 0 && (best & 1) === 1)) [best, bestD] = [c, d];
      }
      if (best === 0x80 && !(x < 0 || Object.is(x, -0))) best = 0;
      if (best === 0 && (x < 0 || Object.is(x, -0))) best = 0x80;
      return best;
    };
    const xs: number[] = [];
    const vals = finite.map(([v]) => v).sort((a, b) => a - b);
    for (let i = 0; i + 1 < vals.length; i++) xs.push((vals[i] + vals[i + 1]) / 2);
    for (let i = 0; i < 20000; i++) xs.push((r() * 2 - 1) * max * 1.2 * 2 ** -Math.floor(r() * 20));
    for (const x of xs) {
      const v = Math.fround(x);
      assert.equal(f32ToFp8Bits(v, kind), nearest(v), `${kind} ${v}`);
    }
    assert.equal(f32ToFp8Bits(1e9, kind), kind === "e4m3" ? 0x7e : 0x7c);
  }
});

Deno.test("halfUlp() is half the grid spacing, the subnormal spacing below the min normal", () => {
  assert.equal(halfUlp(1, 15, 10), 2 ** -11);
  assert.equal(halfUlp(-1.5, 15, 10), 2 ** -11);
  assert.equal(halfUlp(65504, 15, 10), 16);
  assert.equal(halfUlp(0, 15, 10), 2 ** -25);
  assert.equal(halfUlp(448, 7, 3), 16);
  assert.equal(halfUlp(2 ** -9, 7, 3), 2 ** -10);
  assert.equal(halfUlp(0, 127, 7), 2 ** -134);
});

Deno.test("the bit-pattern decoders and f32ToFp8Bits() refuse patterns and kinds they do not know", () => {
  // out-of-range bits once decoded their low half silently (0x13c00 as fp16 1.0), and an unknown
  // fp8 kind was read as e5m2
  for (const bad of [0x13c00, -1, 1.5, NaN, 0x10000]) {
    assert.throws(() => f16BitsToF32(bad), InvalidValueError, `fp16 ${bad}`);
    assert.throws(() => bf16BitsToF32(bad), InvalidValueError, `bf16 ${bad}`);
  }
  for (const bad of [0x138, -1, 0.5, 256]) {
    assert.throws(() => fp8BitsToF32(bad, "e4m3"), InvalidValueError, `e4m3 ${bad}`);
  }
  for (const kind of ["e4m4", "", "E4M3"]) {
    assert.throws(() => fp8BitsToF32(0x38, kind as Fp8Kind), FormatError, kind);
    assert.throws(() => f32ToFp8Bits(1, kind as Fp8Kind), FormatError, kind);
  }
  // the edges of the accepted range still decode
  assert.equal(f16BitsToF32(0xffff), NaN);
  assert.equal(bf16BitsToF32(0), 0);
  assert.equal(fp8BitsToF32(0xff, "e5m2"), NaN);
  assert.equal(f32ToFp8Bits(1, "e4m3"), 0x38);
});
