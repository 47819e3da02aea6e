/* engine/backend/cpu/cpu_pool.c: every item of every job is done exactly
 * once, whoever runs it: with the workers on their own CPUs, and with the
 * whole process pinned to one CPU (each worker then joins on the caller's
 * CPU or not at all, and the pool falls back to running jobs on the caller
 * alone, then tries the workers again), and after the pin is lifted. */
#include <check.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "engine/backend/cpu/cpu_internal.h"

enum { ITEMS = 97, JOBS = 1500 };

typedef struct {
    cpu_range items;
    _Atomic int done[ITEMS];
    int threads; /* the pool's size, to check ith against */
    _Atomic int bad_ith;
} job;

static void body(void *arg, int ith, int nth) {
    job *j = arg;
    if (ith < 0 || ith >= j->threads || nth != j->threads) atomic_store(&j->bad_ith, 1);
    int i0, i1;
    while (cpu__range_take(&j->items, &i0, &i1))
        for (int i = i0; i < i1; i++) atomic_fetch_add(&j->done[i], 1);
}

static void run_jobs(cpu_pool *p, int n) {
    static job j;
    for (int k = 0; k < JOBS; k++) {
        j.items = cpu__range(ITEMS, 1 + k % 5);
        for (int i = 0; i < ITEMS; i++) atomic_store(&j.done[i], 0);
        j.threads = n;
        atomic_store(&j.bad_ith, 0);
        cpu__pool_run(p, body, &j);
        for (int i = 0; i < ITEMS; i++)
            ck_assert_msg(atomic_load(&j.done[i]) == 1, "job %d: item %d done %d times", k, i, atomic_load(&j.done[i]));
        ck_assert_msg(!atomic_load(&j.bad_ith), "job %d: a thread number out of range", k);
    }
}

START_TEST(every_item_once) {
    cpu_set_t all, one;
    ck_assert_int_eq(sched_getaffinity(0, sizeof(all), &all), 0);
    int first = 0;
    while (!CPU_ISSET(first, &all)) first++;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    for (int n = 1; n <= 3; n++) {
        cpu_pool *p = cpu__pool_create(n);
        ck_assert_ptr_nonnull(p);
        run_jobs(p, n);
        cpu__pool_destroy(p);
        /* pinned before the pool is made: its workers inherit the one CPU */
        ck_assert_int_eq(sched_setaffinity(0, sizeof(one), &one), 0);
        p = cpu__pool_create(n);
        ck_assert_ptr_nonnull(p);
        run_jobs(p, n);
        ck_assert_int_eq(sched_setaffinity(0, sizeof(all), &all), 0); /* the caller only: its workers stay pinned */
        run_jobs(p, n);
        cpu__pool_destroy(p);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("cpu_pool");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, every_item_once);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
