/* libFuzzer target: engram_v41_config_parse on arbitrary bytes. Accepted
 * configs must satisfy the ranges the rest relies on; small ones are also
 * derived (engram_v41_hash_create), and an accepted derivation must match
 * engram_num_embeddings and hash inside each layer's table. */
#include <stdint.h>
#include <stdlib.h>

#include "engram/engram_v41.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    engram_v41_config c;
    char err[512];
    if (engram_v41_config_parse((const char *)data, size, "fuzz", &c, err, sizeof err) != ENGRAM_V41_OK)
        return 0;
    if (c.n_layers < 1 || c.n_layers > ENGRAM_V41_MAX_LAYERS || c.max_ngram_size < 2 ||
        c.max_ngram_size > NGRAM_HASH_MAX_NGRAM || c.n_heads < 1 || c.head_dim < 32 || c.head_dim % 32 ||
        c.vocab_size < 1 || c.pad_token_id < 0 || c.compressed_vocab_size < 1 || c.hc_mult < 1)
        abort();
    for (int i = 0; i < c.n_layers; i++)
        if (c.num_embeddings[i] < 1 || c.layer_ids[i] < 0) abort();
    /* the prime search costs about ln(start) tests per head: keep runs short */
    if ((long)c.n_layers * (c.max_ngram_size - 1) * c.n_heads > 256 || c.vocab_size > ((int64_t)1 << 40))
        return 0;
    ngram_hash *h = NULL;
    if (engram_v41_hash_create(&c, NULL, "fuzz", &h, err, sizeof err) != ENGRAM_V41_OK) {
        if (h) abort();
        return 0;
    }
    ngram_hash_history hist;
    ngram_hash_history_init(h, &hist);
    const int64_t cids[3] = {0, c.compressed_vocab_size - 1, c.compressed_vocab_size / 2};
    const int H = ngram_hash_n_heads(h), L = ngram_hash_n_layers(h);
    int64_t *rows = malloc((size_t)L * 3 * (size_t)H * sizeof *rows);
    if (!rows) abort();
    ngram_hash_rows(h, &hist, cids, 3, rows);
    for (int li = 0; li < L; li++) {
        if (ngram_hash_table_rows(h, li) != c.num_embeddings[li]) abort();
        for (int k = 0; k < 3 * H; k++) {
            int64_t r = rows[(size_t)li * 3 * H + k];
            if (r < 0 || r >= c.num_embeddings[li]) abort();
        }
    }
    free(rows);
    ngram_hash_destroy(h);
    return 0;
}
