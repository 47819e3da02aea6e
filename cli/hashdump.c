/* engram-hashdump: hidden developer/test tool that exposes engram/ngram_hash to
 * the differential tests (tests/integration/test_ngram_hash.py and
 * test_engram_compress.py). Not a user-facing command; its I/O formats serve
 * the tests only:
 *   engram-hashdump rng SEED LOW HIGH N   default_rng(SEED).integers(LOW, HIGH, N)
 *   engram-hashdump raw SEED N            PCG64(SEED).random_raw(N)
 *   engram-hashdump derive < config.json  multipliers, primes, offsets, rows (JSON)
 *   engram-hashdump normalize < hexlines  one hex line of normalize(text) per line
 *   engram-hashdump compress < hexlines   {"vocab","compressed","lookup"} (JSON)
 * Hex lines are "<hex of decoded text> <hex of raw token>" ("-" for empty). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "engram/engram.h"

static int parse_u64(const char *s, uint64_t *v) {
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-') return -1;
    *v = x;
    return 0;
}

_Static_assert(sizeof(long) == sizeof(int64_t), "util_parse_long reads an int64");

static int parse_i64(const char *s, int64_t *v) {
    long x;
    if (util_parse_long(s, LONG_MIN, LONG_MAX, &x)) return -1;
    *v = x;
    return 0;
}

static int cmd_rng(int argc, char **argv) {
    uint64_t seed, n;
    int64_t low, high;
    if (argc != 6 || parse_u64(argv[2], &seed) || parse_i64(argv[3], &low) ||
        parse_i64(argv[4], &high) || parse_u64(argv[5], &n) || n > (1u << 24)) {
        fprintf(stderr, "usage: engram-hashdump rng SEED LOW HIGH N\n");
        return 2;
    }
    int64_t *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) return 1;
    int st = ngram_hash_numpy_integers(seed, low, high, n, out);
    if (st) {
        fprintf(stderr, "error: %s\n", ngram_hash_status_str(st));
        free(out);
        return 1;
    }
    for (uint64_t i = 0; i < n; i++) printf("%s%" PRId64, i ? " " : "", out[i]);
    printf("\n");
    free(out);
    return 0;
}

static int cmd_raw(int argc, char **argv) {
    uint64_t seed, n;
    if (argc != 4 || parse_u64(argv[2], &seed) || parse_u64(argv[3], &n)) {
        fprintf(stderr, "usage: engram-hashdump raw SEED N\n");
        return 2;
    }
    ngram_hash_pcg64 g;
    ngram_hash_pcg64_seed(&g, seed);
    for (uint64_t i = 0; i < n; i++) printf("%s%" PRIu64, i ? " " : "", ngram_hash_pcg64_next64(&g));
    printf("\n");
    return 0;
}

/* An int64 from a JSON number or a decimal string (exact beyond 2^53). */
static int json_item_i64(const cJSON *e, int64_t *v) {
    if (cJSON_IsNumber(e)) {
        *v = (int64_t)e->valuedouble;
        return 0;
    }
    if (cJSON_IsString(e)) return parse_i64(e->valuestring, v);
    return -1;
}

/* Reads an int64 array field; returns its length or -1. */
static int json_i64_array(const cJSON *obj, const char *key, int64_t *out, int max) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsArray(a)) return -1;
    int n = cJSON_GetArraySize(a);
    if (n > max) return -1;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) {
        if (json_item_i64(e, &out[i++])) return -1;
    }
    return n;
}

static int64_t json_i64(const cJSON *obj, const char *key, int64_t dflt) {
    int64_t x;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && json_item_i64(v, &x) == 0 ? x : dflt;
}

static void print_i64_array(const int64_t *v, size_t n) {
    printf("[");
    for (size_t i = 0; i < n; i++) printf("%s%" PRId64, i ? "," : "", v[i]);
    printf("]");
}

/* Config JSON: the ngram_hash_config fields by name, plus optional
 * "sequences": [[compressed ids]] and "chunk": n (hash in chunks of n). */
static int cmd_derive(void) {
    size_t len;
    char *text = util_read_stream(stdin, &len);
    if (!text) return 1;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root) {
        fprintf(stderr, "error: bad JSON\n");
        return 1;
    }
    static int64_t vocab[NGRAM_HASH_MAX_NGRAM], layers[NGRAM_HASH_MAX_LAYERS];
    ngram_hash_config c = ngram_hash_default_config();
    int nv = json_i64_array(root, "engram_vocab_size", vocab, NGRAM_HASH_MAX_NGRAM);
    c.n_layers = json_i64_array(root, "layer_ids", layers, NGRAM_HASH_MAX_LAYERS);
    c.engram_vocab_size = nv >= 0 ? vocab : NULL;
    c.layer_ids = c.n_layers >= 0 ? layers : NULL;
    c.max_ngram_size = (int)json_i64(root, "max_ngram_size", 3);
    if (nv != c.max_ngram_size - 1) c.engram_vocab_size = NULL;
    c.n_embed_per_ngram = json_i64(root, "n_embed_per_ngram", 512);
    c.n_head_per_ngram = (int)json_i64(root, "n_head_per_ngram", 8);
    c.pad_id = json_i64(root, "pad_id", 2);
    c.seed = json_i64(root, "seed", 0);
    c.kernel_size = (int)json_i64(root, "kernel_size", 4);
    c.hc_mult = (int)json_i64(root, "hc_mult", 1);
    c.compressed_vocab_size = json_i64(root, "compressed_vocab_size", 0);
    c.compressed_pad_id = json_i64(root, "compressed_pad_id", 0);
    int64_t chunk = json_i64(root, "chunk", 0);

    char err[256];
    ngram_hash *h = NULL;
    int st = ngram_hash_create(&c, &h, err, sizeof err);
    if (st) {
        printf("{\"error\":\"%s\"}\n", err);
        cJSON_Delete(root);
        return 3;
    }
    const int L = ngram_hash_n_layers(h), H = ngram_hash_n_heads(h);
    printf("{\"H\":%d,\"D\":%" PRId64 ",\"E\":%" PRId64 ",\"multipliers\":[", H,
           ngram_hash_head_dim(h), ngram_hash_embed_dim(h));
    for (int li = 0; li < L; li++) {
        printf(li ? "," : "");
        print_i64_array(ngram_hash_multipliers(h, li), (size_t)ngram_hash_max_ngram_size(h));
    }
    printf("],\"primes\":[");
    for (int li = 0; li < L; li++) {
        printf(li ? "," : "");
        print_i64_array(ngram_hash_primes(h, li), (size_t)H);
    }
    printf("],\"offsets\":[");
    for (int li = 0; li < L; li++) {
        printf(li ? "," : "");
        print_i64_array(ngram_hash_offsets(h, li), (size_t)H);
    }
    printf("],\"table_rows\":[");
    for (int li = 0; li < L; li++) printf("%s%" PRId64, li ? "," : "", ngram_hash_table_rows(h, li));
    printf("],\"rows\":[");
    const cJSON *seqs = cJSON_GetObjectItemCaseSensitive(root, "sequences");
    const cJSON *seq;
    int si = 0;
    int rc = 0;
    cJSON_ArrayForEach(seq, seqs) {
        int n = cJSON_GetArraySize(seq);
        int64_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
        int64_t *rows = malloc(((size_t)n * H * L + 1) * sizeof *rows);
        int64_t *part = malloc(((size_t)n * H * L + 1) * sizeof *part);
        if (!ids || !rows || !part) {
            free(ids), free(rows), free(part);
            rc = 1;
            break;
        }
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, seq) {
            if (json_item_i64(e, &ids[i++])) ids[i - 1] = 0;
        }
        ngram_hash_history hist;
        ngram_hash_history_init(h, &hist);
        size_t step = chunk > 0 ? (size_t)chunk : (size_t)n;
        for (size_t t0 = 0; t0 < (size_t)n; t0 += step) {
            size_t cnt = (size_t)n - t0 < step ? (size_t)n - t0 : step;
            ngram_hash_rows(h, &hist, ids + t0, cnt, part);
            for (int li = 0; li < L; li++)
                memcpy(rows + ((size_t)li * n + t0) * H, part + (size_t)li * cnt * H,
                       cnt * H * sizeof *rows);
        }
        printf("%s[", si++ ? "," : "");
        for (int li = 0; li < L; li++) {
            printf("%s[", li ? "," : "");
            for (int t = 0; t < n; t++) {
                printf(t ? "," : "");
                print_i64_array(rows + ((size_t)li * n + t) * H, (size_t)H);
            }
            printf("]");
        }
        printf("]");
        free(ids), free(rows), free(part);
    }
    printf("]}\n");
    ngram_hash_destroy(h);
    cJSON_Delete(root);
    return rc;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes hex token s (NUL- or space-terminated, "-" = empty) in place into
 * bytes; returns the byte count or -1. */
static long unhex(char *s) {
    if (s[0] == '-' && (s[1] == 0 || s[1] == ' ' || s[1] == '\n')) return 0;
    long n = 0;
    for (char *p = s;; p += 2) {
        int hi = hexval((unsigned char)p[0]);
        if (hi < 0) break;
        int lo = hexval((unsigned char)p[1]);
        if (lo < 0) return -1;
        s[n++] = (char)(hi * 16 + lo);
    }
    return n;
}

/* Splits the stdin hex lines into token texts (pointing into buf). */
static ngram_hash_token_text *read_hex_lines(char *buf, size_t *count) {
    size_t cap = 1024, n = 0;
    ngram_hash_token_text *tok = malloc(cap * sizeof *tok);
    if (!tok) return NULL;
    char *line = buf;
    while (*line) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (*line) {
            if (n == cap) {
                ngram_hash_token_text *nt = realloc(tok, (cap *= 2) * sizeof *tok);
                if (!nt) {
                    free(tok);
                    return NULL;
                }
                tok = nt;
            }
            char *sp = strchr(line, ' ');
            if (sp) *sp = 0;
            long a = unhex(line), b = sp ? unhex(sp + 1) : 0;
            if (a < 0 || b < 0) {
                free(tok);
                return NULL;
            }
            tok[n].text = line;
            tok[n].text_len = (size_t)a;
            tok[n].raw = sp ? sp + 1 : line;
            tok[n].raw_len = (size_t)b;
            n++;
        }
        if (!nl) break;
        line = nl + 1;
    }
    *count = n;
    return tok;
}

static int cmd_normalize(void) {
    size_t len, n;
    char *buf = util_read_stream(stdin, &len);
    if (!buf) return 1;
    ngram_hash_token_text *tok = read_hex_lines(buf, &n);
    if (!tok) {
        free(buf);
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        char *out;
        size_t olen;
        int st = ngram_hash_normalize(tok[i].text, tok[i].text_len, &out, &olen);
        if (st) {
            printf("!%s\n", ngram_hash_status_str(st));
            continue;
        }
        if (olen == 0) printf("-");
        for (size_t j = 0; j < olen; j++) printf("%02x", (unsigned char)out[j]);
        printf("\n");
        free(out);
    }
    free(tok);
    free(buf);
    return 0;
}

static int cmd_compress(void) {
    size_t len, n;
    char *buf = util_read_stream(stdin, &len);
    if (!buf) return 1;
    ngram_hash_token_text *tok = read_hex_lines(buf, &n);
    int64_t *lookup = malloc((n + 1) * sizeof *lookup);
    if (!tok || !lookup) {
        free(tok), free(lookup), free(buf);
        return 1;
    }
    int64_t vc = 0;
    int st = ngram_hash_compress_build(tok, n, lookup, &vc);
    if (st) {
        fprintf(stderr, "error: %s\n", ngram_hash_status_str(st));
    } else {
        printf("{\"vocab\":%zu,\"compressed\":%" PRId64 ",\"lookup\":", n, vc);
        print_i64_array(lookup, n);
        printf("}\n");
    }
    free(tok), free(lookup), free(buf);
    return st ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "rng")) return cmd_rng(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "raw")) return cmd_raw(argc, argv);
    if (argc == 2 && !strcmp(argv[1], "derive")) return cmd_derive();
    if (argc == 2 && !strcmp(argv[1], "normalize")) return cmd_normalize();
    if (argc == 2 && !strcmp(argv[1], "compress")) return cmd_compress();
    fprintf(stderr, "usage: engram-hashdump rng|raw|derive|normalize|compress (test tool)\n");
    return 2;
}
