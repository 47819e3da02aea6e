/* The CPU reference backend: f32 arithmetic, weights converted from their
 * checkpoint dtype as they are read. Multi-token products go through OpenBLAS
 * (after widening non-f32 weights); single tokens use a threaded matrix-vector
 * loop that reads each weight once, which is what bounds decode. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "numeric.h"

/* Tokens at which a product switches from row-at-a-time dots to BLAS: below
 * it, widening a bf16 matrix for sgemm costs more than the dots it saves. */
#define GEMM_MIN_TOKENS 32

/* dot(x, row) over n, row in dtype t; eight partial sums so the compiler can
 * keep them in one vector register. */
static float dot_row(const float *x, const void *row, dtype t, int n) {
    float acc[8] = {0};
    int j = 0;
    if (t == DTYPE_F32) {
        const float *r = row;
        for (; j + 8 <= n; j += 8)
            for (int k = 0; k < 8; k++) acc[k] += x[j + k] * r[j + k];
        for (; j < n; j++) acc[0] += x[j] * r[j];
    } else if (t == DTYPE_BF16) {
        const uint16_t *r = row;
        for (; j + 8 <= n; j += 8)
            for (int k = 0; k < 8; k++) acc[k] += x[j + k] * bf16_to_f32(r[j + k]);
        for (; j < n; j++) acc[0] += x[j] * bf16_to_f32(r[j]);
    } else {
        const uint16_t *r = row;
        for (; j + 8 <= n; j += 8)
            for (int k = 0; k < 8; k++) acc[k] += x[j + k] * f16_to_f32(r[j + k]);
        for (; j < n; j++) acc[0] += x[j] * f16_to_f32(r[j]);
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static void cpu_matmul(float *out, const float *x, const weight *w, const float *bias, int T) {
    int n = w->rows, d = w->cols;
    size_t esz = dtype_size(w->dt);
    if (T < GEMM_MIN_TOKENS) {
        /* Each weight row is read from memory once and used for all T tokens. */
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++) {
            const void *row = (const char *)w->data + (size_t)i * d * esz;
            for (int t = 0; t < T; t++)
                out[(size_t)t * n + i] = dot_row(x + (size_t)t * d, row, w->dt, d) + (bias ? bias[i] : 0.0f);
        }
        return;
    }
    const float *wf = w->data;
    float *tmp = NULL;
    if (w->dt != DTYPE_F32) {
        tmp = malloc((size_t)n * d * sizeof(float));
        if (!tmp) abort(); /* a chunk's scratch is small next to the model; treat as fatal */
#pragma omp parallel for schedule(static)
        for (int i = 0; i < n; i++)
            numeric_to_f32(tmp + (size_t)i * d, (const char *)w->data + (size_t)i * d * esz, w->dt,
                           (size_t)d);
        wf = tmp;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, n, d, 1.0f, x, d, wf, d, 0.0f, out, n);
    free(tmp);
    if (bias)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < n; i++) out[(size_t)t * n + i] += bias[i];
}

static void cpu_rmsnorm(float *out, const float *x, const float *g, int T, int d, float eps) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * d;
        float *ot = out + (size_t)t * d;
        double ss = 0.0;
        for (int i = 0; i < d; i++) ss += (double)xt[i] * xt[i];
        float scale = 1.0f / sqrtf((float)(ss / d) + eps);
        for (int i = 0; i < d; i++) ot[i] = g[i] * (xt[i] * scale);
    }
}

static void cpu_embed(float *out, const weight *emb, const int32_t *ids, int T) {
    size_t esz = dtype_size(emb->dt);
    for (int t = 0; t < T; t++)
        numeric_to_f32(out + (size_t)t * emb->cols,
                       (const char *)emb->data + (size_t)ids[t] * emb->cols * esz, emb->dt,
                       (size_t)emb->cols);
}

/* Hugging Face's rotate_half layout: element i pairs with i + hd/2. The angle
 * is the f32 product pos * inv_freq, as transformers computes it. */
static void cpu_rope(float *x, const int32_t *pos, int T, int n_heads, int hd, const float *inv_freq) {
    int half = hd / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float a = (float)pos[t] * inv_freq[i];
            float c = cosf(a), s = sinf(a);
            for (int h = 0; h < n_heads; h++) {
                float *v = x + ((size_t)t * n_heads + h) * hd;
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
}

/* Row j of a paged cache (see backend.h). */
static inline size_t paged_row(const int *blocks, int bs, int j) {
    return (size_t)blocks[j / bs] * bs + (size_t)(j % bs);
}

static void cpu_attention(float *out, const float *q, const float *k, const float *v, const int *blocks,
                          int bs, int T, int pos0, int n_heads, int n_kv, int hd, int window) {
    int group = n_heads / n_kv, kvw = n_kv * hd;
    float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel
    {
        float *sc = malloc((size_t)(pos0 + T) * sizeof(float));
        if (!sc) abort();
#pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < n_heads; h++) {
                int i = pos0 + t, kh = h / group;
                int j0 = window > 0 && i - window + 1 > 0 ? i - window + 1 : 0;
                const float *qv = q + ((size_t)t * n_heads + h) * hd;
                float mx = -INFINITY;
                for (int j = j0; j <= i; j++) {
                    const float *kv = k + paged_row(blocks, bs, j) * kvw + (size_t)kh * hd;
                    float s = 0.0f;
                    for (int e = 0; e < hd; e++) s += qv[e] * kv[e];
                    sc[j] = s * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                double sum = 0.0;
                for (int j = j0; j <= i; j++) {
                    sc[j] = expf(sc[j] - mx);
                    sum += sc[j];
                }
                float inv = (float)(1.0 / sum);
                float *o = out + ((size_t)t * n_heads + h) * hd;
                memset(o, 0, (size_t)hd * sizeof(float));
                for (int j = j0; j <= i; j++) {
                    const float *vv = v + paged_row(blocks, bs, j) * kvw + (size_t)kh * hd;
                    float p = sc[j] * inv;
                    for (int e = 0; e < hd; e++) o[e] += p * vv[e];
                }
            }
        free(sc);
    }
}

static void cpu_swiglu(float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

static void cpu_add(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

static void cpu_gather_rows(float *out, const weight *table, const int64_t *rows, int T, int H) {
    int D = table->cols;
    size_t esz = dtype_size(table->dt);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            numeric_to_f32(out + ((size_t)t * H + h) * D,
                           (const char *)table->data + (size_t)rows[(size_t)t * H + h] * D * esz,
                           table->dt, (size_t)D);
}

static void cpu_engram_gate(float *gate, const float *nk, const float *nq, int T, int d) {
    for (int t = 0; t < T; t++) {
        float s = 0.0f;
        for (int i = 0; i < d; i++) s += nk[(size_t)t * d + i] * nq[(size_t)t * d + i];
        s /= sqrtf((float)d);
        float a = sqrtf(fmaxf(fabsf(s), 1e-6f));
        float z = s > 0 ? a : s < 0 ? -a : 0.0f; /* sign(0) = 0, as torch.sign */
        gate[t] = 1.0f / (1.0f + expf(-z));
    }
}

static void cpu_scale_rows(float *out, const float *x, const float *s, int T, int d) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++) out[(size_t)t * d + i] = s[t] * x[(size_t)t * d + i];
}

static void cpu_short_conv(float *out, const float *in, const float *w, int T, int C, int K, int dil) {
    int R = (K - 1) * dil;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            float y = 0.0f;
            for (int k = 0; k < K; k++) y += w[(size_t)c * K + k] * in[(size_t)(R + t - (K - 1 - k) * dil) * C + c];
            out[(size_t)t * C + c] = y / (1.0f + expf(-y));
        }
}

static const backend_ops cpu_ops = {
    .name = "cpu",
    .matmul = cpu_matmul,
    .rmsnorm = cpu_rmsnorm,
    .embed = cpu_embed,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .gather_rows = cpu_gather_rows,
    .engram_gate = cpu_engram_gate,
    .scale_rows = cpu_scale_rows,
    .short_conv = cpu_short_conv,
};

const backend_ops *backend_cpu(void) { return &cpu_ops; }
