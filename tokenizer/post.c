/* The post-processor: everything we support (BertProcessing,
 * RobertaProcessing, TemplateProcessing's single template, ByteLevel and
 * Sequences of them) reduces to one template of ids in which -1 stands for
 * the encoded sequence; encode with add_special wraps its ids in it. */
#include "tokenizer/tokenizer_internal.h"

int tok__post_set(loadctx *c, post_template *t, const int32_t *ids, size_t n) {
    int32_t *p = malloc((n ? n : 1) * sizeof *p);
    if (!p) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    memcpy(p, ids, n * sizeof *p);
    free(t->ids);
    t->ids = p;
    t->n = n;
    t->present = true;
    return 0;
}

/* A heap copy of outer with its -1 replaced by inner[0..n_inner), its
 * length in *n; NULL out of memory. */
static int32_t *template_wrap(const post_template *outer, const int32_t *inner, size_t n_inner,
                              size_t *n) {
    *n = 0;
    for (size_t i = 0; i < outer->n; i++) *n += outer->ids[i] == -1 ? n_inner : 1;
    int32_t *p = malloc((*n ? *n : 1) * sizeof *p);
    if (!p) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < outer->n; i++) {
        if (outer->ids[i] == -1) {
            if (n_inner) memcpy(p + k, inner, n_inner * sizeof *p);
            k += n_inner;
        } else
            p[k++] = outer->ids[i];
    }
    return p;
}

/* Replaces the -1 of outer by acc (Sequence of processors: each wraps the
 * previous result). */
static int template_compose(loadctx *c, post_template *acc, const post_template *outer) {
    if (!acc->present) return tok__post_set(c, acc, outer->ids, outer->n);
    size_t n;
    int32_t *p = template_wrap(outer, acc->ids, acc->n, &n);
    if (!p) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    free(acc->ids);
    acc->ids = p;
    acc->n = n;
    return 0;
}

static int id_of_pair(loadctx *c, const cJSON *pair, int32_t *id) {
    const cJSON *v = cJSON_IsArray(pair) ? cJSON_GetArrayItem(pair, 1) : NULL;
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TK_MAX_ID)
        return tok__fail(c, TOKENIZER_ERR_PARSE, "post_processor: bad [token, id] pair");
    *id = (int32_t)v->valuedouble;
    return 0;
}

/* TemplateProcessing: the pieces of "single" (SpecialToken ids from
 * special_tokens, Sequence as -1) into t. */
static int load_template_processing(loadctx *c, const cJSON *j, post_template *t) {
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single"), *e;
    const cJSON *special = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    if (!cJSON_IsArray(single)) return tok__fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing needs 'single'");
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
    int rc = 0;
    cJSON_ArrayForEach(e, single) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
        const cJSON *sq = cJSON_GetObjectItemCaseSensitive(e, "Sequence");
        const cJSON *add = NULL;
        int32_t seq = -1;
        size_t n_add = 1;
        if (st) {
            const char *name = tok__jstr(st, "id");
            const cJSON *spec = name ? cJSON_GetObjectItemCaseSensitive(special, name) : NULL;
            add = cJSON_GetObjectItemCaseSensitive(spec, "ids");
            if (!cJSON_IsArray(add)) {
                rc = tok__fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing: unknown special token '%s'",
                               name ? name : "?");
                break;
            }
            n_add = (size_t)cJSON_GetArraySize(add);
        } else if (!sq) {
            rc = tok__fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing: bad piece in 'single'");
            break;
        }
        if (n + n_add > cap) {
            while (n + n_add > cap) cap *= 2;
            int32_t *p = realloc(ids, cap * sizeof *ids);
            if (!p) {
                rc = tok__fail(c, TOKENIZER_ERR_NOMEM, "out of memory");
                break;
            }
            ids = p;
        }
        if (!add) {
            ids[n++] = seq;
            continue;
        }
        const cJSON *v;
        cJSON_ArrayForEach(v, add) {
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= TK_MAX_ID) {
                rc = tok__fail(c, TOKENIZER_ERR_PARSE, "TemplateProcessing: bad id");
                break;
            }
            ids[n++] = (int32_t)v->valuedouble;
        }
        if (rc) break;
    }
    if (!rc) rc = tok__post_set(c, t, ids, n);
    free(ids);
    return rc;
}

int tok__post_load(loadctx *c, const cJSON *j, post_template *acc, int depth) {
    if (!j || cJSON_IsNull(j)) return 0;
    if (depth > TK_MAX_DEPTH) return tok__fail(c, TOKENIZER_ERR_PARSE, "post_processor nested too deeply");
    const char *type = tok__jstr(j, "type");
    if (!type) return tok__fail(c, TOKENIZER_ERR_PARSE, "post_processor without a type");
    if (!strcmp(type, "ByteLevel")) return 0;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "processors"), *e;
        if (!cJSON_IsArray(arr)) return tok__fail(c, TOKENIZER_ERR_PARSE, "post_processor Sequence needs processors");
        cJSON_ArrayForEach(e, arr) if (tok__post_load(c, e, acc, depth + 1)) return c->status;
        return 0;
    }
    post_template t = {0};
    int rc = 0;
    if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        int32_t ids[3] = {0, -1, 0};
        if (id_of_pair(c, cJSON_GetObjectItemCaseSensitive(j, "cls"), &ids[0]) ||
            id_of_pair(c, cJSON_GetObjectItemCaseSensitive(j, "sep"), &ids[2]))
            return c->status;
        rc = tok__post_set(c, &t, ids, 3);
    } else if (!strcmp(type, "TemplateProcessing"))
        rc = load_template_processing(c, j, &t);
    else
        return tok__fail(c, TOKENIZER_ERR_UNSUPPORTED, "unsupported post_processor type '%s'", type);
    if (!rc) rc = template_compose(c, acc, &t);
    free(t.ids);
    return rc;
}

int tok__post_apply(const post_template *t, encoder *e) {
    size_t n;
    int32_t *p = template_wrap(t, e->ids, e->n_ids, &n);
    if (!p) return TOKENIZER_ERR_NOMEM;
    free(e->ids);
    e->ids = p;
    e->n_ids = n;
    return 0;
}
