/* Tool calls in generated text (see tool_calls.h). */
#include "chat/tool_calls.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define OPEN_TAG "<tool_call>"
#define CLOSE_TAG "</tool_call>"
static const char OPEN[] = OPEN_TAG, CLOSE[] = CLOSE_TAG;
#define OPEN_LEN (sizeof(OPEN) - 1)
#define CLOSE_LEN (sizeof(CLOSE) - 1)

tool_format tool_format_detect(const char *src) {
    return src && strstr(src, OPEN) && strstr(src, CLOSE) ? TOOL_FORMAT_HERMES : TOOL_FORMAT_NONE;
}

int tool_format_call_text(tool_format fmt, const char *name, char **prefix, const char **suffix, const char **sep) {
    *prefix = NULL;
    *suffix = *sep = NULL;
    if (fmt != TOOL_FORMAT_HERMES) return -1;
    cJSON *s = cJSON_CreateString(name); /* the name as a JSON string: quotes escaped */
    char *q = s ? cJSON_PrintUnformatted(s) : NULL;
    cJSON_Delete(s);
    strbuf b = {0};
    int rc = !q || strbuf_add(&b, OPEN, OPEN_LEN) || strbuf_add(&b, "\n{\"name\": ", 10) || strbuf_add(&b, q, strlen(q)) ||
             strbuf_add(&b, ", \"arguments\": ", 15);
    free(q);
    if (rc) {
        strbuf_free(&b);
        return -1;
    }
    *prefix = strbuf_take(&b);
    *suffix = "}\n" CLOSE_TAG;
    *sep = "\n";
    return 0;
}

void tool_parser_init(tool_parser *p, tool_format fmt) {
    memset(p, 0, sizeof(*p));
    p->fmt = fmt;
}

void tool_parser_free(tool_parser *p) {
    for (int i = 0; i < p->n_calls; i++) free(p->calls[i].name), free(p->calls[i].arguments);
    free(p->calls);
    strbuf_free(&p->held);
    memset(p, 0, sizeof(*p));
}

/* Whether body[0..n) holds a NUL: a raw byte, or the escape \u0000 (its
 * backslash not itself escaped). */
static bool has_nul(const char *body, size_t n) {
    if (memchr(body, 0, n)) return true;
    for (const char *q = body; (q = memmem(q, n - (size_t)(q - body), "\\u0000", 6)); q++) {
        size_t k = 0; /* backslashes before q */
        while (q - k > body && q[-(ptrdiff_t)k - 1] == '\\') k++;
        if (k % 2 == 0) return true;
    }
    return false;
}

/* The call in the body of one block, or -1 when it is not one (it is then
 * content), -2 out of memory. */
static int parse_call(tool_parser *p, const char *body, size_t n) {
    if (has_nul(body, n)) return -1; /* cJSON's strings would end at it: content, whole */
    cJSON *j = cJSON_ParseWithLength(body, n);
    const cJSON *name = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "name") : NULL;
    const cJSON *args = cJSON_IsObject(j) ? cJSON_GetObjectItemCaseSensitive(j, "arguments") : NULL;
    if (!cJSON_IsString(name) || !name->valuestring[0] || !(cJSON_IsObject(args) || cJSON_IsString(args))) {
        cJSON_Delete(j);
        return -1;
    }
    tool_call c = {strdup(name->valuestring),
                   cJSON_IsString(args) ? strdup(args->valuestring) : cJSON_PrintUnformatted(args)};
    cJSON_Delete(j);
    if (p->n_calls == p->cap_calls) {
        int cap = p->cap_calls ? 2 * p->cap_calls : 4;
        tool_call *q = realloc(p->calls, (size_t)cap * sizeof(*q));
        if (!q) c.name = NULL; /* freed below as out of memory */
        else p->calls = q, p->cap_calls = cap;
    }
    if (!c.name || !c.arguments) {
        free(c.name), free(c.arguments);
        return -2;
    }
    p->calls[p->n_calls++] = c;
    return 0;
}

/* Moves what can be decided from held into out (content) and p->calls;
 * keeps the rest. At the end (final), nothing is kept. */
static int drain(tool_parser *p, strbuf *out, bool final) {
    const char *h = p->held.s ? p->held.s : ""; /* nothing fed yet: no buffer */
    size_t n = p->held.len, at = 0;
    while (at < n) {
        const char *o = memmem(h + at, n - at, OPEN, OPEN_LEN);
        if (!o) { /* content, except a tail that may begin a marker */
            size_t keep = final ? 0 : strbuf_marker_tail(h + at, n - at, OPEN);
            if (strbuf_add(out, h + at, n - at - keep)) return -1;
            at = n - keep;
            break;
        }
        if (strbuf_add(out, h + at, (size_t)(o - (h + at)))) return -1;
        at = (size_t)(o - h);
        const char *body = h + at + OPEN_LEN;
        const char *c = memmem(body, n - at - OPEN_LEN, CLOSE, CLOSE_LEN);
        if (!c) {
            if (final && strbuf_add(out, h + at, n - at)) return -1; /* never closed: content */
            if (final) at = n, p->unclosed = true;
            break;
        }
        int rc = parse_call(p, body, (size_t)(c - body));
        if (rc == -2) return -1;
        size_t end = (size_t)(c + CLOSE_LEN - h);
        if (rc == -1 && strbuf_add(out, h + at, end - at)) return -1; /* not a call: content as it came */
        at = end;
    }
    strbuf_drop(&p->held, at);
    return 0;
}

int tool_parser_feed(tool_parser *p, const char *text, size_t len, strbuf *content) {
    if (strbuf_add(&p->held, text, len)) return -1;
    return drain(p, content, false);
}

int tool_parser_finish(tool_parser *p, strbuf *content) { return drain(p, content, true); }
