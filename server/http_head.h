/* Strict HTTP/1.1 request heads and message framing (RFC 9112): what makes a
 * request's body length unambiguous, so that no proxy in front of the server
 * can read a different request boundary than the server does. Pure (libc
 * only): the front door (door.c), http.c and a fuzz target use it. */
#ifndef SERVER_HTTP_HEAD_H
#define SERVER_HTTP_HEAD_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_LENGTH_MAX 9223372036854775807ull /* 2^63 - 1: the largest Content-Length taken */

/* The framing headers of one request, header by header. */
typedef struct {
    int n_length;              /* Content-Length headers seen */
    int n_coding;              /* Transfer-Encoding headers seen */
    unsigned long long length; /* the (last) Content-Length's value */
    bool chunked;              /* Transfer-Encoding: chunked */
    char why[96];              /* the first problem, "" while there is none */
} http_framing;

void http_framing_init(http_framing *f);

/* Notes one header (name nl bytes, value vl bytes, neither NUL-terminated;
 * leading whitespace skipped, trailing whitespace kept, as libmicrohttpd
 * does): a second Content-Length or Transfer-Encoding, a Content-Length that
 * is not digits making at most 2^63 - 1, or a transfer coding other than
 * "chunked" sets f->why. Other headers are ignored. */
void http_framing_header(http_framing *f, const char *name, size_t nl, const char *value, size_t vl);

/* After the last header: 0 when the framing is unambiguous, else -1 with
 * f->why set (also for Content-Length with Transfer-Encoding, and for
 * Transfer-Encoding in HTTP/1.0). */
int http_framing_check(http_framing *f, bool http10);

typedef enum {
    HTTP_HEAD_OK = 0,
    HTTP_HEAD_INCOMPLETE = 1, /* no blank line yet: wait for more bytes */
    HTTP_HEAD_BAD = -1,       /* a malformed request line or header line: 400 */
    HTTP_HEAD_FRAMING = -2,   /* well-formed, but the framing is refused: 400 with framing.why */
    HTTP_HEAD_TOO_LARGE = -3, /* no end of the head within max bytes: 431 */
    HTTP_HEAD_VERSION = -4,   /* HTTP/x.y with x other than 1: 505 */
} http_head_status;

typedef struct {
    size_t head_len;      /* bytes up to and with the blank line */
    bool http10;          /* HTTP/1.0 */
    http_framing framing;
} http_head;

/* Scans the first n bytes of a connection (untrusted: any bytes) for one
 * request head of at most max bytes: the request line ("METHOD SP target SP
 * HTTP/1.x", after any empty lines), header lines "name: value" with no
 * whitespace before the colon and no folding, no control byte but HTAB,
 * lines ending in CRLF or LF. Fills *h. */
http_head_status http_head_scan(const char *buf, size_t n, size_t max, http_head *h);

#endif
