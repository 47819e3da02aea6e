/* Reasoning split from content (see reasoning.h). */
#include "chat/reasoning.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char THINK_OPEN[] = "<think>", THINK_CLOSE[] = "</think>";
#define THINK_OPEN_LEN (sizeof(THINK_OPEN) - 1)
#define THINK_CLOSE_LEN (sizeof(THINK_CLOSE) - 1)

void reasoning_init(reasoning_splitter *r, reasoning_format fmt) {
    memset(r, 0, sizeof(*r));
    r->fmt = fmt;
    r->state = fmt == REASONING_NONE ? 2 : 0;
}

void reasoning_markers(reasoning_format fmt, const char **open, const char **close) {
    *open = fmt == REASONING_QWEN3 ? THINK_OPEN : NULL;
    *close = fmt == REASONING_NONE ? NULL : THINK_CLOSE;
}

void reasoning_free(reasoning_splitter *r) {
    strbuf_free(&r->held);
    memset(r, 0, sizeof(*r));
}

/* Decides what it can of held; keeps the rest unless final. */
static int split_drain(reasoning_splitter *r, strbuf *reasoning, strbuf *content, bool final) {
    const char *h = r->held.s ? r->held.s : ""; /* nothing fed yet: no buffer */
    size_t n = r->held.len, at = 0;
    for (;;) {
        if (r->state == 0) { /* the start: does the output open with <think>? */
            size_t m = n - at < THINK_OPEN_LEN ? n - at : THINK_OPEN_LEN;
            if (m < THINK_OPEN_LEN && !final && (!m || !memcmp(h + at, THINK_OPEN, m))) break; /* could still be */
            if (m == THINK_OPEN_LEN && !memcmp(h + at, THINK_OPEN, m)) {
                at += THINK_OPEN_LEN;
                r->state = 1;
            } else {
                r->state = r->fmt == REASONING_DEEPSEEK_R1 ? 1 : 2; /* R1: the prompt opened it */
            }
            continue;
        }
        if (r->state == 1) {
            const char *c = n > at ? memmem(h + at, n - at, THINK_CLOSE, THINK_CLOSE_LEN) : NULL;
            if (c) {
                if (strbuf_add(reasoning, h + at, (size_t)(c - (h + at)))) return -1;
                at = (size_t)(c - h) + THINK_CLOSE_LEN;
                r->state = 2;
                continue;
            }
            size_t keep = final ? 0 : strbuf_marker_tail(h + at, n - at, THINK_CLOSE);
            if (strbuf_add(reasoning, h + at, n - at - keep)) return -1;
            at = n - keep;
            break;
        }
        if (strbuf_add(content, h + at, n - at)) return -1;
        at = n;
        break;
    }
    strbuf_drop(&r->held, at);
    return 0;
}

int reasoning_feed(reasoning_splitter *r, const char *text, size_t len, strbuf *reasoning, strbuf *content) {
    if (strbuf_add(&r->held, text, len)) return -1;
    return split_drain(r, reasoning, content, false);
}

int reasoning_finish(reasoning_splitter *r, strbuf *reasoning, strbuf *content) {
    return split_drain(r, reasoning, content, true);
}
