/* DeepSeek-V4.1's Engram on a DeepSeek-V4 backbone (DEEPSEEK_V4.md section 5, as SGLang 0.5.23
 * serves it): the engram_* keys of config.json (engram/engram_v41), the refusal of the V4.1
 * backbone keys this engine does not implement (5.8: vision), and at load
 * the compressed tokenizer rebuilt from the checkpoint's tokenizer.json, the hash tables, and each Engram layer's release-named
 * tensors (5.9). Called by model_dsv4.c; reads tensors through model_read.c. The module's shape
 * (model__dsv4_engram_init) also serves synthetic models (model_synthetic.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/dtype.h"
#include "engine/model/model_internal.h"
#include "engram/engram_lookup.h"
#include "tokenizer/tokenizer.h"

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

/* ---- config.json ---- */

/* A key SGLang reads for V4.1's backbone (DEEPSEEK_V4.md 5.8, srt/configs/deepseek_v4.py:100-136)
 * must hold the value that means plain V4, else the model would run as something else. */
static int refuse_v41_key(const char *key, const char *what, const char *label, char *err,
                          size_t errlen) {
    FAIL("%s: key %s asks for DeepSeek-V4.1's %s (DEEPSEEK_V4.md 5.8), which is not implemented", label, key, what);
}

static int check_v41_backbone(const cJSON *root, const char *label, char *err, size_t errlen) {
    int v;
    const char *ints[][2] = {{"vision_n_layers", "vision tower (image tokens in the Engram hash)"}};
    const int int_plain[] = {0};
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (cJSON_IsString(mt) && strcmp(mt->valuestring, "deepseek_v4") != 0)
        FAIL("%s: model_type %s: only deepseek_v4 is supported (deepseek_v41 changes the backbone, "
             "DEEPSEEK_V4.md 5.8)", label, mt->valuestring);
    if (cJSON_GetObjectItemCaseSensitive(root, "text_config") || cJSON_GetObjectItemCaseSensitive(root, "vision_config"))
        FAIL("%s: a nested text_config / vision_config (the DeepSeek-V4.1 release layout) is not supported", label);
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) {
        if (model__get_int(root, ints[i][0], int_plain[i], -1, 1 << 30, &v, label, err, errlen)) return -1;
        if (v != int_plain[i]) return refuse_v41_key(ints[i][0], ints[i][1], label, err, errlen);
    }
    return 0;
}

int model__parse_dsv4_engram(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    memset(&c->engram_v41, 0, sizeof(c->engram_v41));
    if (check_v41_backbone(root, label, err, errlen)) return -1;
    /* SGLang enables the Engram when engram_layer_ids is non-empty; the other keys are read only then */
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "engram_layer_ids");
    if (!ids || cJSON_IsNull(ids) || (cJSON_IsArray(ids) && cJSON_GetArraySize(ids) == 0)) return 0;
    char *text = cJSON_PrintUnformatted(root); /* engram_v41 parses text: one parser of those keys */
    if (!text) FAIL("out of memory");
    char e2[512];
    int st = engram_v41_config_parse(text, strlen(text), label, &c->engram_v41, e2, sizeof(e2));
    free(text);
    if (st) FAIL("%s", e2);
    engram_v41_config *v = &c->engram_v41;
    if (v->hc_mult != c->dsv4.hc_mult)
        FAIL("%s: hc_mult %d read for the Engram differs from the backbone's %d", label, v->hc_mult, c->dsv4.hc_mult);
    for (int i = 0; i < v->n_layers; i++)
        if (v->layer_ids[i] >= c->n_layers)
            FAIL("%s: engram_layer_ids[%d] is %lld, not below num_hidden_layers %d", label, i,
                 (long long)v->layer_ids[i], c->n_layers);
    if (v->n_layers > ENGRAM_MAX_LAYERS || v->hc_mult > ENGRAM_MAX_HC)
        FAIL("%s: more Engram layers or streams than this build holds", label);
    return 0;
}

/* ---- tensors ---- */

/* The tensor `leaf` of layer lid's Engram: "model.layers.N.engram.LEAF" or the release's
 * "layers.N.engram.LEAF"; the name found (or the first, for the error) goes to buf. */
static const st_tensor *engram_tensor(const model *m, int lid, const char *leaf, char *buf, size_t n,
                                      const char **file) {
    snprintf(buf, n, "layers.%d.engram.%s", lid, leaf);
    const st_tensor *t = model__find_tensor(m, buf, file);
    if (t) return t;
    snprintf(buf, n, "model.layers.%d.engram.%s", lid, leaf);
    return model__find_tensor(m, buf, file);
}

/* embed.weight F8_E4M3 [rows, D] and embed.scale F8_E8M0 [rows, D/32] into the table w that
 * model__dsv4_engram_init shaped: read in place (ENGRAM.md 7: value = e4m3 * 2^(byte - 127)). */
static int load_table(model *m, int lid, weight *w, char *err, size_t errlen) {
    char wn[256], sn[256];
    const char *wf = NULL, *sf = NULL;
    const st_tensor *t = engram_tensor(m, lid, "embed.weight", wn, sizeof(wn), &wf);
    const st_tensor *s = engram_tensor(m, lid, "embed.scale", sn, sizeof(sn), &sf);
    int rows = w->rows, D = w->cols;
    if (!t || !s) {
        snprintf(err, errlen, "%s: missing tensor %s", m->dir, t ? sn : wn);
        return MODEL_ERR_WEIGHTS;
    }
    if (t->dt != DTYPE_F8_E4M3 || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != D) {
        snprintf(err, errlen, "%s: tensor %s must be F8_E4M3 of shape [%d, %d] (engram_num_embeddings, engram_head_dim)",
                 wf, wn, rows, D);
        return MODEL_ERR_WEIGHTS;
    }
    if (s->dt != DTYPE_F8_E8M0 || s->ndim != 2 || s->shape[0] != rows || s->shape[1] != D / 32) {
        snprintf(err, errlen, "%s: tensor %s must be F8_E8M0 of shape [%d, %d] (one exponent per 32 values)", sf, sn,
                 rows, D / 32);
        return MODEL_ERR_WEIGHTS;
    }
    w->data = t->data;
    w->scale = s->data;
    return MODEL_OK;
}

/* q_weight and k_weight [N, d] (any float dtype) multiplied into one owned (N, d) f32 array: SGLang
 * forms q_weight.float() * k_weight.float() before the dot product, one rounding per element. */
static int load_qk(model *m, int lid, int N, int d, const float **out, char *err, size_t errlen) {
    char qn[256], kn[256];
    const char *file;
    weight q, k;
    engram_tensor(m, lid, "q_weight", qn, sizeof(qn), &file);
    engram_tensor(m, lid, "k_weight", kn, sizeof(kn), &file);
    int rc;
    if ((rc = model__load_matrix(m, qn, N, d, &q, err, errlen)) || (rc = model__load_matrix(m, kn, N, d, &k, err, errlen)))
        return rc;
    float *buf = model__own(m, (size_t)2 * N * d);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    model_weight_rows_to_f32(buf, &q, 0, N);
    model_weight_rows_to_f32(buf + (size_t)N * d, &k, 0, N);
    for (size_t i = 0; i < (size_t)N * d; i++) buf[i] *= buf[(size_t)N * d + i];
    *out = buf;
    return MODEL_OK;
}

static int load_layer(model *m, engram_weights *w, char *err, size_t errlen) {
    const model_engram *e = m->engram;
    int d = m->cfg.hidden_size, N = e->hc_mult, rc;
    char base[256];
    const char *file;
    engram_tensor(m, w->layer_id, "wkv.weight", base, sizeof(base), &file);
    base[strlen(base) - strlen(".weight")] = '\0'; /* model__load_qmatrix takes the name without .weight */
    if ((rc = load_table(m, w->layer_id, &w->table, err, errlen)) ||
        (rc = model__load_qmatrix(m, base, (N + 1) * d, e->embed_dim, &w->w_kv, err, errlen)) ||
        (rc = load_qk(m, w->layer_id, N, d, &w->qk, err, errlen)))
        return rc;
    return MODEL_OK;
}

int model__dsv4_engram_init(model *m, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    const engram_v41_config *v = &c->engram_v41;
    model_engram *e = m->engram;
    char label[4096];
    snprintf(label, sizeof(label), "%s/config.json", m->dir);
    engram_v41_tokenizer t = {.lookup = e->lookup, .n = e->lookup_n, .vc = e->vc};
    int st = engram_v41_hash_create(v, &t, label, &e->hash, err, errlen);
    if (st) return st == ENGRAM_V41_ENOMEM ? MODEL_ERR_NOMEM : MODEL_ERR_CONFIG;
    e->v41 = true;
    e->eps = c->rms_norm_eps;
    e->n_layers = v->n_layers;
    e->hc_mult = v->hc_mult;
    e->kernel_size = 1; /* no short conv: no conv history */
    e->dilation = v->max_ngram_size;
    e->n_heads = ngram_hash_n_heads(e->hash);
    e->head_dim = (int)ngram_hash_head_dim(e->hash);
    e->embed_dim = (int)ngram_hash_embed_dim(e->hash);
    if (!(e->layers = calloc((size_t)e->n_layers, sizeof(engram_weights)))) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    for (int li = 0; li < e->n_layers; li++) {
        engram_weights *w = &e->layers[li];
        int64_t rows = ngram_hash_table_rows(e->hash, li);
        w->li = li;
        w->layer_id = (int)v->layer_ids[li];
        if (rows > INT32_MAX) {
            snprintf(err, errlen, "%s: Engram layer %d table of %lld rows is too large for this build", m->dir,
                     w->layer_id, (long long)rows);
            return MODEL_ERR_CONFIG;
        }
        w->table = (weight){.dt = DTYPE_F8_E4M3, .rows = (int)rows, .cols = e->head_dim, .fmt = WEIGHT_FP8,
                            .scale_dt = DTYPE_F8_E8M0, .scale_rows = (int)rows, .scale_cols = e->head_dim / 32,
                            .block_rows = 1, .block_cols = 32};
        m->layers[w->layer_id].engram = w;
    }
    return MODEL_OK;
}

int model__load_dsv4_engram(model *m, char *err, size_t errlen) {
    /* The compressed tokenizer, rebuilt as SGLang does at start (ENG:297-317): every hash
     * multiplier depends on its size, so a disagreement with the config refuses the load. */
    int rc = model__engram_create(m, err, errlen);
    if (rc || (rc = model__dsv4_engram_init(m, err, errlen))) return rc;
    for (int li = 0; li < m->engram->n_layers; li++)
        if ((rc = load_layer(m, &m->engram->layers[li], err, errlen))) return rc;
    return MODEL_OK;
}
