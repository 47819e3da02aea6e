/* Unit tests for chat/chat_template: core rendering cases, whitespace
 * control, Python value semantics, errors and limits, ChatML fallback and
 * loading a checkpoint directory from tests/fixtures. */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat_template.h"

static const char *MSGS = "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"Hi\"},"
                          "{\"role\":\"assistant\",\"content\":\"Yo\"}]";

/* Renders src over msgs; returns the heap result or NULL with *status set. */
static char *render(const char *src, const char *msgs, const char *tools, bool agp, int *status, char *err,
                    size_t errlen) {
    chat_template *t = NULL;
    int st = chat_template_create(src, "<s>", "</s>", &t, err, errlen);
    if (st) {
        *status = st;
        return NULL;
    }
    char *out = NULL;
    *status = chat_template_render_json(t, msgs, tools, NULL, agp, &out, NULL, err, errlen);
    chat_template_destroy(t);
    return out;
}

#define CHECK_RENDER(src, want)                                                       \
    do {                                                                              \
        int st_;                                                                      \
        char err_[256] = "";                                                          \
        char *got_ = render(src, MSGS, NULL, false, &st_, err_, sizeof err_);         \
        ck_assert_msg(st_ == 0, "template %s failed: %s", src, err_);                 \
        ck_assert_str_eq(got_, want);                                                 \
        free(got_);                                                                   \
    } while (0)

#define CHECK_FAIL(src, want_status)                                                  \
    do {                                                                              \
        int st_;                                                                      \
        char err_[256] = "";                                                          \
        char *got_ = render(src, MSGS, NULL, false, &st_, err_, sizeof err_);         \
        ck_assert_msg(got_ == NULL, "template %s rendered %s", src, got_ ? got_ : ""); \
        ck_assert_int_eq(st_, want_status);                                           \
        ck_assert(err_[0] != 0 && strchr(err_, '\n') == NULL);                        \
    } while (0)

START_TEST(test_basic_loop) {
    CHECK_RENDER("{% for m in messages %}<{{ m.role }}>{{ m['content'] }}{% endfor %}", "<system>S<user>Hi<assistant>Yo");
    CHECK_RENDER("{{ bos_token }}{{ messages|length }}{{ eos_token }}", "<s>3</s>");
    CHECK_RENDER("{% for m in messages %}{{ loop.index }}{{ loop.first }}{{ loop.last }};{% endfor %}",
                 "1TrueFalse;2FalseFalse;3FalseTrue;");
}
END_TEST

START_TEST(test_whitespace_control) {
    CHECK_RENDER("{% if true %}\n  x\n{% endif %}\n", "  x\n");
    CHECK_RENDER("  {% if true %}\nA{% endif %}", "A");
    CHECK_RENDER("a  {{- 'b' -}}  \n c", "abc");
    CHECK_RENDER("a {#- c -#} b", "ab");
    CHECK_RENDER("{% raw %}{{ x }}{% endraw %}", "{{ x }}");
    CHECK_RENDER("x\n", "x");
}
END_TEST

START_TEST(test_python_values) {
    CHECK_RENDER("{{ [1, 'a', none, true, 2.5] }}", "[1, 'a', None, True, 2.5]");
    CHECK_RENDER("{{ {'k': \"it's\"} }}", "{'k': \"it's\"}");
    CHECK_RENDER("{{ 10 / 4 }} {{ 7 // -2 }} {{ -7 % 3 }} {{ 1e16 }} {{ 0.1 + 0.2 }}", "2.5 -4 2 1e+16 0.30000000000000004");
    CHECK_RENDER("{{ 'héllo'[1:3] }}{{ 'abc'[::-1] }}{{ 'héllo'|length }}", "élcba5");
    CHECK_RENDER("{{ 'a,b'.split(',') }} {{ '  x '.strip() }}|", "['a', 'b'] x|");
    CHECK_RENDER("{{ {'a': [1, 2.0, 'é\"']}|tojson }}", "{\"a\": [1, 2.0, \"é\\\"\"]}");
    CHECK_RENDER("{{ {'a': []}|tojson(indent=2) }}", "{\n  \"a\": []\n}");
}
END_TEST

START_TEST(test_undefined_semantics) {
    CHECK_RENDER("[{{ nope }}]{{ nope is defined }}{{ messages[0].nope is defined }}{{ none.x is defined }}",
                 "[]FalseFalseFalse");
    CHECK_RENDER("{{ nope|default('d') }}{{ nope|length }}{{ 'x' in nope }}", "d0False");
    CHECK_FAIL("{{ nope.attr }}", CHAT_TEMPLATE_ERR_RENDER);
    CHECK_FAIL("{{ nope + 1 }}", CHAT_TEMPLATE_ERR_RENDER);
}
END_TEST

START_TEST(test_namespace_and_scoping) {
    CHECK_RENDER("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", "3");
    CHECK_RENDER("{% set x = 0 %}{% for m in messages %}{% set x = 5 %}{% endfor %}{{ x }}", "0");
    CHECK_RENDER("{% if true %}{% set y = 1 %}{% endif %}{{ y }}", "1");
    CHECK_RENDER("{% macro f(a, b='B') %}{{ a }}{{ b }}{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}", "1B23");
    CHECK_RENDER("{% set b %}x{{ 1 }}{% endset %}{{ b }}", "x1");
}
END_TEST

START_TEST(test_errors) {
    CHECK_FAIL("{% if true %}", CHAT_TEMPLATE_ERR_PARSE);
    CHECK_FAIL("{{ x|nosuch }}", CHAT_TEMPLATE_ERR_PARSE);
    CHECK_FAIL("{{ x|wordwrap }}", CHAT_TEMPLATE_ERR_UNSUPPORTED);
    CHECK_FAIL("{{ raise_exception('bad') }}", CHAT_TEMPLATE_ERR_RENDER);
    CHECK_FAIL("{{ range(1000000) }}", CHAT_TEMPLATE_ERR_RENDER);
    CHECK_FAIL("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", CHAT_TEMPLATE_ERR_LIMIT);
    CHECK_FAIL("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", CHAT_TEMPLATE_ERR_LIMIT);
    int st;
    char err[256];
    char *out = render("{{ 1 }}", "[", NULL, false, &st, err, sizeof err);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(st, CHAT_TEMPLATE_ERR_PARSE);
    out = render("{{ 1 }}", "[]", "{\"not\": \"a list\"}", false, &st, err, sizeof err);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(st, CHAT_TEMPLATE_ERR_PARSE);
    ck_assert_str_eq(chat_template_status_str(CHAT_TEMPLATE_ERR_LIMIT), "limit exceeded");
}
END_TEST

START_TEST(test_limits) {
    chat_template *t = NULL;
    char err[256];
    ck_assert_int_eq(chat_template_create("{% for i in range(100) %}xxxxxxxxxx{% endfor %}", NULL, NULL, &t, err, sizeof err), 0);
    chat_template_limits lim;
    chat_template_default_limits(&lim);
    lim.max_output_bytes = 500;
    chat_template_set_limits(t, &lim);
    char *out = NULL;
    ck_assert_int_eq(chat_template_render_json(t, "[]", NULL, NULL, false, &out, NULL, err, sizeof err), CHAT_TEMPLATE_ERR_LIMIT);
    ck_assert_ptr_null(out);
    lim.max_output_bytes = 1000;
    chat_template_set_limits(t, &lim);
    ck_assert_int_eq(chat_template_render_json(t, "[]", NULL, NULL, false, &out, NULL, err, sizeof err), 0);
    ck_assert_uint_eq(strlen(out), 1000);
    free(out);
    chat_template_destroy(t);
    chat_template_destroy(NULL);
}
END_TEST

START_TEST(test_fallback_chatml) {
    chat_template *t = NULL;
    char err[256];
    ck_assert_int_eq(chat_template_create(NULL, NULL, NULL, &t, err, sizeof err), 0);
    ck_assert(chat_template_is_fallback(t));
    char *out = NULL;
    ck_assert_int_eq(chat_template_render_json(t, "[{\"role\":\"user\",\"content\":\"hi\"}]", NULL, NULL, true, &out, NULL, err, sizeof err), 0);
    ck_assert_str_eq(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    chat_template_destroy(t);
}
END_TEST

START_TEST(test_load_fixture_dirs) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char dir[4096];
    char err[256];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/qwen3", src ? src : ".");
    chat_template *t = NULL;
    ck_assert_msg(chat_template_load_dir(dir, &t, err, sizeof err) == 0, "%s", err);
    ck_assert(!chat_template_is_fallback(t));
    char *out = NULL;
    size_t out_len = 0;
    ck_assert_int_eq(chat_template_render_json(t, "[{\"role\":\"user\",\"content\":\"hi\"}]", NULL,
                                             "{\"enable_thinking\": false}", true, &out, &out_len, err, sizeof err), 0);
    ck_assert_str_eq(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
    ck_assert_uint_eq(out_len, strlen(out));
    free(out);
    /* a NUL inside content survives, with its length */
    ck_assert_int_eq(chat_template_render_json(t, "[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]", NULL, NULL,
                                             false, &out, &out_len, err, sizeof err), 0);
    ck_assert_uint_eq(out_len, strlen("<|im_start|>user\na") + 1 + strlen("b<|im_end|>\n"));
    ck_assert(memcmp(out + strlen("<|im_start|>user\na"), "\0b<|im_end|>\n", 13) == 0);
    free(out);
    chat_template_destroy(t);

    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/deepseek_v3", src ? src : ".");
    ck_assert_msg(chat_template_load_dir(dir, &t, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(chat_template_render_json(t, MSGS, NULL, NULL, true, &out, NULL, err, sizeof err), 0);
    ck_assert_str_eq(out, "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜>Yo<｜end▁of▁sentence｜><｜Assistant｜>");
    free(out);
    chat_template_destroy(t);
}
END_TEST

/* Renders the Qwen3 template under a growing memory limit, then a growing
 * output limit: every attempt is OK or ERR_LIMIT, and the first success gives
 * the unlimited result (error paths unwind cleanly; ASan checks for leaks). */
START_TEST(test_growing_limits) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char dir[4096], err[256];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/tokenizers/qwen3", src ? src : ".");
    chat_template *t = NULL;
    ck_assert_msg(chat_template_load_dir(dir, &t, err, sizeof err) == 0, "%s", err);
    const char *msgs = "[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"q\"},"
                       "{\"role\":\"assistant\",\"content\":\"<think>r</think>a\",\"tool_calls\":[{\"function\":"
                       "{\"name\":\"f\",\"arguments\":{\"x\":[1,2.5,null]}}}]},{\"role\":\"tool\",\"content\":\"42\"}]";
    const char *tools = "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}]";
    char *want = NULL;
    ck_assert_int_eq(chat_template_render_json(t, msgs, tools, NULL, true, &want, NULL, err, sizeof err), 0);
    size_t want_len = strlen(want);
    chat_template_limits lim;
    int ok = 0;
    for (size_t mem = 0; mem <= ((size_t)4 << 20) && !ok; mem += 16u << 10) {
        chat_template_default_limits(&lim);
        lim.max_memory_bytes = mem;
        chat_template_set_limits(t, &lim);
        char *out = NULL;
        int st = chat_template_render_json(t, msgs, tools, NULL, true, &out, NULL, err, sizeof err);
        if (st == CHAT_TEMPLATE_ERR_LIMIT) {
            ck_assert_ptr_null(out);
            continue;
        }
        ck_assert_msg(st == 0, "memory limit %zu: status %d: %s", mem, st, err);
        ck_assert_str_eq(out, want);
        free(out);
        ok = 1;
    }
    ck_assert(ok);
    for (size_t cap = 0; cap <= want_len; cap++) {
        chat_template_default_limits(&lim);
        lim.max_output_bytes = cap;
        chat_template_set_limits(t, &lim);
        char *out = NULL;
        int st = chat_template_render_json(t, msgs, tools, NULL, true, &out, NULL, err, sizeof err);
        if (cap < want_len) {
            ck_assert_int_eq(st, CHAT_TEMPLATE_ERR_LIMIT);
            ck_assert_ptr_null(out);
        } else {
            ck_assert_int_eq(st, 0);
            ck_assert_str_eq(out, want);
            free(out);
        }
    }
    free(want);
    chat_template_destroy(t);
}
END_TEST

/* cJSON trees render exactly as the server's old path did: the tree printed
 * by cJSON, then read as JSON text (numbers as cJSON prints them, duplicate
 * keys, escapes, non-ASCII, nesting), and bad UTF-8 fails both ways. */
START_TEST(test_cjson_trees) {
    static const char *const inputs[] = {
        "[1, 1.0, -0.0, 2.5, 0.1, 1e15, 1e16, 3000000000, 12345678901234567, -2147483648, 1e400, -1e-7]",
        "[{\"a\": 1, \"b\": [true, false, null], \"a\": 2}, {}, []]",
        "[\"\\u00e9\\n\\t\\\"q\\\" \\\\ \\u0001 \\ud83d\\ude00 \\u2028 日本\"]",
        "[[[[[[[[[[[[[[[[[[[[{\"deep\": [1, {\"x\": 2.0}]}]]]]]]]]]]]]]]]]]]]]",
    };
    const char *src = "{{ messages|tojson }}|{{ messages }}|{{ tools|tojson }}|{{ x }}|{{ messages[0] is mapping }}";
    chat_template *t = NULL;
    char err[256];
    ck_assert_int_eq(chat_template_create(src, NULL, NULL, &t, err, sizeof err), 0);
    cJSON *tools = cJSON_Parse("[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"minimum\": 1.0}}]");
    cJSON *extra = cJSON_Parse("{\"x\": 4.0}");
    char *tools_text = cJSON_PrintUnformatted(tools), *extra_text = cJSON_PrintUnformatted(extra);
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        cJSON *msgs = cJSON_Parse(inputs[i]);
        ck_assert_ptr_nonnull(msgs);
        char *text = cJSON_PrintUnformatted(msgs), *want = NULL, *got = NULL;
        size_t want_len = 0, got_len = 0;
        ck_assert_int_eq(chat_template_render_json(t, text, tools_text, extra_text, false, &want, &want_len, err, sizeof err), 0);
        ck_assert_int_eq(chat_template_render_ex(t, msgs, tools, extra, false, &got, &got_len, err, sizeof err), 0);
        ck_assert_uint_eq(got_len, want_len);
        ck_assert_str_eq(got, want);
        free(want);
        free(got);
        free(text);
        cJSON_Delete(msgs);
    }
    cJSON *bad = cJSON_CreateArray();
    cJSON_AddItemToArray(bad, cJSON_CreateString("\xff"));
    char *out = NULL;
    ck_assert_int_eq(chat_template_render(t, bad, NULL, false, &out, err, sizeof err), CHAT_TEMPLATE_ERR_PARSE);
    ck_assert_ptr_null(out);
    ck_assert_int_eq(chat_template_render(t, NULL, NULL, false, &out, err, sizeof err), CHAT_TEMPLATE_ERR_PARSE);
    cJSON_Delete(bad);
    free(tools_text);
    free(extra_text);
    cJSON_Delete(tools);
    cJSON_Delete(extra);
    chat_template_destroy(t);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("chat_template");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_basic_loop);
    tcase_add_test(tc, test_whitespace_control);
    tcase_add_test(tc, test_python_values);
    tcase_add_test(tc, test_undefined_semantics);
    tcase_add_test(tc, test_namespace_and_scoping);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_limits);
    tcase_add_test(tc, test_fallback_chatml);
    tcase_add_test(tc, test_load_fixture_dirs);
    tcase_add_test(tc, test_growing_limits);
    tcase_add_test(tc, test_cjson_trees);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
