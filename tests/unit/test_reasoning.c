/* Unit tests for chat/reasoning: Qwen3's <think>...</think> at the start
 * and DeepSeek-R1's reasoning opened by the prompt, split from the content
 * the same way whether the text comes whole or in any two or three pieces. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/reasoning.c"

typedef struct {
    char r[1024], c[1024];
} split;

static void take(char *dst, char *s) {
    if (!s) return;
    ck_assert(s[0]); /* empty comes as NULL */
    ck_assert_uint_lt(strlen(dst) + strlen(s), 1024);
    strcat(dst, s);
    free(s);
}

static split run(reasoning_format f, const char *text, size_t a, size_t b) {
    split out;
    memset(&out, 0, sizeof(out));
    reasoning_splitter r;
    reasoning_init(&r, f);
    size_t n = strlen(text), cuts[3] = {a, b, n}, at = 0;
    char *x, *y;
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(reasoning_feed(&r, text + at, cuts[i] - at, &x, &y), 0);
        take(out.r, x), take(out.c, y);
        at = cuts[i];
    }
    ck_assert_int_eq(reasoning_finish(&r, &x, &y), 0);
    take(out.r, x), take(out.c, y);
    reasoning_free(&r);
    return out;
}

static void check(reasoning_format f, const char *text, const char *want_r, const char *want_c) {
    size_t n = strlen(text);
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++) {
            split s = run(f, text, a, b);
            ck_assert_msg(!strcmp(s.r, want_r) && !strcmp(s.c, want_c), "%s cut at %zu, %zu: [%s] [%s]", text, a, b,
                          s.r, s.c);
        }
}

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
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
