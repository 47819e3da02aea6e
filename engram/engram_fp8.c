/* FP8 e4m3fn + ue8m0 row decoding for DeepSeek-V4.1 Engram tables (see
 * engram_fp8.h). Every factor is built from its bit fields (base/numeric.h),
 * so the result is the same on any IEEE machine: one f32 multiply of two
 * exact factors. */
#include "engram/engram_fp8.h"

#include <assert.h>
#include <string.h>

#include "base/numeric.h"

const char *engram_fp8_status_str(int status) {
    switch (status) {
    case ENGRAM_FP8_OK: return "ok";
    case ENGRAM_FP8_EINVAL: return "invalid table layout";
    case ENGRAM_FP8_ERANGE: return "row id outside the table";
    default: return "unknown status";
    }
}

void engram_fp8_decode_row(const uint8_t *values, const uint8_t *scales, int head_dim, float *out) {
    assert(head_dim > 0 && head_dim % ENGRAM_FP8_BLOCK == 0);
    for (int b = 0; b < head_dim / ENGRAM_FP8_BLOCK; b++) {
        const float s = fp8_ue8m0_to_f32(scales[b]);
        const uint8_t *v = values + (size_t)b * ENGRAM_FP8_BLOCK;
        float *o = out + (size_t)b * ENGRAM_FP8_BLOCK;
        for (int i = 0; i < ENGRAM_FP8_BLOCK; i++) {
            float p = fp8_e4m3_to_f32(v[i]) * s;
            /* One NaN for every NaN product: which operand's payload a
             * multiply keeps differs between compilers and devices. */
            o[i] = p != p ? bits_to_f32(0x7fc00000u) : p;
        }
    }
}

size_t engram_fp8_packed_row_bytes(int head_dim) {
    return head_dim > 0 ? (size_t)head_dim + (size_t)head_dim / ENGRAM_FP8_BLOCK : 0;
}

engram_fp8_table engram_fp8_table_packed(const void *base, int64_t n_rows, int head_dim) {
    size_t row = engram_fp8_packed_row_bytes(head_dim);
    const uint8_t *b = base;
    return (engram_fp8_table){.values = b,
                              .value_stride = row,
                              .scales = b ? b + (head_dim > 0 ? head_dim : 0) : NULL,
                              .scale_stride = row,
                              .n_rows = n_rows,
                              .head_dim = head_dim};
}

engram_fp8_table engram_fp8_table_split(const void *values, const void *scales, int64_t n_rows,
                                        int head_dim) {
    return (engram_fp8_table){.values = values,
                              .value_stride = head_dim > 0 ? (size_t)head_dim : 0,
                              .scales = scales,
                              .scale_stride = head_dim > 0 ? (size_t)head_dim / ENGRAM_FP8_BLOCK : 0,
                              .n_rows = n_rows,
                              .head_dim = head_dim};
}

int engram_fp8_table_check(const engram_fp8_table *t) {
    if (!t || t->n_rows < 0 || t->head_dim < ENGRAM_FP8_BLOCK ||
        t->head_dim > ENGRAM_FP8_MAX_HEAD_DIM || t->head_dim % ENGRAM_FP8_BLOCK)
        return ENGRAM_FP8_EINVAL;
    if (t->n_rows > 0 && (!t->values || !t->scales)) return ENGRAM_FP8_EINVAL;
    if (t->value_stride < (size_t)t->head_dim ||
        t->scale_stride < (size_t)t->head_dim / ENGRAM_FP8_BLOCK)
        return ENGRAM_FP8_EINVAL;
    return ENGRAM_FP8_OK;
}

int engram_fp8_gather(const engram_fp8_table *t, const int64_t *rows, size_t n, float *out,
                      size_t *bad) {
    if (engram_fp8_table_check(t) != ENGRAM_FP8_OK || (n && (!rows || !out)))
        return ENGRAM_FP8_EINVAL;
    const size_t d = (size_t)t->head_dim;
    for (size_t i = 0; i < n; i++) {
        int64_t r = rows[i];
        if (r < 0 || r >= t->n_rows) {
            if (bad) *bad = i;
            return ENGRAM_FP8_ERANGE;
        }
        engram_fp8_decode_row(t->values + (size_t)r * t->value_stride,
                              t->scales + (size_t)r * t->scale_stride, t->head_dim, out + i * d);
    }
    return ENGRAM_FP8_OK;
}
