/* Engram rows from a host store to backend memory (see engram_fetch.h).
 *
 * Backend memory of one fetcher:
 *   rows: (C + max_rows [+ max_rows]) rows of row_bytes: the hot-row cache's
 *         C slots, then the step's incoming rows (what the copy brings,
 *         misses only), then with exclusive tiers the outgoing rows (those
 *         the incoming ones evict from their slots, collected for the copy
 *         back)
 *   ints: (2 * max_rows) int32: each lookup's slot in rows, then the cache
 *         slots that the first incoming rows move into
 * and host staging (pinned) of the same incoming rows and ints, and of the
 * outgoing rows. A lookup's slot is its row's cache slot, or C + its
 * position among the incoming rows when the cache is off or full of rows
 * this step also needs.
 *
 * Exclusive tiers (engram_store_tiers): a miss that takes a cache slot is
 * gathered with engram_store_gather_up (it leaves the store's DRAM cache);
 * the row it evicts is collected from its slot before the incoming row
 * overwrites it, copied back beside the compute (backend_fetch_back), and
 * handed to the store's cache (engram_store_demote) by the next step's host
 * half, once its fetch_sync has seen the copy done. Copying the evicted row
 * back rather than reading it again from the table: the copy costs a
 * row's bytes on the PCIe link's other direction, a read costs the disk
 * a random 4 KiB read when the disk is the bottleneck (bench/RESULTS.md,
 * "exclusive tiers"). */
#include "engine/engram_fetch.h"

#include "engine/backend/backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engram/row_cache.h"
#include "base/util.h"

struct engram_fetch {
    backend *be; /* borrowed */
    engram_store *store;
    int ch, max_rows, cols, dtype;
    size_t rb;           /* bytes of a stored row */
    uint64_t table_rows; /* rows of the table: ids at or past it are refused */
    /* backend memory */
    uint8_t *rows;
    int32_t *ints;
    /* host staging (backend_host_alloc) */
    uint8_t *st_rows;
    int32_t *st_ints;
    uint8_t *st_back; /* (max_rows) outgoing rows copied back (exclusive tiers) */
    bool pending; /* a fetch was issued and its wait not yet measured */
    /* dedupe: open addressing over the step's ids, valid where stamp == gen */
    int64_t *dk;
    int32_t *dv;
    uint32_t *dstamp, dmask, dshift, gen;
    int64_t *uniq;    /* (max_rows) distinct rows in first-seen order */
    int32_t *lu;      /* (max_rows) each lookup's distinct index */
    int32_t *uslot;   /* (max_rows) each distinct row's slot */
    int64_t *miss;    /* (max_rows) rows to gather: cached misses first */
    /* the hot-row cache, indexed on the host: engram/row_cache's CLOCK */
    uint32_t C;       /* slots (cache.n) */
    row_cache cache;
    uint32_t *cstamp; /* (C) gen of the last step that used the slot: not evicted in that step */
    uint32_t *chits;  /* (C) steps that found the slot's row since it came in (the hot-row file's counts) */
    pthread_mutex_t cache_mu; /* the index: changed by the fetch thread, read by the store's prefetch and
                               * warm threads (engram_store_set_above) and the lookahead */
    /* exclusive tiers */
    bool exclusive;
    int64_t *back;    /* (max_rows) the row each move of the last step evicted (-1: none), row by row in st_back */
    int n_back;       /* moves copied back, for the next host half to hand to the store */
    bool warming;     /* engram_fetch_warm's steps: not counted */
    /* the host half of a step runs on its own thread (start .. finish) */
    pthread_t th;
    bool th_started, stop;
    pthread_cond_t cv;   /* under mu: a job posted, or done */
    bool job, job_done;  /* posted by start, taken by the thread; done: its result is in job_rc */
    bool synced;         /* the job has measured the last copy's wait: a new mark may be recorded */
    const int64_t *job_rows;
    int64_t *job_fill_rows;       /* job_rows, written by job_fill first (engram_fetch_start_fill), or NULL */
    engram_fetch_fill_fn job_fill;
    void *job_ctx;
    int job_n, job_rc;
    int n_ints, n_rows, n_cached; /* what the finished host half staged: ints (lookups + moves), copied rows, moves */
    int n_evicted;    /* of the moves, those that evicted a row (exclusive tiers: copied back) */
    double job_gather_s, job_hash_s;
    uint64_t job_u, job_hits;
    pthread_mutex_t mu;
    engram_fetch_stats st;
};

static void *fetch_main(void *arg);

/* engram_store_above_fn: drops the rows the hot-row cache holds. */
static size_t drop_held(void *ctx, int64_t *rows, size_t n) {
    engram_fetch *f = ctx;
    size_t m = 0;
    pthread_mutex_lock(&f->cache_mu);
    for (size_t i = 0; i < n; i++)
        if (row_cache_find(&f->cache, rows[i]) < 0) rows[m++] = rows[i];
    pthread_mutex_unlock(&f->cache_mu);
    return m;
}

void engram_fetch_destroy(engram_fetch *f) {
    if (!f) return;
    backend *be = f->be;
    if (f->C && f->store) engram_store_set_above(f->store, NULL, NULL); /* its threads stop asking us */
    if (f->th_started) {
        pthread_mutex_lock(&f->mu);
        while (f->job && !f->job_done) pthread_cond_wait(&f->cv, &f->mu); /* a started host half: let it end */
        f->stop = true;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->th, NULL);
    }
    if (f->pending) backend_fetch_sync(be, f->ch); /* the copy reads the staging freed below */
    backend_free(be, f->rows);
    backend_free(be, f->ints);
    backend_host_free(be, f->st_rows);
    backend_host_free(be, f->st_ints);
    backend_host_free(be, f->st_back);
    free(f->back);
    free(f->dk), free(f->dv), free(f->dstamp);
    free(f->uniq), free(f->lu), free(f->uslot), free(f->miss);
    free(f->cstamp);
    free(f->chits);
    row_cache_free(&f->cache);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    pthread_mutex_destroy(&f->cache_mu);
    free(f);
}

engram_fetch *engram_fetch_create(backend *be, engram_store *store, int ch, int max_rows,
                                  uint64_t cache_bytes, char *err, size_t errlen) {
    engram_store_info in = engram_store_get_info(store);
    const engram_store_header *h = &in.header;
    engram_fetch *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&f->mu, NULL);
    pthread_mutex_init(&f->cache_mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    f->be = be;
    f->store = store;
    f->ch = ch % BACKEND_FETCH_CHANNELS;
    f->max_rows = max_rows < 1 ? 1 : max_rows;
    f->cols = (int)h->cols;
    f->dtype = (int)h->dtype;
    f->rb = h->row_bytes;
    f->table_rows = h->rows;
    uint64_t C = cache_bytes / f->rb;
    if (C > h->rows) C = h->rows;
    if (C > (1u << 30)) C = 1u << 30; /* slots and the index stay in int32 */
    f->C = (uint32_t)C;
    /* exclusive only where the store has a cache to share rows with (not the DRAM tier's whole table) */
    f->exclusive = C && in.tiers == ENGRAM_STORE_EXCLUSIVE && in.cache_rows > 0;
    size_t R = (size_t)f->max_rows;
    uint32_t bits = 1;
    while ((1ull << bits) < 2 * R) bits++;
    f->dmask = (1u << bits) - 1;
    f->dshift = 64 - bits;
    f->rows = backend_alloc(be, (C + R + (f->exclusive ? R : 0)) * f->rb);
    f->ints = backend_alloc(be, 2 * R * sizeof(int32_t));
    f->st_rows = backend_host_alloc(be, R * f->rb);
    f->st_ints = backend_host_alloc(be, 2 * R * sizeof(int32_t));
    f->dk = malloc(((size_t)f->dmask + 1) * sizeof(int64_t));
    f->dv = malloc(((size_t)f->dmask + 1) * sizeof(int32_t));
    f->dstamp = calloc((size_t)f->dmask + 1, sizeof(uint32_t));
    f->uniq = malloc(R * sizeof(int64_t));
    f->lu = malloc(R * sizeof(int32_t));
    f->uslot = malloc(R * sizeof(int32_t));
    f->miss = malloc(R * sizeof(int64_t));
    bool ok = f->rows && f->ints && f->st_rows && f->st_ints && f->dk && f->dv && f->dstamp && f->uniq && f->lu &&
              f->uslot && f->miss;
    if (ok && C) {
        f->cstamp = calloc(C, sizeof(uint32_t));
        f->chits = calloc(C, sizeof(uint32_t));
        ok = f->cstamp && f->chits && row_cache_init(&f->cache, C) == 0;
    }
    if (ok && f->exclusive) {
        f->st_back = backend_host_alloc(be, R * f->rb);
        f->back = malloc(R * sizeof(int64_t));
        ok = f->st_back && f->back;
    }
    if (!ok) {
        snprintf(err, errlen, "out of %s memory for Engram rows (%.2f GB cache, %d rows a step)", backend_name(be),
                 (double)C * f->rb / 1e9, f->max_rows);
        engram_fetch_destroy(f);
        return NULL;
    }
    f->st.cache_capacity = C;
    if (pthread_create(&f->th, NULL, fetch_main, f)) {
        snprintf(err, errlen, "cannot start the Engram fetch thread");
        engram_fetch_destroy(f);
        return NULL;
    }
    f->th_started = true;
    if (C) engram_store_set_above(store, drop_held, f);
    return f;
}

/* The hand passes over slots that hold a row of this step. */
static bool used_this_step(const void *ctx, uint32_t k) {
    const engram_fetch *f = ctx;
    return f->cstamp[k] == f->gen;
}

/* A cache slot for row (absent), now indexed and stamped with this step,
 * taken from a row not used this step (*victim: that row, or -1), or -1
 * when every slot holds a row of this step. */
static int32_t cache_take(engram_fetch *f, int64_t row, int64_t *victim) {
    int32_t k = row_cache_take(&f->cache, row, used_this_step, f, victim);
    if (k >= 0) {
        f->cstamp[k] = f->gen;
        f->chits[k] = 0;
    }
    return k;
}

static void observe_stall(engram_fetch_stats *s, double sec) {
    if (sec < 0) sec = 0;
    s->stall_hist[engram_store_hist_bucket(sec)]++;
    s->stalls++;
    s->stall_seconds += sec;
    if (sec > s->stall_max) s->stall_max = sec;
}

/* The host half of a step, on the fetch thread: wait for the last copy out
 * of the staging, make the rows (when the job has a fill), resolve every
 * lookup to a slot, gather the misses into the staging. Returns 0 or a negative engram_store_status (nothing staged). */
static int prepare(engram_fetch *f, const int64_t *rows, int n) {
    backend *be = f->be;
    if (n > f->max_rows) return ENGRAM_STORE_EINVAL;
    /* The staging is rewritten below: the last copy out of it must be done. */
    double stall = f->pending ? backend_fetch_sync(be, f->ch) : -1;
    pthread_mutex_lock(&f->mu);
    if (stall >= 0) observe_stall(&f->st, stall);
    f->pending = false;
    f->synced = true; /* finish may record this step's mark now */
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    f->job_hash_s = 0;
    if (f->job_fill && n > 0) { /* the rows, made here (engram_fetch_start_fill) */
        double t = util_now();
        f->job_fill(f->job_ctx, f->job_fill_rows);
        f->job_hash_s = util_now() - t;
    }
    for (int i = 0; i < n; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= f->table_rows) return ENGRAM_STORE_ERANGE;
    double t0 = util_now();
    /* the rows the last step evicted are back on the host (the sync above): down to the store's cache, before
     * this step's misses look there */
    if (f->n_back) engram_store_demote(f->store, f->back, (size_t)f->n_back, f->st_back);
    f->n_back = 0;
    if (++f->gen == 0) { /* stamps wrapped: forget them all */
        memset(f->dstamp, 0, ((size_t)f->dmask + 1) * sizeof(uint32_t));
        if (f->C) memset(f->cstamp, 0, (size_t)f->C * sizeof(uint32_t));
        f->gen = 1;
    }
    /* Dedupe, for the cache: without one, hashing a step's ids costs more
     * than copying its repeats (bench/RESULTS.md, the fetch microbenchmark). */
    int u = 0;
    if (!f->C) {
        memcpy(f->uniq, rows, (size_t)n * sizeof(int64_t));
        for (int i = 0; i < n; i++) f->lu[i] = i;
        u = n;
    }
    for (int i = 0; i < n && f->C; i++) {
        int64_t r = rows[i];
        uint32_t k = (uint32_t)(((uint64_t)r * 0x9E3779B97F4A7C15ull) >> f->dshift);
        while (f->dstamp[k] == f->gen && f->dk[k] != r) k = (k + 1) & f->dmask;
        if (f->dstamp[k] != f->gen) {
            f->dstamp[k] = f->gen;
            f->dk[k] = r;
            f->dv[k] = u;
            f->uniq[u++] = r;
        }
        f->lu[i] = f->dv[k];
    }
    /* cache lookups: hits first, so that no miss evicts a row this step reads */
    int hits = 0, mc = 0, m = 0, ev = 0;
    pthread_mutex_lock(&f->cache_mu);
    for (int j = 0; j < u; j++) {
        int32_t k = row_cache_find(&f->cache, f->uniq[j]);
        f->uslot[j] = k;
        if (k >= 0) {
            row_cache_hit(&f->cache, k);
            f->cstamp[k] = f->gen;
            if (f->chits[k] < UINT32_MAX) f->chits[k]++;
            hits++;
        }
    }
    /* misses: into a cache slot when one is free of this step's rows (those
     * come first in the copy, then move to their slots), else read in place */
    for (int j = 0; j < u; j++) {
        if (f->uslot[j] >= 0) continue;
        int64_t victim = -1;
        int32_t k = f->C ? cache_take(f, f->uniq[j], &victim) : -1;
        if (k < 0) continue;
        f->uslot[j] = k;
        if (f->exclusive) f->back[mc] = victim, ev += victim >= 0;
        f->st_ints[n + mc] = k; /* where the copy's row mc moves to */
        f->miss[mc++] = f->uniq[j];
    }
    pthread_mutex_unlock(&f->cache_mu);
    m = mc;
    for (int j = 0; j < u; j++) {
        if (f->uslot[j] >= 0) continue;
        f->uslot[j] = (int32_t)f->C + m;
        f->miss[m++] = f->uniq[j];
    }
    /* exclusive: the first mc go up into the cache, out of the store's */
    int rc = m ? engram_store_gather_up(f->store, f->miss, (size_t)m, f->exclusive ? (size_t)mc : 0, f->st_rows, NULL)
               : 0;
    if (rc) { /* the cache must not keep slots that never got their rows (their victims are lost: re-read later) */
        pthread_mutex_lock(&f->cache_mu);
        for (int q = 0; q < mc; q++) row_cache_drop(&f->cache, f->st_ints[n + q]);
        pthread_mutex_unlock(&f->cache_mu);
        return rc;
    }
    for (int i = 0; i < n; i++) f->st_ints[i] = f->uslot[f->lu[i]];
    f->job_gather_s = util_now() - t0;
    f->n_ints = n + mc;
    f->n_rows = m;
    f->n_cached = mc;
    f->n_evicted = ev;
    f->job_u = (uint64_t)u;
    f->job_hits = (uint64_t)hits;
    return 0;
}


static void *fetch_main(void *arg) {
    engram_fetch *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->stop && (!f->job || f->job_done)) pthread_cond_wait(&f->cv, &f->mu);
        if (f->stop) break;
        pthread_mutex_unlock(&f->mu);
        int rc = prepare(f, f->job_rows, f->job_n);
        pthread_mutex_lock(&f->mu);
        f->job_rc = rc;
        f->job_done = true;
        pthread_cond_broadcast(&f->cv);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

void engram_fetch_start(engram_fetch *f, const int64_t *rows, int n) { engram_fetch_start_fill(f, (int64_t *)rows, n, NULL, NULL); }

void engram_fetch_start_fill(engram_fetch *f, int64_t *rows, int n, engram_fetch_fill_fn fill, void *ctx) {
    pthread_mutex_lock(&f->mu);
    while (f->job && !f->job_done) pthread_cond_wait(&f->cv, &f->mu); /* an unfinished step's start */
    f->job = true;
    f->job_done = false;
    f->synced = false;
    f->job_rows = rows;
    f->job_fill_rows = fill ? rows : NULL;
    f->job_fill = fill;
    f->job_ctx = ctx;
    f->job_n = n;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

int engram_fetch_finish(engram_fetch *f, float *out) {
    backend *be = f->be;
    pthread_mutex_lock(&f->mu);
    if (!f->job) {
        pthread_mutex_unlock(&f->mu);
        return ENGRAM_STORE_EINVAL;
    }
    /* the job reads the last mark (fetch_sync) before this one replaces it */
    while (!f->synced && !f->job_done) pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    /* The compute has been given everything before this layer: from here
     * on, in its order, it waits for the rows, however long the host half
     * still takes. */
    backend_fetch_mark(be, f->ch);
    double t0 = util_now();
    pthread_mutex_lock(&f->mu);
    while (!f->job_done) pthread_cond_wait(&f->cv, &f->mu);
    f->st.host_wait_seconds += util_now() - t0;
    f->job = false;
    int rc = f->job_rc, n = f->job_n;
    if (!f->warming) f->st.hash_seconds += f->job_hash_s; /* made even when the gather then failed */
    pthread_mutex_unlock(&f->mu);
    if (rc || n < 1) return rc;
    size_t C = f->C, rb = f->rb;
    int m = f->n_rows, mc = f->n_cached, ev = f->n_evicted;
    size_t R = (size_t)f->max_rows;
    if (m) backend_fetch(be, f->ch, f->rows + C * rb, f->st_rows, (size_t)m * rb);
    backend_fetch(be, f->ch, f->ints, f->st_ints, (size_t)f->n_ints * sizeof(int32_t));
    f->pending = true;
    backend_fetch_wait(be, f->ch);
    if (ev) { /* the rows the moves evict, out of their slots before the moves overwrite them, and back */
        backend_collect_rows(be, f->rows + (C + R) * rb, f->rows, f->ints + n, mc, rb);
        backend_fetch_back(be, f->ch, f->st_back, f->rows + (C + R) * rb, (size_t)mc * rb);
        f->n_back = mc; /* the next host half hands them down after its fetch_sync */
    }
    if (mc) backend_scatter_rows(be, f->rows, f->rows + C * rb, f->ints + n, mc, rb);
    backend_decode_rows(be, out, f->rows, f->dtype, rb, f->ints, n, f->cols);
    backend_fetch_release(be, f->ch);

    pthread_mutex_lock(&f->mu);
    engram_fetch_stats *s = &f->st;
    s->cache_rows = f->cache.used;
    if (f->warming) {
        pthread_mutex_unlock(&f->mu);
        return 0;
    }
    s->steps++;
    s->lookups += (uint64_t)n;
    s->unique += f->job_u;
    s->cache_hits += f->job_hits;
    s->copied_rows += (uint64_t)m;
    s->copied_back_rows += (uint64_t)ev;
    s->copied_bytes += (uint64_t)m * rb + (uint64_t)f->n_ints * sizeof(int32_t);
    s->gather_seconds += f->job_gather_s;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

int engram_fetch_drop_cached(engram_fetch *f, int64_t *rows, int n) {
    return f->C && n > 0 ? (int)drop_held(f, rows, (size_t)n) : n;
}

size_t engram_fetch_tier_overlap(engram_fetch *f) {
    if (!f->C) return 0;
    int64_t *rows = malloc((size_t)f->C * sizeof(int64_t));
    if (!rows) return 0;
    size_t n = 0;
    for (uint32_t k = 0; k < f->C; k++)
        if (f->cache.slot[k].row >= 0) rows[n++] = f->cache.slot[k].row;
    size_t both = engram_store_count_cached(f->store, rows, n);
    free(rows);
    return both;
}

uint32_t engram_fetch_cache_slots(const engram_fetch *f) { return f->C; }

size_t engram_fetch_hot_rows(engram_fetch *f, int64_t *rows, uint32_t *counts) {
    size_t n = 0;
    for (uint32_t k = 0; k < f->C; k++)
        if (f->cache.slot[k].row >= 0) {
            rows[n] = f->cache.slot[k].row;
            counts[n++] = f->chits[k];
        }
    return n;
}

int engram_fetch_warm(engram_fetch *f, const int64_t *rows, size_t n, float *out) {
    if (n > f->C) n = f->C;
    int rc = 0;
    f->warming = true;
    for (size_t a = 0; a < n && !rc; a += (size_t)f->max_rows) {
        int m = n - a < (size_t)f->max_rows ? (int)(n - a) : f->max_rows;
        rc = engram_fetch_rows(f, rows + a, m, out);
    }
    if (f->pending) backend_fetch_sync(f->be, f->ch); /* not a step's wait: the next step must not count it */
    f->pending = false;
    f->warming = false;
    return rc;
}

int engram_fetch_rows(engram_fetch *f, const int64_t *rows, int n, float *out) {
    engram_fetch_start(f, rows, n);
    return engram_fetch_finish(f, out);
}

void engram_fetch_get_stats(engram_fetch *f, engram_fetch_stats *out) {
    pthread_mutex_lock(&f->mu);
    *out = f->st;
    pthread_mutex_unlock(&f->mu);
}

void engram_fetch_stats_add(engram_fetch_stats *sum, const engram_fetch_stats *x) {
    sum->steps += x->steps;
    sum->lookups += x->lookups;
    sum->unique += x->unique;
    sum->cache_hits += x->cache_hits;
    sum->copied_rows += x->copied_rows;
    sum->copied_back_rows += x->copied_back_rows;
    sum->copied_bytes += x->copied_bytes;
    sum->hash_seconds += x->hash_seconds;
    sum->gather_seconds += x->gather_seconds;
    sum->host_wait_seconds += x->host_wait_seconds;
    sum->stalls += x->stalls;
    sum->stall_seconds += x->stall_seconds;
    if (x->stall_max > sum->stall_max) sum->stall_max = x->stall_max;
    for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) sum->stall_hist[b] += x->stall_hist[b];
    sum->cache_rows += x->cache_rows;
    sum->cache_capacity += x->cache_capacity;
}
