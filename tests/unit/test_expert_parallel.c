/* Expert parallelism over ranks in threads (engine/expert_parallel.h, the
 * CPU fake of the collective): for every fixture model with experts (Qwen3-MoE
 * f32 and bf16, DeepSeek-V4 f32 and FP8/FP4), three sequences (a prefill
 * step of 37, 5 and 12 tokens, then 6 greedy decode steps) run on one rank
 * and on groups of 2, 3 and 8 ranks, each rank its own thread, CPU backend,
 * context and KV cache. Every rank's logits must equal the single rank's bit
 * for bit: a rank that computed experts it does not own, or missed some,
 * would add a product twice or not at all. Also the all-reduce alone, and the
 * refusals. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/expert_parallel.h"
#include "engine/forward.h"
#include "engine/model/model.h"

#define N_SEQ 3
#define N_GEN 6
#define MAX_RANKS 8

static const int lens[N_SEQ] = {37, 5, 12};

/* The logits (N_SEQ, N_GEN + 1, V) of the greedy run, as rank r of its group
 * (r NULL: alone). Returns 0, or a forward status. */
static int run(model *m, const par_rank *r, float *logits) {
    char err[256];
    backend *be = backend_cpu_create();
    forward_ctx *fc = NULL;
    kv_cache *kv = NULL;
    forward_state *st[N_SEQ] = {0};
    int V = m->cfg.vocab_size, rc = forward_ctx_create(m, be, 64, N_SEQ, &fc, err, sizeof(err));
    if (!rc && r && forward_ctx_set_expert_rank(fc, r, err, sizeof(err))) rc = -1;
    if (!rc) rc = forward_kv_cache_create(fc, N_SEQ * 128, 16, &kv);
    for (int i = 0; i < N_SEQ && !rc; i++) rc = forward_state_create(fc, kv, 128, &st[i]);
    int32_t prompt[N_SEQ][37], tok[N_SEQ];
    for (int i = 0; i < N_SEQ; i++)
        for (int k = 0; k < lens[i]; k++) prompt[i][k] = (int32_t)((13 * k + 5 * i + 1) % V);
    forward_item it[N_SEQ];
    for (int g = 0; g <= N_GEN && !rc; g++) {
        for (int i = 0; i < N_SEQ; i++) {
            float *l = logits + ((size_t)i * (N_GEN + 1) + g) * V;
            if (g == 0) {
                it[i] = (forward_item){.st = st[i], .ids = prompt[i], .n = lens[i], .logits = l};
                continue;
            }
            const float *prev = l - V;
            int best = 0;
            for (int v = 1; v < V; v++) best = prev[v] > prev[best] ? v : best;
            tok[i] = best;
            it[i] = (forward_item){.st = st[i], .ids = &tok[i], .n = 1, .logits = l};
        }
        rc = forward_batch(fc, it, N_SEQ);
    }
    if (rc) fprintf(stderr, "run (rank %d): %d %s\n", r ? r->rank : -1, rc, err);
    for (int i = 0; i < N_SEQ; i++) forward_state_destroy(st[i]);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
    backend_destroy(be);
    return rc;
}

typedef struct {
    model *m;
    par_rank r;
    float *logits;
    int rc;
} rank_job;

static void *rank_main(void *arg) {
    rank_job *j = arg;
    j->rc = run(j->m, &j->r, j->logits);
    return NULL;
}

static void check_model(const char *name) {
    char dir[512], err[512];
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/%s", src ? src : ".", name);
    model *m = NULL;
    ck_assert_msg(model_load(dir, &m, err, sizeof(err)) == MODEL_OK, "%s: %s", dir, err);
    size_t n = (size_t)N_SEQ * (N_GEN + 1) * m->cfg.vocab_size;
    float *one = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(one);
    ck_assert_int_eq(run(m, NULL, one), 0);
    const int groups[] = {2, 3, MAX_RANKS};
    for (int gi = 0; gi < 3; gi++) {
        int R = groups[gi];
        if (R > m->cfg.moe.n_experts) continue;
        par_group *g = par_group_create(R);
        ck_assert_ptr_nonnull(g);
        rank_job jobs[MAX_RANKS];
        pthread_t th[MAX_RANKS];
        for (int k = 0; k < R; k++) {
            jobs[k] = (rank_job){.m = m, .r = {.group = g, .rank = k, .n_ranks = R}, .logits = malloc(n * sizeof(float))};
            ck_assert_ptr_nonnull(jobs[k].logits);
            ck_assert_int_eq(pthread_create(&th[k], NULL, rank_main, &jobs[k]), 0);
        }
        for (int k = 0; k < R; k++) pthread_join(th[k], NULL);
        for (int k = 0; k < R; k++) {
            ck_assert_msg(jobs[k].rc == 0, "%s: %d ranks, rank %d failed", name, R, k);
            ck_assert_msg(!memcmp(jobs[k].logits, one, n * sizeof(float)),
                          "%s: %d ranks: rank %d's logits differ from one rank's", name, R, k);
            free(jobs[k].logits);
        }
        par_group_destroy(g);
    }
    free(one);
    model_destroy(m);
}

START_TEST(qwen3_moe_f32) { check_model("qwen3_moe"); }
END_TEST
START_TEST(qwen3_moe_bf16) { check_model("qwen3_moe_bf16"); }
END_TEST
START_TEST(deepseek_v4_f32) { check_model("deepseek_v4"); }
END_TEST
START_TEST(deepseek_v4_fp8_fp4) { check_model("deepseek_v4_fp8"); }
END_TEST

typedef struct {
    par_rank r;
    float buf[7];
} reduce_job;

static void *reduce_main(void *arg) {
    reduce_job *j = arg;
    par_all_reduce_sum(&j->r, NULL, j->buf, 7);
    return NULL;
}

/* The all-reduce: every rank ends with the rank-ordered sum; the expert ranges tile [0, E). */
START_TEST(all_reduce_and_ranges) {
    enum { R = 3 };
    par_group *g = par_group_create(R);
    reduce_job j[R];
    pthread_t th[R];
    for (int k = 0; k < R; k++) {
        j[k].r = (par_rank){.group = g, .rank = k, .n_ranks = R};
        for (int i = 0; i < 7; i++) j[k].buf[i] = (float)((k + 1) * 10 + i) * 0.1f;
        pthread_create(&th[k], NULL, reduce_main, &j[k]);
    }
    for (int k = 0; k < R; k++) pthread_join(th[k], NULL);
    for (int i = 0; i < 7; i++) {
        float want = (float)(10 + i) * 0.1f;
        want += (float)(20 + i) * 0.1f;
        want += (float)(30 + i) * 0.1f;
        for (int k = 0; k < R; k++) ck_assert_msg(j[k].buf[i] == want, "rank %d element %d", k, i);
    }
    par_group_destroy(g);
    for (int E = 1; E <= 40; E++)
        for (int n = 1; n <= 8 && n <= E; n++) {
            int next = 0;
            for (int k = 0; k < n; k++) {
                par_rank r = {.rank = k, .n_ranks = n};
                int lo, hi;
                par_range(&r, E, &lo, &hi);
                ck_assert_int_eq(lo, next);
                ck_assert(hi - lo == E / n || hi - lo == E / n + 1);
                next = hi;
            }
            ck_assert_int_eq(next, E);
        }
}
END_TEST

/* A model without experts, and more ranks than experts, are refused with a message. */
START_TEST(refusals) {
    char dir[512], err[256];
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/qwen3", src ? src : ".");
    model *m = NULL;
    ck_assert_int_eq(model_load(dir, &m, err, sizeof(err)), MODEL_OK);
    backend *be = backend_cpu_create();
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 1, &fc, err, sizeof(err)), 0);
    par_rank r = {.rank = 0, .n_ranks = 2};
    ck_assert_int_eq(forward_ctx_set_expert_rank(fc, &r, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "no experts"));
    forward_ctx_destroy(fc);
    model_destroy(m);
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/qwen3_moe", src ? src : ".");
    ck_assert_int_eq(model_load(dir, &m, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 1, &fc, err, sizeof(err)), 0);
    r.n_ranks = m->cfg.moe.n_experts + 1;
    ck_assert_int_eq(forward_ctx_set_expert_rank(fc, &r, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "ranks for"));
    forward_ctx_destroy(fc);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

int main(void) {
    Suite *s = suite_create("expert_parallel");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, all_reduce_and_ranges);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, qwen3_moe_f32);
    tcase_add_test(tc, qwen3_moe_bf16);
    tcase_add_test(tc, deepseek_v4_f32);
    tcase_add_test(tc, deepseek_v4_fp8_fp4);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
