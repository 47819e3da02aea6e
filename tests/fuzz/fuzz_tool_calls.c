/* libFuzzer target: chat/tool_calls.c and chat/reasoning.c on arbitrary
 * text. The first two bytes pick two cut points; the text fed in three
 * pieces must give exactly what it gives fed whole (a stream and a whole
 * response agree): the tool parser's content and calls, the reasoning
 * splitter's reasoning and content for both formats (which together are the
 * text less its markers). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat/reasoning.c"
#include "chat/tool_calls.c"

/* The reasoning and content of text cut at a and b, each joined (heap). */
static void split_run(reasoning_format f, const char *text, size_t n, size_t a, size_t b, char **rs, char **cs) {
    size_t cuts[3] = {a, b, n}, at = 0, rl = 0, cl = 0;
    char *r = calloc(1, n + 1), *c = calloc(1, n + 1), *x, *y;
    if (!r || !c) abort();
    reasoning_splitter sp;
    reasoning_init(&sp, f);
    for (int i = 0; i < 4; i++) {
        if (i < 3 ? reasoning_feed(&sp, text + at, cuts[i] - at, &x, &y) : reasoning_finish(&sp, &x, &y)) abort();
        if (x) {
            size_t k = strlen(x);
            if (!k || rl + k > n) abort();
            memcpy(r + rl, x, k + 1), rl += k, free(x);
        }
        if (y) {
            size_t k = strlen(y);
            if (!k || cl + k > n) abort();
            memcpy(c + cl, y, k + 1), cl += k, free(y);
        }
        if (i < 3) at = cuts[i];
    }
    if (rl + cl > n) abort();
    reasoning_free(&sp);
    *rs = r, *cs = c;
}

/* Feeds text cut at a and b; returns the content (heap, "" when none). */
static char *run(tool_parser *p, const char *text, size_t n, size_t a, size_t b) {
    size_t cuts[3] = {a, b, n}, at = 0, len = 0;
    char *all = calloc(1, n + 1), *s;
    if (!all) abort();
    for (int i = 0; i < 4; i++) {
        int rc = i < 3 ? tool_parser_feed(p, text + at, cuts[i] - at, &s) : tool_parser_finish(p, &s);
        if (rc) abort(); /* no allocation fails at these sizes */
        if (s) {
            size_t k = strlen(s);
            if (!k || len + k > n) abort(); /* content is never empty, never more than the text */
            memcpy(all + len, s, k + 1);
            len += k;
            free(s);
        }
        if (i < 3) at = cuts[i];
    }
    return all;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const char *text = (const char *)data + 2;
    size_t n = size - 2;
    if (memchr(text, 0, n)) return 0; /* generated text has no NUL bytes */
    size_t a = n ? data[0] % (n + 1) : 0, b = n ? data[1] % (n + 1) : 0;
    if (a > b) { size_t t = a; a = b; b = t; }
    tool_parser whole, parts;
    tool_parser_init(&whole, TOOL_FORMAT_HERMES);
    tool_parser_init(&parts, TOOL_FORMAT_HERMES);
    char *c1 = run(&whole, text, n, n, n), *c2 = run(&parts, text, n, a, b);
    if (strcmp(c1, c2) || whole.n_calls != parts.n_calls) abort();
    for (int i = 0; i < whole.n_calls; i++) {
        if (strcmp(whole.calls[i].name, parts.calls[i].name) ||
            strcmp(whole.calls[i].arguments, parts.calls[i].arguments) || !whole.calls[i].name[0])
            abort();
    }
    free(c1), free(c2);
    tool_parser_free(&whole);
    tool_parser_free(&parts);
    for (int f = REASONING_QWEN3; f <= REASONING_DEEPSEEK_R1; f++) {
        char *r1, *k1, *r2, *k2;
        split_run((reasoning_format)f, text, n, n, n, &r1, &k1);
        split_run((reasoning_format)f, text, n, a, b, &r2, &k2);
        if (strcmp(r1, r2) || strcmp(k1, k2)) abort();
        free(r1), free(k1), free(r2), free(k2);
    }
    return 0;
}
