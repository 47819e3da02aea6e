/* libFuzzer target: server/tool_calls.c on arbitrary text. The first two
 * bytes pick two cut points; the text fed in three pieces must give exactly
 * the content and calls of the text fed whole (a stream and a whole
 * response agree), and every call has a name and JSON arguments. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../server/tool_calls.c"

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
    return 0;
}
