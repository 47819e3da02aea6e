/* Unit tests for chat/tool_calls: Hermes-style calls found in whole texts
 * and in every split of them into two and three pieces (a stream), with the
 * same content and calls; blocks that are not calls, unclosed blocks and
 * partial markers stay content; arguments given as an object or a string;
 * a NUL byte (a token may decode to it) cuts nothing: outside a call it is
 * content, inside one the block stays content whole. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/tool_calls.c"

typedef struct {
    char content[4096]; /* NUL-terminated copy of the content (for the string checks) */
    size_t len;
} collected;

static void add(collected *c, strbuf *s) {
    ck_assert_uint_lt(c->len + s->len, sizeof(c->content));
    memcpy(c->content + c->len, s->s ? s->s : "", s->len);
    c->len += s->len;
    c->content[c->len] = 0;
    strbuf_free(s);
}

/* Feeds text (n bytes) in pieces cut at the given offsets (sorted, within it). */
static void run_n(tool_parser *p, collected *c, const char *text, size_t n, const size_t *cuts, int n_cuts) {
    size_t at = 0;
    strbuf s = {0};
    for (int i = 0; i <= n_cuts; i++) {
        size_t end = i < n_cuts ? cuts[i] : n;
        ck_assert_int_eq(tool_parser_feed(p, text + at, end - at, &s), 0);
        add(c, &s);
        at = end;
    }
    ck_assert_int_eq(tool_parser_finish(p, &s), 0);
    add(c, &s);
}

static void run(tool_parser *p, collected *c, const char *text, const size_t *cuts, int n_cuts) {
    run_n(p, c, text, strlen(text), cuts, n_cuts);
}

static const char TWO_CALLS[] =
    "Let me check both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": "
    "\"c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"CET\\\"}\"}\n"
    "</tool_call>";

static void check_two_calls(const tool_parser *p, const collected *c) {
    ck_assert_str_eq(c->content, "Let me check both.\n\n");
    ck_assert_int_eq(p->n_calls, 2);
    ck_assert_str_eq(p->calls[0].name, "get_weather");
    ck_assert_str_eq(p->calls[0].arguments, "{\"city\":\"Paris\",\"unit\":\"c\"}");
    ck_assert_str_eq(p->calls[1].name, "get_time");
    ck_assert_str_eq(p->calls[1].arguments, "{\"tz\": \"CET\"}"); /* a string: as given */
}

START_TEST(test_whole_and_every_split) {
    size_t n = strlen(TWO_CALLS);
    tool_parser p;
    collected c = {{0}, 0};
    tool_parser_init(&p, TOOL_FORMAT_HERMES);
    run(&p, &c, TWO_CALLS, NULL, 0);
    check_two_calls(&p, &c);
    tool_parser_free(&p);
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j < n; j += 7) { /* two cuts: i and j (every 7th, for time) */
            size_t cuts[2] = {i, j};
            collected d = {{0}, 0};
            tool_parser_init(&p, TOOL_FORMAT_HERMES);
            run(&p, &d, TWO_CALLS, cuts, 2);
            check_two_calls(&p, &d);
            tool_parser_free(&p);
        }
    }
}
END_TEST

START_TEST(test_content_is_streamed_at_once) {
    /* plain text and a '<' that cannot start a marker come out at once; a
     * tail that may start one waits */
    tool_parser p;
    tool_parser_init(&p, TOOL_FORMAT_HERMES);
    strbuf s = {0};
    ck_assert_int_eq(tool_parser_feed(&p, "a < b and ", 10, &s), 0);
    ck_assert_str_eq(s.s, "a < b and ");
    strbuf_free(&s);
    ck_assert_int_eq(tool_parser_feed(&p, "x <tool", 7, &s), 0);
    ck_assert_str_eq(s.s, "x ");
    strbuf_free(&s);
    ck_assert_int_eq(tool_parser_feed(&p, "box>", 4, &s), 0); /* "<toolbox>": not a marker after all */
    ck_assert_str_eq(s.s, "<toolbox>");
    strbuf_free(&s);
    ck_assert_int_eq(tool_parser_feed(&p, "<tool_call>{\"na", 15, &s), 0); /* an open call: held */
    ck_assert_uint_eq(s.len, 0);
    ck_assert_int_eq(p.n_calls, 0);
    ck_assert_int_eq(tool_parser_finish(&p, &s), 0); /* never closed: content as it came */
    ck_assert_str_eq(s.s, "<tool_call>{\"na");
    strbuf_free(&s);
    tool_parser_free(&p);
}
END_TEST

START_TEST(test_not_calls_stay_content) {
    static const char *bad[] = {
        "<tool_call>not json</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",                 /* no name */
        "<tool_call>{\"name\": \"\", \"arguments\": {}}</tool_call>", /* empty name */
        "<tool_call>{\"name\": \"f\", \"arguments\": 3}</tool_call>", /* arguments not an object */
        "<tool_call>[1, 2]</tool_call>",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        tool_parser p;
        collected c = {{0}, 0};
        tool_parser_init(&p, TOOL_FORMAT_HERMES);
        run(&p, &c, bad[i], NULL, 0);
        ck_assert_str_eq(c.content, bad[i]);
        ck_assert_int_eq(p.n_calls, 0);
        tool_parser_free(&p);
    }
    /* a good call after a bad one is still found */
    tool_parser p;
    collected c = {{0}, 0};
    tool_parser_init(&p, TOOL_FORMAT_HERMES);
    run(&p, &c, "<tool_call>oops</tool_call>x<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>", NULL, 0);
    ck_assert_str_eq(c.content, "<tool_call>oops</tool_call>x");
    ck_assert_int_eq(p.n_calls, 1);
    ck_assert_str_eq(p.calls[0].arguments, "{}");
    tool_parser_free(&p);
}
END_TEST

/* text (a literal with NULs) fed whole and cut at every point: content
 * want, and want_calls calls. */
#define CHECK_NUL(text, want, want_calls)                                                  \
    do {                                                                                \
        size_t n_ = sizeof(text) - 1;                                                   \
        for (size_t cut = 0; cut <= n_; cut++) {                                        \
            tool_parser p_;                                                             \
            collected c_ = {{0}, 0};                                                    \
            tool_parser_init(&p_, TOOL_FORMAT_HERMES);                                  \
            run_n(&p_, &c_, text, n_, &cut, 1);                                         \
            ck_assert_uint_eq(c_.len, sizeof(want) - 1);                                \
            ck_assert(!memcmp(c_.content, want, sizeof(want) - 1));                     \
            ck_assert_int_eq(p_.n_calls, want_calls);                                      \
            tool_parser_free(&p_);                                                      \
        }                                                                               \
    } while (0)

START_TEST(test_nul_cuts_nothing) {
    /* issue 23: content around a call keeps its NULs */
    CHECK_NUL("a\0b<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>c\0", "a\0bc\0", 1);
    /* a NUL inside a call (raw: no JSON allows it; escaped: cJSON would cut its
     * string there): the block stays content, whole */
    CHECK_NUL("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"a\0b\"}}</tool_call>",
              "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"a\0b\"}}</tool_call>", 0);
    CHECK_NUL("<tool_call>{\"name\": \"f\0g\", \"arguments\": {}}</tool_call>x",
              "<tool_call>{\"name\": \"f\0g\", \"arguments\": {}}</tool_call>x", 0);
    CHECK_NUL("<tool_call>{\"name\": \"f\", \"arguments\": {}}\0</tool_call>",
              "<tool_call>{\"name\": \"f\", \"arguments\": {}}\0</tool_call>", 0);
    CHECK_NUL("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"a\\u0000b\"}}</tool_call>",
              "<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"a\\u0000b\"}}</tool_call>", 0);
    /* an escaped backslash before u0000 is no NUL: a call */
    CHECK_NUL("<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": \"\\\\u0000\"}}</tool_call>", "", 1);
    /* a NUL inside a marker: no marker */
    CHECK_NUL("<tool_\0call>{}</tool_call>", "<tool_\0call>{}</tool_call>", 0);
}
END_TEST

START_TEST(test_detect) {
    ck_assert_int_eq(tool_format_detect("... <tool_call>\n{{ x }}\n</tool_call> ..."), TOOL_FORMAT_HERMES);
    ck_assert_int_eq(tool_format_detect("{{ messages }}"), TOOL_FORMAT_NONE);
    ck_assert_int_eq(tool_format_detect(NULL), TOOL_FORMAT_NONE);
}
END_TEST

/* The call text a forced call is built from parses back as that call (a
 * name with a quote escaped); a text cut inside a call is marked unclosed. */
START_TEST(test_call_text) {
    char *prefix = NULL;
    const char *suffix = NULL, *sep = NULL;
    ck_assert_int_eq(tool_format_call_text(TOOL_FORMAT_NONE, "f", &prefix, &suffix, &sep), -1);
    ck_assert_int_eq(tool_format_call_text(TOOL_FORMAT_HERMES, "get_\"x\"", &prefix, &suffix, &sep), 0);
    ck_assert_str_eq(prefix, "<tool_call>\n{\"name\": \"get_\\\"x\\\"\", \"arguments\": ");
    ck_assert_str_eq(suffix, "}\n</tool_call>");
    ck_assert_str_eq(sep, "\n");
    char text[256];
    strbuf content = {0};
    snprintf(text, sizeof(text), "%s{\"a\": [1]}%s%s%s{}", prefix, suffix, sep, prefix);
    tool_parser p;
    tool_parser_init(&p, TOOL_FORMAT_HERMES);
    ck_assert_int_eq(tool_parser_feed(&p, text, strlen(text), &content), 0);
    strbuf_free(&content);
    ck_assert_int_eq(tool_parser_finish(&p, &content), 0);
    ck_assert_int_eq(p.n_calls, 1);
    ck_assert_str_eq(p.calls[0].name, "get_\"x\"");
    ck_assert_str_eq(p.calls[0].arguments, "{\"a\":[1]}");
    ck_assert(p.unclosed);
    ck_assert_ptr_nonnull(strstr(content.s, "<tool_call>"));
    strbuf_free(&content);
    free(prefix);
    tool_parser_free(&p);
}
END_TEST

int main(void) {
    Suite *s = suite_create("tool_calls");
    TCase *tc = tcase_create("tool_calls");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_whole_and_every_split);
    tcase_add_test(tc, test_content_is_streamed_at_once);
    tcase_add_test(tc, test_not_calls_stay_content);
    tcase_add_test(tc, test_detect);
    tcase_add_test(tc, test_call_text);
    tcase_add_test(tc, test_nul_cuts_nothing);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
