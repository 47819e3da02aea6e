/* The CPU backend's thread pool: n - 1 workers kept for the backend's life and
 * the calling (engine) thread as thread 0, so a decode step's hundred-odd
 * parallel ops do not each start or wake a team. Between ops a worker spins
 * for a short while (the next op usually comes within microseconds), then
 * sleeps on a futex: an idle server, or a core another process holds, costs
 * at most one spin budget per gap, never a time slice spent spinning (what
 * OpenMP's active wait policy did under contention).
 * A job is done when its work is: the caller runs it as thread 0, then
 * closes it and waits only for the workers that joined before that. A worker
 * the OS left in the run queue joins no job it comes late to, so on a busy
 * machine the caller does the work alone instead of waiting for a time
 * slice. Hence jobs take their work from a cpu_range (cpu_internal.h) rather
 * than by thread number, and what a chunk computes never depends on which
 * thread runs it.
 * On a machine whose cores other processes hold, the workers are worse than
 * useless: woken for every job (a system call each) they come late to it, or
 * join and lose their core mid-job, and the caller waits a time slice for them
 * (measured on the default model's decode with two threads beside other jobs:
 * 1.6-1.9x slower than one thread, the worker mostly joining on the caller's
 * own CPU, the other one taken). So the caller keeps their record: when a
 * worker joins a job on the caller's CPU, holds one up past the spin, or
 * misses MISSES jobs of some length in a row, the pool runs its jobs on the
 * caller alone for a while (SOLO_MIN_NS, doubled on each failed try up to
 * SOLO_MAX_NS, back to the minimum after GOOD_STREAK good jobs), then tries
 * the workers again. Where the workers have their cores they join every job
 * from their own CPUs and this never starts. */
#include <errno.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine/backend/cpu/cpu_internal.h"

/* How long a thread spins for the next job (or the caller for the job's end)
 * before it sleeps: longer than the serial ops between two parallel ones of a
 * step (a norm, a rope: microseconds), far shorter than a scheduler tick. */
#define SPIN_NS 100000

/* A job the caller ran this long with no worker joining it counts against
 * the workers (a spinning worker joins within a microsecond); shorter ones
 * may end before a worker could. */
#define MISS_NS 10000
/* Jobs in a row that count against the workers before the pool runs alone;
 * jobs in a row the workers joined in time from their own CPUs before a
 * failed try stops doubling the solo period. */
#define MISSES 4
#define GOOD_STREAK 256
/* How long the pool runs alone before it tries the workers again. */
#define SOLO_MIN_NS 1000000
#define SOLO_MAX_NS 64000000

/* The job word: the job's number (high 32 bits), CLOSED once the caller's
 * own share is done (no worker joins after that), JOINED once a worker has,
 * and the workers in it. */
#define JOB_CLOSED (1ull << 31)
#define JOB_JOINED (1ull << 30)
#define JOB_COUNT (JOB_JOINED - 1)

struct cpu_pool {
    int n;                     /* threads, the caller included */
    pthread_t *workers;        /* (n - 1) */
    cpu_pool_fn fn;            /* the job: fn(arg, ith, n) on each thread that joins */
    void *arg;
    _Atomic uint32_t gen;      /* the job's number, bumped once per job and at shutdown: the workers' futex word */
    _Atomic uint64_t job;      /* see JOB_CLOSED */
    _Atomic uint32_t done;     /* bumped when the last worker leaves a closed job: the caller's futex word */
    _Atomic int sleepers;      /* workers asleep (or about to be) on gen */
    _Atomic int caller_sleeps; /* the caller asleep (or about to be) on done */
    _Atomic bool stop;
    _Atomic int caller_cpu;    /* the CPU the caller published the job from */
    _Atomic bool crowded;      /* a worker joined the job on that CPU */
    /* the caller's own: the workers' record (see the top of the file) */
    int misses;          /* jobs of some length in a row that no worker joined */
    int streak;          /* good jobs in a row */
    uint64_t solo_until; /* jobs run on the caller alone until this time (ns) */
    uint64_t solo_ns;    /* how long the next solo period lasts */
};

typedef struct {
    cpu_pool *p;
    int ith;
} worker_arg;

static void futex_wait(_Atomic uint32_t *w, uint32_t val) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}
static void futex_wake(_Atomic uint32_t *w) {
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* One step of a bounded spin: false once SPIN_NS have passed since the first
 * call with *t0 == 0 (the clock is read every 64 pauses). */
static bool spin_on(uint64_t *t0, int i) {
    _mm_pause();
    if ((i & 63) != 63) return true;
    uint64_t t = now_ns();
    if (!*t0) *t0 = t;
    return t - *t0 <= SPIN_NS;
}

static void *worker_main(void *v) {
    worker_arg a = *(worker_arg *)v;
    free(v);
    cpu_pool *p = a.p;
    uint32_t seen = 0;
    bool crowded = false; /* the last job we joined ran on the caller's CPU: spinning would take it from the caller */
    for (;;) {
        uint64_t t0 = 0;
        bool moved = false;
        for (int i = 0; !(moved = atomic_load_explicit(&p->gen, memory_order_acquire) != seen) && !crowded &&
                        spin_on(&t0, i);
             i++) {
        }
        if (!moved) {
            /* Dekker with the caller: it bumps gen then reads sleepers; we
             * count ourselves then read gen (both seq_cst), so either it
             * sees us and wakes us or we see the new gen. */
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->gen) == seen) futex_wait(&p->gen, seen);
            atomic_fetch_sub(&p->sleepers, 1);
        }
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (atomic_load_explicit(&p->stop, memory_order_relaxed)) return NULL;
        uint64_t w = atomic_load(&p->job);
        bool joined = false;
        while ((uint32_t)(w >> 32) == seen && !(w & JOB_CLOSED) &&
               !(joined = atomic_compare_exchange_weak(&p->job, &w, (w + 1) | JOB_JOINED))) {
        }
        if (!joined) continue; /* came late: the job is done or closing without us */
        int cpu = sched_getcpu(); /* -1 where the system cannot say: never crowded */
        crowded = cpu >= 0 && cpu == atomic_load_explicit(&p->caller_cpu, memory_order_relaxed);
        if (crowded) atomic_store_explicit(&p->crowded, true, memory_order_relaxed);
        p->fn(p->arg, a.ith, p->n);
        w = atomic_fetch_sub(&p->job, 1) - 1;
        if ((w & JOB_CLOSED) && !(w & JOB_COUNT)) {
            atomic_fetch_add(&p->done, 1);
            if (atomic_load(&p->caller_sleeps)) futex_wake(&p->done);
        }
    }
}

cpu_pool *cpu__pool_create(int n) {
    cpu_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->n = n < 1 ? 1 : n;
    p->solo_ns = SOLO_MIN_NS;
    if (p->n > 1 && !(p->workers = calloc((size_t)p->n - 1, sizeof(pthread_t)))) {
        free(p);
        return NULL;
    }
    for (int i = 1; i < p->n; i++) {
        worker_arg *a = malloc(sizeof(*a));
        if (a) *a = (worker_arg){p, i};
        if (!a || pthread_create(&p->workers[i - 1], NULL, worker_main, a)) {
            free(a);
            p->n = i; /* destroy joins the i - 1 started */
            cpu__pool_destroy(p);
            return NULL;
        }
    }
    return p;
}

void cpu__pool_destroy(cpu_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, true);
    atomic_fetch_add(&p->gen, 1);
    futex_wake(&p->gen);
    for (int i = 1; i < p->n; i++) pthread_join(p->workers[i - 1], NULL);
    free(p->workers);
    free(p);
}

int cpu__pool_threads(const cpu_pool *p) { return p->n; }

/* A job counted against the workers: after MISSES in a row of those no
 * worker came to, or at once for one a worker crowded or held up, the next
 * jobs run on the caller alone for solo_ns, and the period after that doubles
 * unless GOOD_STREAK good jobs come first. */
static void workers_missed(cpu_pool *p, bool at_once) {
    p->streak = 0;
    if (++p->misses < MISSES && !at_once) return;
    p->misses = 0;
    p->solo_until = now_ns() + p->solo_ns;
    p->solo_ns = p->solo_ns * 2 > SOLO_MAX_NS ? SOLO_MAX_NS : p->solo_ns * 2;
}

/* A job the workers joined from their own CPUs without holding it up. */
static void workers_came(cpu_pool *p) {
    p->misses = 0;
    if (++p->streak >= GOOD_STREAK) p->solo_ns = SOLO_MIN_NS;
}

void cpu__pool_run(cpu_pool *p, cpu_pool_fn fn, void *arg) {
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    uint64_t start = now_ns();
    if (start < p->solo_until) { /* the workers lost their cores lately: they sleep, not woken */
        fn(arg, 0, p->n);
        return;
    }
    p->fn = fn, p->arg = arg;
    atomic_store_explicit(&p->caller_cpu, sched_getcpu(), memory_order_relaxed);
    atomic_store_explicit(&p->crowded, false, memory_order_relaxed);
    uint32_t g = atomic_load_explicit(&p->gen, memory_order_relaxed) + 1;
    atomic_store(&p->job, (uint64_t)g << 32);
    atomic_store(&p->gen, g); /* seq_cst: publishes fn, arg and the job word with it */
    if (atomic_load(&p->sleepers)) futex_wake(&p->gen);
    fn(arg, 0, p->n);
    uint64_t w = atomic_fetch_or(&p->job, JOB_CLOSED);
    if (!(w & JOB_COUNT)) {
        if ((w & JOB_JOINED) && atomic_load(&p->crowded)) workers_missed(p, true);
        else if (w & JOB_JOINED) workers_came(p);
        else if (now_ns() - start > MISS_NS) workers_missed(p, false);
        return;
    }
    uint64_t t0 = 0;
    for (int i = 0; atomic_load_explicit(&p->job, memory_order_acquire) & JOB_COUNT; i++)
        if (!spin_on(&t0, i)) { /* a worker was preempted mid-job: sleep until the last one leaves */
            atomic_store(&p->caller_sleeps, 1);
            for (;;) {
                uint32_t d = atomic_load(&p->done);
                if (!(atomic_load(&p->job) & JOB_COUNT)) break;
                futex_wait(&p->done, d);
            }
            atomic_store(&p->caller_sleeps, 0);
            workers_missed(p, true);
            return;
        }
    if (atomic_load(&p->crowded)) workers_missed(p, true);
    else workers_came(p);
}

typedef struct {
    cpu_item_fn fn;
    void *ctx;
    cpu_range items;
} for_job;

static void for_items(void *arg, int ith, int nth) {
    for_job *j = arg;
    int i0, i1;
    while (cpu__range_take(&j->items, &i0, &i1))
        for (int i = i0; i < i1; i++) j->fn(j->ctx, i);
}

void cpu__parallel_for(backend *be, int n, int grain, cpu_item_fn fn, void *ctx) {
    if (n <= 0) return;
    if (n <= grain) { /* one chunk: one thread runs it either way, so no handoff (a decode step's
                         attention merge, six a step on the default model; DeepSeek-V4's per-token ops) */
        for (int i = 0; i < n; i++) fn(ctx, i);
        return;
    }
    for_job j = {.fn = fn, .ctx = ctx, .items = cpu__range(n, grain)};
    cpu__parallel(be, for_items, &j);
}
