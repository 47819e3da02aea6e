/* Scalar conversions to f32 of every float format checkpoints and Engram
 * tables store: bf16, IEEE half, the FP8 pair of DeepSeek-V4 weights and
 * V4.1 rows (e4m3fn values, ue8m0 block scales) and the FP4 e2m1 codes of
 * its experts; and the two roundings from f32 that synthetic weights and
 * V4.1's fake quantisations need (bf16, e4m3fn; nearest, ties to even).
 * Each is built from the bit fields, so every machine gives the same bits.
 * Header-only: libc and libm alone. */
#ifndef BASE_NUMERIC_H
#define BASE_NUMERIC_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* IEEE half to float, exact for every input including subnormals, inf, NaN. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* One e4m3fn code as f32, exact: sign, 4 exponent bits (bias 7), 3 mantissa
 * bits; exponent 0 is subnormal (m/8 * 2^-6); no infinities; 0x7f and 0xff are
 * NaN (returned as a quiet NaN with the code's sign); max 448. */
static inline float fp8_e4m3_to_f32(uint8_t code) {
    uint32_t sign = (uint32_t)(code & 0x80) << 24, exp = (code >> 3) & 0xf, man = code & 0x7;
    if (exp == 0xf && man == 0x7) return bits_to_f32(sign | 0x7fc00000u); /* NaN */
    if (exp == 0) {
        /* subnormal m/8 * 2^-6 = m * 2^-9: exact in f32 */
        float v = (float)man * 0x1p-9f;
        return sign ? -v : v;
    }
    /* normal: rebias 7 -> 127, mantissa into the top 3 of 23 bits */
    return bits_to_f32(sign | ((exp + 120u) << 23) | (man << 20));
}

/* One ue8m0 scale byte as f32, exact: 2^(byte-127) for byte 0..254 (byte 0 is
 * the subnormal 2^-127, not zero); byte 255 is NaN (OCP MX spec). */
static inline float fp8_ue8m0_to_f32(uint8_t byte) {
    if (byte == 255) return bits_to_f32(0x7fc00000u);
    if (byte == 0) return bits_to_f32(0x00400000u); /* 2^-127 is an f32 subnormal */
    return bits_to_f32((uint32_t)byte << 23);
}

/* One e2m1 code (the low 4 bits of `code`) as f32, exact: sign, 2 exponent
 * bits (bias 1), 1 mantissa bit; exponent 0 is subnormal (m/2); no NaN or
 * infinity. Values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and, for codes 8..15, the same
 * negated (code 8 is -0). */
static inline float fp4_e2m1_to_f32(uint8_t code) {
    uint32_t sign = (uint32_t)(code & 0x8) << 28, exp = (code >> 1) & 0x3, man = code & 0x1;
    if (exp == 0) return bits_to_f32(sign | (man ? 0x3f000000u : 0u)); /* +-0 or +-0.5 */
    /* normal: 2^(exp-1) * (1 + man/2), rebias 1 -> 127, mantissa into the top bit of 23 */
    return bits_to_f32(sign | ((exp + 126u) << 23) | (man << 22));
}

/* f32 to the nearest bf16, ties to even: torch's .to(torch.bfloat16); a NaN
 * stays a NaN (rounding could carry a small payload into infinity). */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* f32 (finite, |x| <= 448) to the nearest e4m3fn code, ties to even: torch's
 * .to(torch.float8_e4m3fn) within range. */
static inline uint8_t f32_to_fp8_e4m3(float x) {
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a < 0x1p-6f) return sign | (uint8_t)nearbyintf(a * 512.0f); /* subnormal steps of 2^-9; 8 is 2^-6's code */
    uint32_t u;
    memcpy(&u, &a, 4);
    u += 0x7ffffu + ((u >> 20) & 1u); /* round the mantissa to 3 bits */
    return sign | (uint8_t)((((u >> 23) - 127 + 7) << 3) | ((u >> 20) & 7u));
}

#endif
