// Horizontal sums of f32 lanes in one fixed order, shared by the attention kernels so that every
// path adds a dot product's four partial sums alike (core/cache/int_dot.ts mirrors the order).

/** Σ of the four lanes: (s0 + s1) + (s2 + s3). */
// @ts-ignore: decorator
@inline export function hsum(s: v128): f32 {
  return (f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1)) +
    (f32x4.extract_lane(s, 2) + f32x4.extract_lane(s, 3));
}

/**
 * [hsum(a), hsum(b), hsum(c), hsum(d)] with the same additions in the same order, as one vector:
 * four shuffles and three adds where four hsum calls cost twelve extracts and twelve adds.
 */
// @ts-ignore: decorator
@inline export function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = f32x4.add(i32x4.shuffle(a, b, 0, 2, 4, 6), i32x4.shuffle(a, b, 1, 3, 5, 7));
  const cd = f32x4.add(i32x4.shuffle(c, d, 0, 2, 4, 6), i32x4.shuffle(c, d, 1, 3, 5, 7));
  return f32x4.add(i32x4.shuffle(ab, cd, 0, 2, 4, 6), i32x4.shuffle(ab, cd, 1, 3, 5, 7));
}
