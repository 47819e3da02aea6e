/* What the CPU backend's files share: the thread pool of cpu_pool.c, the
 * matrix product of cpu_matmul.c, the attention of cpu_attention.c and the
 * DeepSeek-V4 (and V4.1 Engram) ops of cpu_dsv4.c, registered in
 * backend_cpu.c's ops table. Contracts in
 * backend.h. */
#ifndef ENGINE_BACKEND_CPU_INTERNAL_H
#define ENGINE_BACKEND_CPU_INTERNAL_H

#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "engine/backend/backend.h"

/* bytes of the backend's scratch for one op of the engine thread at a time
 * (grown as needed, never shrunk; its contents do not survive the next call).
 * NULL (and cpu__fail) when out of memory: the op leaves its output unwritten. */
void *cpu__scratch(backend *be, size_t bytes);
/* bytes of pool thread ith's own scratch (cache-line aligned, grown as
 * needed, never shrunk; valid for the rest of the job that asked), or NULL
 * when out of memory: the job body then takes no work (see cpu__range_done). */
void *cpu__thread_scratch(backend *be, int ith, size_t bytes);

/* ---- the thread pool (cpu_pool.c) ---- */

typedef struct cpu_pool cpu_pool;
/* A job's body, run by each thread that joins it: ith in [0, nth), the
 * caller 0. Not every thread joins every job (a preempted worker is left
 * out), so a body takes its work from a cpu_range, never by ith; ith only
 * picks per-thread scratch. */
typedef void (*cpu_pool_fn)(void *arg, int ith, int nth);

/* A pool of n threads, the caller's included (n - 1 workers), or NULL when
 * out of memory or threads. */
cpu_pool *cpu__pool_create(int n);
/* Stops and joins the workers. Accepts NULL. */
void cpu__pool_destroy(cpu_pool *p);
int cpu__pool_threads(const cpu_pool *p);
/* Runs fn(arg, ith, n) on the caller and on the workers that join in time;
 * returns when every thread that ran it has returned. One caller at a time
 * (the engine thread). */
void cpu__pool_run(cpu_pool *p, cpu_pool_fn fn, void *arg);
/* cpu__pool_run on be's pool. */
void cpu__parallel(backend *be, cpu_pool_fn fn, void *arg);
/* fn(ctx, i) for each i in [0, n), chunks of grain items spread over be's
 * threads (n <= grain: on the caller, no job): the loops whose items need no
 * per-thread scratch. */
typedef void (*cpu_item_fn)(void *ctx, int i);
void cpu__parallel_for(backend *be, int n, int grain, cpu_item_fn fn, void *ctx);
/* The pool's thread count (per-thread scratch is indexed by ith below it). */
int cpu__threads(backend *be);

/* Items [0, n) handed out in chunks of grain to whichever thread asks next. */
typedef struct {
    _Atomic int next;
    int n, grain;
} cpu_range;

static inline cpu_range cpu__range(int n, int grain) {
    cpu_range r = {.n = n, .grain = grain < 1 ? 1 : grain};
    atomic_init(&r.next, 0);
    return r;
}

/* Whether every item of r was taken. A body that cannot get its host
 * scratch returns without taking any (the other workers do its share); when
 * none of them could, items are left, and the op calls cpu__fail. */
static inline bool cpu__range_done(cpu_range *r) { return atomic_load(&r->next) >= r->n; }

/* An op's host scratch allocation failed: its output is left unwritten and
 * the step fails (the ops table's take_failure) instead of the process
 * aborting. Any thread. */
void cpu__fail(backend *be);

/* The next chunk [*i0, *i1), or false when none is left. */
static inline bool cpu__range_take(cpu_range *r, int *i0, int *i1) {
    int a = atomic_fetch_add_explicit(&r->next, r->grain, memory_order_relaxed);
    if (a >= r->n) return false;
    *i0 = a, *i1 = r->n - a > r->grain ? a + r->grain : r->n;
    return true;
}

/* The scale of a row whose sum of squares (in double) is ss. */
static inline float cpu__rms_of(double ss, int d, float eps) { return 1.0f / sqrtf((float)(ss / d) + eps); }

/* 1 / sqrt(mean(x^2) + eps) over x (d), the sum in double: every RMSNorm of the
 * CPU backend (weighted or not) scales its row by this. */
static inline float cpu__rms_scale(const float *x, int d, float eps) {
    double ss = 0.0;
    for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
    return cpu__rms_of(ss, d, eps);
}

/* cpu__rms_scale of rows x[0, n) (n <= CPU_RMS_ROWS, d floats each, stride
 * apart) into scale[0, n): each row's sum in its own order (the same bits),
 * the rows' chains side by side, so that each add's latency is hidden by the
 * other rows' (one row's sum alone was 80% of an RMSNorm of 256). */
#define CPU_RMS_ROWS 8
static inline void cpu__rms_scales(float *scale, const float *x, size_t stride, int n, int d, float eps) {
    if (n == 1) { /* a decode step's row: nothing to overlap it with */
        scale[0] = cpu__rms_scale(x, d, eps);
        return;
    }
    const float *r[CPU_RMS_ROWS];
    double ss[CPU_RMS_ROWS] = {0};
    for (int k = 0; k < CPU_RMS_ROWS; k++) r[k] = x + (k < n ? k : 0) * stride; /* past n: row 0 again, unused */
    for (int i = 0; i < d; i++)
        for (int k = 0; k < CPU_RMS_ROWS; k++) ss[k] += (double)r[k][i] * r[k][i];
    for (int k = 0; k < n; k++) scale[k] = cpu__rms_of(ss[k], d, eps);
}

/* Eight f32 lanes as one vector (GCC/Clang vector extension): the compiler
 * emits plain vector multiplies and adds in exactly this order. */
typedef float cpu__v8 __attribute__((vector_size(32)));

static inline cpu__v8 cpu__load8(const float *p) {
    cpu__v8 v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline float cpu__lanes_sum(cpu__v8 a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* cpu__lanes_sum of each of a[0..8), as the 8 lanes of one vector: the same
 * pairs added in the same order ((0+1)+(2+3))+((4+5)+(6+7)), by shuffles
 * across the eight (14 shuffles and 7 adds instead of 8 trees one by one). */
static inline cpu__v8 cpu__lanes_sum8(const cpu__v8 a[8]) {
#define EVEN(u, v) __builtin_shufflevector(u, v, 0, 2, 4, 6, 8, 10, 12, 14)
#define ODD(u, v) __builtin_shufflevector(u, v, 1, 3, 5, 7, 9, 11, 13, 15)
    cpu__v8 s[4], t[2];
    for (int i = 0; i < 4; i++) /* lanes (0+1), (2+3), ... of a[2i], then of a[2i+1] */
        s[i] = EVEN(a[2 * i], a[2 * i + 1]) + ODD(a[2 * i], a[2 * i + 1]);
    for (int i = 0; i < 2; i++) /* (0+1)+(2+3), (4+5)+(6+7) of four vectors */
        t[i] = EVEN(s[2 * i], s[2 * i + 1]) + ODD(s[2 * i], s[2 * i + 1]);
    return EVEN(t[0], t[1]) + ODD(t[0], t[1]);
#undef EVEN
#undef ODD
}

/* exp of eight floats, as the CPU's attention takes its softmax weights:
 * x = k ln2 + r with |r| <= ln2/2 (k an integer, r by two products with a
 * split ln2, all in double), exp(r) by its Taylor series to r^8 (relative
 * error under 3e-10), times 2^k, then rounded once to float: the correctly
 * rounded exp but in the rarest cases, the same bits on every x86 (plain
 * IEEE double operations, no libm: glibc's expf differs by variant), and a
 * quarter of the time of eight expf calls. x below -104 gives 0 as expf does
 * (and above 100, infinity); NaN stays NaN. */
typedef double cpu__v8d __attribute__((vector_size(64)));
typedef int64_t cpu__v8l __attribute__((vector_size(64)));

/* (eight doubles as one vector: one AVX-512 register each step where the CPU
 * has it, half the instructions of two four-lane halves, the same operations
 * lane by lane: 7% less attention time at the default model's prefill shape,
 * bench-attention on one thread, 0.865 -> 0.800 ms a layer.) */
static inline cpu__v8d cpu__exp8d(cpu__v8d x) {
    const double shift = 0x1.8p52, log2e = 0x1.71547652b82fep0;
    const double ln2hi = 0x1.62e42fee00000p-1, ln2lo = 0x1.a39ef35793c76p-33;
    const cpu__v8d lo_v = {-104.0, -104.0, -104.0, -104.0, -104.0, -104.0, -104.0, -104.0};
    const cpu__v8d hi_v = {100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0};
    const cpu__v8d shift_v = {shift, shift, shift, shift, shift, shift, shift, shift};
    cpu__v8l lo = x < -104.0, hi = x > 100.0; /* NaN: neither */
    x = (cpu__v8d)((lo & (cpu__v8l)lo_v) | (~lo & (cpu__v8l)x));
    x = (cpu__v8d)((hi & (cpu__v8l)hi_v) | (~hi & (cpu__v8l)x));
    cpu__v8d z = x * log2e + shift; /* k in the low bits (round to nearest) */
    cpu__v8d kd = z - shift;
    cpu__v8d r = (x - kd * ln2hi) - kd * ln2lo;
    cpu__v8d p = r * (1.0 / 40320) + 1.0 / 5040;
    p = p * r + 1.0 / 720;
    p = p * r + 1.0 / 120;
    p = p * r + 1.0 / 24;
    p = p * r + 1.0 / 6;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    cpu__v8l k = (cpu__v8l)z - (cpu__v8l)shift_v;
    return p * (cpu__v8d)((k + 1023) << 52);
}

static inline cpu__v8 cpu__exp8(cpu__v8 x) {
    return __builtin_convertvector(cpu__exp8d(__builtin_convertvector(x, cpu__v8d)), cpu__v8);
}

/* sum_j x[j] r[j] as one fixed sum whatever the caller: eight lanes over j in
 * steps of 8, the tail into lane 0, then a fixed tree (the generic matrix
 * path's element, and attention's scores). */
static inline float cpu__dot(const float *x, const float *r, int n) {
    cpu__v8 a = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8) a += cpu__load8(x + j) * cpu__load8(r + j);
    for (; j < n; j++) a[0] += x[j] * r[j];
    return cpu__lanes_sum(a);
}

/* The matrix product (cpu_matmul.c), the backend's matmul op, and its grouped
 * form, the matmul_grouped op: one job over every group's row blocks. */
void cpu__matmul(backend *be, float *out, const float *x, const weight *w, const float *bias, int T);
void cpu__matmul_grouped(backend *be, float *y, const float *x, size_t xs, const weight *w, int G, int T);
/* The attention op (cpu_attention.c). */
void cpu__attention(backend *be, float *out, const float *q, const void *kcache, const void *vcache,
                    const batch_desc *b, int n_heads, int n_kv, int hd, int window);
/* BACKEND_CPU_ISA_* (AUTO: the best this CPU runs) as the path to take, or -1
 * when the CPU cannot run it. */
int cpu__isa_resolve(int isa);

void cpu__rmsnorm_plain(backend *be, float *out, const float *x, int T, int d, float eps);
void cpu__hc_split(backend *be, float *post, float *comb, float *x, const float *X, const float *mix,
                   const float *base, const float *scale, int T, int N, int d, int iters, float hc_eps);
void cpu__hc_weights(backend *be, float *pre, float *post, float *comb, const float *mix, const float *base,
                     const float *scale, int T, int N, int iters, float hc_eps);
void cpu__hc_collapse(backend *be, float *x, const float *X, const float *pre, int T, int N, int d);
void cpu__hc_merge(backend *be, float *X, const float *y, const float *post, const float *comb, int T, int N, int d);
void cpu__hc_head(backend *be, float *out, const float *X, const float *mix, const float *base, const float *scale,
                  int T, int N, int d, float hc_eps);
void cpu__rope_tail(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, int r,
                    const float *inv_freq, int inverse);
void cpu__dsv4_compress(backend *be, const float *kv, const float *gate, const batch_desc *b, const dsv4_state *st,
                        const dsv4_kv *cache, int which, int m, int D, int overlap, const float *ape,
                        const float *norm, float eps, int r, const float *inv_freq);
void cpu__dsv4_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                     const dsv4_kv *cache, int m, int K, int nI, int dI);
void cpu__dsv4_attention(backend *be, float *out, const float *q, const float *kv, const batch_desc *b,
                         const dsv4_kv *cache, int m, const int32_t *sel, int K, const float *sinks, int nh, int D,
                         int W);
void cpu__swiglu_limit(backend *be, float *gate, const float *up, size_t n, float limit);
void cpu__dsv41_compress(backend *be, float *lat, const float *kv, const float *score, const batch_desc *b,
                         const dsv4_state *st, const dsv4_kv *cache, int m, int D, const float *norm, float eps,
                         int r, const float *inv_freq);
void cpu__dsv41_index_keys(backend *be, const float *k, const batch_desc *b, const dsv4_kv *cache, int m, int dI,
                           const float *k_norm, float eps, int r, const float *inv_freq);
void cpu__fake_quant_fp4(backend *be, float *x, size_t n, int w);
void cpu__dsv41_index(backend *be, int32_t *sel, const float *q, const float *wts, const batch_desc *b,
                      const dsv4_kv *cache, int m, int K, int nI, int dI, int32_t *publish, const int32_t *among,
                      int nb, int bs);
void cpu__engram_v41_gate(backend *be, float *X, const float *kv, const float *w, int T, int N, int d, float eps,
                          float clamp, float *gates);

#endif
