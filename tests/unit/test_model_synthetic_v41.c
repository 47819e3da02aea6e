/* Unit tests for engine/model/model_synthetic's deepseek-v4.1-flash: the shape
 * DEEPSEEK_V4.md 5.8 and ENGRAM.md 7 state (the two tables' row counts derived
 * by the V4.1 prime search from engram_vocab_size, checked against the
 * release's engram_num_embeddings), its options (+layers, +experts,
 * +engram-rows), a cut model built and run on the CPU (decode equals prefill,
 * bit for bit), and its FP8 tables: exported to table files whose rows are the
 * tensors', written directly by --synthetic-table-dir with the same bits, and
 * served from files (DRAM and NVMe tiers) with logits bit-identical to the
 * tensors'. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/model/dtype.h"
#include "engine/model/model.h"
#include "engram/engram_fp8.h"

/* DeepSeek-V4.1-Flash as the documents state it (hidden, layers, q_lora_rank, experts, eps, the
 * Engram) and V4-Flash's values for the rest (DEEPSEEK_V4.md 1.1), written out here apart from
 * the engine's own config text. */
enum { H = 5120, LAYERS = 40, VOCAB = 129280, NH = 64, HD = 512, QR = 1280, OG = 8, OR = 1024, NE = 384, TOPK = 6,
       EI = 2048, HC = 4, IH = 64, ID = 128 };
static const long long RELEASE_ROWS[2] = {384006168LL, 384016682LL}; /* engram_num_embeddings, ENGRAM.md 7 */

/* Parameters of layer i (0-1 sliding, then CSA on even and HCA on odd layers; the first 3
 * hash-routed; no hc_head in V4.1), the Engram aside (model_config_param_count leaves it out). */
static long long layer_params(int i, int experts) {
    long long n = 2LL * H;                                                  /* attn_norm, ffn_norm */
    n += 2 * ((2LL + HC) * HC * HC * H + (2 + HC) * HC + 3);                /* hc_attn_*, hc_ffn_* */
    n += (long long)QR * H + QR + (long long)NH * HD * QR + (long long)HD * H + HD; /* wq_a q_norm wq_b wkv kv_norm */
    n += (long long)OG * OR * (NH * HD / OG) + (long long)H * OG * OR + NH; /* wo_a wo_b attn_sink */
    if (i >= 2 && i % 2 == 0) /* CSA: compressor [1024, H] x2, ape [4, 1024], norm; the indexer's */
        n += 2LL * 2 * HD * H + 4 * 2 * HD + HD + 2LL * 2 * ID * H + 4 * 2 * ID + ID + (long long)IH * ID * QR +
             (long long)IH * H;
    if (i >= 2 && i % 2 == 1) /* HCA: compressor [512, H] x2, ape [128, 512], norm */
        n += 2LL * HD * H + 128 * HD + HD;
    n += (long long)experts * H + (i >= 3 ? experts : 0);                  /* router, bias (learned layers) */
    return n + (long long)(experts + 1) * 3 * EI * H;                       /* routed, shared */
}
static long long params(int layers, int experts) {
    long long n = 2LL * VOCAB * H + H; /* embed, head, norm */
    for (int i = 0; i < layers; i++) n += layer_params(i, experts);
    return n;
}

static void config_ok(const char *spec, model_config *c) {
    char err[512];
    int rc = model_synthetic_config(spec, c, err, sizeof(err));
    ck_assert_msg(rc == MODEL_OK, "%s: %s", spec, err);
}

/* The rows engram_v41 derives from c's engram_* keys (the loader's check, without a tokenizer:
 * compressed vocab and pad as stated), which must equal engram_num_embeddings. */
static void rows_derive(const model_config *c) {
    ngram_hash *h = NULL;
    char err[512];
    int rc = engram_v41_hash_create(&c->engram_v41, NULL, "test", &h, err, sizeof(err));
    ck_assert_msg(rc == ENGRAM_V41_OK, "%s", err);
    for (int li = 0; li < c->engram_v41.n_layers; li++)
        ck_assert_int_eq(ngram_hash_table_rows(h, li), c->engram_v41.num_embeddings[li]);
    ngram_hash_destroy(h);
}

START_TEST(test_config) {
    model_config c;
    config_ok("deepseek-v4.1-flash", &c);
    const dsv4_config *v = &c.dsv4;
    const engram_v41_config *e = &c.engram_v41;
    ck_assert_int_eq(c.arch, ARCH_DEEPSEEK_V4);
    ck_assert(c.vocab_size == VOCAB && c.hidden_size == H && c.n_layers == LAYERS && c.n_heads == NH &&
              c.head_dim == HD && c.n_kv_heads == 1 && !c.tie_word_embeddings && c.sliding_window == 128);
    ck_assert(v->rope_dim == 64 && v->q_lora_rank == QR && v->o_groups == OG && v->o_lora_rank == OR);
    ck_assert(v->index_n_heads == IH && v->index_head_dim == ID && v->index_topk == 512);
    ck_assert(v->hc_mult == HC && v->hc_iters == 20 && v->hc_eps == 1e-6f && c.rms_norm_eps == 1e-20f);
    ck_assert(c.moe.n_experts == NE && c.moe.top_k == TOPK && c.moe.inter == EI);
    ck_assert(v->hc_pre_from_prev && !v->q_head_norm && v->cand_src == -1); /* V4.1's backbone keys (5.8) */
    ck_assert(v->comp_yarn && v->comp_theta == 160000 && c.quant_block_rows == 128);
    for (int i = 0; i < LAYERS; i++) {
        dsv4_attn_kind k = i < 2 ? DSV4_SLIDING : i % 2 ? DSV4_HCA : DSV4_CSA;
        ck_assert_msg(v->attn[i] == k && v->rate[i] == (i < 2 ? 0 : i % 2 ? 128 : 4), "layer %d", i);
        ck_assert(v->hash_moe[i] == (i < 3) && v->kv_src[i] == -1 && !v->idx_src[i]);
    }
    /* the Engram as the V4.1 config states it; Vc is the vocabulary (identity lookup) */
    ck_assert(e->n_layers == 2 && e->layer_ids[0] == 1 && e->layer_ids[1] == 14);
    ck_assert(e->num_embeddings[0] == RELEASE_ROWS[0] && e->num_embeddings[1] == RELEASE_ROWS[1]);
    ck_assert(e->max_ngram_size == 4 && e->n_heads == 8 && e->head_dim == 256 && e->pad_token_id == 2);
    ck_assert(e->vocab_size == 16000000 && e->compressed_vocab_size == VOCAB && e->hc_mult == HC);
    rows_derive(&c); /* the prime search from 16,000,000 gives the release's row counts */
    /* 264 bytes a row (256 e4m3 + 8 ue8m0): about 189 GiB for both tables (ENGRAM.md 7) */
    double gib = (double)(RELEASE_ROWS[0] + RELEASE_ROWS[1]) * 264 / (1 << 30);
    ck_assert_msg(fabs(gib - 189) < 0.5, "%.2f GiB", gib);
    ck_assert_int_eq(model_config_param_count(&c), params(LAYERS, NE));

    /* +layers:N keeps the Engram layers below N, with their rows */
    config_ok("deepseek-v4.1-flash+layers:2", &c);
    ck_assert(c.n_layers == 2 && e->n_layers == 1 && e->layer_ids[0] == 1 && e->num_embeddings[0] == RELEASE_ROWS[0]);
    rows_derive(&c);
    config_ok("deepseek-v4.1-flash+layers:14", &c);
    ck_assert(e->n_layers == 1);
    config_ok("deepseek-v4.1-flash+layers:15", &c);
    ck_assert(e->n_layers == 2 && e->num_embeddings[1] == RELEASE_ROWS[1]);
    config_ok("deepseek-v4.1-flash+layers:1", &c);
    ck_assert(e->n_layers == 0);
    /* +experts:N */
    config_ok("deepseek-v4.1-flash+layers:3+experts:8", &c);
    ck_assert(c.moe.n_experts == 8 && c.moe.top_k == TOPK);
    ck_assert_int_eq(model_config_param_count(&c), params(3, 8));
    /* +engram-rows:SCALE: the search starts at SCALE x 16,000,000, the rows follow */
    config_ok("deepseek-v4.1-flash+engram-rows:1e-4", &c);
    ck_assert(e->n_layers == 2 && e->vocab_size == 1600);
    rows_derive(&c);
    for (int li = 0; li < 2; li++)
        ck_assert_msg(e->num_embeddings[li] > 24 * 1600 && e->num_embeddings[li] < 24 * 2000, "layer %d: %lld rows", li,
                      (long long)e->num_embeddings[li]);
    ck_assert(e->num_embeddings[1] > e->num_embeddings[0]); /* layer 14 takes the primes after layer 1's */
    config_ok("deepseek-v4.1-flash+engram-rows:0.5+layers:2", &c);
    ck_assert(e->vocab_size == 8000000 && e->n_layers == 1);
    rows_derive(&c);
    ck_assert(llabs(e->num_embeddings[0] - RELEASE_ROWS[0] / 2) < 100000);
}
END_TEST

static void expect_bad(const char *spec, const char *needle) {
    model_config c;
    char err[512] = "";
    ck_assert_int_eq(model_synthetic_config(spec, &c, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, needle) != NULL, "spec \"%s\": message \"%s\" lacks \"%s\"", spec, err, needle);
}

START_TEST(test_bad_specs) {
    expect_bad("deepseek-v4.1-flash+layers:41", "from 1 to 40");
    expect_bad("deepseek-v4.1-flash+experts:5", "from 6 (experts per token) to 384");
    expect_bad("deepseek-v4.1-flash+experts:385", "from 6 (experts per token) to 384");
    expect_bad("deepseek-v4.1-flash+engram-rows:0", "from 1e-5 to 1");
    expect_bad("deepseek-v4.1-flash+engram-rows:2", "from 1e-5 to 1");
    expect_bad("deepseek-v4.1-flash+engram-rows:1%", "from 1e-5 to 1");
    expect_bad("deepseek-v4.1-flash+engram:10k", "scale their tables with +engram-rows:SCALE");
    expect_bad("deepseek-v4-flash+engram-rows:0.1", "for shapes with DeepSeek-V4.1's Engram");
    expect_bad("qwen3-4b+engram-rows:0.1", "for shapes with DeepSeek-V4.1's Engram");
    expect_bad("qwen3-4b+experts:8", "needs a mixture-of-experts shape");
    expect_bad("qwen3-30b-a3b+experts:7", "from 8 (experts per token) to 128");
}
END_TEST

#if !defined(__SANITIZE_ADDRESS__)
/* 3.4 GB (the vocabulary's embedding and head are 2.6 GB of it) filled unoptimized and shadowed
 * would take minutes in the sanitizer run; the loader's V4.1 Engram goldens run there. */
#define SPEC "deepseek-v4.1-flash+layers:2+experts:8+engram-rows:1e-4"
enum { SEED = 3, NT = 6 };
static const int32_t ids[NT] = {5, 129279, 2, 77, 5, 129279}; /* the pad id, the last id, a bigram twice */

/* Last-position logits (VOCAB) and each token's gate (NT) of ids run in chunks of `chunk`. */
static void run(model *m, int chunk, float *logits, float *gates) {
    backend *be = backend_cpu_create();
    char err[512];
    forward_ctx *fc = NULL;
    ck_assert_msg(forward_ctx_create(m, be, NT, 1, &fc, err, sizeof(err)) == FORWARD_OK, "%s", err);
    forward_state *st = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, NT, &st), FORWARD_OK);
    for (int i = 0; i < NT; i += chunk)
        ck_assert_int_eq(forward_run(fc, st, ids + i, chunk, logits, gates + i), FORWARD_OK);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    backend_destroy(be);
}

static void same_run(const float *la, const float *ga, const float *lb, const float *gb, const char *what) {
    ck_assert_msg(memcmp(la, lb, VOCAB * sizeof(float)) == 0, "%s: logits differ", what);
    ck_assert_msg(memcmp(ga, gb, NT * sizeof(float)) == 0, "%s: gates differ", what);
}

/* Every row of store s (raw, 264 bytes: values then scales) against the values and scales of
 * table t, gathered in reverse order. */
static void rows_equal(engram_store *s, const weight *t) {
    engram_store_header h = engram_store_get_info(s).header;
    ck_assert(h.dtype == ENGRAM_STORE_FP8_UE8M0 && h.rows == (uint64_t)t->rows && h.cols == 256 && h.row_bytes == 264);
    size_t n = (size_t)t->rows;
    int64_t *all = malloc(n * sizeof(int64_t));
    uint8_t *raw = malloc(n * 264);
    for (size_t i = 0; i < n; i++) all[i] = (int64_t)(n - 1 - i);
    ck_assert_int_eq(engram_store_gather_raw(s, all, n, raw, NULL), ENGRAM_STORE_OK);
    const uint8_t *v = t->data, *sc = t->scale;
    for (size_t i = 0; i < n; i++) {
        size_t r = n - 1 - i;
        ck_assert_msg(!memcmp(raw + i * 264, v + r * 256, 256) && !memcmp(raw + i * 264 + 256, sc + r * 8, 8),
                      "row %zu differs", r);
    }
    free(all), free(raw);
}

static char dir[] = "/tmp/test_model_synthetic_v41.XXXXXX";

START_TEST(test_runs_and_tables) {
    model *m = NULL;
    char err[1024], path[300];
    ck_assert_msg(model_synthetic(SPEC, SEED, &m, err, sizeof(err)) == MODEL_OK, "%s", err);
    /* the module as the loader shapes it, FP8 tensors in the release's layouts */
    const model_engram *e = m->engram;
    ck_assert(e && e->v41 && e->n_layers == 1 && e->hc_mult == HC && e->n_heads == 24 && e->head_dim == 256 &&
              e->embed_dim == 24 * 256 && e->vc == VOCAB && e->lookup[129279] == 129279 && e->eps == 1e-20f);
    const engram_weights *w = &e->layers[0];
    ck_assert(w->layer_id == 1 && m->layers[1].engram == w && !m->layers[0].engram);
    ck_assert(w->table.rows == m->cfg.engram_v41.num_embeddings[0] && w->table.cols == 256);
    ck_assert(w->table.dt == DTYPE_F8_E4M3 && w->table.fmt == WEIGHT_FP8 && w->table.scale_dt == DTYPE_F8_E8M0 &&
              w->table.block_rows == 1 && w->table.block_cols == 32 && w->table.data && w->table.scale && !w->store);
    ck_assert(w->w_kv.fmt == WEIGHT_FP8 && w->w_kv.rows == (HC + 1) * H && w->w_kv.cols == 24 * 256 &&
              w->w_kv.block_rows == 128 && w->w_kv.scale_dt == DTYPE_F8_E8M0 && w->qk[0] == 1.0f);
    ck_assert(!m->dsv4->hc_head_fn.data && m->layers[0].moe->n_experts == 8 &&
              m->layers[0].moe->gate[7].fmt == WEIGHT_FP4);
    /* rows: finite values, each block's scale one of 2^-14, 2^-13, 2^-12, all three used */
    int seen[256] = {0};
    const uint8_t *sc = w->table.scale;
    for (size_t i = 0; i < (size_t)w->table.rows * 8; i++) seen[sc[i]]++;
    ck_assert(seen[113] && seen[114] && seen[115] && seen[113] + seen[114] + seen[115] == w->table.rows * 8);
    engram_fp8_table ft = engram_fp8_table_split(w->table.data, w->table.scale, w->table.rows, 256);
    int64_t some[3] = {0, 1234, w->table.rows - 1};
    float dec[3 * 256];
    ck_assert_int_eq(engram_fp8_gather(&ft, some, 3, dec, NULL), ENGRAM_FP8_OK);
    for (int i = 0; i < 3 * 256; i++) ck_assert(isfinite(dec[i]) && fabsf(dec[i]) < 0.1f);

    /* prefill of all six tokens, and three then one at a time: the same bits */
    float *lp = malloc(VOCAB * sizeof(float)), *ld = malloc(VOCAB * sizeof(float)), gp[NT], gd[NT];
    run(m, NT, lp, gp);
    for (int i = 0; i < VOCAB; i++) ck_assert(isfinite(lp[i]));
    for (int t = 0; t < NT; t++) ck_assert_msg(gp[t] > 0 && gp[t] < 1, "gate %d: %g", t, gp[t]);
    ck_assert(gp[4] != gp[0]); /* the same token after another history: other rows, another gate */
    backend *be = backend_cpu_create();
    forward_ctx *fc = NULL;
    forward_state *st = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, NT, 1, &fc, err, sizeof(err)), FORWARD_OK);
    ck_assert_int_eq(forward_state_create(fc, NULL, NT, &st), FORWARD_OK);
    ck_assert_int_eq(forward_run(fc, st, ids, 3, ld, gd), FORWARD_OK);
    for (int t = 3; t < NT; t++) ck_assert_int_eq(forward_run(fc, st, ids + t, 1, ld, gd + t), FORWARD_OK);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    backend_destroy(be);
    same_run(lp, gp, ld, gd, "decode against prefill");

    /* engram-tables export: the file's rows are the tensor's, bit for bit */
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_eq(model_engram_export_tables(m, dir, false, err, sizeof(err)), MODEL_OK);
    snprintf(path, sizeof(path), "%s/engram_layer_1.tbl", dir);
    engram_store_params sp = engram_store_default_params();
    engram_store *fs = NULL;
    ck_assert_int_eq(engram_store_open(path, &sp, &fs, err, sizeof(err)), ENGRAM_STORE_OK);
    rows_equal(fs, &w->table);

    /* the model run from the file: the DRAM tier, then NVMe behind a row cache of 64 KiB */
    const weight tensor = w->table;
    ck_assert_int_eq(model_engram_use_tables(m, dir, &sp, err, sizeof(err)), MODEL_OK);
    ck_assert(w->store && engram_store_get_info(w->store).tier == ENGRAM_STORE_DRAM);
    run(m, NT, ld, gd);
    same_run(lp, gp, ld, gd, "table file in DRAM against the tensor");
    engram_store_params np = engram_store_default_params();
    np.tier = ENGRAM_STORE_NVME, np.dram_budget = 64 << 10, np.no_direct = true, np.quiet = true;
    ck_assert_int_eq(model_engram_use_tables(m, dir, &np, err, sizeof(err)), MODEL_OK);
    ck_assert(engram_store_get_info(w->store).tier == ENGRAM_STORE_NVME);
    run(m, 2, ld, gd);
    same_run(lp, gp, ld, gd, "table file over NVMe against the tensor");
    ck_assert(tensor.data == w->table.data); /* the tensor stays; the store serves */
    model_destroy(m);

    /* --synthetic-table-dir: the same rows written straight to a file, the same logits */
    char dir2[320];
    snprintf(dir2, sizeof(dir2), "%s/direct", dir);
    model_synthetic_params p = model_synthetic_default_params();
    p.table_dir = dir2, p.quiet = true;
    ck_assert_msg(model_synthetic_ex(SPEC, SEED, &p, &m, err, sizeof(err)) == MODEL_OK, "%s", err);
    w = &m->engram->layers[0];
    ck_assert(w->store && !w->table.data);
    size_t n = (size_t)w->table.rows;
    int64_t *all = malloc(n * sizeof(int64_t));
    uint8_t *a = malloc(n * 264), *b = malloc(n * 264);
    for (size_t i = 0; i < n; i++) all[i] = (int64_t)i;
    ck_assert_int_eq(engram_store_gather_raw(w->store, all, n, a, NULL), ENGRAM_STORE_OK);
    ck_assert_int_eq(engram_store_gather_raw(fs, all, n, b, NULL), ENGRAM_STORE_OK);
    ck_assert_msg(memcmp(a, b, n * 264) == 0, "the direct table file differs from the exported tensor");
    free(all), free(a), free(b);
    run(m, NT, ld, gd);
    same_run(lp, gp, ld, gd, "--synthetic-table-dir against the tensor");
    /* a model whose tables are files has no tensor to export */
    ck_assert_int_eq(model_engram_export_tables(m, dir, false, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "no tensor in memory"), "%s", err);
    model_destroy(m);
    engram_store_close(fs);
    free(lp), free(ld);

    snprintf(path, sizeof(path), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(path), 0);
}
END_TEST
#endif

static Suite *suite(void) {
    Suite *s = suite_create("model_synthetic_v41");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_bad_specs);
#if !defined(__SANITIZE_ADDRESS__)
    tcase_add_test(tc, test_runs_and_tables);
#endif
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
