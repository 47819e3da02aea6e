/* Bulk conversion to f32: checkpoint tensors of a float dtype, and rows of a
 * matrix in any stored format (dense, FP8 e4m3fn or FP4 e2m1 with block
 * scales), dequantized exactly as transformers' Fp8Dequantize does it: the
 * code as f32 times the scale as f32, one f32 multiply per element. */
#include "engine/model/dtype.h"

#include <assert.h>

#include "engine/model/model.h"

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

/* Scale (r, c) of w as f32. F8_E8M0 is torch's float8_e8m0fnu cast (255 is
 * NaN); U8 holds the same exponent but transformers reads it through
 * exp2(b - 127) in f32, where 255 gives +inf: each as the reference does. */
float model_weight_scale(const weight *w, int r, int c) {
    size_t k = (size_t)r * (size_t)w->scale_cols + (size_t)c;
    if (w->scale_dt == DTYPE_F32) return ((const float *)w->scale)[k];
    uint8_t b = ((const uint8_t *)w->scale)[k];
    if (w->scale_dt == DTYPE_U8 && b == 255) return bits_to_f32(0x7f800000u);
    return fp8_ue8m0_to_f32(b);
}

void model_weight_rows_to_f32(float *dst, const weight *w, int row0, int nrows) {
    size_t cols = (size_t)w->cols;
    if (w->fmt == WEIGHT_DENSE) {
        size_t esz = dtype_size(w->dt);
        dtype_to_f32(dst, (const char *)w->data + (size_t)row0 * cols * esz, w->dt, (size_t)nrows * cols);
        return;
    }
    /* A table per call: 256 conversions against nrows x cols multiplies. */
    float lut[256];
    bool fp8 = w->fmt == WEIGHT_FP8;
    for (int c = 0; c < (fp8 ? 256 : 16); c++) lut[c] = fp8 ? fp8_e4m3_to_f32((uint8_t)c) : fp4_e2m1_to_f32((uint8_t)c);
    size_t row_bytes = fp8 ? cols : cols / 2;
    int bc = w->block_cols;
    for (int r = 0; r < nrows; r++) {
        int i = row0 + r;
        const uint8_t *q = (const uint8_t *)w->data + (size_t)i * row_bytes;
        float *o = dst + (size_t)r * cols;
        for (int j0 = 0; j0 < w->cols; j0 += bc) {
            float s = model_weight_scale(w, (w->row_base + i) / w->block_rows, j0 / bc);
            int j1 = j0 + bc < w->cols ? j0 + bc : w->cols;
            if (fp8) {
                for (int j = j0; j < j1; j++) o[j] = lut[q[j]] * s;
            } else { /* low nibble: even column */
                for (int j = j0; j < j1; j++) o[j] = lut[(q[j >> 1] >> ((j & 1) * 4)) & 0xf] * s;
            }
        }
    }
}

size_t model_weight_bytes(const weight *w) {
    size_t n = (size_t)w->rows * (size_t)w->cols;
    if (w->fmt == WEIGHT_DENSE) return n * dtype_size(w->dt);
    size_t scales = (size_t)w->scale_rows * (size_t)w->scale_cols * dtype_size(w->scale_dt);
    return (w->fmt == WEIGHT_FP8 ? n : n / 2) + scales;
}

weight model_weight_row_view(const weight *w, int row0, int rows) {
    weight v = *w;
    size_t row_bytes = w->fmt == WEIGHT_DENSE ? (size_t)w->cols * dtype_size(w->dt)
                       : w->fmt == WEIGHT_FP8 ? (size_t)w->cols
                                              : (size_t)w->cols / 2;
    v.data = (const char *)w->data + (size_t)row0 * row_bytes;
    v.rows = rows;
    v.row_base = w->row_base + row0;
    return v;
}
