/* Tool calls in generated text (see tool_calls.h). */
#include "tool_calls.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static const char OPEN[] = "<tool_call>", CLOSE[] = "</tool_call>";
#define OPEN_LEN (sizeof(OPEN) - 1)
#define CLOSE_LEN (sizeof(CLOSE) - 1)

tool_format tool_format_detect(const char *src) {
    return src && strstr(src, OPEN) && strstr(src, CLOSE) ? TOOL_FORMAT_HERMES : TOOL_FORMAT_NONE;
}

void tool_parser_init(tool_parser *p, tool_format fmt) {
    memset(p, 0, sizeof(*p));
    p->fmt = fmt;
}

void tool_parser_free(tool_parser *p) {
    for (int i = 0; i < p->n_calls; i++) free(p->calls[i].name), free(p->calls[i].arguments);
    free(p->calls);
    free(p->held);
    memset(p, 0, sizeof(*p));
}

/* A growing output string. */
typedef struct {
    char *s;
    size_t len, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n) {
    if (!n) return 0;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->len + n + 1) * 2;
        char *q = realloc(b->s, cap);
        if (!q) return -1;
        b->s = q;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
    return 0;
}

static const char *find(const char *s, size_t n, const char *pat, size_t m) {
    for (size_t i = 0; i + m <= n; i++)
        if (!memcmp(s + i, pat, m)) return s + i;
    return NULL;
}

/* The call in the body of one block, or -1 when it is not one (it is then
 * content), -2 out of memory. */
static int parse_call(tool_parser *p, const char *body, size_t n) {
    char *text = malloc(n + 1);
    if (!text) return -2;
    memcpy(text, body, n);
    text[n] = 0;
    cJSON *j = cJSON_Parse(text);
    free(text);
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
static int drain(tool_parser *p, buf *out, bool final) {
    const char *h = p->held;
    size_t n = p->held_len, at = 0;
    while (at < n) {
        const char *o = find(h + at, n - at, OPEN, OPEN_LEN);
        if (!o) {
            /* content, except a tail that may begin a marker */
            size_t keep = 0;
            for (size_t k = OPEN_LEN - 1; k > 0 && !final; k--)
                if (n - at >= k && !memcmp(h + n - k, OPEN, k)) {
                    keep = k;
                    break;
                }
            if (buf_add(out, h + at, n - at - keep)) return -1;
            at = n - keep;
            break;
        }
        if (buf_add(out, h + at, (size_t)(o - (h + at)))) return -1;
        at = (size_t)(o - h);
        const char *body = h + at + OPEN_LEN;
        const char *c = find(body, n - at - OPEN_LEN, CLOSE, CLOSE_LEN);
        if (!c) {
            if (final && buf_add(out, h + at, n - at)) return -1; /* never closed: content */
            if (final) at = n;
            break;
        }
        int rc = parse_call(p, body, (size_t)(c - body));
        if (rc == -2) return -1;
        size_t end = (size_t)(c + CLOSE_LEN - h);
        if (rc == -1 && buf_add(out, h + at, end - at)) return -1; /* not a call: content as it came */
        at = end;
    }
    memmove(p->held, p->held + at, n - at);
    p->held_len = n - at;
    return 0;
}

static int give(buf *out, char **content, int rc) {
    if (rc) {
        free(out->s);
        *content = NULL;
        return -1;
    }
    *content = out->s; /* NULL when nothing was added */
    return 0;
}

int tool_parser_feed(tool_parser *p, const char *text, size_t len, char **content) {
    buf out = {0};
    *content = NULL;
    if (p->held_len + len + 1 > p->held_cap) {
        size_t cap = (p->held_len + len + 1) * 2;
        char *q = realloc(p->held, cap);
        if (!q) return -1;
        p->held = q;
        p->held_cap = cap;
    }
    memcpy(p->held + p->held_len, text, len);
    p->held_len += len;
    return give(&out, content, drain(p, &out, false));
}

int tool_parser_finish(tool_parser *p, char **content) {
    buf out = {0};
    *content = NULL;
    if (!p->held_len) return 0;
    return give(&out, content, drain(p, &out, true));
}
