/* Tensor parallelism over ranks in threads (engine/tensor_parallel.h, the
 * CPU fake of the collectives): for the dense fixture models (Llama, Qwen2
 * with biases and tied embeddings, Qwen3 with one KV head, Mistral, Qwen3
 * with Engram) and Qwen3-MoE (f32, bf16), three sequences (a prefill step of
 * 37, 5 and 12 tokens, then 6 greedy decode steps) run on one whole model
 * and on groups of 2 and 4 ranks, each rank its own thread, model slice
 * (model_tp_slice), CPU backend, context and KV cache of its KV heads. With
 * the all-gather variant every rank's logits must equal the single rank's
 * bit for bit (greedy tokens follow), on every CPU matrix-product path; the
 * MoE models also with expert parallelism on the same group and on a second
 * axis (2 x 2 ranks). The all-reduce variant, fed the single rank's tokens,
 * stays within a stated tolerance. DeepSeek-V4 and V4.1 (f32, FP8/FP4, with
 * Engram, ratio 1/2 layers and candidates) split by output group at 2 and 4
 * ranks (4 heads in 2 groups), deepseek_v4_groups8 (8 heads, 8 groups) at 2,
 * 4 and 8, the same
 * bit-exact check, with expert parallelism too; the CPU tail rope's head-count
 * invariance that it relies on. Also the refusals. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/model/model.h"
#include "engine/parallel.h"

#define N_SEQ 3
#define N_GEN 6
#define MAX_THREADS 8

static const int lens[N_SEQ] = {37, 5, 12};

typedef struct {
    const model *m;      /* the whole model, or this rank's slice */
    const par_rank *tp;  /* NULL: no tensor parallelism */
    const par_rank *ep;  /* NULL: no expert parallelism */
    int isa;
    const int32_t *forced; /* (N_SEQ, N_GEN) tokens to feed instead of the greedy ones, or NULL */
    float *logits;       /* (N_SEQ, N_GEN + 1, V) */
    int32_t tok[N_SEQ][N_GEN];
    int rc;
} job;

static void *run(void *arg) {
    job *j = arg;
    char err[256];
    backend_params bp = backend_default_params();
    bp.cpu_isa = j->isa;
    bp.cpu_threads = 1; /* up to eight ranks share two cores; no result depends on the thread count */
    backend *be = backend_cpu_create_with(&bp, err, sizeof(err));
    forward_ctx *fc = NULL;
    kv_cache *kv = NULL;
    forward_state *st[N_SEQ] = {0};
    model *m = (model *)j->m;
    int V = m->cfg.vocab_size, rc = be ? forward_ctx_create(m, be, 64, N_SEQ, &fc, err, sizeof(err)) : -1;
    if (!rc && j->tp) rc = forward_ctx_set_tensor_rank(fc, j->tp, err, sizeof(err));
    if (!rc && j->ep) rc = forward_ctx_set_expert_rank(fc, j->ep, err, sizeof(err));
    if (!rc) rc = forward_kv_cache_create(fc, N_SEQ * 128, 16, &kv);
    for (int i = 0; i < N_SEQ && !rc; i++) rc = forward_state_create(fc, kv, 128, &st[i]);
    int32_t prompt[N_SEQ][37];
    for (int i = 0; i < N_SEQ; i++)
        for (int k = 0; k < lens[i]; k++) prompt[i][k] = (int32_t)((13 * k + 5 * i + 1) % V);
    forward_item it[N_SEQ];
    for (int g = 0; g <= N_GEN && !rc; g++) {
        for (int i = 0; i < N_SEQ; i++) {
            float *l = j->logits + ((size_t)i * (N_GEN + 1) + g) * V;
            if (g == 0) {
                it[i] = (forward_item){.st = st[i], .ids = prompt[i], .n = lens[i], .logits = l};
                continue;
            }
            const float *prev = l - V;
            int best = 0;
            for (int v = 1; v < V; v++) best = prev[v] > prev[best] ? v : best;
            j->tok[i][g - 1] = best;
            int32_t *fed = &j->tok[i][g - 1];
            if (j->forced) fed = (int32_t *)&j->forced[i * N_GEN + g - 1];
            it[i] = (forward_item){.st = st[i], .ids = fed, .n = 1, .logits = l};
        }
        rc = forward_batch(fc, it, N_SEQ);
    }
    if (rc) fprintf(stderr, "run (tp rank %d): %d %s\n", j->tp ? j->tp->rank : -1, rc, err);
    for (int i = 0; i < N_SEQ; i++) forward_state_destroy(st[i]);
    kv_cache_destroy(kv);
    forward_ctx_destroy(fc);
    backend_destroy(be);
    j->rc = rc;
    return NULL;
}

static model *load(const char *name) {
    char dir[512], err[512];
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/%s", src ? src : ".", name);
    model *m = NULL;
    ck_assert_msg(model_load(dir, &m, err, sizeof(err)) == MODEL_OK, "%s: %s", dir, err);
    return m;
}

static size_t n_logits(const model *m) { return (size_t)N_SEQ * (N_GEN + 1) * m->cfg.vocab_size; }

/* Runs m on TP x EP ranks (ep_shared: the experts split over the TP group
 * itself, EP = TP) in threads; thread i is TP rank i % TP of TP group i / TP
 * and EP rank i / TP of EP group i % TP. Fills jobs[0 .. TP EP). */
static void run_ranks(model *m, int TP, int EP, bool ep_shared, model_tp_mode mode, int isa, const int32_t *forced,
                      job *jobs, size_t n) {
    char err[256];
    int N = ep_shared ? TP : TP * EP;
    ck_assert_int_le(N, MAX_THREADS);
    par_group *tg[MAX_THREADS] = {0}, *eg[MAX_THREADS] = {0};
    par_rank tr[MAX_THREADS], er[MAX_THREADS];
    model *slice[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    for (int e = 0; e < N / TP; e++) ck_assert_ptr_nonnull(tg[e] = par_group_create(TP));
    for (int t = 0; t < TP && EP > 1 && !ep_shared; t++) ck_assert_ptr_nonnull(eg[t] = par_group_create(EP));
    for (int i = 0; i < N; i++) {
        int t = i % TP, e = i / TP;
        tr[i] = (par_rank){.group = tg[e], .rank = t, .n_ranks = TP};
        er[i] = ep_shared ? tr[i] : (par_rank){.group = eg[t], .rank = e, .n_ranks = EP};
        ck_assert_msg(model_tp_slice(m, t, TP, mode, &slice[i], err, sizeof(err)) == MODEL_OK, "%s", err);
        jobs[i] = (job){.m = slice[i], .tp = &tr[i], .ep = EP > 1 ? &er[i] : NULL, .isa = isa, .forced = forced,
                        .logits = malloc(n * sizeof(float))};
        ck_assert_ptr_nonnull(jobs[i].logits);
    }
    for (int i = 0; i < N; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, run, &jobs[i]), 0);
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < N; i++) model_destroy(slice[i]);
    for (int i = 0; i < MAX_THREADS; i++) par_group_destroy(tg[i]), par_group_destroy(eg[i]);
}

/* Every rank of TP x EP (all-gather variant) gives the whole model's logits
 * and greedy tokens, bit for bit. */
static void check_exact(const char *name, int TP, int EP, bool ep_shared, int isa) {
    model *m = load(name);
    size_t n = n_logits(m);
    job one = {.m = m, .isa = isa, .logits = malloc(n * sizeof(float))}, jobs[MAX_THREADS];
    ck_assert_ptr_nonnull(one.logits);
    run(&one);
    ck_assert_int_eq(one.rc, 0);
    run_ranks(m, TP, EP, ep_shared, MODEL_TP_GATHER, isa, NULL, jobs, n);
    int N = ep_shared ? TP : TP * EP;
    for (int i = 0; i < N; i++) {
        ck_assert_msg(jobs[i].rc == 0, "%s: tp %d x ep %d: thread %d failed", name, TP, EP, i);
        ck_assert_msg(!memcmp(jobs[i].logits, one.logits, n * sizeof(float)),
                      "%s: tp %d x ep %d (isa %s): thread %d's logits differ from one rank's", name, TP, EP,
                      backend_cpu_isa_str(isa), i);
        ck_assert_msg(!memcmp(jobs[i].tok, one.tok, sizeof(one.tok)), "%s: thread %d's greedy tokens differ", name, i);
        free(jobs[i].logits);
    }
    free(one.logits);
    model_destroy(m);
}

START_TEST(llama3) {
    check_exact("llama3", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("llama3", 4, 1, false, BACKEND_CPU_ISA_AUTO); /* 2 KV heads: each on 2 ranks */
}
END_TEST
START_TEST(qwen2_bias_tied) {
    check_exact("qwen2", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("qwen2", 4, 1, false, BACKEND_CPU_ISA_AUTO);
}
END_TEST
START_TEST(qwen3_one_kv_head) {
    check_exact("qwen3", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("qwen3", 4, 1, false, BACKEND_CPU_ISA_AUTO);
}
END_TEST
START_TEST(mistral) {
    check_exact("mistral", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("mistral", 4, 1, false, BACKEND_CPU_ISA_AUTO);
}
END_TEST
START_TEST(qwen3_engram) {
    check_exact("qwen3_engram", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("qwen3_engram", 4, 1, false, BACKEND_CPU_ISA_AUTO);
}
END_TEST
/* The matrix-product paths the fixtures' f32 and bf16 weights take (the
 * AVX-512 one is AUTO's where the CPU has it). */
START_TEST(isa_paths) {
    const int isas[] = {BACKEND_CPU_ISA_GENERIC, BACKEND_CPU_ISA_AVX2};
    for (int i = 0; i < 2; i++) {
        check_exact("llama3", 4, 1, false, isas[i]);
        check_exact("qwen3_moe_bf16", 4, 1, false, isas[i]);
    }
}
END_TEST
START_TEST(qwen3_moe) {
    check_exact("qwen3_moe", 2, 1, false, BACKEND_CPU_ISA_AUTO); /* experts on every rank */
    check_exact("qwen3_moe", 4, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("qwen3_moe", 2, 2, true, BACKEND_CPU_ISA_AUTO);  /* experts split over the TP group */
    check_exact("qwen3_moe", 2, 2, false, BACKEND_CPU_ISA_AUTO); /* 2 x 2: a TP axis and an EP axis */
}
END_TEST
START_TEST(qwen3_moe_bf16) {
    check_exact("qwen3_moe_bf16", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("qwen3_moe_bf16", 4, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("qwen3_moe_bf16", 4, 4, true, BACKEND_CPU_ISA_AUTO);
    check_exact("qwen3_moe_bf16", 2, 4, false, BACKEND_CPU_ISA_AUTO); /* 8 threads */
}
END_TEST

/* The all-reduce variant sums each o_proj and down element in R pieces, in
 * rank order: not the single rank's bits. Fed the single rank's tokens, each
 * logit stays within REDUCE_TOL of the largest logit of its row, and every
 * row's argmax is the same. (f32 partial sums of at most 160 terms reordered,
 * through 2-3 layers: under 1e-6 of the row's scale measured.) */
#define REDUCE_TOL 1e-5
static void check_reduce(const char *name, int TP) {
    model *m = load(name);
    size_t n = n_logits(m);
    int V = m->cfg.vocab_size;
    job one = {.m = m, .isa = BACKEND_CPU_ISA_AUTO, .logits = malloc(n * sizeof(float))}, jobs[MAX_THREADS];
    run(&one);
    ck_assert_int_eq(one.rc, 0);
    run_ranks(m, TP, 1, false, MODEL_TP_REDUCE, BACKEND_CPU_ISA_AUTO, &one.tok[0][0], jobs, n);
    double worst = 0;
    for (int i = 0; i < TP; i++) {
        ck_assert_int_eq(jobs[i].rc, 0);
        ck_assert_msg(!memcmp(jobs[i].logits, jobs[0].logits, n * sizeof(float)), "%s: ranks disagree", name);
        for (size_t r = 0; r < n / V; r++) {
            const float *a = one.logits + r * V, *b = jobs[i].logits + r * V;
            double scale = 0, err = 0;
            int am = 0, bm = 0;
            for (int v = 0; v < V; v++) {
                ck_assert_msg(isfinite(b[v]), "%s: logit not finite", name);
                scale = fmax(scale, fabs(a[v]));
                err = fmax(err, fabs((double)a[v] - b[v]));
                am = a[v] > a[am] ? v : am, bm = b[v] > b[bm] ? v : bm;
            }
            ck_assert_msg(err <= REDUCE_TOL * scale, "%s: tp %d all-reduce: row %zu off by %g of %g", name, TP, r, err,
                          scale);
            ck_assert_msg(am == bm, "%s: tp %d all-reduce: row %zu's argmax %d, one rank's %d", name, TP, r, bm, am);
            worst = fmax(worst, err / scale);
        }
    }
    for (int i = 0; i < TP; i++) free(jobs[i].logits);
    fprintf(stderr, "all-reduce variant, %s, %d ranks: worst logit error %.3g of its row's largest\n", name, TP, worst);
    free(one.logits);
    model_destroy(m);
}

START_TEST(all_reduce_variant) {
    const char *names[] = {"llama3", "qwen2", "qwen3_moe_bf16"};
    for (int i = 0; i < 3; i++) {
        check_reduce(names[i], 2);
        check_reduce(names[i], 4);
    }
}
END_TEST

typedef struct {
    par_rank r;
    backend *be; /* shared: the CPU's copy2d keeps no state */
    float src[2][3], dst[2][3 * 4], sum[7];
} coll_job;

static void *coll_main(void *arg) {
    coll_job *j = arg;
    par_all_gather(&j->r, j->be, &j->dst[0][0], &j->src[0][0], 2, 3);
    par_all_reduce_sum(&j->r, NULL, j->sum, 7);
    return NULL;
}

/* The collectives alone: the all-gather puts rank q's (2, 3) rows in columns
 * [3q, 3q + 3) of every rank's (2, 12); the all-reduce gives every rank the
 * rank-ordered sum. */
START_TEST(collectives) {
    enum { R = 4 };
    par_group *g = par_group_create(R);
    backend *be = backend_cpu_create();
    coll_job j[R];
    pthread_t th[R];
    for (int k = 0; k < R; k++) {
        j[k].r = (par_rank){.group = g, .rank = k, .n_ranks = R};
        j[k].be = be;
        for (int t = 0; t < 2; t++)
            for (int c = 0; c < 3; c++) j[k].src[t][c] = (float)(100 * k + 10 * t + c);
        for (int i = 0; i < 7; i++) j[k].sum[i] = (float)((k + 1) * 10 + i) * 0.1f;
        pthread_create(&th[k], NULL, coll_main, &j[k]);
    }
    for (int k = 0; k < R; k++) pthread_join(th[k], NULL);
    for (int k = 0; k < R; k++) {
        for (int t = 0; t < 2; t++)
            for (int c = 0; c < 12; c++) ck_assert(j[k].dst[t][c] == (float)(100 * (c / 3) + 10 * t + c % 3));
        for (int i = 0; i < 7; i++) {
            float want = (float)(10 + i) * 0.1f;
            for (int q = 1; q < R; q++) want += (float)((q + 1) * 10 + i) * 0.1f;
            ck_assert_msg(j[k].sum[i] == want, "rank %d element %d", k, i);
        }
    }
    par_group_destroy(g);
    backend_destroy(be);
}
END_TEST

/* What a DeepSeek-V4 rank relies on beside the products: the CPU's tail rope
 * rotates each head the same whatever the number of heads in the call (64
 * query heads alone, 8 on a rank of 8, 1 for a compressed entry). GCC 12 once
 * vectorized the rotation over the heads as fused complex multiplies, which
 * changed a head's bits with the count. Every head of every call is checked
 * against the rotation computed one pair at a time, each product rounded on
 * its own (torch's elementwise order). */
START_TEST(rope_tail_head_count) {
    enum { T = 5, D = 64, r = 32, MAXH = 24 };
    backend *be = backend_cpu_create();
    float *x = backend_alloc(be, (size_t)T * MAXH * D * sizeof(float)), f[r / 2];
    int32_t pos[T] = {0, 1, 7, 130, 4095};
    for (int j = 0; j < r / 2; j++) f[j] = 1.0f / powf(160000.0f, (float)(2 * j) / r);
    const int counts[] = {1, 2, 3, 7, 8, 16, 24};
    for (int inv = 0; inv < 2; inv++)
        for (int ci = 0; ci < 7; ci++) {
            int nh = counts[ci];
            for (int i = 0; i < T * nh * D; i++) x[i] = sinf(0.37f * (float)(i % (nh * D)) + (float)(i / (nh * D)));
            backend_rope_tail(be, x, pos, T, nh, D, r, f, inv);
            for (int t = 0; t < T; t++)
                for (int h = 0; h < nh; h++)
                    for (int j = 0; j < r / 2; j++) {
                        int c0 = D - r + 2 * j, i0 = (t * nh + h) * D + c0;
                        float x0 = sinf(0.37f * (float)(h * D + c0) + (float)t);
                        float x1 = sinf(0.37f * (float)(h * D + c0 + 1) + (float)t);
                        float a = (float)pos[t] * f[j], c = cosf(a), s = inv ? -sinf(a) : sinf(a);
                        volatile float p0 = x0 * c, p1 = x1 * s, p2 = x1 * c, p3 = x0 * s; /* rounded apart */
                        ck_assert_msg(x[i0] == p0 - p1 && x[i0 + 1] == p2 + p3,
                                      "%d heads (inverse %d): token %d head %d pair %d rotated otherwise", nh, inv, t, h, j);
                    }
        }
    backend_free(be, x);
    backend_destroy(be);
}
END_TEST

/* A slice is row views into the whole model's matrices (no copy), 1/R of
 * each sliced one, and its config counts the rank's heads. */
START_TEST(slice_views) {
    char err[256];
    model *m = load("llama3"), *s = NULL;
    const layer_weights *W = &m->layers[1];
    for (int k = 0; k < 4; k++) {
        ck_assert_int_eq(model_tp_slice(m, k, 4, MODEL_TP_GATHER, &s, err, sizeof(err)), MODEL_OK);
        const layer_weights *L = &s->layers[1];
        size_t es = W->wq.dt == DTYPE_BF16 ? 2 : 4;
        ck_assert_int_eq(s->cfg.n_heads, 1);
        ck_assert_int_eq(s->cfg.n_kv_heads, 1);
        ck_assert_int_eq(L->wq.rows * 4, W->wq.rows);
        ck_assert_ptr_eq(L->wq.data, (const char *)W->wq.data + (size_t)k * L->wq.rows * W->wq.cols * es);
        /* 2 KV heads on 4 ranks: ranks 0, 1 hold head 0, ranks 2, 3 head 1 */
        ck_assert_ptr_eq(L->wk.data, (const char *)W->wk.data + (size_t)(k / 2) * L->wk.rows * W->wk.cols * es);
        ck_assert_int_eq(L->wo.rows * 4, W->wo.rows);
        ck_assert_int_eq(L->w_gate.rows * 4, W->w_gate.rows);
        ck_assert_int_eq(L->w_down.rows * 4, W->w_down.rows);
        ck_assert_int_eq(L->w_down.cols, W->w_down.cols);
        model_destroy(s);
    }
    model_destroy(m);
}
END_TEST

/* Splits that do not divide, other architectures, a quantized matrix cut by
 * columns, and a context given another rank than its slice's are refused
 * with a message. */
START_TEST(refusals) {
    char err[256];
    model *m = load("llama3"), *s = NULL;
    ck_assert_int_eq(model_tp_slice(m, 0, 3, MODEL_TP_GATHER, &s, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, "3 ranks do not divide the model's 4 attention heads"), "%s", err);
    ck_assert_int_eq(model_tp_slice(m, 0, 8, MODEL_TP_GATHER, &s, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "8 ranks do not divide the model's 4 attention heads"), "%s", err);
    model_config c = m->cfg;
    c.n_heads = 12, c.n_kv_heads = 4;
    ck_assert_int_eq(model_tp_check(&c, 6, MODEL_TP_GATHER, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "6 ranks neither divide the model's 4 KV heads"), "%s", err);
    c = m->cfg;
    c.intermediate_size = 162;
    ck_assert_int_eq(model_tp_check(&c, 4, MODEL_TP_GATHER, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "intermediate_size 162"), "%s", err);
    c = m->cfg;
    c.hidden_size = 66;
    ck_assert_int_eq(model_tp_check(&c, 4, MODEL_TP_GATHER, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "hidden_size 66"), "%s", err);
    ck_assert_int_eq(model_tp_check(&c, 4, MODEL_TP_REDUCE, err, sizeof(err)), MODEL_OK); /* no output-row cut */
    weight wo = m->layers[1].wo; /* as if o_proj were FP8 */
    m->layers[1].wo.fmt = WEIGHT_FP8;
    ck_assert_int_eq(model_tp_slice(m, 1, 2, MODEL_TP_REDUCE, &s, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "layer 1's o_proj by columns"), "%s", err);
    m->layers[1].wo = wo;
    /* a context on rank 1's slice given rank 0 */
    ck_assert_int_eq(model_tp_slice(m, 1, 2, MODEL_TP_GATHER, &s, err, sizeof(err)), MODEL_OK);
    backend *be = backend_cpu_create();
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(s, be, 8, 1, &fc, err, sizeof(err)), 0);
    par_rank r = {.rank = 0, .n_ranks = 2};
    ck_assert_int_eq(forward_ctx_set_tensor_rank(fc, &r, err, sizeof(err)), -1);
    ck_assert_msg(strstr(err, "rank 1 of 2's slice"), "%s", err);
    /* and without its group it runs no step */
    forward_state *st = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 8, &st), FORWARD_OK);
    int32_t id = 1;
    forward_item it = {.st = st, .ids = &id, .n = 1};
    ck_assert_int_eq(forward_batch(fc, &it, 1), FORWARD_ERR_BATCH);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    backend_destroy(be);
    model_destroy(s);
    model_destroy(m);
}
END_TEST

/* DeepSeek-V4's split (4 heads in 2 output groups on the fixtures): a rank's
 * wq_b rows and sinks are its heads', its wo_a rows its groups' (R = 2) or
 * half of one group's (R = 4), its wo_b rows 1/R of the output; the rest is
 * the whole model's. Counts that do not divide, and the all-reduce variant,
 * are refused with a message. */
START_TEST(dsv4_slices_and_refusals) {
    char err[256];
    model *m = load("deepseek_v4_fp8"), *s = NULL;
    const dsv4_layer *W = &m->dsv4->layers[1];
    for (int R = 2; R <= 4; R += 2)
        for (int k = 0; k < R; k++) {
            ck_assert_int_eq(model_tp_slice(m, k, R, MODEL_TP_GATHER, &s, err, sizeof(err)), MODEL_OK);
            const dsv4_layer *Y = &s->dsv4->layers[1];
            int nh = 4 / R, D = m->cfg.head_dim, rows = W->wo_a.rows / R, d = m->cfg.hidden_size / R;
            ck_assert_int_eq(s->cfg.n_heads, nh);
            ck_assert_int_eq(s->cfg.dsv4.o_groups, m->cfg.dsv4.o_groups); /* the whole projection's */
            ck_assert_int_eq(Y->wq_b.rows, nh * D);
            ck_assert_int_eq(Y->wq_b.row_base, k * nh * D); /* FP8: its scale rows follow it */
            ck_assert_ptr_eq(Y->wq_b.data, (const char *)W->wq_b.data + (size_t)k * nh * D * W->wq_b.cols);
            ck_assert_ptr_eq(Y->sinks, W->sinks + k * nh);
            ck_assert_int_eq(Y->wo_a.rows, rows);
            ck_assert_ptr_eq(Y->wo_a.data, (const char *)W->wo_a.data + (size_t)k * rows * W->wo_a.cols);
            ck_assert_int_eq(Y->wo_b.rows, d);
            ck_assert_int_eq(Y->wo_b.cols, W->wo_b.cols);
            ck_assert_ptr_eq(Y->wo_b.data, (const char *)W->wo_b.data + (size_t)k * d * W->wo_b.cols);
            ck_assert_ptr_eq(Y->wq_a.data, W->wq_a.data);
            ck_assert_ptr_eq(Y->wkv.data, W->wkv.data);
            ck_assert_ptr_eq(Y->comp.wkv.data, W->comp.wkv.data);
            ck_assert_ptr_eq(Y->iwq_b.data, W->iwq_b.data);
            ck_assert_ptr_eq(s->layers[1].moe, m->layers[1].moe);
            model_destroy(s);
        }
    ck_assert_int_eq(model_tp_slice(m, 0, 3, MODEL_TP_GATHER, &s, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(err, "3 ranks do not divide the model's 4 attention heads"), "%s", err);
    ck_assert_int_eq(model_tp_slice(m, 0, 8, MODEL_TP_GATHER, &s, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "8 ranks do not divide the model's 4 attention heads"), "%s", err);
    ck_assert_int_eq(model_tp_slice(m, 0, 2, MODEL_TP_REDUCE, &s, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "all-gather variant only"), "%s", err);
    model_config c = m->cfg;
    c.n_heads = 12, c.dsv4.o_groups = 3; /* 2 ranks: neither divide 3 groups nor a multiple of them */
    ck_assert_int_eq(model_tp_check(&c, 2, MODEL_TP_GATHER, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "2 ranks neither divide DeepSeek-V4's 3 output groups"), "%s", err);
    c.n_heads = 64, c.dsv4.o_groups = 8, c.dsv4.o_lora_rank = 1024; /* the release: 8 ranks, a group each */
    ck_assert_int_eq(model_tp_check(&c, 8, MODEL_TP_GATHER, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(model_tp_check(&c, 16, MODEL_TP_GATHER, err, sizeof(err)), MODEL_OK); /* half a group */
    c.dsv4.o_lora_rank = 3; /* 16 ranks: a group's 3 rows in halves */
    ck_assert_int_eq(model_tp_check(&c, 16, MODEL_TP_GATHER, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "3 wo_a rows (o_lora_rank)"), "%s", err);
    c = m->cfg;
    c.hidden_size = 66;
    ck_assert_int_eq(model_tp_check(&c, 4, MODEL_TP_GATHER, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "hidden_size 66"), "%s", err);
    model_destroy(m);
}
END_TEST

/* DeepSeek-V4 and V4.1 split by output group (R = 2: a group a rank; R = 4:
 * half a group a rank, the heads' outputs gathered first): every rank's
 * logits equal one rank's bit for bit through a prefill of 37, 5 and 12
 * tokens and 6 decode steps that cross the window of 8 and the compressors'
 * window ends (4 and 8: positions 8, 16, 40); with expert parallelism on the
 * same group and as a second axis. */
START_TEST(deepseek_v4) {
    check_exact("deepseek_v4", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4", 4, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4", 2, 2, true, BACKEND_CPU_ISA_AUTO);  /* experts split over the TP group */
    check_exact("deepseek_v4", 2, 2, false, BACKEND_CPU_ISA_AUTO); /* 2 x 2: a TP axis and an EP axis */
}
END_TEST
/* 8 heads in 8 output groups, one a group as deepseek-v4-flash's 8 groups on
 * 8 ranks: every split takes whole groups, only wo_a's outputs gathered. */
START_TEST(deepseek_v4_groups8) {
    check_exact("deepseek_v4_groups8", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4_groups8", 4, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4_groups8", 8, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4_groups8", 8, 8, true, BACKEND_CPU_ISA_AUTO); /* the experts over the same 8 ranks */
    check_exact("deepseek_v4_groups8", 4, 2, false, BACKEND_CPU_ISA_AUTO); /* 4 x 2 */
}
END_TEST
START_TEST(deepseek_v4_fp8) { /* FP8 wq_b, wo_a, wo_b row views reading their scales; FP4 experts */
    check_exact("deepseek_v4_fp8", 2, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4_fp8", 4, 1, false, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4_fp8", 4, 4, true, BACKEND_CPU_ISA_AUTO);
    check_exact("deepseek_v4_fp8", 2, 4, false, BACKEND_CPU_ISA_AUTO); /* 8 threads */
}
END_TEST
START_TEST(deepseek_v41) { /* Engram (replicated), lagged hyper-connections, ratio 1/2 layers, candidates */
    const char *names[] = {"deepseek_v41", "deepseek_v41_ratios", "deepseek_v41_candidates", "deepseek_v41_shared"};
    for (int i = 0; i < 4; i++) {
        check_exact(names[i], 2, 1, false, BACKEND_CPU_ISA_AUTO);
        check_exact(names[i], 4, 1, false, BACKEND_CPU_ISA_AUTO);
    }
    check_exact("deepseek_v41", 2, 2, true, BACKEND_CPU_ISA_AUTO);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tensor_parallel");
    TCase *tc = tcase_create("all");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, collectives);
    tcase_add_test(tc, slice_views);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, llama3);
    tcase_add_test(tc, qwen2_bias_tied);
    tcase_add_test(tc, qwen3_one_kv_head);
    tcase_add_test(tc, mistral);
    tcase_add_test(tc, qwen3_engram);
    tcase_add_test(tc, qwen3_moe);
    tcase_add_test(tc, qwen3_moe_bf16);
    tcase_add_test(tc, isa_paths);
    tcase_add_test(tc, all_reduce_variant);
    tcase_add_test(tc, rope_tail_head_count);
    tcase_add_test(tc, dsv4_slices_and_refusals);
    tcase_add_test(tc, deepseek_v4);
    tcase_add_test(tc, deepseek_v4_groups8);
    tcase_add_test(tc, deepseek_v4_fp8);
    tcase_add_test(tc, deepseek_v41);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
