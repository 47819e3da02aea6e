/* libFuzzer target: encode arbitrary bytes with the project's trained
 * tokenizer (tests/fixtures/tokenizers/trained, found through
 * ENGRAM_SOURCE_DIR or next to this source file), then check that decoding
 * works and that incremental decoding adds up to the whole decode. The
 * first input byte selects add_special / skip_special. */
#include "tokenizer/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char path[4096], err[512];
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    if (src) snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/trained", src);
    else snprintf(path, sizeof path, "%s/../fixtures/tokenizers/trained", __FILE__);
    if (!src) { /* __FILE__ is .../tests/fuzz/fuzz_tokenizer_encode.c: drop the file name */
        char *slash = strstr(path, "/fuzz_tokenizer_encode.c");
        if (slash) memmove(slash, slash + strlen("/fuzz_tokenizer_encode.c"),
                           strlen(slash + strlen("/fuzz_tokenizer_encode.c")) + 1);
    }
    if (tokenizer_load(path, &tok, err, sizeof err)) {
        fprintf(stderr, "fuzz_tokenizer_encode: %s (set ENGRAM_SOURCE_DIR)\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    bool add_special = data[0] & 1, skip_special = data[0] & 2;
    int32_t *ids;
    size_t n;
    int rc = tokenizer_encode(tok, (const char *)data + 1, size - 1, add_special, &ids, &n);
    if (rc) {
        if (rc != TOKENIZER_ERR_INVALID_UTF8 && rc != TOKENIZER_ERR_LIMIT) abort();
        return 0;
    }
    char *whole;
    size_t len;
    if (tokenizer_decode(tok, ids, n, skip_special, &whole, &len)) abort();
    tokenizer_stream *s;
    if (tokenizer_stream_create(tok, skip_special, &s)) abort();
    size_t off = 0;
    for (size_t i = 0; i <= n; i++) {
        char *piece;
        size_t plen;
        rc = i < n ? tokenizer_stream_step(s, ids[i], &piece, &plen) : tokenizer_stream_flush(s, &piece, &plen);
        if (rc) abort();
        /* each piece continues the whole decode exactly */
        if (off + plen > len || memcmp(whole + off, piece, plen)) abort();
        off += plen;
        free(piece);
    }
    if (off != len) abort();
    tokenizer_stream_destroy(s);
    free(whole);
    free(ids);
    return 0;
}
