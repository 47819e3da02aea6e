/* Unit tests for chat/reasoning: Qwen3's <think>...</think> at the start
 * and DeepSeek-R1's reasoning opened by the prompt, split from the content
 * the same way whether the text comes whole or in any two or three pieces;
 * a NUL byte (a token may decode to it) is text like any other. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/reasoning.c"

typedef struct {
    strbuf r, c;
} split;

/* text (n bytes) fed cut at a and b, then finished. */
static split run(reasoning_format f, const char *text, size_t n, size_t a, size_t b) {
    split out = {{0}, {0}};
    reasoning_splitter r;
    reasoning_init(&r, f);
    size_t cuts[3] = {a, b, n}, at = 0;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(reasoning_feed(&r, text + at, cuts[i] - at, &out.r, &out.c), 0);
        at = cuts[i];
    }
    ck_assert_int_eq(reasoning_finish(&r, &out.r, &out.c), 0);
    reasoning_free(&r);
    return out;
}

static bool same(const strbuf *b, const char *want, size_t wl) { return b->len == wl && !memcmp(b->s ? b->s : "", want, wl); }

/* The same with lengths (text, want_r and want_c may hold NULs). */
static void check_n(reasoning_format f, const char *text, size_t n, const char *want_r, size_t rl, const char *want_c,
                    size_t cl) {
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++) {
            split s = run(f, text, n, a, b);
            ck_assert_msg(same(&s.r, want_r, rl) && same(&s.c, want_c, cl), "%s cut at %zu, %zu: [%s] [%s]", text,
                          a, b, s.r.s ? s.r.s : "", s.c.s ? s.c.s : "");
            strbuf_free(&s.r), strbuf_free(&s.c);
        }
}

static void check(reasoning_format f, const char *text, const char *want_r, const char *want_c) {
    check_n(f, text, strlen(text), want_r, strlen(want_r), want_c, strlen(want_c));
}

#define CHECK_NUL(f, text, want_r, want_c) \
    check_n(f, text, sizeof(text) - 1, want_r, sizeof(want_r) - 1, want_c, sizeof(want_c) - 1)

START_TEST(test_nul_is_text) {
    /* issue 23: a token decoding to 0x00 inside the reasoning, in the
     * content, and beside the markers: nothing is cut */
    CHECK_NUL(REASONING_QWEN3, "<think>a\0b</think>c\0d", "a\0b", "c\0d");
    CHECK_NUL(REASONING_QWEN3, "<think>\0</think>\0", "\0", "\0");
    CHECK_NUL(REASONING_QWEN3, "\0<think>x</think>", "", "\0<think>x</think>"); /* not at the start */
    CHECK_NUL(REASONING_QWEN3, "<think>x</th\0ink>y", "x</th\0ink>y", "");     /* no marker: all reasoning */
    CHECK_NUL(REASONING_DEEPSEEK_R1, "r\0r</think>c\0", "r\0r", "c\0");
    CHECK_NUL(REASONING_NONE, "<think>\0</think>\0x", "", "<think>\0</think>\0x");
}
END_TEST

START_TEST(test_qwen3) {
    check(REASONING_QWEN3, "<think>\nLet me add.\n</think>\n\n2 + 2 = 4", "\nLet me add.\n", "\n\n2 + 2 = 4");
    check(REASONING_QWEN3, "<think>\n\n</think>\n\nHi", "\n\n", "\n\nHi");
    check(REASONING_QWEN3, "No thinking here </think> at all", "", "No thinking here </think> at all");
    check(REASONING_QWEN3, "<thin", "", "<thin");                   /* a start that never became a marker */
    check(REASONING_QWEN3, "<think>cut off mid thought", "cut off mid thought", "");
    check(REASONING_QWEN3, "<think>a</thi", "a</thi", "");            /* unclosed: all reasoning */
}
END_TEST

START_TEST(test_deepseek_r1) {
    check(REASONING_DEEPSEEK_R1, "First, 2 + 2.\n</think>\n\n4", "First, 2 + 2.\n", "\n\n4");
    check(REASONING_DEEPSEEK_R1, "<think>\nhm\n</think>4", "\nhm\n", "4");
    check(REASONING_DEEPSEEK_R1, "never closed", "never closed", "");
}
END_TEST

START_TEST(test_none) {
    check(REASONING_NONE, "<think>x</think>y", "", "<think>x</think>y");
}
END_TEST

int main(void) {
    Suite *s = suite_create("reasoning");
    TCase *tc = tcase_create("reasoning");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_qwen3);
    tcase_add_test(tc, test_deepseek_r1);
    tcase_add_test(tc, test_none);
    tcase_add_test(tc, test_nul_is_text);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
