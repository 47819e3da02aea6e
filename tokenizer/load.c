/* Loading: tokenizer.json (checked as UTF-8, parsed by cJSON, each section
 * handed to the stage that owns it) and tokenizer_config.json (bos/eos and
 * the post-processor transformers builds for Llama-style tokenizers), plus
 * the JSON and component plumbing the stages' loaders share. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"
#include "base/util.h"

#include <assert.h>
#include <stdio.h>
#include <sys/stat.h>

char *tok__dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

const char *tok__jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

bool tok__jbool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static void component_clear(component *k) {
    for (size_t i = 0; i < k->n_sub; i++) component_clear(&k->sub[i]);
    free(k->sub);
    tok__pattern_free(&k->pat);
    free(k->content);
}

void tok__component_free(component *k) {
    if (!k) return;
    component_clear(k);
    free(k);
}

/* A Sequence component: f loads each element of arr into k->sub. */
static int load_seq(loadctx *c, const cJSON *arr, component *k, int depth, component_loader f,
                    const char *what) {
    if (depth > TK_MAX_DEPTH) return tok__fail(c, TOKENIZER_ERR_PARSE, "%s nested too deeply", what);
    if (!cJSON_IsArray(arr)) return tok__fail(c, TOKENIZER_ERR_PARSE, "%s Sequence needs an array", what);
    int n = cJSON_GetArraySize(arr);
    k->type = 0; /* every *_SEQ is 0 */
    k->sub = calloc(n ? (size_t)n : 1, sizeof *k->sub);
    if (!k->sub) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        int rc = f(c, e, &k->sub[k->n_sub], depth + 1);
        k->n_sub++;
        if (rc) return rc;
    }
    return 0;
}

int tok__load_type(loadctx *c, const cJSON *j, component *k, int depth, component_loader f,
                   const char *what, const char *seq_key, const char **type) {
    *type = tok__jstr(j, "type");
    if (!*type) return tok__fail(c, TOKENIZER_ERR_PARSE, "%s without a type", what);
    if (strcmp(*type, "Sequence")) return 1;
    return load_seq(c, cJSON_GetObjectItemCaseSensitive(j, seq_key), k, depth, f, what);
}

int tok__set_content(loadctx *c, component *k, const char *s) {
    if (!s) return tok__fail(c, TOKENIZER_ERR_PARSE, "missing string field");
    k->content_len = strlen(s);
    k->content = tok__dup_n(s, k->content_len);
    if (!k->content) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    return 0;
}

static int parse_prepend_scheme(loadctx *c, const cJSON *j) {
    const char *s = tok__jstr(j, "prepend_scheme");
    if (!s) return tok__jbool(j, "add_prefix_space", true) ? PREPEND_ALWAYS : PREPEND_NEVER;
    if (!strcmp(s, "always")) return PREPEND_ALWAYS;
    if (!strcmp(s, "first")) return PREPEND_FIRST;
    if (!strcmp(s, "never")) return PREPEND_NEVER;
    return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported prepend_scheme '%s'", s);
}

int tok__load_replacement(loadctx *c, const cJSON *j, component *k) {
    const char *r = tok__jstr(j, "replacement");
    int32_t cp;
    if (!r || !*r || utf8_decode((const uint8_t *)r, strlen(r), &cp) != strlen(r))
        return tok__fail(c, TOKENIZER_ERR_PARSE, "Metaspace replacement must be one character");
    k->replacement_cp = cp;
    if (tok__set_content(c, k, r)) return c->status;
    int s = parse_prepend_scheme(c, j);
    if (s < 0) return s;
    k->prepend_scheme = s;
    k->flag_a = tok__jbool(j, "split", true);
    return 0;
}

/* Loads an optional component; JSON null means none. */
static int load_optional(loadctx *c, const cJSON *root, const char *key, component_loader f,
                         component **out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    *out = NULL;
    if (!j || cJSON_IsNull(j)) return 0;
    if (!cJSON_IsObject(j)) return tok__fail(c, TOKENIZER_ERR_PARSE, "%s must be an object", key);
    component *k = calloc(1, sizeof *k);
    if (!k) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    *out = k;
    return f(c, j, k, 0);
}

static int32_t find_id(const tokenizer *t, const char *s) {
    return s ? tokenizer_token_to_id(t, s, strlen(s)) : -1;
}

/* bos_token / eos_token of tokenizer_config.json: a string or an
 * AddedToken object. */
static const char *config_token(const cJSON *cfg, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return tok__jstr(v, "content");
    return NULL;
}

/* transformers' LlamaTokenizerFast.update_post_processor: the template
 * becomes [bos] $A [eos] after add_bos_token / add_eos_token. */
static int apply_config(loadctx *c, tokenizer *t, const char *text, size_t len) {
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    if (!cfg) return tok__fail(c, TOKENIZER_ERR_PARSE, "tokenizer_config.json is not valid JSON");
    int rc = 0;
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    int32_t bos_id = find_id(t, bos), eos_id = find_id(t, eos);
    if (bos_id >= 0) t->bos_id = bos_id;
    if (eos_id >= 0) t->eos_id = eos_id;
    const char *cls = tok__jstr(cfg, "tokenizer_class");
    if (cls && (!strcmp(cls, "LlamaTokenizerFast") || !strcmp(cls, "LlamaTokenizer") ||
                !strcmp(cls, "GemmaTokenizerFast") || !strcmp(cls, "GemmaTokenizer"))) {
        bool add_bos = tok__jbool(cfg, "add_bos_token", true), add_eos = tok__jbool(cfg, "add_eos_token", false);
        int32_t ids[3];
        size_t n = 0;
        if (add_bos && bos_id < 0) rc = tok__fail(c, TOKENIZER_ERR_PARSE, "add_bos_token without a known bos_token");
        else if (add_eos && eos_id < 0) rc = tok__fail(c, TOKENIZER_ERR_PARSE, "add_eos_token without a known eos_token");
        else {
            if (add_bos) ids[n++] = bos_id;
            ids[n++] = -1;
            if (add_eos) ids[n++] = eos_id;
            rc = tok__post_set(c, &t->post, ids, n);
        }
    }
    cJSON_Delete(cfg);
    return rc;
}

/* Grows the per-id arrays of the model if added tokens extend the id space. */
static int grow_ids(loadctx *c, tokenizer *t) {
    size_t old = t->n_ids, n = old;
    for (size_t i = 0; i < t->n_added; i++)
        if ((size_t)t->added[i].id + 1 > n) n = (size_t)t->added[i].id + 1;
    if (n <= old) return 0;
    /* n_ids grows last: tokenizer_destroy frees tok[0..n_ids), which must
     * be allocated and set even when a realloc here fails (fault injection) */
    char **tok = realloc(t->tok, n * sizeof *tok);
    if (!tok) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    t->tok = tok;
    memset(t->tok + old, 0, (n - old) * sizeof *tok);
    uint32_t *tl = realloc(t->tok_len, n * sizeof *tl);
    if (!tl) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    t->tok_len = tl;
    memset(t->tok_len + old, 0, (n - old) * sizeof *tl);
    t->n_ids = n;
    return 0;
}

/* What follows from the loaded parts: bos/eos from the post-processor, the
 * streaming fast path, the word cache. */
static int finish(loadctx *c, tokenizer *t) {
    for (size_t i = 0; i < t->post.n; i++)
        if (t->post.ids[i] >= 0 && (size_t)t->post.ids[i] >= t->n_ids)
            return tok__fail(c, TOKENIZER_ERR_PARSE, "post_processor id %d outside the vocabulary",
                             t->post.ids[i]);
    /* bos/eos from the template: a special token before / after $A */
    for (size_t i = 0; i < t->post.n; i++) {
        if (t->post.ids[i] == -1) {
            if (i > 0) t->bos_id = t->post.ids[i - 1];
            if (i + 1 < t->post.n) t->eos_id = t->post.ids[i + 1];
            break;
        }
    }
    t->dec_bytelevel_only = t->decoder && t->decoder->type == DEC_BYTELEVEL;
    t->cache = calloc(TK_CACHE_SLOTS, sizeof *t->cache);
    if (!t->cache) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    for (int i = 0; i < TK_CACHE_STRIPES; i++) pthread_mutex_init(&t->cache_lock[i], NULL);
    return 0;
}

int tokenizer_load_json(const char *json, size_t len, tokenizer **out, char *err, size_t errlen) {
    assert(out && (json || len == 0));
    loadctx c = {err, errlen, 0};
    *out = NULL;
    tok__bl_init();
    /* Strings from the file end up inside the text that the regexes scan
     * without UTF checks (Replace, Prepend), and in decoded text: like HF
     * (serde), refuse a file that is not UTF-8. */
    if (!utf8_valid(json, len)) return tok__fail(&c, TOKENIZER_ERR_PARSE, "tokenizer.json is not valid UTF-8");
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) return tok__fail(&c, TOKENIZER_ERR_PARSE, "tokenizer.json is not valid JSON");
    tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        cJSON_Delete(root);
        return tok__fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
    }
    t->bos_id = t->eos_id = t->unk_id = -1;
    size_t model_size = 0;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(root)) {
        tok__fail(&c, TOKENIZER_ERR_PARSE, "tokenizer.json must be an object");
        goto fail;
    }
    if (tok__model_scan(&c, t, model, &model_size)) goto fail;
    if (load_optional(&c, root, "normalizer", tok__load_normalizer, &t->normalizer) ||
        load_optional(&c, root, "pre_tokenizer", tok__load_pretokenizer, &t->pre) ||
        load_optional(&c, root, "decoder", tok__load_decoder, &t->decoder) ||
        tok__post_load(&c, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), &t->post, 0))
        goto fail;
    t->tok = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->tok);
    t->tok_len = calloc(t->n_ids ? t->n_ids : 1, sizeof *t->tok_len);
    if (!t->tok || !t->tok_len) {
        tok__fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if (tok__model_fill(&c, t, model) ||
        tok__added_load(&c, t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), model_size) ||
        grow_ids(&c, t) || tok__added_finish(&c, t) || finish(&c, t))
        goto fail;
    cJSON_Delete(root);
    *out = t;
    return 0;
fail:
    cJSON_Delete(root);
    tokenizer_destroy(t);
    return c.status ? c.status : TOKENIZER_ERR_PARSE;
}

int tokenizer_load(const char *path, tokenizer **out, char *err, size_t errlen) {
    loadctx c = {err, errlen, 0};
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return tok__fail(&c, TOKENIZER_ERR_IO, "%s: no such file or directory", path);
    bool is_dir = S_ISDIR(st.st_mode);
    size_t plen = strlen(path);
    char *file = malloc(plen + 32);
    if (!file) return tok__fail(&c, TOKENIZER_ERR_NOMEM, "out of memory");
    if (is_dir) snprintf(file, plen + 32, "%s/tokenizer.json", path);
    else snprintf(file, plen + 32, "%s", path);
    size_t len;
    char msg[512];
    char *text = util_read_file(file, TK_MAX_JSON_BYTES, &len, msg, sizeof msg);
    if (!text) {
        free(file);
        return tok__fail(&c, TOKENIZER_ERR_IO, "%s", msg);
    }
    int rc = tokenizer_load_json(text, len, out, msg, sizeof msg);
    free(text);
    if (rc) {
        tok__fail(&c, rc, "%s: %s", file, msg);
        free(file);
        return rc;
    }
    if (is_dir) {
        snprintf(file, plen + 32, "%s/tokenizer_config.json", path);
        if (stat(file, &st) == 0) {
            text = util_read_file(file, TK_MAX_JSON_BYTES, &len, msg, sizeof msg);
            rc = text ? apply_config(&c, *out, text, len) : tok__fail(&c, TOKENIZER_ERR_IO, "%s", msg);
            free(text);
            if (rc) {
                /* prefix the file name */
                snprintf(msg, sizeof msg, "%s", err ? err : "");
                err_set(err, errlen, rc, "%s: %s", file, msg);
                tokenizer_destroy(*out);
                *out = NULL;
            }
        }
    }
    free(file);
    return rc;
}
