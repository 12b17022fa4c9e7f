/**
 * From sensitivity to bits. Two ways:
 *
 * - the precision rule p ≥ log2(c·κ·D²/ε) (κ a key's curvature and a value's attention: plan.ts;
 *   D the larger of the head's key and value diameters, each range with 0 in it: ruleDiameter in
 *   plan.ts; ε the target error, c = 4 by default), mapped to the smallest format (in bits per
 *   element, metadata counted) whose effective precision meets p: {@linkcode requiredBits},
 *   {@linkcode selectFormat};
 * - a budget: given an average bits-per-element budget, choose a format per item that minimises
 *   the predicted error Σ_i (wK_i·eK(f_i) + wV_i·eV(g_i)), by Lagrangian search over the discrete
 *   formats (each item picks argmin error + λ·bits, λ bisected to the budget), a greedy fill of
 *   the bits left by the last λ step, and a final check against every uniform allocation:
 *   {@linkcode allocateBudget}.
 *
 * A format's effective precision is −log2(2·r) where r is its worst-case per-element error relative
 * to the data's range: log2(2^b − 1) for b-bit integers, log2(127) for int8s, and the mantissa
 * width for floats (10 for fp16, 23 for fp32, 3 for e4m3, 2 for e5m2, 7 for bf16). The planner
 * credits a format with more where the calibration measured it on a head (plan.ts rulePrecision:
 * group scales follow the data, which spans less than the head's whole range).
 *
 * Browser compatible.
 *
 * @example
 * ```ts
 * import { requiredBits, selectFormat } from "./mapper.ts";
 * const formats = [
 *   { name: "int2", kind: "int", bits: 2, bitsPerElement: 3 },
 *   { name: "int4", kind: "int", bits: 4, bitsPerElement: 5 },
 *   { name: "fp16", kind: "fp16", bits: 16, bitsPerElement: 16 },
 * ];
 * const p = requiredBits(0.01, { epsilon: 1e-2, diameter: 2 }); // log2(4·0.01·4/0.01) = 4
 * // int4 resolves log2(15) ≈ 3.91 bits < 4, so the cheapest format that meets p is fp16
 * if (selectFormat(p, formats).format.name !== "fp16") throw new Error("int4 falls short of 4");
 * if (selectFormat(3.5, formats).format.name !== "int4") throw new Error("int4 meets 3.5");
 * ```
 * @module
 */

import {
  BudgetError,
  checkOptionFields,
  FormatError,
  InvalidValueError,
  ShapeError,
  showValue,
} from "./errors.ts";

/** What the mapper needs to know of a storage format (codecs' FormatSpec satisfies it). */
export interface MapperFormat {
  /** Registry name. */
  readonly name: string;
  /** Element encoding: "int", "int8s", "fp16", "bf16", "fp32", "fp8e4m3", "fp8e5m2". */
  readonly kind: string;
  /** Bits of one code. */
  readonly bits: number;
  /** Storage cost per element, all metadata counted. */
  readonly bitsPerElement: number;
}

const _MANTISSA: Record<string, number> = {
  fp32: 23,
  fp16: 10,
  bf16: 7,
  fp8e4m3: 3,
  fp8e5m2: 2,
};

/**
 * Effective precision of a format: −log2(2·r), r its worst-case error relative to the data range.
 *
 * @param format the format
 * @returns bits of precision the rule compares against
 * @throws FormatError for an unknown kind, or an int format whose bits are not an integer in [1, 32]
 */
export function precisionBits(format: MapperFormat): number {
  if (format.kind === "int") {
    if (!Number.isInteger(format.bits) || format.bits < 1 || format.bits > 32) {
      throw new FormatError(
        `format ${format.name} has ${format.bits} bits, expected an integer in [1, 32]`,
      );
    }
    return Math.log2(2 ** format.bits - 1);
  }
  if (format.kind === "int8s") return Math.log2(127);
  const m = _MANTISSA[format.kind];
  if (m === undefined) {
    throw new FormatError(`format ${format.name} has unknown kind ${format.kind}`);
  }
  return m;
}

/** Options of the precision rule. */
export interface RuleOptions {
  /** Target error ε > 0. */
  epsilon: number;
  /** Diameter D > 0 of the quantized keys or values (plan.ts's ruleDiameter for a head). */
  diameter: number;
  /** Safety constant c (default 4). */
  c?: number;
}

const _RULE_OPTIONS: Record<keyof RuleOptions, true> = { epsilon: true, diameter: true, c: true };

/**
 * The precision rule p = log2(c·κ·D²/ε) (−Infinity when κ = 0: any format will do; finite for
 * every other input, even where the product itself overflows or underflows a double).
 *
 * @param curvature κ ≥ 0
 * @param options ε, D and c
 * @returns the required precision in bits
 * @throws InvalidValueError for ε ≤ 0, D ≤ 0, c ≤ 0, κ < 0 or any non-finite input
 */
export function requiredBits(curvature: number, options: RuleOptions): number {
  checkOptionFields(options, _RULE_OPTIONS, "rule options");
  const { epsilon, diameter } = options;
  const c = options.c ?? 4;
  if (!(epsilon > 0) || !Number.isFinite(epsilon)) {
    throw new InvalidValueError(
      `target error ε is ${showValue(epsilon)}, expected a finite number > 0`,
    );
  }
  if (!(diameter > 0) || !Number.isFinite(diameter)) {
    throw new InvalidValueError(
      `diameter D is ${showValue(diameter)}, expected a finite number > 0`,
    );
  }
  if (!(c > 0) || !Number.isFinite(c)) {
    throw new InvalidValueError(`constant c is ${showValue(c)}, expected a finite number > 0`);
  }
  if (!(curvature >= 0) || !Number.isFinite(curvature)) {
    throw new InvalidValueError(
      `curvature κ is ${showValue(curvature)}, expected a finite number ≥ 0`,
    );
  }
  // κ = 0 needs no precision. A product that overflowed (κ near 1e200, say) or underflowed, on
  // the way or at the end, was ±Infinity or lost digits: the sum of logs is right for every input.
  const cK = c * curvature, cKD = cK * diameter, cKD2 = cKD * diameter, ratio = cKD2 / epsilon;
  const normal = (x: number) => x >= 2 ** -1022 && x < Infinity;
  if (curvature === 0 || [cK, cKD, cKD2, ratio].every(normal)) return Math.log2(ratio);
  return Math.log2(c) + Math.log2(curvature) + 2 * Math.log2(diameter) - Math.log2(epsilon);
}

/**
 * The cheapest format (fewest bits per element, then most precision) whose effective precision
 * meets `required`; when none does, the most precise one, with `meets: false`.
 *
 * @param required required precision in bits
 * @param candidates formats to choose from (non-empty)
 * @param precision each candidate's precision (default precisionBits; the planner's rule credits
 *   measured errors, plan.ts rulePrecision)
 * @returns the chosen format and whether it meets the requirement
 * @throws FormatError for an empty candidate list; InvalidValueError for a NaN requirement or a
 *   candidate whose bitsPerElement is not a finite number > 0
 */
export function selectFormat(
  required: number,
  candidates: readonly MapperFormat[],
  precision: (format: MapperFormat) => number = precisionBits,
): { format: MapperFormat; meets: boolean } {
  if (candidates.length === 0) throw new FormatError("no candidate formats");
  // NaN meets no format and would pass for "the most precise one does not suffice"; a string "3"
  // was compared by coercion
  if (typeof required !== "number" || Number.isNaN(required)) {
    const shown = typeof required === "string" ? JSON.stringify(required) : String(required);
    throw new InvalidValueError(`required precision is ${shown}, expected a number of bits`);
  }
  for (const f of candidates) {
    // a NaN cost compares false both ways: the format would be chosen and never replaced
    if (!(Number.isFinite(f.bitsPerElement) && f.bitsPerElement > 0)) {
      throw new InvalidValueError(
        `format ${f.name} costs ${f.bitsPerElement} bits per element, expected a finite number > 0`,
      );
    }
  }
  let best: MapperFormat | undefined;
  let most = candidates[0];
  for (const f of candidates) {
    const p = precision(f);
    // equally precise fallbacks: the cheaper one
    const q = precision(most);
    if (p > q || (p === q && f.bitsPerElement < most.bitsPerElement)) most = f;
    if (p >= required) {
      if (
        !best || f.bitsPerElement < best.bitsPerElement ||
        (f.bitsPerElement === best.bitsPerElement && p > precision(best))
      ) best = f;
    }
  }
  return best ? { format: best, meets: true } : { format: most, meets: false };
}

/** A budget allocation problem over items that each get one key and one value format. */
export interface BudgetProblem {
  /** Key-error weight of each item (the error is weight × per-element error of the format). */
  keyWeight: Float64Array;
  /** Value-error weight of each item. */
  valueWeight: Float64Array;
  /** Which error table row each item uses (e.g. its (layer, head)). */
  row: Int32Array;
  /** Elements each item stores per K and per V (e.g. head_dim × positions it stands for). */
  elements: Float64Array;
  /** keyError[row][f]: per-element error of key format f in that row. */
  keyError: Float64Array[];
  /** valueError[row][f]: per-element error of value format f in that row. */
  valueError: Float64Array[];
  /** Bits per element of each key format. */
  keyBits: Float64Array;
  /** Bits per element of each value format. */
  valueBits: Float64Array;
  /** Bits spent outside the items (sinks, recent window), counted in the budget. */
  fixedBits: number;
  /** Elements stored outside the items, counted in the average. */
  fixedElements: number;
}

/** Result of {@linkcode allocateBudget}. */
export interface BudgetAllocation {
  /** Key format index of each item. */
  keyFormat: Int16Array;
  /** Value format index of each item. */
  valueFormat: Int16Array;
  /** Average bits per element over items and fixed storage. */
  bitsPerElement: number;
  /** Predicted error Σ_i wK_i eK + wV_i eV. */
  predictedError: number;
  /** Which search produced the answer. */
  method: "lagrangian" | "uniform";
}

/**
 * Chooses a key and a value format per item to minimise the predicted error with the average bits
 * per element (fixed storage included) at most `budget`: the Lagrangian relaxation's choice, then a
 * greedy fill of the bits it leaves. Not an exact knapsack: on small problems (10–30 items, five
 * formats) its error was 1.0% above the exact optimum on average and 16% at worst
 * (tests/core/mapper_test.ts); the more items, the less the relaxation leaves. Never exceeds the
 * budget (one within 10⁻¹² below the cheapest allocation, as a BudgetError's `minimum` read back
 * may be, is that allocation), and never predicts more error than the best uniform allocation that
 * fits.
 *
 * @param problem items, weights, error tables and format costs
 * @param budget average bits per element allowed
 * @returns the allocation
 * @throws BudgetError when even the cheapest formats exceed the budget; InvalidValueError for a
 *   non-finite or non-positive budget, weight, error, bit cost or element count, or finite ones
 *   whose sums overflow (naming the item); ShapeError for arrays of unequal length, a row outside
 *   the error tables, or no elements at all; FormatError for no formats, or more than 32767
 */
export function allocateBudget(problem: BudgetProblem, budget: number): BudgetAllocation {
  if (!(budget > 0) || !Number.isFinite(budget)) {
    throw new InvalidValueError(
      `budget is ${budget} bits per element, expected a finite number > 0`,
    );
  }
  _checkProblem(problem);
  const { keyWeight, valueWeight, row, elements, keyError, valueError, keyBits, valueBits } =
    problem;
  const n = keyWeight.length;
  let totalElements = problem.fixedElements;
  for (let i = 0; i < n; i++) totalElements += 2 * elements[i];
  // no elements: no average to keep within a budget (it was 0/0 = NaN bits per element)
  if (!(totalElements > 0)) {
    throw new ShapeError("the problem holds no elements: nothing to allocate bits to");
  }
  const asked = budget * totalElements;
  const cheapK = _argmin(keyBits), cheapV = _argmin(valueBits);
  let minBits = problem.fixedBits;
  for (let i = 0; i < n; i++) minBits += elements[i] * (keyBits[cheapK] + valueBits[cheapV]);
  if (minBits > asked * (1 + 1e-12)) {
    throw new BudgetError(
      `budget ${budget} bits per element is below the cheapest allocation, ` +
        `${(minBits / totalElements).toFixed(4)} bits per element`,
      minBits / totalElements,
    );
  }
  // a budget within the tolerance below the cheapest allocation (the BudgetError's minimum, read
  // back) is that allocation: searched below it, nothing fits and the fallback overspent
  const budgetBits = Math.max(asked, minBits);
  const kf = new Int16Array(n), vf = new Int16Array(n);
  const choose = (lambda: number, kOut: Int16Array, vOut: Int16Array): number => {
    let bits = problem.fixedBits;
    for (let i = 0; i < n; i++) {
      const r = row[i], e = elements[i];
      kOut[i] = _best(keyWeight[i], keyError[r], keyBits, lambda * e);
      vOut[i] = _best(valueWeight[i], valueError[r], valueBits, lambda * e);
      bits += e * (keyBits[kOut[i]] + valueBits[vOut[i]]);
    }
    return bits;
  };
  // λ large enough makes every item pick its cheapest format; bisect in log space.
  let lo = 0, hi = 1;
  const kTmp = new Int16Array(n), vTmp = new Int16Array(n);
  while (choose(hi, kTmp, vTmp) > budgetBits && hi < 1e300) hi *= 16;
  if (choose(lo, kf, vf) <= budgetBits) {
    // Even the most precise choices fit.
  } else {
    for (let it = 0; it < 100; it++) {
      const mid = lo === 0 ? hi / 2 ** 40 : Math.sqrt(lo * hi);
      if (choose(mid, kTmp, vTmp) <= budgetBits) hi = mid;
      else lo = mid;
      if (hi / Math.max(lo, Number.MIN_VALUE) < 1 + 1e-9) break;
    }
    choose(hi, kf, vf);
    _fill(problem, kf, vf, budgetBits);
  }
  let result: BudgetAllocation = {
    keyFormat: kf,
    valueFormat: vf,
    bitsPerElement: _bits(problem, kf, vf) / totalElements,
    predictedError: _predictError(problem, kf, vf),
    method: "lagrangian",
  };
  // A uniform allocation is one feasible point; never return worse than the best that fits.
  for (let a = 0; a < keyBits.length; a++) {
    for (let b = 0; b < valueBits.length; b++) {
      const ku = new Int16Array(n).fill(a), vu = new Int16Array(n).fill(b);
      const bits = _bits(problem, ku, vu);
      if (bits > budgetBits) continue;
      const err = _predictError(problem, ku, vu);
      if (err < result.predictedError) {
        result = {
          keyFormat: ku,
          valueFormat: vu,
          bitsPerElement: bits / totalElements,
          predictedError: err,
          method: "uniform",
        };
      }
    }
  }
  return result;
}

/**
 * Predicted error Σ_i wK_i·keyError[row_i][k_i] + wV_i·valueError[row_i][v_i] of an allocation.
 *
 * @param problem the allocation problem
 * @param keyFormat key format index per item
 * @param valueFormat value format index per item
 * @returns the predicted error
 * @throws ShapeError for a format index outside the formats or arrays of unequal length;
 *   InvalidValueError and FormatError for a malformed problem, as {@linkcode allocateBudget}
 */
export function predictError(
  problem: BudgetProblem,
  keyFormat: ArrayLike<number>,
  valueFormat: ArrayLike<number>,
): number {
  _checkProblem(problem);
  const n = problem.keyWeight.length;
  for (
    const [what, x, formats] of [
      ["keyFormat", keyFormat, problem.keyBits.length],
      ["valueFormat", valueFormat, problem.valueBits.length],
    ] as const
  ) {
    if (x.length !== n) throw new ShapeError(`${what} has ${x.length} items, expected ${n}`);
    for (let i = 0; i < n; i++) {
      if (!Number.isInteger(x[i]) || x[i] < 0 || x[i] >= formats) {
        throw new ShapeError(`${what}[${i}] is ${x[i]}, expected an integer in [0, ${formats})`);
      }
    }
  }
  return _predictError(problem, keyFormat, valueFormat);
}

function _predictError(
  problem: BudgetProblem,
  keyFormat: ArrayLike<number>,
  valueFormat: ArrayLike<number>,
): number {
  let err = 0;
  for (let i = 0; i < problem.keyWeight.length; i++) {
    const r = problem.row[i];
    err += problem.keyWeight[i] * problem.keyError[r][keyFormat[i]] +
      problem.valueWeight[i] * problem.valueError[r][valueFormat[i]];
  }
  return err;
}

/**
 * Every array as long as the items, every row inside the error tables, every table as wide as the
 * formats and every number finite and ≥ 0 (bit costs > 0): a NaN or a missing entry would otherwise
 * turn into NaN costs that no comparison rejects, and an allocation chosen from garbage.
 */
function _checkProblem(p: BudgetProblem): void {
  const n = p.keyWeight.length;
  for (const key of ["valueWeight", "row", "elements"] as const) {
    if (p[key].length !== n) {
      throw new ShapeError(`${key} has ${p[key].length} items, expected ${n}`);
    }
  }
  for (const [key, bits] of [["keyBits", p.keyBits], ["valueBits", p.valueBits]] as const) {
    if (bits.length === 0) {
      throw new FormatError(`no ${key === "keyBits" ? "key" : "value"} formats`);
    }
    // the allocation's format indices are Int16Array entries
    if (bits.length > 32767) {
      throw new FormatError(
        `${bits.length} ${
          key === "keyBits" ? "key" : "value"
        } formats, at most 32767 are supported`,
      );
    }
    for (let f = 0; f < bits.length; f++) {
      if (!(bits[f] > 0) || bits[f] === Infinity) {
        throw new InvalidValueError(`${key}[${f}] is ${bits[f]}, expected a finite number > 0`, f);
      }
    }
  }
  const finite = (x: number) => x >= 0 && x !== Infinity;
  for (let i = 0; i < n; i++) {
    if (!finite(p.keyWeight[i]) || !finite(p.valueWeight[i])) {
      throw new InvalidValueError(
        `item ${i} has weight ${p.keyWeight[i]}/${p.valueWeight[i]}, expected finite numbers ≥ 0`,
        i,
      );
    }
    if (!finite(p.elements[i])) {
      throw new InvalidValueError(
        `elements[${i}] is ${p.elements[i]}, expected a finite number ≥ 0`,
        i,
      );
    }
  }
  for (const key of ["fixedBits", "fixedElements"] as const) {
    if (!finite(p[key])) {
      throw new InvalidValueError(`${key} is ${p[key]}, expected a finite number ≥ 0`);
    }
  }
  for (
    const [key, table, formats] of [
      ["keyError", p.keyError, p.keyBits.length],
      ["valueError", p.valueError, p.valueBits.length],
    ] as const
  ) {
    for (let i = 0; i < n; i++) {
      const r = p.row[i];
      if (!Number.isInteger(r) || r < 0 || r >= table.length) {
        throw new ShapeError(
          `row[${i}] is ${r}, expected an integer in [0, ${table.length}) (${key} rows)`,
        );
      }
    }
    // an index loop: forEach skips the holes of a sparse table, which then failed as a TypeError
    for (let r = 0; r < table.length; r++) {
      const errors = table[r];
      if (errors?.length !== formats) {
        throw new ShapeError(`${key}[${r}] has ${errors?.length} formats, expected ${formats}`);
      }
      for (let f = 0; f < formats; f++) {
        if (!finite(errors[f])) {
          throw new InvalidValueError(
            `${key}[${r}][${f}] is ${errors[f]}, expected a finite number ≥ 0`,
            f,
          );
        }
      }
    }
  }
  _checkTotals(p);
}

/**
 * Every allocation's predicted error and bits are sums of non-negative terms no larger than those
 * of the costliest allocation (each item's largest error, the dearest formats): when that one's
 * sums are finite, so is every sum the search forms. Finite weights and errors near 1e200 made
 * them Infinity, every cost tied and the allocation came back with an infinite predicted error.
 */
function _checkTotals(p: BudgetProblem): void {
  const largest = (x: Float64Array) => x.reduce((a, b) => Math.max(a, b), 0);
  const maxKeyError = p.keyError.map(largest), maxValueError = p.valueError.map(largest);
  const dearest = largest(p.keyBits) + largest(p.valueBits);
  let error = 0, bits = p.fixedBits, elements = p.fixedElements;
  for (let i = 0; i < p.keyWeight.length; i++) {
    const r = p.row[i];
    error += p.keyWeight[i] * maxKeyError[r] + p.valueWeight[i] * maxValueError[r];
    if (error === Infinity) {
      throw new InvalidValueError(
        `item ${i}: weights ${p.keyWeight[i]}/${p.valueWeight[i]} times row ${r}'s largest ` +
          `errors ${maxKeyError[r]}/${maxValueError[r]} overflow the predicted error`,
        i,
      );
    }
    bits += p.elements[i] * dearest;
    elements += 2 * p.elements[i];
    if (bits === Infinity || elements === Infinity) {
      throw new InvalidValueError(
        `item ${i}: elements[${i}] = ${p.elements[i]} at up to ${dearest} bits per key and ` +
          "value element overflow the problem's total bits",
        i,
      );
    }
  }
}

/**
 * Greedy fill of the bits the Lagrangian choice leaves: in passes, the upgrades (one item's key or
 * value to any format of less predicted error) that save the most error per bit and still fit, one
 * per item side and pass, until none fits. Upgrading only towards the next λ's choice left most of
 * a small problem's budget unspent when that one move did not fit (2.7× the optimal error on two
 * items at 4.1 b).
 */
function _fill(p: BudgetProblem, kf: Int16Array, vf: Int16Array, budgetBits: number): void {
  const n = kf.length;
  let bits = _bits(p, kf, vf);
  const sides = [
    { formats: kf, weight: p.keyWeight, error: p.keyError, cost: p.keyBits },
    { formats: vf, weight: p.valueWeight, error: p.valueError, cost: p.valueBits },
  ];
  for (let pass = 0; pass < 4 * p.keyBits.length + 4 * p.valueBits.length; pass++) {
    const moves: { side: number; i: number; to: number; dBits: number; perBit: number }[] = [];
    sides.forEach((s, side) => {
      for (let i = 0; i < n; i++) {
        const from = s.formats[i], err = s.error[p.row[i]], e = p.elements[i];
        for (let to = 0; to < s.cost.length; to++) {
          const gain = s.weight[i] * (err[from] - err[to]), dBits = e * (s.cost[to] - s.cost[from]);
          // only what fits now: the Lagrangian choice leaves little, so few moves are sorted
          if (gain > 0 && bits + dBits <= budgetBits) {
            moves.push({ side, i, to, dBits, perBit: dBits > 0 ? gain / dBits : Infinity });
          }
        }
      }
    });
    moves.sort((a, b) => b.perBit - a.perBit);
    const moved = new Uint8Array(2 * n);
    let any = false;
    for (const m of moves) {
      if (moved[m.side * n + m.i] || bits + m.dBits > budgetBits) continue;
      sides[m.side].formats[m.i] = m.to;
      bits += m.dBits;
      moved[m.side * n + m.i] = 1;
      any = true;
    }
    if (!any) return;
  }
}

function _bits(p: BudgetProblem, kf: ArrayLike<number>, vf: ArrayLike<number>): number {
  let bits = p.fixedBits;
  for (let i = 0; i < kf.length; i++) {
    bits += p.elements[i] * (p.keyBits[kf[i]] + p.valueBits[vf[i]]);
  }
  return bits;
}

function _best(w: number, err: Float64Array, bits: Float64Array, lambdaE: number): number {
  let best = 0, bestCost = Infinity;
  for (let f = 0; f < bits.length; f++) {
    const cost = w * err[f] + lambdaE * bits[f];
    // Ties go to the cheaper format, so λ → ∞ picks the cheapest.
    if (cost < bestCost || (cost === bestCost && bits[f] < bits[best])) {
      best = f;
      bestCost = cost;
    }
  }
  return best;
}

function _argmin(x: Float64Array): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] < x[b]) b = i;
  return b;
}
