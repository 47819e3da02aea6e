/* Fault injection (see fault.h): one counter per kind of operation, armed
 * from the environment at start (or at the named phase), the Nth operation
 * of a kind failing once. Compiled to nothing without -DENGRAM_FAULT=ON. */
#ifdef ENGRAM_FAULT
#define FAULT_NO_MACROS /* this file calls the real allocator */
#include "base/fault.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>

#undef malloc
#undef calloc
#undef realloc
#undef strdup
#undef strndup
#undef posix_memalign

static const char *const env_names[FAULT_KINDS] = {"ENGRAM_FAULT_ALLOC", "ENGRAM_FAULT_IO", "ENGRAM_FAULT_CUDA_ALLOC"};
static atomic_llong count[FAULT_KINDS]; /* operations counted since armed */
static long long target[FAULT_KINDS];   /* the one to fail (1-based); 0: none */
static atomic_bool armed;
static bool short_reads;
static const char *phase; /* ENGRAM_FAULT_PHASE, or NULL: armed from the start */

static void report(void) {
    fprintf(stderr, "engram-fault: alloc=%lld io=%lld cuda_alloc=%lld\n", atomic_load(&count[FAULT_ALLOC]),
            atomic_load(&count[FAULT_IO]), atomic_load(&count[FAULT_CUDA_ALLOC]));
}

__attribute__((constructor)) static void fault_init(void) {
    for (int k = 0; k < FAULT_KINDS; k++) {
        const char *v = getenv(env_names[k]);
        target[k] = v ? atoll(v) : 0;
    }
    const char *s = getenv("ENGRAM_FAULT_IO_SHORT");
    short_reads = s && s[0] == '1';
    phase = getenv("ENGRAM_FAULT_PHASE");
    if (phase && !phase[0]) phase = NULL;
    atomic_store(&armed, phase == NULL);
    const char *r = getenv("ENGRAM_FAULT_REPORT");
    if (r && r[0] == '1') atexit(report);
}

void fault_phase(const char *name) {
    if (phase && !strcmp(name, phase) && !atomic_load(&armed)) {
        for (int k = 0; k < FAULT_KINDS; k++) atomic_store(&count[k], 0);
        atomic_store(&armed, true);
    }
}

bool fault_hit(fault_kind k) {
    if (!atomic_load_explicit(&armed, memory_order_relaxed)) return false;
    long long n = atomic_fetch_add(&count[k], 1) + 1;
    return n == target[k];
}

long fault_read(long got, long asked, bool neg_errno) {
    if (!fault_hit(FAULT_IO)) return got;
    if (short_reads && got > 1) return got / 2;
    if (short_reads && asked > 1) return asked / 2 > got ? got : asked / 2;
    errno = EIO;
    return neg_errno ? -EIO : -1;
}

void *fault_malloc(size_t n) { return fault_hit(FAULT_ALLOC) ? NULL : malloc(n); }
void *fault_calloc(size_t n, size_t size) { return fault_hit(FAULT_ALLOC) ? NULL : calloc(n, size); }
void *fault_realloc(void *p, size_t n) { return fault_hit(FAULT_ALLOC) ? NULL : realloc(p, n); }
char *fault_strdup(const char *s) { return fault_hit(FAULT_ALLOC) ? NULL : strdup(s); }
char *fault_strndup(const char *s, size_t n) { return fault_hit(FAULT_ALLOC) ? NULL : strndup(s, n); }
int fault_posix_memalign(void **p, size_t align, size_t n) {
    return fault_hit(FAULT_ALLOC) ? ENOMEM : posix_memalign(p, align, n);
}
#else
typedef int fault_unused; /* ISO C: no empty translation unit */
#endif
