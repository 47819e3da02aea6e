/* Warm restarts of the Engram store (see "warm restarts" in store.h): the
 * hot-row file beside the table, written atomically by whoever owns the
 * store (periodically and at shutdown), read back at open into the NVMe
 * tier's row cache with long sequential reads, on the opening thread or on
 * a warm thread that yields to gathers like the prefetch thread does. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/err.h"
#include "base/util.h"
#include "engram/store_internal.h"

#define WARM_QD 8                 /* long reads in flight */
#define WARM_RUN (1u << 20)       /* bytes per read at most */
#define WARM_GAP (64u << 10)      /* unwanted bytes a read may take in between wanted rows: cheaper than a new read */
#define WARM_BATCH 8192u          /* rows claimed per round (the gathers may run between rounds) */
#define HOT_MAX_BYTES (64ull << 30) /* a hot-row file larger than this is not one of ours */

typedef struct {
    int64_t row;
    uint32_t count, tier;
} hot_entry;

const char *engram_store_hot_path(const engram_store *s) { return s->hot_path; }

bool engram_store_warming(const engram_store *s) { return s && atomic_load(&s->warm_busy); }

size_t engram_store_hot_upper(const engram_store *s, const int64_t **rows) {
    *rows = s->hot_upper;
    return s->hot_n_upper;
}

void engram_store__wait_no_gather(engram_store *s) {
    pthread_mutex_lock(&s->pf_mu);
    while (atomic_load(&s->gathering) && !atomic_load(&s->warm_stop) && !s->pf_stop)
        pthread_cond_wait(&s->pf_idle, &s->pf_mu);
    pthread_mutex_unlock(&s->pf_mu);
}

static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static uint64_t get64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t get32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The table's identity: FNV-1a 64 of its header block and of its first and
 * last data blocks (a rewritten table of the same shape differs there in
 * all but freak cases), read buffered. Returns 0, or -1 when unreadable. */
static int table_identity(engram_store *s) {
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        if (fd >= 0) close(fd);
        return -1;
    }
    uint64_t size = (uint64_t)st.st_size, h = UTIL_FNV1A_INIT;
    uint64_t at[3] = {0, s->info.header.data_offset, size > ENGRAM_STORE_BLOCK ? size - ENGRAM_STORE_BLOCK : 0};
    uint8_t buf[ENGRAM_STORE_BLOCK];
    for (int i = 0; i < 3; i++) {
        ssize_t got = pread(fd, buf, sizeof(buf), (off_t)at[i]);
        if (got < 0) {
            close(fd);
            return -1;
        }
        h = util_fnv1a(h, buf, (size_t)got);
    }
    close(fd);
    s->table_size = size;
    s->table_id = h;
    return 0;
}

/* Hot rows first: the tier above, then by count, then by row (a fixed order). */
static int cmp_priority(const void *a, const void *b) {
    const hot_entry *x = a, *y = b;
    if (x->tier != y->tier) return x->tier > y->tier ? -1 : 1;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

static int cmp_row(const void *a, const void *b) {
    const int64_t *x = a, *y = b;
    return (*x > *y) - (*x < *y);
}

/* Reads and checks the hot-row file into *out (n entries, malloc'd).
 * Returns 1 with the entries, 0 with a reason in why (no file: why empty),
 * -1 out of memory. */
static int hot_read(engram_store *s, hot_entry **out, size_t *n, char *why, size_t whylen) {
    *out = NULL;
    *n = 0;
    why[0] = 0;
    struct stat st;
    if (stat(s->hot_path, &st)) {
        if (errno != ENOENT) snprintf(why, whylen, "cannot stat: %s", strerror(errno));
        return 0;
    }
    if ((uint64_t)st.st_size > HOT_MAX_BYTES) {
        snprintf(why, whylen, "%lld bytes: too large", (long long)st.st_size);
        return 0;
    }
    size_t len;
    char rerr[256];
    uint8_t *b = (uint8_t *)util_read_file(s->hot_path, (size_t)HOT_MAX_BYTES, &len, rerr, sizeof(rerr));
    if (!b) {
        snprintf(why, whylen, "%s", rerr);
        return 0;
    }
    int rc = 0;
    uint64_t cnt = len >= ENGRAM_STORE_HOT_HEAD ? get64(b + 40) : 0;
    if (len < ENGRAM_STORE_HOT_HEAD + 8 || memcmp(b, ENGRAM_STORE_HOT_MAGIC, 8))
        snprintf(why, whylen, "not a hot-row file (magic)");
    else if (get32(b + 8) != ENGRAM_STORE_HOT_VERSION)
        snprintf(why, whylen, "version %u, expected %u", get32(b + 8), ENGRAM_STORE_HOT_VERSION);
    else if (cnt > (len - ENGRAM_STORE_HOT_HEAD - 8) / ENGRAM_STORE_HOT_ENTRY ||
             ENGRAM_STORE_HOT_HEAD + cnt * ENGRAM_STORE_HOT_ENTRY + 8 != len)
        snprintf(why, whylen, "%zu bytes do not hold the %llu entries it says", len, (unsigned long long)cnt);
    else if (util_fnv1a(UTIL_FNV1A_INIT, b, len - 8) != get64(b + len - 8))
        snprintf(why, whylen, "checksum mismatch: damaged");
    else if (get64(b + 16) != s->table_size || get64(b + 24) != s->table_id ||
             get64(b + 32) != s->info.header.rows)
        snprintf(why, whylen, "written for another table (size, header or data differ): stale");
    else
        rc = 1;
    hot_entry *e = rc == 1 ? malloc((cnt ? cnt : 1) * sizeof(hot_entry)) : NULL;
    if (rc == 1 && !e) rc = -1;
    for (uint64_t i = 0; rc == 1 && i < cnt; i++) {
        const uint8_t *p = b + ENGRAM_STORE_HOT_HEAD + i * ENGRAM_STORE_HOT_ENTRY;
        e[i] = (hot_entry){(int64_t)get64(p), get32(p + 8), get32(p + 12)};
        if (e[i].row < 0 || (uint64_t)e[i].row >= s->info.header.rows || e[i].tier > 1) {
            snprintf(why, whylen, "entry %llu (row %lld, tier %u) out of range", (unsigned long long)i,
                     (long long)e[i].row, e[i].tier);
            rc = 0;
        }
    }
    free(b);
    if (rc != 1) {
        free(e);
        return rc;
    }
    *out = e;
    *n = cnt;
    return 1;
}

/* Reads hot_rows (offset order) into the row cache, a batch at a time,
 * with long runs; in the background it yields to gathers between batches. */
static void warm_run(engram_store *s, bool background) {
    const engram_store_header *h = &s->info.header;
    double t0 = util_now();
    reader rd = {0};
    row_req *q = malloc(WARM_BATCH * sizeof(row_req));
    int64_t *ids = malloc(WARM_BATCH * sizeof(int64_t));
    size_t run = WARM_RUN > s->run_bytes ? WARM_RUN : s->run_bytes; /* a row of over 1 MiB is one run */
    if (!q || !ids || engram_store__reader_init(s, &rd, WARM_QD, run, WARM_GAP)) {
        engram_store__note(s, "warm start: out of memory; the cache starts cold");
        goto done;
    }
    for (size_t a = 0; a < s->hot_n && !atomic_load(&s->warm_stop); a += WARM_BATCH) {
        if (background) engram_store__wait_no_gather(s);
        size_t m = s->hot_n - a < WARM_BATCH ? s->hot_n - a : WARM_BATCH, nq = 0;
        memcpy(ids, s->hot_rows + a, m * sizeof(int64_t));
        pthread_mutex_lock(&s->mu);
        size_t mm = engram_store__drop_above(s, ids, m); /* the tier above took those already */
        for (size_t i = 0; i < mm; i++) {
            int64_t row = ids[i];
            int32_t k = row_cache_find(&s->c.clock, row);
            if (k < 0 && (k = engram_store__alloc_slot(s, row, false)) >= 0)
                q[nq++] = (row_req){h->data_offset + (uint64_t)row * h->row_stride, NO_IDX, k};
        }
        pthread_mutex_unlock(&s->mu);
        int rc = nq ? engram_store__read_reqs(s, &rd, q, nq, (row_out){0}) : ENGRAM_STORE_OK;
        if (rc) {
            engram_store__fail_unfinished(s, q, nq);
            engram_store__note(s, "warm start: read failed; the rest of the cache starts cold");
            break;
        }
        counter_add(&s->warm_rows, m);
    }
done:
    engram_store__reader_free(&rd);
    free(q);
    free(ids);
    counter_add(&s->warm_ns, (uint64_t)((util_now() - t0) * 1e9));
    engram_store__note(s, "warm start: %llu of %zu hot rows read back in %.2f s",
                       (unsigned long long)counter_get(&s->warm_rows), s->hot_n, util_now() - t0);
    atomic_store(&s->warm_busy, false);
}

static void *warm_main(void *arg) {
    warm_run(arg, true);
    return NULL;
}

/* From the file's entries: the tier above's rows (most counted first), and
 * the rows the cache takes back: the most wanted ones up to its size, in
 * offset order, their counts seeded into the sketch. */
static int hot_plan(engram_store *s, hot_entry *e, size_t n) {
    qsort(e, n, sizeof(hot_entry), cmp_priority);
    size_t nu = 0;
    while (nu < n && e[nu].tier == 1) nu++;
    s->hot_upper = malloc((nu ? nu : 1) * sizeof(int64_t));
    if (!s->hot_upper) return -1;
    for (size_t i = 0; i < nu; i++) s->hot_upper[i] = e[i].row;
    s->hot_n_upper = nu;
    size_t m = n < s->c.clock.n ? n : s->c.clock.n; /* the tier above's rows too: its owner warms from DRAM */
    s->hot_rows = malloc((m ? m : 1) * sizeof(int64_t));
    if (!s->hot_rows) return -1;
    for (size_t i = 0; i < m; i++) {
        s->hot_rows[i] = e[i].row;
        freq_sketch_seed(&s->c.sketch, (uint64_t)e[i].row, e[i].count);
    }
    qsort(s->hot_rows, m, sizeof(int64_t), cmp_row);
    size_t u = 0;
    for (size_t i = 0; i < m; i++)
        if (!u || s->hot_rows[u - 1] != s->hot_rows[i]) s->hot_rows[u++] = s->hot_rows[i];
    s->hot_n = u;
    return 0;
}

int engram_store__hot_open(engram_store *s, char *err, size_t errlen) {
    if (s->p.warm_start == ENGRAM_STORE_WARM_OFF) return ENGRAM_STORE_OK;
    size_t pl = strlen(s->path);
    if (!(s->hot_path = malloc(pl + 5))) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    memcpy(s->hot_path, s->path, pl);
    memcpy(s->hot_path + pl, ".hot", 5);
    if (table_identity(s)) {
        engram_store__note(s, "warm start: cannot read the table's identity (%s); no hot-row file",
                           strerror(errno));
        free(s->hot_path);
        s->hot_path = NULL;
        return ENGRAM_STORE_OK;
    }
    hot_entry *e;
    size_t n;
    char why[300];
    int rc = hot_read(s, &e, &n, why, sizeof(why));
    if (rc < 0) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    if (rc == 0) {
        if (why[0]) {
            engram_store__note(s, "hot-row file %s ignored: %s", s->hot_path, why);
            counter_add(&s->warm_ignored, 1);
        }
        return ENGRAM_STORE_OK;
    }
    rc = hot_plan(s, e, n);
    free(e);
    if (rc) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    counter_add(&s->warm_target, s->hot_n);
    if (!s->hot_n) return ENGRAM_STORE_OK;
    atomic_store(&s->warm_busy, true);
    if (s->p.warm_start == ENGRAM_STORE_WARM_WAIT) {
        warm_run(s, false);
        return ENGRAM_STORE_OK;
    }
    int te = pthread_create(&s->warm_thread, NULL, warm_main, s);
    if (te) {
        engram_store__note(s, "warm start: no thread (%s); reading the hot rows now", strerror(te));
        warm_run(s, false);
    } else {
        s->warm_started = true;
    }
    return ENGRAM_STORE_OK;
}

void engram_store__hot_close(engram_store *s) {
    if (s->warm_started) {
        atomic_store(&s->warm_stop, true);
        pthread_mutex_lock(&s->pf_mu);
        pthread_cond_broadcast(&s->pf_idle);
        pthread_mutex_unlock(&s->pf_mu);
        pthread_join(s->warm_thread, NULL);
        s->warm_started = false;
    }
    free(s->hot_rows);
    free(s->hot_upper);
    free(s->hot_path);
    s->hot_rows = s->hot_upper = NULL;
    s->hot_path = NULL;
}

/* ---- saving ---- */

static int write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t k = write(fd, b, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* fsync of the directory holding path: the rename itself survives a crash. */
static void sync_dir(const char *path) {
    char *d = strdup(path);
    if (!d) return;
    int fd = open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(d);
}

/* Writes the hot-row file atomically from n entries of ENGRAM_STORE_HOT_ENTRY
 * bytes that the caller put at b + ENGRAM_STORE_HOT_HEAD (b: room for the
 * head and the checksum after them too): the head, the checksum, then
 * path.tmp.PID, fsync, rename, fsync of the directory. Frees b. */
static int hot_write(engram_store *s, uint8_t *b, size_t n, char *err, size_t errlen) {
    memset(b, 0, ENGRAM_STORE_HOT_HEAD);
    memcpy(b, ENGRAM_STORE_HOT_MAGIC, 8);
    put32(b + 8, ENGRAM_STORE_HOT_VERSION);
    put64(b + 16, s->table_size);
    put64(b + 24, s->table_id);
    put64(b + 32, s->info.header.rows);
    put64(b + 40, n);
    put64(b + 48, (uint64_t)time(NULL));
    size_t len = ENGRAM_STORE_HOT_HEAD + n * ENGRAM_STORE_HOT_ENTRY;
    put64(b + len, util_fnv1a(UTIL_FNV1A_INIT, b, len));
    len += 8;

    /* the temp file's name is this process's: servers sharing the tables may save at once (the last rename wins) */
    size_t tl = strlen(s->hot_path) + 32;
    char *tmp = malloc(tl);
    int rc = ENGRAM_STORE_ENOMEM, fd = -1;
    if (!tmp) goto out;
    snprintf(tmp, tl, "%s.tmp.%ld", s->hot_path, (long)getpid());
    rc = ENGRAM_STORE_EIO;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, b, len) || fsync(fd)) {
        err_set(err, errlen, rc, "%s: cannot write: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(tmp, s->hot_path)) {
        err_set(err, errlen, rc, "%s: cannot rename to %s: %s", tmp, s->hot_path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    sync_dir(s->hot_path);
    rc = ENGRAM_STORE_OK;
out:
    free(tmp);
    free(b);
    if (rc == ENGRAM_STORE_ENOMEM) err_set(err, errlen, rc, "%s: out of memory", s->hot_path);
    return rc;
}

/* One entry at p. */
static void put_entry(uint8_t *p, int64_t row, uint32_t count, uint32_t tier) {
    put64(p, (uint64_t)row);
    put32(p + 8, count);
    put32(p + 12, tier);
}

int engram_store_hot_save(engram_store *s, const int64_t *upper, const uint32_t *upper_counts, size_t n_upper,
                          char *err, size_t errlen) {
    if (!s || !s->hot_path || (n_upper && !upper))
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "engram_store_hot_save: no hot-row file for this store");
    /* the cache's READY rows with their counts, under the lock; then the tier above's */
    size_t cap = (size_t)s->c.clock.n + n_upper, n = 0;
    uint8_t *b = malloc(ENGRAM_STORE_HOT_HEAD + cap * ENGRAM_STORE_HOT_ENTRY + 8);
    if (!b) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "%s: out of memory", s->hot_path);
    uint8_t *p = b + ENGRAM_STORE_HOT_HEAD;
    for (uint32_t k0 = 0; k0 < s->c.clock.n; k0 += 65536) { /* the lock in pieces: gathers go on between */
        pthread_mutex_lock(&s->mu);
        for (uint32_t k = k0; k < s->c.clock.n && k - k0 < 65536; k++) {
            int64_t row = s->c.clock.slot[k].row;
            if (row < 0 || s->c.clock.slot[k].state != SLOT_READY) continue;
            put_entry(p, row, freq_sketch_estimate(&s->c.sketch, (uint64_t)row), 0);
            p += ENGRAM_STORE_HOT_ENTRY, n++;
        }
        pthread_mutex_unlock(&s->mu);
    }
    for (size_t i = 0; i < n_upper; i++) {
        put_entry(p, upper[i], upper_counts ? upper_counts[i] : 1, 1);
        p += ENGRAM_STORE_HOT_ENTRY, n++;
    }
    return hot_write(s, b, n, err, errlen);
}

int engram_store_hot_write(engram_store *s, const int64_t *rows, const uint32_t *counts, size_t n, char *err,
                           size_t errlen) {
    if (!s || !s->hot_path || (n && (!rows || !counts)))
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "engram_store_hot_write: no hot-row file for this store");
    for (size_t i = 0; i < n; i++)
        if (rows[i] < 0 || (uint64_t)rows[i] >= s->info.header.rows)
            return err_set(err, errlen, ENGRAM_STORE_ERANGE, "%s: row %lld outside the table's %llu rows",
                           s->hot_path, (long long)rows[i], (unsigned long long)s->info.header.rows);
    uint8_t *b = n <= (SIZE_MAX - ENGRAM_STORE_HOT_HEAD - 8) / ENGRAM_STORE_HOT_ENTRY
                     ? malloc(ENGRAM_STORE_HOT_HEAD + n * ENGRAM_STORE_HOT_ENTRY + 8)
                     : NULL;
    if (!b) return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "%s: out of memory", s->hot_path);
    for (size_t i = 0; i < n; i++) put_entry(b + ENGRAM_STORE_HOT_HEAD + i * ENGRAM_STORE_HOT_ENTRY, rows[i], counts[i], 0);
    return hot_write(s, b, n, err, errlen);
}
