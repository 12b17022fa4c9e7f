// Vector constants of the hot loops, kept in memory. V8 rebuilds a v128.const at every use, inside
// loops too (three or four instructions through a general register), and Binaryen turns splats of
// literals into such constants; a load is one instruction, often folded into the operation using
// it. Measured on _expv's twelve constants: the softmax pass of a 128-token page took 30% less time
// (core/cache/PAGES.md, "Constants").

/** The vector of four lanes x from its table. */
// @ts-ignore: decorator
@inline export function vconst(table: usize): v128 {
  return v128.load(table);
}

// fp16 header fields (int_group.ts): exponent bits of the low half, of the high half, of both
export const F16_EXP_LO = memory.data<u32>([0x7c00, 0x7c00, 0x7c00, 0x7c00], 16);
export const F16_EXP_HI = memory.data<u32>([0x7c000000, 0x7c000000, 0x7c000000, 0x7c000000], 16);
export const F16_EXP_BOTH = memory.data<u32>([0x7c007c00, 0x7c007c00, 0x7c007c00, 0x7c007c00], 16);
export const F16_MAG_LO = memory.data<u32>([0x7fff, 0x7fff, 0x7fff, 0x7fff], 16);
export const F16_SIGN_LO = memory.data<u32>([0x8000, 0x8000, 0x8000, 0x8000], 16);
export const F16_MAG_HI_SHIFTED = memory.data<u32>([0x0fffe000, 0x0fffe000, 0x0fffe000, 0x0fffe000], 16);
export const F32_SIGN = memory.data<u32>([0x80000000, 0x80000000, 0x80000000, 0x80000000], 16);
// the sign bit of lanes 1 and 3: (x, −y, z, −w) by one xor
export const F32_SIGN_ODD = memory.data<u32>([0, 0x80000000, 0, 0x80000000], 16);
/** 2^112: rebiases an fp16 exponent moved into f32 position. */
export const F16_REBIAS = memory.data<f32>([5.192296858534828e33, 5.192296858534828e33, 5.192296858534828e33, 5.192296858534828e33], 16);
// sign and fifteen magnitude bits of a sign-extended fp16 shifted left by 13 (attention's finite decode)
export const F16_SIGNED_MAG = memory.data<u32>([0x8fffe000, 0x8fffe000, 0x8fffe000, 0x8fffe000], 16);
// the same for fp8 codes sign-extended to i32 and shifted left by 20 (e4m3) or 21 (e5m2)
export const E4M3_SIGNED_MAG = memory.data<u32>([0x87f00000, 0x87f00000, 0x87f00000, 0x87f00000], 16);
export const E4M3_MAG = memory.data<u32>([0x07f00000, 0x07f00000, 0x07f00000, 0x07f00000], 16);
export const E4M3_EXP = memory.data<u32>([0x07800000, 0x07800000, 0x07800000, 0x07800000], 16);
// e4m3's exponent bias moved to f32's (120 << 23), the step to a subnormal's 2^-6 (1 << 23), 2^-6
export const E4M3_REBIAS = memory.data<u32>([0x3c000000, 0x3c000000, 0x3c000000, 0x3c000000], 16);
export const F32_EXP_ONE = memory.data<u32>([0x00800000, 0x00800000, 0x00800000, 0x00800000], 16);
export const F32_2PM6 = memory.data<u32>([0x3c800000, 0x3c800000, 0x3c800000, 0x3c800000], 16);
export const E5M2_SIGNED_MAG = memory.data<u32>([0x8fe00000, 0x8fe00000, 0x8fe00000, 0x8fe00000], 16);

// f16Lanes / f16ToF32Lanes (f16.ts)
export const F32_MAG = memory.data<u32>([0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff], 16);
export const F32_EXP = memory.data<u32>([0x7f800000, 0x7f800000, 0x7f800000, 0x7f800000], 16);
/** 0.5f, whose ulp is 2^−24, the fp16 subnormal step. */
export const HALF_F32 = memory.data<u32>([0x3f000000, 0x3f000000, 0x3f000000, 0x3f000000], 16);
export const ONE_U32 = memory.data<u32>([1, 1, 1, 1], 16);
/** −0x37fff001: rebiases the exponent and adds the rounding half-ulp minus one. */
export const F16_NORMAL_BIAS = memory.data<u32>([0xc8000fff, 0xc8000fff, 0xc8000fff, 0xc8000fff], 16);
/** 2^−14, the least normal fp16, as f32 bits. */
export const F16_MIN_NORMAL_F32 = memory.data<u32>([0x38800000, 0x38800000, 0x38800000, 0x38800000], 16);

// _expv (attention.ts): Cephes expf
export const EXP_LO = memory.data<f32>([-87, -87, -87, -87], 16);
/** 1.5·2^23: adding it rounds to an integer and leaves it in the low mantissa bits. */
export const MAGIC_1P5_2P23 = memory.data<f32>([12582912, 12582912, 12582912, 12582912], 16);
export const EXP_LOG2E = memory.data<f32>([1.44269504088896341, 1.44269504088896341, 1.44269504088896341, 1.44269504088896341], 16);
export const EXP_LN2_HI = memory.data<f32>([0.693359375, 0.693359375, 0.693359375, 0.693359375], 16);
export const EXP_LN2_LO = memory.data<f32>([-2.12194440e-4, -2.12194440e-4, -2.12194440e-4, -2.12194440e-4], 16);
export const EXP_P0 = memory.data<f32>([1.9875691500e-4, 1.9875691500e-4, 1.9875691500e-4, 1.9875691500e-4], 16);
export const EXP_P1 = memory.data<f32>([1.3981999507e-3, 1.3981999507e-3, 1.3981999507e-3, 1.3981999507e-3], 16);
export const EXP_P2 = memory.data<f32>([8.3334519073e-3, 8.3334519073e-3, 8.3334519073e-3, 8.3334519073e-3], 16);
export const EXP_P3 = memory.data<f32>([4.1665795894e-2, 4.1665795894e-2, 4.1665795894e-2, 4.1665795894e-2], 16);
export const EXP_P4 = memory.data<f32>([1.6666665459e-1, 1.6666665459e-1, 1.6666665459e-1, 1.6666665459e-1], 16);
export const EXP_P5 = memory.data<f32>([5.0000001201e-1, 5.0000001201e-1, 5.0000001201e-1, 5.0000001201e-1], 16);
export const ONE = memory.data<f32>([1, 1, 1, 1], 16);
export const I32_127 = memory.data<u32>([127, 127, 127, 127], 16);
/** 2^23: adding it to u ∈ [0, 2^23) leaves nearest(u) in the low mantissa bits. */
export const MAGIC_2P23 = memory.data<f32>([8388608, 8388608, 8388608, 8388608], 16);

// other hot-loop constants, named by value
export const U32_00008001 = memory.data<u32>([0x00008001, 0x00008001, 0x00008001, 0x00008001], 16);
export const U32_0000007E = memory.data<u32>([0x0000007e, 0x0000007e, 0x0000007e, 0x0000007e], 16);
export const U32_FFFFFF81 = memory.data<u32>([0xffffff81, 0xffffff81, 0xffffff81, 0xffffff81], 16);
/** 2^120: rebiases an fp8 e4m3 exponent moved into f32 position. */
export const F32_2P120 = memory.data<f32>([1.329227995784916e36, 1.329227995784916e36, 1.329227995784916e36, 1.329227995784916e36], 16);
export const U32_7FC00000 = memory.data<u32>([0x7fc00000, 0x7fc00000, 0x7fc00000, 0x7fc00000], 16);
export const U32_00000080 = memory.data<u32>([0x00000080, 0x00000080, 0x00000080, 0x00000080], 16);
export const U32_00FF00FF = memory.data<u32>([0x00ff00ff, 0x00ff00ff, 0x00ff00ff, 0x00ff00ff], 16);
export const U32_000F000F = memory.data<u32>([0x000f000f, 0x000f000f, 0x000f000f, 0x000f000f], 16);
export const U32_000000FF = memory.data<u32>([0x000000ff, 0x000000ff, 0x000000ff, 0x000000ff], 16);
/** 65504, the largest fp16, and its negation. */
export const F16_MAX = memory.data<f32>([65504, 65504, 65504, 65504], 16);
export const F16_MAX_NEG = memory.data<f32>([-65504, -65504, -65504, -65504], 16);
export const U32_00007BFF = memory.data<u32>([0x00007bff, 0x00007bff, 0x00007bff, 0x00007bff], 16);
export const U32_0F0F0F0F = memory.data<u32>([0x0f0f0f0f, 0x0f0f0f0f, 0x0f0f0f0f, 0x0f0f0f0f], 16);
// query clamps of intQuery (int_dot.ts), as i16 lanes
export const I16_127 = memory.data<u32>([0x007f007f, 0x007f007f, 0x007f007f, 0x007f007f], 16);
export const I16_M127 = memory.data<u32>([0xff81ff81, 0xff81ff81, 0xff81ff81, 0xff81ff81], 16);
export const I16_32767 = memory.data<u32>([0x7fff7fff, 0x7fff7fff, 0x7fff7fff, 0x7fff7fff], 16);
export const I16_M32767 = memory.data<u32>([0x80018001, 0x80018001, 0x80018001, 0x80018001], 16);
export const U32_03030303 = memory.data<u32>([0x03030303, 0x03030303, 0x03030303, 0x03030303], 16);
export const U32_00030003 = memory.data<u32>([0x00030003, 0x00030003, 0x00030003, 0x00030003], 16);
