// FP8 and FP4 scalars on the device, integer for integer as the CPU's
// (base/numeric.h fp8_e4m3_to_f32, fp8_ue8m0_to_f32, fp4_e2m1_to_f32,
// f32_to_fp8_e4m3), so that decoded Engram rows, DeepSeek-V4's FP4 experts
// and V4.1's fake-quantised values come out the CPU's bits: e4m3fn codes,
// ue8m0 scales, e2m1 codes, and the e4m3 encoder (nearest, ties to even).
#pragma once

#include <cuda_runtime.h>

// One e4m3fn code as f32, exact: subnormals m * 2^-9, 0x7f / 0xff a quiet NaN with the code's sign.
__device__ __forceinline__ float fp8_e4m3_f32(unsigned char code) {
    unsigned sign = (unsigned)(code & 0x80) << 24, e = (code >> 3) & 0xf, m = code & 0x7;
    if (e == 0xf && m == 0x7) return __uint_as_float(sign | 0x7fc00000u);
    if (e == 0) {
        float v = __fmul_rn((float)m, 0x1p-9f);
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

// One ue8m0 scale byte as f32, exact: 2^(b-127), byte 0 the subnormal 2^-127, 255 NaN.
__device__ __forceinline__ float fp8_ue8m0_f32(unsigned char b) {
    if (b == 255) return __uint_as_float(0x7fc00000u);
    if (b == 0) return __uint_as_float(0x00400000u);
    return __uint_as_float((unsigned)b << 23);
}

// f32 (finite, |x| <= 448) to the nearest e4m3fn code, ties to even.
__device__ __forceinline__ unsigned char fp8_f32_e4m3(float x) {
    unsigned char sign = (unsigned char)((__float_as_uint(x) >> 24) & 0x80);
    float a = fabsf(x);
    if (a < 0x1p-6f) return sign | (unsigned char)rintf(__fmul_rn(a, 512.0f)); // subnormal steps of 2^-9
    unsigned u = __float_as_uint(a);
    u += 0x7ffffu + ((u >> 20) & 1u); // round the mantissa to 3 bits
    return sign | (unsigned char)((((u >> 23) - 127 + 7) << 3) | ((u >> 20) & 7u));
}

// One e2m1 code (the low 4 bits of c) as f32, exact: 0, 0.5, 1, 1.5, 2, 3, 4, 6, bit 3 the sign.
// Its 3 magnitude bits at the f32's bits 22-24 are the value times 2^-126 (code 1 the subnormal
// 2^-127), whatever the code: one multiply (exact; f32 subnormals are kept, no -ftz) rescales it.
__device__ __forceinline__ float fp4_e2m1_f32(unsigned c) {
    return __fmul_rn(__uint_as_float(((c & 7u) << 22) | ((c & 8u) << 28)), 0x1p126f);
}

// Eight e2m1 codes of a 32-bit word (element i in bits 4i..4i+3: the low nibble first, as
// stored) times one ue8m0 scale sf, exact: the value times a power of two is an f32, and a
// bf16 too (two significant bits), which is why FP4 weights dequantized here equal those the
// host expands to bf16 (model_weight_rows_to_f32, then f32_to_bf16), bit for bit.
__device__ __forceinline__ void fp4_dequant8(unsigned q, float sf, float v[8]) {
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = __fmul_rn(fp4_e2m1_f32(q >> (4 * i)), sf);
}
