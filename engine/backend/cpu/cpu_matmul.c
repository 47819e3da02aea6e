/* The CPU backend's matrix product out = x W^T (+ bias), batch-invariant: an
 * output element is one fixed sum whatever the number of tokens. One code
 * path per ISA family, chosen when the backend is made (backend_params
 * .cpu_isa): AVX-512 and AVX2 (FMA chains, bf16 widened in registers by a
 * shift and a mask per pair of elements, cpu_matmul_isa.h) and the generic
 * one (portable C vectors, no FMA: the backend's numerics before the SIMD
 * paths, kept as the reference they are tested against). The families round differently (FMA, lane count), so a
 * result is bit-identical within a family, and within tolerance across them. */
#include <assert.h>
#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/numeric.h"
#include "engine/backend/cpu/cpu_internal.h"
#include "engine/model/model.h"
#include "engine/model/safetensors.h"

#define ROW_BLOCK 16 /* weight rows a thread takes at a time (stay in L1/L2) */

/* ---- generic: every output element is the same sum: eight lanes accumulate
 * x[j+k]*r[j+k] over j in steps of 8, the tail goes to lane 0, then a fixed
 * tree. cpu__dot (cpu_internal.h) and dot4 (four tokens sharing each weight
 * load) perform exactly that. ---- */

/* cpu__dot over a bf16 row, widened in registers (exactly: bf16 is the top half of an f32) */
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

static inline cpu__v8 load8_bf16(const uint16_t *p) {
    u16x8 h;
    memcpy(&h, p, sizeof(h));
    u32x8 u = __builtin_convertvector(h, u32x8) << 16;
    cpu__v8 v;
    memcpy(&v, &u, sizeof(v));
    return v;
}

static float dot1_bf16(const float *x, const uint16_t *r, int n) {
    cpu__v8 a = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8) a += cpu__load8(x + j) * load8_bf16(r + j);
    for (; j < n; j++) a[0] += x[j] * bf16_to_f32(r[j]);
    return cpu__lanes_sum(a);
}

static void dot4(const float *x, size_t xs, const float *r, int n, float *out) {
    const float *x0 = x, *x1 = x + xs, *x2 = x + 2 * xs, *x3 = x + 3 * xs;
    cpu__v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        cpu__v8 w = cpu__load8(r + j);
        a0 += cpu__load8(x0 + j) * w;
        a1 += cpu__load8(x1 + j) * w;
        a2 += cpu__load8(x2 + j) * w;
        a3 += cpu__load8(x3 + j) * w;
    }
    for (; j < n; j++) {
        a0[0] += x0[j] * r[j];
        a1[0] += x1[j] * r[j];
        a2[0] += x2[j] * r[j];
        a3[0] += x3[j] * r[j];
    }
    out[0] = cpu__lanes_sum(a0), out[1] = cpu__lanes_sum(a1), out[2] = cpu__lanes_sum(a2), out[3] = cpu__lanes_sum(a3);
}

/* Rows [0, nr) of a block for all T tokens (out: the block's first column; x: rows of xs):
 * bf16 rows in place, or f32 rows (widened ones included) by dot4 and cpu__dot. */
static void generic_block(float *out, size_t n, const float *x, size_t xs, const void *w, int wbf16, int nr, int d,
                          int T) {
    if (wbf16) {
        for (int i = 0; i < nr; i++)
            for (int t = 0; t < T; t++)
                out[(size_t)t * n + i] = dot1_bf16(x + (size_t)t * xs, (const uint16_t *)w + (size_t)i * d, d);
        return;
    }
    const float *rows = w;
    int t = 0;
    for (; t + 4 <= T; t += 4)
        for (int i = 0; i < nr; i++) {
            float o[4];
            dot4(x + (size_t)t * xs, xs, rows + (size_t)i * d, d, o);
            for (int k = 0; k < 4; k++) out[(size_t)(t + k) * n + i] = o[k];
        }
    for (; t < T; t++)
        for (int i = 0; i < nr; i++) out[(size_t)t * n + i] = cpu__dot(x + (size_t)t * xs, rows + (size_t)i * d, d);
}

/* ---- AVX2 + FMA: 8 lanes ---- */
#define ISA(name) name##_avx2
#define ISA_TARGET "avx2,fma"
#define VL 8
#define TILE_R 2 /* 8 accumulators, 4 widened vectors, 2 of x: 16 registers */
typedef __m256 vf_avx2;
#define vf vf_avx2
#define vi __m256i
#define vzero() _mm256_setzero_ps()
#define vloadx(p) _mm256_loadu_ps(p)
#define vloadw(p) _mm256_loadu_ps(p)
#define vloadi(p) _mm256_loadu_si256((const __m256i *)(p))
#define vlo(u) _mm256_castsi256_ps(_mm256_slli_epi32(u, 16))
#define vhi(u) _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xffff0000u)))
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vpin(v) (void)(v) /* 16 registers: pinning the tile's x would spill */
#define vstorex(p, v) _mm256_storeu_ps(p, v)
/* 16 floats at p: per 128-bit lane (a0 a2 b0 b2 | a4 a6 b4 b6), then the middle quarters swapped */
__attribute__((target(ISA_TARGET))) static inline void deinterleave_avx2(const float *p, __m256 *e, __m256 *o) {
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    *e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xd8));
    *o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd)), 0xd8));
}
#define vdeinterleave(p, e, o) deinterleave_avx2(p, &(e), &(o))
__attribute__((target(ISA_TARGET))) static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)); /* lanes i + (i+4) */
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                         /* + (i+2) */
    s = _mm_add_ss(s, _mm_movehdup_ps(s));                                          /* + (i+1) */
    return _mm_cvtss_f32(s);
}
#define vhsum(v) hsum_avx2(v)
#define vsums4x4(out, ostride, acc) sums_each_avx2(out, ostride, acc, 4, 4) /* 16 registers: tree by tree */
#define vsums8x1(out, acc) sums_each_avx2(out, 1, acc, 8, 1)
__attribute__((target(ISA_TARGET))) static inline void sums_each_avx2(float *out, size_t ostride, const __m256 *acc,
                                                                     int NR, int NT) {
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) out[(size_t)t * ostride + r] = hsum_avx2(acc[4 * r + t]);
}
#include "engine/backend/cpu/cpu_matmul_isa.h"
#undef ISA
#undef ISA_TARGET
#undef VL
#undef TILE_R
#undef vf
#undef vi
#undef vzero
#undef vloadx
#undef vloadw
#undef vloadi
#undef vlo
#undef vhi
#undef vfma
#undef vpin
#undef vstorex
#undef vdeinterleave
#undef vhsum
#undef vsums4x4
#undef vsums8x1

/* ---- AVX-512 (F, BW, VL): 16 lanes ---- */
#define ISA(name) name##_avx512
#define ISA_TARGET "avx512f,avx512bw,avx512vl,avx2,fma"
#define VL 16
#define TILE_R 4 /* 16 accumulators, 8 widened vectors, 8 of x (pinned): 32 registers */
typedef __m512 vf_avx512;
#define vf vf_avx512
#define vi __m512i
#define vzero() _mm512_setzero_ps()
#define vloadx(p) _mm512_loadu_ps(p)
#define vloadw(p) _mm512_loadu_ps(p)
#define vloadi(p) _mm512_loadu_si512(p)
#define vlo(u) _mm512_castsi512_ps(_mm512_slli_epi32(u, 16))
#define vhi(u) _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32((int)0xffff0000u)))
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vpin(v) __asm__("" : "+v"(v))
#define vstorex(p, v) _mm512_storeu_ps(p, v)
__attribute__((target(ISA_TARGET))) static inline void deinterleave_avx512(const float *p, __m512 *e, __m512 *o) {
    __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
    *e = _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
    *o = _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
}
#define vdeinterleave(p, e, o) deinterleave_avx512(p, &(e), &(o))
__attribute__((target(ISA_TARGET))) static inline float hsum_avx512(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    /* lanes i + (i+8); extractf64x4 is AVX512F, extractf32x8 would need DQ */
    return hsum_avx2(h);
}
#define vhsum(v) hsum_avx512(v)
/* hsum_avx512 of 16 vectors at once: lane 4q + j of the result is the sum of
 * v[q + 4j]. Each sum adds the same pairs in the same order as hsum_avx512
 * (lanes i + (i+8), then + (i+4), + (i+2), + (i+1)), so its bits are
 * hsum_avx512's; done by shuffles across the vectors, 15 adds instead of 16
 * trees of four dependent steps (at 256 columns the trees took a third of a
 * 4 x 4 tile's time, measured). */
__attribute__((target(ISA_TARGET))) static inline __m512 hsum16_avx512(const __m512 v[16]) {
    __m512 u[8], w[4], z[2];
    for (int i = 0; i < 8; i++) /* [lanes i + (i+8) of v[2i] | of v[2i+1]] */
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
    for (int i = 0; i < 4; i++) /* + (i+4): quarter q holds v[4i + q]'s four partial sums */
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xdd));
    for (int i = 0; i < 2; i++) /* + (i+2): quarter q holds v[8i + q]'s two, then v[8i + q + 4]'s */
        z[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xee));
    return _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xdd)); /* + (i+1) */
}
/* A 4 x 4 tile's sums, acc[4 r + t] to out[t * ostride + r]: token t's four rows are quarter t. */
__attribute__((target(ISA_TARGET))) static inline void sums4x4_avx512(float *out, size_t ostride, const __m512 *acc) {
    __m512 s = hsum16_avx512(acc);
    _mm_storeu_ps(out, _mm512_castps512_ps128(s));
    _mm_storeu_ps(out + ostride, _mm512_extractf32x4_ps(s, 1));
    _mm_storeu_ps(out + 2 * ostride, _mm512_extractf32x4_ps(s, 2));
    _mm_storeu_ps(out + 3 * ostride, _mm512_extractf32x4_ps(s, 3));
}
/* An 8 x 1 tile's sums, acc[4 r] to out[r]: hsum16_avx512 of the eight and eight zeros
 * (lane 4q holds row q, lane 4q + 1 row q + 4), put in order by one permute. */
__attribute__((target(ISA_TARGET))) static inline void sums8x1_avx512(float *out, const __m512 *acc) {
    __m512 v[16];
    for (int r = 0; r < 8; r++) v[r] = acc[4 * r], v[r + 8] = _mm512_setzero_ps();
    __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512 s = _mm512_permutexvar_ps(order, hsum16_avx512(v));
    _mm256_storeu_ps(out, _mm512_castps512_ps256(s));
}
#define vsums4x4(out, ostride, acc) sums4x4_avx512(out, ostride, acc)
#define vsums8x1(out, acc) sums8x1_avx512(out, acc)
#include "engine/backend/cpu/cpu_matmul_isa.h"

/* ---- AVX-512 BF16 (opt-in, --cpu-isa avx512bf16): bf16 weights times
 * activations rounded to bf16 (round to nearest even, once per product
 * call), by vdpbf16ps: each of 16 lanes adds a pair of exact bf16 products
 * per step. Every output element is one chain: acc = dpbf16(acc, x[k..k+32),
 * w[k..k+32)) over k in steps of 32, the tail zero-padded, then the AVX-512
 * tree; the tiles share loads as above, so it is batch-invariant too. Twice
 * the multiply-adds per instruction and no widening, for the activations'
 * rounding: the error bound grows by 2^-8 sum|x_k w_k| (test_cpu_matmul
 * states and checks it), too much for the 1e-4 goldens, hence opt-in.
 * Products with other weights, and those whose weight asks for f32
 * activations (weight.f32_activations), take the avx512 path. ---- */
#define BF16_TARGET "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma"

__attribute__((target(BF16_TARGET))) static inline __m512bh bf16_tail(const uint16_t *p, int n) {
    uint16_t b[32] = {0};
    memcpy(b, p, (size_t)n * sizeof(uint16_t));
    return (__m512bh)_mm512_loadu_si512(b);
}

/* out[t * ostride + r] = sum_k x[t * xstride + k] * w[r * d + k], r < NR, t < NT, x and w bf16
 * (NR up to 8 for one token: decode's tile, eight chains in flight), the
 * chains taken over k in [k0, k1) only: k0 a multiple of 32, k1 = d or a
 * multiple of 32 below it. They start from zeros (k0 = 0) or from carry's
 * vectors (acc[r][t] at carry[4 r + t]) and end in carry (k1 < d) or in
 * out's sums (k1 = d). Stopping a chain at k1 and going on from the stored
 * f32 vectors changes no bit of it, so a product cut into pieces of k
 * (block_bf16) is bit for bit the uncut one. */
__attribute__((target(BF16_TARGET), always_inline)) static inline void
bf16_tile(float *out, size_t ostride, const uint16_t *x, size_t xstride, const uint16_t *w, int d, int k0, int k1,
          __m512 *carry, int NR, int NT) {
    __m512 acc[8][4];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = k0 ? carry[4 * r + t] : _mm512_setzero_ps();
    int k = k0;
    for (; k + 32 <= k1; k += 32) {
        __m512bh wv[8];
        __m512i xv[4]; /* pinned, as the f32 tiles' x (cpu_matmul_isa.h) */
        for (int r = 0; r < NR; r++) wv[r] = (__m512bh)_mm512_loadu_si512(w + (size_t)r * d + k);
        for (int t = 0; t < NT; t++) {
            xv[t] = _mm512_loadu_si512(x + (size_t)t * xstride + k);
            __asm__("" : "+v"(xv[t]));
        }
        for (int t = 0; t < NT; t++)
            for (int r = 0; r < NR; r++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)xv[t], wv[r]);
    }
    if (k < k1) { /* k1 = d: the row's tail */
        __m512bh wv[8];
        for (int r = 0; r < NR; r++) wv[r] = bf16_tail(w + (size_t)r * d + k, d - k);
        for (int t = 0; t < NT; t++) {
            __m512bh xv = bf16_tail(x + (size_t)t * xstride + k, d - k);
            for (int r = 0; r < NR; r++) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], xv, wv[r]);
        }
    }
    if (k1 < d) {
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) carry[4 * r + t] = acc[r][t];
    } else if (NR == 4 && NT == 4) sums4x4_avx512(out, ostride, &acc[0][0]);
    else if (NR == 8 && NT == 1) sums8x1_avx512(out, &acc[0][0]);
    else
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) out[(size_t)t * ostride + r] = hsum_avx512(acc[r][t]);
}

/* The reduction's piece for prefill (bf16 elements, a multiple of 32): a
 * tile's 4 rows and 4 tokens of it, 4 KiB each, stay in L1 together, and
 * all T tokens of it (T KiB at T = 256... 2 T KiB) in L2 across the block's
 * rows. The same for every T and every matrix: a piece only moves where a
 * chain is paused, never its order. */
#define BF16_KC 2048

/* Rows [0, nr) of a block (w: its first row) for all T tokens (xb: bf16).
 * Decode (T < 4): 8 rows at a time over the whole row, as the f32 paths.
 * Prefill: the reduction in pieces of BF16_KC (so the piece of x, read from
 * L2, serves the block's 16 rows, where whole rows of x came from L3 once
 * per 4 rows), each piece over the rows 4 at a time and the token groups of
 * 4 (the rows' piece stays in L1, x's comes from L2), then the leftovers;
 * a paused tile's chains wait in carry (per thread, slot per row unit and
 * token unit). (Software prefetch of the rows that come next was measured:
 * no gain at 16 or 64 tokens, bench/RESULTS.md.) */
__attribute__((target(BF16_TARGET))) static void block_bf16(float *out, size_t n, const uint16_t *xb, size_t xs,
                                                           const uint16_t *w, int nr, int d, int T,
                                                           __m512 *carry) {
    int r = 0;
    if (T < 4) {
        for (int t = 0; t < T; t++) {
            const uint16_t *xt = xb + (size_t)t * xs;
            float *ot = out + (size_t)t * n;
            for (r = 0; r + 8 <= nr; r += 8) bf16_tile(ot + r, n, xt, xs, w + (size_t)r * d, d, 0, d, NULL, 8, 1);
            for (; r + 4 <= nr; r += 4) bf16_tile(ot + r, n, xt, xs, w + (size_t)r * d, d, 0, d, NULL, 4, 1);
            for (; r < nr; r++) bf16_tile(ot + r, n, xt, xs, w + (size_t)r * d, d, 0, d, NULL, 1, 1);
        }
        return;
    }
    int tslots = T / 4 + T % 4; /* token units: groups of 4, then single tokens */
    for (int k0 = 0; k0 < d; k0 += BF16_KC) {
        int k1 = k0 + BF16_KC < d ? k0 + BF16_KC : d;
        for (r = 0; r < nr;) {
            int NR = r + 4 <= nr ? 4 : 1, unit = r < nr / 4 * 4 ? r / 4 : nr / 4 + r % 4;
            const uint16_t *wr = w + (size_t)r * d;
            __m512 *c = carry + (size_t)unit * tslots * 16;
            int t = 0;
            for (; t + 4 <= T; t += 4, c += 16)
                if (NR == 4) bf16_tile(out + (size_t)t * n + r, n, xb + (size_t)t * xs, xs, wr, d, k0, k1, c, 4, 4);
                else bf16_tile(out + (size_t)t * n + r, n, xb + (size_t)t * xs, xs, wr, d, k0, k1, c, 1, 4);
            for (; t < T; t++, c += 16)
                if (NR == 4) bf16_tile(out + (size_t)t * n + r, n, xb + (size_t)t * xs, xs, wr, d, k0, k1, c, 4, 1);
                else bf16_tile(out + (size_t)t * n + r, n, xb + (size_t)t * xs, xs, wr, d, k0, k1, c, 1, 1);
            r += NR;
        }
    }
}

/* The row stride of x rounded to bf16: d rounded up to a cache line, and a
 * line more, so that the rows of a power-of-two d do not all fall in the
 * same cache sets (d = 8192: rows 16 KiB apart, 64 tokens' pieces in 8 of
 * L2's 128 KiB of sets, measured slower). */
static size_t bf16_x_stride(int d) { return (size_t)(d + 31) / 32 * 32 + 32; }

/* carry's vectors for block_bf16: row units (ROW_BLOCK / 4 groups, 3 single rows) x token units */
static size_t bf16_carry_bytes(int T) { return (size_t)(ROW_BLOCK / 4 + 3) * (T / 4 + T % 4) * 16 * 64; }

/* T rows of x (d of each row of xs) rounded to bf16 as vcvtneps2bf16 does:
 * nearest even, subnormal inputs as zero, NaN quiet. Row by row (the tail of
 * a row through the same whole-vector instruction), so a token's rounding
 * never depends on the batch. */
__attribute__((target(BF16_TARGET))) static void round_bf16(uint16_t *out, size_t os, const float *x, size_t xs, int T,
                                                           int d) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * xs;
        uint16_t *ot = out + (size_t)t * os;
        int k = 0;
        for (; k + 16 <= d; k += 16)
            _mm256_storeu_si256((__m256i *)(ot + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(xt + k)));
        if (k < d) {
            float b[16] = {0};
            uint16_t h[16];
            memcpy(b, xt + k, (size_t)(d - k) * sizeof(float));
            _mm256_storeu_si256((__m256i *)h, (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(b)));
            memcpy(ot + k, h, (size_t)(d - k) * sizeof(uint16_t));
        }
    }
}

/* ---- the product ---- */

int cpu__isa_resolve(int isa) {
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512vl");
    bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
    switch (isa) {
    case BACKEND_CPU_ISA_AUTO: return avx512 ? BACKEND_CPU_ISA_AVX512 : avx2 ? BACKEND_CPU_ISA_AVX2 : BACKEND_CPU_ISA_GENERIC;
    case BACKEND_CPU_ISA_GENERIC: return isa;
    case BACKEND_CPU_ISA_AVX2: return avx2 ? isa : -1;
    case BACKEND_CPU_ISA_AVX512: return avx512 ? isa : -1;
    case BACKEND_CPU_ISA_AVX512BF16: return bf16 ? isa : -1;
    default: return -1;
    }
}

/* Each block of weight rows is read from memory once and used for all T
 * tokens: what bounds decode is reading the weights, so a step of many
 * sequences costs about what one costs. bf16 and f32 rows are read in place;
 * f16, FP8 and FP4 ones are widened to f32 into the thread's scratch first
 * (model_weight_rows_to_f32: exact, so the product is bit for bit the one
 * with the widened f32 matrix, and stays batch-invariant). The generic path
 * also widens bf16 from WIDEN_MIN_TOKENS tokens on (the same values, so the
 * same sums), where dot4's shared loads pay for it. */
#define WIDEN_MIN_TOKENS 4

typedef struct {
    backend *be;
    float *out;
    const float *x, *bias; /* x: (T, xs) */
    size_t xs;             /* x's row stride: the caller's, or the paired rows' (avx2, avx512 with bf16 weights) */
    size_t xg;             /* from one group's x to the next's, in x's floats (grouped products) */
    const uint16_t *xb; /* (T, xbs): x rounded to bf16 (avx512bf16 with bf16 weights), else NULL */
    size_t xbs, xbg;
    const weight *w;
    int T, isa;
    int gr, gblocks; /* rows of a group (all of w's when one) and its row blocks */
    bool inplace, bf16;
    cpu_range blocks; /* of ROW_BLOCK weight rows, gblocks a group: no block spans two groups */
} matmul_job;

static void matmul_blocks(void *arg, int ith, int nth) {
    matmul_job *j = arg;
    const weight *w = j->w;
    int n = w->rows, d = w->cols, T = j->T, b0, b1;
    float *out = j->out;
    float *wf = NULL;     /* the block's rows widened to f32, unless read in place */
    void *carry = NULL;   /* block_bf16's paused chains (prefill) */
    if (!j->inplace && !(wf = cpu__thread_scratch(j->be, ith, (size_t)ROW_BLOCK * d * sizeof(float))))
        return; /* the other workers take the blocks (cpu__range_done) */
    if (j->xb && T >= 4 && d > BF16_KC && !(carry = cpu__thread_scratch(j->be, ith, bf16_carry_bytes(T))))
        return; /* (xb: rows in place, so the scratch is carry's alone) */
    /* The next chunk is taken before this one runs (measured: the default
     * model decodes ~6% faster than taking it after, bench/RESULTS.md). */
    int n0 = 0, n1 = 0;
    bool more = cpu__range_take(&j->blocks, &b0, &b1);
    for (; more; b0 = n0, b1 = n1) {
        more = cpu__range_take(&j->blocks, &n0, &n1);
        for (int bi = b0; bi < b1; bi++) {
            int g = bi / j->gblocks, i0 = g * j->gr + bi % j->gblocks * ROW_BLOCK, end = (g + 1) * j->gr;
            int nr = i0 + ROW_BLOCK < end ? ROW_BLOCK : end - i0;
            const float *x = j->x + (size_t)g * j->xg;
            size_t row_bytes = (size_t)d * dtype_size(w->dt);
            const void *rows = (const char *)w->data + (size_t)i0 * row_bytes;
            if (wf) model_weight_rows_to_f32(wf, w, i0, nr), rows = wf;
            int wbf16 = j->inplace && j->bf16;
            if (j->xb) block_bf16(out + i0, (size_t)n, j->xb + (size_t)g * j->xbg, j->xbs, rows, nr, d, T, carry);
            else if (j->isa >= BACKEND_CPU_ISA_AVX512)
                block_avx512(out + i0, (size_t)n, x, j->xs, rows, wbf16, nr, d, T);
            else if (j->isa == BACKEND_CPU_ISA_AVX2)
                block_avx2(out + i0, (size_t)n, x, j->xs, rows, wbf16, nr, d, T);
            else generic_block(out + i0, (size_t)n, x, j->xs, rows, wbf16, nr, d, T);
            if (j->bias)
                for (int t = 0; t < T; t++)
                    for (int i = 0; i < nr; i++) out[(size_t)t * n + i0 + i] += j->bias[i0 + i];
        }
    }
}

/* x made ready for the products, PREP_ROWS rows an item: rounded to bf16
 * (xb) or paired (xp), each group's d columns into its own row of ps, a
 * token's G rows side by side. Row by row, so the pool's split changes
 * nothing; on the pool from PREP_MIN elements (at two threads the engine
 * thread's repack was 2% of the default model's prefill), a decode step's on
 * the engine thread. */
#define PREP_ROWS 16
#define PREP_MIN 16384

typedef struct {
    const float *x; /* (T, xs): G groups of d columns side by side */
    size_t xs;
    uint16_t *xb;   /* (T, G, ps) or NULL */
    float *xp;      /* (T, G, ps) when not xb */
    size_t ps;
    int T, G, d, isa;
} prep_job;

static void prep_rows(void *ctx, int it) {
    const prep_job *p = ctx;
    int t0 = it * PREP_ROWS, n = p->T - t0 < PREP_ROWS ? p->T - t0 : PREP_ROWS;
    size_t os = (size_t)p->G * p->ps;
    for (int g = 0; g < p->G; g++) {
        const float *x = p->x + (size_t)t0 * p->xs + (size_t)g * p->d;
        size_t o = (size_t)t0 * os + (size_t)g * p->ps;
        if (p->xb) round_bf16(p->xb + o, os, x, p->xs, n, p->d);
        else if (p->isa == BACKEND_CPU_ISA_AVX2) pair_x_avx2(p->xp + o, os, x, p->xs, n, p->d, (int)p->ps);
        else pair_x_avx512(p->xp + o, os, x, p->xs, n, p->d, (int)p->ps);
    }
}

static void prep_x(backend *be, prep_job *p) {
    int items = (p->T + PREP_ROWS - 1) / PREP_ROWS;
    if ((size_t)p->T * p->G * p->d >= PREP_MIN) {
        cpu__parallel_for(be, items, 1, prep_rows, p);
        return;
    }
    for (int it = 0; it < items; it++) prep_rows(p, it);
}

/* out (T, w->rows) = the products of G groups (G = 1: the plain product):
 * rows [g R, (g+1) R) of w (R = w->rows / G) times columns [g d, (g+1) d) of
 * x (rows of xs), d = w->cols; + bias when not NULL. Each group's blocks are
 * the blocks of its rows as a product of its own, on the same x values, so
 * every element is the one per-group products compute, bit for bit. */
static void product(backend *be, float *out, const float *x, size_t xs, const weight *w, const float *bias, int G,
                    int T) {
    int isa = be->params.cpu_isa;
    bool dense = w->fmt == WEIGHT_DENSE, bf16 = dense && w->dt == DTYPE_BF16;
    int d = w->cols, gr = w->rows / G, gblocks = (gr + ROW_BLOCK - 1) / ROW_BLOCK;
    matmul_job j = {.be = be, .out = out, .x = x, .xs = xs, .xg = (size_t)d, .bias = bias, .w = w, .T = T,
                    .isa = isa, .gr = gr, .gblocks = gblocks, .bf16 = bf16,
                    .blocks = cpu__range(G * gblocks, 1)};
    j.inplace = dense && (w->dt == DTYPE_F32 || (bf16 && (isa != BACKEND_CPU_ISA_GENERIC || T < WIDEN_MIN_TOKENS)));
    prep_job p = {.x = x, .xs = xs, .T = T, .G = G, .d = d, .isa = isa};
    if (isa == BACKEND_CPU_ISA_AVX512BF16 && bf16 && !w->f32_activations) { /* else the avx512 path */
        p.ps = bf16_x_stride(d);
        if (!(p.xb = cpu__scratch(be, (size_t)T * G * p.ps * sizeof(uint16_t)))) return; /* failure marked */
        prep_x(be, &p);
        j.xb = p.xb, j.xbs = (size_t)G * p.ps, j.xbg = p.ps;
    } else if (bf16 && isa != BACKEND_CPU_ISA_GENERIC) { /* avx2, avx512 (avx512bf16's f32-activation products too) */
        int step = isa == BACKEND_CPU_ISA_AVX2 ? 16 : 32;
        p.ps = (size_t)(d + step - 1) / step * step;
        if (!(p.xp = cpu__scratch(be, (size_t)T * G * p.ps * sizeof(float)))) return;
        prep_x(be, &p);
        j.x = p.xp, j.xs = (size_t)G * p.ps, j.xg = p.ps;
    }
    cpu__parallel(be, matmul_blocks, &j);
    if (!cpu__range_done(&j.blocks)) cpu__fail(be);
}

void cpu__matmul(backend *be, float *out, const float *x, const weight *w, const float *bias, int T) {
    product(be, out, x, (size_t)w->cols, w, bias, 1, T);
}

void cpu__matmul_grouped(backend *be, float *y, const float *x, size_t xs, const weight *w, int G, int T) {
    assert(G >= 1 && w->rows % G == 0 && xs >= (size_t)G * w->cols);
    product(be, y, x, xs, w, NULL, G, T);
}
