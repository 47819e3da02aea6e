/* Unit tests of tokenizer/tokenizer: a hand-made byte-level BPE whose results
 * are worked out by hand (merges by rank, dropped unknown characters,
 * lossy UTF-8 in decode, incremental decoding holding back partial
 * characters, added tokens, templates, load errors), plus the project's
 * trained tokenizer (found through ENGRAM_SOURCE_DIR) across threads. */
#include "tokenizer/tokenizer.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* vocab: a b ab Ġ Ġab c Ã © ; <s> is an added special token (id 8), <x> a
 * normal added token (id 9, lstrip). 'Ã' '©' are the byte-level chars of the
 * two bytes of 'é' (C3 A9). */
static const char *TINY =
    "{\"version\":\"1.0\",\"added_tokens\":["
    "{\"id\":8,\"content\":\"<s>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"
    "\"normalized\":false,\"special\":true},"
    "{\"id\":9,\"content\":\"<x>\",\"single_word\":false,\"lstrip\":true,\"rstrip\":false,"
    "\"normalized\":false,\"special\":false}],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,"
    "\"use_regex\":true},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
    "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{"
    "\"<s>\":{\"id\":\"<s>\",\"ids\":[8],\"tokens\":[\"<s>\"]}}},"
    "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
    "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,"
    "\"byte_fallback\":false,\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"\xc4\xa0\":3,\"\xc4\xa0" "ab\":4,"
    "\"c\":5,\"\xc3\x83\":6,\"\xc2\xa9\":7},\"merges\":[\"a b\",[\"\xc4\xa0\",\"ab\"]]}}";

static tokenizer *tiny(void) {
    tokenizer *t = NULL;
    char err[256] = "";
    int rc = tokenizer_load_json(TINY, strlen(TINY), &t, err, sizeof err);
    ck_assert_msg(rc == 0, "load: %s", err);
    return t;
}

static void expect_ids(const tokenizer *t, const char *text, bool special, const int32_t *want, size_t n) {
    int32_t *ids;
    size_t k;
    ck_assert_int_eq(tokenizer_encode(t, text, strlen(text), special, &ids, &k), 0);
    ck_assert_uint_eq(k, n);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(ids[i], want[i]);
    free(ids);
}

static void expect_text(const tokenizer *t, const int32_t *ids, size_t n, bool skip, const char *want) {
    char *out;
    size_t len;
    ck_assert_int_eq(tokenizer_decode(t, ids, n, skip, &out, &len), 0);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_str_eq(out, want);
    free(out);
}

START_TEST(test_encode_merges) {
    tokenizer *t = tiny();
    expect_ids(t, "ab ab", false, (int32_t[]){2, 4}, 2);
    expect_ids(t, "ab ab", true, (int32_t[]){8, 2, 4}, 3);
    expect_ids(t, "abz", false, (int32_t[]){2}, 1); /* 'z' is not in the vocabulary: dropped */
    expect_ids(t, "", false, NULL, 0);
    expect_ids(t, "", true, (int32_t[]){8}, 1);
    expect_ids(t, "\xc3\xa9", false, (int32_t[]){6, 7}, 2);
    expect_ids(t, "a<s>b", false, (int32_t[]){0, 8, 1}, 3);
    expect_ids(t, "a  <x>b", false, (int32_t[]){0, 9, 1}, 3); /* lstrip eats the spaces */
    tokenizer_destroy(t);
}
END_TEST

START_TEST(test_decode_lossy) {
    tokenizer *t = tiny();
    expect_text(t, (int32_t[]){2, 4}, 2, false, "ab ab");
    expect_text(t, (int32_t[]){8, 2}, 2, false, "<s>ab");
    expect_text(t, (int32_t[]){8, 2}, 2, true, "ab");
    expect_text(t, (int32_t[]){6, 7}, 2, false, "\xc3\xa9");
    expect_text(t, (int32_t[]){6}, 1, false, "\xef\xbf\xbd");           /* lone lead byte */
    expect_text(t, (int32_t[]){7, 6, 0}, 3, false, "\xef\xbf\xbd\xef\xbf\xbd" "a");
    expect_text(t, (int32_t[]){-1, 1000, 0}, 3, false, "a");               /* unknown ids skipped */
    tokenizer_destroy(t);
}
END_TEST

static char *step(tokenizer_stream *s, int32_t id) {
    char *out;
    size_t len;
    ck_assert_int_eq(tokenizer_stream_step(s, id, &out, &len), 0);
    ck_assert_uint_eq(strlen(out), len);
    return out;
}

static void expect_step(tokenizer_stream *s, int32_t id, const char *want) {
    char *out = step(s, id);
    ck_assert_str_eq(out, want);
    free(out);
}

static void expect_flush(tokenizer_stream *s, const char *want) {
    char *out;
    size_t len;
    ck_assert_int_eq(tokenizer_stream_flush(s, &out, &len), 0);
    ck_assert_str_eq(out, want);
    free(out);
}

START_TEST(test_stream_holds_partial_chars) {
    tokenizer *t = tiny();
    tokenizer_stream *s;
    ck_assert_int_eq(tokenizer_stream_create(t, false, &s), 0);
    expect_step(s, 2, "ab");
    expect_step(s, 6, "");          /* first byte of 'é': held */
    expect_step(s, 7, "\xc3\xa9");  /* completed */
    expect_step(s, 6, "");
    expect_step(s, 0, "\xef\xbf\xbd" "a"); /* broken by 'a': replaced, as decode does */
    expect_step(s, 6, "");
    expect_flush(s, "\xef\xbf\xbd");      /* incomplete at the end */
    expect_step(s, 4, " ab");             /* flush reset the stream */
    expect_flush(s, "");
    tokenizer_stream_destroy(s);
    ck_assert_int_eq(tokenizer_stream_create(t, true, &s), 0);
    expect_step(s, 8, "");
    expect_step(s, 0, "a");
    expect_flush(s, "");
    tokenizer_stream_destroy(s);
    tokenizer_stream_destroy(NULL);
    tokenizer_destroy(t);
}
END_TEST

START_TEST(test_vocab_queries) {
    tokenizer *t = tiny();
    size_t len;
    ck_assert_uint_eq(tokenizer_vocab_size(t), 10);
    ck_assert_int_eq(tokenizer_token_to_id(t, "ab", 2), 2);
    ck_assert_int_eq(tokenizer_token_to_id(t, "<s>", 3), 8);
    ck_assert_int_eq(tokenizer_token_to_id(t, "zz", 2), -1);
    const char *s = tokenizer_id_to_token(t, 4, &len);
    ck_assert_uint_eq(len, 4);
    ck_assert(memcmp(s, "\xc4\xa0" "ab", 4) == 0);
    s = tokenizer_id_to_token(t, 9, &len);
    ck_assert(len == 3 && memcmp(s, "<x>", 3) == 0);
    ck_assert_ptr_null(tokenizer_id_to_token(t, 10, &len));
    ck_assert_ptr_null(tokenizer_id_to_token(t, -5, &len));
    ck_assert(tokenizer_is_special(t, 8));
    ck_assert(!tokenizer_is_special(t, 9));
    ck_assert(!tokenizer_is_special(t, 2));
    ck_assert_int_eq(tokenizer_bos_id(t), 8);
    ck_assert_int_eq(tokenizer_eos_id(t), -1);
    tokenizer_destroy(t);
    tokenizer_destroy(NULL);
}
END_TEST

START_TEST(test_invalid_input) {
    tokenizer *t = tiny();
    int32_t *ids = (int32_t *)1;
    size_t n = 7;
    ck_assert_int_eq(tokenizer_encode(t, "a\xff", 2, false, &ids, &n), TOKENIZER_ERR_INVALID_UTF8);
    ck_assert_ptr_null(ids);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(tokenizer_encode(t, "\xed\xa0\x80", 3, false, &ids, &n), TOKENIZER_ERR_INVALID_UTF8);
    ck_assert_int_eq(tokenizer_encode(t, "a\0b", 3, false, &ids, &n), 0); /* NUL is a character */
    ck_assert_uint_eq(n, 2);
    free(ids);
    tokenizer_destroy(t);
}
END_TEST

static int load_str(const char *json, char *err, size_t errlen) {
    tokenizer *t = (tokenizer *)1;
    int rc = tokenizer_load_json(json, strlen(json), &t, err, errlen);
    if (rc == 0) tokenizer_destroy(t);
    else ck_assert_ptr_null(t);
    return rc;
}

START_TEST(test_load_errors) {
    char err[256];
    ck_assert_int_eq(load_str("", err, sizeof err), TOKENIZER_ERR_PARSE);
    ck_assert_int_eq(load_str("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", err, sizeof err),
                     TOKENIZER_ERR_UNSUPPORTED);
    ck_assert(strstr(err, "Unigram") != NULL);
    ck_assert_int_eq(load_str("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]},"
                              "\"pre_tokenizer\":{\"type\":\"Whatever\"}}", err, sizeof err),
                     TOKENIZER_ERR_UNSUPPORTED);
    ck_assert(strstr(err, "Whatever") != NULL);
    ck_assert_int_eq(load_str("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[\"a a\"]}}", err, sizeof err),
                     TOKENIZER_ERR_PARSE);
    ck_assert_int_eq(load_str("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}", err, sizeof err), 0);
    tokenizer *t;
    ck_assert_int_eq(tokenizer_load("/nonexistent/dir", &t, err, sizeof err), TOKENIZER_ERR_IO);
    ck_assert_ptr_null(t);
    for (int s = 1; s >= -10; s--) ck_assert_ptr_nonnull(tokenizer_status_str(s));
}
END_TEST

/* The trained fixture: known ids, and the same results from two threads. */
static tokenizer *trained(void) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokenizers/trained", src ? src : ".");
    tokenizer *t = NULL;
    int rc = tokenizer_load(path, &t, err, sizeof err);
    ck_assert_msg(rc == 0, "%s", err);
    return t;
}

static void *encode_many(void *arg) {
    const tokenizer *t = arg;
    static const int32_t want[] = {0, 504, 402, 223, 643, 1341, 223, 1641, 90, 1};
    const char *text = "The server 2024 <|im_start|>x";
    for (int i = 0; i < 200; i++) {
        int32_t *ids;
        size_t n;
        if (tokenizer_encode(t, text, strlen(text), true, &ids, &n)) return (void *)1;
        bool ok = n == 10 && memcmp(ids, want, sizeof want) == 0;
        free(ids);
        if (!ok) return (void *)1;
    }
    return NULL;
}

START_TEST(test_trained_threads) {
    tokenizer *t = trained();
    expect_ids(t, "Hello world", true, (int32_t[]){0, 42, 71, 286, 81, 260, 281, 305, 1}, 9);
    ck_assert_uint_eq(tokenizer_vocab_size(t), 1647);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, encode_many, t), 0);
    for (int i = 0; i < 2; i++) {
        void *r;
        pthread_join(th[i], &r);
        ck_assert_ptr_null(r);
    }
    tokenizer_destroy(t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_encode_merges);
    tcase_add_test(tc, test_decode_lossy);
    tcase_add_test(tc, test_stream_holds_partial_chars);
    tcase_add_test(tc, test_vocab_queries);
    tcase_add_test(tc, test_invalid_input);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_trained_threads);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
