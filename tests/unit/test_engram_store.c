/* Unit tests of engram/store: the header layout and strides, round trips of
 * every dtype through every tier (DRAM, NVMe io_uring, NVMe pread, buffered,
 * NVMe under a DRAM budget small enough to evict all the time) compared bit
 * for bit with the reference conversions, block dedupe, the row cache under
 * concurrent gathers and prefetches, and bad
 * files (truncated, wrong magic, wrong version, fields that disagree, rows
 * past the end) refused with a message naming the problem. */
#include <check.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engram/engram.h"
#include "engine/model/dtype.h"

static char dir[] = "/tmp/test_engram_store.XXXXXX";
static char path[256];

static void setup(void) {
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/t.tbl", dir);
}

static void teardown(void) {
    char p2[300];
    unlink(path);
    snprintf(p2, sizeof(p2), "%s.tmp", path);
    unlink(p2);
    rmdir(dir);
    strcpy(dir, "/tmp/test_engram_store.XXXXXX");
}

static uint64_t rng = 88172645463325252ull;
static uint32_t next32(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

/* Reference: the row's values as the engine's own conversions give them. */
static void ref_row(int dt, const uint8_t *src, uint32_t cols, float *out) {
    if (dt == ENGRAM_STORE_F32) dtype_to_f32(out, src, DTYPE_F32, cols);
    if (dt == ENGRAM_STORE_BF16) dtype_to_f32(out, src, DTYPE_BF16, cols);
    if (dt == ENGRAM_STORE_F16) dtype_to_f32(out, src, DTYPE_F16, cols);
    if (dt == ENGRAM_STORE_FP8_UE8M0) engram_fp8_decode_row(src, src + cols, (int)cols, out);
}

START_TEST(test_strides) {
    ck_assert_uint_eq(engram_store_row_bytes(ENGRAM_STORE_FP8_UE8M0, 256), 264);
    ck_assert_uint_eq(engram_store_row_stride(264), 264); /* dense (issue 17): 512 before */
    ck_assert_uint_eq(engram_store_row_stride(66), 72);
    ck_assert_uint_eq(engram_store_row_stride(512), 512);
    ck_assert_uint_eq(engram_store_row_stride(1), 1);
    ck_assert_uint_eq(engram_store_row_stride(2), 2);
    ck_assert_uint_eq(engram_store_row_stride(6), 8);
    ck_assert_uint_eq(engram_store_row_stride(4097), 4104); /* 8192 would pad by half */
    ck_assert_uint_eq(engram_store_row_stride(200), 200);   /* 256 would pad by 22% */
    ck_assert_uint_eq(engram_store_row_stride(448), 448);   /* 512 would pad by exactly 1/8 */
    ck_assert_uint_eq(engram_store_row_stride(452), 512);   /* under 1/8: the power of two stays */
    ck_assert_uint_eq(engram_store_row_stride(4000), 4096);
    ck_assert_uint_eq(engram_store_row_stride(8000), 8192);
    ck_assert_uint_eq(engram_store_row_stride(6000), 6000);
    ck_assert_uint_eq(engram_store_row_bytes(ENGRAM_STORE_FP8_UE8M0, 48), 0);
    ck_assert_uint_eq(engram_store_row_bytes(ENGRAM_STORE_BF16, 0), 0);
    ck_assert_uint_eq(engram_store_row_bytes(9, 8), 0);
    ck_assert_uint_eq(engram_store_row_bytes(ENGRAM_STORE_F32, 2048), 8192);
    ck_assert_str_eq(engram_store_dtype_name(ENGRAM_STORE_FP8_UE8M0), "fp8_ue8m0");
    ck_assert_str_eq(engram_store_status_str(ENGRAM_STORE_ERANGE), "row out of range");
}
END_TEST

static const engram_store_params tier_params[] = {
    {.tier = ENGRAM_STORE_DRAM, .quiet = true},
    {.tier = ENGRAM_STORE_DRAM, .hugepages = true, .quiet = true},
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 4, .quiet = true},
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 1, .quiet = true},
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 64, .use_pread = true, .quiet = true},
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 16, .no_direct = true, .quiet = true},
    /* a submission-polling ring (or, where the kernel refuses one, the plain ring it falls back to) */
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 8, .sqpoll = true, .quiet = true},
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 8, .dram_budget = 3000, .sqpoll = true, .quiet = true},
    /* a DRAM budget over NVMe: a few rows cached, most evicted; then no room for a single row */
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 8, .dram_budget = 3000, .quiet = true},
    {.tier = ENGRAM_STORE_NVME, .queue_depth = 8, .dram_budget = 3000, .use_pread = true, .quiet = true},
    {.tier = ENGRAM_STORE_AUTO, .queue_depth = 2, .dram_budget = 20000, .quiet = true},
    {.tier = ENGRAM_STORE_AUTO, .queue_depth = 2, .dram_budget = 1, .quiet = true},
    {.tier = ENGRAM_STORE_AUTO, .queue_depth = 2, .dram_budget = 1ull << 40, .quiet = true}, /* -> DRAM */
};

/* Every dtype, several widths (row inside a block, a block exactly, several
 * blocks), every tier: gathered rows equal the reference bit for bit. */
START_TEST(test_round_trip) {
    static const struct { int dt; uint32_t cols; } cases[] = {
        {ENGRAM_STORE_F32, 8},   {ENGRAM_STORE_F32, 1024}, {ENGRAM_STORE_F32, 1500},
        {ENGRAM_STORE_BF16, 3},  {ENGRAM_STORE_BF16, 256}, {ENGRAM_STORE_F16, 32},
        {ENGRAM_STORE_F16, 17},  {ENGRAM_STORE_FP8_UE8M0, 256}, {ENGRAM_STORE_FP8_UE8M0, 32},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        int dt = cases[c].dt;
        uint32_t cols = cases[c].cols, rb = engram_store_row_bytes(dt, cols);
        uint64_t nrows = 37 + c * 11;
        uint8_t *data = malloc(nrows * rb);
        for (uint64_t i = 0; i < nrows * rb; i++) data[i] = (uint8_t)next32(); /* NaNs, subnormals too */
        char err[512];
        ck_assert_int_eq(engram_store_write_dense(path, dt, nrows, cols, data, err, sizeof(err)), 0);
        size_t n = 200;
        int64_t rows[200];
        for (size_t i = 0; i < n; i++) rows[i] = i < 5 ? (int64_t)nrows - 1 : (int64_t)(next32() % nrows);
        rows[7] = rows[8]; /* repeats */
        float *want = malloc(n * cols * sizeof(float)), *got = malloc(n * cols * sizeof(float));
        for (size_t i = 0; i < n; i++) ref_row(dt, data + rows[i] * rb, cols, want + i * cols);
        for (size_t t = 0; t < sizeof(tier_params) / sizeof(tier_params[0]); t++) {
            engram_store *s = NULL;
            ck_assert_msg(engram_store_open(path, &tier_params[t], &s, err, sizeof(err)) == 0, "%s", err);
            memset(got, 0xA5, n * cols * sizeof(float));
            ck_assert_int_eq(engram_store_gather(s, rows, n, got, NULL), 0);
            ck_assert_msg(!memcmp(got, want, n * cols * sizeof(float)), "dtype %d cols %u tier %zu", dt, cols, t);
            engram_store_info in = engram_store_get_info(s);
            memset(got, 0xA5, n * cols * sizeof(float)); /* again: cached rows now, where there is a cache */
            ck_assert_int_eq(engram_store_gather(s, rows, n, got, NULL), 0);
            ck_assert_msg(!memcmp(got, want, n * cols * sizeof(float)), "again: dtype %d cols %u tier %zu", dt, cols, t);
            engram_store_stats es;
            engram_store_get_stats(s, &es);
            ck_assert_uint_eq(es.lookups, 2 * n);
            ck_assert_uint_eq(es.dram_hits + es.nvme_hits, 2 * n);
            ck_assert_uint_le(es.cache_bytes, tier_params[t].dram_budget ? tier_params[t].dram_budget : 0);
            ck_assert(in.tier == (tier_params[t].tier == ENGRAM_STORE_AUTO
                                      ? (tier_params[t].dram_budget >= nrows * in.header.row_stride ? ENGRAM_STORE_DRAM
                                                                                                  : ENGRAM_STORE_NVME)
                                      : tier_params[t].tier));
            ck_assert_uint_eq(in.header.rows, nrows);
            if (in.tier == ENGRAM_STORE_NVME && in.header.row_stride <= 4096)
                ck_assert_uint_le(in.reads, (nrows * in.header.row_stride + 4095) / 4096); /* deduped */
            ck_assert_int_eq(engram_store_gather(s, rows, 0, got, NULL), 0);
            engram_store_close(s);
        }
        free(data), free(want), free(got);
    }
}
END_TEST

START_TEST(test_out_of_range) {
    float d[16 * 4] = {0};
    char err[256];
    ck_assert_int_eq(engram_store_write_dense(path, ENGRAM_STORE_F32, 16, 4, d, err, sizeof(err)), 0);
    for (size_t t = 0; t < 3; t++) {
        engram_store *s = NULL;
        ck_assert_int_eq(engram_store_open(path, &tier_params[t * 2], &s, err, sizeof(err)), 0);
        int64_t rows[3] = {0, 16, 1};
        float out[12];
        size_t bad = 99;
        ck_assert_int_eq(engram_store_gather(s, rows, 3, out, &bad), ENGRAM_STORE_ERANGE);
        ck_assert_uint_eq(bad, 1);
        rows[1] = -1;
        ck_assert_int_eq(engram_store_gather(s, rows, 3, out, NULL), ENGRAM_STORE_ERANGE);
        engram_store_close(s);
    }
    engram_store_close(NULL);
}
END_TEST

/* A file cut right after its last row (no padding): the last block reads
 * short and must still give the row, in every tier. */
START_TEST(test_unpadded_tail) {
    uint16_t d[5 * 100];
    char err[256];
    for (int i = 0; i < 500; i++) d[i] = (uint16_t)(0x3f80 + i);
    ck_assert_int_eq(engram_store_write_dense(path, ENGRAM_STORE_BF16, 5, 100, d, err, sizeof(err)), 0);
    ck_assert_int_eq(truncate(path, 4096 + 4 * 200 + 200), 0); /* stride 200 (dense), row 200 bytes */
    int64_t rows[3] = {4, 0, 4};
    float want[300], got[300];
    for (int k = 0; k < 3; k++) dtype_to_f32(want + k * 100, d + rows[k] * 100, DTYPE_BF16, 100);
    for (size_t t = 0; t < sizeof(tier_params) / sizeof(tier_params[0]); t++) {
        engram_store *s = NULL;
        ck_assert_msg(engram_store_open(path, &tier_params[t], &s, err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(engram_store_gather(s, rows, 3, got, NULL), 0);
        ck_assert(!memcmp(got, want, sizeof(got)));
        engram_store_close(s);
    }
    ck_assert_int_eq(truncate(path, 4096 + 4 * 200 + 199), 0);
    engram_store *s = NULL;
    ck_assert_int_eq(engram_store_open(path, NULL, &s, err, sizeof(err)), ENGRAM_STORE_EFORMAT);
}
END_TEST

static void write_bytes(const uint8_t *b, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

static void expect_bad(const uint8_t *b, size_t n, int status, const char *needle) {
    write_bytes(b, n);
    for (size_t t = 0; t < 3; t++) {
        engram_store *s = (engram_store *)1;
        char err[512] = "";
        ck_assert_int_eq(engram_store_open(path, &tier_params[t * 2], &s, err, sizeof(err)), status);
        ck_assert_msg(strstr(err, needle) && strstr(err, path), "%s lacks %s", err, needle);
    }
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

START_TEST(test_bad_files) {
    float d[10 * 8];
    char err[256];
    for (int i = 0; i < 80; i++) d[i] = (float)i;
    ck_assert_int_eq(engram_store_write_dense(path, ENGRAM_STORE_F32, 10, 8, d, err, sizeof(err)), 0);
    FILE *f = fopen(path, "rb");
    uint8_t good[8192];
    size_t n = fread(good, 1, sizeof(good), f);
    fclose(f);
    ck_assert_uint_eq(n, 8192);
    uint8_t b[8192];

    expect_bad(good, 0, ENGRAM_STORE_EFORMAT, "truncated header");
    expect_bad(good, 20, ENGRAM_STORE_EFORMAT, "truncated header");
    expect_bad(good, 4096 + 100, ENGRAM_STORE_EFORMAT, "truncated: 10 rows need");
    memcpy(b, good, n), b[0] = 'X';
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "wrong magic");
    memcpy(b, good, n), put32(b + 8, 2);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "unsupported version 2");
    memcpy(b, good, n), put32(b + 12, 77);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "unknown dtype 77");
    memcpy(b, good, n), put64(b + 16, 1000); /* rows past the end of the file */
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "truncated: 1000 rows");
    memcpy(b, good, n), put64(b + 16, 0);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "rows 0");
    memcpy(b, good, n), put64(b + 16, UINT64_MAX);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "out of range");
    memcpy(b, good, n), put32(b + 24, 9);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "row_bytes 32, expected 36");
    memcpy(b, good, n), put32(b + 24, 0);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "cols 0");
    /* 32-byte rows: strides 32 (dense, and the old power of two) only */
    memcpy(b, good, n), put32(b + 32, 64);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "row_stride 64 invalid for 32-byte rows (a multiple of 8 from 32 to 32)");
    memcpy(b, good, n), put32(b + 32, 24);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "row_stride 24 invalid");
    memcpy(b, good, n), put32(b + 36, 1);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "reserved");
    memcpy(b, good, n), put64(b + 40, 100);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "data_offset 100");
    memcpy(b, good, n), put64(b + 40, UINT64_MAX & ~4095ull);
    expect_bad(b, n, ENGRAM_STORE_EFORMAT, "data_offset");

    engram_store *s = NULL;
    unlink(path);
    ck_assert_int_eq(engram_store_open(path, NULL, &s, err, sizeof(err)), ENGRAM_STORE_EIO);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    ck_assert_int_eq(engram_store_open(dir, NULL, &s, err, sizeof(err)), ENGRAM_STORE_EFORMAT);
    engram_store_params p = {.tier = ENGRAM_STORE_NVME, .queue_depth = 0};
    write_bytes(good, n);
    ck_assert_int_eq(engram_store_open(path, &p, &s, err, sizeof(err)), ENGRAM_STORE_EINVAL);
    ck_assert_int_eq(engram_store_write(path, 0, 1, 1, 0, NULL, NULL, err, sizeof(err)), ENGRAM_STORE_EINVAL);
}
END_TEST

/* ---- the row cache under concurrency ---- */

typedef struct {
    engram_store *s;
    const uint16_t *data; /* (nrows, cols) bf16 */
    uint32_t cols;
    int64_t nrows;
    int iters;
    uint64_t seed;
    int bad; /* rows that came back wrong */
} worker;

static int64_t zipfish(uint64_t *st, int64_t n) { /* hot rows first: u^3 scaled */
    *st ^= *st << 13, *st ^= *st >> 7, *st ^= *st << 17;
    double u = (double)(*st >> 11) * 0x1.0p-53;
    return (int64_t)(u * u * u * (double)n) % n;
}

static void *gather_worker(void *arg) {
    worker *w = arg;
    enum { B = 48 };
    int64_t rows[B];
    float *got = malloc(B * w->cols * sizeof(float)), *want = malloc(w->cols * sizeof(float));
    for (int it = 0; it < w->iters; it++) {
        for (int i = 0; i < B; i++) rows[i] = zipfish(&w->seed, w->nrows);
        if (engram_store_gather(w->s, rows, B, got, NULL)) w->bad++;
        for (int i = 0; i < B; i++) {
            dtype_to_f32(want, w->data + rows[i] * w->cols, DTYPE_BF16, w->cols);
            if (memcmp(want, got + i * w->cols, w->cols * sizeof(float))) w->bad++;
        }
    }
    free(got), free(want);
    return NULL;
}

static void *prefetch_worker(void *arg) {
    worker *w = arg;
    int64_t rows[64];
    for (int it = 0; it < w->iters; it++) {
        for (int i = 0; i < 64; i++) rows[i] = zipfish(&w->seed, w->nrows);
        rows[it % 64] = it % 2 ? -5 : w->nrows + it; /* ignored */
        if (engram_store_prefetch(w->s, rows, 64)) w->bad++;
    }
    return NULL;
}

/* Three gathering threads and one prefetching thread on a cache of 60 rows
 * over 3000: every gathered row bit-equal, the counters consistent. */
START_TEST(test_cache_concurrent) {
    enum { COLS = 64, NROWS = 3000 };
    uint16_t *data = malloc(NROWS * COLS * sizeof(uint16_t));
    for (int i = 0; i < NROWS * COLS; i++) data[i] = (uint16_t)next32();
    char err[512];
    ck_assert_int_eq(engram_store_write_dense(path, ENGRAM_STORE_BF16, NROWS, COLS, data, err, sizeof(err)), 0);
    for (int v = 0; v < 3; v++) {
        engram_store_params p = {.tier = ENGRAM_STORE_NVME, .queue_depth = v == 2 ? 1 : 16, .use_pread = v == 1,
                                 .dram_budget = 60 * (COLS * 2 + 38), .quiet = true}; /* 38: SLOT_OVERHEAD */
        engram_store *s = NULL;
        ck_assert_msg(engram_store_open(path, &p, &s, err, sizeof(err)) == 0, "%s", err);
        ck_assert_uint_eq(engram_store_get_info(s).cache_rows, 60);
        ck_assert_uint_le(engram_store_get_info(s).cache_bytes, p.dram_budget);
        worker w[4];
        pthread_t th[4];
        for (int k = 0; k < 4; k++) {
            w[k] = (worker){s, data, COLS, NROWS, k < 3 ? 150 : 400, 0x1234567ull * (uint64_t)(k + 1) + (uint64_t)v, 0};
            ck_assert_int_eq(pthread_create(&th[k], NULL, k < 3 ? gather_worker : prefetch_worker, &w[k]), 0);
        }
        for (int k = 0; k < 4; k++) {
            pthread_join(th[k], NULL);
            ck_assert_msg(w[k].bad == 0, "variant %d thread %d: %d bad rows", v, k, w[k].bad);
        }
        engram_store_prefetch_wait(s); /* its reads counted in every counter before they are read */
        engram_store_stats es;
        engram_store_get_stats(s, &es);
        ck_assert_uint_eq(es.lookups, 3 * 150 * 48);
        ck_assert_uint_eq(es.dram_hits + es.nvme_hits, es.lookups);
        ck_assert_uint_gt(es.dram_hits, 0);
        ck_assert_uint_gt(es.evictions, 0);
        ck_assert_uint_le(es.cache_rows, 60);
        ck_assert_uint_eq(es.prefetch_rows, 400 * 64);
        ck_assert_uint_eq(es.gathers, 3 * 150);
        uint64_t nh = 0, ns = 0;
        for (int b = 0; b <= ENGRAM_STORE_HIST_BUCKETS; b++) nh += es.nvme_read_hist[b], ns += es.stall_hist[b];
        ck_assert_uint_eq(nh, es.nvme_reads);
        ck_assert_uint_eq(ns, es.gathers);
        engram_store_close(s);
    }
    free(data);
}
END_TEST

/* Rows in distinct blocks, prefetched and then gathered at once: each is read
 * exactly once, whoever gets there first; a second gather is all hits. */
START_TEST(test_prefetch_no_duplicate_reads) {
    enum { COLS = 64, NROWS = 32 * 64 }; /* 128-byte rows: 32 per block */
    uint16_t *data = malloc(NROWS * COLS * sizeof(uint16_t));
    for (int i = 0; i < NROWS * COLS; i++) data[i] = (uint16_t)next32();
    char err[512];
    ck_assert_int_eq(engram_store_write_dense(path, ENGRAM_STORE_BF16, NROWS, COLS, data, err, sizeof(err)), 0);
    for (int round = 0; round < 20; round++) {
        engram_store_params p = {.tier = ENGRAM_STORE_NVME, .queue_depth = 4, .use_pread = round % 2,
                                 .dram_budget = 100 * (COLS * 2 + 32), .quiet = true};
        engram_store *s = NULL;
        ck_assert_int_eq(engram_store_open(path, &p, &s, err, sizeof(err)), 0);
        int64_t rows[64];
        for (int i = 0; i < 64; i++) rows[i] = (int64_t)i * 32 + (round + i) % 32;
        float *got = malloc(64 * COLS * sizeof(float)), want[COLS];
        ck_assert_int_eq(engram_store_prefetch(s, rows, 64), 0);
        if (round % 4 == 3) usleep(2000); /* sometimes let the prefetch finish first */
        for (int pass = 0; pass < 2; pass++) {
            ck_assert_int_eq(engram_store_gather(s, rows, 64, got, NULL), 0);
            for (int i = 0; i < 64; i++) {
                dtype_to_f32(want, data + rows[i] * COLS, DTYPE_BF16, COLS);
                ck_assert(!memcmp(want, got + i * COLS, sizeof(want)));
            }
        }
        engram_store_stats es;
        engram_store_get_stats(s, &es);
        ck_assert_uint_eq(es.nvme_reads, 64);
        ck_assert_uint_ge(es.dram_hits, 64); /* the second pass */
        ck_assert_uint_eq(es.evictions, 0);
        ck_assert_int_eq(engram_store_prefetch(s, NULL, 1), ENGRAM_STORE_EINVAL);
        engram_store_close(s);
        free(got);
    }
    ck_assert_int_eq(engram_store_prefetch(NULL, NULL, 0), 0);
    free(data);
}
END_TEST


/* ---- DeepSeek-V4.1's rows at the dense stride (issue 17) ---- */

enum { V41_COLS = 256, V41_RB = 264, V41_ROWS = 1009 }; /* row 1008, the last, straddles blocks 65 and 66 */

static int copy_row(void *ctx, uint64_t row, void *dst) {
    memcpy(dst, (const uint8_t *)ctx + row * V41_RB, V41_RB);
    return 0;
}

/* Whether row r at stride 264 has bytes in two 4 KiB blocks (the data start at a block). */
static bool straddles(int64_t r) { return (uint64_t)r * V41_RB % 4096 + V41_RB > 4096; }

/* Gathers rows through s raw and decoded; both must be the bytes written
 * (data) and engram_fp8's decoding of them. */
static void v41_check(engram_store *s, const uint8_t *data, const int64_t *rows, size_t n, const char *what) {
    uint8_t *raw = malloc(n * V41_RB);
    float *got = malloc(n * V41_COLS * sizeof(float)), want[V41_COLS];
    memset(raw, 0xA5, n * V41_RB);
    ck_assert_int_eq(engram_store_gather_raw(s, rows, n, raw, NULL), 0);
    ck_assert_int_eq(engram_store_gather(s, rows, n, got, NULL), 0);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *src = data + rows[i] * V41_RB;
        ck_assert_msg(!memcmp(raw + i * V41_RB, src, V41_RB), "%s: row %lld raw", what, (long long)rows[i]);
        engram_fp8_decode_row(src, src + V41_COLS, V41_COLS, want);
        ck_assert_msg(!memcmp(got + i * V41_COLS, want, sizeof(want)), "%s: row %lld", what, (long long)rows[i]);
    }
    free(raw), free(got);
}

/* 264-byte FP8 rows at the dense stride (one in 16 straddling two blocks,
 * the last row among them) and at the old 512-byte one (a file from before
 * issue 17): every tier returns the rows written, bit for bit, from a full
 * file and from one cut right after its last row; a straddling row costs
 * one read of its two blocks; prefetched rows come back the same. */
START_TEST(test_v41_dense_stride) {
    uint8_t *data = malloc((size_t)V41_ROWS * V41_RB);
    for (size_t i = 0; i < (size_t)V41_ROWS * V41_RB; i++) data[i] = (uint8_t)next32();
    int64_t rows[V41_ROWS];
    size_t n = 0, n_straddle = 0;
    for (int64_t r = 0; r < V41_ROWS; r++)
        if (straddles(r)) rows[n++] = r;
    n_straddle = n;
    ck_assert_uint_eq(n_straddle, 64); /* one row in 16: 1009 / 16, and the last */
    ck_assert(straddles(V41_ROWS - 1));
    rows[n++] = 0;
    rows[n++] = 14; /* ends 48 bytes before block 1 */
    for (int i = 0; i < 100; i++) rows[n++] = (int64_t)(next32() % V41_ROWS);
    char err[512], what[64];
    for (int v = 0; v < 2; v++) {
        uint32_t stride = v ? 512 : 0;
        ck_assert_msg(engram_store_write(path, ENGRAM_STORE_FP8_UE8M0, V41_ROWS, V41_COLS, stride, copy_row, data, err,
                                         sizeof(err)) == 0, "%s", err);
        /* the header block, the rows at their stride padded to a block, one block of checksums */
        struct stat st;
        ck_assert_int_eq(stat(path, &st), 0);
        ck_assert_uint_eq((uint64_t)st.st_size, 4096 + ((uint64_t)V41_ROWS * (v ? 512 : 264) + 4095) / 4096 * 4096 + 4096);
        for (int cut = 0; cut < 2; cut++) {
            if (cut) ck_assert_int_eq(truncate(path, 4096 + (V41_ROWS - 1) * (v ? 512 : 264) + V41_RB), 0);
            for (size_t t = 0; t < sizeof(tier_params) / sizeof(tier_params[0]); t++) {
                engram_store *s = NULL;
                ck_assert_msg(engram_store_open(path, &tier_params[t], &s, err, sizeof(err)) == 0, "%s", err);
                engram_store_info in = engram_store_get_info(s);
                ck_assert_uint_eq(in.header.row_stride, v ? 512 : 264);
                ck_assert_uint_eq(in.header.row_bytes, V41_RB);
                snprintf(what, sizeof(what), "stride %u cut %d tier %zu", in.header.row_stride, cut, t);
                v41_check(s, data, rows, n, what);
                engram_store_close(s);
            }
        }
        unlink(path);
    }
    /* one read per row alone: both blocks of a straddling row at once, one block of another */
    ck_assert_int_eq(engram_store_write(path, ENGRAM_STORE_FP8_UE8M0, V41_ROWS, V41_COLS, 0, copy_row, data, err,
                                        sizeof(err)), 0);
    engram_store *s = NULL;
    ck_assert_int_eq(engram_store_open(path, &tier_params[2], &s, err, sizeof(err)), 0); /* NVMe, no cache */
    for (int64_t r = 0; r < 40; r++) {
        engram_store_info a = engram_store_get_info(s);
        v41_check(s, data, &r, 1, "alone");
        engram_store_info b = engram_store_get_info(s);
        ck_assert_uint_eq(b.reads - a.reads, 2); /* raw and decoded */
        ck_assert_uint_eq(b.bytes_read - a.bytes_read, straddles(r) ? 2 * 8192 : 2 * 4096);
    }
    engram_store_close(s);
    /* the lookahead: straddling rows prefetched into a cache that holds them all, then gathered from DRAM */
    engram_store_params p = {.tier = ENGRAM_STORE_NVME, .queue_depth = 8, .dram_budget = 200 * (V41_RB + 38),
                             .quiet = true};
    ck_assert_int_eq(engram_store_open(path, &p, &s, err, sizeof(err)), 0);
    ck_assert_int_eq(engram_store_prefetch(s, rows, n_straddle), 0);
    engram_store_prefetch_wait(s);
    v41_check(s, data, rows, n_straddle, "prefetched");
    engram_store_stats es;
    engram_store_get_stats(s, &es);
    ck_assert_uint_eq(es.prefetch_reads, n_straddle);
    ck_assert_uint_eq(es.dram_hits, 2 * n_straddle); /* raw and decoded: nothing read by the gathers */
    ck_assert_uint_eq(es.evictions, 0);
    engram_store_close(s);
    free(data);
}
END_TEST

/* A damaged checksum block names every row with a byte in it: at 264 bytes
 * a row, the one straddling in from the block before first. */
START_TEST(test_v41_bad_block_rows) {
    uint8_t *data = malloc((size_t)V41_ROWS * V41_RB);
    for (size_t i = 0; i < (size_t)V41_ROWS * V41_RB; i++) data[i] = (uint8_t)next32();
    char err[512];
    for (int v = 0; v < 2; v++) {
        uint32_t stride = v ? 512 : 264;
        ck_assert_int_eq(engram_store_write(path, ENGRAM_STORE_FP8_UE8M0, V41_ROWS, V41_COLS, stride, copy_row, data,
                                            err, sizeof(err)), 0);
        /* one byte of checksum block 1 ([65536, 131072) of the data) */
        FILE *f = fopen(path, "r+b");
        ck_assert_int_eq(fseek(f, 4096 + 65536 + 1000, SEEK_SET), 0);
        int c = fgetc(f);
        ck_assert_int_eq(fseek(f, 4096 + 65536 + 1000, SEEK_SET), 0);
        fputc(c ^ 1, f);
        fclose(f);
        engram_store_verify_result r;
        ck_assert_msg(engram_store_verify(path, &r, err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(r.first_bad, 1);
        /* the rows with a byte in [65536, 131072): at 264, row 248 = [65472, 65736) straddles in, row 496 =
         * [130944, 131208) straddles out; at 512 rows 128..255 exactly */
        ck_assert_uint_eq(r.bad_row_first, v ? 128 : 248);
        ck_assert_uint_eq(r.bad_row_last, v ? 255 : 496);
        for (uint64_t row = r.bad_row_first - 1; row <= r.bad_row_last + 1; row++) {
            uint64_t lo = row * stride, hi = lo + V41_RB; /* the row's data bytes */
            bool touches = lo < 131072 && hi > 65536;
            ck_assert_msg(touches == (row >= r.bad_row_first && row <= r.bad_row_last), "stride %u row %llu", stride,
                          (unsigned long long)row);
        }
        unlink(path);
    }
    free(data);
}
END_TEST

static Suite *store_suite(void) {
    Suite *s = suite_create("engram_store");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_strides);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_out_of_range);
    tcase_add_test(tc, test_unpadded_tail);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_cache_concurrent);
    tcase_add_test(tc, test_prefetch_no_duplicate_reads);
    tcase_add_test(tc, test_v41_dense_stride);
    tcase_add_test(tc, test_v41_bad_block_rows);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(store_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
