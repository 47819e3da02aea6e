/* DeepSeek-V4.1 Engram configuration: parse the engram_* keys of an untrusted
 * config.json, build the ngram_hash_config they describe, and refuse values
 * that contradict each other (derived table rows against
 * engram_num_embeddings) or the tokenizer (compressed vocab). Every refusal is
 * a status and one line naming the key. */
#include "engram/engram_v41.h"
#include "base/err.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *engram_v41_status_str(int status) {
    switch (status) {
    case ENGRAM_V41_OK: return "ok";
    case ENGRAM_V41_EJSON: return "config is not a JSON object";
    case ENGRAM_V41_ECONFIG: return "bad engram config value";
    case ENGRAM_V41_EMISMATCH: return "engram config contradicts itself or the tokenizer";
    case ENGRAM_V41_ENOMEM: return "out of memory";
    default: return "unknown status";
    }
}

/* JSON numbers are doubles: integers are exact up to 2^53. */
#define JSON_INT_MAX ((int64_t)1 << 53)
/* Largest total of hash heads (layers x orders x heads), as ngram_hash allows. */
#define MAX_TOTAL_HEADS NGRAM_HASH_MAX_TOTAL_HEADS

/* An integral JSON number in [lo, hi] into *out; 0 or -1. */
static int num_i64(const cJSON *v, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) return -1;
    *out = (int64_t)d;
    return 0;
}

/* Required integer key of o in [lo, hi]. */
static int key_i64(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   const char *label, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v))
        return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: missing key %s", label, key);
    if (num_i64(v, lo, hi, out))
        return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: key %s must be an integer in [%lld, %lld]",
                    label, key, (long long)lo, (long long)hi);
    return ENGRAM_V41_OK;
}

static int key_int(const cJSON *o, const char *key, int lo, int hi, int *out, const char *label,
                   char *err, size_t errlen) {
    int64_t v = 0;
    int st = key_i64(o, key, lo, hi, &v, label, err, errlen);
    if (st == ENGRAM_V41_OK) *out = (int)v;
    return st;
}

/* Required array key of o with 1..max integers in [lo, hi]; *n gets the count. */
static int key_array(const cJSON *o, const char *key, int max, int64_t lo, int64_t hi, int64_t *out,
                     int *n, const char *label, char *err, size_t errlen) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!a || cJSON_IsNull(a))
        return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: missing key %s", label, key);
    int len = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : -1;
    if (len < 1 || len > max)
        return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: key %s must be an array of 1 to %d integers",
                    label, key, max);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (num_i64(e, lo, hi, &out[i]))
            return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: %s[%d] must be an integer in [%lld, %lld]",
                        label, key, i, (long long)lo, (long long)hi);
        i++;
    }
    *n = len;
    return ENGRAM_V41_OK;
}

static int parse_object(const cJSON *o, const char *label, engram_v41_config *c, char *err,
                        size_t errlen) {
    int st, n_emb = 0;
    int64_t v = 0;
    if ((st = key_array(o, "engram_layer_ids", ENGRAM_V41_MAX_LAYERS, 0, INT32_MAX, c->layer_ids,
                        &c->n_layers, label, err, errlen)))
        return st;
    for (int i = 0; i < c->n_layers; i++)
        for (int j = 0; j < i; j++)
            if (c->layer_ids[j] == c->layer_ids[i])
                return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: engram_layer_ids lists layer %lld twice",
                            label, (long long)c->layer_ids[i]);
    if ((st = key_array(o, "engram_num_embeddings", ENGRAM_V41_MAX_LAYERS, 1, JSON_INT_MAX,
                        c->num_embeddings, &n_emb, label, err, errlen)))
        return st;
    if (n_emb != c->n_layers)
        return err_set(err, errlen, ENGRAM_V41_EMISMATCH,
                    "%s: engram_num_embeddings has %d entries but engram_layer_ids has %d", label, n_emb,
                    c->n_layers);
    if ((st = key_int(o, "engram_max_ngram_size", 2, NGRAM_HASH_MAX_NGRAM, &c->max_ngram_size, label,
                      err, errlen)) ||
        (st = key_i64(o, "engram_vocab_size", 1, JSON_INT_MAX, &c->vocab_size, label, err, errlen)) ||
        (st = key_int(o, "engram_n_heads", 1, NGRAM_HASH_MAX_HEADS, &c->n_heads, label, err, errlen)) ||
        (st = key_int(o, "engram_head_dim", 32, 65536, &c->head_dim, label, err, errlen)))
        return st;
    long total = (long)c->n_layers * (c->max_ngram_size - 1) * c->n_heads;
    if (total > MAX_TOTAL_HEADS)
        return err_set(err, errlen, ENGRAM_V41_ECONFIG,
                    "%s: engram_n_heads %d x (engram_max_ngram_size-1) x %d layers = %ld hash heads, over %d",
                    label, c->n_heads, c->n_layers, total, MAX_TOTAL_HEADS);
    if (c->head_dim % 32)
        return err_set(err, errlen, ENGRAM_V41_ECONFIG,
                    "%s: engram_head_dim %d is not a multiple of 32 (one ue8m0 scale per 32 values)",
                    label, c->head_dim);

    /* engram_pad_token_id, or its alias engram_pad_id; both must agree */
    const cJSON *p1 = cJSON_GetObjectItemCaseSensitive(o, "engram_pad_token_id");
    const cJSON *p2 = cJSON_GetObjectItemCaseSensitive(o, "engram_pad_id");
    if (p1 && cJSON_IsNull(p1)) p1 = NULL;
    if (p2 && cJSON_IsNull(p2)) p2 = NULL;
    if (!p1 && !p2)
        return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: missing key engram_pad_token_id", label);
    if (p1 && (st = key_i64(o, "engram_pad_token_id", 0, JSON_INT_MAX, &c->pad_token_id, label, err,
                            errlen)))
        return st;
    if (p2 && (st = key_i64(o, "engram_pad_id", 0, JSON_INT_MAX, p1 ? &v : &c->pad_token_id, label,
                            err, errlen)))
        return st;
    if (p1 && p2 && v != c->pad_token_id)
        return err_set(err, errlen, ENGRAM_V41_EMISMATCH,
                    "%s: engram_pad_token_id %lld and engram_pad_id %lld disagree", label,
                    (long long)c->pad_token_id, (long long)v);

    if ((st = key_i64(o, "engram_compressed_vocab_size", 1, JSON_INT_MAX, &c->compressed_vocab_size,
                      label, err, errlen)) ||
        (st = key_int(o, "hc_mult", 1, ENGRAM_V41_MAX_HC, &c->hc_mult, label, err, errlen)))
        return st;
    for (int i = 0; i < c->max_ngram_size - 1; i++) c->vocab_starts[i] = c->vocab_size;
    return ENGRAM_V41_OK;
}

int engram_v41_config_parse(const char *json, size_t len, const char *label, engram_v41_config *c,
                            char *err, size_t errlen) {
    if (!label) label = "config.json";
    memset(c, 0, sizeof *c);
    if (!json) return err_set(err, errlen, ENGRAM_V41_EJSON, "%s: no text", label);
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return err_set(err, errlen, ENGRAM_V41_EJSON, "%s: not a JSON object", label);
    }
    const cJSON *o = root;
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    if (cJSON_IsObject(tc) && cJSON_GetObjectItemCaseSensitive(tc, "engram_layer_ids")) o = tc;
    int st;
    if (!cJSON_GetObjectItemCaseSensitive(o, "engram_layer_ids"))
        st = err_set(err, errlen, ENGRAM_V41_ECONFIG,
                  "%s: missing key engram_layer_ids (in text_config or at top level)", label);
    else
        st = parse_object(o, label, c, err, errlen);
    cJSON_Delete(root);
    if (st) memset(c, 0, sizeof *c);
    return st;
}

ngram_hash_config engram_v41_hash_config(const engram_v41_config *c, int64_t compressed_vocab_size,
                                         int64_t compressed_pad_id) {
    return (ngram_hash_config){
        .engram_vocab_size = c->vocab_starts,
        .max_ngram_size = c->max_ngram_size,
        .n_embed_per_ngram = (int64_t)c->n_heads * c->head_dim,
        .n_head_per_ngram = c->n_heads,
        .layer_ids = c->layer_ids,
        .n_layers = c->n_layers,
        .pad_id = c->pad_token_id,
        .seed = 0,
        .kernel_size = 1,
        .hc_mult = c->hc_mult,
        .compressed_vocab_size = compressed_vocab_size,
        .compressed_pad_id = compressed_pad_id,
    };
}

int engram_v41_hash_create(const engram_v41_config *c, const engram_v41_tokenizer *tok,
                           const char *label, ngram_hash **out, char *err, size_t errlen) {
    if (!label) label = "config.json";
    if (!out) return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: out is NULL", label);
    *out = NULL;
    if (!c || c->n_layers < 1)
        return err_set(err, errlen, ENGRAM_V41_ECONFIG, "%s: no parsed engram config", label);
    const int64_t vc_stated = c->compressed_vocab_size;
    int64_t cpad;
    if (tok) {
        if (tok->vc != vc_stated)
            return err_set(err, errlen, ENGRAM_V41_EMISMATCH,
                        "%s: engram_compressed_vocab_size is %lld but the tokenizer compresses to %lld",
                        label, (long long)vc_stated, (long long)tok->vc);
        if (!tok->lookup || c->pad_token_id >= tok->n)
            return err_set(err, errlen, ENGRAM_V41_EMISMATCH,
                        "%s: engram_pad_token_id %lld is outside the tokenizer's %lld ids", label,
                        (long long)c->pad_token_id, (long long)tok->n);
        cpad = tok->lookup[c->pad_token_id];
        if (cpad < 0 || cpad >= tok->vc)
            return err_set(err, errlen, ENGRAM_V41_EMISMATCH,
                        "%s: engram_pad_token_id %lld compresses to %lld, outside [0, %lld)", label,
                        (long long)c->pad_token_id, (long long)cpad, (long long)tok->vc);
    } else {
        cpad = c->pad_token_id;
        if (cpad >= vc_stated)
            return err_set(err, errlen, ENGRAM_V41_EMISMATCH,
                        "%s: engram_pad_token_id %lld is not below engram_compressed_vocab_size %lld "
                        "(without a tokenizer it stands for its own compressed id)",
                        label, (long long)cpad, (long long)vc_stated);
    }
    ngram_hash_config hc = engram_v41_hash_config(c, vc_stated, cpad);
    char herr[256];
    ngram_hash *h = NULL;
    int hs = ngram_hash_create(&hc, &h, herr, sizeof herr);
    if (hs != NGRAM_HASH_OK)
        return err_set(err, errlen, hs == NGRAM_HASH_ENOMEM ? ENGRAM_V41_ENOMEM : ENGRAM_V41_ECONFIG,
                    "%s: engram hash: %s", label, herr);
    for (int li = 0; li < c->n_layers; li++) {
        int64_t rows = ngram_hash_table_rows(h, li);
        if (rows != c->num_embeddings[li]) {
            ngram_hash_destroy(h);
            return err_set(err, errlen, ENGRAM_V41_EMISMATCH,
                        "%s: engram_num_embeddings[%d] is %lld but engram_vocab_size %lld, "
                        "engram_n_heads %d and engram_max_ngram_size %d give %lld rows for layer %lld",
                        label, li, (long long)c->num_embeddings[li], (long long)c->vocab_size,
                        c->n_heads, c->max_ngram_size, (long long)rows, (long long)c->layer_ids[li]);
        }
    }
    *out = h;
    return ENGRAM_V41_OK;
}
