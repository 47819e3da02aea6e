/* Hashing cost of Engram per token: ngram_hash_rows (compressed ids in, every
 * layer's row ids out, history carried across chunks) on one thread, for the
 * demo layout (ENGRAM.md section 2, Vc 98627 = the DeepSeek-V3 tokenizer's)
 * and the DeepSeek-V4.1-Flash layout (section 7, Vc 99092, parsed by
 * engram/engram_v41). Uniform random compressed ids; the best of several runs;
 * one line per config.
 *
 *   build/bench-hash [TOKENS] [RUNS] [CHUNK]   (default 1048576 7 4096) */
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram_v41.h"
#include "engram/ngram_hash.h"
#include "base/util.h"

static const char V41_CONFIG[] =
    "{\"text_config\":{\"hc_mult\":4,\"engram_layer_ids\":[1,14],"
    "\"engram_num_embeddings\":[384006168,384016682],\"engram_max_ngram_size\":4,"
    "\"engram_vocab_size\":16000000,\"engram_n_heads\":8,\"engram_head_dim\":256,"
    "\"engram_pad_token_id\":2,\"engram_compressed_vocab_size\":99092}}";

/* Times ngram_hash_rows over n ids in chunks; prints one line. */
static void bench(const char *name, const ngram_hash *h, int64_t vc, size_t n, int runs, size_t chunk) {
    const int L = ngram_hash_n_layers(h), H = ngram_hash_n_heads(h);
    int64_t *cids = malloc(n * sizeof *cids);                              /* (n) */
    int64_t *rows = malloc((size_t)L * chunk * (size_t)H * sizeof *rows); /* (L, chunk, H) */
    if (!cids || !rows) {
        fprintf(stderr, "bench-hash: out of memory\n");
        exit(1);
    }
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        cids[i] = (int64_t)(x % (uint64_t)vc);
    }
    double best = 1e30;
    int64_t sink = 0;
    for (int r = 0; r < runs; r++) {
        ngram_hash_history hist;
        ngram_hash_history_init(h, &hist);
        double t0 = util_now();
        for (size_t i = 0; i < n; i += chunk) {
            size_t m = n - i < chunk ? n - i : chunk;
            ngram_hash_rows(h, &hist, cids + i, m, rows);
            sink += rows[0] + rows[(size_t)L * m * H - 1];
        }
        double dt = util_now() - t0;
        if (dt < best) best = dt;
    }
    double ns = best * 1e9 / (double)n;
    printf("%-5s layers %d, heads/layer %2d, Vc %" PRId64 ": %7.1f ns/token (%.2f ns/row), "
           "best of %d runs over %zu tokens, chunks of %zu, 1 thread [%d]\n",
           name, L, H, vc, ns, ns / (L * H), runs, n, chunk, (int)(sink & 1));
    free(cids);
    free(rows);
}

int main(int argc, char **argv) {
    long n = 1L << 20, runs = 7, chunk = 4096;
    if ((argc > 1 && util_parse_long(argv[1], 1, LONG_MAX, &n)) ||
        (argc > 2 && util_parse_long(argv[2], 1, INT_MAX, &runs)) ||
        (argc > 3 && util_parse_long(argv[3], 1, LONG_MAX, &chunk))) {
        fprintf(stderr, "usage: bench-hash [TOKENS] [RUNS] [CHUNK]\n");
        return 2;
    }
    char err[512];

    /* demo layout; the compressed pad only changes the first positions */
    ngram_hash_config dc = ngram_hash_default_config();
    dc.compressed_vocab_size = 98627;
    dc.compressed_pad_id = 2;
    ngram_hash *demo = NULL;
    if (ngram_hash_create(&dc, &demo, err, sizeof err) != NGRAM_HASH_OK) {
        fprintf(stderr, "bench-hash: demo config: %s\n", err);
        return 1;
    }
    bench("demo", demo, dc.compressed_vocab_size, (size_t)n, (int)runs, (size_t)chunk);
    ngram_hash_destroy(demo);

    engram_v41_config vc;
    ngram_hash *v41 = NULL;
    if (engram_v41_config_parse(V41_CONFIG, sizeof V41_CONFIG - 1, "v41", &vc, err, sizeof err) ||
        engram_v41_hash_create(&vc, NULL, "v41", &v41, err, sizeof err)) {
        fprintf(stderr, "bench-hash: %s\n", err);
        return 1;
    }
    bench("v4.1", v41, vc.compressed_vocab_size, (size_t)n, (int)runs, (size_t)chunk);
    ngram_hash_destroy(v41);
    return 0;
}
