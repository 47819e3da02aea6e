/* engram-v41dump: hidden developer/test tool that exposes the DeepSeek-V4.1
 * Engram format (engram/engram_v41, engram/engram_fp8) to the differential
 * tests (tests/integration/test_engram_v41.py, test_badinput_engram_v41.py).
 * Not a user-facing command; its I/O formats serve the tests only:
 *   engram-v41dump config FILE [--tokenizer DIR] [--cids I,J,...]
 *       parse FILE (config.json), derive and check the hash tables; prints
 *       {"layer_ids","table_rows","multipliers","primes","offsets","heads",
 *        "head_dim","row_bytes","compressed_vocab_size","compressed_pad_id"}
 *       and, with --cids, "rows": (layers, n, heads) for those compressed ids.
 *   engram-v41dump decode --head-dim D (--packed FILE | --values FILE --scales FILE)
 *                         --out FILE [--rows R,R,...]
 *       decodes every row (or the listed ones, in order) to little-endian f32.
 * Errors: one line "error: ..." on stderr, exit status 1 (2 for usage). */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "engram/engram.h"
#include "engram/engram_v41.h"
#include "tokenizer/tokenizer.h"

static int usage(void) {
    fprintf(stderr, "usage: engram-v41dump config FILE [--tokenizer DIR] [--cids I,J,...]\n"
                    "       engram-v41dump decode --head-dim D (--packed FILE | --values FILE "
                    "--scales FILE) --out FILE [--rows R,...]\n");
    return 2;
}

/* Whole file into a heap buffer (*len bytes, NUL-terminated); NULL on failure. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = util_read_stream(f, len);
    fclose(f);
    return buf;
}

/* "1,2,3" into a new heap array; *n gets the count. NULL on a bad list. */
static int64_t *parse_list(const char *s, size_t *n) {
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int64_t *v = malloc(cap * sizeof *v);
    if (!v) return NULL;
    size_t k = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (errno || end == p || (*end != ',' && *end != 0)) {
            free(v);
            return NULL;
        }
        v[k++] = x;
        if (!*end) break;
        p = end + 1;
    }
    *n = k;
    return v;
}

static void print_i64s(const int64_t *v, size_t n) {
    printf("[");
    for (size_t i = 0; i < n; i++) printf("%s%" PRId64, i ? "," : "", v[i]);
    printf("]");
}

/* The compressed lookup of a tokenizer directory (ENGRAM.md section 3). */
static int build_lookup(const char *dir, int64_t **lookup, int64_t *n, int64_t *vc) {
    tokenizer *tok = NULL;
    char err[512];
    if (tokenizer_load(dir, &tok, err, sizeof err) != 0) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    size_t nv = tokenizer_vocab_size(tok);
    ngram_hash_token_text *texts = calloc(nv ? nv : 1, sizeof *texts);
    char **dec = calloc(nv ? nv : 1, sizeof *dec);
    *lookup = malloc((nv ? nv : 1) * sizeof **lookup);
    int rc = texts && dec && *lookup ? 0 : 1;
    for (size_t i = 0; rc == 0 && i < nv; i++) {
        int32_t id = (int32_t)i;
        size_t len = 0, raw_len = 0;
        if (tokenizer_decode(tok, &id, 1, false, &dec[i], &len) != 0) {
            fprintf(stderr, "error: %s: cannot decode token %zu\n", dir, i);
            rc = 1;
            break;
        }
        const char *raw = tokenizer_id_to_token(tok, id, &raw_len);
        texts[i] = (ngram_hash_token_text){dec[i], len, raw, raw ? raw_len : 0};
    }
    if (rc == 0 && ngram_hash_compress_build(texts, nv, *lookup, vc) != NGRAM_HASH_OK) {
        fprintf(stderr, "error: %s: compressed tokenizer failed\n", dir);
        rc = 1;
    }
    for (size_t i = 0; dec && i < nv; i++) free(dec[i]);
    free(dec);
    free(texts);
    tokenizer_destroy(tok);
    *n = (int64_t)nv;
    return rc;
}

static int cmd_config(int argc, char **argv) {
    if (argc < 3) return usage();
    const char *path = argv[2], *tokdir = NULL, *cids_arg = NULL;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
            tokdir = argv[++i];
        else if (!strcmp(argv[i], "--cids") && i + 1 < argc)
            cids_arg = argv[++i];
        else
            return usage();
    }
    size_t len;
    char *text = read_file(path, &len);
    if (!text) {
        fprintf(stderr, "error: cannot read %s\n", path);
        return 1;
    }
    engram_v41_config c;
    char err[512];
    int st = engram_v41_config_parse(text, len, path, &c, err, sizeof err);
    free(text);
    if (st) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    int64_t *lookup = NULL, n = 0, vc = 0;
    if (tokdir && build_lookup(tokdir, &lookup, &n, &vc)) {
        free(lookup);
        return 1;
    }
    engram_v41_tokenizer tok = {lookup, n, vc};
    ngram_hash *h = NULL;
    st = engram_v41_hash_create(&c, tokdir ? &tok : NULL, path, &h, err, sizeof err);
    if (st) {
        fprintf(stderr, "error: %s\n", err);
        free(lookup);
        return 1;
    }
    const int L = ngram_hash_n_layers(h), H = ngram_hash_n_heads(h), N = ngram_hash_max_ngram_size(h);
    printf("{\"layer_ids\":");
    print_i64s(c.layer_ids, (size_t)L);
    printf(",\"table_rows\":[");
    for (int li = 0; li < L; li++) printf("%s%" PRId64, li ? "," : "", ngram_hash_table_rows(h, li));
    printf("],\"multipliers\":[");
    for (int li = 0; li < L; li++) {
        printf("%s", li ? "," : "");
        print_i64s(ngram_hash_multipliers(h, li), (size_t)N);
    }
    printf("],\"primes\":[");
    for (int li = 0; li < L; li++) {
        printf("%s", li ? "," : "");
        print_i64s(ngram_hash_primes(h, li), (size_t)H);
    }
    printf("],\"offsets\":[");
    for (int li = 0; li < L; li++) {
        printf("%s", li ? "," : "");
        print_i64s(ngram_hash_offsets(h, li), (size_t)H);
    }
    ngram_hash_history hist;
    ngram_hash_history_init(h, &hist);
    printf("],\"heads\":%d,\"head_dim\":%d,\"row_bytes\":%zu,\"compressed_vocab_size\":%" PRId64
           ",\"compressed_pad_id\":%" PRId64,
           H, c.head_dim, engram_fp8_packed_row_bytes(c.head_dim), c.compressed_vocab_size,
           hist.ids[0]);
    int rc = 0;
    if (cids_arg) {
        size_t nt = 0;
        int64_t *cids = parse_list(cids_arg, &nt);
        int64_t *rows = cids ? malloc((size_t)L * nt * (size_t)H * sizeof *rows) : NULL;
        if (!rows) {
            fprintf(stderr, "error: bad --cids list\n");
            rc = 1;
        } else {
            ngram_hash_rows(h, &hist, cids, nt, rows);
            printf(",\"rows\":");
            print_i64s(rows, (size_t)L * nt * (size_t)H);
        }
        free(rows);
        free(cids);
    }
    printf("}\n");
    ngram_hash_destroy(h);
    free(lookup);
    return rc;
}

static int cmd_decode(int argc, char **argv) {
    const char *packed = NULL, *values = NULL, *scales = NULL, *out = NULL, *rows_arg = NULL;
    long head_dim = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) return usage();
        if (!strcmp(a, "--head-dim")) {
            if (util_parse_long(argv[++i], LONG_MIN, LONG_MAX, &head_dim)) return usage();
        } else if (!strcmp(a, "--packed")) {
            packed = argv[++i];
        } else if (!strcmp(a, "--values")) {
            values = argv[++i];
        } else if (!strcmp(a, "--scales")) {
            scales = argv[++i];
        } else if (!strcmp(a, "--out")) {
            out = argv[++i];
        } else if (!strcmp(a, "--rows")) {
            rows_arg = argv[++i];
        } else {
            return usage();
        }
    }
    if (!out || (!packed && !(values && scales)) || (packed && (values || scales))) return usage();
    if (head_dim < ENGRAM_FP8_BLOCK || head_dim > ENGRAM_FP8_MAX_HEAD_DIM || head_dim % ENGRAM_FP8_BLOCK) {
        fprintf(stderr, "error: --head-dim %ld is not a multiple of 32 in [32, %d]\n", head_dim,
                ENGRAM_FP8_MAX_HEAD_DIM);
        return 1;
    }
    const int d = (int)head_dim;
    size_t la = 0, lb = 0;
    char *a = read_file(packed ? packed : values, &la);
    char *b = packed ? NULL : read_file(scales, &lb);
    int rc = 1;
    int64_t *rows = NULL;
    float *res = NULL;
    engram_fp8_table t;
    if (!a || (!packed && !b)) {
        fprintf(stderr, "error: cannot read %s\n", !a ? (packed ? packed : values) : scales);
        goto done;
    }
    if (packed) {
        size_t rb = engram_fp8_packed_row_bytes(d);
        if (la % rb) {
            fprintf(stderr, "error: %s: %zu bytes is not a whole number of %zu-byte rows\n", packed, la, rb);
            goto done;
        }
        t = engram_fp8_table_packed(a, (int64_t)(la / rb), d);
    } else {
        size_t nr = la / (size_t)d;
        if (la % (size_t)d || lb != nr * (size_t)(d / ENGRAM_FP8_BLOCK)) {
            fprintf(stderr, "error: %s and %s do not hold the same whole number of rows\n", values, scales);
            goto done;
        }
        t = engram_fp8_table_split(a, b, (int64_t)nr, d);
    }
    size_t n;
    if (rows_arg) {
        if (!(rows = parse_list(rows_arg, &n))) {
            fprintf(stderr, "error: bad --rows list\n");
            goto done;
        }
    } else {
        n = (size_t)t.n_rows;
        rows = malloc((n ? n : 1) * sizeof *rows);
        for (size_t i = 0; rows && i < n; i++) rows[i] = (int64_t)i;
    }
    res = malloc((n ? n : 1) * (size_t)d * sizeof *res);
    if (!rows || !res) {
        fprintf(stderr, "error: out of memory\n");
        goto done;
    }
    size_t bad = 0;
    int st = engram_fp8_gather(&t, rows, n, res, &bad);
    if (st == ENGRAM_FP8_ERANGE) {
        fprintf(stderr, "error: --rows[%zu] = %" PRId64 " is outside the table's %" PRId64 " rows\n", bad,
                rows[bad], t.n_rows);
        goto done;
    } else if (st) {
        fprintf(stderr, "error: %s\n", engram_fp8_status_str(st));
        goto done;
    }
    FILE *f = fopen(out, "wb");
    if (!f || fwrite(res, sizeof(float), n * (size_t)d, f) != n * (size_t)d) {
        fprintf(stderr, "error: cannot write %s\n", out);
        if (f) fclose(f);
        goto done;
    }
    if (fclose(f)) {
        fprintf(stderr, "error: cannot write %s\n", out);
        goto done;
    }
    rc = 0;
done:
    free(res);
    free(rows);
    free(a);
    free(b);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    if (!strcmp(argv[1], "config")) return cmd_config(argc, argv);
    if (!strcmp(argv[1], "decode")) return cmd_decode(argc, argv);
    return usage();
}
