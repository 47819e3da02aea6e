/* Tool calls in generated text: what a chat completion returns as
 * "tool_calls". The format is the one the model's chat template teaches;
 * this server parses Hermes-style calls, which Qwen2.5 and Qwen3 use:
 *
 *   <tool_call>
 *   {"name": "get_weather", "arguments": {"city": "Paris"}}
 *   </tool_call>
 *
 * The text outside the calls is the message's content. A block whose JSON
 * is not {"name": string, "arguments": object or string} is left in the
 * content as it came. The parser takes the text in pieces, as a stream
 * produces it: content comes out at once except what may be the start of a
 * call (held until it is or is not one), and each call comes out whole when
 * its end marker arrives. Text is bytes with lengths (a token may decode to
 * 0x00): a block holding a NUL, raw or escaped as \u0000, stays content
 * whole (JSON allows no raw control byte, and a parsed call's strings are C
 * strings that would end there). */
#ifndef ENGRAM_TOOL_CALLS_H
#define ENGRAM_TOOL_CALLS_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"

typedef enum { TOOL_FORMAT_NONE, TOOL_FORMAT_HERMES } tool_format;

/* The format a chat template's source teaches, or TOOL_FORMAT_NONE. */
tool_format tool_format_detect(const char *template_source);

/* How fmt writes one call of the tool named name: the text before its
 * arguments (*prefix, heap: the caller frees it), after them (*suffix) and
 * between two calls (*sep), both static. Hermes: `<tool_call>\n{"name":
 * "NAME", "arguments": ` ARGS `}\n</tool_call>`, calls a newline apart, as
 * Qwen's templates write them (what a grammar forcing calls is made of).
 * Returns 0, or -1 out of memory or for TOOL_FORMAT_NONE. */
int tool_format_call_text(tool_format fmt, const char *name, char **prefix, const char **suffix, const char **sep);

typedef struct {
    char *name;
    char *arguments; /* JSON text of an object (OpenAI's "arguments" string) */
} tool_call;

typedef struct {
    tool_format fmt;
    strbuf held; /* text not yet given out: a possible or open call */
    tool_call *calls; /* every call parsed so far */
    int n_calls, cap_calls;
    bool unclosed;    /* the text ended inside a call (tool_parser_finish): cut off by max_tokens, or broken */
} tool_parser;

void tool_parser_init(tool_parser *p, tool_format fmt);
void tool_parser_free(tool_parser *p);

/* Takes the next len bytes of generated text (any bytes) and appends to
 * content what can be given out now; the calls completed by this text are
 * appended to p->calls. Returns 0, or -1 out of memory (content may then
 * hold part of it: free it). */
int tool_parser_feed(tool_parser *p, const char *text, size_t len, strbuf *content);

/* The end of the text: what is still held (an unfinished call or a partial
 * marker) is content. Same conventions as tool_parser_feed. */
int tool_parser_finish(tool_parser *p, strbuf *content);

#endif
