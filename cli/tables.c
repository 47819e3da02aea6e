/* engram-tables: the aligned Engram table files of engram/store.
 *   engram-tables export --model DIR --out DIR   one file per Engram layer,
 *       OUT/engram_layer_<layer_id>.tbl, rows copied bit for bit from the
 *       checkpoint tensor in its dtype (f32, bf16, f16; FP8 rows with their
 *       ue8m0 scales packed); the same code as the servers' first-start
 *       export (model_engram_export_tables)
 *   engram-tables export --synthetic SPEC [--synthetic-seed N] --out DIR
 *       the same from a synthetic model whose tables are tensors in memory
 *       (deepseek-v4.1-flash: its DeepSeek-V4.1 tables, FP8 as made)
 *   engram-tables info FILE                      the header as one JSON line
 *   engram-tables verify FILE                    every block against its CRC-32C checksum:
 *       exit 0 and one JSON line when all match (or when the file has no
 *       checksums, which the line and a note on stderr say), exit 1 naming the
 *       first bad block (its bytes and rows) or what else is wrong
 *   engram-tables profile (--model DIR | --synthetic SPEC [--synthetic-seed N])
 *                         --tokens FILE --tables DIR [--top N]
 *       the offline profile: every token of FILE (tools/make_text_tokens.py's
 *       format, one stream) hashed as the engine hashes it (engram/ngram_hash
 *       over the model's compressed tokenizer), each layer's rows counted, and
 *       the hot-row file DIR/engram_layer_<id>.tbl.hot written with them (the
 *       N most frequent with --top), so that a server started with
 *       --engram-warm-start reads the rows its traffic will want most into its
 *       DRAM cache first; missing table files are exported first (a
 *       synthetic model's: its table file in DIR, made as the engine's
 *       --synthetic-table-dir makes it, or reused) */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "engine/model/model.h"
#include "engram/ngram_hash.h"
#include "engram/store.h"

static void usage(FILE *f) {
    fprintf(f, "usage: engram-tables export (--model DIR | --synthetic SPEC [--synthetic-seed N]) --out DIR\n"
               "       engram-tables info FILE\n"
               "       engram-tables verify FILE\n"
               "       engram-tables profile (--model DIR | --synthetic SPEC [--synthetic-seed N]) --tokens FILE\n"
               "                             --tables DIR [--top N]\n");
}

static int cmd_info(const char *path) {
    engram_store_params p = engram_store_default_params();
    engram_store *s = NULL;
    char err[1024];
    if (engram_store_open(path, &p, &s, err, sizeof(err))) {
        fprintf(stderr, "engram-tables: %s\n", err);
        return 1;
    }
    engram_store_header h = engram_store_get_info(s).header;
    printf("{\"file\": \"%s\", \"version\": %u, \"dtype\": \"%s\", \"rows\": %llu, \"cols\": %u, "
           "\"row_bytes\": %u, \"row_stride\": %u, \"data_offset\": %llu}\n",
           path, h.version, engram_store_dtype_name((int)h.dtype), (unsigned long long)h.rows, h.cols,
           h.row_bytes, h.row_stride, (unsigned long long)h.data_offset);
    engram_store_close(s);
    return 0;
}

static int cmd_verify(const char *path) {
    engram_store_verify_result r;
    char err[1024];
    if (engram_store_verify(path, &r, err, sizeof(err))) {
        fprintf(stderr, "engram-tables: %s\n", err);
        return 1;
    }
    if (!r.has_checksums) {
        fprintf(stderr, "engram-tables: %s has no checksums (written before engram-tables wrote them): nothing was "
                        "verified; export it again to add them\n", path);
        printf("{\"file\": \"%s\", \"checksums\": null, \"verified\": false}\n", path);
        return 0;
    }
    if (r.first_bad >= 0) {
        fprintf(stderr, "engram-tables: %s: block %lld (bytes %llu..%llu", path, (long long)r.first_bad,
                (unsigned long long)r.bad_offset, (unsigned long long)(r.bad_offset + r.bad_len));
        if (r.bad_row_last >= r.bad_row_first)
            fprintf(stderr, ", rows %llu..%llu", (unsigned long long)r.bad_row_first, (unsigned long long)r.bad_row_last);
        else
            fprintf(stderr, ", padding after the last row");
        fprintf(stderr, ") does not match its checksum\n");
        return 1;
    }
    printf("{\"file\": \"%s\", \"checksums\": \"crc32c\", \"block_bytes\": %u, \"blocks\": %llu, \"verified\": true}\n",
           path, r.block_bytes, (unsigned long long)r.n_blocks);
    return 0;
}

/* Exactly one of model_dir and spec. */
static int cmd_export(const char *model_dir, const char *spec, uint64_t seed, const char *out_dir) {
    char err[1024];
    model *m = NULL;
    int rc = model_dir ? model_load(model_dir, &m, err, sizeof(err)) : model_synthetic(spec, seed, &m, err, sizeof(err));
    if (rc != MODEL_OK) {
        fprintf(stderr, "engram-tables: %s\n", err);
        return 1;
    }
    rc = 0;
    if (model_engram_export_tables(m, out_dir, false, err, sizeof(err)) != MODEL_OK) {
        fprintf(stderr, "engram-tables: %s\n", err);
        rc = 1;
    }
    model_destroy(m);
    return rc;
}

/* A row and how often the token stream asked for it. */
typedef struct {
    int64_t row;
    uint32_t count;
} row_count;

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Most counted first, then by row: the order the warm start takes them in. */
static int cmp_hot(const void *a, const void *b) {
    const row_count *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* rows (n, sorted here) to distinct rows with their counts (saturating at
 * UINT32_MAX), most counted first, into *out (malloc'd). Returns how many,
 * or SIZE_MAX out of memory. */
static size_t count_rows(int64_t *rows, size_t n, row_count **out) {
    qsort(rows, n, sizeof(int64_t), cmp_i64);
    size_t d = 0;
    for (size_t i = 0; i < n; i++) d += !i || rows[i] != rows[i - 1];
    row_count *rc = malloc((d ? d : 1) * sizeof(row_count));
    if (!rc) return SIZE_MAX;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!i || rows[i] != rows[i - 1]) rc[k++] = (row_count){rows[i], 0};
        if (rc[k - 1].count < UINT32_MAX) rc[k - 1].count++;
    }
    qsort(rc, d, sizeof(row_count), cmp_hot);
    *out = rc;
    return d;
}

/* Exactly one of model_dir and spec. */
static int cmd_profile(const char *model_dir, const char *spec, uint64_t seed, const char *tokens, const char *tables,
                       size_t top) {
    char err[1024];
    model *m = NULL;
    int32_t *ids = NULL;
    int64_t *cids = NULL, *rows = NULL, *hot = NULL;
    uint32_t *counts = NULL;
    size_t n = 0;
    uint32_t vocab = 0;
    int rc = 1;
    /* the tables as files, each with its hot-row file's path: a checkpoint's written from it when
     * missing; a synthetic model's made (or reused) in the table dir as the engine makes them */
    engram_store_params sp = engram_store_default_params();
    sp.tier = ENGRAM_STORE_NVME;
    sp.warm_start = ENGRAM_STORE_WARM_WAIT; /* no cache: nothing is read back, but the file has its path */
    sp.quiet = true;
    model_synthetic_params msp = model_synthetic_default_params();
    msp.table_dir = tables, msp.store = sp;
    if ((spec ? model_synthetic_ex(spec, seed, &msp, &m, err, sizeof(err)) : model_load(model_dir, &m, err, sizeof(err))) !=
            MODEL_OK ||
        util_read_token_file(tokens, &ids, &n, &vocab, err, sizeof(err)))
        goto out;
    const model_engram *e = m->engram;
    if (!e) {
        snprintf(err, sizeof(err), "%s: the model has no Engram layers", spec ? spec : model_dir);
        goto out;
    }
    /* a checkpoint's tokenizer must be the file's; a synthetic model has none (any id below its vocab) */
    if (vocab && (spec ? (int64_t)vocab > e->lookup_n : (int64_t)vocab != e->lookup_n)) {
        snprintf(err, sizeof(err), "%s: made with a tokenizer of %u ids; the model's has %lld", tokens, vocab,
                 (long long)e->lookup_n);
        goto out;
    }
    if (!spec && model_engram_use_tables(m, tables, &sp, err, sizeof(err)) != MODEL_OK) goto out;
    int H = e->n_heads;
    cids = malloc(n * sizeof(int64_t));
    rows = malloc(n * (size_t)H * sizeof(int64_t));
    if (!cids || !rows) {
        snprintf(err, sizeof(err), "out of memory for %zu tokens", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) cids[i] = ids[i]; /* compressed in place below */
    if (ngram_hash_compress_ids(e->lookup, e->lookup_n, cids, n, cids)) {
        snprintf(err, sizeof(err), "%s: a token id outside the model's %lld ids", tokens, (long long)e->lookup_n);
        goto out;
    }
    for (int li = 0; li < e->n_layers; li++) {
        ngram_hash_history hist; /* one stream: the padded history before its first token, as a request's */
        ngram_hash_history_init(e->hash, &hist);
        ngram_hash_layer_rows(e->hash, li, &hist, cids, n, rows);
        row_count *rc_ = NULL;
        size_t d = count_rows(rows, n * (size_t)H, &rc_);
        if (d == SIZE_MAX) {
            snprintf(err, sizeof(err), "out of memory");
            goto out;
        }
        size_t w = top && top < d ? top : d;
        free(hot), free(counts);
        hot = malloc((w ? w : 1) * sizeof(int64_t));
        counts = malloc((w ? w : 1) * sizeof(uint32_t));
        for (size_t i = 0; hot && counts && i < w; i++) hot[i] = rc_[i].row, counts[i] = rc_[i].count;
        free(rc_);
        engram_store *st = e->layers[li].store;
        if (!hot || !counts) {
            snprintf(err, sizeof(err), "out of memory");
            goto out;
        }
        if (engram_store_hot_write(st, hot, counts, w, err, sizeof(err))) goto out;
        printf("{\"layer\": %d, \"file\": \"%s\", \"tokens\": %zu, \"lookups\": %zu, \"distinct\": %zu, "
               "\"written\": %zu}\n",
               e->layers[li].layer_id, engram_store_hot_path(st), n, n * (size_t)H, d, w);
    }
    rc = 0;
out:
    if (rc) fprintf(stderr, "engram-tables: %s\n", err);
    free(ids), free(cids), free(rows), free(hot), free(counts);
    model_destroy(m);
    return rc;
}

int main(int argc, char **argv) {
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "info")) return cmd_info(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "verify")) return cmd_verify(argv[2]);
    if (argc >= 2 && !strcmp(argv[1], "profile")) {
        const char *model_dir = NULL, *spec = NULL, *tokens = NULL, *tables = NULL;
        size_t top = 0;
        uint64_t seed = 0;
        for (int i = 2; i < argc; i++) {
            long v;
            if (i + 1 < argc && !strcmp(argv[i], "--model"))
                model_dir = argv[++i];
            else if (i + 1 < argc && !strcmp(argv[i], "--synthetic"))
                spec = argv[++i];
            else if (i + 1 < argc && !strcmp(argv[i], "--synthetic-seed") &&
                     util_parse_long(argv[++i], 0, LONG_MAX, &v) == 0)
                seed = (uint64_t)v;
            else if (i + 1 < argc && !strcmp(argv[i], "--tokens"))
                tokens = argv[++i];
            else if (i + 1 < argc && !strcmp(argv[i], "--tables"))
                tables = argv[++i];
            else if (i + 1 < argc && !strcmp(argv[i], "--top") && util_parse_long(argv[++i], 1, LONG_MAX, &v) == 0)
                top = (size_t)v;
            else {
                fprintf(stderr, "engram-tables: unknown, incomplete or bad option %s\n", argv[i]);
                usage(stderr);
                return 2;
            }
        }
        if (!model_dir != !spec && tokens && tables) return cmd_profile(model_dir, spec, seed, tokens, tables, top);
    }
    if (argc >= 2 && !strcmp(argv[1], "export")) {
        const char *model_dir = NULL, *spec = NULL, *out_dir = NULL;
        uint64_t seed = 0;
        for (int i = 2; i < argc; i++) {
            long v;
            if (i + 1 < argc && !strcmp(argv[i], "--model"))
                model_dir = argv[++i];
            else if (i + 1 < argc && !strcmp(argv[i], "--synthetic"))
                spec = argv[++i];
            else if (i + 1 < argc && !strcmp(argv[i], "--synthetic-seed") &&
                     util_parse_long(argv[++i], 0, LONG_MAX, &v) == 0)
                seed = (uint64_t)v;
            else if (i + 1 < argc && !strcmp(argv[i], "--out"))
                out_dir = argv[++i];
            else {
                fprintf(stderr, "engram-tables: unknown, incomplete or bad option %s\n", argv[i]);
                usage(stderr);
                return 2;
            }
        }
        if (!model_dir != !spec && out_dir) return cmd_export(model_dir, spec, seed, out_dir);
    }
    usage(stderr);
    return 2;
}
