/* Unit tests for engine/model/model_synthetic: each spec's shape against the
 * published parameter counts of the release it copies (DeepSeek-V4-Flash: also
 * its formats, value spreads, bytes per token and a layer run), the same bits from the
 * same seed (on any thread count) and others from another seed, the value
 * distribution, bad specs refused with a message naming the problem, and the
 * Engram table file (written, reused, replaced when stale, a foreign file
 * refused) read through a forward pass. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/backend/backend.h"
#include "engine/forward.h"
#include "engine/model/model.h"
#include "base/numeric.h"
#include "engine/model/dtype.h"
#include "base/util.h"

/* Published sizes. Qwen3 model cards (huggingface.co/Qwen/Qwen3-*): "Number of
 * Parameters" 0.6B, 1.7B, 4.0B, 8.2B and "(Non-Embedding)" 0.44B, 1.4B, 3.6B,
 * 6.95B. Llama model cards: Llama-3.2-1B 1.23B, Llama-3.1-8B 8.03B. `exact` is
 * the count the official config.json implies (embeddings once when tied,
 * every matrix and norm): a regression value, checked against the published
 * figures by the ratios below. */
static const struct {
    const char *spec;
    double total, non_embedding; /* published; 0: not published */
    double total_digits_unit;    /* the published total is rounded to this */
    long long exact;
} published[] = {
    {"qwen3-0.6b", 0.6e9, 0.44e9, 0.1e9, 596049920LL},
    {"qwen3-1.7b", 1.7e9, 1.4e9, 0.1e9, 1720574976LL},
    {"qwen3-4b", 4.0e9, 3.6e9, 0.1e9, 4022468096LL},
    {"qwen3-8b", 8.2e9, 6.95e9, 0.1e9, 8190735360LL},
    {"llama3-1b", 1.23e9, 0, 0.01e9, 1235814400LL},
    {"llama3-8b", 8.03e9, 0, 0.01e9, 8030261248LL},
    {"qwen3-30b-a3b", 30.5e9, 29.9e9, 0.1e9, 30532122624LL},
};

START_TEST(test_param_counts) {
    for (size_t i = 0; i < sizeof(published) / sizeof(published[0]); i++) {
        model_config c;
        char err[512];
        ck_assert_int_eq(model_synthetic_config(published[i].spec, &c, err, sizeof(err)), MODEL_OK);
        long long n = (long long)model_config_param_count(&c);
        ck_assert_msg(n == published[i].exact, "%s: %lld parameters, expected %lld", published[i].spec, n,
                      published[i].exact);
        /* the non-embedding count (Qwen3 cards) or the total (Llama cards) within 1% */
        double emb = (double)c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2); /* and lm_head */
        if (published[i].non_embedding)
            ck_assert_msg(fabs((n - emb) / published[i].non_embedding - 1) < 0.01, "%s non-embedding %.4g vs %.4g",
                          published[i].spec, n - emb, published[i].non_embedding);
        else
            ck_assert_msg(fabs(n / published[i].total - 1) < 0.01, "%s total %.4g vs %.4g", published[i].spec,
                          (double)n, published[i].total);
        /* the total: within 1%, or rounding to a figure published with two digits (1.7B) */
        double tol = fmax(0.01 * published[i].total, published[i].total_digits_unit / 2);
        ck_assert_msg(fabs(n - published[i].total) <= tol, "%s: total %.4g vs published %.4g", published[i].spec,
                      (double)n, published[i].total);
    }
}
END_TEST

START_TEST(test_config_fields) {
    model_config c;
    char err[512];
    ck_assert_int_eq(model_synthetic_config("qwen3-4b", &c, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(c.arch, ARCH_QWEN3);
    ck_assert(c.qk_norm && c.tie_word_embeddings && c.rope == ROPE_DEFAULT && !c.engram.present);
    ck_assert_int_eq(c.hidden_size, 2560);
    ck_assert_int_eq(c.n_heads * c.head_dim, 4096); /* wider than hidden in Qwen3-4B */
    ck_assert_int_eq(c.max_position_embeddings, 40960);
    ck_assert(c.rope_theta == 1e6);
    ck_assert_int_eq(model_synthetic_config("qwen3-8b", &c, err, sizeof(err)), MODEL_OK);
    ck_assert(!c.tie_word_embeddings);
    ck_assert_int_eq(model_synthetic_config("llama3-1b", &c, err, sizeof(err)), MODEL_OK);
    ck_assert(c.arch == ARCH_LLAMA && !c.qk_norm && c.tie_word_embeddings && c.rope == ROPE_LLAMA3);
    ck_assert(c.rope_factor == 32 && c.rope_low_freq_factor == 1 && c.rope_high_freq_factor == 4 &&
              c.rope_original_max_pos == 8192 && c.rope_theta == 500000);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert_int_eq(c.vocab_size, 128256);
    ck_assert_int_eq(model_synthetic_config("llama3-8b+layers:3", &c, err, sizeof(err)), MODEL_OK);
    ck_assert(c.rope_factor == 8 && c.n_layers == 3 && !c.tie_word_embeddings);
    ck_assert_int_eq(model_synthetic_config("qwen3-1.7b+engram:1.6M", &c, err, sizeof(err)), MODEL_OK);
    ck_assert(c.engram.present && c.engram.n_layers == 1 && c.engram.layer_ids[0] == 1);
    ck_assert(c.engram.max_ngram_size == 3 && c.engram.n_head_per_ngram == 8 && c.engram.n_embed_per_ngram == 512);
    ck_assert(c.engram.vocab_size[0] == c.engram.vocab_size[1]);
    ck_assert(c.engram.vocab_size[0] > 99000 && c.engram.vocab_size[0] <= 100000); /* 1.6M / 16, less the spread */
}
END_TEST

static void expect_bad(const char *spec, const char *needle) {
    model_config c;
    char err[512] = "";
    ck_assert_int_eq(model_synthetic_config(spec, &c, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, needle) != NULL, "spec \"%s\": message \"%s\" lacks \"%s\"", spec, err, needle);
    model *m = (model *)1;
    ck_assert_int_eq(model_synthetic(spec, 0, &m, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_ptr_null(m);
}

START_TEST(test_bad_specs) {
    expect_bad("", "empty");
    expect_bad("qwen3-9b", "unknown model (known: qwen3-0.6b");
    expect_bad("gpt2", "llama3-8b");
    expect_bad("qwen3-0.6b+engram", "an option must be +layers:N, +experts:N, +engram:ROWS");
    expect_bad("qwen3-0.6b+engram:12", "from 1000 to 2e9");
    expect_bad("qwen3-0.6b+engram:3e9", "from 1000 to 2e9");
    expect_bad("qwen3-0.6b+engram:1.5x", "from 1000 to 2e9");
    expect_bad("qwen3-0.6b+layers:0", "from 1 to 28");
    expect_bad("qwen3-0.6b+layers:29", "from 1 to 28");
    expect_bad("qwen3-0.6b+speed:9", "unknown option");
    expect_bad("qwen3-0.6b+layers:1+engram:10k", "at least 2 layers");
    expect_bad("gpt2", "qwen3-30b-a3b, deepseek-v4-flash, deepseek-v4.1-flash)");
}
END_TEST

static model *make(const char *spec, uint64_t seed) {
    model *m = NULL;
    char err[512];
    int rc = model_synthetic(spec, seed, &m, err, sizeof(err));
    ck_assert_msg(rc == MODEL_OK, "%s: %s", spec, err);
    return m;
}

START_TEST(test_seeds) {
    const char *spec = "qwen3-0.6b+layers:1";
    omp_set_num_threads(1); /* the bits must not depend on the thread count */
    model *a = make(spec, 7);
    omp_set_num_threads(2);
    model *b = make(spec, 7), *c = make(spec, 8);
    ck_assert_uint_eq(a->synth_bytes, b->synth_bytes);
    ck_assert_msg(memcmp(a->synth, b->synth, a->synth_bytes) == 0, "same seed, different weights");
    /* another seed: almost every value differs */
    const uint16_t *x = a->layers[0].w_down.data, *y = c->layers[0].w_down.data;
    size_t n = (size_t)a->layers[0].w_down.rows * a->layers[0].w_down.cols, same = 0;
    for (size_t i = 0; i < n; i++) same += x[i] == y[i];
    ck_assert_msg(same < n / 50, "seeds 7 and 8 share %zu of %zu values", same, n);
    /* distribution: uniform, mean 0, standard deviation 0.02, nothing outside +-sqrt(3)*0.02 */
    const uint16_t *e = a->embed.data;
    size_t ne = (size_t)4 << 20; /* a sample: the first 4M values */
    double s = 0, s2 = 0, mx = 0;
    for (size_t i = 0; i < ne; i++) {
        double v = bf16_to_f32(e[i]);
        s += v, s2 += v * v;
        if (fabs(v) > mx) mx = fabs(v);
    }
    double mean = s / ne, sd = sqrt(s2 / ne - mean * mean);
    ck_assert_msg(fabs(mean) < 1e-4 && fabs(sd - 0.02) < 2e-4 && mx <= 0.0348, "mean %g sd %g max %g", mean, sd, mx);
    ck_assert(a->final_norm[0] == 1.0f && a->layers[0].q_norm[127] == 1.0f && a->layers[0].ffn_norm[1023] == 1.0f);
    ck_assert_ptr_eq(a->lm_head.data, a->embed.data); /* tied */
    model_destroy(a);
    model_destroy(b);
    model_destroy(c);
}
END_TEST

/* The whole 0.6B: its weights count as its config says, and it runs. (One
 * layer of it in the sanitizer build, where filling 1.2 GB unoptimized would
 * dominate the test run.) */
#if defined(__SANITIZE_ADDRESS__)
#define FULL_SPEC "qwen3-0.6b+layers:1"
#else
#define FULL_SPEC "qwen3-0.6b"
#endif
START_TEST(test_full_model_runs) {
    backend *be = backend_cpu_create();
    model *m = make(FULL_SPEC, 1);
    model_config c;
    char err[512];
    ck_assert_int_eq(model_synthetic_config(FULL_SPEC, &c, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(model_param_count(m), model_config_param_count(&c));
    if (c.n_layers == 28) ck_assert_int_eq(model_param_count(m), 596049920LL);
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 1, &fc, err, sizeof(err)), FORWARD_OK);
    forward_state *st = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 8, &st), FORWARD_OK);
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    int32_t ids[] = {151935};
    ck_assert_int_eq(forward_run(fc, st, ids, 1, logits, NULL), FORWARD_OK);
    for (int i = 0; i < m->cfg.vocab_size; i++) ck_assert(isfinite(logits[i]));
    free(logits);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

/* The mixture-of-experts shape, one layer: its loaded weights count as its
 * config says (every expert placed), and a token runs through router and
 * experts to finite logits. */
START_TEST(test_moe_layer_runs) {
    backend *be = backend_cpu_create();
    model *m = make("qwen3-30b-a3b+layers:1", 1);
    model_config c;
    char err[512];
    ck_assert_int_eq(model_synthetic_config("qwen3-30b-a3b+layers:1", &c, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(model_param_count(m), model_config_param_count(&c));
    ck_assert(m->layers[0].moe && m->layers[0].moe->n_experts == 128 && m->layers[0].moe->top_k == 8);
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 1, &fc, err, sizeof(err)), FORWARD_OK);
    forward_state *st = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 8, &st), FORWARD_OK);
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof(float));
    int32_t ids[] = {7, 151935};
    ck_assert_int_eq(forward_run(fc, st, ids, 2, logits, NULL), FORWARD_OK);
    for (int i = 0; i < m->cfg.vocab_size; i++) ck_assert(isfinite(logits[i]));
    free(logits);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    model_destroy(m);
    backend_destroy(be);
}
END_TEST

/* ---- DeepSeek-V4-Flash ---- */

/* DEEPSEEK_V4.md 4.1, at V4-Flash size: the parameters of layer i (0-1
 * sliding, then CSA on even and HCA on odd layers; the first 3 hash-routed,
 * their tid2eid a table, not parameters), written out here apart from the
 * engine's own tensor list. */
enum { H = 4096, V4_VOCAB = 129280, NH = 64, HD = 512, QR = 1024, OG = 8, OR = 1024, NE = 256, TOPK = 6,
       EI = 2048, HC = 4, IH = 64, ID = 128 };
static long long v4_layer_params(int i, int experts) {
    long long n = 2LL * H;                                                  /* attn_norm, ffn_norm */
    n += 2 * ((2LL + HC) * HC * HC * H + (2 + HC) * HC + 3);                /* hc_attn_*, hc_ffn_* */
    n += (long long)QR * H + QR + (long long)NH * HD * QR + (long long)HD * H + HD; /* wq_a q_norm wq_b wkv kv_norm */
    n += (long long)OG * OR * (NH * HD / OG) + (long long)H * OG * OR + NH; /* wo_a wo_b attn_sink */
    if (i >= 2 && i % 2 == 0) /* CSA: compressor [1024, 4096] x2, ape [4, 1024], norm; the indexer's */
        n += 2LL * 2 * HD * H + 4 * 2 * HD + HD + 2LL * 2 * ID * H + 4 * 2 * ID + ID + (long long)IH * ID * QR +
             (long long)IH * H;
    if (i >= 2 && i % 2 == 1) /* HCA: compressor [512, 4096] x2, ape [128, 512], norm */
        n += 2LL * HD * H + 128 * HD + HD;
    n += (long long)NE * H + (i >= 3 ? NE : 0);                             /* router, bias (learned layers) */
    return n + (long long)(experts + 1) * 3 * EI * H;                       /* routed, shared */
}
static long long v4_params(int layers, int experts) {
    long long n = 2LL * V4_VOCAB * H + H + (long long)HC * HC * H + HC + 1; /* embed, head, norm, hc_head */
    for (int i = 0; i < layers; i++) n += v4_layer_params(i, experts);
    return n;
}

/* The model card (huggingface.co/deepseek-ai/DeepSeek-V4-Flash): 284B total,
 * 13B activated; the MTP layer is not among the 43 (transformers does not build it). */
START_TEST(test_dsv4_config_and_count) {
    model_config c;
    char err[512];
    ck_assert_int_eq(model_synthetic_config("deepseek-v4-flash", &c, err, sizeof(err)), MODEL_OK);
    const dsv4_config *v = &c.dsv4;
    ck_assert_int_eq(c.arch, ARCH_DEEPSEEK_V4);
    ck_assert(c.vocab_size == V4_VOCAB && c.hidden_size == H && c.n_layers == 43 && c.n_heads == NH &&
              c.head_dim == HD && c.n_kv_heads == 1 && !c.tie_word_embeddings && c.sliding_window == 128);
    ck_assert(v->rope_dim == 64 && v->q_lora_rank == QR && v->o_groups == OG && v->o_lora_rank == OR);
    ck_assert(v->index_n_heads == IH && v->index_head_dim == ID && v->index_topk == 512);
    ck_assert(v->hc_mult == HC && v->hc_iters == 20 && v->hc_eps == 1e-6f && c.rms_norm_eps == 1e-6f);
    ck_assert(c.moe.n_experts == NE && c.moe.top_k == TOPK && c.moe.inter == EI);
    ck_assert(v->routed_scaling == 1.5f && v->swiglu_limit == 10.0f);
    ck_assert(v->main_theta == 10000 && v->comp_theta == 160000 && v->comp_yarn && v->yarn_factor == 16 &&
              v->yarn_original_max_pos == 65536 && v->yarn_beta_fast == 32 && v->yarn_beta_slow == 1);
    ck_assert(c.quant_block_rows == 128 && c.quant_block_cols == 128);
    for (int i = 0; i < 43; i++) {
        dsv4_attn_kind k = i < 2 ? DSV4_SLIDING : i % 2 ? DSV4_HCA : DSV4_CSA;
        ck_assert_msg(v->attn[i] == k && v->rate[i] == (i < 2 ? 0 : i % 2 ? 128 : 4), "layer %d", i);
        ck_assert(v->hash_moe[i] == (i < 3));
    }
    ck_assert_int_eq(model_synthetic_config("deepseek-v4-flash+layers:4", &c, err, sizeof(err)), MODEL_OK);
    ck_assert(c.n_layers == 4 && c.dsv4.attn[3] == DSV4_HCA);
    for (int n = 1; n <= 4; n++) {
        char spec[64];
        snprintf(spec, sizeof(spec), "deepseek-v4-flash+layers:%d", n);
        ck_assert_int_eq(model_synthetic_config(spec, &c, err, sizeof(err)), MODEL_OK);
        ck_assert_int_eq(model_config_param_count(&c), v4_params(n, NE));
    }
    ck_assert_int_eq(model_synthetic_config("deepseek-v4-flash", &c, err, sizeof(err)), MODEL_OK);
    long long n = (long long)model_config_param_count(&c);
    ck_assert_int_eq(n, 284332240471LL);
    ck_assert_int_eq(n, v4_params(43, NE));
    ck_assert_msg(llabs(n - 284000000000LL) <= 500000000LL, "total %lld vs the card's 284B", n);
    /* activated: 6 routed experts of 256 and the shared one; the embedding
     * table aside (a token reads one row of it) */
    long long active = v4_params(43, TOPK) - (long long)V4_VOCAB * H;
    ck_assert_msg(llabs(active - 13000000000LL) <= 500000000LL, "activated %lld vs the card's 13B", active);
    ck_assert_int_eq(model_synthetic_config("deepseek-v4-flash+layers:44", &c, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "from 1 to 43"), "%s", err);
    ck_assert_int_eq(model_synthetic_config("deepseek-v4-flash+engram:10k", &c, err, sizeof(err)), MODEL_ERR_CONFIG);
    ck_assert_msg(strstr(err, "not supported on a DeepSeek-V4 backbone"), "%s", err);
}
END_TEST

/* Mean, standard deviation and largest magnitude of a matrix as dequantised;
 * fails on a value that is not finite. */
static void spread(const weight *w, double *mean, double *sd, double *mx) {
    float *row = malloc((size_t)w->cols * sizeof(float));
    double s = 0, s2 = 0;
    *mx = 0;
    for (int r = 0; r < w->rows; r++) {
        model_weight_rows_to_f32(row, w, r, 1);
        for (int j = 0; j < w->cols; j++) {
            ck_assert_msg(isfinite(row[j]), "value (%d, %d) is %g", r, j, row[j]);
            s += row[j], s2 += (double)row[j] * row[j];
            if (fabs(row[j]) > *mx) *mx = fabs(row[j]);
        }
    }
    double n = (double)w->rows * w->cols;
    *mean = s / n, *sd = sqrt(s2 / n - *mean * *mean);
    free(row);
}

static uint64_t sample_hash(const model *m) { /* one 8-byte word per 64 KiB of the mapping */
    uint64_t h = UTIL_FNV1A_INIT, x;
    for (size_t off = 0; off + 8 <= m->synth_bytes; off += 65536) {
        memcpy(&x, (const char *)m->synth + off, 8);
        h = (h ^ x) * 1099511628211ull;
    }
    return h;
}

/* One layer (sliding, hash-routed) of V4-Flash, 5.7 GB: its tensors in the
 * release's formats and spreads, every one placed (the parameter count from
 * the weights), the bytes a token reads, and a run to finite logits. */
START_TEST(test_dsv4_layer_runs) {
#if defined(__SANITIZE_ADDRESS__)
    return; /* 5.7 GB filled unoptimized and shadowed: minutes and gigabytes in the sanitizer run, which
             * the one-layer qwen3-30b-a3b run already takes through the same fill and MoE paths */
#endif
    const char *spec = "deepseek-v4-flash+layers:1";
    uint64_t h1 = 0;
#if !defined(__SANITIZE_ADDRESS__)
    omp_set_num_threads(1); /* the bits must not depend on the thread count */
    model *a = make(spec, 5);
    h1 = sample_hash(a);
    model_destroy(a);
    omp_set_num_threads(2);
#endif
    model *m = make(spec, 5);
    if (h1) ck_assert_msg(sample_hash(m) == h1, "one thread and two made different weights");
    model_config c;
    char err[512];
    ck_assert_int_eq(model_synthetic_config(spec, &c, err, sizeof(err)), MODEL_OK);
    ck_assert_int_eq(model_param_count(m), model_config_param_count(&c));
    ck_assert_int_eq(model_param_count(m), v4_params(1, NE));
    const dsv4_layer *Y = &m->dsv4->layers[0];
    const moe_weights *w = m->layers[0].moe;
    ck_assert(m->embed.dt == DTYPE_BF16 && m->lm_head.dt == DTYPE_BF16 && m->lm_head.data != m->embed.data);
    ck_assert(Y->hc_attn_fn.dt == DTYPE_F32 && m->dsv4->hc_head_fn.dt == DTYPE_F32 && w->router.dt == DTYPE_BF16);
    const weight *fp8[] = {&Y->wq_a, &Y->wq_b, &Y->wkv, &Y->wo_a, &Y->wo_b, &w->sh_gate, &w->sh_up, &w->sh_down};
    for (size_t i = 0; i < sizeof(fp8) / sizeof(fp8[0]); i++)
        ck_assert(fp8[i]->fmt == WEIGHT_FP8 && fp8[i]->dt == DTYPE_F8_E4M3 && fp8[i]->scale_dt == DTYPE_F8_E8M0 &&
                  fp8[i]->block_rows == 128 && fp8[i]->block_cols == 128 &&
                  fp8[i]->scale_rows == (fp8[i]->rows + 127) / 128 && fp8[i]->scale_cols == (fp8[i]->cols + 127) / 128);
    ck_assert(Y->wq_a.scale_rows == 8 && Y->wq_a.scale_cols == 32); /* [8, 32] in 4.1 */
    for (int e = 0; e < NE; e += 51)
        ck_assert(w->gate[e].fmt == WEIGHT_FP4 && w->gate[e].dt == DTYPE_I8 && w->up[e].fmt == WEIGHT_FP4 &&
                  w->gate[e].scale_rows == EI && w->gate[e].scale_cols == H / 32 && w->down[e].rows == H &&
                  w->down[e].scale_cols == EI / 32 && w->down[e].block_cols == 32);
    /* spreads: FP8 uniform with sd 0.02 (|w| <= 288 x 2^-13), FP4 codes uniform (sd 2.93 x 2^-7) */
    double mean, sd, mx;
    spread(&Y->wq_a, &mean, &sd, &mx);
    ck_assert_msg(fabs(mean) < 2e-4 && fabs(sd - 0.02) < 4e-4 && mx <= 288.0 / 8192, "FP8 mean %g sd %g max %g", mean,
                  sd, mx);
    spread(&w->down[17], &mean, &sd, &mx);
    ck_assert_msg(fabs(mean) < 2e-4 && fabs(sd - 0.02286) < 4e-4 && mx == 6.0 / 128, "FP4 mean %g sd %g max %g", mean,
                  sd, mx);
    /* hash routing: every token id has 6 distinct experts */
    ck_assert(w->scoring == MOE_HASH && w->tid2eid && w->tid_rows == V4_VOCAB);
    for (int t = 0; t < V4_VOCAB; t += 997)
        for (int i = 0; i < TOPK; i++) {
            int32_t e = w->tid2eid[(size_t)t * TOPK + i];
            ck_assert(e >= 0 && e < NE);
            for (int j = 0; j < i; j++) ck_assert(e != w->tid2eid[(size_t)t * TOPK + j]);
        }
    ck_assert(m->final_norm[4095] == 1.0f && Y->q_norm[1023] == 1.0f && Y->hc_attn_scale[2] == 1.0f);
    ck_assert(Y->sinks[0] != Y->sinks[1] && fabsf(Y->sinks[0]) < 0.035f);
    /* bytes per token as stored: FP8 one per value + a scale byte per 128 x 128, FP4 half a byte + one
     * per 32; the head, hc fns (f32), router (bf16), 6 experts and the shared one; not the embedding */
#define Q8(r, cc) ((long long)(r) * (cc) + (long long)(((r) + 127) / 128) * (((cc) + 127) / 128))
#define Q4(r, cc) ((long long)(r) * (cc) / 2 + (long long)(r) * ((cc) / 32))
    long long bytes = 2LL * V4_VOCAB * H + 4LL * HC * HC * H + 2 * 4LL * (2 + HC) * HC * HC * H + Q8(QR, H) +
                      Q8(NH * HD, QR) + Q8(HD, H) + Q8(OG * OR, NH * HD / OG) + Q8(H, OG * OR) + 2LL * NE * H +
                      TOPK * (2 * Q4(EI, H) + Q4(H, EI)) + 2 * Q8(EI, H) + Q8(H, EI);
    ck_assert_int_eq((long long)model_weight_bytes_per_token(m), bytes);
    /* a run */
    backend *be = backend_cpu_create();
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 1, &fc, err, sizeof(err)), FORWARD_OK);
    forward_state *st = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 8, &st), FORWARD_OK);
    float *logits = malloc((size_t)V4_VOCAB * sizeof(float));
    int32_t ids[] = {0, 129279};
    ck_assert_int_eq(forward_run(fc, st, ids, 2, logits, NULL), FORWARD_OK);
    for (int i = 0; i < V4_VOCAB; i++) ck_assert(isfinite(logits[i]));
    free(logits);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    backend_destroy(be);
    model_destroy(m);
}
END_TEST

static char dir[] = "/tmp/test_model_synthetic.XXXXXX";
static char tbl[300], stamp[320];

static model *make_engram(const char *spec, uint64_t seed, int expect_rc, char *err, size_t errlen) {
    model_synthetic_params p = model_synthetic_default_params();
    p.table_dir = dir;
    p.quiet = true;
    model *m = NULL;
    int rc = model_synthetic_ex(spec, seed, &p, &m, err, errlen);
    ck_assert_msg(rc == expect_rc, "%s: rc %d: %s", spec, rc, err);
    return m;
}

static long long mtime_of(const char *path) {
    struct stat s;
    ck_assert_int_eq(stat(path, &s), 0);
    return (long long)s.st_mtim.tv_sec * 1000000000LL + s.st_mtim.tv_nsec;
}

START_TEST(test_engram_table) {
    backend *be = backend_cpu_create();
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(tbl, sizeof(tbl), "%s/engram_layer_1.tbl", dir);
    snprintf(stamp, sizeof(stamp), "%s.synthetic", tbl);
    char err[1024];
    const char *spec = "qwen3-0.6b+layers:2+engram:20k";
    model *m = make_engram(spec, 3, MODEL_OK, err, sizeof(err));
    const model_engram *e = m->engram;
    ck_assert_ptr_nonnull(e);
    ck_assert(e->n_layers == 1 && e->n_heads == 16 && e->head_dim == 64 && e->embed_dim == 1024);
    ck_assert(e->vc == m->cfg.vocab_size && e->lookup[151935] == 151935); /* identity lookup */
    const engram_weights *w = &e->layers[0];
    ck_assert_ptr_eq(m->layers[1].engram, w);
    ck_assert_ptr_nonnull(w->store);
    ck_assert_msg(abs(w->table.rows - 20000) < 200, "table rows %d for 20k", w->table.rows);
    ck_assert_int_eq(access(stamp, F_OK), 0);
    engram_store_header h = engram_store_get_info(w->store).header;
    ck_assert(h.rows == (uint64_t)w->table.rows && h.cols == 64 && h.dtype == ENGRAM_STORE_BF16);

    /* it runs, and the gate sees the table */
    forward_ctx *fc = NULL;
    ck_assert_int_eq(forward_ctx_create(m, be, 8, 1, &fc, err, sizeof(err)), FORWARD_OK);
    forward_state *st = NULL;
    ck_assert_int_eq(forward_state_create(fc, NULL, 8, &st), FORWARD_OK);
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof(float)), gates[4];
    int32_t ids[] = {5, 6, 7, 8};
    ck_assert_int_eq(forward_run(fc, st, ids, 4, logits, gates), FORWARD_OK);
    for (int t = 0; t < 4; t++) ck_assert(gates[t] > 0 && gates[t] < 1);
    forward_state_destroy(st);
    forward_ctx_destroy(fc);
    free(logits);

    /* the same seed reuses the file; the rows read back are the same */
    long long t0 = mtime_of(tbl);
    float r1[64], r2[64];
    int64_t row = 1234;
    ck_assert_int_eq(engram_store_gather(w->store, &row, 1, r1, NULL), ENGRAM_STORE_OK);
    model_destroy(m);
    m = make_engram(spec, 3, MODEL_OK, err, sizeof(err));
    ck_assert(mtime_of(tbl) == t0);
    ck_assert_int_eq(engram_store_gather(m->engram->layers[0].store, &row, 1, r2, NULL), ENGRAM_STORE_OK);
    ck_assert(memcmp(r1, r2, sizeof(r1)) == 0);
    model_destroy(m);

    /* without a table directory the table is made in host memory, bit for
     * bit the file's: every row, raw and decoded */
    model *mm = NULL;
    ck_assert_int_eq(model_synthetic(spec, 3, &mm, err, sizeof(err)), MODEL_OK);
    m = make_engram(spec, 3, MODEL_OK, err, sizeof(err));
    engram_store *fs = m->engram->layers[0].store, *ms = mm->engram->layers[0].store;
    engram_store_info mi = engram_store_get_info(ms);
    ck_assert(mi.tier == ENGRAM_STORE_DRAM && mi.header.rows == h.rows && mi.header.dtype == ENGRAM_STORE_BF16);
    size_t nr = (size_t)h.rows, rb = h.row_bytes;
    int64_t *all = malloc(nr * sizeof(int64_t));
    uint8_t *a = malloc(nr * rb), *b = malloc(nr * rb);
    for (size_t i = 0; i < nr; i++) all[i] = (int64_t)(nr - 1 - i); /* any order */
    ck_assert_int_eq(engram_store_gather_raw(fs, all, nr, a, NULL), ENGRAM_STORE_OK);
    ck_assert_int_eq(engram_store_gather_raw(ms, all, nr, b, NULL), ENGRAM_STORE_OK);
    ck_assert(memcmp(a, b, nr * rb) == 0);
    ck_assert_int_eq(engram_store_gather(ms, &row, 1, r2, NULL), ENGRAM_STORE_OK);
    ck_assert(memcmp(r1, r2, sizeof(r1)) == 0);
    free(all), free(a), free(b);
    model_destroy(mm);
    model_destroy(m);

    /* another seed replaces it with other rows */
    m = make_engram(spec, 4, MODEL_OK, err, sizeof(err));
    ck_assert_int_eq(engram_store_gather(m->engram->layers[0].store, &row, 1, r2, NULL), ENGRAM_STORE_OK);
    ck_assert(memcmp(r1, r2, sizeof(r1)) != 0);
    model_destroy(m);

    /* a table file that no synthetic model made is never overwritten */
    ck_assert_int_eq(unlink(stamp), 0);
    m = make_engram(spec, 4, MODEL_ERR_IO, err, sizeof(err));
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err, "was not made by a synthetic model") != NULL, "%s", err);

    unlink(tbl);
    rmdir(dir);
    backend_destroy(be);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("model_synthetic");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_param_counts);
    tcase_add_test(tc, test_config_fields);
    tcase_add_test(tc, test_bad_specs);
    tcase_add_test(tc, test_seeds);
    tcase_add_test(tc, test_full_model_runs);
    tcase_add_test(tc, test_moe_layer_runs);
    tcase_add_test(tc, test_dsv4_config_and_count);
    tcase_add_test(tc, test_dsv4_layer_runs);
    tcase_add_test(tc, test_engram_table);
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
