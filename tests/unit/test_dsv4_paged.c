/* Unit tests of DeepSeek-V4's decode state in the paged KV cache (the
 * fixture tests/fixtures/models/deepseek_v4: sliding, CSA m 4, HCA m 8,
 * window 8): the per-layer block layout, state that grows block by block
 * while a sequence's own memory stays the same whatever its length, the KV
 * budget refusing what does not fit, and logits bit-identical whatever the
 * block size (divisors of the rates or not), the neighbours or a reset. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/forward_dsv4.h"
#include "engine/kv_cache.h"

static model *load_fixture(void) {
    char dir[1024], err[512];
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/deepseek_v4", src ? src : ".");
    model *m = NULL;
    ck_assert_msg(model_load(dir, &m, err, sizeof(err)) == MODEL_OK, "%s", err);
    return m;
}

static void prompt(int32_t *ids, int n, int salt) {
    for (int i = 0; i < n; i++) ids[i] = (i * (31 + 2 * salt) + 7 * salt + 5) % 500 + 3;
}

/* A cache of per-layer block sizes: one store per layer at its own stride, no V. */
START_TEST(dsv4_layer_block_layout) {
    size_t elems[2] = {10, 24};
    kv_cache_params p = kv_cache_default_params();
    p.n_layers = 2;
    p.block_size = 4;
    p.n_blocks = 5;
    p.layer_block_elems = elems;
    kv_cache *c = NULL;
    ck_assert_int_eq(kv_cache_create(&p, &c), KV_CACHE_OK);
    ck_assert_ptr_null(kv_cache_v_layer(c, 0));
    ck_assert_ptr_null(kv_cache_v(c, 1, 2));
    ck_assert_int_eq((char *)kv_cache_k(c, 1, 3) - (char *)kv_cache_k_layer(c, 1), 3 * 24 * sizeof(float));
    ck_assert_int_eq((char *)kv_cache_k(c, 0, 4) - (char *)kv_cache_k_layer(c, 0), 4 * 10 * sizeof(float));
    ck_assert_int_eq(kv_cache_block_bytes(c), (10 + 24) * sizeof(float));
    kv_cache_destroy(c);
    /* a block: bs rows of D, ceil(bs / m) entries of D, and for CSA as many index keys of dI */
    ck_assert_int_eq(dsv4_kv_block_floats(16, 4, true, true, 32, 16), 16 * 32 + 4 * 32 + 4 * 16);
    ck_assert_int_eq(dsv4_kv_block_floats(16, 6, true, true, 32, 16), 16 * 32 + 3 * 32 + 3 * 16);
    ck_assert_int_eq(dsv4_kv_block_floats(4, 8, true, false, 32, 16), 4 * 32 + 32);
    ck_assert_int_eq(dsv4_kv_block_floats(16, 0, false, false, 32, 16), 16 * 32);
}
END_TEST

/* What a sequence holds outside the cache is the compressors' last 2m
 * projections, the same for any max_tokens; its blocks come as positions do. */
START_TEST(dsv4_state_grows_with_positions) {
    backend *be = backend_cpu_create();
    model *m = load_fixture();
    const model_config *c = &m->cfg;
    char err[256];
    /* the sequence's own memory: 2 rings (kv, gate) of 2m rows per compressor */
    dsv4_ctx *dc = NULL;
    ck_assert_int_eq(dsv4_ctx_create(m, be, 8, 1, &dc), 0);
    dsv4_seq *ds = NULL;
    ck_assert_int_eq(dsv4_seq_create(dc, &ds), 0);
    size_t D = (size_t)c->head_dim, dI = (size_t)c->dsv4.index_head_dim, want = 0;
    for (int l = 0; l < c->n_layers; l++) {
        size_t r = (size_t)c->dsv4.rate[l];
        if (c->dsv4.attn[l] == DSV4_CSA) want += 2 * (2 * r * 2 * D) + 2 * (2 * r * 2 * dI);
        if (c->dsv4.attn[l] == DSV4_HCA) want += 2 * (2 * r * D);
    }
    ck_assert_int_eq(want, 2 * (2 * 8 * 64 + 2 * 8 * 32) + 2 * 16 * 32); /* CSA m 4 twice, HCA m 8 */
    ck_assert_int_eq(dsv4_seq_bytes(ds), want * sizeof(float));
    dsv4_seq_destroy(dc, ds);
    dsv4_ctx_destroy(dc);

    /* the cache's blocks: the layout of each layer, taken as positions arrive */
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 16, 2, &fc, err, sizeof(err)), FORWARD_OK);
    kv_cache *kv = NULL;
    ck_assert_int_eq(forward_kv_cache_create(fc, 10 * 16, 16, &kv), KV_CACHE_OK);
    size_t block = 0;
    for (int l = 0; l < c->n_layers; l++) block += dsv4_block_floats(c, l, 16) * sizeof(float);
    ck_assert_int_eq(kv_cache_block_bytes(kv), block);
    forward_state *s = NULL;
    ck_assert_int_eq(forward_state_create(fc, kv, c->max_position_embeddings, &s), FORWARD_OK);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 0);
    int32_t ids[37];
    prompt(ids, 37, 0);
    ck_assert_int_eq(forward_run(fc, s, ids, 17, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 2);
    ck_assert_int_eq(forward_run(fc, s, ids + 17, 20, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 3);
    forward_state_reset(s);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 0);
    forward_state_destroy(s);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

enum { NA = 45, NB = 29 };

/* Logits of a (NA tokens) alone in a private cache, in one step. */
static void reference(model *m, backend *be, const int32_t *a, float *ref) {
    char err[256];
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 64, 1, &fc, err, sizeof(err)), FORWARD_OK);
    forward_state *s = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 64, &s), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, s, a, NA, ref, NULL), FORWARD_OK);
    forward_state_destroy(s);
    forward_ctx_destroy(fc);
}

/* Two sequences sharing a cache of block size bs, in mixed steps (a prompt
 * chunk beside decode tokens), b reset and recomputed midway (what
 * preemption does), give a's logits bit for bit as alone; b's too. */
static void shared_run(model *m, backend *be, int bs, const int32_t *a, const int32_t *b, float *la, float *lb) {
    char err[256];
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 16, 2, &fc, err, sizeof(err)), FORWARD_OK);
    kv_cache *kv = NULL;
    ck_assert_int_eq(forward_kv_cache_create(fc, 160, bs, &kv), KV_CACHE_OK);
    forward_state *sa = NULL, *sb = NULL;
    ck_assert_int_eq(forward_state_create(fc, kv, 64, &sa), FORWARD_OK);
    ck_assert_int_eq(forward_state_create(fc, kv, 64, &sb), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, sb, b, 11, NULL, NULL), FORWARD_OK); /* b's blocks before a's */
    int pa = 0, pb = 11;
    for (int step = 0; pa < NA || pb < NB; step++) {
        forward_item it[2];
        int n = 0, ka = pa < 20 ? 7 : 1, kb = 3;
        if (pa < NA) {
            ka = ka < NA - pa ? ka : NA - pa;
            it[n++] = (forward_item){.st = sa, .ids = a + pa, .n = ka, .logits = pa + ka == NA ? la : NULL};
        }
        if (pb < NB) {
            kb = kb < NB - pb ? kb : NB - pb;
            it[n++] = (forward_item){.st = sb, .ids = b + pb, .n = kb, .logits = pb + kb == NB ? lb : NULL};
        }
        ck_assert_int_eq(forward_batch(fc, it, n), FORWARD_OK);
        if (pa < NA) pa += ka;
        if (pb < NB) pb += kb;
        if (step == 4) { /* b preempted: blocks back, recomputed from 0 on other blocks */
            forward_state_reset(sb);
            ck_assert_int_eq(forward_run(fc, sb, b, 2, NULL, NULL), FORWARD_OK);
            pb = 2;
        }
    }
    forward_state_destroy(sa);
    forward_state_destroy(sb);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 0);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
}

START_TEST(dsv4_block_sizes_bit_identical) {
    backend *be = backend_cpu_create();
    model *m = load_fixture();
    int V = m->cfg.vocab_size;
    int32_t a[NA], b[NB];
    prompt(a, NA, 1);
    prompt(b, NB, 2);
    float *ra = malloc(sizeof(float) * V), *rb = malloc(sizeof(float) * V);
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V), *b16 = malloc(sizeof(float) * V);
    reference(m, be, a, ra);
    /* b's reference: alone with bs 16 */
    shared_run(m, be, 16, a, b, la, b16);
    ck_assert_int_eq(memcmp(la, ra, sizeof(float) * V), 0);
    /* 1 and 3 divide no rate, 4 is the CSA rate, 6 straddles it, 8 the HCA rate, 64 holds all */
    int sizes[] = {1, 3, 4, 6, 8, 64};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        shared_run(m, be, sizes[i], a, b, la, lb);
        ck_assert_msg(!memcmp(la, ra, sizeof(float) * V), "block size %d: a differs", sizes[i]);
        ck_assert_msg(!memcmp(lb, b16, sizeof(float) * V), "block size %d: b differs", sizes[i]);
    }
    /* b alone equals b beside a */
    char err[256];
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 64, 1, &fc, err, sizeof(err)), FORWARD_OK);
    forward_state *s = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 64, &s), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, s, b, NB, rb, NULL), FORWARD_OK);
    ck_assert_int_eq(memcmp(rb, b16, sizeof(float) * V), 0);
    forward_state_destroy(s);
    forward_ctx_destroy(fc);
    free(ra), free(rb), free(la), free(lb), free(b16);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

/* The KV budget holds DeepSeek-V4 sequences as it holds dense ones: a
 * sequence that needs a block the cache lacks is refused with nothing
 * appended, and runs once another sequence returns its blocks. */
START_TEST(dsv4_kv_budget_refuses) {
    backend *be = backend_cpu_create();
    model *m = load_fixture();
    int V = m->cfg.vocab_size;
    char err[256];
    int32_t a[NA], b[NB];
    prompt(a, NA, 1);
    prompt(b, NB, 2);
    float *ra = malloc(sizeof(float) * V), *la = malloc(sizeof(float) * V);
    reference(m, be, a, ra);
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 16, 2, &fc, err, sizeof(err)), FORWARD_OK);
    kv_cache *kv = NULL;
    ck_assert_int_eq(forward_kv_cache_create(fc, 4 * 16, 16, &kv), KV_CACHE_OK); /* 4 blocks */
    forward_state *sa = NULL, *sb = NULL;
    ck_assert_int_eq(forward_state_create(fc, kv, 64, &sa), FORWARD_OK);
    ck_assert_int_eq(forward_state_create(fc, kv, 64, &sb), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, sb, b, NB, NULL, NULL), FORWARD_OK); /* 2 blocks */
    ck_assert_int_eq(forward_run(fc, sa, a, 32, NULL, NULL), FORWARD_OK); /* 2 blocks: full */
    ck_assert_int_eq(kv_cache_free_blocks(kv), 0);
    ck_assert_int_eq(forward_run(fc, sa, a + 32, NA - 32, la, NULL), FORWARD_ERR_KV_FULL);
    ck_assert_int_eq(forward_state_pos(sa), 32);
    forward_state_reset(sb);
    ck_assert_int_eq(forward_run(fc, sa, a + 32, NA - 32, la, NULL), FORWARD_OK);
    ck_assert_int_eq(memcmp(la, ra, sizeof(float) * V), 0);
    forward_state_destroy(sa);
    forward_state_destroy(sb);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
    free(ra), free(la);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("dsv4_paged");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, dsv4_layer_block_layout);
    tcase_add_test(tc, dsv4_state_grows_with_positions);
    tcase_add_test(tc, dsv4_block_sizes_bit_identical);
    tcase_add_test(tc, dsv4_kv_budget_refuses);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
