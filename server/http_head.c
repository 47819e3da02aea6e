/* Strict HTTP/1.1 request heads (RFC 9112): the scanner the front door runs
 * over the bytes of a connection's first request before libmicrohttpd sees
 * them, and the framing rules both it and http.c (for later requests on a
 * kept-alive connection) apply. Pure (libc only), so it can be fuzzed
 * (tests/fuzz/fuzz_http_head.c). */
#include <stdio.h>
#include <string.h>

#include "server/http_head.h"

/* RFC 9110's tchar: the bytes of a method or a header name. */
static bool is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool name_is(const char *name, size_t nl, const char *want) {
    size_t wl = strlen(want);
    if (nl != wl) return false;
    for (size_t i = 0; i < nl; i++) {
        char a = name[i] >= 'A' && name[i] <= 'Z' ? (char)(name[i] + 32) : name[i];
        if (a != want[i]) return false;
    }
    return true;
}

void http_framing_init(http_framing *f) { memset(f, 0, sizeof(*f)); }

/* Sets f's verdict (the first problem wins). */
static void framing_bad(http_framing *f, const char *why) {
    if (!f->why[0]) snprintf(f->why, sizeof(f->why), "%s", why);
}

void http_framing_header(http_framing *f, const char *name, size_t nl, const char *value, size_t vl) {
    /* leading OWS only: libmicrohttpd keeps trailing whitespace in a value and
     * would not read "5 " as a length, so neither may we */
    while (vl && (*value == ' ' || *value == '\t')) value++, vl--;
    if (name_is(name, nl, "content-length")) {
        if (++f->n_length > 1) framing_bad(f, "The request has more than one Content-Length header.");
        unsigned long long v = 0;
        bool ok = vl > 0;
        for (size_t i = 0; i < vl && ok; i++) {
            unsigned d = (unsigned)(value[i] - '0');
            /* an exact bound: 2^63 - 1, checked before the multiplication */
            ok = d <= 9 && v <= (HTTP_LENGTH_MAX - d) / 10;
            v = v * 10 + d;
        }
        if (!ok) framing_bad(f, "The request's Content-Length is not a number of bytes in [0, 2^63 - 1].");
        f->length = v;
    } else if (name_is(name, nl, "transfer-encoding")) {
        if (++f->n_coding > 1) framing_bad(f, "The request has more than one Transfer-Encoding header.");
        if (!name_is(value, vl, "chunked"))
            framing_bad(f, "The request's Transfer-Encoding is not supported: only \"chunked\" is.");
        f->chunked = true;
    }
}

int http_framing_check(http_framing *f, bool http10) {
    if (f->n_length && f->n_coding) framing_bad(f, "The request has both Content-Length and Transfer-Encoding.");
    if (f->n_coding && http10) framing_bad(f, "HTTP/1.0 has no Transfer-Encoding.");
    return f->why[0] ? -1 : 0;
}

/* The length of the line at p (up to and without its LF; a CR before the LF
 * dropped) within n bytes, or -1 when no LF is there yet. *next: past the LF. */
static long line_at(const char *p, size_t n, size_t *next) {
    const char *lf = memchr(p, '\n', n);
    if (!lf) return -1;
    *next = (size_t)(lf - p) + 1;
    size_t len = (size_t)(lf - p);
    return (long)(len && p[len - 1] == '\r' ? len - 1 : len);
}

/* Any control byte but HTAB (a CR not before LF, a NUL) is refused. */
static bool has_ctl(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return true;
    }
    return false;
}

/* The request line "METHOD SP target SP HTTP/1.x". */
static http_head_status request_line(const char *p, size_t n, http_head *h) {
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)p[i])) i++;
    if (i == 0 || i > 32 || i >= n || p[i] != ' ') return HTTP_HEAD_BAD;
    size_t t = ++i;
    while (i < n && p[i] != ' ') {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x21 || c == 0x7f) return HTTP_HEAD_BAD;
        i++;
    }
    if (i == t || i >= n) return HTTP_HEAD_BAD;
    const char *v = p + i + 1;
    size_t vl = n - i - 1;
    if (vl != 8 || memcmp(v, "HTTP/", 5) || v[5] < '0' || v[5] > '9' || v[6] != '.' || v[7] < '0' || v[7] > '9')
        return HTTP_HEAD_BAD;
    if (v[5] != '1') return HTTP_HEAD_VERSION;
    h->http10 = v[7] == '0';
    return HTTP_HEAD_OK;
}

http_head_status http_head_scan(const char *buf, size_t n, size_t max, http_head *h) {
    memset(h, 0, sizeof(*h));
    http_framing_init(&h->framing);
    size_t at = 0, next;
    long len;
    /* RFC 9112 2.2: empty lines before the request line are ignored */
    while ((len = line_at(buf + at, n - at, &next)) == 0) at += next;
    if (len < 0) return n >= max ? HTTP_HEAD_TOO_LARGE : HTTP_HEAD_INCOMPLETE;
    if (has_ctl(buf + at, (size_t)len)) return HTTP_HEAD_BAD;
    http_head_status st = request_line(buf + at, (size_t)len, h);
    if (st != HTTP_HEAD_OK) return st;
    at += next;
    for (;;) {
        if ((len = line_at(buf + at, n - at, &next)) < 0)
            return n >= max ? HTTP_HEAD_TOO_LARGE : HTTP_HEAD_INCOMPLETE;
        const char *p = buf + at;
        at += next;
        if (at > max) return HTTP_HEAD_TOO_LARGE;
        if (len == 0) break; /* the end of the head */
        if (has_ctl(p, (size_t)len)) return HTTP_HEAD_BAD;
        if (p[0] == ' ' || p[0] == '\t') return HTTP_HEAD_BAD; /* obs-fold: refused (RFC 9112 5.2) */
        size_t nl = 0;
        while (nl < (size_t)len && is_tchar((unsigned char)p[nl])) nl++;
        if (nl == 0 || nl >= (size_t)len || p[nl] != ':') return HTTP_HEAD_BAD; /* no space before ':' (5.1) */
        http_framing_header(&h->framing, p, nl, p + nl + 1, (size_t)len - nl - 1);
    }
    h->head_len = at;
    return http_framing_check(&h->framing, h->http10) ? HTTP_HEAD_FRAMING : HTTP_HEAD_OK;
}
