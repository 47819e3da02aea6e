/* The Engram store's prefetch thread (see engram_store_prefetch in
 * store.h): a ring of row ids that the forward pass hands over as soon as a
 * step's tokens are known, and one thread that reads the rows neither cached
 * nor in flight into the NVMe tier's row cache with its own reader, so that
 * the gathers find them there. Between reads it counts the gathers'
 * lookups in the admission sketch, which they defer to it. */
#include <stdlib.h>
#include <string.h>

#include "base/err.h"
#include "engram/store_internal.h"

int engram_store_prefetch(engram_store *s, const int64_t *rows, size_t n) {
    if (n && !rows) return ENGRAM_STORE_EINVAL;
    if (!s || !s->pf_started || !n) return ENGRAM_STORE_OK;
    pthread_mutex_lock(&s->pf_mu);
    size_t room = PF_QUEUE - s->pf_len, k = n < room ? n : room;
    for (size_t i = 0; i < k; i++) s->pf_q[(s->pf_head + s->pf_len + i) % PF_QUEUE] = rows[i];
    s->pf_len += k;
    if (k) pthread_cond_signal(&s->pf_cv);
    pthread_mutex_unlock(&s->pf_mu);
    counter_add(&s->prefetch_rows, n);
    if (k < n) counter_add(&s->prefetch_dropped, n - k);
    return ENGRAM_STORE_OK;
}

void engram_store_prefetch_wait(engram_store *s) {
    if (!s || !s->pf_started) return;
    pthread_mutex_lock(&s->pf_mu);
    while (s->pf_len || s->pf_busy) pthread_cond_wait(&s->pf_done, &s->pf_mu);
    pthread_mutex_unlock(&s->pf_mu);
}

/* The prefetch thread: takes up to pf_batch ids, claims slots for those
 * neither cached nor in flight, reads them with its own reader. Already
 * cached rows get their reference bit: they are about to be used. Its rows
 * skip the admission filter: each is read because a step is about to use
 * it, and a refused one would be read again by that step's gather, on the
 * forward pass's path (the gather's lookup then counts it in the sketch).
 * It starts no batch while a gather runs: the disk is the gather's then.
 * Rows the tier above holds are left out (engram_store_set_above). It also
 * counts the lookups gathers deferred (freq_sketch_defer), SKETCH_BATCH per
 * hold of the lock and round (ids or not: reads that never stop must not
 * leave the counts to pile up for a gather), also only while no gather
 * runs. */
static void *prefetch_main(void *arg) {
    engram_store *s = arg;
    const engram_store_header *h = &s->info.header;
    int64_t *ids = s->pf_ids;
    row_req *q = s->pf_reqs;
    for (;;) {
        pthread_mutex_lock(&s->pf_mu);
        if (s->pf_busy) { /* the last round is done (engram_store_prefetch_wait) */
            s->pf_busy = false;
            pthread_cond_broadcast(&s->pf_done);
        }
        bool work;
        while (!(work = s->pf_len || atomic_load(&s->sketch_owed)) || atomic_load(&s->gathering)) {
            if (s->pf_stop) break;
            pthread_cond_wait(work ? &s->pf_idle : &s->pf_cv, &s->pf_mu);
        }
        if (s->pf_stop) {
            pthread_mutex_unlock(&s->pf_mu);
            return NULL;
        }
        size_t m = s->pf_len < s->pf_batch ? s->pf_len : s->pf_batch;
        for (size_t i = 0; i < m; i++) ids[i] = s->pf_q[(s->pf_head + i) % PF_QUEUE];
        s->pf_head = (s->pf_head + m) % PF_QUEUE;
        s->pf_len -= m;
        s->pf_busy = m > 0;
        pthread_mutex_unlock(&s->pf_mu);
        if (atomic_load(&s->sketch_owed)) { /* the sketch's owed lookups first: a few tens of microseconds */
            pthread_mutex_lock(&s->mu);
            if (!freq_sketch_settle(&s->c.sketch, SKETCH_BATCH)) atomic_store(&s->sketch_owed, false);
            pthread_mutex_unlock(&s->mu);
        }
        if (!m) continue;

        size_t nq = 0;
        for (size_t c = 0; c < m; c += PF_LOCK_IDS) { /* mu held for PF_LOCK_IDS ids at most: a gather waits for it */
            size_t n = m - c < PF_LOCK_IDS ? m - c : PF_LOCK_IDS;
            pthread_mutex_lock(&s->mu);
            n = engram_store__drop_above(s, ids + c, n); /* under mu: a row cannot move up between this and its claim */
            for (size_t i = c; i < c + n; i++) {
                if (ids[i] < 0 || (uint64_t)ids[i] >= h->rows) continue;
                int32_t k = row_cache_find(&s->c.clock, ids[i]);
                if (k >= 0)
                    row_cache_hit(&s->c.clock, k);
                else if ((k = engram_store__alloc_slot(s, ids[i], false)) >= 0)
                    q[nq++] = (row_req){h->data_offset + (uint64_t)ids[i] * h->row_stride, NO_IDX, k};
            }
            pthread_mutex_unlock(&s->mu);
        }
        if (!nq) continue;
        int rc = engram_store__read_reqs(s, &s->pf_rd, q, nq, (row_out){0});
        if (rc) {
            engram_store__fail_unfinished(s, q, nq);
            engram_store__note(s, "prefetch read failed");
        } else {
            counter_add(&s->prefetch_reads, nq);
        }
    }
}

int engram_store__prefetch_start(engram_store *s, char *err, size_t errlen) {
    const char *b = getenv("ENGRAM_PF_BATCH");
    long nb = b ? strtol(b, NULL, 10) : PF_BATCH;
    s->pf_batch = nb < 16 ? 16 : nb > (long)PF_BATCH_MAX ? PF_BATCH_MAX : (size_t)nb;
    s->pf_q = malloc(PF_QUEUE * sizeof(int64_t));
    s->pf_ids = malloc(s->pf_batch * sizeof(int64_t));
    s->pf_reqs = malloc(s->pf_batch * sizeof(row_req));
    if (!s->pf_q || !s->pf_ids || !s->pf_reqs || engram_store__reader_init(s, &s->pf_rd, s->p.queue_depth, s->run_bytes, 0))
        return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    int e = pthread_create(&s->pf_thread, NULL, prefetch_main, s);
    if (e)
        return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "%s: cannot start the prefetch thread: %s", s->path,
                       strerror(e));
    s->pf_started = true;
    return ENGRAM_STORE_OK;
}

void engram_store__prefetch_stop(engram_store *s) {
    if (s->pf_started) {
        pthread_mutex_lock(&s->pf_mu);
        s->pf_stop = true;
        pthread_cond_signal(&s->pf_cv);
        pthread_cond_signal(&s->pf_idle);
        pthread_mutex_unlock(&s->pf_mu);
        pthread_join(s->pf_thread, NULL);
        s->pf_started = false;
    }
    engram_store__reader_free(&s->pf_rd);
    free(s->pf_q), free(s->pf_ids), free(s->pf_reqs);
    s->pf_q = NULL, s->pf_ids = NULL, s->pf_reqs = NULL;
}
