/* The server's diagnostics on stderr: one line each, "<UTC time>
 * engram-server: <message>", written with one call so that threads never
 * interleave, and libmicrohttpd's own messages routed through it, where a
 * client going away (normal: the request is cancelled and counted as an
 * abort) is not worth a line. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "server/server.h"

/* Writes "<time> engram-server: <what><msg>\n" (msg without its own newline). */
static void emit(const char *what, const char *msg) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[2048];
    size_t ml = strlen(msg);
    while (ml && (msg[ml - 1] == '\n' || msg[ml - 1] == '\r')) ml--;
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ engram-server: %s%.*s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, what, (int)ml, msg);
    if (n >= (int)sizeof(line)) { /* cut, but still one line */
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    fwrite(line, 1, (size_t)n, stderr);
}

void server_log(const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    emit("", msg);
}

/* What libmicrohttpd says when a client resets or leaves mid-response. */
static const char *const client_gone[] = {
    "closed by remote peer", "no longer available", "Connection reset", "Broken pipe", "timed out",
    "Socket has been disconnected", "connection was closed", NULL,
};

void server_log_mhd(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[1536];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    for (const char *const *p = client_gone; *p; p++)
        if (strstr(msg, *p)) return;
    emit("libmicrohttpd: ", msg);
}
