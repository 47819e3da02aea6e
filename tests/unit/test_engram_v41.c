/* Unit tests of engram/engram_v41: the production DeepSeek-V4.1-Flash config
 * (tests/fixtures/deepseek_v41/config.json) gives table rows [384006168,
 * 384016682]; keys at top level work too; the derived ngram_hash_config; and
 * contradicting or malformed values refused with the key named. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/engram_v41.h"

static char *fixture(size_t *len) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/fixtures/deepseek_v41/config.json", src ? src : ".");
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

START_TEST(test_production) {
    size_t len;
    char *text = fixture(&len);
    engram_v41_config c;
    char err[512] = "";
    ck_assert_int_eq(engram_v41_config_parse(text, len, "v41", &c, err, sizeof err), ENGRAM_V41_OK);
    free(text);
    ck_assert_int_eq(c.n_layers, 2);
    ck_assert_int_eq(c.layer_ids[1], 14);
    ck_assert_int_eq(c.max_ngram_size, 4);
    ck_assert_int_eq(c.hc_mult, 4);
    ngram_hash_config hc = engram_v41_hash_config(&c, 99092, 2);
    ck_assert_int_eq(hc.n_head_per_ngram, 8);
    ck_assert_int_eq(hc.n_embed_per_ngram, 8 * 256);
    ck_assert_int_eq(hc.engram_vocab_size[0], 16000000);
    ck_assert_int_eq(hc.engram_vocab_size[2], 16000000);
    ck_assert_int_eq(hc.seed, 0);
    ngram_hash *h = NULL;
    ck_assert_int_eq(engram_v41_hash_create(&c, NULL, "v41", &h, err, sizeof err), ENGRAM_V41_OK);
    ck_assert_int_eq(ngram_hash_table_rows(h, 0), 384006168);
    ck_assert_int_eq(ngram_hash_table_rows(h, 1), 384016682);
    ck_assert_int_eq(ngram_hash_n_heads(h), 24);
    ck_assert_int_eq(ngram_hash_head_dim(h), 256);
    ngram_hash_destroy(h);

    /* a tokenizer whose Vc matches: the pad is compressed through its lookup */
    int64_t *lookup = malloc(99092 * sizeof *lookup);
    ck_assert_ptr_nonnull(lookup);
    for (int i = 0; i < 99092; i++) lookup[i] = 99091 - i;
    engram_v41_tokenizer tok = {lookup, 99092, 99092};
    ck_assert_int_eq(engram_v41_hash_create(&c, &tok, "v41", &h, err, sizeof err), ENGRAM_V41_OK);
    ngram_hash_history hist;
    ngram_hash_history_init(h, &hist);
    ck_assert_int_eq(hist.ids[0], 99089);
    ngram_hash_destroy(h);
    tok.vc = 98627;
    ck_assert_int_eq(engram_v41_hash_create(&c, &tok, "v41", &h, err, sizeof err), ENGRAM_V41_EMISMATCH);
    ck_assert_ptr_null(h);
    ck_assert_msg(strstr(err, "engram_compressed_vocab_size is 99092") && strstr(err, "98627"), "%s", err);
    free(lookup);

    /* one table row off */
    c.num_embeddings[1] += 1;
    ck_assert_int_eq(engram_v41_hash_create(&c, NULL, "v41", &h, err, sizeof err), ENGRAM_V41_EMISMATCH);
    ck_assert_msg(strstr(err, "engram_num_embeddings[1] is 384016683") && strstr(err, "384016682"), "%s",
                  err);
}
END_TEST

static const char TOP[] =
    "{\"hc_mult\":1,\"engram_layer_ids\":[0],\"engram_num_embeddings\":[%s],"
    "\"engram_max_ngram_size\":2,\"engram_vocab_size\":10,\"engram_n_heads\":2,"
    "\"engram_head_dim\":32,\"engram_pad_id\":2,\"engram_compressed_vocab_size\":50%s}";

START_TEST(test_top_level_and_alias) {
    char json[1024], err[512];
    engram_v41_config c;
    /* primes 11 and 13 above the start 10 */
    snprintf(json, sizeof json, TOP, "24", "");
    ck_assert_int_eq(engram_v41_config_parse(json, strlen(json), "t", &c, err, sizeof err), ENGRAM_V41_OK);
    ck_assert_int_eq(c.pad_token_id, 2);
    ngram_hash *h = NULL;
    ck_assert_int_eq(engram_v41_hash_create(&c, NULL, "t", &h, err, sizeof err), ENGRAM_V41_OK);
    ck_assert_int_eq(ngram_hash_primes(h, 0)[0], 11);
    ck_assert_int_eq(ngram_hash_primes(h, 0)[1], 13);
    ngram_hash_destroy(h);
    snprintf(json, sizeof json, TOP, "24", ",\"engram_pad_token_id\":3");
    ck_assert_int_eq(engram_v41_config_parse(json, strlen(json), "t", &c, err, sizeof err),
                     ENGRAM_V41_EMISMATCH);
    ck_assert_msg(strstr(err, "engram_pad_token_id 3 and engram_pad_id 2"), "%s", err);
}
END_TEST

/* Each case replaces one key of a valid top-level config; the message names it. */
START_TEST(test_bad_values) {
    static const struct {
        const char *rows, *extra, *needle;
        int status;
    } cases[] = {
        {"24", ",\"engram_head_dim\":48", "engram_head_dim", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_head_dim\":0", "engram_head_dim", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_n_heads\":0", "engram_n_heads", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_max_ngram_size\":1", "engram_max_ngram_size", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_max_ngram_size\":17", "engram_max_ngram_size", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_vocab_size\":[10]", "engram_vocab_size", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_vocab_size\":1e300", "engram_vocab_size", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_compressed_vocab_size\":0", "engram_compressed_vocab_size", ENGRAM_V41_ECONFIG},
        {"24", ",\"hc_mult\":17", "hc_mult", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_layer_ids\":[0,0]", "engram_layer_ids", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_layer_ids\":[-1]", "engram_layer_ids[0]", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_layer_ids\":[0.5]", "engram_layer_ids[0]", ENGRAM_V41_ECONFIG},
        {"24", ",\"engram_layer_ids\":[0,1]", "engram_num_embeddings has 1 entries", ENGRAM_V41_EMISMATCH},
        {"\"24\"", "", "engram_num_embeddings[0]", ENGRAM_V41_ECONFIG},
        {"0", "", "engram_num_embeddings[0]", ENGRAM_V41_ECONFIG},
        {"24,24,24,24,24", ",\"engram_n_heads\":1024,\"engram_max_ngram_size\":16,\"engram_layer_ids\":[0,1,2,3,4]",
         "hash heads", ENGRAM_V41_ECONFIG},
    };
    char json[1024], err[512];
    engram_v41_config c;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* cJSON keeps the first of duplicate keys: put the override first */
        snprintf(json, sizeof json, "{%s%s", cases[i].extra[0] ? cases[i].extra + 1 : "",
                 cases[i].extra[0] ? "," : "");
        char rest[900];
        snprintf(rest, sizeof rest, TOP, cases[i].rows, "");
        strncat(json, rest + 1, sizeof json - strlen(json) - 1);
        err[0] = 0;
        int st = engram_v41_config_parse(json, strlen(json), "t", &c, err, sizeof err);
        ck_assert_msg(st == cases[i].status, "case %zu: status %d (%s)", i, st, err);
        ck_assert_msg(strstr(err, cases[i].needle) != NULL, "case %zu: %s", i, err);
        ck_assert_msg(strchr(err, '\n') == NULL, "case %zu: two lines", i);
    }
    /* missing keys and non-objects */
    const char *bad[] = {"", "[]", "{", "{\"text_config\":{}}", "{\"engram_layer_ids\":[1]}", "null"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_int_lt(engram_v41_config_parse(bad[i], strlen(bad[i]), "t", &c, err, sizeof err), 0);
    ck_assert_int_eq(engram_v41_config_parse(bad[4], strlen(bad[4]), "t", &c, err, sizeof err),
                     ENGRAM_V41_ECONFIG);
    ck_assert_msg(strstr(err, "missing key engram_num_embeddings"), "%s", err);
    /* wrong rows: derived 24, stated 25 */
    snprintf(json, sizeof json, TOP, "25", "");
    ck_assert_int_eq(engram_v41_config_parse(json, strlen(json), "t", &c, err, sizeof err), ENGRAM_V41_OK);
    ngram_hash *h = NULL;
    ck_assert_int_eq(engram_v41_hash_create(&c, NULL, "t", &h, err, sizeof err), ENGRAM_V41_EMISMATCH);
    ck_assert_msg(strstr(err, "engram_num_embeddings[0] is 25") && strstr(err, "give 24 rows"), "%s", err);
    /* pad at or above Vc without a tokenizer */
    c.num_embeddings[0] = 24;
    c.pad_token_id = 50;
    ck_assert_int_eq(engram_v41_hash_create(&c, NULL, "t", &h, err, sizeof err), ENGRAM_V41_EMISMATCH);
    ck_assert_msg(strstr(err, "engram_pad_token_id 50"), "%s", err);
    ck_assert_ptr_null(h);
}
END_TEST

static Suite *v41_suite(void) {
    Suite *s = suite_create("engram_v41");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_production);
    tcase_add_test(tc, test_top_level_and_alias);
    tcase_add_test(tc, test_bad_values);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(v41_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
