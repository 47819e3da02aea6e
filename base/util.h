/* Small helpers every folder may use: logging, whole-file reads, checked
 * allocation of sizes that come from untrusted files, number and size parsing,
 * the monotonic clock. Nothing here exits. */
#ifndef ENGINE_UTIL_H
#define ENGINE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* log_error("fmt", ...) prints "error: <func>: message" to stderr. */
#define log_error(...) util_log("error", __func__, __VA_ARGS__)
#define log_warn(...) util_log("warn", __func__, __VA_ARGS__)
#define log_info(...) util_log("info", __func__, __VA_ARGS__)
void util_log(const char *level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reads a whole file into a NUL-terminated heap buffer of *len bytes (the NUL
 * not counted). Refuses files over max_bytes. Returns NULL on failure, with a
 * message in err (errlen bytes). The caller frees the buffer. */
char *util_read_file(const char *path, size_t max_bytes, size_t *len, char *err, size_t errlen);

/* Reads a token file (tools/make_text_tokens.py's output, little-endian:
 * magic "ENGRTOK\0", uint32 version 1, uint32 the tokenizer's vocab size or
 * 0, uint64 n, then n int32 ids) into *ids (n ids, malloc'd; the caller
 * frees them), *n and *vocab (vocab may be NULL). Returns 0, or -1 with a
 * message in err: unreadable, another format or version, no tokens or over
 * 2^31 of them, fewer ids than it says. */
int util_read_token_file(const char *path, int32_t **ids, size_t *n, uint32_t *vocab, char *err, size_t errlen);

/* Reads f to its end (a pipe too: no size limit, no stat) into a
 * NUL-terminated heap buffer of *len bytes (the NUL not counted); a read
 * error ends the data as the end of the file would. Returns NULL when out of
 * memory. The caller frees the buffer; f stays open. */
char *util_read_stream(FILE *f, size_t *len);

/* Writes out *out = a*b and returns 0, or returns -1 if the product overflows. */
int util_mul_overflow(size_t a, size_t b, size_t *out);

/* Parses a size in bytes: decimal digits, then optionally K, M, G or T
 * (binary: 1K = 1024; either case; "KiB"/"KB" also accepted). Returns 0 and
 * *out > 0, or -1 for anything else: junk, a sign, zero, an overflow. */
int util_parse_size(const char *s, uint64_t *out);

/* Parses a decimal integer in [lo, hi]: the whole string, as strtol reads it
 * (leading space and a sign allowed, nothing after the digits). Returns 0 with
 * *out set, or -1 for junk, an empty string, an overflow or a value out of
 * range, *out untouched. */
int util_parse_long(const char *s, long lo, long hi, long *out);

/* bytes of heap for an array read at random, on transparent huge pages
 * where the kernel allows them (madvise; a refusal changes nothing): a
 * random load into gigabytes of 4 KiB pages misses the TLB nearly every
 * time, and its page walk (two-dimensional in a virtual machine) costs more
 * than the load. Uninitialized, as malloc; freed with free. NULL when out
 * of memory. */
void *util_alloc_huge(size_t bytes);

/* Monotonic seconds. */
double util_now(void);
/* This process's CPU seconds (all its threads): what a benchmark spent, beside util_now's wall. */
double util_cpu_now(void);

/* Sorts n doubles ascending (qsort; the benchmarks' percentiles). */
void util_sort_doubles(double *x, size_t n);

#define UTIL_FNV1A_INIT 14695981039346656037ull /* the offset basis (0xcbf29ce484222325) */
/* FNV-1a 64 of n bytes at p, continuing from h (UTIL_FNV1A_INIT to start):
 * checksums of the files we write ourselves and the in-memory hash tables
 * (tokenizer, templates, compressed ids, the door): not a defence against anyone. */
static inline uint64_t util_fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

#endif
