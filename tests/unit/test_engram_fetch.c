/* engine/engram_fetch on the CPU backend: steps of random row ids (a hot set
 * and a long tail, repeats inside a step) through the dedupe, the hot-row
 * cache (none, smaller than a step's distinct rows, larger than the table)
 * and the staging copy come out bit-equal to engram_store_gather (from a
 * second store mapping the same file whole), which test_engram_store checks
 * against the reference conversions; for every stored dtype, from the DRAM
 * tier and from NVMe under a tiny DRAM budget, with inclusive and exclusive
 * tiers. The counters add up (lookups, distinct rows, hits, copied rows),
 * a bad row id is refused without disturbing the next step; every other
 * step's rows are made on the fetch thread (engram_fetch_start_fill), the
 * engine's hashing's way, bad ones included; with exclusive
 * tiers no row is ever in both caches after a step, and evicted rows go
 * down to the store's cache (copied back, demoted). */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/backend/backend.h"
#include "engine/engram_fetch.h"
#include "engram/store.h"

static char dir[] = "/tmp/test_engram_fetch.XXXXXX";

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

enum { ROWS = 3000, COLS = 64, MAX_ROWS = 256, STEPS = 60 };

/* A table of dtype dt written to dir. */
static void write_table(int dt, char *path, size_t plen) {
    uint32_t rb = engram_store_row_bytes(dt, COLS);
    uint8_t *data = malloc((size_t)ROWS * rb);
    for (size_t i = 0; i < (size_t)ROWS * rb; i++) data[i] = (uint8_t)next32();
    snprintf(path, plen, "%s/t%d.tbl", dir, dt);
    char err[512];
    ck_assert_int_eq(engram_store_write_dense(path, dt, ROWS, COLS, data, err, sizeof(err)), ENGRAM_STORE_OK);
    free(data);
}

/* The table at path opened on tier (NVMe: a budget of about 50 rows, so the
 * store's own cache evicts all the time) with the tiers policy. */
static engram_store *open_table(int dt, const char *path, engram_store_tier tier, engram_store_tiers tiers) {
    uint32_t rb = engram_store_row_bytes(dt, COLS);
    char err[512];
    engram_store_params p = engram_store_default_params();
    p.tier = tier;
    p.tiers = tiers;
    p.dram_budget = tier == ENGRAM_STORE_NVME ? 50u * (rb + 64) : 0;
    p.quiet = true;
    engram_store *s = NULL;
    ck_assert_int_eq(engram_store_open(path, &p, &s, err, sizeof(err)), ENGRAM_STORE_OK);
    return s;
}

/* A step: half the lookups from 40 hot rows, half uniform, so that steps
 * repeat rows within and across themselves. */
static int make_step(int64_t *rows) {
    int n = 1 + (int)(next32() % MAX_ROWS);
    for (int i = 0; i < n; i++) rows[i] = next32() % 2 ? (int64_t)(next32() % 40) * 7 : (int64_t)(next32() % ROWS);
    return n;
}

/* engram_fetch_fill_fn: the step's rows, written on the fetch thread (as the
 * engine's hashing makes them there) from a copy the test keeps. */
typedef struct {
    const int64_t *src;
    int n;
} fill_ctx;
static void fill_copy(void *ctx, int64_t *rows) {
    const fill_ctx *c = ctx;
    memcpy(rows, c->src, (size_t)c->n * sizeof(int64_t));
}

/* A step's rows through the fetcher, every other step made on its thread
 * (engram_fetch_start_fill into a buffer of garbage): the rows there after
 * finish must be the step's. Returns finish's status. */
static int fetch_step(engram_fetch *f, int step, const int64_t *rows, int n, float *out) {
    if (step % 2 == 0) return engram_fetch_rows(f, rows, n, out);
    int64_t made[MAX_ROWS];
    memset(made, 0xA5, sizeof(made));
    fill_ctx c = {rows, n};
    engram_fetch_start_fill(f, made, n, fill_copy, &c);
    int rc = engram_fetch_finish(f, out);
    ck_assert(memcmp(made, rows, (size_t)n * sizeof(int64_t)) == 0);
    return rc;
}

/* s's fetcher against ref (the same table, mapped whole). */
static void check_fetch(engram_store *s, engram_store *ref_store, uint64_t cache_rows) {
    backend *be = backend_cpu_create();
    engram_store_info in = engram_store_get_info(s);
    char err[512];
    engram_fetch *f = engram_fetch_create(be, s, 0, MAX_ROWS, cache_rows * in.header.row_bytes, err, sizeof(err));
    ck_assert_msg(f != NULL, "%s", err);
    float *out = backend_alloc(be, (size_t)MAX_ROWS * COLS * sizeof(float)), *ref = malloc((size_t)MAX_ROWS * COLS * sizeof(float));
    int64_t rows[MAX_ROWS];
    uint64_t lookups = 0;
    for (int step = 0; step < STEPS; step++) {
        int n = make_step(rows);
        lookups += (uint64_t)n;
        ck_assert_int_eq(fetch_step(f, step, rows, n, out), 0);
        ck_assert_int_eq(engram_store_gather(ref_store, rows, (size_t)n, ref, NULL), ENGRAM_STORE_OK);
        ck_assert_msg(memcmp(out, ref, (size_t)n * COLS * sizeof(float)) == 0,
                      "dtype %s, cache %llu rows, %s tiers, step %d: rows differ",
                      engram_store_dtype_name((int)in.header.dtype), (unsigned long long)cache_rows,
                      in.tiers == ENGRAM_STORE_EXCLUSIVE ? "exclusive" : "inclusive", step);
        if (in.tiers == ENGRAM_STORE_EXCLUSIVE)
            ck_assert_msg(engram_fetch_tier_overlap(f) == 0, "cache %llu rows, step %d: %zu rows in both tiers",
                          (unsigned long long)cache_rows, step, engram_fetch_tier_overlap(f));
        if (step == STEPS / 2 || step == STEPS / 2 + 1) { /* a bad id, given or made: refused, nothing issued */
            int64_t bad[2] = {1, ROWS};
            ck_assert_int_eq(fetch_step(f, step, bad, 2, out), ENGRAM_STORE_ERANGE);
        }
    }
    engram_fetch_stats st;
    engram_fetch_get_stats(f, &st);
    ck_assert_uint_eq(st.steps, STEPS);
    ck_assert_uint_eq(st.lookups, lookups);
    if (cache_rows) ck_assert(st.unique < st.lookups); /* deduped: the hot rows repeat inside steps */
    else ck_assert_uint_eq(st.unique, st.lookups);   /* no cache, no dedupe: repeats are copied */
    ck_assert_uint_eq(st.copied_rows, st.unique - st.cache_hits);
    ck_assert_uint_eq(st.cache_capacity, cache_rows > ROWS ? ROWS : cache_rows);
    ck_assert(st.cache_rows <= st.cache_capacity);
    if (cache_rows == 0) ck_assert_uint_eq(st.cache_hits, 0);
    if (cache_rows >= ROWS) ck_assert(st.cache_hits > st.unique / 4); /* the hot set stays */
    ck_assert_uint_eq(st.stalls, STEPS - 1); /* every fetch but the last was waited for */
    ck_assert(st.hash_seconds > 0); /* the fills were timed */
    /* exclusive tiers over a DRAM row cache: rows move up and come back down when the cache evicts them */
    bool excl = in.tiers == ENGRAM_STORE_EXCLUSIVE && in.cache_rows && cache_rows;
    engram_store_stats ss;
    engram_store_get_stats(s, &ss);
    if (!excl) ck_assert_uint_eq(st.copied_back_rows, 0);
    if (excl && cache_rows < 1000) ck_assert(st.copied_back_rows > 0); /* fewer slots than the rows asked for */
    if (excl && cache_rows >= ROWS) ck_assert_uint_eq(st.copied_back_rows, 0); /* nothing ever evicted */
    ck_assert(ss.demotions <= st.copied_back_rows); /* what reached the store (the last step's wait) */
    if (excl && cache_rows < 1000) ck_assert(ss.demotions > 0 && ss.promotions > 0);
    if (!excl) ck_assert_uint_eq(ss.demotions + ss.promotions, 0);
    backend_free(be, out);
    free(ref);
    engram_fetch_destroy(f);
    backend_destroy(be);
}

START_TEST(test_rows_bit_equal) {
    ck_assert_ptr_nonnull(mkdtemp(dir));
    int dts[] = {ENGRAM_STORE_F32, ENGRAM_STORE_BF16, ENGRAM_STORE_F16, ENGRAM_STORE_FP8_UE8M0};
    engram_store_tier tiers[] = {ENGRAM_STORE_DRAM, ENGRAM_STORE_NVME};
    engram_store_tiers policies[] = {ENGRAM_STORE_INCLUSIVE, ENGRAM_STORE_EXCLUSIVE};
    for (int i = 0; i < 4; i++) {
        char path[300];
        write_table(dts[i], path, sizeof(path));
        engram_store *ref = open_table(dts[i], path, ENGRAM_STORE_DRAM, ENGRAM_STORE_INCLUSIVE);
        for (int t = 0; t < 2; t++)
            for (int x = 0; x < 2; x++) {
                uint64_t caches[] = {0, 30, 200, 100000}; /* 30 and 200: fewer slots than a step's rows */
                for (int c = 0; c < 4; c++) { /* a fresh store each time: its cache starts empty */
                    engram_store *s = open_table(dts[i], path, tiers[t], policies[x]);
                    check_fetch(s, ref, caches[c]);
                    engram_store_close(s);
                }
            }
        engram_store_close(ref);
        unlink(path);
    }
    rmdir(dir);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("engram_fetch");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_rows_bit_equal);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
