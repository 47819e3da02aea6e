/* Unit tests of the quantized weight formats (DEEPSEEK_V4.md 4.4): the new
 * safetensors dtypes, fp4_e2m1_to_f32, model__load_qmatrix over hand-made FP8
 * and FP4 tensors (edge codes, partial blocks, both scale namings, every bad
 * input a one-line error naming the tensor), and the golden fixture
 * tests/fixtures/weight_formats (tools/make_weight_format_fixture.py): our
 * dequantisation equals transformers' own bit for bit, and the CPU matmul with
 * a quantized matrix equals the one with its dequantized f32 copy. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/numeric.h"
#include "engine/backend/backend.h"
#include "engine/model/model.h"
#include "engine/model/model_internal.h"

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Bit equality, with any NaN equal to any NaN (payloads are not specified:
 * torch keeps the e4m3 mantissa in a NaN, we do not). */
static int same_f32(float a, float b) { return (isnan(a) && isnan(b)) || f32_bits(a) == f32_bits(b); }

/* ---- an in-memory safetensors file ---- */

typedef struct {
    const char *name, *dt;
    int ndim;
    int64_t shape[3];
    const void *data;
    size_t nbytes;
} tdesc;

/* Header padded so the data region starts 8-aligned, each tensor at an
 * offset that is a multiple of 8 (+ skew bytes for the misalignment case). */
static uint8_t *st_build(const tdesc *t, int n, size_t skew, size_t *size) {
    ck_assert_int_le(n, 32);
    char hdr[8192];
    size_t h = 0, off = 0, offs[32];
    h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "{");
    for (int i = 0; i < n; i++) {
        off = (off + 7) & ~(size_t)7;
        if (i == n - 1) off += skew;
        offs[i] = off;
        h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                              t[i].name, t[i].dt);
        for (int d = 0; d < t[i].ndim; d++)
            h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "],\"data_offsets\":[%zu,%zu]}", off, off + t[i].nbytes);
        off += t[i].nbytes;
    }
    h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "}");
    while (h % 8) hdr[h++] = ' ';
    *size = 8 + h + off;
    uint8_t *buf = calloc(1, *size + 1);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, hdr, h);
    for (int i = 0; i < n; i++)
        if (t[i].nbytes) memcpy(buf + 8 + h + offs[i], t[i].data, t[i].nbytes);
    return buf;
}

/* A model whose only content is one parsed file (what model__load_qmatrix reads). */
typedef struct {
    model m;
    safetensors *st;
    uint8_t *buf;
} fake_model;

static void fake_open(fake_model *f, const tdesc *t, int n, size_t skew) {
    memset(f, 0, sizeof(*f));
    size_t size;
    char err[256];
    f->buf = st_build(t, n, skew, &size);
    ck_assert_msg(safetensors_parse(f->buf, size, "mem", &f->st, err, sizeof err) == ST_OK, "%s", err);
    f->m.files = &f->st;
    f->m.n_files = 1;
    f->m.dir = "mem";
    f->m.cfg.quant_block_rows = f->m.cfg.quant_block_cols = 128;
}

static void fake_close(fake_model *f) {
    safetensors_destroy(f->st);
    free(f->buf);
}

/* ---- definitions, in double (exact), rounded once to f32 ---- */

static double e4m3_def(int code) {
    int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e ? ldexp(1.0 + m / 8.0, e - 7) : ldexp(m / 8.0, -6);
    return s ? -v : v;
}

static double e2m1_def(int code) {
    static const double mag[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    return (code & 8) ? -mag[code & 7] : mag[code & 7];
}

START_TEST(fp4_codes) {
    for (int c = 0; c < 16; c++) ck_assert_uint_eq(f32_bits(fp4_e2m1_to_f32((uint8_t)c)), f32_bits((float)e2m1_def(c)));
    ck_assert_uint_eq(f32_bits(fp4_e2m1_to_f32(8)), 0x80000000u); /* -0 */
    ck_assert(fp4_e2m1_to_f32(0xf7) == 6.0f);                     /* only the low nibble counts */
}
END_TEST

START_TEST(safetensors_dtypes) {
    static const struct {
        const char *dt;
        dtype want;
        int64_t n;
        size_t bytes;
    } ok[] = {{"F8_E8M0", DTYPE_F8_E8M0, 3, 3}, {"F4", DTYPE_F4, 6, 3},     {"U16", DTYPE_U16, 2, 4},
              {"U32", DTYPE_U32, 2, 8},         {"U64", DTYPE_U64, 1, 8},   {"I32", DTYPE_I32, 2, 8},
              {"F8_E4M3", DTYPE_F8_E4M3, 2, 2}, {"C64", DTYPE_C64, 1, 8},   {"F8_E4M3FNUZ", DTYPE_F8_E4M3FNUZ, 1, 1}};
    uint8_t zeros[16] = {0};
    char err[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        tdesc t = {"x", ok[i].dt, 1, {ok[i].n}, zeros, ok[i].bytes};
        size_t size;
        uint8_t *buf = st_build(&t, 1, 0, &size);
        safetensors *st = NULL;
        ck_assert_msg(safetensors_parse(buf, size, "mem", &st, err, sizeof err) == ST_OK, "%s: %s", ok[i].dt, err);
        ck_assert_int_eq(safetensors_find(st, "x")->dt, ok[i].want);
        ck_assert_uint_eq(safetensors_find(st, "x")->nbytes, ok[i].bytes);
        ck_assert_str_eq(dtype_name(ok[i].want), ok[i].dt);
        safetensors_destroy(st);
        free(buf);
    }
    ck_assert_uint_eq(dtype_bits(DTYPE_F4), 4);
    ck_assert_uint_eq(dtype_size(DTYPE_F8_E8M0), 1);
    /* refused: F4 that does not fill whole bytes, bytes that disagree, unknown names */
    static const struct {
        const char *dt;
        int64_t n;
        size_t bytes;
        const char *msg;
    } bad[] = {{"F4", 3, 2, "do not fill whole bytes"}, {"F4", 4, 4, "needs 2"},
               {"F8_E8M0", 2, 1, "needs 2"},            {"F8_E4M3FN", 1, 1, "unknown dtype F8_E4M3FN"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tdesc t = {"x", bad[i].dt, 1, {bad[i].n}, zeros, bad[i].bytes};
        size_t size;
        uint8_t *buf = st_build(&t, 1, 0, &size);
        safetensors *st = NULL;
        err[0] = 0;
        ck_assert_int_eq(safetensors_parse(buf, size, "mem", &st, err, sizeof err), ST_ERR_FORMAT);
        ck_assert_msg(strstr(err, bad[i].msg) && strstr(err, "tensor x"), "%s", err);
        ck_assert_ptr_null(strchr(err, '\n'));
        free(buf);
    }
}
END_TEST

/* Every element of w against code * scale by the definition, given the block. */
static void check_against_def(const weight *w, const uint8_t *codes, int fp4, const uint8_t *sbytes, int u8,
                              int br, int bc) {
    ck_assert_int_eq(w->block_rows, br);
    ck_assert_int_eq(w->block_cols, bc);
    float *got = malloc((size_t)w->rows * w->cols * sizeof(float));
    model_weight_rows_to_f32(got, w, 0, w->rows);
    for (int i = 0; i < w->rows; i++)
        for (int j = 0; j < w->cols; j++) {
            int c = fp4 ? (codes[(size_t)i * (w->cols / 2) + j / 2] >> ((j & 1) * 4)) & 15 : codes[(size_t)i * w->cols + j];
            int b = sbytes[(i / br) * w->scale_cols + j / bc];
            double s = b == 255 ? (u8 ? INFINITY : NAN) : ldexp(1.0, b - 127);
            float want = (float)((fp4 ? e2m1_def(c) : e4m3_def(c)) * s);
            ck_assert_msg(same_f32(got[(size_t)i * w->cols + j], want), "(%d, %d) code %d scale %d: %a != %a", i, j, c,
                          b, got[(size_t)i * w->cols + j], want);
        }
    free(got);
}

/* FP8 130 x 260, every code (NaN, +-448, subnormals, -0) at every column
 * phase, a [2, 3] grid: 130 / 2 and 260 / 3 do not both divide, so the
 * 128-grid itself; then 130 x 200 on [2, 2], where transformers' rows / grid
 * rule gives 65 x 100 blocks. Scales include 0 (2^-127) and 255 (NaN). */
START_TEST(fp8_hand_made) {
    enum { R = 130, C = 260 };
    uint8_t *q = malloc(R * C);
    for (int i = 0; i < R * C; i++) q[i] = (uint8_t)(i * 7 + i / C);
    uint8_t s6[6] = {127, 0, 254, 255, 120, 1};
    tdesc t[] = {{"a.weight", "F8_E4M3", 2, {R, C}, q, R * C}, {"a.scale", "F8_E8M0", 2, {2, 3}, s6, 6},
                 {"b.weight", "F8_E4M3", 2, {R, 200}, q, R * 200}, {"b.scale", "U8", 2, {2, 2}, s6 + 2, 4}};
    fake_model f;
    fake_open(&f, t, 4, 0);
    weight w;
    char err[256] = "";
    ck_assert_msg(model__load_qmatrix(&f.m, "a", R, C, &w, err, sizeof err) == MODEL_OK, "%s", err);
    ck_assert_int_eq(w.fmt, WEIGHT_FP8);
    ck_assert_int_eq(w.scale_dt, DTYPE_F8_E8M0);
    check_against_def(&w, q, 0, s6, 0, 128, 128);
    ck_assert_uint_eq(model_weight_bytes(&w), R * C + 6);
    ck_assert_msg(model__load_qmatrix(&f.m, "b", R, 200, &w, err, sizeof err) == MODEL_OK, "%s", err);
    check_against_def(&w, q, 0, s6 + 2, 1, 65, 100); /* U8: byte 255 is +inf, as transformers' exp2 */
    /* weight_block_size [256, 128] makes the grid [1, 3]: the [2, 3] scale no longer fits */
    f.m.cfg.quant_block_rows = 256;
    ck_assert_int_eq(model__load_qmatrix(&f.m, "a", R, C, &w, err, sizeof err), MODEL_ERR_WEIGHTS);
    ck_assert_msg(strstr(err, "a.scale") && strstr(err, "expected [1, 3]"), "%s", err);
    fake_close(&f);
    free(q);
}
END_TEST

/* FP4: every code in both nibbles, in I8 [N, K/2] and in F4 [N, K]; a K that
 * is not a multiple of 32 (grid ceil(K/32), transformers' K / grid blocks). */
START_TEST(fp4_hand_made) {
    enum { R = 5, C = 64 };
    uint8_t p[R * C / 2], s[R * 3];
    for (int i = 0; i < R * C / 2; i++) p[i] = (uint8_t)((i % 16) | (((i / 16 + i) % 16) << 4));
    for (int i = 0; i < R * 3; i++) s[i] = (uint8_t)(100 + 9 * i);
    tdesc t[] = {{"e.weight", "I8", 2, {R, C / 2}, p, sizeof p},   {"e.scale", "F8_E8M0", 2, {R, 2}, s, R * 2},
                 {"f.weight", "F4", 2, {R, C}, p, sizeof p},       {"f.weight_scale_inv", "U8", 2, {R, 2}, s, R * 2},
                 {"g.weight", "I8", 2, {R, 24}, p, R * 24},         {"g.scale", "F8_E8M0", 2, {R, 2}, s, R * 2},
                 {"h.weight", "I8", 2, {3, 25}, p, 75},             {"h.scale", "F8_E8M0", 2, {3, 2}, s, 6}};
    fake_model f;
    fake_open(&f, t, 8, 0);
    weight w;
    char err[256] = "";
    ck_assert_msg(model__load_qmatrix(&f.m, "e", R, C, &w, err, sizeof err) == MODEL_OK, "%s", err);
    ck_assert_int_eq(w.fmt, WEIGHT_FP4);
    check_against_def(&w, p, 1, s, 0, 1, 32);
    ck_assert_uint_eq(model_weight_bytes(&w), R * C / 2 + R * 2); /* half a byte per code */
    ck_assert_msg(model__load_qmatrix(&f.m, "f", R, C, &w, err, sizeof err) == MODEL_OK, "%s", err);
    ck_assert_int_eq(w.dt, DTYPE_F4);
    check_against_def(&w, p, 1, s, 1, 1, 32);
    ck_assert_msg(model__load_qmatrix(&f.m, "g", R, 48, &w, err, sizeof err) == MODEL_OK, "%s", err);
    check_against_def(&w, p, 1, s, 0, 1, 24);
    /* 50 codes on a grid of ceil(50/32) = 2: 50 / 2 divides, 25-code blocks */
    ck_assert_msg(model__load_qmatrix(&f.m, "h", 3, 50, &w, err, sizeof err) == MODEL_OK, "%s", err);
    check_against_def(&w, p, 1, s, 0, 1, 25);
    fake_close(&f);
}
END_TEST

/* Stacked experts (transformers' in-memory naming, name_scale_inv): FP8
 * [2, 256, 128] with a [2, 2, 1] grid, sliced as gate and up halves of each
 * expert; FP4 [2, 6, 64] in I8; a slice splitting a scale block is refused. */
START_TEST(stacked_slices) {
    enum { E = 2, R = 256, C = 128 };
    uint8_t *q = malloc(E * R * C), s8[E * 2] = {127, 130, 100, 0}, p[E * 6 * 32], s4[E * 6 * 2];
    for (int i = 0; i < E * R * C; i++) q[i] = (uint8_t)(i * 13 + i / 256);
    for (int i = 0; i < (int)sizeof p; i++) p[i] = (uint8_t)(i * 37);
    for (int i = 0; i < (int)sizeof s4; i++) s4[i] = (uint8_t)(110 + i);
    tdesc t[] = {{"gu", "F8_E4M3", 3, {E, R, C}, q, E * R * C}, {"gu_scale_inv", "F8_E8M0", 3, {E, 2, 1}, s8, 4},
                 {"dn", "I8", 3, {E, 6, 32}, p, sizeof p},      {"dn_scale_inv", "F8_E8M0", 3, {E, 6, 2}, s4, sizeof s4},
                 {"noscale", "I8", 3, {E, 6, 32}, p, sizeof p}};
    fake_model f;
    fake_open(&f, t, 5, 0);
    weight w;
    char err[256] = "";
    for (int e = 0; e < E; e++)
        for (int half = 0; half < 2; half++) {
            ck_assert_msg(model__load_qslice(&f.m, "gu", E, e, R, C, half * 128, 128, &w, err, sizeof err) == MODEL_OK,
                          "%s", err);
            ck_assert_int_eq(w.rows, 128);
            check_against_def(&w, q + ((size_t)e * R + half * 128) * C, 0, s8 + e * 2 + half, 0, 128, 128);
        }
    ck_assert_msg(model__load_qslice(&f.m, "dn", E, 1, 6, 64, 2, 3, &w, err, sizeof err) == MODEL_OK, "%s", err);
    check_against_def(&w, p + (6 + 2) * 32, 1, s4 + (6 + 2) * 2, 0, 1, 32);
    ck_assert_int_eq(model__load_qslice(&f.m, "gu", E, 0, R, C, 64, 128, &w, err, sizeof err), MODEL_ERR_WEIGHTS);
    ck_assert_msg(strstr(err, "tensor gu split its 128-row scale blocks"), "%s", err);
    ck_assert_int_eq(model__load_qslice(&f.m, "dn", E, 0, 6, 48, 0, 6, &w, err, sizeof err), MODEL_ERR_WEIGHTS);
    ck_assert_msg(strstr(err, "tensor dn (I8) has shape [2, 6, 32], expected [2, 6, 24]"), "%s", err);
    ck_assert_int_eq(model__load_qslice(&f.m, "noscale", E, 0, 6, 64, 0, 6, &w, err, sizeof err), MODEL_ERR_WEIGHTS);
    ck_assert_msg(strstr(err, "no scale tensor noscale_scale_inv"), "%s", err);
    fake_close(&f);
    free(q);
}
END_TEST

/* Each bad input: MODEL_ERR_WEIGHTS, one line, naming the tensor at fault. */
START_TEST(bad_inputs) {
    uint8_t z[4096] = {0};
    float one = 1.0f;
    tdesc t[] = {
        {"odd.weight", "I8", 2, {4, 3}, z, 12},          {"odd.scale", "F8_E8M0", 2, {4, 1}, z, 4},
        {"sshape.weight", "F8_E4M3", 2, {4, 200}, z, 800}, {"sshape.scale", "F8_E8M0", 2, {1, 1}, z, 1},
        {"sdt.weight", "F8_E4M3", 2, {4, 8}, z, 32},     {"sdt.scale", "BF16", 2, {1, 1}, z, 2},
        {"noscale.weight", "F8_E4M3", 2, {4, 8}, z, 32}, {"wdt.weight", "F8_E5M2", 2, {4, 8}, z, 32},
        {"wdt.scale", "F8_E8M0", 2, {1, 1}, z, 1},        {"two.weight", "F8_E4M3", 2, {4, 8}, z, 32},
        {"two.scale", "F8_E8M0", 2, {1, 1}, z, 1},        {"two.weight_scale_inv", "F8_E8M0", 2, {1, 1}, z, 1},
        {"dense.weight", "F32", 2, {4, 8}, z, 128},      {"dense.scale", "F32", 2, {1, 1}, &one, 4},
        {"wshape.weight", "F8_E4M3", 2, {8, 4}, z, 32},  {"wshape.scale", "F8_E8M0", 2, {1, 1}, z, 1},
        {"s3d.weight", "I8", 2, {4, 16}, z, 64},         {"s3d.scale", "F8_E8M0", 3, {4, 1, 1}, z, 4},
        {"fp4w.weight", "I8", 2, {4, 16}, z, 64},        {"fp4w.scale", "F8_E8M0", 2, {4, 2}, z, 8},
        {"u8w.weight", "U8", 2, {4, 8}, z, 32},          {"u8w.scale", "F8_E8M0", 2, {1, 1}, z, 1},
        {"mis.weight", "F8_E4M3", 2, {4, 8}, z, 32},     {"mis.scale", "F32", 2, {1, 1}, &one, 4},
    };
    static const struct {
        const char *name;
        int rows, cols;
        const char *tensor, *msg;
    } cases[] = {
        {"odd", 4, 5, "odd.weight", "odd number"},
        {"sshape", 4, 200, "sshape.scale", "expected [1, 2]"},
        {"sdt", 4, 8, "sdt.scale", "dtype BF16"},
        {"noscale", 4, 8, "noscale.weight", "no scale tensor"},
        {"wdt", 4, 8, "wdt.weight", "dtype F8_E5M2"},
        {"two", 4, 8, "two.weight", "two scales"},
        {"dense", 4, 8, "dense.weight", "but a scale tensor dense.scale"},
        {"wshape", 4, 8, "wshape.weight", "expected [4, 8]"},
        {"s3d", 4, 32, "s3d.scale", "expected [4, 1]"},
        {"fp4w", 4, 64, "fp4w.weight", "expected [4, 32]"},
        {"u8w", 4, 8, "u8w.weight", "dtype U8"},
        {"missing", 4, 8, "missing.weight", "missing tensor"},
        {"mis", 4, 8, "mis.scale", "not aligned"},
    };
    fake_model f;
    fake_open(&f, t, sizeof(t) / sizeof(t[0]), 2); /* the last tensor (mis.scale, F32) 2 bytes off */
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        weight w = {0};
        char err[512] = "";
        ck_assert_int_eq(model__load_qmatrix(&f.m, cases[i].name, cases[i].rows, cases[i].cols, &w, err, sizeof err),
                         MODEL_ERR_WEIGHTS);
        ck_assert_msg(strstr(err, cases[i].tensor) && strstr(err, cases[i].msg), "%s: %s", cases[i].name, err);
        ck_assert_ptr_null(strchr(err, '\n'));
    }
    fake_close(&f);
}
END_TEST

/* quantization_config: the block size, its default, and refusals. */
START_TEST(quant_config) {
    static const char *base = "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":32,\"hidden_size\":16,"
                              "\"intermediate_size\":32,\"num_hidden_layers\":1,\"num_attention_heads\":2%s}";
    static const struct {
        const char *extra;
        int ok, br, bc;
        const char *msg;
    } cases[] = {
        {"", 1, 128, 128, NULL},
        {",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[64,32],\"scale_fmt\":\"ue8m0\"}",
         1, 64, 32, NULL},
        {",\"quantization_config\":{\"quant_method\":\"fp8\",\"scale_fmt\":\"float\"}", 1, 128, 128, NULL},
        {",\"quantization_config\":{\"quant_method\":\"gptq\"}", 0, 0, 0, "quant_method gptq"},
        {",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128]}", 0, 0, 0,
         "weight_block_size"},
        {",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[0,128]}", 0, 0, 0,
         "weight_block_size"},
        {",\"quantization_config\":{\"quant_method\":\"fp8\",\"scale_fmt\":\"e4m3\"}", 0, 0, 0, "scale_fmt"},
        {",\"quantization_config\":[]", 0, 0, 0, "quantization_config must be an object"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[1024], err[256] = "";
        snprintf(json, sizeof json, base, cases[i].extra);
        model_config c;
        int rc = model_config_parse(json, strlen(json), "config.json", &c, err, sizeof err);
        if (cases[i].ok) {
            ck_assert_msg(rc == MODEL_OK, "%s", err);
            ck_assert_int_eq(c.quant_block_rows, cases[i].br);
            ck_assert_int_eq(c.quant_block_cols, cases[i].bc);
        } else {
            ck_assert_int_eq(rc, MODEL_ERR_CONFIG);
            ck_assert_msg(strstr(err, cases[i].msg), "%s", err);
        }
    }
}
END_TEST

/* ---- safetensors_open_ex: a file whose data section misses a cache line ---- */

/* Writes a file of two bf16 tensors (64 and 96 elements, 128 and 192 bytes:
 * whole cache lines) whose data section starts `mis` bytes past a 64-byte
 * boundary (the header padded with spaces), returns its path. */
static const char *write_misaligned(size_t mis, uint16_t *a, uint16_t *b) {
    static char path[256];
    snprintf(path, sizeof path, "/tmp/test_weight_formats_%d_%zu.safetensors", (int)getpid(), mis);
    char hdr[512];
    int h = snprintf(hdr, sizeof hdr, "{\"a\":{\"dtype\":\"BF16\",\"shape\":[64],\"data_offsets\":[0,128]},"
                                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[96],\"data_offsets\":[128,320]}}");
    while ((8 + h) % 64 != (int)mis) hdr[h++] = ' ';
    for (int i = 0; i < 64; i++) a[i] = (uint16_t)(0x3f80 + i);
    for (int i = 0; i < 96; i++) b[i] = (uint16_t)(0xbf80 + 3 * i);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)h >> (8 * i));
    ck_assert_int_eq(fwrite(len, 1, 8, f), 8);
    ck_assert_int_eq(fwrite(hdr, 1, (size_t)h, f), (size_t)h);
    ck_assert_int_eq(fwrite(a, 2, 64, f), 64);
    ck_assert_int_eq(fwrite(b, 2, 96, f), 96);
    fclose(f);
    return path;
}

/* With align 64 every tensor starts on a cache line and holds the file's
 * bytes, whatever the header's padding; without it the tensors are where the
 * mapping puts them (mis past a line). */
START_TEST(open_aligned_copy) {
    size_t cases[] = {0, 8, 24, 56};
    for (int c = 0; c < 4; c++) {
        uint16_t a[64], b[96];
        const char *path = write_misaligned(cases[c], a, b);
        for (int aligned = 0; aligned <= 1; aligned++) {
            safetensors *st = NULL;
            char err[256];
            ck_assert_msg(safetensors_open_ex(path, aligned ? 64 : 0, &st, err, sizeof err) == ST_OK, "%s", err);
            const st_tensor *ta = safetensors_find(st, "a"), *tb = safetensors_find(st, "b");
            ck_assert_ptr_nonnull(ta);
            ck_assert_ptr_nonnull(tb);
            size_t want = aligned ? 0 : cases[c];
            ck_assert_uint_eq((uintptr_t)ta->data % 64, want);
            ck_assert_uint_eq((uintptr_t)tb->data % 64, want);
            ck_assert_int_eq(memcmp(ta->data, a, sizeof a), 0);
            ck_assert_int_eq(memcmp(tb->data, b, sizeof b), 0);
            safetensors_destroy(st);
        }
        unlink(path);
    }
}
END_TEST

/* A header length past the file's end: the same parse error with or without
 * the aligned copy (the copy is never made from it). */
START_TEST(open_aligned_bad_header) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/test_weight_formats_bad_%d.safetensors", (int)getpid());
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    uint8_t bytes[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    ck_assert_int_eq(fwrite(bytes, 1, sizeof bytes, f), sizeof bytes);
    fclose(f);
    for (int aligned = 0; aligned <= 1; aligned++) {
        safetensors *st = NULL;
        char err[256] = "";
        ck_assert_int_eq(safetensors_open_ex(path, aligned ? 64 : 0, &st, err, sizeof err), ST_ERR_FORMAT);
        ck_assert_ptr_null(st);
        ck_assert_msg(strstr(err, path), "%s", err);
    }
    unlink(path);
}
END_TEST

/* ---- the golden fixture ---- */

static safetensors *open_fixture(const char *file) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/tests/fixtures/weight_formats/%s", src ? src : ".", file);
    safetensors *st = NULL;
    ck_assert_msg(safetensors_open(path, &st, err, sizeof err) == ST_OK, "%s", err);
    return st;
}

/* Every matrix of weights.safetensors, loaded by name and dequantized, equals
 * transformers' f32 result in expected.safetensors bit for bit. */
START_TEST(golden_dequant) {
    safetensors *wf = open_fixture("weights.safetensors"), *ef = open_fixture("expected.safetensors");
    model m = {0};
    m.files = &wf, m.n_files = 1, m.dir = "weights.safetensors";
    m.cfg.quant_block_rows = m.cfg.quant_block_cols = 128; /* the fixture's weight_block_size */
    ck_assert_int_ge(safetensors_count(ef), 11);
    for (int k = 0; k < safetensors_count(ef); k++) {
        const st_tensor *e = safetensors_get(ef, k);
        ck_assert_int_eq(e->dt, DTYPE_F32);
        int rows = (int)e->shape[0], cols = (int)e->shape[1];
        weight w;
        char err[512] = "";
        ck_assert_msg(model__load_qmatrix(&m, e->name, rows, cols, &w, err, sizeof err) == MODEL_OK, "%s", err);
        ck_assert_int_ne(w.fmt, WEIGHT_DENSE);
        float *got = malloc((size_t)rows * cols * sizeof(float));
        model_weight_rows_to_f32(got, &w, 0, rows);
        const float *want = e->data;
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            if (!same_f32(got[i], want[i]) && !bad++) first = i;
        ck_assert_msg(bad == 0, "%s: %zu of %d elements differ, first (%zu, %zu): %a != %a", e->name, bad, rows * cols,
                      first / cols, first % cols, got[first], want[first]);
        free(got);
    }
    safetensors_destroy(wf);
    safetensors_destroy(ef);
}
END_TEST

/* The CPU backend's matmul with each quantized matrix equals the matmul with
 * transformers' dequantized f32 matrix, bit for bit, for token counts that
 * take the one-token and the four-token paths; and each row of a batch is
 * the row computed alone (batch invariance through the dequantizing path). */
START_TEST(golden_matmul) {
    safetensors *wf = open_fixture("weights.safetensors"), *ef = open_fixture("expected.safetensors");
    model m = {0};
    m.files = &wf, m.n_files = 1, m.dir = "weights.safetensors";
    m.cfg.quant_block_rows = m.cfg.quant_block_cols = 128;
    backend *be = backend_cpu_create();
    enum { TMAX = 9 };
    uint64_t r = 88172645463325252ull;
    for (int k = 0; k < safetensors_count(ef); k++) {
        const st_tensor *e = safetensors_get(ef, k);
        int rows = (int)e->shape[0], cols = (int)e->shape[1];
        weight wq, wd = {.data = e->data, .dt = DTYPE_F32, .rows = rows, .cols = cols};
        char err[512] = "";
        ck_assert_msg(model__load_qmatrix(&m, e->name, rows, cols, &wq, err, sizeof err) == MODEL_OK, "%s", err);
        float *x = malloc((size_t)TMAX * cols * sizeof(float)), *bias = malloc((size_t)rows * sizeof(float));
        float *yq = malloc((size_t)TMAX * rows * sizeof(float)), *yd = malloc((size_t)TMAX * rows * sizeof(float));
        for (int i = 0; i < TMAX * cols; i++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            x[i] = (float)((double)(r >> 11) / 9007199254740992.0 - 0.5);
        }
        for (int i = 0; i < rows; i++) bias[i] = 0.001f * (float)i;
        static const int Ts[] = {1, 3, 4, 5, TMAX};
        for (size_t ti = 0; ti < sizeof(Ts) / sizeof(Ts[0]); ti++) {
            int T = Ts[ti];
            backend_matmul(be, yq, x, &wq, ti % 2 ? bias : NULL, T);
            backend_matmul(be, yd, x, &wd, ti % 2 ? bias : NULL, T);
            for (size_t i = 0; i < (size_t)T * rows; i++)
                ck_assert_msg(same_f32(yq[i], yd[i]), "%s T=%d: y[%zu] %a != %a", e->name, T, i, yq[i], yd[i]);
        }
        /* yq holds T = 9 (no bias): each row against that token alone */
        for (int t = 0; t < TMAX; t++) {
            backend_matmul(be, yd, x + (size_t)t * cols, &wq, NULL, 1);
            for (int i = 0; i < rows; i++) ck_assert(same_f32(yd[i], yq[(size_t)t * rows + i]));
        }
        free(x), free(bias), free(yq), free(yd);
    }
    backend_destroy(be);
    safetensors_destroy(wf);
    safetensors_destroy(ef);
}
END_TEST

/* The DeepSeek-V4 FP8 model fixture (release formats, the file the model
 * loads): every quantized matrix in it loads through model__load_qmatrix with
 * the shape its header implies, and the bf16 ones through the dense path. */
START_TEST(dsv4_fixture_matrices) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char path[1024], err[512] = "";
    snprintf(path, sizeof path, "%s/tests/fixtures/models/deepseek_v4_fp8/model.safetensors", src ? src : ".");
    safetensors *st = NULL;
    ck_assert_msg(safetensors_open(path, &st, err, sizeof err) == ST_OK, "%s", err);
    model m = {0};
    m.files = &st, m.n_files = 1, m.dir = "deepseek_v4_fp8";
    m.cfg.quant_block_rows = m.cfg.quant_block_cols = 128;
    int counts[3] = {0};
    for (int k = 0; k < safetensors_count(st); k++) {
        const st_tensor *t = safetensors_get(st, k);
        size_t len = strlen(t->name);
        if (t->ndim != 2 || len < 8 || strcmp(t->name + len - 7, ".weight") != 0) continue;
        char base[256];
        snprintf(base, sizeof base, "%.*s", (int)(len - 7), t->name);
        int rows = (int)t->shape[0], cols = (int)t->shape[1] * (t->dt == DTYPE_I8 ? 2 : 1);
        weight w;
        ck_assert_msg(model__load_qmatrix(&m, base, rows, cols, &w, err, sizeof err) == MODEL_OK, "%s", err);
        counts[w.fmt]++;
        float *row = malloc((size_t)cols * sizeof(float));
        model_weight_rows_to_f32(row, &w, rows - 1, 1);
        for (int j = 0; j < cols; j++) ck_assert_msg(isfinite(row[j]), "%s (%d, %d)", t->name, rows - 1, j);
        free(row);
    }
    ck_assert_int_gt(counts[WEIGHT_DENSE], 0);
    ck_assert_int_gt(counts[WEIGHT_FP8], 0);
    ck_assert_int_gt(counts[WEIGHT_FP4], 0);
    safetensors_destroy(st);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("weight_formats");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, fp4_codes);
    tcase_add_test(tc, safetensors_dtypes);
    tcase_add_test(tc, fp8_hand_made);
    tcase_add_test(tc, fp4_hand_made);
    tcase_add_test(tc, stacked_slices);
    tcase_add_test(tc, bad_inputs);
    tcase_add_test(tc, quant_config);
    tcase_add_test(tc, open_aligned_copy);
    tcase_add_test(tc, open_aligned_bad_header);
    tcase_add_test(tc, golden_dequant);
    tcase_add_test(tc, golden_matmul);
    tcase_add_test(tc, dsv4_fixture_matrices);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
