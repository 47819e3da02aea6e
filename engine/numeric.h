/* Scalar conversions between the checkpoint dtypes and f32. */
#ifndef ENGINE_NUMERIC_H
#define ENGINE_NUMERIC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "safetensors.h"

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

/* dst[i] = src[i] as f32 for i < n; src in dtype F32, BF16 or F16. */
void numeric_to_f32(float *dst, const void *src, dtype t, size_t n);

#endif
