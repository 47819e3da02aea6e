/* Unit tests of engram/ngram_hash: Miller-Rabin, PCG64 and bounded integers
 * against NumPy values, the NumPy goldens of tests/fixtures/engram_hash_golden.json
 * (multipliers, primes, offsets, rows) with chunked and step-by-step hashing,
 * bad configurations, normalization and the compressed lookup. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "engram/engram.h"
#include "engram/ngram_hash_internal.h"

/* ---- helpers ---- */

static int64_t item_i64(const cJSON *e) {
    if (cJSON_IsString(e)) return strtoll(e->valuestring, NULL, 10);
    return (int64_t)e->valuedouble;
}

static uint64_t item_u64(const cJSON *e) {
    if (cJSON_IsString(e)) return strtoull(e->valuestring, NULL, 10);
    return (uint64_t)e->valuedouble;
}

/* Copies a JSON int array into a new heap array; *n gets its length. */
static int64_t *array_i64(const cJSON *a, int *n) {
    *n = cJSON_GetArraySize(a);
    int64_t *v = malloc(((size_t)*n + 1) * sizeof *v);
    ck_assert_ptr_nonnull(v);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, a) v[i++] = item_i64(e);
    return v;
}

static cJSON *load_golden(void) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/engram_hash_golden.json", src ? src : ".");
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = 0;
    fclose(f);
    cJSON *root = cJSON_Parse(buf);
    free(buf);
    ck_assert_ptr_nonnull(root);
    return root;
}

/* Config from a golden case; arrays stay alive in the static buffers. */
static ngram_hash_config config_from_json(const cJSON *c, int64_t *vocab, int64_t *layers) {
    ngram_hash_config cfg = ngram_hash_default_config();
    int nv, nl;
    int64_t *v = array_i64(cJSON_GetObjectItem(c, "engram_vocab_size"), &nv);
    int64_t *l = array_i64(cJSON_GetObjectItem(c, "layer_ids"), &nl);
    memcpy(vocab, v, (size_t)nv * sizeof *v);
    memcpy(layers, l, (size_t)nl * sizeof *l);
    free(v);
    free(l);
    cfg.engram_vocab_size = vocab;
    cfg.layer_ids = layers;
    cfg.n_layers = nl;
    cfg.max_ngram_size = (int)item_i64(cJSON_GetObjectItem(c, "max_ngram_size"));
    cfg.n_embed_per_ngram = item_i64(cJSON_GetObjectItem(c, "n_embed_per_ngram"));
    cfg.n_head_per_ngram = (int)item_i64(cJSON_GetObjectItem(c, "n_head_per_ngram"));
    cfg.pad_id = item_i64(cJSON_GetObjectItem(c, "pad_id"));
    cfg.seed = item_i64(cJSON_GetObjectItem(c, "seed"));
    cfg.kernel_size = (int)item_i64(cJSON_GetObjectItem(c, "kernel_size"));
    cfg.hc_mult = (int)item_i64(cJSON_GetObjectItem(c, "hc_mult"));
    cfg.compressed_vocab_size = item_i64(cJSON_GetObjectItem(c, "compressed_vocab_size"));
    cfg.compressed_pad_id = item_i64(cJSON_GetObjectItem(c, "compressed_pad_id"));
    return cfg;
}

static ngram_hash_config demo_config(void) {
    ngram_hash_config c = ngram_hash_default_config();
    c.compressed_vocab_size = 98627;
    c.compressed_pad_id = 2;
    return c;
}

/* ---- primes ---- */

START_TEST(test_is_prime) {
    static const uint64_t primes[] = {2, 3, 5, 37, 41, 646403, 16000057, 2147483647ull,
                                      2305843009213693951ull, 18446744073709551557ull};
    static const uint64_t composites[] = {0, 1, 4, 9, 561, 41041, 2047, 3215031751ull,
                                          3825123056546413051ull, 18446744073709551615ull,
                                          4294967297ull, 2305843009213693953ull};
    for (size_t i = 0; i < sizeof primes / sizeof primes[0]; i++)
        ck_assert_msg(ngram_hash_is_prime(primes[i]), "%llu", (unsigned long long)primes[i]);
    for (size_t i = 0; i < sizeof composites / sizeof composites[0]; i++)
        ck_assert_msg(!ngram_hash_is_prime(composites[i]), "%llu",
                      (unsigned long long)composites[i]);
    /* agrees with trial division below 20000 */
    for (uint64_t n = 0; n < 20000; n++) {
        int p = n >= 2;
        for (uint64_t d = 2; d * d <= n && p; d++)
            if (n % d == 0) p = 0;
        ck_assert_int_eq(ngram_hash_is_prime(n), p);
    }
}
END_TEST

/* ---- NumPy random ---- */

START_TEST(test_pcg64_known) {
    /* numpy.random.PCG64(0).random_raw(3) */
    ngram_hash_pcg64 g;
    ngram_hash_pcg64_seed(&g, 0);
    ck_assert_uint_eq(ngram_hash_pcg64_next64(&g), 11749869230777074271ull);
    ck_assert_uint_eq(ngram_hash_pcg64_next64(&g), 4976686463289251617ull);
    ck_assert_uint_eq(ngram_hash_pcg64_next64(&g), 755828109848996024ull);
    /* next32: low half now, high half buffered */
    ngram_hash_pcg64 a, b;
    ngram_hash_pcg64_seed(&a, 99);
    ngram_hash_pcg64_seed(&b, 99);
    uint64_t x = ngram_hash_pcg64_next64(&a);
    ck_assert_uint_eq(ngram_hash_pcg64_next32(&b), (uint32_t)x);
    ck_assert_uint_eq(ngram_hash_pcg64_next32(&b), (uint32_t)(x >> 32));
    ck_assert_uint_eq(ngram_hash_pcg64_next32(&b), (uint32_t)ngram_hash_pcg64_next64(&a));
}
END_TEST

START_TEST(test_integers_known) {
    int64_t v[4];
    /* default_rng(0).integers(0, 46540126963253, 3): the 64-bit Lemire path */
    ck_assert_int_eq(ngram_hash_numpy_integers(0, 0, 46540126963253, 3, v), NGRAM_HASH_OK);
    ck_assert_int_eq(v[0], 29644277798668);
    ck_assert_int_eq(v[1], 12555907911569);
    ck_assert_int_eq(v[2], 1906913006122);
    /* default_rng(12345).integers(0, 1000, 4): the buffered 32-bit path */
    ck_assert_int_eq(ngram_hash_numpy_integers(12345, 0, 1000, 4, v), NGRAM_HASH_OK);
    ck_assert_int_eq(v[0], 699);
    ck_assert_int_eq(v[1], 227);
    ck_assert_int_eq(v[2], 788);
    ck_assert_int_eq(v[3], 316);
    ck_assert_int_eq(ngram_hash_numpy_integers(0, 5, 5, 1, v), NGRAM_HASH_EINVAL);
    ck_assert_int_eq(ngram_hash_numpy_integers(0, 7, 8, 4, v), NGRAM_HASH_OK);
    for (int i = 0; i < 4; i++) ck_assert_int_eq(v[i], 7);
}
END_TEST

START_TEST(test_golden_random) {
    cJSON *root = load_golden();
    const cJSON *g;
    int n_raw = 0, n_int = 0;
    cJSON_ArrayForEach(g, cJSON_GetObjectItem(root, "raw")) {
        ngram_hash_pcg64 rng;
        ngram_hash_pcg64_seed(&rng, item_u64(cJSON_GetObjectItem(g, "seed")));
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(g, "values"))
            ck_assert_uint_eq(ngram_hash_pcg64_next64(&rng), item_u64(e));
        n_raw++;
    }
    cJSON_ArrayForEach(g, cJSON_GetObjectItem(root, "integers")) {
        int n;
        int64_t *want = array_i64(cJSON_GetObjectItem(g, "values"), &n);
        int64_t got[16];
        ck_assert_int_le(n, 16);
        ck_assert_int_eq(ngram_hash_numpy_integers(item_u64(cJSON_GetObjectItem(g, "seed")),
                                                   item_i64(cJSON_GetObjectItem(g, "low")),
                                                   item_i64(cJSON_GetObjectItem(g, "high")),
                                                   (size_t)n, got),
                         NGRAM_HASH_OK);
        for (int i = 0; i < n; i++) ck_assert_int_eq(got[i], want[i]);
        free(want);
        n_int++;
    }
    ck_assert_int_gt(n_raw, 0);
    ck_assert_int_gt(n_int, 100);
    cJSON_Delete(root);
}
END_TEST

/* ---- golden tables and rows ---- */

/* Hashes ids in chunks of the given sizes (cycled; 0-size chunks included) and
 * checks the rows of every layer against want (L, n, H). */
static void check_rows_chunked(const ngram_hash *h, const int64_t *ids, int n,
                               const int64_t *want, const int *sizes, int n_sizes) {
    const int L = ngram_hash_n_layers(h), H = ngram_hash_n_heads(h);
    int64_t *part = malloc(((size_t)n * L * H + 1) * sizeof *part);
    ck_assert_ptr_nonnull(part);
    ngram_hash_history hist;
    ngram_hash_history_init(h, &hist);
    int t0 = 0, si = 0;
    while (t0 < n) {
        int cnt = sizes[si++ % n_sizes];
        if (cnt > n - t0) cnt = n - t0;
        ngram_hash_rows(h, &hist, ids + t0, (size_t)cnt, part);
        for (int li = 0; li < L; li++)
            for (int t = 0; t < cnt; t++)
                for (int k = 0; k < H; k++)
                    ck_assert_int_eq(part[((size_t)li * cnt + t) * H + k],
                                     want[((size_t)li * n + t0 + t) * H + k]);
        t0 += cnt;
    }
    free(part);
}

START_TEST(test_golden_cases) {
    cJSON *root = load_golden();
    const cJSON *c;
    int n_cases = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        static int64_t vocab[NGRAM_HASH_MAX_NGRAM], layers[NGRAM_HASH_MAX_LAYERS];
        ngram_hash_config cfg = config_from_json(cJSON_GetObjectItem(c, "config"), vocab, layers);
        ngram_hash *h = NULL;
        char err[256] = "";
        ck_assert_msg(ngram_hash_create(&cfg, &h, err, sizeof err) == NGRAM_HASH_OK, "%s", err);
        const int L = ngram_hash_n_layers(h), H = ngram_hash_n_heads(h);
        ck_assert_int_eq(H, (cfg.max_ngram_size - 1) * cfg.n_head_per_ngram);
        ck_assert_int_eq(ngram_hash_head_dim(h), cfg.n_embed_per_ngram / cfg.n_head_per_ngram);
        ck_assert_int_eq(ngram_hash_embed_dim(h), H * ngram_hash_head_dim(h));
        for (int li = 0; li < L; li++) {
            int n;
            int64_t *m = array_i64(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "multipliers"), li), &n);
            ck_assert_int_eq(n, cfg.max_ngram_size);
            for (int k = 0; k < n; k++) ck_assert_int_eq(ngram_hash_multipliers(h, li)[k], m[k]);
            free(m);
            int64_t *p = array_i64(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "primes"), li), &n);
            int64_t *o = array_i64(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "offsets"), li), &n);
            ck_assert_int_eq(n, H);
            for (int k = 0; k < H; k++) {
                ck_assert_int_eq(ngram_hash_primes(h, li)[k], p[k]);
                ck_assert_int_eq(ngram_hash_offsets(h, li)[k], o[k]);
            }
            free(p);
            free(o);
            ck_assert_int_eq(ngram_hash_table_rows(h, li),
                             item_i64(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "table_rows"), li)));
            ck_assert_int_eq(ngram_hash_layer_id(h, li), layers[li]);
        }
        const cJSON *seqs = cJSON_GetObjectItem(c, "sequences");
        const cJSON *rows = cJSON_GetObjectItem(c, "rows");
        for (int s = 0; s < cJSON_GetArraySize(seqs); s++) {
            int n;
            int64_t *ids = array_i64(cJSON_GetArrayItem(seqs, s), &n);
            /* flatten want (L, n, H) */
            int64_t *want = malloc(((size_t)L * n * H + 1) * sizeof *want);
            ck_assert_ptr_nonnull(want);
            const cJSON *per_layer = cJSON_GetArrayItem(rows, s);
            for (int li = 0; li < L; li++)
                for (int t = 0; t < n; t++) {
                    int k;
                    int64_t *r = array_i64(cJSON_GetArrayItem(cJSON_GetArrayItem(per_layer, li), t), &k);
                    ck_assert_int_eq(k, H);
                    memcpy(want + ((size_t)li * n + t) * H, r, (size_t)H * sizeof *r);
                    free(r);
                }
            static const int whole[] = {1 << 30}, steps[] = {1}, mixed[] = {2, 0, 3, 1, 5};
            check_rows_chunked(h, ids, n, want, whole, 1);
            check_rows_chunked(h, ids, n, want, steps, 1);
            check_rows_chunked(h, ids, n, want, mixed, 5);
            free(ids);
            free(want);
        }
        ngram_hash_destroy(h);
        n_cases++;
    }
    ck_assert_int_ge(n_cases, 6);
    cJSON_Delete(root);
}
END_TEST

/* ---- history ---- */

START_TEST(test_history_chunks) {
    ngram_hash_config cfg = ngram_hash_default_config();
    static const int64_t vocab[] = {1000, 1000, 1000, 1000};
    cfg.engram_vocab_size = vocab;
    cfg.max_ngram_size = 5;
    cfg.n_embed_per_ngram = 8;
    cfg.n_head_per_ngram = 2;
    cfg.compressed_vocab_size = 500;
    cfg.compressed_pad_id = 7;
    ngram_hash *h = NULL;
    ck_assert_int_eq(ngram_hash_create(&cfg, &h, NULL, 0), NGRAM_HASH_OK);
    const int L = ngram_hash_n_layers(h), H = ngram_hash_n_heads(h);
    enum { T = 40 };
    int64_t ids[T];
    uint64_t x = 88172645463325252ull;
    for (int t = 0; t < T; t++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[t] = (int64_t)(x % 500);
    }
    static int64_t one[2 * T * 8 * 4];
    ngram_hash_history hist;
    ngram_hash_history_init(h, &hist);
    ngram_hash_rows(h, &hist, ids, T, one);
    for (int k = 0; k < 4; k++) ck_assert_int_eq(hist.ids[k], ids[T - 1 - k]);
    static const int sizes[] = {1, 2, 3, 4, 5, 0, 7};
    check_rows_chunked(h, ids, T, one, sizes, 7);
    /* the layer function alone does not move the history */
    ngram_hash_history_init(h, &hist);
    int64_t r[8 * 4];
    ngram_hash_layer_rows(h, 1, &hist, ids, 1, r);
    ck_assert_int_eq(hist.ids[0], 7);
    for (int k = 0; k < H; k++) {
        ck_assert_int_eq(r[k], one[((size_t)1 * T + 0) * H + k]);
        ck_assert_int_ge(r[k], 0);
        ck_assert_int_lt(r[k], ngram_hash_table_rows(h, 1));
    }
    /* the first position of a sequence: every older token is the pad */
    int64_t pads[4] = {7, 7, 7, 7}, seq5[5] = {7, 7, 7, 7, ids[0]}, rows5[5 * 8 * 4 * 2];
    ngram_hash_history_init(h, &hist);
    ngram_hash_rows(h, &hist, seq5, 5, rows5);
    ngram_hash_history_init(h, &hist);
    ngram_hash_history_push(h, &hist, pads, 4);
    ngram_hash_layer_rows(h, 0, &hist, ids, 1, r);
    for (int k = 0; k < H; k++) ck_assert_int_eq(r[k], one[k]);
    (void)L;
    ngram_hash_destroy(h);
}
END_TEST

/* ---- bad configurations ---- */

static void expect_bad(const ngram_hash_config *c, int status, const char *field) {
    ngram_hash *h = (ngram_hash *)1;
    char err[256] = "";
    ck_assert_int_eq(ngram_hash_create(c, &h, err, sizeof err), status);
    ck_assert_ptr_null(h);
    ck_assert_msg(strstr(err, field) != NULL, "'%s' does not name %s", err, field);
}

START_TEST(test_bad_configs) {
    ngram_hash_config c;
    static const int64_t vocab_zero[] = {0, 10}, vocab_huge[] = {(int64_t)1 << 60, 10};
    static const int64_t dup[] = {1, 1}, neg[] = {-1, 2}, big_layer[] = {INT64_MAX / 2, 1};
    c = demo_config(); c.max_ngram_size = 1; expect_bad(&c, NGRAM_HASH_EINVAL, "max_ngram_size");
    c = demo_config(); c.max_ngram_size = 99; expect_bad(&c, NGRAM_HASH_EINVAL, "max_ngram_size");
    c = demo_config(); c.n_head_per_ngram = 0; expect_bad(&c, NGRAM_HASH_EINVAL, "n_head_per_ngram");
    c = demo_config(); c.n_head_per_ngram = 100000; expect_bad(&c, NGRAM_HASH_EINVAL, "n_head_per_ngram");
    c = demo_config(); c.n_layers = 0; expect_bad(&c, NGRAM_HASH_EINVAL, "layer_ids");
    c = demo_config(); c.layer_ids = NULL; expect_bad(&c, NGRAM_HASH_EINVAL, "layer_ids");
    c = demo_config(); c.layer_ids = dup; expect_bad(&c, NGRAM_HASH_EINVAL, "layer_ids");
    c = demo_config(); c.layer_ids = neg; expect_bad(&c, NGRAM_HASH_EINVAL, "layer_ids");
    c = demo_config(); c.layer_ids = big_layer; expect_bad(&c, NGRAM_HASH_EOVERFLOW, "seed");
    c = demo_config(); c.engram_vocab_size = NULL; expect_bad(&c, NGRAM_HASH_EINVAL, "engram_vocab_size");
    c = demo_config(); c.engram_vocab_size = vocab_zero; expect_bad(&c, NGRAM_HASH_EINVAL, "engram_vocab_size");
    c = demo_config(); c.engram_vocab_size = vocab_huge; expect_bad(&c, NGRAM_HASH_EINVAL, "engram_vocab_size");
    c = demo_config(); c.n_embed_per_ngram = 500; expect_bad(&c, NGRAM_HASH_EINVAL, "n_embed_per_ngram");
    c = demo_config(); c.n_embed_per_ngram = 0; expect_bad(&c, NGRAM_HASH_EINVAL, "n_embed_per_ngram");
    c = demo_config(); c.n_embed_per_ngram = INT64_MAX - 7; expect_bad(&c, NGRAM_HASH_EOVERFLOW, "n_embed_per_ngram");
    c = demo_config(); c.seed = -1; expect_bad(&c, NGRAM_HASH_EINVAL, "seed");
    c = demo_config(); c.seed = INT64_MAX; expect_bad(&c, NGRAM_HASH_EOVERFLOW, "seed");
    c = demo_config(); c.kernel_size = 0; expect_bad(&c, NGRAM_HASH_EINVAL, "kernel_size");
    c = demo_config(); c.hc_mult = -3; expect_bad(&c, NGRAM_HASH_EINVAL, "hc_mult");
    c = demo_config(); c.pad_id = -1; expect_bad(&c, NGRAM_HASH_EINVAL, "pad_id");
    c = demo_config(); c.compressed_vocab_size = 0; expect_bad(&c, NGRAM_HASH_EINVAL, "compressed_vocab_size");
    c = demo_config(); c.compressed_pad_id = 98627; expect_bad(&c, NGRAM_HASH_EINVAL, "compressed_pad_id");
    c = demo_config(); c.n_layers = 1000; c.n_head_per_ngram = 1000; expect_bad(&c, NGRAM_HASH_EINVAL, "heads");
    expect_bad(NULL, NGRAM_HASH_EINVAL, "config");
    ck_assert_int_eq(ngram_hash_create(NULL, NULL, NULL, 0), NGRAM_HASH_EINVAL);
    ngram_hash_destroy(NULL);
    ck_assert_str_eq(ngram_hash_status_str(NGRAM_HASH_OK), "ok");
    ck_assert_str_eq(ngram_hash_status_str(-1000), "unknown status");
}
END_TEST

/* ---- normalization and the compressed lookup ---- */

static void expect_norm(const char *in, const char *want) {
    char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(ngram_hash_normalize(in, strlen(in), &out, &len), NGRAM_HASH_OK);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_msg(memcmp(out, want, len) == 0, "'%s' -> '%s', want '%s'", in, out, want);
    free(out);
}

START_TEST(test_normalize) {
    /* the generated corrections are tied to one utf8proc version */
    ck_assert_str_eq(ngram_hash__tables_utf8proc_version(), utf8proc_version());
    expect_norm("  Caf\xc3\xa9  ", "cafe");                     /* accent dropped, stripped */
    expect_norm(" ", " ");                                      /* lone space kept */
    expect_norm("\t\r\n ", " ");                                /* a run becomes a lone space */
    expect_norm("\xc2\xa0", " ");                               /* NFKC: NBSP -> lone " " */
    expect_norm("A \t B", "a b");
    expect_norm("\xc4\xb0", "i");                              /* U+0130: NFD, mark dropped */
    expect_norm("\xce\x9f\xce\xa3", "\xce\xbf\xcf\x83");        /* no final-sigma rule */
    expect_norm("\xef\xac\x81", "fi");                          /* NFKC ligature */
    expect_norm("\xe0\xa4\x95\xe0\xa4\xbe", "\xe0\xa4\x95");    /* Mc vowel sign removed */
    expect_norm("\xee\x80\x80", " ");                           /* U+E000 becomes a space */
    expect_norm("", "");
    char *out = (char *)1;
    size_t len = 9;
    ck_assert_int_eq(ngram_hash_normalize("\xff", 1, &out, &len), NGRAM_HASH_EINVAL);
    ck_assert_ptr_null(out);
}
END_TEST

START_TEST(test_compress) {
    /* text, raw */
    static const char *const v[][2] = {
        {"Hello", "Hello"}, {" hello ", "\xc4\xa0hello"}, {" ", "\xc4\xa0"}, {"  ", "\xc4\xa0\xc4\xa0"},
        {"\xef\xbf\xbd", "<0xFF>"}, {"\xef\xbf\xbd", "<0xFE>"}, {"<0xFF>", "<0xFF>x"},
        {"\xcc\x81", "\xcc\x81"}, {"\xcc\x81", "\xcc\x81"}, {"", ""}, {"H\xc3\xa9llo", "x"},
    };
    enum { N = sizeof v / sizeof v[0] };
    ngram_hash_token_text tok[N];
    for (int i = 0; i < N; i++) {
        tok[i].text = v[i][0];
        tok[i].text_len = strlen(v[i][0]);
        tok[i].raw = v[i][1];
        tok[i].raw_len = strlen(v[i][1]);
    }
    int64_t lookup[N], vc;
    ck_assert_int_eq(ngram_hash_compress_build(tok, N, lookup, &vc), NGRAM_HASH_OK);
    /* keys: hello, hello, " ", " ", <0xFF>, <0xFE>, <0xff>, U+0301 (normalizes to
     * nothing, so the text itself), U+0301, "" , hello */
    static const int64_t want[N] = {0, 0, 1, 1, 2, 3, 4, 5, 5, 6, 0};
    for (int i = 0; i < N; i++) ck_assert_int_eq(lookup[i], want[i]);
    ck_assert_int_eq(vc, 7);

    int64_t ids[4] = {-1, 0, 10, 4}, out[4];
    ck_assert_int_eq(ngram_hash_compress_ids(lookup, N, ids, 4, out), NGRAM_HASH_OK);
    ck_assert_int_eq(out[0], -1);
    ck_assert_int_eq(out[1], 0);
    ck_assert_int_eq(out[2], 0);
    ck_assert_int_eq(out[3], 2);
    ids[2] = N;
    ck_assert_int_eq(ngram_hash_compress_ids(lookup, N, ids, 4, out), NGRAM_HASH_ERANGE);

    tok[3].text = "\xc3";
    tok[3].text_len = 1;
    ck_assert_int_eq(ngram_hash_compress_build(tok, N, lookup, &vc), NGRAM_HASH_EINVAL);
    ck_assert_int_eq(ngram_hash_compress_build(tok, 0, lookup, &vc), NGRAM_HASH_OK);
    ck_assert_int_eq(vc, 0);
}
END_TEST

static Suite *ngram_hash_suite(void) {
    Suite *s = suite_create("ngram_hash");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_is_prime);
    tcase_add_test(tc, test_pcg64_known);
    tcase_add_test(tc, test_integers_known);
    tcase_add_test(tc, test_golden_random);
    tcase_add_test(tc, test_golden_cases);
    tcase_add_test(tc, test_history_chunks);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_normalize);
    tcase_add_test(tc, test_compress);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(ngram_hash_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
