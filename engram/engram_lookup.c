/* Compressed-tokenizer table from a tokenizer (see engram_lookup.h). */
#include "engram/engram_lookup.h"

#include <stdlib.h>

#include "base/err.h"
#include "engram/ngram_hash.h"

int engram_lookup_build(const tokenizer *tok, int64_t **lookup, int64_t *n_out, int64_t *vc, char *err,
                        size_t errlen) {
    size_t n = tokenizer_vocab_size(tok);
    ngram_hash_token_text *texts = calloc(n ? n : 1, sizeof(*texts));
    char **decoded = calloc(n ? n : 1, sizeof(char *));
    int64_t *lk = malloc((n ? n : 1) * sizeof(int64_t));
    int rc = texts && decoded && lk ? 0 : -1;
    if (rc) err_set(err, errlen, rc, "out of memory");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        int32_t id = (int32_t)i;
        size_t len = 0, raw_len = 0;
        int drc = tokenizer_decode(tok, &id, 1, false, &decoded[i], &len);
        if (drc != TOKENIZER_OK) {
            rc = err_set(err, errlen, -1, "tokenizer cannot decode token %zu: %s", i, tokenizer_status_str(drc));
            break;
        }
        const char *raw = tokenizer_id_to_token(tok, id, &raw_len);
        texts[i] = (ngram_hash_token_text){.text = decoded[i], .text_len = len, .raw = raw,
                                           .raw_len = raw ? raw_len : 0};
    }
    if (rc == 0) {
        int hs = ngram_hash_compress_build(texts, n, lk, vc);
        if (hs != NGRAM_HASH_OK) rc = err_set(err, errlen, -1, "compressed tokenizer: %s", ngram_hash_status_str(hs));
    }
    for (size_t i = 0; decoded && i < n; i++) free(decoded[i]);
    free(decoded);
    free(texts);
    if (rc) {
        free(lk);
        lk = NULL;
    }
    *lookup = lk;
    *n_out = (int64_t)n;
    return rc;
}
