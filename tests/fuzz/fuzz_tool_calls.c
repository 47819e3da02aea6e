/* libFuzzer target: chat/tool_calls.c and chat/reasoning.c on arbitrary
 * bytes (NULs included: a token may decode to 0x00). The first two bytes
 * pick two cut points; the text fed in three pieces must give exactly what
 * it gives fed whole (a stream and a whole response agree): the tool
 * parser's content and calls, the reasoning splitter's reasoning and content
 * for both formats (which together are the text less its markers). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat/reasoning.c"
#include "chat/tool_calls.c"

static int strbuf_eq(const strbuf *a, const strbuf *b) {
    return a->len == b->len && (!a->len || !memcmp(a->s, b->s, a->len));
}

/* The reasoning and content of text cut at a and b. */
static void split_run(reasoning_format f, const char *text, size_t n, size_t a, size_t b, strbuf *r, strbuf *c) {
    size_t cuts[3] = {a, b, n}, at = 0;
    reasoning_splitter sp;
    reasoning_init(&sp, f);
    for (int i = 0; i < 4; i++) {
        if (i < 3 ? reasoning_feed(&sp, text + at, cuts[i] - at, r, c) : reasoning_finish(&sp, r, c)) abort();
        if (i < 3) at = cuts[i];
    }
    if (r->len + c->len > n) abort(); /* never more than the text */
    reasoning_free(&sp);
}

/* Feeds text cut at a and b; the content into *out. */
static void run(tool_parser *p, const char *text, size_t n, size_t a, size_t b, strbuf *out) {
    size_t cuts[3] = {a, b, n}, at = 0;
    for (int i = 0; i < 4; i++) {
        int rc = i < 3 ? tool_parser_feed(p, text + at, cuts[i] - at, out) : tool_parser_finish(p, out);
        if (rc) abort(); /* no allocation fails at these sizes */
        if (i < 3) at = cuts[i];
    }
    if (out->len > n) abort(); /* content is never more than the text */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const char *text = (const char *)data + 2;
    size_t n = size - 2;
    size_t a = n ? data[0] % (n + 1) : 0, b = n ? data[1] % (n + 1) : 0;
    if (a > b) { size_t t = a; a = b; b = t; }
    tool_parser whole, parts;
    tool_parser_init(&whole, TOOL_FORMAT_HERMES);
    tool_parser_init(&parts, TOOL_FORMAT_HERMES);
    strbuf c1 = {0}, c2 = {0};
    run(&whole, text, n, n, n, &c1);
    run(&parts, text, n, a, b, &c2);
    if (!strbuf_eq(&c1, &c2) || whole.n_calls != parts.n_calls) abort();
    for (int i = 0; i < whole.n_calls; i++) {
        if (strcmp(whole.calls[i].name, parts.calls[i].name) ||
            strcmp(whole.calls[i].arguments, parts.calls[i].arguments) || !whole.calls[i].name[0])
            abort();
    }
    strbuf_free(&c1), strbuf_free(&c2);
    tool_parser_free(&whole);
    tool_parser_free(&parts);
    for (int f = REASONING_QWEN3; f <= REASONING_DEEPSEEK_R1; f++) {
        strbuf r1 = {0}, k1 = {0}, r2 = {0}, k2 = {0};
        split_run((reasoning_format)f, text, n, n, n, &r1, &k1);
        split_run((reasoning_format)f, text, n, a, b, &r2, &k2);
        if (!strbuf_eq(&r1, &r2) || !strbuf_eq(&k1, &k2)) abort();
        strbuf_free(&r1), strbuf_free(&k1), strbuf_free(&r2), strbuf_free(&k2);
    }
    return 0;
}
