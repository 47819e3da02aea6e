/* libFuzzer target: the front door's request-head scanner and framing rules
 * (server/http_head.c, compiled in here: libc only). Any bytes: no crash, and
 * a head it accepts has the properties the door hands to libmicrohttpd on:
 * within the bytes given and the limit, one blank line ending it, at most one
 * Content-Length or Transfer-Encoding and never both. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/http_head.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *buf = (const char *)data;
    size_t max = size > 0 ? 64 + data[0] * 32 : 64;
    http_head h;
    http_head_status st = http_head_scan(buf, size, max, &h);
    if (st == HTTP_HEAD_OK) {
        if (h.head_len > size || h.head_len > max) abort();
        if (buf[h.head_len - 1] != '\n') abort();
        if (h.framing.n_length > 1 || h.framing.n_coding > 1) abort();
        if (h.framing.n_length && h.framing.n_coding) abort();
        if (h.framing.n_length && h.framing.length > HTTP_LENGTH_MAX) abort();
        if (memchr(buf, 0, h.head_len)) abort();
    }
    if (st == HTTP_HEAD_FRAMING && !h.framing.why[0]) abort();
    if (st == HTTP_HEAD_INCOMPLETE && size > max) abort();
    return 0;
}
