/* Unit tests of the Engram store's steady-state parts: the TinyLFU frequency
 * sketch (never below the exact counts a plain array keeps, deterministic
 * under a seed, halving; lookups deferred and counted later leave it exactly
 * as counting each at once does), admission (a hot set survives a scan of
 * one-off rows under TinyLFU and not under admit-on-first-touch; the store's
 * staged, deferred gathers admit, reject, evict and hit exactly as a
 * one-lookup-at-a-time model of CLOCK and TinyLFU), and warm restarts
 * (the hot-row file round-trips: a reopened store serves the saved rows
 * from DRAM without one NVMe read, waiting or in the background; a file
 * written for another table, damaged, truncated or foreign is ignored and
 * counted; rows are bit-equal to the table's whatever the cache holds). */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engram/freq_sketch.h"
#include "engram/row_cache.h"
#include "engram/store.h"

static char dir[] = "/tmp/test_engram_hot.XXXXXX";
static char path[256], hot[300];

static void setup(void) {
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/t.tbl", dir);
    snprintf(hot, sizeof(hot), "%s.hot", path);
}

static void teardown(void) {
    unlink(path);
    unlink(hot);
    rmdir(dir);
    strcpy(dir, "/tmp/test_engram_hot.XXXXXX");
}

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t next32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* ---- the sketch ---- */

/* Against exact counts: the estimate is never below min(count, cap) until
 * the first halving, and mostly exact for a sketch much wider than the ids. */
START_TEST(test_sketch_bounds) {
    enum { IDS = 500, N = 3000 };
    freq_sketch f;
    ck_assert_int_eq(freq_sketch_init(&f, 4096, 7), 0); /* sample 40960: no halving within N */
    uint32_t exact[IDS] = {0};
    for (int i = 0; i < N; i++) {
        uint32_t id = next32() % 100 < 80 ? next32() % 20 : next32() % IDS; /* a hot head and a tail */
        freq_sketch_add(&f, id * 1000003ull);
        exact[id]++;
    }
    int equal = 0;
    for (int id = 0; id < IDS; id++) {
        uint32_t e = freq_sketch_estimate(&f, id * 1000003ull), want = exact[id] < 16 ? exact[id] : 16;
        ck_assert_msg(e >= want, "id %d: estimate %u below %u", id, e, want);
        equal += e == want;
    }
    ck_assert_int_ge(equal, IDS * 9 / 10);
    ck_assert_uint_eq(freq_sketch_estimate(&f, 999999999999ull), 0);
    freq_sketch_free(&f);
}
END_TEST

/* Every `sample` additions the counters halve and the doorkeeper clears. */
START_TEST(test_sketch_halving) {
    freq_sketch f;
    ck_assert_int_eq(freq_sketch_init(&f, 64, 1), 0); /* sample 640 */
    for (int i = 0; i < 13; i++) freq_sketch_add(&f, 42);
    ck_assert_uint_eq(freq_sketch_estimate(&f, 42), 13); /* 12 counted + the doorkeeper */
    for (int i = 13; i < 640; i++) freq_sketch_add(&f, 1000 + (uint64_t)i); /* one-offs up to the sample */
    ck_assert_uint_eq(freq_sketch_estimate(&f, 42), 6); /* 12 / 2, doorkeeper cleared */
    freq_sketch_seed(&f, 77, 9);
    ck_assert_uint_ge(freq_sketch_estimate(&f, 77), 9);
    freq_sketch_free(&f);
}
END_TEST

/* Same seed, same estimates; another seed hashes elsewhere (its collisions differ). */
START_TEST(test_sketch_seeded) {
    freq_sketch a, b, c;
    ck_assert_int_eq(freq_sketch_init(&a, 64, 5), 0);
    ck_assert_int_eq(freq_sketch_init(&b, 64, 5), 0);
    ck_assert_int_eq(freq_sketch_init(&c, 64, 6), 0);
    for (int i = 0; i < 600; i++) {
        uint64_t id = next32() % 2000;
        freq_sketch_add(&a, id), freq_sketch_add(&b, id), freq_sketch_add(&c, id);
    }
    int differ = 0;
    for (uint64_t id = 0; id < 2000; id++) {
        ck_assert_uint_eq(freq_sketch_estimate(&a, id), freq_sketch_estimate(&b, id));
        differ += freq_sketch_estimate(&a, id) != freq_sketch_estimate(&c, id);
    }
    ck_assert_int_gt(differ, 0);
    freq_sketch_free(&a), freq_sketch_free(&b), freq_sketch_free(&c);
}
END_TEST

/* Deferred lookups (freq_sketch_defer), counted in chunks of any size at
 * any time, with estimates and a seed in between (which count the rest
 * first), and past a full list: the counters, the doorkeeper and the
 * halving clock end bit for bit as those of a sketch that counted each
 * lookup at once, and every estimate on the way agrees. Through several
 * halvings (a sketch of 64: sample 640). */
START_TEST(test_sketch_deferred) {
    freq_sketch a, b;
    ck_assert_int_eq(freq_sketch_init(&a, 64, 11), 0);
    ck_assert_int_eq(freq_sketch_init(&b, 64, 11), 0);
    for (int i = 0; i < 20000; i++) {
        uint64_t id = next32() % 100 < 60 ? next32() % 30 : next32() % 5000;
        freq_sketch_add(&a, id);
        freq_sketch_defer(&b, id);
        uint32_t r = next32() % 1000;
        if (r < 20) freq_sketch_settle(&b, next32() % 300);
        else if (r < 25) ck_assert_uint_eq(freq_sketch_estimate(&b, id), freq_sketch_estimate(&a, id));
        else if (r < 26) freq_sketch_seed(&a, id + 7, 9), freq_sketch_seed(&b, id + 7, 9);
    }
    for (uint32_t i = 0; i < FREQ_SKETCH_OWED + 100; i++) { /* one past a full list: it counts them first */
        uint64_t id = next32() % 3000;
        freq_sketch_add(&a, id);
        freq_sketch_defer(&b, id);
    }
    ck_assert_uint_gt(freq_sketch_settle(&b, 0), 0);
    ck_assert_uint_eq(freq_sketch_settle(&b, UINT32_MAX), 0);
    ck_assert_uint_eq(a.added, b.added);
    ck_assert(!memcmp(a.cnt, b.cnt, 2 * a.width));
    ck_assert(!memcmp(a.door, b.door, a.width));
    for (uint64_t id = 0; id < 5000; id++) ck_assert_uint_eq(freq_sketch_estimate(&a, id), freq_sketch_estimate(&b, id));
    freq_sketch_free(&a), freq_sketch_free(&b);
}
END_TEST

/* ---- the store ---- */

enum { COLS = 64, NROWS = 4096, RB = COLS * 2 }; /* bf16 rows of 128 bytes: 32 a block */
static uint8_t *table;

static void write_table(uint32_t salt) {
    free(table);
    table = malloc((size_t)NROWS * RB);
    for (size_t i = 0; i < (size_t)NROWS * RB; i++) table[i] = (uint8_t)(next32() ^ salt);
    char err[512];
    ck_assert_int_eq(engram_store_write_dense(path, ENGRAM_STORE_BF16, NROWS, COLS, table, err, sizeof(err)), 0);
}

static engram_store *open_store(engram_store_warm warm, engram_store_admission adm, uint64_t slots) {
    engram_store_params p = engram_store_default_params();
    p.tier = ENGRAM_STORE_NVME;
    p.dram_budget = slots * (RB + 38); /* 38: SLOT_OVERHEAD: exactly `slots` slots for these sizes */
    p.queue_depth = 8;
    p.admission = adm;
    p.warm_start = warm;
    p.sketch_seed = 3;
    p.quiet = true;
    engram_store *s = NULL;
    char err[512];
    ck_assert_msg(engram_store_open(path, &p, &s, err, sizeof(err)) == 0, "%s", err);
    return s;
}

/* Gathers rows raw and checks them against the table, byte for byte. */
static void gather_check(engram_store *s, const int64_t *rows, size_t n) {
    uint8_t *got = malloc(n * RB);
    ck_assert_int_eq(engram_store_gather_raw(s, rows, n, got, NULL), 0);
    for (size_t i = 0; i < n; i++) ck_assert(!memcmp(got + i * RB, table + rows[i] * RB, RB));
    free(got);
}

static engram_store_stats stats(engram_store *s) {
    engram_store_stats st;
    engram_store_get_stats(s, &st);
    return st;
}

/* A hot set of 32 rows used 8 times each, then a scan of 2000 rows seen once
 * each, then the hot set again: TinyLFU keeps it (the scan's rows lose to
 * their victims), admit-on-first-touch flushes it. (A hot set near the
 * cache's size would share most sketch counters with the scan: a one-off
 * whose 4 counters all land on hot rows' looks hot.) */
START_TEST(test_admission_scan) {
    write_table(0);
    int64_t hotset[32], scan[100];
    for (int i = 0; i < 32; i++) hotset[i] = i * 128; /* even rows; the scan's are odd */
    uint64_t hits_after[2];
    for (int a = 0; a < 2; a++) {
        engram_store *s = open_store(ENGRAM_STORE_WARM_OFF, a ? ENGRAM_STORE_ADMIT_ALL : ENGRAM_STORE_ADMIT_TINYLFU, 128);
        for (int r = 0; r < 8; r++) gather_check(s, hotset, 32);
        for (int k = 0; k < 20; k++) {
            for (int i = 0; i < 100; i++) scan[i] = 1 + (k * 100 + i) * 2;
            gather_check(s, scan, 100);
        }
        engram_store_stats before = stats(s);
        gather_check(s, hotset, 32);
        hits_after[a] = stats(s).dram_hits - before.dram_hits;
        ck_assert_uint_eq(stats(s).lookups, 8 * 32 + 2000 + 32);
        if (!a) ck_assert_uint_gt(stats(s).rejections, 0);
        else ck_assert_uint_eq(stats(s).rejections, 0);
        engram_store_close(s);
    }
    /* TinyLFU: the hot set stays, but for the odd row a one-off evicted when its 4 counters all fell on
     * hot rows' (a sketch of 128 counters a row; the same under this seed every run) */
    ck_assert_uint_ge(hits_after[0], 28);
    ck_assert_uint_eq(hits_after[1], 0);  /* first touch: the scan pushed it out */
}
END_TEST

/* Under one seed the same lookups admit the same rows: two stores fed the
 * same trace save the same hot-row file's rows. */
START_TEST(test_admission_deterministic) {
    write_table(0);
    int64_t trace[4000];
    for (int i = 0; i < 4000; i++) trace[i] = next32() % 100 < 70 ? next32() % 200 : next32() % NROWS;
    int64_t held[2][100];
    for (int k = 0; k < 2; k++) {
        engram_store *s = open_store(ENGRAM_STORE_WARM_WAIT, ENGRAM_STORE_ADMIT_TINYLFU, 100);
        for (int i = 0; i < 4000; i += 50) gather_check(s, trace + i, 50);
        char err[512];
        ck_assert_int_eq(engram_store_hot_save(s, NULL, NULL, 0, err, sizeof(err)), 0);
        engram_store_close(s);
        FILE *f = fopen(hot, "rb");
        uint8_t head[64];
        ck_assert_int_eq(fread(head, 1, 64, f), 64);
        uint64_t n;
        memcpy(&n, head + 40, 8);
        ck_assert_uint_eq(n, 100);
        for (int i = 0; i < 100; i++) {
            uint8_t e[16];
            ck_assert_int_eq(fread(e, 1, 16, f), 16);
            memcpy(&held[k][i], e, 8);
        }
        fclose(f);
        unlink(hot);
    }
    ck_assert(!memcmp(held[0], held[1], sizeof(held[0])));
}
END_TEST

/* The semantics of a gather through the row cache, one lookup at a time,
 * written plainly (the reference for the store's staged lookups and
 * deferred counts): each row in order is found (a DRAM hit when an earlier
 * gather loaded it; either way its slot is pinned to the gather's end), or
 * takes CLOCK's victim, passing over the gather's pinned slots, unless
 * TinyLFU counts the victim at least as often (then it is read uncached);
 * then the row counts in the sketch. */
typedef struct {
    row_cache c;
    freq_sketch f;
    bool tinylfu;
    uint8_t pinned[128], ready[128];
    uint64_t hits, admitted, rejected, evicted;
} cache_model;

static bool model_busy(const void *ctx, uint32_t k) { return ((const cache_model *)ctx)->pinned[k]; }

static void model_gather(cache_model *m, const int64_t *rows, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int32_t k = row_cache_find(&m->c, rows[i]);
        if (k >= 0) {
            if (m->ready[k]) row_cache_hit(&m->c, k), m->hits++;
            m->pinned[k] = 1;
        } else if ((k = row_cache_victim(&m->c, model_busy, m)) >= 0) {
            int64_t v = m->c.slot[k].row;
            if (m->tinylfu && v >= 0 &&
                freq_sketch_estimate(&m->f, (uint64_t)rows[i]) <= freq_sketch_estimate(&m->f, (uint64_t)v)) {
                m->rejected++;
            } else {
                m->evicted += row_cache_put(&m->c, k, rows[i]) >= 0;
                m->admitted++;
                m->pinned[k] = 1, m->ready[k] = 0;
            }
        }
        freq_sketch_add(&m->f, (uint64_t)rows[i]);
    }
    for (int k = 0; k < 128; k++)
        if (m->pinned[k]) m->pinned[k] = 0, m->ready[k] = 1;
}

/* The store against that model, under both admission policies: gathers of
 * 1 to 300 rows (shorter and longer than the lookup loop's prefetch
 * distances) of a skewed trace through a cache of 128 slots agree after
 * every gather on hits, admissions, rejections and evictions, and at the
 * end on the rows cached; the rows are the table's. */
START_TEST(test_gather_model) {
    write_table(0);
    int64_t rows[300];
    for (int a = 0; a < 2; a++) {
        engram_store *s = open_store(ENGRAM_STORE_WARM_OFF, a ? ENGRAM_STORE_ADMIT_ALL : ENGRAM_STORE_ADMIT_TINYLFU, 128);
        ck_assert_uint_eq(stats(s).cache_capacity, 128);
        cache_model m = {.tinylfu = !a};
        ck_assert_int_eq(row_cache_init(&m.c, 128), 0);
        ck_assert_int_eq(freq_sketch_init(&m.f, 128, 3), 0); /* open_store's seed */
        for (int g = 0; g < 300; g++) {
            size_t n = 1 + next32() % 300;
            for (size_t i = 0; i < n; i++) rows[i] = next32() % 100 < 70 ? next32() % 300 : next32() % NROWS;
            gather_check(s, rows, n);
            model_gather(&m, rows, n);
            engram_store_stats st = stats(s);
            ck_assert_uint_eq(st.dram_hits, m.hits);
            ck_assert_uint_eq(st.admissions, m.admitted);
            ck_assert_uint_eq(st.rejections, m.rejected);
            ck_assert_uint_eq(st.evictions, m.evicted);
        }
        ck_assert_uint_gt(m.hits, 1000);
        ck_assert_uint_gt(a ? m.evicted : m.rejected, 1000);
        int64_t held[128];
        size_t nh = 0;
        for (int k = 0; k < 128; k++)
            if (m.c.slot[k].row >= 0) held[nh++] = m.c.slot[k].row;
        ck_assert_uint_eq(stats(s).cache_rows, nh);
        ck_assert_uint_eq(engram_store_count_cached(s, held, nh), nh);
        row_cache_free(&m.c);
        freq_sketch_free(&m.f);
        engram_store_close(s);
    }
}
END_TEST

/* Saved, reopened (waiting, then in the background): the rows come back
 * into DRAM, and gathering them reads nothing from NVMe. Rows of the tier
 * above are listed for its owner, most counted first. */
START_TEST(test_hot_round_trip) {
    write_table(0);
    int64_t rows[300];
    for (int i = 0; i < 300; i++) rows[i] = (int64_t)(next32() % 3000);
    engram_store *s = open_store(ENGRAM_STORE_WARM_WAIT, ENGRAM_STORE_ADMIT_ALL, 1000);
    ck_assert_uint_eq(engram_store_get_info(s).cache_rows, 1000);
    ck_assert_str_eq(engram_store_hot_path(s), hot);
    ck_assert_uint_eq(stats(s).warm_target, 0); /* no file yet */
    gather_check(s, rows, 300);
    uint64_t cached = stats(s).cache_rows;
    ck_assert_uint_gt(cached, 200);
    int64_t upper[3] = {4000, 3017, 3900}; /* none of rows[] */
    uint32_t counts[3] = {1, 50, 7};
    char err[512];
    ck_assert_int_eq(engram_store_hot_save(s, upper, counts, 3, err, sizeof(err)), 0);
    engram_store_close(s);
    for (int mode = 0; mode < 2; mode++) {
        s = open_store(mode ? ENGRAM_STORE_WARM_BACKGROUND : ENGRAM_STORE_WARM_WAIT, ENGRAM_STORE_ADMIT_TINYLFU, 1000);
        while (engram_store_warming(s)) usleep(1000);
        engram_store_stats st = stats(s);
        ck_assert_uint_eq(st.warm_target, cached + 3); /* the upper rows are read into DRAM too */
        ck_assert_uint_eq(st.warm_rows, cached + 3);
        ck_assert_uint_eq(st.cache_rows, cached + 3);
        ck_assert_uint_eq(st.warm_ignored, 0);
        ck_assert_uint_lt(st.nvme_reads, cached / 8); /* long sequential runs, not a read per row */
        const int64_t *up;
        ck_assert_uint_eq(engram_store_hot_upper(s, &up), 3);
        ck_assert_int_eq(up[0], 3017);
        ck_assert_int_eq(up[1], 3900);
        ck_assert_int_eq(up[2], 4000);
        uint64_t reads = st.nvme_reads;
        gather_check(s, rows, 300);
        gather_check(s, up, 3);
        st = stats(s);
        ck_assert_uint_eq(st.nvme_reads, reads); /* every row from DRAM */
        ck_assert_uint_eq(st.dram_hits, 303);
        engram_store_close(s);
    }
}
END_TEST

static void flip_byte(long at) {
    FILE *f = fopen(hot, "r+b");
    fseek(f, at, at < 0 ? SEEK_END : SEEK_SET);
    int c = fgetc(f);
    fseek(f, at, at < 0 ? SEEK_END : SEEK_SET);
    fputc(c ^ 0x40, f);
    fclose(f);
}

/* A file for another table (rewritten with other rows, same shape), damaged
 * (a byte of an entry, of the checksum), truncated, or not a hot-row file
 * is ignored and counted; the store starts cold and reads right. */
START_TEST(test_hot_ignored) {
    for (int c = 0; c < 5; c++) {
        write_table(0);
        engram_store *s = open_store(ENGRAM_STORE_WARM_WAIT, ENGRAM_STORE_ADMIT_ALL, 500);
        int64_t rows[200];
        for (int i = 0; i < 200; i++) rows[i] = (int64_t)(next32() % NROWS);
        gather_check(s, rows, 200);
        char err[512];
        ck_assert_int_eq(engram_store_hot_save(s, NULL, NULL, 0, err, sizeof(err)), 0);
        engram_store_close(s);
        if (c == 0) write_table(0x5a); /* stale: the same shape, other data */
        if (c == 1) flip_byte(64 + 16 * 3);
        if (c == 2) flip_byte(-2);
        if (c == 3) ck_assert_int_eq(truncate(hot, 64 + 16 * 5), 0);
        if (c == 4) {
            FILE *f = fopen(hot, "wb");
            fputs("{\"rows\": [1, 2, 3]}\n", f);
            fclose(f);
        }
        s = open_store(ENGRAM_STORE_WARM_WAIT, ENGRAM_STORE_ADMIT_ALL, 500);
        engram_store_stats st = stats(s);
        ck_assert_msg(st.warm_ignored == 1 && st.warm_rows == 0 && st.cache_rows == 0, "case %d", c);
        gather_check(s, rows, 200);
        engram_store_close(s);
        unlink(hot);
    }
    /* warm start off: no file read, none written */
    write_table(0);
    engram_store *s = open_store(ENGRAM_STORE_WARM_OFF, ENGRAM_STORE_ADMIT_ALL, 500);
    ck_assert_ptr_null(engram_store_hot_path(s));
    char err[512];
    ck_assert_int_eq(engram_store_hot_save(s, NULL, NULL, 0, err, sizeof(err)), ENGRAM_STORE_EINVAL);
    engram_store_close(s);
    ck_assert_int_ne(access(hot, F_OK), 0);
}
END_TEST


/* DeepSeek-V4.1's 264-byte FP8 rows at the dense stride, 2 MiB of them (so
 * the warm start's 1 MiB runs end somewhere inside): a profile of every row
 * that straddles two 4 KiB blocks, the last row and a few others, written
 * as a hot-row file and read back (waiting, then in the background), gives
 * those rows bit for bit from DRAM without one NVMe read. */
START_TEST(test_hot_v41_dense) {
    enum { V_COLS = 256, V_RB = 264, V_ROWS = 8177 }; /* row 8176, the last, straddles */
    free(table);
    table = malloc((size_t)V_ROWS * V_RB);
    for (size_t i = 0; i < (size_t)V_ROWS * V_RB; i++) table[i] = (uint8_t)next32();
    char err[512];
    ck_assert_int_eq(engram_store_write_dense(path, ENGRAM_STORE_FP8_UE8M0, V_ROWS, V_COLS, table, err, sizeof(err)), 0);
    int64_t rows[1024];
    uint32_t counts[1024];
    size_t n = 0;
    for (int64_t r = 0; r < V_ROWS; r++)
        if ((uint64_t)r * V_RB % 4096 + V_RB > 4096) rows[n++] = r;
    ck_assert_int_eq(rows[n - 1], V_ROWS - 1);
    for (int i = 0; i < 200; i++) rows[n++] = (int64_t)(next32() % V_ROWS); /* repeats are fine: counted once */
    for (size_t i = 0; i < n; i++) counts[i] = 1 + i % 7;
    engram_store_params p = engram_store_default_params();
    p.tier = ENGRAM_STORE_NVME;
    p.dram_budget = 1024 * (V_RB + 38);
    p.queue_depth = 8;
    p.warm_start = ENGRAM_STORE_WARM_WAIT;
    p.quiet = true;
    engram_store *s = NULL;
    ck_assert_msg(engram_store_open(path, &p, &s, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(engram_store_hot_write(s, rows, counts, n, err, sizeof(err)), 0);
    engram_store_close(s);
    uint8_t *got = malloc(n * V_RB);
    for (int mode = 0; mode < 2; mode++) {
        p.warm_start = mode ? ENGRAM_STORE_WARM_BACKGROUND : ENGRAM_STORE_WARM_WAIT;
        ck_assert_msg(engram_store_open(path, &p, &s, err, sizeof(err)) == 0, "%s", err);
        while (engram_store_warming(s)) usleep(1000);
        engram_store_stats st = stats(s);
        ck_assert_uint_gt(st.warm_rows, 500);
        ck_assert_uint_eq(st.warm_rows, st.warm_target);
        ck_assert_uint_gt(st.nvme_reads, 1); /* more than one 1 MiB run */
        uint64_t reads = st.nvme_reads;
        memset(got, 0xA5, n * V_RB);
        ck_assert_int_eq(engram_store_gather_raw(s, rows, n, got, NULL), 0);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(!memcmp(got + i * V_RB, table + rows[i] * V_RB, V_RB), "mode %d row %lld", mode,
                          (long long)rows[i]);
        st = stats(s);
        ck_assert_uint_eq(st.nvme_reads, reads); /* every row from DRAM */
        ck_assert_uint_eq(st.dram_hits, n);
        engram_store_close(s);
    }
    free(got);
}
END_TEST

static Suite *hot_suite(void) {
    Suite *s = suite_create("engram_hot");
    TCase *tc = tcase_create("sketch");
    tcase_add_test(tc, test_sketch_bounds);
    tcase_add_test(tc, test_sketch_halving);
    tcase_add_test(tc, test_sketch_seeded);
    tcase_add_test(tc, test_sketch_deferred);
    suite_add_tcase(s, tc);
    tc = tcase_create("store");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_admission_scan);
    tcase_add_test(tc, test_admission_deterministic);
    tcase_add_test(tc, test_gather_model);
    tcase_add_test(tc, test_hot_round_trip);
    tcase_add_test(tc, test_hot_ignored);
    tcase_add_test(tc, test_hot_v41_dense);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(hot_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free(table);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
