/* Fault injection, SQLite-style, for tests: a build with CMake
 * -DENGRAM_FAULT=ON fails the Nth operation of a kind, chosen by the
 * environment, so that a test can loop N over every operation of a scenario
 * and check that each failure reaches the caller as an error (never a
 * crash, a hang or a leak). Without the option every hook is the identity
 * and costs nothing.
 *   ENGRAM_FAULT_ALLOC=N       the Nth malloc/calloc/realloc/strdup/strndup/
 *                              posix_memalign of our code (and cJSON's, where
 *                              a program hooks it) returns NULL
 *   ENGRAM_FAULT_IO=N          the Nth read (fread, pread, an io_uring
 *                              completion) fails with EIO ...
 *   ENGRAM_FAULT_IO_SHORT=1    ... or comes back short (half)
 *   ENGRAM_FAULT_CUDA_ALLOC=N  the Nth device allocation of the CUDA backend fails
 *   ENGRAM_FAULT_PHASE=NAME    count only from fault_phase(NAME) on (e.g. the
 *                              server's "serving": a request's path, not the load)
 *   ENGRAM_FAULT_REPORT=1      at exit, one stderr line with the operations
 *                              counted: "engram-fault: alloc=A io=I cuda_alloc=C"
 * One fault per run (the Nth only: later operations succeed), as SQLite's
 * one-shot mode. In fault builds every C file of ours gets this header first
 * (-include), so the allocation macros below replace the calls. */
#ifndef BASE_FAULT_H
#define BASE_FAULT_H

#ifdef ENGRAM_FAULT
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h> /* before the macros: their declarations stay libc's */
#include <string.h>

typedef enum { FAULT_ALLOC, FAULT_IO, FAULT_CUDA_ALLOC, FAULT_KINDS } fault_kind;

/* Counts one operation of kind k (once armed); true when it is the one to fail. */
bool fault_hit(fault_kind k);

/* Marks a point of the program; counting starts here when ENGRAM_FAULT_PHASE
 * names it (else from the start). */
void fault_phase(const char *name);

/* One read's result: got as the read returned it (bytes, or -1 with errno;
 * for an io_uring completion, bytes or -errno: neg_errno), asked the bytes
 * asked for. When this read is the one to fail: -1 with errno EIO (or -EIO),
 * or half of got for a short read. */
long fault_read(long got, long asked, bool neg_errno);

void *fault_malloc(size_t n);
void *fault_calloc(size_t n, size_t size);
void *fault_realloc(void *p, size_t n);
char *fault_strdup(const char *s);
char *fault_strndup(const char *s, size_t n);
int fault_posix_memalign(void **p, size_t align, size_t n);

#ifndef FAULT_NO_MACROS
#define malloc(n) fault_malloc(n)
#define calloc(n, size) fault_calloc(n, size)
#define realloc(p, n) fault_realloc(p, n)
#define strdup(s) fault_strdup(s)
#define strndup(s, n) fault_strndup(s, n)
#define posix_memalign(p, a, n) fault_posix_memalign(p, a, n)
#endif

#else
#define fault_hit(k) 0
#define fault_phase(name) ((void)0)
#define fault_read(got, asked, neg_errno) (got)
#endif

#endif
