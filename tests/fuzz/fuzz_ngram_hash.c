/* libFuzzer target for engram/ngram_hash: arbitrary bytes as text to normalize,
 * as a vocabulary to compress, or as configuration values to derive and hash
 * with. Accepted configs must give rows inside their layer's table. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram.h"

static int64_t take(const uint8_t **p, size_t *n, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes && *n; i++, (*p)++, (*n)--) v = (v << 8) | **p;
    return (int64_t)v;
}

static void fuzz_config(const uint8_t *p, size_t n) {
    int64_t vocab[NGRAM_HASH_MAX_NGRAM], layers[4], ids[16];
    ngram_hash_config c = ngram_hash_default_config();
    c.max_ngram_size = (int)(take(&p, &n, 1) % 20) - 1;
    c.n_head_per_ngram = (int)(take(&p, &n, 1) % 20) - 1;
    c.n_layers = (int)(take(&p, &n, 1) % 5);
    c.n_embed_per_ngram = take(&p, &n, 2) - 100;
    for (int i = 0; i < NGRAM_HASH_MAX_NGRAM; i++) vocab[i] = take(&p, &n, 5) - 1000; /* < 2^40 */
    for (int i = 0; i < 4; i++) layers[i] = take(&p, &n, 2) - 10;
    c.engram_vocab_size = vocab;
    c.layer_ids = layers;
    c.seed = take(&p, &n, 8);
    c.kernel_size = (int)(take(&p, &n, 1)) - 1;
    c.hc_mult = (int)(take(&p, &n, 1)) - 1;
    c.pad_id = take(&p, &n, 2) - 1;
    c.compressed_vocab_size = take(&p, &n, 8);
    c.compressed_pad_id = take(&p, &n, 1);
    int n_ids = 0;
    while (n_ids < 16 && n) ids[n_ids++] = take(&p, &n, 8);

    ngram_hash *h = NULL;
    char err[256];
    if (ngram_hash_create(&c, &h, err, sizeof err) != NGRAM_HASH_OK) {
        if (h) abort();
        return;
    }
    const int L = ngram_hash_n_layers(h), H = ngram_hash_n_heads(h);
    int64_t *rows = malloc((size_t)L * 16 * H * sizeof *rows + 1);
    if (!rows) abort();
    /* compressed ids in range, as the engine hands them over */
    for (int i = 0; i < n_ids; i++) {
        ids[i] %= c.compressed_vocab_size;
        if (ids[i] < 0) ids[i] += c.compressed_vocab_size;
    }
    ngram_hash_history hist;
    ngram_hash_history_init(h, &hist);
    ngram_hash_rows(h, &hist, ids, (size_t)n_ids, rows);
    for (int li = 0; li < L; li++)
        for (int t = 0; t < n_ids; t++)
            for (int k = 0; k < H; k++) {
                int64_t r = rows[((size_t)li * n_ids + t) * H + k];
                if (r < 0 || r >= ngram_hash_table_rows(h, li)) abort();
            }
    free(rows);
    ngram_hash_destroy(h);
}

static void fuzz_vocab(const uint8_t *p, size_t n) {
    /* lines alternate text, raw */
    ngram_hash_token_text tok[64];
    size_t count = 0;
    const char *s = (const char *)p, *end = s + n;
    while (s < end && count < 64) {
        const char *a_end = memchr(s, '\n', (size_t)(end - s));
        if (!a_end) a_end = end;
        const char *b = a_end < end ? a_end + 1 : end;
        const char *b_end = b < end ? memchr(b, '\n', (size_t)(end - b)) : NULL;
        if (!b_end) b_end = end;
        tok[count].text = s;
        tok[count].text_len = (size_t)(a_end - s);
        tok[count].raw = b;
        tok[count].raw_len = (size_t)(b_end - b);
        count++;
        s = b_end < end ? b_end + 1 : end;
    }
    int64_t lookup[64], vc = -1;
    if (ngram_hash_compress_build(tok, count, lookup, &vc) == NGRAM_HASH_OK) {
        for (size_t i = 0; i < count; i++)
            if (lookup[i] < 0 || lookup[i] >= vc) abort();
        if (count && lookup[0] != 0) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    const uint8_t mode = data[0] % 3;
    data++, size--;
    if (mode == 0) {
        char *out = NULL;
        size_t len = 0;
        if (ngram_hash_normalize((const char *)data, size, &out, &len) == NGRAM_HASH_OK) {
            if (!out || out[len] != 0) abort();
            free(out);
        }
    } else if (mode == 1) {
        fuzz_vocab(data, size);
    } else {
        fuzz_config(data, size);
    }
    return 0;
}
