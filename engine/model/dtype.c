/* Bulk dtype conversion to f32. */
#include "engine/model/dtype.h"

#include <assert.h>

void dtype_to_f32(float *dst, const void *src, dtype t, size_t n) {
    if (t == DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (t == DTYPE_BF16) {
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
    } else {
        assert(t == DTYPE_F16);
        const uint16_t *s = src;
        for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(s[i]);
    }
}
