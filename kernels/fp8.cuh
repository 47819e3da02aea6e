// FP8 scalars on the device, integer for integer as the CPU's (base/numeric.h
// fp8_e4m3_to_f32, fp8_ue8m0_to_f32, f32_to_fp8_e4m3), so that decoded Engram
// rows and DeepSeek-V4.1's fake-quantised values come out the CPU's bits:
// e4m3fn codes, ue8m0 scales, and the e4m3 encoder (nearest, ties to even).
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
