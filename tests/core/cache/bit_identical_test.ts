// The TS reference takes the WASM kernels' f32 steps (core/cache/kernel_score.ts, Partial.addBlock),
// so the two backends give equal outputs, not merely close ones: random shapes (head_dim 4…160,
// 1–8 query heads per KV head), uniform and tiered policies over every storable format, window and
// staging formats, keys before RoPE or not, integer path on and off, keys at unit, offset, tiny and
// large scales, attended at random lengths. The first case (a review's fuzz, seed 3599665430) is
// one whose softmax sum l had been added in another order than the kernel's lanes: it differed in
// the last bit of one output (4.8e-8).
import assert from "node:assert/strict";
import { formatNames } from "../../../codecs/format.ts";
import { MixedPrecisionKVCache } from "../../../core/cache/mixed_cache.ts";
import { type CachePolicy, tieredPolicy, uniformPolicy } from "../../../core/cache/policy.ts";

/** The review's generator (mulberry32 steps and draws in its order), so its seeds replay. */
function runCase(seed: number): { attends: number; unequal: string[] } | undefined {
  let s = seed >>> 0;
  const rnd = () => {
    s = (s + 0x6D2B79F5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const pick = <T>(a: readonly T[]) => a[Math.floor(rnd() * a.length)];
  const ri = (a: number, b: number) => a + Math.floor(rnd() * (b - a + 1));
  const gauss = () => Math.sqrt(-2 * Math.log(rnd() + 1e-12)) * Math.cos(2 * Math.PI * rnd());
  const fmts = formatNames().filter((f) => !f.endsWith("-heads"));
  const winFmts = [
    "fp32",
    "fp16",
    "bf16",
    "fp8e4m3",
    "fp8e5m2",
    "fp8e4m3",
    "fp8e5m2",
    ...fmts.filter((f) => f.endsWith("-token")),
  ];
  const d = rnd() < 0.5 ? 4 * ri(1, 40) : pick([8, 16, 32, 64, 96, 128, 160, 48, 24]);
  const group = pick([1, 2, 3, 4, 5, 6, 8]);
  const nKv = ri(1, 2), maxSeqLen = ri(8, 300);
  const pageTokens = pick([1, 3, 8, 16, 32, 64, 128, 200, 256]);
  const rope = rnd() < 0.4 ? pick([10000, 500000, 100]) : undefined;
  const sinkTokens = pick([0, 0, 1, 4]), recentWindow = pick([0, 0, 1, 7, 32]);
  const staged = rnd() < 0.4;
  const integerDot = rnd() < 0.5;
  const scaleK = pick(["unit", "off40", "tiny", "big"]), scaleV = pick(["unit", "off40", "tiny"]);
  const tiered = rnd() < 0.3;
  const fits = (f: string) => {
    const m = /-g(\d+)-(token|channel)$/.exec(f);
    return !m || (m[2] === "token" ? d % Number(m[1]) : pageTokens % Number(m[1])) === 0;
  };
  const F = fmts.filter(fits), WF = winFmts.filter(fits);
  const pair = () => ({ keyFormat: pick(F), valueFormat: pick(F) });
  const windowFormat = pick(WF), stagingFormat = staged ? pick(WF) : undefined;
  let policy: CachePolicy;
  try {
    const common = {
      sinkTokens,
      recentWindow,
      windowFormat,
      stagingFormat,
      pageTokens,
      ...(rope ? { ropeBase: rope } : {}),
    };
    policy = tiered
      ? tieredPolicy({
        ...common,
        label: "t",
        tiers: [
          Array.from({ length: nKv }, () => [
            { minScore: 0.5, ...pair() },
            { minScore: 0.05, ...pair() },
            { minScore: 0, ...pair() },
          ]),
        ],
      })
      : uniformPolicy({ ...common, ...pair() });
  } catch {
    return undefined; // a combination a policy refuses (the generator draws freely)
  }
  const shape = { nLayers: 1, nHeads: nKv * group, nKvHeads: nKv, headDim: d, maxSeqLen };
  let ts: MixedPrecisionKVCache, wasm: MixedPrecisionKVCache;
  try {
    ts = new MixedPrecisionKVCache(shape, policy, { backend: "ts", integerDot });
    wasm = new MixedPrecisionKVCache(shape, policy, { backend: "wasm", integerDot });
  } catch {
    return undefined;
  }
  const draw = (kind: string) =>
    Float32Array.from({ length: nKv * d }, (_, i) => {
      const g = gauss();
      return kind === "unit"
        ? g
        : kind === "off40"
        ? 40 + 3 * g + (i % 7)
        : kind === "tiny"
        ? 1e-3 * g
        : 8 * g;
    });
  const a = new Float32Array(shape.nHeads * d), b = new Float32Array(shape.nHeads * d);
  const len = ri(1, maxSeqLen), unequal: string[] = [];
  let attends = 0;
  for (let p = 0; p < len; p++) {
    const k = draw(scaleK), v = draw(scaleV);
    ts.append(0, p, k, v);
    wasm.append(0, p, k, v);
    if (rnd() < 0.35 || p === len - 1) {
      const q = Float32Array.from(
        { length: shape.nHeads * d },
        () => gauss() * (scaleK === "tiny" ? 1000 : 1),
      );
      ts.attend(0, q, a);
      wasm.attend(0, q, b);
      attends++;
      const at = a.findIndex((x, i) => !Object.is(x, b[i]));
      if (at >= 0) unequal.push(`seed ${seed} T=${p + 1} out[${at}]: ts ${a[at]} wasm ${b[at]}`);
    }
  }
  return { attends, unequal };
}

Deno.test("TS and WASM attention outputs are equal to the last bit on random caches", () => {
  const seeds = [3599665430, ...Array.from({ length: 150 }, (_, i) => 7919 * (i + 1))];
  let cases = 0, attends = 0;
  const unequal: string[] = [];
  for (const seed of seeds) {
    const r = runCase(seed);
    if (!r) continue;
    cases++;
    attends += r.attends;
    unequal.push(...r.unequal);
  }
  assert.ok(cases >= 100 && attends >= 1000, `${cases} cases, ${attends} attend calls`);
  assert.deepEqual(unequal, []);
});
