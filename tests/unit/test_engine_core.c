/* Unit tests of engine/ internals: safetensors parsing, config parsing,
 * dtype conversion and the sampler. Model-level numbers are checked against
 * transformers in tests/integration/test_golden.py. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model.h"
#include "base/numeric.h"
#include "engine/model/safetensors.h"
#include "engine/sampler.h"

/* Builds a safetensors image from a header and n data bytes into buf. */
static size_t build_st(uint8_t *buf, const char *header, size_t n_data) {
    size_t h = strlen(header);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(h >> (8 * i));
    memcpy(buf + 8, header, h);
    memset(buf + 8 + h, 0, n_data);
    return 8 + h + n_data;
}

START_TEST(st_parses_valid_file) {
    uint8_t buf[512];
    size_t n = build_st(buf,
                        "{\"__metadata__\":{\"format\":\"pt\"},"
                        "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[16,28]},"
                        "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                        28);
    safetensors *st;
    char err[256];
    ck_assert_int_eq(safetensors_parse(buf, n, "t", &st, err, sizeof(err)), ST_OK);
    ck_assert_int_eq(safetensors_count(st), 2);
    const st_tensor *b = safetensors_find(st, "b");
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(b->dt, DTYPE_BF16);
    ck_assert_int_eq(b->ndim, 2);
    ck_assert_int_eq(b->shape[1], 3);
    ck_assert_uint_eq(b->numel, 6);
    ck_assert_uint_eq(b->nbytes, 12);
    ck_assert_ptr_null(safetensors_find(st, "c"));
    safetensors_destroy(st);
}
END_TEST

static void expect_bad(const char *header, size_t n_data, const char *needle) {
    uint8_t buf[1024];
    size_t n = build_st(buf, header, n_data);
    safetensors *st = (safetensors *)1;
    char err[256] = "";
    ck_assert_int_eq(safetensors_parse(buf, n, "f.safetensors", &st, err, sizeof(err)), ST_ERR_FORMAT);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, needle) != NULL, "'%s' not in '%s'", needle, err);
    ck_assert_msg(strstr(err, "f.safetensors") != NULL, "file not named: %s", err);
}

START_TEST(st_rejects_bad_headers) {
    expect_bad("[1,2]", 0, "not a JSON object");
    expect_bad("{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype Q4");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "needs 8");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "data_offsets");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 4, "outside");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "shape");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}",
               4, "overflows");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, "overlaps");
    expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets");
    expect_bad("{\"a\":5}", 0, "entry");
}
END_TEST

START_TEST(st_rejects_short_and_lying_lengths) {
    uint8_t buf[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    safetensors *st;
    char err[256];
    ck_assert_int_eq(safetensors_parse(buf, 5, "x", &st, err, sizeof(err)), ST_ERR_FORMAT);
    ck_assert_int_eq(safetensors_parse(buf, 10, "x", &st, err, sizeof(err)), ST_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err, "header length"));
}
END_TEST

static const char *base_cfg =
    "{\"architectures\":[\"Qwen3ForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
    "\"intermediate_size\":128,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"head_dim\":32,\"rope_parameters\":{\"rope_type\":\"default\","
    "\"rope_theta\":1000000.0},\"eos_token_id\":[7,8],\"bos_token_id\":1}";

START_TEST(config_parses_qwen3) {
    model_config c;
    char err[256];
    ck_assert_int_eq(model_config_parse(base_cfg, strlen(base_cfg), "c", &c, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(c.arch, ARCH_QWEN3);
    ck_assert(c.qk_norm);
    ck_assert(!c.qkv_bias);
    ck_assert_int_eq(c.head_dim, 32);
    ck_assert(c.rope_theta == 1e6);
    ck_assert_int_eq(c.n_eos, 2);
    ck_assert_int_eq(c.eos_token_ids[1], 8);
    ck_assert_int_eq(c.bos_token_id, 1);
    ck_assert_float_eq(c.rms_norm_eps, 1e-6f);
}
END_TEST

START_TEST(config_classic_llama3_scaling) {
    const char *j = "{\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":8,"
                    "\"intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                    "\"rope_theta\":500000,\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8,"
                    "\"low_freq_factor\":1,\"high_freq_factor\":4,"
                    "\"original_max_position_embeddings\":8192}}";
    model_config c;
    char err[256];
    ck_assert_int_eq(model_config_parse(j, strlen(j), "c", &c, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(c.arch, ARCH_LLAMA);
    ck_assert_int_eq(c.rope, ROPE_LLAMA3);
    ck_assert_int_eq(c.rope_original_max_pos, 8192);
    ck_assert_int_eq(c.n_kv_heads, 2);
    ck_assert_int_eq(c.head_dim, 4);
}
END_TEST

START_TEST(config_rejects_missing_llama3_field) {
    const char *j = "{\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":8,"
                    "\"intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                    "\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8}}";
    model_config c;
    char err[256];
    ck_assert_int_eq(model_config_parse(j, strlen(j), "c", &c, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "original_max_position_embeddings"));
}
END_TEST

START_TEST(f16_conversion_exact) {
    /* Reference values from IEEE 754 binary16. */
    ck_assert(f16_to_f32(0x3c00) == 1.0f);
    ck_assert(f16_to_f32(0xc000) == -2.0f);
    ck_assert(f16_to_f32(0x7bff) == 65504.0f);
    ck_assert(f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    ck_assert(f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
    ck_assert(isinf(f16_to_f32(0x7c00)) && f16_to_f32(0x7c00) > 0);
    ck_assert(isnan(f16_to_f32(0x7e00)));
    ck_assert(signbit(f16_to_f32(0x8000)) && f16_to_f32(0x8000) == 0.0f);
    ck_assert(bf16_to_f32(0x3f80) == 1.0f);
    ck_assert(bf16_to_f32(0xc0a0) == -5.0f);
}
END_TEST

START_TEST(sampler_greedy_and_ties) {
    sampler_params p = sampler_default_params();
    p.temperature = 0;
    sampler *s = sampler_create(5, p);
    float l[5] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f};
    ck_assert_int_eq(sampler_sample(s, l, NULL, 0, NULL, 0), 1); /* lowest id wins a tie */
    sampler_destroy(s);
}
END_TEST

START_TEST(sampler_penalties) {
    sampler_params p = sampler_default_params();
    p.temperature = 0;
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    sampler *s = sampler_create(4, p);
    float l[4] = {4.0f, -1.0f, 3.0f, 1.0f};
    int32_t prompt[] = {0, 1};
    int32_t out[] = {2, 2, 2};
    sampler_sample(s, l, prompt, 2, out, 3);
    ck_assert_float_eq(l[0], 2.0f);                      /* 4 / 2 */
    ck_assert_float_eq(l[1], -2.0f);                     /* -1 * 2 */
    ck_assert_float_eq(l[2], 3.0f / 2 - 0.5f - 0.75f);   /* rep, presence, 3x frequency */
    ck_assert_float_eq(l[3], 1.0f);
    /* State is cleared between calls: a second call without history changes nothing. */
    float m[4] = {4.0f, -1.0f, 3.0f, 1.0f};
    sampler_sample(s, m, NULL, 0, NULL, 0);
    ck_assert_float_eq(m[0], 4.0f);
    sampler_destroy(s);
}
END_TEST

START_TEST(sampler_filters_and_seeds) {
    enum { V = 50, N = 4000 };
    sampler_params p = sampler_default_params();
    p.seed = 42;
    p.top_k = 3;
    sampler *a = sampler_create(V, p), *b = sampler_create(V, p);
    int hist[V] = {0};
    for (int i = 0; i < N; i++) {
        float la[V], lb[V];
        for (int j = 0; j < V; j++) la[j] = lb[j] = (float)((j * 7) % V) / 10.0f;
        int32_t x = sampler_sample(a, la, NULL, 0, NULL, 0), y = sampler_sample(b, lb, NULL, 0, NULL, 0);
        ck_assert_int_eq(x, y); /* same seed, same stream */
        hist[x]++;
    }
    /* top-k 3 keeps the three largest logits (4.9, 4.8, 4.7 at ids 7, 14, 21... per (j*7)%V). */
    int kept = 0;
    for (int j = 0; j < V; j++)
        if (hist[j]) kept++;
    ck_assert_int_eq(kept, 3);
    /* Frequencies follow softmax(4.9, 4.8, 4.7) within 5 sigma. */
    double z = exp(4.9) + exp(4.8) + exp(4.7), p0 = exp(4.9) / z;
    int top = 0;
    for (int j = 0; j < V; j++)
        if ((j * 7) % V == 49) top = hist[j];
    ck_assert(fabs(top - N * p0) < 5 * sqrt(N * p0 * (1 - p0)));
    sampler_destroy(a);
    sampler_destroy(b);

    /* top-p tiny and min-p 1 both reduce to greedy. */
    p.top_k = 0;
    p.top_p = 1e-6f;
    sampler *c = sampler_create(V, p);
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    sampler *d = sampler_create(V, p);
    for (int i = 0; i < 100; i++) {
        float l[V], m[V];
        for (int j = 0; j < V; j++) l[j] = m[j] = (float)((j * 7) % V) / 10.0f;
        ck_assert_int_eq((sampler_sample(c, l, NULL, 0, NULL, 0) * 7) % V, 49);
        ck_assert_int_eq((sampler_sample(d, m, NULL, 0, NULL, 0) * 7) % V, 49);
    }
    sampler_destroy(c);
    sampler_destroy(d);
    ck_assert_ptr_null(sampler_create(0, p));
}
END_TEST

int main(void) {
    Suite *s = suite_create("engine_core");
    TCase *tc = tcase_create("all");
    tcase_add_test(tc, st_parses_valid_file);
    tcase_add_test(tc, st_rejects_bad_headers);
    tcase_add_test(tc, st_rejects_short_and_lying_lengths);
    tcase_add_test(tc, config_parses_qwen3);
    tcase_add_test(tc, config_classic_llama3_scaling);
    tcase_add_test(tc, config_rejects_missing_llama3_field);
    tcase_add_test(tc, f16_conversion_exact);
    tcase_add_test(tc, sampler_greedy_and_ties);
    tcase_add_test(tc, sampler_penalties);
    tcase_add_test(tc, sampler_filters_and_seeds);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
