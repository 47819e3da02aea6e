/* engram-tables: the aligned Engram table files of engram/store.
 *   engram-tables export --model DIR --out DIR   one file per Engram layer,
 *       OUT/engram_layer_<layer_id>.tbl, rows copied bit for bit from the
 *       checkpoint tensor in its dtype (f32, bf16, f16); the same code as
 *       the servers' first-start export (model_engram_export_tables)
 *   engram-tables info FILE                      the header as one JSON line
 *   engram-tables verify FILE                    every block against its CRC-32C checksum:
 *       exit 0 and one JSON line when all match (or when the file has no
 *       checksums, which the line and a note on stderr say), exit 1 naming the
 *       first bad block (its bytes and rows) or what else is wrong */
#include <stdio.h>
#include <string.h>

#include "engine/model/model.h"
#include "engram/store.h"

static void usage(FILE *f) {
    fprintf(f, "usage: engram-tables export --model DIR --out DIR\n"
               "       engram-tables info FILE\n"
               "       engram-tables verify FILE\n");
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

static int cmd_export(const char *model_dir, const char *out_dir) {
    char err[1024];
    model *m = NULL;
    if (model_load(model_dir, &m, err, sizeof(err)) != MODEL_OK) {
        fprintf(stderr, "engram-tables: %s\n", err);
        return 1;
    }
    int rc = 0;
    if (model_engram_export_tables(m, out_dir, false, err, sizeof(err)) != MODEL_OK) {
        fprintf(stderr, "engram-tables: %s\n", err);
        rc = 1;
    }
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
    if (argc >= 2 && !strcmp(argv[1], "export")) {
        const char *model_dir = NULL, *out_dir = NULL;
        for (int i = 2; i < argc; i++) {
            if (i + 1 < argc && !strcmp(argv[i], "--model"))
                model_dir = argv[++i];
            else if (i + 1 < argc && !strcmp(argv[i], "--out"))
                out_dir = argv[++i];
            else {
                fprintf(stderr, "engram-tables: unknown or incomplete option %s\n", argv[i]);
                usage(stderr);
                return 2;
            }
        }
        if (model_dir && out_dir) return cmd_export(model_dir, out_dir);
    }
    usage(stderr);
    return 2;
}
