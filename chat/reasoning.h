/* The reasoning a model writes before its answer, split from the content:
 * what vLLM's --reasoning-parser does, returned as "reasoning_content".
 * Qwen3 opens it with <think> at the very start of the output; DeepSeek-R1's
 * template opens it in the prompt, so the output starts inside it (a
 * leading <think> is taken if the model writes one anyway). Both close it
 * with </think>. Text comes in pieces, as a stream produces it: each piece
 * goes out at once except what may be part of a marker. Text is bytes with
 * lengths (a token may decode to 0x00): nothing here stops at a NUL. */
#ifndef ENGRAM_REASONING_H
#define ENGRAM_REASONING_H

#include <stddef.h>

#include "base/buf.h"

typedef enum { REASONING_NONE, REASONING_QWEN3, REASONING_DEEPSEEK_R1 } reasoning_format;

typedef struct {
    reasoning_format fmt;
    int state; /* 0: at the start (is there a <think>?), 1: in the reasoning, 2: in the content */
    strbuf held; /* text not yet given out: a possible marker */
} reasoning_splitter;

void reasoning_init(reasoning_splitter *r, reasoning_format fmt);

/* The markers of fmt's reasoning block, static strings: *open is NULL when
 * the output starts inside the block (DeepSeek-R1), else the block is there
 * only when the output starts with it (Qwen3); both NULL for REASONING_NONE.
 * What constrained decoding needs to start after the block, as the splitter
 * reads it. */
void reasoning_markers(reasoning_format fmt, const char **open, const char **close);
void reasoning_free(reasoning_splitter *r);

/* Takes the next len bytes of output (any bytes) and appends to reasoning
 * and content what can be given out now. Returns 0, or -1 out of memory
 * (the buffers may then hold part of it: free them). With REASONING_NONE
 * everything is content. */
int reasoning_feed(reasoning_splitter *r, const char *text, size_t len, strbuf *reasoning, strbuf *content);

/* The end of the output: what is held goes out where it was. */
int reasoning_finish(reasoning_splitter *r, strbuf *reasoning, strbuf *content);

#endif
