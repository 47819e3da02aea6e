/* Unit tests of engram/engram_fp8: known e4m3fn and ue8m0 values, every
 * (code, scale byte) pair against the arithmetic definition evaluated in
 * double with ldexp (the outside NumPy/ml_dtypes reference is
 * tests/integration/test_engram_v41.py), packed and split layouts giving the
 * same rows, and bad layouts and row ids refused. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/numeric.h"
#include "engram/engram.h"

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* e4m3fn by its definition, in double: (-1)^s * 2^(e-7) * (1 + m/8), or
 * 2^-6 * m/8 for e = 0; NaN for e = 15, m = 7. */
static double e4m3_def(int code) {
    int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
    return s ? -v : v;
}

START_TEST(test_known_values) {
    ck_assert_uint_eq(f32_bits(fp8_e4m3_to_f32(0x00)), 0x00000000u);
    ck_assert_uint_eq(f32_bits(fp8_e4m3_to_f32(0x80)), 0x80000000u); /* -0 */
    ck_assert(fp8_e4m3_to_f32(0x38) == 1.0f);
    ck_assert(fp8_e4m3_to_f32(0x01) == 0x1p-9f); /* smallest subnormal */
    ck_assert(fp8_e4m3_to_f32(0x07) == 7 * 0x1p-9f);
    ck_assert(fp8_e4m3_to_f32(0x08) == 0x1p-6f); /* smallest normal */
    ck_assert(fp8_e4m3_to_f32(0x7e) == 448.0f);
    ck_assert(fp8_e4m3_to_f32(0xfe) == -448.0f);
    ck_assert(fp8_e4m3_to_f32(0x78) == 256.0f); /* exponent 15 is finite in fn */
    ck_assert(isnan(fp8_e4m3_to_f32(0x7f)));
    ck_assert(isnan(fp8_e4m3_to_f32(0xff)));
    ck_assert(fp8_ue8m0_to_f32(127) == 1.0f);
    ck_assert(fp8_ue8m0_to_f32(0) == 0x1p-127f);
    ck_assert(fp8_ue8m0_to_f32(1) == 0x1p-126f);
    ck_assert(fp8_ue8m0_to_f32(254) == 0x1p127f);
    ck_assert(isnan(fp8_ue8m0_to_f32(255)));
}
END_TEST

/* All 256 x 256 (code, scale) pairs through decode_row, against the definition
 * rounded once to f32 (exact unless it overflows). */
START_TEST(test_all_pairs) {
    uint8_t vals[256], scales[8];
    float out[256];
    for (int i = 0; i < 256; i++) vals[i] = (uint8_t)i;
    for (int s = 0; s < 256; s++) {
        memset(scales, s, sizeof scales);
        engram_fp8_decode_row(vals, scales, 256, out);
        for (int c = 0; c < 256; c++) {
            double want = e4m3_def(c) * (s == 255 ? NAN : ldexp(1.0, s - 127));
            if (isnan(want)) {
                ck_assert_msg(f32_bits(out[c]) == 0x7fc00000u, "code %d scale %d: %a, want the quiet NaN 0x7fc00000", c,
                              s, (double)out[c]); /* one NaN, whichever factor and sign: every decoder agrees */
            } else {
                float w = (float)want;
                ck_assert_msg(f32_bits(out[c]) == f32_bits(w), "code %d scale %d: %a, want %a", c, s,
                              (double)out[c], (double)w);
            }
        }
    }
    /* extremes: smallest magnitude is exact, largest overflows to inf */
    memset(scales, 0, sizeof scales);
    engram_fp8_decode_row(vals, scales, 256, out);
    ck_assert(out[1] == 0x1p-136f && out[0x81] == -0x1p-136f);
    memset(scales, 254, sizeof scales);
    engram_fp8_decode_row(vals, scales, 256, out);
    ck_assert(isinf(out[0x7e]) && out[0x7e] > 0 && isinf(out[0xfe]) && out[0xfe] < 0);
    ck_assert(out[0x38] == 0x1p127f);
}
END_TEST

/* Scale byte b covers values [32b, 32b+32): a different scale per block. */
START_TEST(test_block_scales) {
    uint8_t vals[256], scales[8];
    float out[256];
    memset(vals, 0x38, sizeof vals); /* 1.0 */
    for (int b = 0; b < 8; b++) scales[b] = (uint8_t)(120 + b);
    engram_fp8_decode_row(vals, scales, 256, out);
    for (int i = 0; i < 256; i++) ck_assert(out[i] == ldexpf(1.0f, 120 + i / 32 - 127));
}
END_TEST

START_TEST(test_layouts_gather) {
    enum { R = 37, D = 64, S = D / 32 };
    const size_t rb = engram_fp8_packed_row_bytes(D);
    ck_assert_uint_eq(rb, 66);
    ck_assert_uint_eq(engram_fp8_packed_row_bytes(256), 264);
    uint8_t *packed = malloc(R * rb), vals[R * D], scales[R * S];
    ck_assert_ptr_nonnull(packed);
    uint32_t x = 12345;
    for (int r = 0; r < R; r++) {
        for (int j = 0; j < D; j++) {
            x = x * 1103515245u + 12345u;
            vals[r * D + j] = packed[r * rb + j] = (uint8_t)(x >> 24);
        }
        for (int j = 0; j < S; j++) {
            x = x * 1103515245u + 12345u;
            scales[r * S + j] = packed[r * rb + D + j] = (uint8_t)(100 + (x >> 27));
        }
    }
    engram_fp8_table tp = engram_fp8_table_packed(packed, R, D);
    engram_fp8_table ts = engram_fp8_table_split(vals, scales, R, D);
    ck_assert_int_eq(engram_fp8_table_check(&tp), ENGRAM_FP8_OK);
    ck_assert_int_eq(engram_fp8_table_check(&ts), ENGRAM_FP8_OK);
    const int64_t rows[] = {5, 0, 36, 5, 17};
    float a[5 * D], b[5 * D], one[D];
    ck_assert_int_eq(engram_fp8_gather(&tp, rows, 5, a, NULL), ENGRAM_FP8_OK);
    ck_assert_int_eq(engram_fp8_gather(&ts, rows, 5, b, NULL), ENGRAM_FP8_OK);
    ck_assert_mem_eq(a, b, sizeof a); /* NaN bits included */
    for (int i = 0; i < 5; i++) {
        engram_fp8_decode_row(vals + rows[i] * D, scales + rows[i] * S, D, one);
        ck_assert_mem_eq(a + i * D, one, sizeof one);
    }
    /* a row id outside the table: the rows before it are written, its index reported */
    const int64_t badrows[] = {1, 2, 37};
    size_t bad = 99;
    ck_assert_int_eq(engram_fp8_gather(&tp, badrows, 3, a, &bad), ENGRAM_FP8_ERANGE);
    ck_assert_uint_eq(bad, 2);
    const int64_t neg[] = {-1};
    ck_assert_int_eq(engram_fp8_gather(&ts, neg, 1, a, &bad), ENGRAM_FP8_ERANGE);
    ck_assert_uint_eq(bad, 0);
    /* bad layouts */
    engram_fp8_table t = engram_fp8_table_packed(packed, R, 48);
    ck_assert_int_eq(engram_fp8_table_check(&t), ENGRAM_FP8_EINVAL);
    ck_assert_int_eq(engram_fp8_gather(&t, rows, 1, a, NULL), ENGRAM_FP8_EINVAL);
    t = engram_fp8_table_packed(packed, R, 0);
    ck_assert_int_eq(engram_fp8_table_check(&t), ENGRAM_FP8_EINVAL);
    t = engram_fp8_table_split(NULL, scales, R, D);
    ck_assert_int_eq(engram_fp8_table_check(&t), ENGRAM_FP8_EINVAL);
    t = engram_fp8_table_split(vals, scales, -1, D);
    ck_assert_int_eq(engram_fp8_table_check(&t), ENGRAM_FP8_EINVAL);
    t = ts;
    t.value_stride = D - 1;
    ck_assert_int_eq(engram_fp8_table_check(&t), ENGRAM_FP8_EINVAL);
    ck_assert_int_eq(engram_fp8_table_check(NULL), ENGRAM_FP8_EINVAL);
    ck_assert_str_eq(engram_fp8_status_str(ENGRAM_FP8_ERANGE), "row id outside the table");
    free(packed);
}
END_TEST

static Suite *fp8_suite(void) {
    Suite *s = suite_create("engram_fp8");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_known_values);
    tcase_add_test(tc, test_all_pairs);
    tcase_add_test(tc, test_block_scales);
    tcase_add_test(tc, test_layouts_gather);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(fp8_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
