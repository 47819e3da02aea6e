/* Encoding, the pipeline of HF's encode: split the raw text at added tokens;
 * each stretch between them is normalized, split again at normalized added
 * tokens, pre-tokenized, and each pre-token goes through the BPE model; the
 * post-processor then adds its special tokens. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"

#include <assert.h>

/* One stretch of text between added tokens: normalize, split at normalized
 * added tokens, pre-tokenize, BPE. */
static int encode_text(encoder *e, const char *s, size_t n, bool first) {
    const tokenizer *t = e->t;
    strbuf *ns = &e->norm;
    ns->len = 0;
    if (strbuf_add(ns, s, n)) return TOKENIZER_ERR_NOMEM;
    if (t->normalizer) {
        int rc = tok__norm_apply(t->normalizer, ns, &e->nx, 0);
        if (rc) return rc;
    }
    e->segs2.n = 0;
    int rc = tok__added_split(t, &t->m_norm, ns->s, ns->len, &e->segs2);
    if (rc) return rc;
    for (size_t i = 0; i < e->segs2.n; i++) {
        segment g = e->segs2.v[i];
        if (g.added >= 0) {
            if ((rc = tok__ids_add(e, t->added[g.added].id))) return rc;
            continue;
        }
        e->arena.len = 0;
        if (strbuf_add(&e->arena, e->norm.s + g.s, g.e - g.s)) return TOKENIZER_ERR_NOMEM;
        e->a.n = 0;
        if ((rc = tok__pieces_add(&e->a, 0, g.e - g.s, first && g.s == 0))) return rc;
        if (t->pre && (rc = tok__pre_apply(e, t->pre, 0))) return rc;
        for (size_t j = 0; j < e->a.n; j++)
            if ((rc = tok__bpe_word(e, e->arena.s + e->a.v[j].off, e->a.v[j].len))) return rc;
    }
    return 0;
}

static void encoder_free(encoder *e) {
    pcre2_match_data_free(e->nx.md);
    free(e->nx.m.v);
    strbuf_free(&e->nx.tmp);
    strbuf_free(&e->arena);
    strbuf_free(&e->norm);
    free(e->a.v);
    free(e->b.v);
    free(e->segs.v);
    free(e->segs2.v);
    free(e->m2.v);
    free(e->sym);
    free(e->heap);
    free(e->ids);
}

int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids) {
    assert(t && ids && n_ids);
    *ids = NULL;
    *n_ids = 0;
    if (len > TK_MAX_INPUT_BYTES) return TOKENIZER_ERR_LIMIT;
    if (len && !text) return TOKENIZER_ERR_INVALID_ARG;
    if (!utf8_valid(text, len)) return TOKENIZER_ERR_INVALID_UTF8;
    encoder e = {0};
    e.t = t;
    e.nx.md = pcre2_match_data_create(1, NULL);
    int rc = e.nx.md ? 0 : TOKENIZER_ERR_NOMEM;
    if (!rc) rc = tok__added_split(t, &t->m_raw, text ? text : "", len, &e.segs);
    for (size_t i = 0; !rc && i < e.segs.n; i++) {
        segment g = e.segs.v[i];
        if (g.added >= 0) rc = tok__ids_add(&e, t->added[g.added].id);
        else rc = encode_text(&e, text + g.s, g.e - g.s, g.s == 0);
    }
    if (!rc && add_special && t->post.present) rc = tok__post_apply(&t->post, &e);
    if (!rc && !e.ids) {
        e.ids = malloc(sizeof *e.ids);
        if (!e.ids) rc = TOKENIZER_ERR_NOMEM;
    }
    if (!rc) {
        *ids = e.ids;
        *n_ids = e.n_ids;
        e.ids = NULL;
    }
    encoder_free(&e);
    return rc;
}
