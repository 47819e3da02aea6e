/* The server's diagnostics on stderr: one line each, "<UTC time>
 * engram-server: [level: ]<message>", written with one call so that threads
 * never interleave, filtered by --log-level; libmicrohttpd's own messages
 * routed through it as warnings, except a client going away (normal: the
 * request is cancelled and counted as an abort), which is a debug line. And
 * the access log (--access-log): one JSON line per request. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/server.h"

/* The process's one threshold (main sets it before any thread starts). */
static atomic_int log_threshold = SERVER_LOG_INFO;

void server_log_set_level(server_log_level level) { atomic_store(&log_threshold, (int)level); }

int server_log_level_parse(const char *name, server_log_level *out) {
    static const char *const names[] = {"error", "warning", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *out = (server_log_level)i;
            return 0;
        }
    return -1;
}

/* "2026-01-01T12:00:00.000Z" (UTC, milliseconds) into out[48]. */
static void stamp(char out[48]) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, 48, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", (tm.tm_year + 1900) % 10000, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
}

/* Writes "<time> engram-server: <what><msg>\n" (msg without its own newline). */
static void emit(const char *what, const char *msg) {
    char t[48], line[2048];
    stamp(t);
    size_t ml = strlen(msg);
    while (ml && (msg[ml - 1] == '\n' || msg[ml - 1] == '\r')) ml--;
    int n = snprintf(line, sizeof(line), "%s engram-server: %s%.*s\n", t, what, (int)ml, msg);
    if (n >= (int)sizeof(line)) { /* cut, but still one line */
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    fwrite(line, 1, (size_t)n, stderr);
}

static void vlog(server_log_level level, const char *prefix, const char *fmt, va_list ap) {
    static const char *const words[] = {"error: ", "warning: ", "", "debug: "};
    if ((int)level > atomic_load(&log_threshold)) return;
    char msg[1536], what[64];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    snprintf(what, sizeof(what), "%s%s", words[level], prefix);
    emit(what, msg);
}

void server_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(SERVER_LOG_INFO, "", fmt, ap);
    va_end(ap);
}

void server_log_at(server_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vlog(level, "", fmt, ap);
    va_end(ap);
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
    server_log_level level = SERVER_LOG_WARN;
    for (const char *const *p = client_gone; *p; p++)
        if (strstr(msg, *p)) level = SERVER_LOG_DEBUG;
    if ((int)level > atomic_load(&log_threshold)) return;
    emit(level == SERVER_LOG_DEBUG ? "debug: libmicrohttpd: " : "warning: libmicrohttpd: ", msg);
}

/* ---- the access log ---- */

int server_access_open(const char *path, char *err, size_t errlen) {
    int fd = !strcmp(path, "-") ? fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3)
                                : open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) snprintf(err, errlen, "--access-log %s: %s", path, strerror(errno));
    return fd;
}

/* s with every byte outside printable ASCII, '"' and '\\' replaced by '?':
 * the fields are ours or screened, but a log line must stay one JSON line
 * whatever reaches it. */
static const char *clean(const char *s, char *out, size_t n) {
    size_t i = 0;
    for (; s && s[i] && i + 1 < n; i++) out[i] = s[i] > 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\' ? s[i] : '?';
    out[i] = 0;
    return out;
}

void server_access_write(int fd, const server_access *a) {
    if (fd < 0) return;
    char t[48], method[24], route[64], id[72], client[64], line[512];
    stamp(t);
    int n = snprintf(line, sizeof(line),
                     "{\"time\":\"%s\",\"request_id\":\"%s\",\"client\":\"%s\",\"method\":\"%s\",\"route\":\"%s\","
                     "\"status\":%d,\"bytes\":%llu,\"duration_ms\":%.3f,\"end\":\"%s\"}\n",
                     t, clean(a->request_id, id, sizeof(id)), clean(a->client, client, sizeof(client)),
                     clean(a->method, method, sizeof(method)), clean(a->route, route, sizeof(route)), a->status,
                     a->bytes, a->seconds * 1e3, a->end ? a->end : "ok");
    if (n > 0 && n < (int)sizeof(line)) (void)!write(fd, line, (size_t)n); /* O_APPEND: one write, one whole line */
}
