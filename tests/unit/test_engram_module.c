/* The Engram module with hc_mult 4 against DeepSeek's reference module run on
 * random hidden states (tests/fixtures/models/qwen3_engram/module_hc4.safetensors,
 * made by tools/make_engram_fixture.py): output and gates within 1e-4, in one
 * call, in two chunks that carry the conv history, and as two sequences in
 * one step (each with its own history). */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend/backend.h"
#include "engine/engram_module.h"
#include "engine/model/safetensors.h"
#include "base/util.h"

static char dir[4096];

static const float *tensor_f32(const safetensors *st, const char *name, size_t numel) {
    const st_tensor *t = safetensors_find(st, name);
    ck_assert_msg(t != NULL, "missing %s", name);
    ck_assert_int_eq(t->dt, DTYPE_F32);
    ck_assert_uint_eq(t->numel, numel);
    return t->data;
}

static weight mat(const safetensors *st, const char *name, int rows, int cols) {
    return (weight){.data = tensor_f32(st, name, (size_t)rows * cols), .dt = DTYPE_F32, .rows = rows, .cols = cols};
}

/* One step of sequences laid end to end: seq i has n[i] tokens and history hist[i]. */
static int run_step(backend *be, const model_engram *e, const engram_weights *w, int d, const float *x,
                    const int64_t *rows, int n_seqs, const int *n, float **hist, engram_scratch *s, float *out,
                    float *gates) {
    int32_t start[4] = {0};
    for (int i = 0; i < n_seqs; i++) start[i + 1] = start[i] + n[i];
    batch_desc b = {.n_seqs = n_seqs, .n_tokens = start[n_seqs], .seq_start = start, .h_seq_start = start,
                    .seq_hist = hist};
    backend_gather_rows(be, s->e, &w->table, rows, b.n_tokens, e->n_heads);
    engram_module_run(be, e, w, d, &b, x, s->e, 0, s, out, gates);
    return 0;
}

START_TEST(module_hc4_matches_reference) {
    char path[4200], err[512];
    snprintf(path, sizeof(path), "%s/golden.json", dir);
    size_t len;
    char *text = util_read_file(path, 1 << 24, &len, err, sizeof(err));
    ck_assert_msg(text != NULL, "%s", err);
    cJSON *g = cJSON_Parse(text);
    free(text);
    const cJSON *lk = cJSON_GetObjectItem(g, "lookup");
    int V = cJSON_GetArraySize(lk);
    int64_t *lookup = malloc(V * sizeof(int64_t));
    for (int i = 0; i < V; i++) lookup[i] = (int64_t)cJSON_GetArrayItem(lk, i)->valuedouble;

    enum { G = 4, d = 64 };
    int64_t vs[2] = {1000, 1500}, layer_ids[2] = {1, 2};
    ngram_hash_config hc = {.engram_vocab_size = vs, .max_ngram_size = 3, .n_embed_per_ngram = 32,
                            .n_head_per_ngram = 4, .layer_ids = layer_ids, .n_layers = 2, .pad_id = 2,
                            .seed = 0, .kernel_size = 4, .hc_mult = G,
                            .compressed_vocab_size = (int64_t)cJSON_GetObjectItem(g, "compressed_vocab")->valuedouble,
                            .compressed_pad_id = (int64_t)cJSON_GetObjectItem(g, "compressed_pad")->valuedouble};
    model_engram e = {.n_layers = 1, .hc_mult = G, .kernel_size = 4, .dilation = 3};
    ck_assert_int_eq(ngram_hash_create(&hc, &e.hash, err, sizeof(err)), NGRAM_HASH_OK);
    e.n_heads = ngram_hash_n_heads(e.hash);
    e.head_dim = (int)ngram_hash_head_dim(e.hash);
    e.embed_dim = (int)ngram_hash_embed_dim(e.hash);
    int E = e.embed_dim;

    snprintf(path, sizeof(path), "%s/module_hc4.safetensors", dir);
    safetensors *st;
    ck_assert_int_eq(safetensors_open(path, &st, err, sizeof(err)), ST_OK);
    engram_weights w = {.layer_id = 1, .li = 0};
    w.table = mat(st, "engram.multi_head_embedding.embedding.weight", (int)ngram_hash_table_rows(e.hash, 0), e.head_dim);
    w.w_value = mat(st, "engram.value_proj.weight", d, E);
    w.b_value = tensor_f32(st, "engram.value_proj.bias", d);
    w.conv_w = tensor_f32(st, "engram.short_conv.conv.weight", (size_t)G * d * 4);
    char n[128];
    for (int k = 0; k < G; k++) {
        snprintf(n, sizeof(n), "engram.key_projs.%d.weight", k), w.w_key[k] = mat(st, n, d, E);
        snprintf(n, sizeof(n), "engram.key_projs.%d.bias", k), w.b_key[k] = tensor_f32(st, n, d);
        snprintf(n, sizeof(n), "engram.norm1.%d.weight", k), w.norm1[k] = tensor_f32(st, n, d);
        snprintf(n, sizeof(n), "engram.norm2.%d.weight", k), w.norm2[k] = tensor_f32(st, n, d);
        snprintf(n, sizeof(n), "engram.short_conv.norms.%d.weight", k), w.conv_norm[k] = tensor_f32(st, n, d);
    }
    const st_tensor *ids_t = safetensors_find(st, "ids");
    ck_assert_int_eq(ids_t->dt, DTYPE_I64);
    int T = (int)ids_t->numel;
    const float *x = tensor_f32(st, "input", (size_t)T * G * d);
    const float *ref = tensor_f32(st, "output", (size_t)T * G * d);
    const float *ref_g = tensor_f32(st, "gates", (size_t)T * G);

    int64_t *cids = malloc(T * sizeof(int64_t)), *rows = malloc((size_t)T * e.n_heads * sizeof(int64_t));
    ck_assert_int_eq(ngram_hash_compress_ids(lookup, V, ids_t->data, (size_t)T, cids), NGRAM_HASH_OK);
    ngram_hash_history hist;
    ngram_hash_history_init(e.hash, &hist);
    ngram_hash_layer_rows(e.hash, 0, &hist, cids, (size_t)T, rows);

    enum { A = 10 }; /* the split point */
    engram_scratch s;
    backend *be = backend_cpu_create();
    ck_assert_int_eq(engram_scratch_init(&s, be, &e, d, T + A), 0);
    size_t hn = engram_conv_history_floats(&e, d), TGd = (size_t)T * G * d;
    float *h1 = calloc(hn, sizeof(float)), *h2 = calloc(hn, sizeof(float));
    float *out = malloc((TGd + (size_t)A * G * d) * sizeof(float));
    float *gates = malloc((size_t)(T + A) * G * sizeof(float));
    /* the step of mode 2: the whole sequence, then its first A tokens as a second sequence */
    float *x2 = malloc((TGd + (size_t)A * G * d) * sizeof(float));
    int64_t *rows2 = malloc((size_t)(T + A) * e.n_heads * sizeof(int64_t));
    memcpy(x2, x, TGd * sizeof(float));
    memcpy(x2 + TGd, x, (size_t)A * G * d * sizeof(float));
    memcpy(rows2, rows, (size_t)T * e.n_heads * sizeof(int64_t));
    memcpy(rows2 + (size_t)T * e.n_heads, rows, (size_t)A * e.n_heads * sizeof(int64_t));

    for (int mode = 0; mode < 3; mode++) { /* one call; chunks of A and the rest; two sequences in one step */
        memset(h1, 0, hn * sizeof(float));
        memset(h2, 0, hn * sizeof(float));
        for (size_t i = 0; i < TGd + (size_t)A * G * d; i++) out[i] = NAN; /* every element must be written */
        float *hists[2] = {h1, h2};
        if (mode == 0) {
            int n0[1] = {T};
            ck_assert_int_eq(run_step(be, &e, &w, d, x, rows, 1, n0, hists, &s, out, gates), 0);
        } else if (mode == 1) {
            int n1[1] = {A}, n2[1] = {T - A};
            ck_assert_int_eq(run_step(be, &e, &w, d, x, rows, 1, n1, hists, &s, out, gates), 0);
            ck_assert_int_eq(run_step(be, &e, &w, d, x + (size_t)A * G * d, rows + (size_t)A * e.n_heads, 1, n2, hists,
                                      &s, out + (size_t)A * G * d, gates + (size_t)A * G), 0);
        } else {
            int n3[2] = {T, A};
            ck_assert_int_eq(run_step(be, &e, &w, d, x2, rows2, 2, n3, hists, &s, out, gates), 0);
        }
        double md = 0, mg = 0;
        for (size_t i = 0; i < TGd; i++) md = fmax(md, fabs(out[i] - ref[i]));
        for (size_t i = 0; i < (size_t)T * G; i++) mg = fmax(mg, fabs(gates[i] - ref_g[i]));
        if (mode == 2) { /* the second sequence: the reference's first A tokens */
            for (size_t i = 0; i < (size_t)A * G * d; i++) md = fmax(md, fabs(out[TGd + i] - ref[i]));
            for (size_t i = 0; i < (size_t)A * G; i++) mg = fmax(mg, fabs(gates[(size_t)T * G + i] - ref_g[i]));
        }
        ck_assert_msg(md < 1e-4, "mode %d: max |out - ref| = %g", mode, md); /* NaN fails too */
        ck_assert_msg(mg < 1e-5, "mode %d: max |gate - ref| = %g", mode, mg);
    }
    free(h1), free(h2), free(out), free(gates), free(x2), free(rows2), free(cids), free(rows), free(lookup);
    engram_scratch_free(&s, be);
    backend_destroy(be);
    safetensors_destroy(st);
    ngram_hash_destroy(e.hash);
    cJSON_Delete(g);
}
END_TEST

int main(void) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/models/qwen3_engram", src ? src : ".");
    Suite *s = suite_create("engram_module");
    TCase *tc = tcase_create("all");
    tcase_add_test(tc, module_hc4_matches_reference);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
