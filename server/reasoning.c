/* Reasoning split from content (see reasoning.h). */
#include "reasoning.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char THINK_OPEN[] = "<think>", THINK_CLOSE[] = "</think>";

void reasoning_init(reasoning_splitter *r, reasoning_format fmt) {
    memset(r, 0, sizeof(*r));
    r->fmt = fmt;
    r->state = fmt == REASONING_NONE ? 2 : 0;
}

void reasoning_free(reasoning_splitter *r) {
    free(r->held);
    memset(r, 0, sizeof(*r));
}

static int split_add(char **out, const char *s, size_t n) {
    if (!n) return 0;
    size_t have = *out ? strlen(*out) : 0;
    char *q = realloc(*out, have + n + 1);
    if (!q) return -1;
    memcpy(q + have, s, n);
    q[have + n] = 0;
    *out = q;
    return 0;
}

/* The length of the longest tail of s[0..n) that begins marker m. */
static size_t partial_tail(const char *s, size_t n, const char *m) {
    size_t ml = strlen(m);
    for (size_t k = ml - 1; k > 0; k--)
        if (n >= k && !memcmp(s + n - k, m, k)) return k;
    return 0;
}

/* Decides what it can of held; keeps the rest unless final. */
static int split_drain(reasoning_splitter *r, char **reasoning, char **content, bool final) {
    const char *h = r->held;
    size_t n = r->held_len, at = 0, ol = strlen(THINK_OPEN), cl = strlen(THINK_CLOSE);
    for (;;) {
        if (r->state == 0) { /* the start: does the output open with <think>? */
            size_t m = n - at < ol ? n - at : ol;
            if (!memcmp(h + at, THINK_OPEN, m) && m < ol && !final) break; /* could still be */
            if (m == ol && !memcmp(h + at, THINK_OPEN, ol)) {
                at += ol;
                r->state = 1;
            } else {
                r->state = r->fmt == REASONING_DEEPSEEK_R1 ? 1 : 2; /* R1: the prompt opened it */
            }
            continue;
        }
        if (r->state == 1) {
            const char *c = NULL;
            for (size_t i = at; i + cl <= n && !c; i++)
                if (!memcmp(h + i, THINK_CLOSE, cl)) c = h + i;
            if (c) {
                if (split_add(reasoning, h + at, (size_t)(c - (h + at)))) return -1;
                at = (size_t)(c - h) + cl;
                r->state = 2;
                continue;
            }
            size_t keep = final ? 0 : partial_tail(h + at, n - at, THINK_CLOSE);
            if (split_add(reasoning, h + at, n - at - keep)) return -1;
            at = n - keep;
            break;
        }
        if (split_add(content, h + at, n - at)) return -1;
        at = n;
        break;
    }
    memmove(r->held, r->held + at, n - at);
    r->held_len = n - at;
    return 0;
}

static int split_done(char **reasoning, char **content, int rc) {
    if (!rc) return 0;
    free(*reasoning), free(*content);
    *reasoning = *content = NULL;
    return -1;
}

int reasoning_feed(reasoning_splitter *r, const char *text, size_t len, char **reasoning, char **content) {
    *reasoning = *content = NULL;
    if (r->held_len + len + 1 > r->held_cap) {
        size_t cap = (r->held_len + len + 1) * 2;
        char *q = realloc(r->held, cap);
        if (!q) return -1;
        r->held = q;
        r->held_cap = cap;
    }
    memcpy(r->held + r->held_len, text, len);
    r->held_len += len;
    return split_done(reasoning, content, split_drain(r, reasoning, content, false));
}

int reasoning_finish(reasoning_splitter *r, char **reasoning, char **content) {
    *reasoning = *content = NULL;
    if (!r->held_len) return 0;
    return split_done(reasoning, content, split_drain(r, reasoning, content, true));
}
