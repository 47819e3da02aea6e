/* bench-tokenize: encode throughput of tokenizer/ on one thread.
 * Usage: bench-tokenize --tokenizer DIR --text-file F [--doc-bytes N] [--seconds S]
 * The file is cut into documents of about N bytes at line ends (default:
 * the whole file is one document); documents are encoded one after the
 * other, repeatedly, for at least S seconds (default 3). Prints one JSON
 * line: bytes, tokens, seconds, MB/s (1e6 bytes). */
#include "tokenizer/tokenizer.h"
#include "base/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *dir = NULL, *file = NULL;
    size_t doc_bytes = 0;
    double min_seconds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokenizer")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--text-file")) file = argv[i + 1];
        else if (!strcmp(argv[i], "--doc-bytes")) doc_bytes = (size_t)atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) min_seconds = atof(argv[i + 1]);
        else {
            fprintf(stderr, "bench-tokenize: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir || !file) {
        fprintf(stderr, "usage: bench-tokenize --tokenizer DIR --text-file F [--doc-bytes N] [--seconds S]\n");
        return 2;
    }
    char err[512];
    tokenizer *t;
    double t0 = util_now();
    if (tokenizer_load(dir, &t, err, sizeof err)) {
        fprintf(stderr, "bench-tokenize: %s\n", err);
        return 1;
    }
    double load_s = util_now() - t0;
    size_t len;
    char *text = util_read_file(file, (size_t)1 << 30, &len, err, sizeof err);
    if (!text) {
        fprintf(stderr, "bench-tokenize: %s\n", err);
        return 1;
    }
    /* document boundaries: after the first '\n' at or past doc_bytes */
    size_t cap = 16, n_docs = 0, *ends = malloc(cap * sizeof *ends);
    for (size_t pos = 0; pos < len;) {
        size_t end = len;
        if (doc_bytes && pos + doc_bytes < len) {
            const char *nl = memchr(text + pos + doc_bytes, '\n', len - pos - doc_bytes);
            end = nl ? (size_t)(nl - text) + 1 : len;
        }
        if (n_docs == cap) ends = realloc(ends, (cap *= 2) * sizeof *ends);
        ends[n_docs++] = end;
        pos = end;
    }
    size_t bytes = 0, tokens = 0;
    double start = util_now(), el = 0;
    int rounds = 0;
    do {
        size_t pos = 0;
        for (size_t d = 0; d < n_docs; d++) {
            int32_t *ids;
            size_t n;
            int rc = tokenizer_encode(t, text + pos, ends[d] - pos, false, &ids, &n);
            if (rc) {
                fprintf(stderr, "bench-tokenize: encode: %s\n", tokenizer_status_str(rc));
                return 1;
            }
            free(ids);
            tokens += n;
            bytes += ends[d] - pos;
            pos = ends[d];
        }
        rounds++;
        el = util_now() - start;
    } while (el < min_seconds);
    printf("{\"impl\": \"engram\", \"bytes\": %zu, \"docs\": %zu, \"rounds\": %d, \"tokens\": %zu, "
           "\"seconds\": %.3f, \"mb_per_s\": %.2f, \"load_seconds\": %.3f}\n",
           bytes, n_docs, rounds, tokens, el, bytes / el / 1e6, load_s);
    free(ends);
    free(text);
    tokenizer_destroy(t);
    return 0;
}
