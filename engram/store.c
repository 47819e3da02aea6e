/* Engram table store, host tiers (see store.h): the one interface over them.
 * Open reads and checks the header and picks the tier (AUTO: DRAM when the
 * budget holds the table); gathers check their row ids here and go to the
 * tier (store_dram.c: one MAP_SHARED mapping; store_nvme.c: O_DIRECT reads
 * under a DRAM row cache fed by prefetch.c, warmed at open by store_hot.c);
 * counters, stats and close. The file format is table_file.c. */
#include "engram/store.h"
#include "base/fault.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "engram/store_internal.h"

const char *engram_store_status_str(int status) {
    switch (status) {
    case ENGRAM_STORE_OK: return "ok";
    case ENGRAM_STORE_EIO: return "i/o error";
    case ENGRAM_STORE_EFORMAT: return "not a valid Engram table file";
    case ENGRAM_STORE_EINVAL: return "invalid argument";
    case ENGRAM_STORE_ERANGE: return "row out of range";
    case ENGRAM_STORE_ENOMEM: return "out of memory";
    case ENGRAM_STORE_ELOCK: return "mlock refused";
    default: return "unknown status";
    }
}

const double engram_store_hist_le[ENGRAM_STORE_HIST_BUCKETS] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5};

int engram_store_hist_bucket(double sec) {
    int b = 0;
    while (b < ENGRAM_STORE_HIST_BUCKETS && sec > engram_store_hist_le[b]) b++;
    return b;
}

engram_store_params engram_store_default_params(void) {
    engram_store_params p = {.tier = ENGRAM_STORE_DRAM, .queue_depth = 64, .admission = ENGRAM_STORE_ADMIT_ALL,
                             .tiers = ENGRAM_STORE_EXCLUSIVE};
    return p;
}

uint64_t engram_store_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    unsigned long long kb = 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb * 1024;
}

void engram_store__note(const engram_store *s, const char *fmt, ...) {
    if (s->p.quiet) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "engram_store: %s: ", s->path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- gathers: checked here, served by the tier ---- */

static int gather(engram_store *s, const int64_t *rows, size_t n, size_t n_up, row_out out, size_t *bad) {
    if (!s || (n && (!rows || !out.p)) || n > UINT32_MAX || n_up > n) return ENGRAM_STORE_EINVAL;
    const engram_store_header *h = &s->info.header;
    for (size_t i = 0; i < n; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= h->rows) {
            if (bad) *bad = i;
            return ENGRAM_STORE_ERANGE;
        }
    if (!n) return ENGRAM_STORE_OK;
    if (s->map) {
        if (engram_store__gather_mapped(s, rows, n, out)) {
            if (!atomic_flag_test_and_set(&s->bad_noted))
                engram_store__note(s, "the file shrank under its mapping (truncated or rewritten in place?): "
                                      "every gather of this table fails from now on; restart to reload it");
            return ENGRAM_STORE_EIO;
        }
        counter_add(&s->lookups, n);
        counter_add(&s->dram_hits, n);
        return ENGRAM_STORE_OK;
    }
    int rc = engram_store__gather_nvme(s, rows, n, n_up, out);
    if (rc == ENGRAM_STORE_EIO) engram_store__note(s, "read failed");
    return rc;
}

int engram_store_gather(engram_store *s, const int64_t *rows, size_t n, float *out, size_t *bad) {
    return gather(s, rows, n, 0, (row_out){out, false}, bad);
}

int engram_store_gather_raw(engram_store *s, const int64_t *rows, size_t n, void *out, size_t *bad) {
    return gather(s, rows, n, 0, (row_out){out, true}, bad);
}

int engram_store_gather_up(engram_store *s, const int64_t *rows, size_t n, size_t n_up, void *out, size_t *bad) {
    return gather(s, rows, n, n_up, (row_out){out, true}, bad);
}

/* ---- open, stats, close ---- */

engram_store *engram_store__new(const char *path, const engram_store_params *p) {
    engram_store *s = calloc(1, sizeof(*s));
    if (!s || !(s->path = strdup(path))) {
        free(s);
        return NULL;
    }
    s->p = *p;
    s->info.hbm_cache = p->hbm_cache; /* carried for the tier above */
    s->info.tiers = p->tiers;
    s->fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->io_mu, NULL);
    pthread_mutex_init(&s->pf_mu, NULL);
    pthread_cond_init(&s->ready, NULL);
    pthread_cond_init(&s->pf_cv, NULL);
    pthread_cond_init(&s->pf_idle, NULL);
    pthread_cond_init(&s->pf_done, NULL);
    return s;
}

/* Opens path buffered (the header may be any size), checks it is a regular
 * file and reads its header into s->info.header. Returns the descriptor, or
 * -1 with *rc and a message. */
static int open_header(engram_store *s, const char *path, uint64_t *size, int *rc, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        *rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        *rc = err_set(err, errlen, ENGRAM_STORE_EFORMAT, "%s: not a regular file", path);
        return -1;
    }
    uint8_t hb[ENGRAM_STORE_HEADER_BYTES];
    ssize_t got = fault_read(pread(fd, hb, sizeof(hb), 0), (long)sizeof(hb), false);
    char herr[256];
    if (got < 0 || engram_store_parse_header(hb, (size_t)got, (uint64_t)st.st_size ? (uint64_t)st.st_size : 1,
                                             &s->info.header, herr, sizeof(herr))) {
        close(fd);
        *rc = got < 0 ? err_set(err, errlen, ENGRAM_STORE_EIO, "%s: read failed: %s", path, strerror(errno))
                      : err_set(err, errlen, ENGRAM_STORE_EFORMAT, "%s: %s", path, herr);
        return -1;
    }
    *size = (uint64_t)st.st_size;
    return fd;
}

int engram_store_open(const char *path, const engram_store_params *params, engram_store **out, char *err,
                      size_t errlen) {
    if (!path || !out) return err_set(err, errlen, ENGRAM_STORE_EINVAL, "engram_store_open: NULL argument");
    engram_store_params p = params ? *params : engram_store_default_params();
    if (p.tier != ENGRAM_STORE_DRAM && p.tier != ENGRAM_STORE_NVME && p.tier != ENGRAM_STORE_AUTO)
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "%s: unknown tier %d", path, (int)p.tier);
    if (p.tier != ENGRAM_STORE_DRAM && (p.queue_depth < 1 || p.queue_depth > 4096))
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "%s: queue depth %d outside 1..4096", path, p.queue_depth);
    engram_store *s = engram_store__new(path, &p);
    if (!s) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    int rc;
    uint64_t size = 0;
    int fd = open_header(s, path, &size, &rc, err, errlen);
    if (fd < 0) goto bad;
    const engram_store_header *h = &s->info.header;
    if (p.tier == ENGRAM_STORE_AUTO) { /* the whole table in DRAM when the budget holds it */
        uint64_t table = h->rows * h->row_stride, budget = p.dram_budget;
        if (!budget) {
            uint64_t avail = engram_store_mem_available();
            budget = !avail || table <= avail ? table : avail / 2;
        }
        p.tier = budget >= table ? ENGRAM_STORE_DRAM : ENGRAM_STORE_NVME;
        p.dram_budget = budget;
        s->p = p;
    }
    s->info.tier = p.tier;
    rc = p.tier == ENGRAM_STORE_DRAM ? engram_store__dram_open(s, fd, (size_t)size, err, errlen)
                                     : engram_store__nvme_open(s, fd, err, errlen);
    if (rc || (rc = engram_store__hot_open(s, err, errlen))) goto bad;
    *out = s;
    return ENGRAM_STORE_OK;
bad:
    engram_store_close(s);
    return rc;
}

engram_store_info engram_store_get_info(const engram_store *s) {
    engram_store_info in = s->info;
    in.reads = counter_get(&s->reads);
    in.bytes_read = counter_get(&s->bytes_read);
    return in;
}

void engram_store_get_stats(const engram_store *s, engram_store_stats *o) {
    memset(o, 0, sizeof(*o));
    o->lookups = counter_get(&s->lookups);
    o->dram_hits = counter_get(&s->dram_hits);
    o->nvme_hits = counter_get(&s->nvme_hits);
    o->prefetch_rows = counter_get(&s->prefetch_rows);
    o->prefetch_reads = counter_get(&s->prefetch_reads);
    o->prefetch_dropped = counter_get(&s->prefetch_dropped);
    o->evictions = counter_get(&s->evictions);
    o->admissions = counter_get(&s->admissions);
    o->rejections = counter_get(&s->rejections);
    o->promotions = counter_get(&s->promotions);
    o->demotions = counter_get(&s->demotions);
    o->warm_rows = counter_get(&s->warm_rows);
    o->warm_target = counter_get(&s->warm_target);
    o->warm_ignored = counter_get(&s->warm_ignored);
    o->warming = engram_store_warming(s);
    o->warm_seconds = (double)counter_get(&s->warm_ns) * 1e-9;
    pthread_mutex_lock((pthread_mutex_t *)&s->mu);
    o->cache_rows = s->c.clock.used;
    pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
    o->cache_capacity = s->info.cache_rows;
    o->cache_bytes = s->info.cache_bytes;
    o->nvme_reads = counter_get(&s->reads);
    o->nvme_bytes = counter_get(&s->bytes_read);
    o->nvme_read_seconds = (double)counter_get(&s->read_ns) * 1e-9;
    o->gathers = counter_get(&s->gathers);
    o->tables_bad = atomic_load(&s->bad) ? 1 : 0;
    o->stall_seconds = (double)counter_get(&s->stall_ns) * 1e-9;
    for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) {
        o->nvme_read_hist[b] = counter_get(&s->read_hist[b]);
        o->stall_hist[b] = counter_get(&s->stall_hist[b]);
    }
}

void engram_store_stats_add(engram_store_stats *sum, const engram_store_stats *x) {
    sum->lookups += x->lookups;
    sum->dram_hits += x->dram_hits;
    sum->nvme_hits += x->nvme_hits;
    sum->prefetch_rows += x->prefetch_rows;
    sum->prefetch_reads += x->prefetch_reads;
    sum->prefetch_dropped += x->prefetch_dropped;
    sum->evictions += x->evictions;
    sum->admissions += x->admissions;
    sum->rejections += x->rejections;
    sum->promotions += x->promotions;
    sum->demotions += x->demotions;
    sum->warm_rows += x->warm_rows;
    sum->warm_target += x->warm_target;
    sum->warm_ignored += x->warm_ignored;
    sum->warming += x->warming;
    if (x->warm_seconds > sum->warm_seconds) sum->warm_seconds = x->warm_seconds; /* they run side by side */
    sum->cache_rows += x->cache_rows;
    sum->cache_capacity += x->cache_capacity;
    sum->cache_bytes += x->cache_bytes;
    sum->nvme_reads += x->nvme_reads;
    sum->nvme_bytes += x->nvme_bytes;
    sum->nvme_read_seconds += x->nvme_read_seconds;
    sum->gathers += x->gathers;
    sum->tables_bad += x->tables_bad;
    sum->stall_seconds += x->stall_seconds;
    for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) {
        sum->nvme_read_hist[b] += x->nvme_read_hist[b];
        sum->stall_hist[b] += x->stall_hist[b];
    }
}

void engram_store_close(engram_store *s) {
    if (!s) return;
    engram_store__hot_close(s); /* its thread reads into the cache: first */
    engram_store__prefetch_stop(s);
    if (s->map) {
        engram_store__guard_remove(s);
        if (s->info.locked) munlock(s->map, s->map_len);
        munmap(s->map, s->map_len);
    }
    engram_store__nvme_free(s);
    if (s->fd >= 0) close(s->fd);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->io_mu);
    pthread_mutex_destroy(&s->pf_mu);
    pthread_cond_destroy(&s->ready);
    pthread_cond_destroy(&s->pf_cv);
    pthread_cond_destroy(&s->pf_idle);
    pthread_cond_destroy(&s->pf_done);
    free(s->path);
    free(s);
}
