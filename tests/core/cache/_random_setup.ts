// Random cache setups shared by the random-operation tests of the CPU and GPU caches.
import { getFormat } from "../../../codecs/format.ts";
import { type CachePolicy, tieredPolicy, uniformPolicy } from "../../../core/cache/policy.ts";

const TOKEN_FORMATS = [
  "fp32",
  "fp16",
  "bf16",
  "fp8e4m3",
  "int8-g8-token",
  "int4-g8-token",
  "int2-g8-token",
  "int8s-g8-token",
  "int4-g32-token",
  "int8-g32-token",
];
const CHANNEL_FORMATS = ["int4-g8-channel", "int2-g16-channel", "int8-g32-channel"];
const WINDOW_FORMATS = ["fp32", "fp16", "int8-g8-token", "int8-g32-token"];

/**
 * One random cache setup: a shape and a policy whose formats fit it (uniform or up to three tiers,
 * window format, sometimes a staging format, sinks, window, page size and sometimes keys before
 * RoPE).
 * @param next random numbers in [0, 1)
 * @returns the shape, a policy factory and a label naming both
 */
export function randomSetup(next: () => number) {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)];
  const headDim = pick([8, 16, 32]), nKvHeads = pick([1, 2]), perKv = pick([1, 2, 4]);
  const fits = (name: string) => {
    const f = getFormat(name);
    return f.axis === "channel" || headDim % f.group === 0;
  };
  const keys = [...TOKEN_FORMATS, ...CHANNEL_FORMATS].filter(fits);
  const values = keys;
  const nTiers = pick([1, 1, 2, 3]);
  const pairs = Array.from({ length: nTiers }, () => ({
    keyFormat: pick(keys),
    valueFormat: pick(values),
  }));
  const quantum = Math.max(
    1,
    ...pairs.flatMap((p) => [p.keyFormat, p.valueFormat])
      .map(getFormat).filter((f) => f.axis === "channel").map((f) => f.group),
  );
  const window = {
    sinkTokens: pick([0, 1, 3]),
    recentWindow: pick([0, 2, 5]),
    windowFormat: pick(WINDOW_FORMATS.filter(fits)),
    // tokens awaiting eviction in a format of their own, a third of the time
    ...(next() < 0.33 ? { stagingFormat: pick(WINDOW_FORMATS.filter(fits)) } : {}),
    pageTokens: quantum * pick([1, 2]),
    ...(next() < 0.4 ? { ropeBase: 10000 } : {}),
  };
  const shape = {
    nLayers: 2,
    nHeads: nKvHeads * perKv,
    nKvHeads,
    headDim,
    maxSeqLen: 40 + Math.floor(next() * 40),
  };
  const policy = (): CachePolicy =>
    nTiers === 1 ? uniformPolicy({ ...pairs[0], ...window }) : tieredPolicy({
      label: "random",
      tiers: Array.from(
        { length: 2 },
        () =>
          Array.from(
            { length: nKvHeads },
            () => pairs.map((p, i) => ({ ...p, minScore: i === nTiers - 1 ? 0 : 0.5 / (i + 1) })),
          ),
      ),
      ...window,
    });
  return { shape, policy, label: JSON.stringify({ shape, pairs, window }) };
}
