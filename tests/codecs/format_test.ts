import assert from "node:assert/strict";
import { FormatError, ShapeError } from "../../core/errors.ts";
import {
  checkLength,
  formatNames,
  getFormat,
  GROUP_AXES,
  GROUP_SIZES,
  INT_BITS,
  wordsForLength,
} from "../../codecs/format.ts";

Deno.test("getFormat() pins the block size of representative formats", () => {
  // [name, u32 words per group, group size, bits per element]
  const table: [string, number, number, number][] = [
    ["fp32", 1, 1, 32],
    ["fp16", 1, 2, 16],
    ["bf16", 1, 2, 16],
    ["fp8e4m3", 1, 4, 8],
    ["fp8e5m2", 1, 4, 8],
    ["int2-g8-heads", 2, 8, 8],
    ["int3-g8-heads", 2, 8, 8],
    ["int5-g8-token", 3, 8, 12],
    ["int6-g8-token", 3, 8, 12],
    ["int4-g32-token", 5, 32, 5],
    ["int3-g32-token", 4, 32, 4],
    ["int2-g128-channel", 9, 128, 2.25],
    ["int8-g64-channel", 17, 64, 8.5],
    ["int5-g16-heads", 4, 16, 8],
    ["int8s-g32-token", 9, 32, 9],
    ["fp8e4m3-g16-token", 5, 16, 10],
    ["fp8e5m2-g128-channel", 33, 128, 8.25],
  ];
  for (const [name, wpg, group, bpe] of table) {
    const f = getFormat(name);
    assert.deepEqual([f.wordsPerGroup, f.group, f.bitsPerElement], [wpg, group, bpe], name);
  }
});

Deno.test("getFormat() gives every grouped format a header word plus ceil(G·b/32) code words", () => {
  const names = formatNames();
  assert.equal(names.length, 5 + GROUP_AXES.length * GROUP_SIZES.length * (INT_BITS.length + 3));
  for (const name of names) {
    const f = getFormat(name);
    assert.equal(f.name, name);
    assert.equal(f.wordsPerGroup, (f.scaled ? 1 : 0) + Math.ceil((f.group * f.bits) / 32), name);
    assert.equal(f.bitsPerElement, (32 * f.wordsPerGroup) / f.group, name);
    if (f.kind === "int") assert.equal(f.qmax, 2 ** f.bits - 1);
    if (f.kind === "int") assert.match(name, new RegExp(`^int${f.bits}-g${f.group}-${f.axis}$`));
  }
});

Deno.test("getFormat() throws FormatError naming an unknown format", () => {
  for (const bad of ["int7-g32-token", "int4-g24-token", "int4-g32-row", "fp12", ""]) {
    assert.throws(
      () => getFormat(bad),
      (e: Error) => e instanceof FormatError && e.message.includes(`"${bad}"`),
    );
  }
  // a number is named as one, not quoted as if it were a name
  assert.throws(() => getFormat(5 as never), /FormatError: unknown format 5; expected e\.g\./);
});

Deno.test("wordsForLength() counts whole groups and rejects lengths off the group", () => {
  const f = getFormat("int4-g32-token");
  assert.equal(wordsForLength(f, 96), 15);
  assert.equal(wordsForLength(f, 0), 0);
  for (const bad of [31, 33, -32, 32.5, NaN]) {
    assert.throws(() => checkLength(f, bad), ShapeError);
  }
  assert.throws(() => wordsForLength(getFormat("fp16"), 3), /group size 2/);
});

Deno.test("getFormat() agrees with the bits-per-element table in FORMAT.md", async () => {
  const md = await Deno.readTextFile(new URL("../../codecs/FORMAT.md", import.meta.url));
  // the table rows: a format label and five numbers
  const rows = md.split("\n").filter((l) =>
    /^\| (int\d|int8s|fp8e4m3-g)[^|]*(\|\s*[\d.]+\s*){5}\|$/.test(l)
  );
  assert.equal(rows.length, 8);
  for (const row of rows) {
    const [label, ...cells] = row.split("|").slice(1, -1).map((c) => c.trim());
    const name = (g: number) =>
      label.startsWith("fp8") ? `fp8e4m3-g${g}-token` : `${label}-g${g}-token`;
    GROUP_SIZES.forEach((g, i) =>
      assert.equal(getFormat(name(g)).bitsPerElement, Number(cells[i]), `${label} G=${g}`)
    );
  }
});
