/* Hugging Face tokenizer.json in C. This file is the loaded object: status
 * strings, destroy, and the id <-> token lookups over its vocabulary maps.
 * The stages live beside it (load, normalize, pretokenize, bpe, added, post,
 * encode, decode); each mirrors the Rust code of `tokenizers` so that ids
 * and decoded text are byte-identical, and comments name the HF function a
 * piece of code follows. */
#include "tokenizer/tokenizer_internal.h"

const char *tokenizer_status_str(int status) {
    switch (status) {
    case TOKENIZER_OK: return "ok";
    case TOKENIZER_ERR_IO: return "I/O error";
    case TOKENIZER_ERR_PARSE: return "parse error";
    case TOKENIZER_ERR_UNSUPPORTED: return "unsupported component";
    case TOKENIZER_ERR_NOMEM: return "out of memory";
    case TOKENIZER_ERR_INVALID_UTF8: return "invalid UTF-8";
    case TOKENIZER_ERR_LIMIT: return "limit exceeded";
    case TOKENIZER_ERR_INVALID_ARG: return "invalid argument";
    default: return "unknown status";
    }
}

int tok__strmap_init(strmap *m, size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    m->slot = malloc(cap * sizeof *m->slot);
    if (!m->slot) return -1;
    memset(m->slot, 0xff, cap * sizeof *m->slot);
    m->mask = cap - 1;
    return 0;
}

int tok__strmap_put(strmap *m, char *const *strs, const uint32_t *lens, int32_t id) {
    size_t i = tok__hash_bytes(strs[id], lens[id]) & m->mask;
    for (;;) {
        int32_t o = m->slot[i];
        if (o < 0) {
            m->slot[i] = id;
            return 0;
        }
        if (lens[o] == lens[id] && memcmp(strs[o], strs[id], lens[id]) == 0) {
            m->slot[i] = id; /* HF: later entries of a JSON object win */
            return 1;
        }
        i = (i + 1) & m->mask;
    }
}

void tokenizer_destroy(tokenizer *t) {
    if (!t) return;
    if (t->tok)
        for (size_t i = 0; i < t->n_ids; i++) free(t->tok[i]);
    free(t->tok);
    free(t->tok_len);
    free(t->vocab.slot);
    free(t->merges.e);
    free(t->cont_prefix);
    free(t->end_suffix);
    free(t->cp_id);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].pattern);
    }
    free(t->added);
    free(t->added_of_id);
    free(t->added_map.slot);
    free(t->added_str);
    free(t->added_len);
    tok__matcher_free(&t->m_raw);
    tok__matcher_free(&t->m_norm);
    tok__component_free(t->normalizer);
    tok__component_free(t->pre);
    tok__component_free(t->decoder);
    free(t->post.ids);
    if (t->cache) {
        for (int i = 0; i < TK_CACHE_STRIPES; i++) pthread_mutex_destroy(&t->cache_lock[i]);
        free(t->cache);
    }
    free(t);
}

size_t tokenizer_vocab_size(const tokenizer *t) { return t->n_ids; }

int32_t tokenizer_token_to_id(const tokenizer *t, const char *s, size_t n) {
    int32_t id = tok__strmap_get(&t->added_map, t->added_str, t->added_len, s, n);
    if (id >= 0) return id;
    return tok__strmap_get(&t->vocab, t->tok, t->tok_len, s, n);
}

const char *tokenizer_id_to_token(const tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= t->n_ids) return NULL;
    if (t->added_str[id]) {
        *len = t->added_len[id];
        return t->added_str[id];
    }
    if (!t->tok[id]) return NULL;
    *len = t->tok_len[id];
    return t->tok[id];
}

bool tokenizer_is_special(const tokenizer *t, int32_t id) {
    if (id < 0 || (size_t)id >= t->n_ids || t->added_of_id[id] < 0) return false;
    return t->added[t->added_of_id[id]].special;
}

int32_t tokenizer_bos_id(const tokenizer *t) { return t->bos_id; }
int32_t tokenizer_eos_id(const tokenizer *t) { return t->eos_id; }
