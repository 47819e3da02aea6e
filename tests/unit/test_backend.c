/* engine/backend: the handle. Two CPU backends are independent (a fetch
 * channel's timers belong to its handle, not to the process), backend_select
 * makes the CPU backend by name and refuses an unknown device, and destroy
 * accepts NULL. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/backend/backend.h"

START_TEST(two_cpu_backends_are_independent) {
    backend *a = backend_cpu_create(), *b = backend_cpu_create();
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    char src[16] = "rows", dst[16] = {0};
    backend_fetch_mark(a, 0);
    backend_fetch_mark(b, 0);
    struct timespec pause = {0, 2000000}; /* 2 ms: the wait b measures */
    nanosleep(&pause, NULL);
    backend_fetch(b, 0, dst, src, sizeof(src)); /* only b's rows arrive */
    ck_assert_str_eq(dst, "rows");
    ck_assert(backend_fetch_sync(b, 0) > 0.001);
    ck_assert(backend_fetch_sync(a, 0) == 0.0); /* a's channel 0 saw no copy since its mark */
    backend_destroy(a);
    backend_destroy(b);
}
END_TEST

START_TEST(select_by_name) {
    char err[256] = "";
    backend *be = backend_select("cpu", NULL, err, sizeof(err));
    ck_assert_ptr_nonnull(be);
    ck_assert_str_eq(backend_name(be), "cpu");
    ck_assert_uint_eq(backend_kv_elem_bytes(be), sizeof(float));
    ck_assert(!backend_has(be, step_begin) && !backend_has(be, matmul_qkv) && backend_has(be, sample));
    backend_destroy(be);
    ck_assert_ptr_null(backend_select("tpu", NULL, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "unknown device 'tpu'"));
    backend_destroy(NULL);
    backend_params p = backend_default_params();
    ck_assert_int_eq(p.cuda_graphs, 1);
    ck_assert_int_eq(p.cuda_profile, 0);
}
END_TEST

static Suite *suite(void) {
    Suite *s = suite_create("backend");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, two_cpu_backends_are_independent);
    tcase_add_test(tc, select_by_name);
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
