/* Logging, file reading, overflow-checked arithmetic, number and size parsing
 * and the clock for every folder. */
#include "base/util.h"
#include "base/fault.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

void util_log(const char *level, const char *func, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: %s: ", level, func);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int util_read_token_file(const char *path, int32_t **ids, size_t *n, uint32_t *vocab, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    uint8_t h[24];
    *ids = NULL;
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    uint32_t version, v;
    uint64_t count;
    if (fread(h, 1, sizeof(h), f) != sizeof(h) || memcmp(h, "ENGRTOK\0", 8)) {
        snprintf(err, errlen, "%s: not a token file (magic \"ENGRTOK\")", path);
        goto fail;
    }
    memcpy(&version, h + 8, 4); /* the format is little-endian, like every host this builds on */
    memcpy(&v, h + 12, 4);
    memcpy(&count, h + 16, 8);
    if (version != 1 || count == 0 || count > ((uint64_t)1 << 31)) {
        snprintf(err, errlen, "%s: version %u, %llu tokens: unsupported", path, version, (unsigned long long)count);
        goto fail;
    }
    if (!(*ids = malloc(count * sizeof(int32_t))) || fread(*ids, sizeof(int32_t), count, f) != count) {
        snprintf(err, errlen, "%s: cannot read %llu tokens", path, (unsigned long long)count);
        goto fail;
    }
    fclose(f);
    *n = (size_t)count;
    if (vocab) *vocab = v;
    return 0;
fail:
    free(*ids);
    *ids = NULL;
    fclose(f);
    return -1;
}

char *util_read_file(const char *path, size_t max_bytes, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        fclose(f);
        return NULL;
    }
    if ((size_t)st.st_size > max_bytes) {
        snprintf(err, errlen, "%s: file is %lld bytes, over the limit of %zu", path,
                 (long long)st.st_size, max_bytes);
        fclose(f);
        return NULL;
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        snprintf(err, errlen, "%s: out of memory", path);
        fclose(f);
        return NULL;
    }
    if (n && fault_read((long)fread(buf, 1, n, f), (long)n, false) != (long)n) {
        snprintf(err, errlen, "%s: short read", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

char *util_read_stream(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
        long got = fault_read((long)fread(buf + n, 1, cap - n - 1, f), (long)(cap - n - 1), false);
        if (got < 0 || (got == 0 && ferror(f))) { /* a failed read is no end of file */
            free(buf);
            return NULL;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int util_mul_overflow(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

void *util_alloc_huge(size_t bytes) {
    const size_t huge = 2u << 20; /* x86-64's huge page; smaller arrays fit the TLB anyway */
    if (bytes < huge) return malloc(bytes);
    void *p;
    if (posix_memalign(&p, huge, bytes)) return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);
    return p;
}

double util_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double util_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void util_sort_doubles(double *x, size_t n) { qsort(x, n, sizeof(double), cmp_double); }

int util_parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int util_parse_size(const char *s, uint64_t *out) {
    if (!s || *s < '0' || *s > '9') return -1; /* no sign, no space: "-1" and " 1" are junk */
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s) return -1;
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case 't': case 'T': shift = 40; break;
    case 0: break;
    default: return -1;
    }
    if (shift) {
        end++;
        if (!strcmp(end, "iB") || !strcmp(end, "B")) end += strlen(end); /* 4GiB, 4GB: the same binary size */
    }
    if (*end || v == 0 || v > (UINT64_MAX >> shift)) return -1;
    *out = (uint64_t)v << shift;
    return 0;
}
