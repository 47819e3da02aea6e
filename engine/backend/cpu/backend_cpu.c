/* The CPU reference backend: f32 arithmetic, weights converted from their
 * checkpoint dtype as they are read, a thread pool (cpu_pool.c) across rows.
 * Backend memory is host memory, the model's own view is the model.
 *
 * Batch invariance: every op computes an output row with the same arithmetic
 * whatever the other rows of the step are (the matrix product included: one
 * fixed summation order per element, no BLAS whose blocking would depend on
 * the number of tokens). So a sequence's logits are bit for bit the same
 * alone or batched, in one chunk or token by token. The build turns off FMA
 * contraction (-ffp-contract=off) so that this also holds across the
 * differently shaped loops below. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "engine/backend/backend.h"
#include "engine/backend/cpu/cpu_internal.h"
#include "engine/model/dtype.h"
#include "engram/store.h"
#include "base/util.h"
#include "engine/sampler.h"

/* The handle: the thread pool, the fetch channels' timers and scratch. */
typedef struct {
    backend base; /* first: the ops get &base */
    cpu_pool *pool;
    /* per channel: when the compute reached the mark, when the rows came, and
     * whether a copy has come since the mark (see cpu_fetch) */
    double fetch_t_mark[BACKEND_FETCH_CHANNELS], fetch_t_rows[BACKEND_FETCH_CHANNELS];
    bool fetch_marked[BACKEND_FETCH_CHANNELS];
    float *moe_scratch; /* moe_experts' gathered rows and products, grown as steps need */
    size_t moe_scratch_floats;
    void *scratch; /* cpu__scratch's */
    size_t scratch_bytes;
    void **tscratch; /* (threads) cpu__thread_scratch's, one per pool thread */
    size_t *tscratch_bytes;
    atomic_bool failed; /* an op could not get its scratch since take_failure last looked */
    /* rope's table (see rope_table): cos then sin of each (token, pair), (T, 2, half), then
     * the positions (T int32) and frequencies (half floats) it is for; rope_T -1: none */
    float *rope_cs;
    size_t rope_bytes;
    int rope_T, rope_half;
} cpu_backend;

void cpu__fail(backend *be) { atomic_store(&((cpu_backend *)be)->failed, true); }

static bool cpu_take_failure(backend *be) { return atomic_exchange(&((cpu_backend *)be)->failed, false); }

void cpu__parallel(backend *be, cpu_pool_fn fn, void *arg) { cpu__pool_run(((cpu_backend *)be)->pool, fn, arg); }
void *cpu__scratch(backend *be, size_t bytes) {
    cpu_backend *c = (cpu_backend *)be;
    if (bytes > c->scratch_bytes) {
        free(c->scratch);
        c->scratch_bytes = 0;
        void *p = NULL; /* cache-line aligned: the matrix tiles load whole vectors of it */
        if (posix_memalign(&p, 64, bytes)) {
            c->scratch = NULL;
            cpu__fail(be);
            return NULL;
        }
        c->scratch = p;
        c->scratch_bytes = bytes;
    }
    return c->scratch;
}

void *cpu__thread_scratch(backend *be, int ith, size_t bytes) {
    cpu_backend *c = (cpu_backend *)be;
    if (bytes > c->tscratch_bytes[ith]) {
        void *p = NULL;
        free(c->tscratch[ith]);
        c->tscratch[ith] = NULL, c->tscratch_bytes[ith] = 0;
        if (posix_memalign(&p, 64, bytes)) return NULL;
        c->tscratch[ith] = p, c->tscratch_bytes[ith] = bytes;
    }
    return c->tscratch[ith];
}

int cpu__threads(backend *be) { return cpu__pool_threads(((cpu_backend *)be)->pool); }

/* ---- memory: plain host memory ---- */

/* Large buffers (the KV cache above all) come straight from mmap: zero and
 * not resident until touched, so a cache sized for the whole context costs
 * only the pages sequences use. A 64-byte header keeps the size for free. */
#define ALLOC_HEADER 64
#define ALLOC_MMAP_MIN ((size_t)1 << 20)

static void *cpu_alloc(backend *be, size_t bytes) {
    size_t n = bytes + ALLOC_HEADER;
    char *p;
    if (bytes >= ALLOC_MMAP_MIN) {
        p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
    } else if (!(p = calloc(1, n))) {
        return NULL;
    }
    memcpy(p, &bytes, sizeof(bytes));
    return p + ALLOC_HEADER;
}

static void cpu_free(backend *be, void *q) {
    if (!q) return;
    char *p = (char *)q - ALLOC_HEADER;
    size_t bytes;
    memcpy(&bytes, p, sizeof(bytes));
    if (bytes >= ALLOC_MMAP_MIN) munmap(p, bytes + ALLOC_HEADER);
    else free(p);
}
static void cpu_copy(backend *be, void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_copy2d(backend *be, float *dst, size_t dpitch, const float *src, size_t spitch, size_t width,
                       size_t rows) {
    for (size_t r = 0; r < rows; r++) memcpy(dst + r * dpitch, src + r * spitch, width * sizeof(float));
}
static model *cpu_prepare(backend *be, model *m, char *err, size_t errlen) {
    (void)err, (void)errlen;
    return m;
}
static void cpu_release(backend *be, model *view, model *m) { (void)view, (void)m; }

/* Norms and elementwise ops of at least PAR_MIN elements go to the pool in
 * pieces of about PAR_PIECE (a 64-token prefill's SwiGLU is a tenth of the
 * default model's step on one thread, and would be a fifth of it on two if
 * left to the engine thread); smaller ones, a decode step's, stay on the
 * engine thread, where a handoff costs more than the work. Each element is
 * computed as it was, so nothing depends on the split. */
#define PAR_MIN 16384
#define PAR_PIECE 4096

typedef struct {
    float *out;
    const float *x, *g;
    int T, d;
    float eps;
} rmsnorm_job;

/* Rows [g CPU_RMS_ROWS, (g + 1) CPU_RMS_ROWS) of the job (their sums side by side). */
static void rmsnorm_rows(void *ctx, int g) {
    const rmsnorm_job *j = ctx;
    int t0 = g * CPU_RMS_ROWS, n = j->T - t0 < CPU_RMS_ROWS ? j->T - t0 : CPU_RMS_ROWS;
    float scale[CPU_RMS_ROWS];
    cpu__rms_scales(scale, j->x + (size_t)t0 * j->d, (size_t)j->d, n, j->d, j->eps);
    for (int k = 0; k < n; k++) {
        const float *xt = j->x + (size_t)(t0 + k) * j->d;
        float *ot = j->out + (size_t)(t0 + k) * j->d;
        for (int i = 0; i < j->d; i++) ot[i] = j->g[i] * (xt[i] * scale[k]);
    }
}

static void cpu_rmsnorm(backend *be, float *out, const float *x, const float *g, int T, int d, float eps) {
    rmsnorm_job j = {.out = out, .x = x, .g = g, .T = T, .d = d, .eps = eps};
    int groups = (T + CPU_RMS_ROWS - 1) / CPU_RMS_ROWS, grain = PAR_PIECE / ((size_t)d * CPU_RMS_ROWS);
    if ((size_t)T * d >= PAR_MIN) {
        cpu__parallel_for(be, groups, grain > 1 ? grain : 1, rmsnorm_rows, &j);
        return;
    }
    for (int c = 0; c < groups; c++) rmsnorm_rows(&j, c);
}

static void cpu_embed(backend *be, float *out, const weight *emb, const int32_t *ids, int T) {
    size_t esz = dtype_size(emb->dt);
    for (int t = 0; t < T; t++)
        dtype_to_f32(out + (size_t)t * emb->cols,
                       (const char *)emb->data + (size_t)ids[t] * emb->cols * esz, emb->dt,
                       (size_t)emb->cols);
}

/* Hugging Face's rotate_half layout: element i pairs with i + hd/2. The angle
 * is the f32 product pos * inv_freq, as transformers computes it. Every
 * layer ropes q and k at the same positions, so the (T, hd/2) cosines and
 * sines are kept from the call that computed them (the same cosf and sinf
 * of the same angles: the same bits) until the positions or the
 * frequencies change: one table a step instead of two a layer (rope with
 * its sincosf was 3% of the default model's prefill on one thread, on the
 * engine thread alone). */
static const float *rope_table(cpu_backend *c, const int32_t *pos, int T, int half, const float *inv_freq) {
    size_t n = (size_t)T * half;
    if (c->rope_T == T && c->rope_half == half && !memcmp(c->rope_cs + n * 2, pos, (size_t)T * sizeof(int32_t)) &&
        !memcmp(c->rope_cs + n * 2 + T, inv_freq, (size_t)half * sizeof(float)))
        return c->rope_cs;
    c->rope_T = -1; /* invalid until filled */
    size_t bytes = n * 2 * sizeof(float) + (size_t)T * sizeof(int32_t) + (size_t)half * sizeof(float);
    if (bytes > c->rope_bytes) {
        void *p = realloc(c->rope_cs, bytes);
        if (!p) return NULL;
        c->rope_cs = p, c->rope_bytes = bytes;
    }
    int32_t *kpos = (int32_t *)(c->rope_cs + n * 2);
    float *kfreq = (float *)(kpos + T);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float a = (float)pos[t] * inv_freq[i];
            c->rope_cs[(size_t)t * 2 * half + i] = cosf(a);
            c->rope_cs[(size_t)t * 2 * half + half + i] = sinf(a);
        }
    memcpy(kpos, pos, (size_t)T * sizeof(int32_t));
    memcpy(kfreq, inv_freq, (size_t)half * sizeof(float));
    c->rope_T = T, c->rope_half = half;
    return c->rope_cs;
}

static void cpu_rope(backend *be, float *x, const int32_t *pos, int T, int n_heads, int hd, const float *inv_freq) {
    int half = hd / 2;
    const float *cs = rope_table((cpu_backend *)be, pos, T, half, inv_freq);
    if (!cs) {
        cpu__fail(be);
        return;
    }
    for (int t = 0; t < T; t++) {
        const float *c = cs + (size_t)t * 2 * half, *s = c + half; /* token t's cosines, sines (half each) */
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * hd;
            for (int i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c[i] - x2 * s[i];
                v[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

static void cpu_kv_store(backend *be, void *kc, void *vc, const float *k, const float *v, const batch_desc *b,
                         int kvw) {
    for (int t = 0; t < b->n_tokens; t++) {
        memcpy((float *)kc + (size_t)b->slot[t] * kvw, k + (size_t)t * kvw, (size_t)kvw * sizeof(float));
        memcpy((float *)vc + (size_t)b->slot[t] * kvw, v + (size_t)t * kvw, (size_t)kvw * sizeof(float));
    }
}

/* glibc's expf (2.28 on) for CPUs with FMA, __expf_fma, 16 floats at a time:
 * the same steps in double in the same instructions, so the same bits (the
 * scalar call costs ~15 ns; SwiGLU's expf was 4% of a 1B prefill and 8% of
 * the default model's, measured). x = (k + r) / 32 ln 2 with k an integer,
 * 2^(k/32) = 2^(k >> 5) tab[k & 31], e^(r ln2 / 32) a cubic in r. Lanes
 * outside its fast range (|x| >= 2^7 or so, inf, NaN) are left to expf.
 * The constants are glibc's __exp2f_data; test_backend compares against
 * expf itself. */
static const uint64_t expf_tab[32] = { /* bits of 2^(i/32) - (i << 47) */
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull,
};
#define EXPF_AVX512 "avx512f,avx2,fma"

__attribute__((target(EXPF_AVX512))) static __m512d expf8_avx512(__m512d xd) {
    const __m512d invln2n = _mm512_set1_pd(0x1.71547652b82fep+5), shift = _mm512_set1_pd(0x1.8p+52);
    __m512d kd = _mm512_fmadd_pd(invln2n, xd, shift);
    __m512i ki = _mm512_castpd_si512(kd);
    kd = _mm512_sub_pd(kd, shift);
    __m512d r = _mm512_fmsub_pd(invln2n, xd, kd);
    __m512i i = _mm512_and_si512(ki, _mm512_set1_epi64(31));
    __m512i lo = _mm512_permutex2var_epi64(_mm512_loadu_si512(expf_tab), i, _mm512_loadu_si512(expf_tab + 8));
    __m512i hi = _mm512_permutex2var_epi64(_mm512_loadu_si512(expf_tab + 16), i, _mm512_loadu_si512(expf_tab + 24));
    __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(i, _mm512_set1_epi64(16)), lo, hi);
    __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));
    __m512d z = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.c6af84b912394p-20), _mm512_set1_pd(0x1.ebfce50fac4f3p-13));
    __m512d r2 = _mm512_mul_pd(r, r);
    __m512d y = _mm512_fmadd_pd(r, _mm512_set1_pd(0x1.62e42ff0c52d6p-6), _mm512_set1_pd(1.0));
    return _mm512_mul_pd(_mm512_fmadd_pd(z, r2, y), s);
}

__attribute__((target(EXPF_AVX512))) static __m512 expf16_avx512(__m512 x) {
    __m512i top = _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(x), 20), _mm512_set1_epi32(0x7ff));
    __mmask16 slow = _mm512_cmpgt_epi32_mask(top, _mm512_set1_epi32(0x42a));
    __m256 xhi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    __m256 lo = _mm512_cvtpd_ps(expf8_avx512(_mm512_cvtps_pd(_mm512_castps512_ps256(x))));
    __m256 hi = _mm512_cvtpd_ps(expf8_avx512(_mm512_cvtps_pd(xhi)));
    __m512d e2 = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1);
    __m512 e = _mm512_castpd_ps(e2);
    if (slow) {
        float xs[16], es[16];
        _mm512_storeu_ps(xs, x), _mm512_storeu_ps(es, e);
        for (int l = 0; l < 16; l++)
            if (slow >> l & 1) es[l] = expf(xs[l]);
        e = _mm512_loadu_ps(es);
    }
    return e;
}

/* gate[i] = silu(gate[i]) up[i] = gate[i] / (1 + expf(-gate[i])) up[i], i in [i0, i1):
 * 16 at a time by expf16_avx512 (the same float divide and multiply, so the same bits) */
__attribute__((target(EXPF_AVX512))) static size_t swiglu_avx512(float *gate, const float *up, size_t i0, size_t i1) {
    size_t i = i0;
    for (; i + 16 <= i1; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i);
        __m512 e = expf16_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
        _mm512_storeu_ps(gate + i, _mm512_mul_ps(silu, _mm512_loadu_ps(up + i)));
    }
    return i;
}

typedef struct {
    float *gate;
    const float *up;
    size_t n;
    bool avx512; /* the backend's path is AVX-512 (so is the CPU) */
} swiglu_job;

/* Elements [c PAR_PIECE, (c + 1) PAR_PIECE) of gate = silu(gate) * up. */
static void swiglu_piece(void *ctx, int c) {
    const swiglu_job *j = ctx;
    size_t i0 = (size_t)c * PAR_PIECE, i1 = i0 + PAR_PIECE < j->n ? i0 + PAR_PIECE : j->n;
    if (j->avx512) i0 = swiglu_avx512(j->gate, j->up, i0, i1);
    for (size_t i = i0; i < i1; i++) j->gate[i] = j->gate[i] / (1.0f + expf(-j->gate[i])) * j->up[i];
}

static void cpu_swiglu(backend *be, float *gate, const float *up, size_t n) {
    swiglu_job j = {.gate = gate, .up = up, .n = n, .avx512 = be->params.cpu_isa >= BACKEND_CPU_ISA_AVX512};
    int pieces = (int)((n + PAR_PIECE - 1) / PAR_PIECE);
    if (n >= PAR_MIN) {
        cpu__parallel_for(be, pieces, 1, swiglu_piece, &j);
        return;
    }
    for (int c = 0; c < pieces; c++) swiglu_piece(&j, c);
}

static void cpu_add(backend *be, float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

/* ---- mixture of experts ---- */

/* Qwen3-MoE's router, as transformers computes it: p = softmax(logits) in
 * f32, the top_k largest p (the lower id first among equals), divided by
 * their sum (added largest first) when norm_topk; then the chosen experts
 * sorted by id, so that moe_experts adds them in the order transformers'
 * index_add does. */
/* DeepSeek-V4's routers (MOD:1085-1130): s = sqrt(softplus(l)) (softplus is
 * l itself above 20, as torch's); the experts tid2eid[token] (hash) or the
 * top_k of s + bias, the lower id first among equals (learned); weights s
 * renormalised with 1e-20 and scaled. */
/* The chosen experts (and their weights) in ascending id. */
static void sort_by_id(int32_t *id, float *w, int k) {
    for (int i = 1; i < k; i++)
        for (int j = i; j > 0 && id[j - 1] > id[j]; j--) {
            int32_t ti = id[j];
            float tw = w[j];
            id[j] = id[j - 1], w[j] = w[j - 1];
            id[j - 1] = ti, w[j - 1] = tw;
        }
}

static void route_dsv4(int32_t *id, float *w, const float *l, int32_t token, const moe_weights *moe) {
    int E = moe->n_experts, k = moe->top_k;
    float s[MODEL_MAX_EXPERTS], sum = 0.0f;
    for (int e = 0; e < E; e++) s[e] = sqrtf(l[e] > 20.0f ? l[e] : log1pf(expf(l[e])));
    for (int i = 0; i < k; i++) {
        if (moe->scoring == MOE_HASH) {
            id[i] = moe->tid2eid[(size_t)token * k + i];
        } else {
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int j = 0; j < i && !taken; j++) taken = id[j] == e;
                if (!taken && (best < 0 || s[e] + moe->bias[e] > s[best] + moe->bias[best])) best = e;
            }
            id[i] = best;
        }
        w[i] = s[id[i]];
        sum += w[i];
    }
    for (int i = 0; i < k; i++) w[i] = w[i] / (sum + 1e-20f) * moe->routed_scaling;
}

typedef struct {
    int32_t *ids;
    float *wts;
    const float *logits;
    const int32_t *tokens;
    const moe_weights *moe;
    cpu_range toks;
} route_job;

static void route_tokens(void *arg, int ith, int nth) {
    route_job *r = arg;
    const moe_weights *moe = r->moe;
    int E = moe->n_experts, k = moe->top_k, t0, t1;
    while (cpu__range_take(&r->toks, &t0, &t1))
        for (int t = t0; t < t1; t++) {
            const float *l = r->logits + (size_t)t * E;
            if (moe->scoring != MOE_SOFTMAX) {
                route_dsv4(r->ids + (size_t)t * k, r->wts + (size_t)t * k, l, r->tokens[t], moe);
                sort_by_id(r->ids + (size_t)t * k, r->wts + (size_t)t * k, k);
                continue;
            }
            float p[MODEL_MAX_EXPERTS], mx = -INFINITY, sum = 0.0f;
            for (int e = 0; e < E; e++) mx = l[e] > mx ? l[e] : mx;
            for (int e = 0; e < E; e++) sum += p[e] = expf(l[e] - mx);
            for (int e = 0; e < E; e++) p[e] /= sum;
            int32_t *id = r->ids + (size_t)t * k;
            float *w = r->wts + (size_t)t * k, chosen = 0.0f;
            for (int i = 0; i < k; i++) { /* selection: k is small */
                int best = -1;
                for (int e = 0; e < E; e++) {
                    bool taken = false;
                    for (int j = 0; j < i && !taken; j++) taken = id[j] == e;
                    if (!taken && (best < 0 || p[e] > p[best])) best = e;
                }
                id[i] = best;
                w[i] = p[best];
                chosen += p[best];
            }
            if (moe->norm_topk)
                for (int i = 0; i < k; i++) w[i] /= chosen;
            sort_by_id(id, w, k);
        }
}

static void cpu_moe_route(backend *be, int32_t *ids, float *wts, const float *logits, const int32_t *tokens,
                          const moe_weights *moe, int T) {
    route_job r = {.ids = ids, .wts = wts, .logits = logits, .tokens = tokens, .moe = moe, .toks = cpu__range(T, 4)};
    cpu__parallel(be, route_tokens, &r);
}

/* Expert by expert, those of [lo, hi): the tokens routed to it gathered,
 * their SwiGLU through the same batch-invariant products as dense layers;
 * each result row goes to `sink`: scaled by its weight and added to its
 * token's row of out (moe_experts: experts in ascending id, so each token's
 * sum is the same whatever else is in the step), or copied to its pair's
 * row (moe_pairs). */
static void cpu_moe_run(backend *be, float *out, float *pairs, const float *x, const int32_t *ids, const float *wts,
                        const moe_weights *moe, int T, int lo, int hi) {
    cpu_backend *c = (cpu_backend *)be;
    int d = moe->router.cols, I = moe->inter, k = moe->top_k, E = moe->n_experts;
    size_t Tk = (size_t)T * k;
    size_t need = (size_t)T * (2 * (size_t)d + 2 * (size_t)I) + Tk + (size_t)E + 1;
    if (need > c->moe_scratch_floats) {
        free(c->moe_scratch);
        c->moe_scratch_floats = 0;
        if (!(c->moe_scratch = malloc(need * sizeof(float)))) {
            cpu__fail(be);
            return;
        }
        c->moe_scratch_floats = need;
    }
    float *xs = c->moe_scratch, *g = xs + (size_t)T * d, *u = g + (size_t)T * I, *y = u + (size_t)T * I;
    int32_t *pair = (int32_t *)(y + (size_t)T * d); /* (T k) pairs t k + i, grouped by expert, t ascending within */
    int32_t *start = pair + Tk;                     /* (E + 1) each expert's first entry in pair */
    /* One counting sort of the (token, expert) pairs instead of a scan of them all per expert. */
    memset(start, 0, ((size_t)E + 1) * sizeof(int32_t));
    for (size_t j = 0; j < Tk; j++) start[ids[j] + 1]++;
    for (int e = 0; e < E; e++) start[e + 1] += start[e];
    for (size_t j = 0; j < Tk; j++) pair[start[ids[j]]++] = (int32_t)j;
    for (int e = E; e > 0; e--) start[e] = start[e - 1]; /* the fill moved each start to its end */
    start[0] = 0;
    if (out) memset(out, 0, (size_t)T * d * sizeof(float));
    if (pairs) memset(pairs, 0, Tk * d * sizeof(float));
    for (int e = lo; e < hi; e++) {
        int n = start[e + 1] - start[e];
        if (!n) continue;
        const int32_t *ep = pair + start[e];
        for (int j = 0; j < n; j++)
            memcpy(xs + (size_t)j * d, x + (size_t)(ep[j] / k) * d, (size_t)d * sizeof(float));
        cpu__matmul(be, g, xs, &moe->gate[e], NULL, n);
        cpu__matmul(be, u, xs, &moe->up[e], NULL, n);
        if (moe->swiglu_limit > 0.0f)
            cpu__swiglu_limit(be, g, u, (size_t)n * I, moe->swiglu_limit);
        else
            cpu_swiglu(be, g, u, (size_t)n * I);
        cpu__matmul(be, y, g, &moe->down[e], NULL, n);
        for (int j = 0; j < n; j++) {
            const float *r = y + (size_t)j * d;
            if (pairs) {
                memcpy(pairs + (size_t)ep[j] * d, r, (size_t)d * sizeof(float));
                continue;
            }
            float *o = out + (size_t)(ep[j] / k) * d, w = wts[ep[j]];
            for (int i = 0; i < d; i++) o[i] += r[i] * w;
        }
    }
}

static void cpu_moe_experts(backend *be, float *out, const float *x, const int32_t *ids, const float *wts,
                            const moe_weights *moe, int T) {
    cpu_moe_run(be, out, NULL, x, ids, wts, moe, T, 0, moe->n_experts);
}

static void cpu_moe_pairs(backend *be, float *pairs, const float *x, const int32_t *ids, const moe_weights *moe,
                          int T, int lo, int hi) {
    cpu_moe_run(be, NULL, pairs, x, ids, NULL, moe, T, lo, hi);
}

/* Each token's rows in slot order, from 0: the additions moe_experts makes. */
static void cpu_moe_combine(backend *be, float *out, const float *pairs, const float *wts, int T, int k, int d) {
    (void)be;
    for (int t = 0; t < T; t++) {
        float *o = out + (size_t)t * d;
        memset(o, 0, (size_t)d * sizeof(float));
        for (int s = 0; s < k; s++) {
            const float *r = pairs + ((size_t)t * k + s) * d;
            float w = wts[(size_t)t * k + s];
            for (int i = 0; i < d; i++) o[i] += r[i] * w;
        }
    }
}

static void cpu_gather_rows(backend *be, float *out, const weight *table, const int64_t *rows, int T, int H) {
    int D = table->cols;
    if (table->fmt != WEIGHT_DENSE) { /* DeepSeek-V4.1's FP8 rows: decoded with their scales, exactly */
        for (size_t i = 0; i < (size_t)T * H; i++) model_weight_rows_to_f32(out + i * D, table, (int)rows[i], 1);
        return;
    }
    size_t esz = dtype_size(table->dt);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            dtype_to_f32(out + ((size_t)t * H + h) * D,
                           (const char *)table->data + (size_t)rows[(size_t)t * H + h] * D * esz,
                           table->dt, (size_t)D);
}

static void cpu_engram_gate(backend *be, float *gate, const float *nk, const float *nq, int T, int d) {
    for (int t = 0; t < T; t++) {
        float s = 0.0f;
        for (int i = 0; i < d; i++) s += nk[(size_t)t * d + i] * nq[(size_t)t * d + i];
        s /= sqrtf((float)d);
        float a = sqrtf(fmaxf(fabsf(s), 1e-6f));
        float z = s > 0 ? a : s < 0 ? -a : 0.0f; /* sign(0) = 0, as torch.sign */
        gate[t] = 1.0f / (1.0f + expf(-z));
    }
}

static void cpu_gather_f32(backend *be, float *out, const float *x, const int32_t *idx, int n, int d) {
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * d, x + (size_t)idx[i] * d, (size_t)d * sizeof(float));
}

static void cpu_argmax(backend *be, int32_t *next, const float *logits, int T, int vocab) {
    for (int t = 0; t < T; t++) {
        const float *x = logits + (size_t)t * vocab;
        int32_t best = 0;
        for (int i = 1; i < vocab; i++)
            if (x[i] > x[best]) best = i;
        next[t] = best;
    }
}

static void cpu_scale_rows(backend *be, float *out, size_t ostride, const float *x, size_t xstride, const float *s,
                           int T, int d) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++) out[(size_t)t * ostride + i] = s[t] * x[(size_t)t * xstride + i];
}

typedef struct {
    float *out;
    const float *in, *w;
    const float *wt; /* (K, C): w transposed, tap k of channel c at wt[k C + c] */
    const batch_desc *b;
    size_t hist_off;
    int C, K, dil;
    bool avx512; /* the backend's path is AVX-512 (so is the CPU) */
} short_conv_job;

/* Input row u of sequence s (first token a) at channel 0: in's row a + u, or,
 * before the step (u < 0), the history's row R + u. */
static const float *conv_input(const short_conv_job *j, int s, int a, int u) {
    int R = (j->K - 1) * j->dil;
    return u >= 0 ? j->in + (size_t)(a + u) * j->C : j->b->seq_hist[s] + j->hist_off + (size_t)(R + u) * j->C;
}

/* Channels [0, returned) of out row (the step's token a + t of sequence s),
 * 16 at a time: the same products and sums, in the same order, and the same
 * SiLU (expf16_avx512, a float divide) as the element loop below, so the
 * same bits. */
__attribute__((target(EXPF_AVX512))) static int short_conv_avx512(const short_conv_job *j, int s, int a, int t,
                                                                   float *o) {
    int C = j->C, K = j->K, c = 0;
    for (; c + 16 <= C; c += 16) {
        __m512 y = _mm512_setzero_ps();
        for (int k = 0; k < K; k++) {
            __m512 w = _mm512_loadu_ps(j->wt + (size_t)k * C + c);
            y = _mm512_add_ps(y, _mm512_mul_ps(w, _mm512_loadu_ps(conv_input(j, s, a, t - (K - 1 - k) * j->dil) + c)));
        }
        __m512 e = expf16_avx512(_mm512_sub_ps(_mm512_setzero_ps(), y));
        _mm512_storeu_ps(o + c, _mm512_div_ps(y, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
    }
    return c;
}

/* out's row r of the step: silu of each channel's K taps, k ascending. */
static void short_conv_row(void *ctx, int r) {
    const short_conv_job *j = ctx;
    const batch_desc *b = j->b;
    int s = 0, hi = b->n_seqs - 1; /* the sequence of row r: the last s with h_seq_start[s] <= r */
    while (s < hi) {
        int mid = (s + hi + 1) / 2;
        if (b->h_seq_start[mid] <= r) s = mid;
        else hi = mid - 1;
    }
    int a = b->h_seq_start[s], t = r - a, C = j->C, K = j->K;
    float *o = j->out + (size_t)r * C;
    int c0 = j->avx512 ? short_conv_avx512(j, s, a, t, o) : 0;
    for (int c = c0; c < C; c++) {
        float y = 0.0f;
        for (int k = 0; k < K; k++) y += j->w[(size_t)c * K + k] * conv_input(j, s, a, t - (K - 1 - k) * j->dil)[c];
        o[c] = y / (1.0f + expf(-y));
    }
}

/* Each row reads the step's inputs and the history before it, so the rows
 * go to the pool (pieces of about PAR_PIECE elements, as the norms) and the
 * histories move on after them. */
static void cpu_short_conv(backend *be, float *out, const float *in, const float *w, const batch_desc *b,
                           size_t hist_off, int C, int K, int dil) {
    short_conv_job j = {.out = out, .in = in, .w = w, .b = b, .hist_off = hist_off, .C = C, .K = K, .dil = dil,
                        .avx512 = be->params.cpu_isa >= BACKEND_CPU_ISA_AVX512};
    int T = b->h_seq_start[b->n_seqs], R = (K - 1) * dil;
    float *wt = cpu__scratch(be, (size_t)K * C * sizeof(float));
    if (!wt) return;
    for (int c = 0; c < C; c++)
        for (int k = 0; k < K; k++) wt[(size_t)k * C + c] = w[(size_t)c * K + k];
    j.wt = wt;
    if ((size_t)T * C >= PAR_MIN) {
        cpu__parallel_for(be, T, C < PAR_PIECE ? PAR_PIECE / C : 1, short_conv_row, &j);
    } else {
        for (int r = 0; r < T; r++) short_conv_row(&j, r);
    }
    for (int s = 0; s < b->n_seqs; s++) { /* the history becomes the last R rows of (history, inputs) */
        int a = b->h_seq_start[s], n = b->h_seq_start[s + 1] - a;
        float *hist = b->seq_hist[s] + hist_off; /* (R, C): the inputs at the R positions before a */
        if (n >= R) {
            memcpy(hist, in + (size_t)(a + n - R) * C, (size_t)R * C * sizeof(float));
        } else {
            memmove(hist, hist + (size_t)n * C, (size_t)(R - n) * C * sizeof(float));
            memcpy(hist + (size_t)(R - n) * C, in + (size_t)a * C, (size_t)n * C * sizeof(float));
        }
    }
}

/* Engram rows from host memory: on the CPU the "copy" is a memcpy done at
 * once, issued when the host gather is done, so the compute's wait for the
 * rows is the time from the mark to the first copy after it. (engram_fetch
 * orders a channel's mark, copies and sync across its two threads.) */
static void *cpu_host_alloc(backend *be, size_t bytes) { return malloc(bytes ? bytes : 1); }
static void cpu_host_free(backend *be, void *p) { free(p); }
static void cpu_fetch_mark(backend *be, int ch) {
    cpu_backend *c = (cpu_backend *)be;
    c->fetch_t_mark[ch] = c->fetch_t_rows[ch] = util_now();
    c->fetch_marked[ch] = true;
}
static void cpu_fetch(backend *be, int ch, void *dst, const void *src, size_t bytes) {
    cpu_backend *c = (cpu_backend *)be;
    if (c->fetch_marked[ch]) c->fetch_t_rows[ch] = util_now(), c->fetch_marked[ch] = false;
    if (bytes) memcpy(dst, src, bytes);
}
static double cpu_fetch_sync(backend *be, int ch) {
    cpu_backend *c = (cpu_backend *)be;
    return c->fetch_t_rows[ch] - c->fetch_t_mark[ch];
}

static void cpu_decode_rows(backend *be, float *out, const void *rows, int dt, size_t stride, const int32_t *idx, int n,
                            int cols) {
    for (int i = 0; i < n; i++)
        engram_store_decode_row(dt, (uint32_t)cols, (const char *)rows + (size_t)idx[i] * stride,
                                out + (size_t)i * cols);
}

static void cpu_scatter_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes) {
    for (int i = 0; i < n; i++)
        memcpy((char *)dst + (size_t)slot[i] * row_bytes, (const char *)src + (size_t)i * row_bytes, row_bytes);
}

static void cpu_collect_rows(backend *be, void *dst, const void *src, const int32_t *slot, int n, size_t row_bytes) {
    for (int i = 0; i < n; i++)
        memcpy((char *)dst + (size_t)i * row_bytes, (const char *)src + (size_t)slot[i] * row_bytes, row_bytes);
}

static void cpu_fetch_back(backend *be, int ch, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes); /* at once: nothing issued before it is still running */
}

/* ---- sampling ---- */

/* The order sampler_sample sorts in, as one unsigned key: larger is earlier.
 * -0 is +0; NaNs sort beyond the infinities (their rows are flagged). */
static uint32_t sample_key(float f) {
    if (f == 0.0f) f = 0.0f;
    uint32_t b;
    memcpy(&b, &f, sizeof(b));
    return b & 0x80000000u ? ~b : b | 0x80000000u;
}

/* Orders ids by their logits in row (qsort_r's argument), ties by id: a
 * total order, so the sort's result is the one possible. */
static int sample_cmp(const void *a, const void *b, void *row) {
    const float *r = row;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    uint32_t x = sample_key(r[i]), y = sample_key(r[j]);
    if (x != y) return x > y ? -1 : 1;
    return i < j ? -1 : i > j;
}

static float sample_f(int32_t w) {
    float f;
    memcpy(&f, &w, sizeof(f));
    return f;
}

/* Step 1 of sample on the row that header h of desc names: its biases in
 * order, its penalties, then the grammar's mask (last, as the CUDA kernel:
 * a masked token is -inf whatever a penalty made of it), in place. Returns
 * the row. */
static float *sample_edit(float *logits, const int32_t *desc, const int32_t *h, int vocab, int stride) {
    float *row = logits + (size_t)h[SAMPLER_DESC_ROW] * stride;
    float rp = sample_f(h[SAMPLER_DESC_REP]), pp = sample_f(h[SAMPLER_DESC_PRES]), fp = sample_f(h[SAMPLER_DESC_FREQ]);
    const int32_t *bias = desc + h[SAMPLER_DESC_BIAS_OFF], *pen = desc + h[SAMPLER_DESC_PEN_OFF];
    for (int i = 0; i < h[SAMPLER_DESC_N_BIAS]; i++) row[bias[2 * i]] += sample_f(bias[2 * i + 1]);
    for (int i = 0; i < h[SAMPLER_DESC_N_PEN]; i++) { /* apply_penalties in sampler.c */
        float l = row[pen[2 * i]];
        int c = pen[2 * i + 1];
        if (rp != 1.0f) l = l > 0 ? l / rp : l * rp;
        l -= pp * (c > 0) + fp * (float)c;
        row[pen[2 * i]] = l;
    }
    if (h[SAMPLER_DESC_MASK_OFF] >= 0) /* a grammar's allowed tokens: the rest can never be sampled */
        sampler_apply_mask(row, vocab, (const uint32_t *)desc + h[SAMPLER_DESC_MASK_OFF]);
    return row;
}

/* A full sort of each row: the reference, not the fast way. */
static void cpu_sample(backend *be, void *out, float *logits, const int32_t *desc, int n, int vocab, int stride,
                       int n_cand) {
    int32_t *idx = malloc((size_t)vocab * sizeof(int32_t));
    if (!idx) {
        cpu__fail(be);
        return;
    }
    for (int r = 0; r < n; r++) {
        const int32_t *h = desc + (size_t)r * SAMPLER_DESC_WORDS;
        float *row = sample_edit(logits, desc, h, vocab, stride);
        float T = sample_f(h[SAMPLER_DESC_TEMP]);
        int32_t flags = 0;
        for (int i = 0; i < vocab; i++) {
            idx[i] = i;
            if (isnan(row[i])) flags |= SAMPLER_RESULT_NAN;
        }
        qsort_r(idx, (size_t)vocab, sizeof(int32_t), sample_cmp, row);
        int nf = h[SAMPLER_DESC_N_FULL], nv = nf < n_cand ? nf : n_cand;
        unsigned char *o = (unsigned char *)out + (size_t)r * SAMPLER_RESULT_BYTES(n_cand);
        int32_t *ids = (int32_t *)o;
        float *lg = (float *)(o + 4 * (size_t)n_cand);
        for (int i = 0; i < n_cand; i++) {
            ids[i] = i < nv ? idx[i] : -1;
            lg[i] = i < nv ? row[idx[i]] : 0.0f;
        }
        double tail = 0.0;
        if (nf > n_cand && T > 0.0f) {
            float mx = row[idx[0]] / T;
            for (int i = nv; i < vocab; i++) tail += expf(row[idx[i]] / T - mx);
        }
        memcpy(o + 8 * (size_t)n_cand, &tail, sizeof(tail));
        memcpy(o + 8 * (size_t)n_cand + 8, &nv, sizeof(nv));
        memcpy(o + 8 * (size_t)n_cand + 12, &flags, sizeof(flags));
    }
    free(idx);
}

typedef struct {
    int32_t *next;
    float *logits;
    const int32_t *desc;
    int first, vocab, stride;
} argmax_job;

/* sampler.c's argmax (a strictly larger logit wins, so ties go to the lowest
 * id) on row r after sample_edit, or -1 when it holds a NaN. With a mask only
 * the allowed ids are looked at: the others are -inf now, never larger than
 * row[best] and never NaN (id 0, where the scan starts, is looked at always). */
static void sample_argmax_row(void *ctx, int r) {
    const argmax_job *j = ctx;
    const int32_t *h = j->desc + (size_t)(j->first + r) * SAMPLER_DESC_WORDS;
    const float *row = sample_edit(j->logits, j->desc, h, j->vocab, j->stride);
    const uint32_t *mask = h[SAMPLER_DESC_MASK_OFF] >= 0 ? (const uint32_t *)j->desc + h[SAMPLER_DESC_MASK_OFF] : NULL;
    int32_t best = 0;
    bool nan = isnan(row[0]);
    for (int w = 0; w * 32 < j->vocab; w++) {
        int i0 = w * 32, i1 = i0 + 32 < j->vocab ? i0 + 32 : j->vocab;
        uint32_t bits = mask ? mask[w] : UINT32_MAX;
        if (bits == UINT32_MAX) {
            for (int i = i0; i < i1; i++) {
                nan |= isnan(row[i]);
                if (row[i] > row[best]) best = i;
            }
            continue;
        }
        for (; bits; bits &= bits - 1) {
            int i = i0 + __builtin_ctz(bits);
            if (i >= i1) break;
            nan |= isnan(row[i]);
            if (row[i] > row[best]) best = i;
        }
    }
    j->next[r] = nan ? -1 : best;
}

static void cpu_sample_argmax(backend *be, int32_t *next, float *logits, const int32_t *desc, int first, int n,
                              int vocab, int stride) {
    argmax_job j = {.next = next, .logits = logits, .desc = desc, .first = first, .vocab = vocab, .stride = stride};
    cpu__parallel_for(be, n, 1, sample_argmax_row, &j);
}

static void cpu_destroy(backend *be) {
    cpu_backend *c = (cpu_backend *)be;
    for (int i = 0; c->tscratch && i < cpu__pool_threads(c->pool); i++) free(c->tscratch[i]);
    free(c->tscratch);
    free(c->tscratch_bytes);
    cpu__pool_destroy(((cpu_backend *)be)->pool);
    free(((cpu_backend *)be)->moe_scratch);
    free(((cpu_backend *)be)->scratch);
    free(c->rope_cs);
    free(be);
}

static const backend_ops cpu_ops = {
    .name = "cpu",
    .weight_align = 64,
    .destroy = cpu_destroy,
    .kv_elem_bytes = sizeof(float),
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy2d = cpu_copy2d,
    .prepare = cpu_prepare,
    .release = cpu_release,
    .matmul = cpu__matmul,
    .matmul_grouped = cpu__matmul_grouped,
    .rmsnorm = cpu_rmsnorm,
    .embed = cpu_embed,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu__attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .gather_f32 = cpu_gather_f32,
    .argmax = cpu_argmax,
    .moe_route = cpu_moe_route,
    .moe_experts = cpu_moe_experts,
    .moe_pairs = cpu_moe_pairs,
    .moe_combine = cpu_moe_combine,
    .gather_rows = cpu_gather_rows,
    .engram_gate = cpu_engram_gate,
    .scale_rows = cpu_scale_rows,
    .short_conv = cpu_short_conv,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .fetch_mark = cpu_fetch_mark,
    .fetch = cpu_fetch,
    .fetch_wait = cpu_fetch_mark,
    .fetch_release = cpu_fetch_mark,
    .fetch_sync = cpu_fetch_sync,
    .decode_rows = cpu_decode_rows,
    .scatter_rows = cpu_scatter_rows,
    .collect_rows = cpu_collect_rows,
    .fetch_back = cpu_fetch_back,
    .sample = cpu_sample,
    .sample_argmax = cpu_sample_argmax,
    .take_failure = cpu_take_failure,
    .rmsnorm_plain = cpu__rmsnorm_plain,
    .hc_split = cpu__hc_split,
    .hc_merge = cpu__hc_merge,
    .hc_head = cpu__hc_head,
    .hc_weights = cpu__hc_weights,
    .hc_collapse = cpu__hc_collapse,
    .rope_tail = cpu__rope_tail,
    .dsv4_compress = cpu__dsv4_compress,
    .dsv4_index = cpu__dsv4_index,
    .dsv4_attention = cpu__dsv4_attention,
    .dsv41_compress = cpu__dsv41_compress,
    .dsv41_index_keys = cpu__dsv41_index_keys,
    .fake_quant_fp4 = cpu__fake_quant_fp4,
    .dsv41_index = cpu__dsv41_index,
    .swiglu_limit = cpu__swiglu_limit,
    .engram_v41_gate = cpu__engram_v41_gate,
};

backend *backend_cpu_create_with(const backend_params *p, char *err, size_t errlen) {
    backend_params bp = p ? *p : backend_default_params();
    int isa = cpu__isa_resolve(bp.cpu_isa);
    if (isa < 0) {
        snprintf(err, errlen, "cpu isa '%s' is not supported by this CPU", backend_cpu_isa_str(bp.cpu_isa));
        return NULL;
    }
    cpu_backend *c = calloc(1, sizeof(*c));
    if (!c || !(c->pool = cpu__pool_create(bp.cpu_threads > 0 ? bp.cpu_threads : omp_get_max_threads()))) {
        free(c);
        snprintf(err, errlen, "out of memory or threads");
        return NULL;
    }
    int n = cpu__pool_threads(c->pool);
    c->tscratch = calloc((size_t)n, sizeof(void *));
    c->tscratch_bytes = calloc((size_t)n, sizeof(size_t));
    if (!c->tscratch || !c->tscratch_bytes) {
        c->base.ops = &cpu_ops;
        cpu_destroy(&c->base);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->rope_T = -1;
    c->base.ops = &cpu_ops;
    c->base.params = bp;
    c->base.params.cpu_isa = isa;
    return &c->base;
}

backend *backend_cpu_create(void) {
    char err[128];
    return backend_cpu_create_with(NULL, err, sizeof(err));
}
