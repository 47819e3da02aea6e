/* Unit tests of engine/kv_cache: block allocation and accounting, the CPU
 * attention reading through a block table (bit-identical to the same rows
 * laid out in order), and sequences sharing one cache giving the same
 * logits as a sequence alone (fixture model). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "forward.h"
#include "kv_cache.h"

static kv_cache *make(int bs, int n_blocks) {
    kv_cache_params p = kv_cache_default_params();
    p.n_layers = 2;
    p.kv_width = 8;
    p.block_size = bs;
    p.n_blocks = n_blocks;
    kv_cache *c = NULL;
    ck_assert_int_eq(kv_cache_create(&p, &c), KV_CACHE_OK);
    return c;
}

START_TEST(kv_alloc_and_accounting) {
    ck_assert_int_eq(kv_cache_default_params().block_size, 16);
    kv_cache *c = make(16, 10);
    ck_assert_int_eq(kv_cache_n_blocks(c), 10);
    ck_assert_int_eq(kv_cache_used_blocks(c), 0);
    ck_assert_int_eq(kv_cache_blocks_for(c, 0), 0);
    ck_assert_int_eq(kv_cache_blocks_for(c, 1), 1);
    ck_assert_int_eq(kv_cache_blocks_for(c, 16), 1);
    ck_assert_int_eq(kv_cache_blocks_for(c, 17), 2);

    kv_seq a = {0}, b = {0};
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 17), KV_CACHE_OK);
    ck_assert_int_eq(a.n_blocks, 2);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 32), KV_CACHE_OK); /* still fits */
    ck_assert_int_eq(a.n_blocks, 2);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &b, 16 * 7), KV_CACHE_OK);
    ck_assert_int_eq(kv_cache_used_blocks(c), 9);
    ck_assert_int_eq(kv_cache_free_blocks(c), 1);
    /* too many: nothing taken */
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 16 * 4), KV_CACHE_ERR_FULL);
    ck_assert_int_eq(a.n_blocks, 2);
    ck_assert_int_eq(kv_cache_used_blocks(c), 9);
    ck_assert_int_eq(kv_cache_seq_reserve(c, &a, 33), KV_CACHE_OK);
    ck_assert_int_eq(kv_cache_free_blocks(c), 0);

    /* every block held once */
    int seen[10] = {0};
    for (int i = 0; i < a.n_blocks; i++) seen[a.blocks[i]]++;
    for (int i = 0; i < b.n_blocks; i++) seen[b.blocks[i]]++;
    for (int i = 0; i < 10; i++) ck_assert_int_eq(seen[i], 1);

    kv_cache_seq_free(c, &b);
    ck_assert_int_eq(b.n_blocks, 0);
    ck_assert_int_eq(kv_cache_used_blocks(c), 3);
    kv_cache_seq_destroy(c, &a);
    kv_cache_seq_destroy(c, &b);
    ck_assert_ptr_null(a.blocks);
    ck_assert_int_eq(kv_cache_used_blocks(c), 0);

    /* blocks of one layer do not overlap, K and V are apart */
    float *k0 = kv_cache_k(c, 1, 0), *k1 = kv_cache_k(c, 1, 1);
    ck_assert_ptr_eq(k1, k0 + 16 * 8);
    ck_assert_ptr_eq(k0, kv_cache_k_layer(c, 1));
    ck_assert_ptr_ne(kv_cache_v(c, 1, 0), k0);
    kv_cache_destroy(c);
    kv_cache_destroy(NULL);
    ck_assert_str_eq(kv_cache_status_str(KV_CACHE_ERR_FULL), "no free KV cache blocks");
}
END_TEST

/* Attention over rows scattered across blocks equals attention over the same
 * rows in order, bit for bit. */
START_TEST(kv_paged_attention_bit_identical) {
    enum { BS = 4, NB = 8, NKV = 2, HD = 8, NH = 4, POS0 = 13, T = 3 };
    int kvw = NKV * HD, n = POS0 + T;
    float *kc = malloc(sizeof(float) * NB * BS * kvw), *vc = malloc(sizeof(float) * NB * BS * kvw);
    float *kp = malloc(sizeof(float) * NB * BS * kvw), *vp = malloc(sizeof(float) * NB * BS * kvw);
    float q[T * NH * HD], o1[T * NH * HD], o2[T * NH * HD];
    unsigned x = 12345;
    for (int i = 0; i < NB * BS * kvw; i++) {
        x = x * 1103515245u + 12345u;
        kc[i] = (float)((x >> 8) % 2001) / 1000.0f - 1.0f;
        x = x * 1103515245u + 12345u;
        vc[i] = (float)((x >> 8) % 2001) / 1000.0f - 1.0f;
    }
    for (int i = 0; i < T * NH * HD; i++) q[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    int ident[NB], perm[NB] = {5, 2, 7, 0, 1, 6, 3, 4};
    for (int i = 0; i < NB; i++) ident[i] = i;
    for (int j = 0; j < n; j++) { /* position j: row j of the contiguous layout */
        int b = perm[j / BS], r = j % BS;
        memcpy(kp + ((size_t)b * BS + r) * kvw, kc + (size_t)j * kvw, sizeof(float) * kvw);
        memcpy(vp + ((size_t)b * BS + r) * kvw, vc + (size_t)j * kvw, sizeof(float) * kvw);
    }
    const backend_ops *ops = backend_cpu();
    for (int window = 0; window <= 5; window += 5) {
        ops->attention(o1, q, kc, vc, ident, BS, T, POS0, NH, NKV, HD, window);
        ops->attention(o2, q, kp, vp, perm, BS, T, POS0, NH, NKV, HD, window);
        ck_assert_int_eq(memcmp(o1, o2, sizeof(o1)), 0);
    }
    free(kc);
    free(vc);
    free(kp);
    free(vp);
}
END_TEST

/* Two sequences interleaved chunk by chunk in one small shared cache give the
 * logits each gives alone in a private cache; the shared cache refuses a
 * sequence it cannot hold and is empty after both are reset. */
START_TEST(kv_shared_states_match_private) {
    char dir[1024];
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/qwen3_engram", src ? src : ".");
    model *m = NULL;
    char err[512];
    ck_assert_msg(model_load(dir, &m, err, sizeof(err)) == MODEL_OK, "%s", err);
    const backend_ops *ops = backend_cpu();
    int V = m->cfg.vocab_size;
    enum { NA = 37, NB2 = 21 };
    int32_t a[NA], b[NB2];
    for (int i = 0; i < NA; i++) a[i] = (i * 31 + 7) % 200 + 10;
    for (int i = 0; i < NB2; i++) b[i] = (i * 17 + 3) % 200 + 10;
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    float *ra = malloc(sizeof(float) * V), *rb = malloc(sizeof(float) * V);

    kv_cache *kv = NULL;
    ck_assert_int_eq(forward_kv_cache_create(m, 4 * 16, 16, &kv), KV_CACHE_OK); /* 4 blocks */
    forward_state *sa = NULL, *sb = NULL;
    ck_assert_int_eq(forward_state_create_shared(m, kv, 64, 8, &sa), FORWARD_OK);
    ck_assert_int_eq(forward_state_create_shared(m, kv, 64, 8, &sb), FORWARD_OK);
    /* interleave: a in chunks of 10, b in chunks of 7; each chunk runs in
     * pieces of 8 (max_chunk) whatever the split */
    ck_assert_int_eq(forward_run(m, ops, sa, a, 10, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, sb, b, 7, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, sa, a + 10, 20, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, sb, b + 7, 14, lb, NULL), FORWARD_OK);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 4); /* 2 for a's 30, 2 for b's 21 */
    /* a's last 7 need a third block: none left, nothing appended */
    ck_assert_int_eq(forward_run(m, ops, sa, a + 30, 7, la, NULL), FORWARD_ERR_KV_FULL);
    ck_assert_int_eq(forward_state_pos(sa), 30);
    forward_state_reset(sb);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 2);
    ck_assert_int_eq(forward_run(m, ops, sa, a + 30, 7, la, NULL), FORWARD_OK);

    /* private runs with the same calls and pieces: bit-identical logits */
    forward_state *pa = NULL;
    ck_assert_int_eq(forward_state_create(m, 64, 8, &pa), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, pa, a, 10, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, pa, a + 10, 20, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, pa, a + 30, 7, ra, NULL), FORWARD_OK);
    ck_assert_int_eq(memcmp(la, ra, sizeof(float) * V), 0);
    forward_state_destroy(pa);

    forward_state *pb = NULL;
    ck_assert_int_eq(forward_state_create(m, 64, 8, &pb), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, pb, b, 7, NULL, NULL), FORWARD_OK);
    ck_assert_int_eq(forward_run(m, ops, pb, b + 7, 14, rb, NULL), FORWARD_OK);
    ck_assert_int_eq(memcmp(lb, rb, sizeof(float) * V), 0);

    forward_state_destroy(sa);
    forward_state_destroy(sb);
    ck_assert_int_eq(kv_cache_used_blocks(kv), 0);
    kv_cache_destroy(kv);
    forward_state_destroy(pb);
    free(la);
    free(lb);
    free(ra);
    free(rb);
    model_destroy(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kv_cache");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, kv_alloc_and_accounting);
    tcase_add_test(tc, kv_paged_attention_bit_identical);
    tcase_add_test(tc, kv_shared_states_match_private);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
