/* The device view of a model on the CUDA backend (prepare and release):
 * every weight uploaded once, f16 matrices as bf16, bf16 and f32 ones in
 * their dtype (an f32 checkpoint computes in f32), those whose products keep
 * f32 activations (weight.f32_activations) in f32, embeddings and Engram
 * tables in their own dtype, DeepSeek-V4's FP4 routed experts as stored
 * (the MoE kernels dequantize them), other FP8/FP4 matrices dequantized, a
 * dense layer's bf16 gate and up in one buffer (view__glu); a copy of the
 * model struct points at them. */
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/numeric.h"
#include "engine/backend/cuda/cuda_internal.h"

typedef struct {
    model m; /* handed out as the view; first member */
    layer_weights *layers;
    model_engram eng;
    engram_weights *elayers;
    moe_weights *moe;  /* (n_layers) the sparse layers' experts, stacked on the device (view__moe) */
    weight *moe_mats;  /* (n_layers, 3 n_experts) their gate, up and down views */
    dsv4_weights dsv4; /* DeepSeek-V4's own tensors (view__dsv4) */
    dsv4_layer *dsv4_layers;
    void **dev; /* every device buffer of the view */
    int n_dev, cap_dev;
    struct {
        const void *host;
        int converted;
        void *dev;
    } *seen; /* uploads done, so a tensor used twice (tied embeddings) is uploaded once */
    int n_seen, cap_seen;
    size_t bytes;
} cuda_view;

static int view__keep(cuda_view *v, void *d) {
    if (v->n_dev == v->cap_dev) {
        int cap = v->cap_dev ? 2 * v->cap_dev : 256;
        void **p = realloc(v->dev, (size_t)cap * sizeof(*p));
        if (!p) return -1;
        v->dev = p;
        v->cap_dev = cap;
    }
    v->dev[v->n_dev++] = d;
    return 0;
}

static void *view__find(const cuda_view *v, const void *host, int converted) {
    for (int i = v->n_seen; i-- > 0;)
        if (v->seen[i].host == host && v->seen[i].converted == converted) return v->seen[i].dev;
    return NULL;
}

static int view__remember(cuda_view *v, const void *host, int converted, void *d) {
    if (v->n_seen == v->cap_seen) {
        int cap = v->cap_seen ? 2 * v->cap_seen : 256;
        void *p = realloc(v->seen, (size_t)cap * sizeof(*v->seen));
        if (!p) return -1;
        v->seen = p;
        v->cap_seen = cap;
    }
    v->seen[v->n_seen].host = host;
    v->seen[v->n_seen].converted = converted;
    v->seen[v->n_seen].dev = d;
    v->n_seen++;
    return 0;
}

static void view__oom(char *err, size_t errlen, const char *what, size_t bytes, size_t so_far) {
    size_t fr = 0, total = 0;
    cudaGetLastError();
    cudaMemGetInfo(&fr, &total);
    snprintf(err, errlen,
             "out of GPU memory uploading %s (%zu bytes) after %zu bytes of weights; %zu of %zu bytes free", what,
             bytes, so_far, fr, total);
}

/* bytes of device memory kept with the view (freed with it) into *out: 0,
 * or -1 with the message (out of GPU or host memory). */
static int view__alloc(cuda_view *v, size_t bytes, void **out, const char *what, char *err, size_t errlen) {
    void *d = NULL;
    if (cuda__malloc(&d, bytes ? bytes : 1) != cudaSuccess) {
        view__oom(err, errlen, what, bytes, v->bytes);
        return -1;
    }
    if (view__keep(v, d)) {
        cudaFree(d);
        return snprintf(err, errlen, "out of host memory"), -1;
    }
    v->bytes += bytes;
    *out = d;
    return 0;
}

/* Device copy of n elements of dtype t at host, as bf16 when to_bf16 (the
 * conversion runs on the GPU), else unchanged. *out NULL for a NULL host. */
static int view__upload(cuda_view *v, const void *host, dtype t, size_t n, int to_bf16, void **out,
                        const char *what, char *err, size_t errlen) {
    *out = NULL;
    if (!host) return 0;
    int conv = to_bf16 && t != DTYPE_BF16;
    void *d = view__find(v, host, conv);
    if (d) {
        *out = d;
        return 0;
    }
    if (t != DTYPE_F32 && t != DTYPE_BF16 && t != DTYPE_F16) {
        snprintf(err, errlen, "%s: dtype %s is not supported on CUDA", what, dtype_name(t));
        return -1;
    }
    size_t src_bytes = n * dtype_size(t), dst_bytes = conv ? n * 2 : src_bytes;
    if (view__alloc(v, dst_bytes, &d, what, err, errlen)) return -1;
    if (view__remember(v, host, conv, d)) { /* d is freed with the view */
        snprintf(err, errlen, "out of host memory");
        return -1;
    }
    cudaError_t e;
    if (!conv) {
        e = cudaMemcpy(d, host, src_bytes, cudaMemcpyHostToDevice);
    } else {
        void *tmp = NULL;
        if (cuda__malloc((void **)&tmp, src_bytes ? src_bytes : 1) != cudaSuccess) {
            view__oom(err, errlen, what, src_bytes, v->bytes);
            return -1;
        }
        e = cudaMemcpy(tmp, host, src_bytes, cudaMemcpyHostToDevice);
        if (e == cudaSuccess && kernels_to_bf16(d, tmp, cuda__dtype(t), n, NULL)) e = cudaGetLastError();
        if (e == cudaSuccess) e = cudaDeviceSynchronize();
        cudaFree(tmp);
    }
    if (e != cudaSuccess) {
        snprintf(err, errlen, "uploading %s: %s", what, cudaGetErrorString(e));
        return -1;
    }
    *out = d;
    return 0;
}

/* Device copy of bytes at host, never remembered in v->seen: a temporary
 * host buffer (a conversion made here; a freed temporary's address comes back
 * for the next one) or a tensor read once (an FP8 table). */
static int view__put(cuda_view *v, const void *host, size_t bytes, void **out, const char *what, char *err,
                     size_t errlen) {
    void *d;
    if (view__alloc(v, bytes, &d, what, err, errlen)) return -1;
    cudaError_t e = cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return snprintf(err, errlen, "uploading %s: %s", what, cudaGetErrorString(e)), -1;
    *out = d;
    return 0;
}

/* An FP8 or FP4 matrix dequantized on the host (model_weight_rows_to_f32,
 * exactly the CPU's values) into *out (malloc'd): bf16 when its scales are
 * powers of two (ue8m0), where every value (a 3- or 1-bit mantissa times
 * 2^k) is a bf16 exactly, else f32. The products of these matrices have no
 * FP8/FP4 kernels (the routed experts' do: view__stack keeps theirs packed):
 * this keeps the CPU's numbers at twice (FP8) or four times (FP4) the
 * memory. With f32 (a weight whose products keep f32 activations), any
 * matrix, bf16 and f16 ones too, widened to f32: cuBLAS multiplies bf16 only
 * by bf16, so f32 is how the product keeps the activations. */
static dtype view__dequant_dt(const weight *w, int f32) {
    return !f32 && w->scale_dt != DTYPE_F32 ? DTYPE_BF16 : DTYPE_F32;
}

static int view__dequantize(const weight *w, int f32, void **out, dtype *dt) {
    size_t n = (size_t)w->rows * w->cols;
    float *f = malloc(n * sizeof(float));
    if (!f) return -1;
    model_weight_rows_to_f32(f, w, 0, w->rows);
    *dt = view__dequant_dt(w, f32);
    if (*dt == DTYPE_BF16) {
        uint16_t *b = (uint16_t *)f; /* in place: element i's 2 bytes never pass element i's 4 */
        for (size_t i = 0; i < n; i++) b[i] = f32_to_bf16(f[i]);
    }
    *out = f;
    return 0;
}

/* A table the gathers read as stored, quantized: DeepSeek-V4.1's Engram rows
 * (e4m3 codes, one ue8m0 scale per 32 values of a row), codes and scales
 * uploaded side by side for kernels_gather_rows_fp8 to decode; any other
 * quantized table is refused. */
static int view__fp8_rows(cuda_view *v, const weight *w, weight *out, const char *what, char *err, size_t errlen) {
    *out = *w;
    if (w->fmt != WEIGHT_FP8 || w->scale_dt != DTYPE_F8_E8M0 || w->block_rows != 1 || w->block_cols != 32 ||
        w->row_base || w->scale_cols != w->cols / 32) {
        snprintf(err, errlen,
                 "%s: %s rows (%s with %s block scales) are not supported on CUDA; use --device cpu (FP8 rows with "
                 "one F8_E8M0 scale per 32 values are)", what, w->fmt == WEIGHT_FP8 ? "FP8" : "FP4",
                 dtype_name(w->dt), dtype_name(w->scale_dt));
        return -1;
    }
    void *codes, *scales;
    if (!w->data) return 0; /* no rows here (out->data stays NULL, as view__upload leaves it) */
    if (view__put(v, w->data, (size_t)w->rows * w->cols, &codes, what, err, errlen) ||
        view__put(v, w->scale, (size_t)w->scale_rows * w->scale_cols, &scales, what, err, errlen))
        return -1;
    out->data = codes;
    out->scale = scales;
    return 0;
}

/* An FP8 matrix stays FP8 on the device, half the bytes of its bf16
 * dequantization for the decode products to stream (cuda_ops.c: an FP8 matrix-vector kernel,
 * and past it the bf16 values expanded into scratch for cuBLAS), where that gives the bf16
 * path's numbers exactly: every element code * scale a bf16, which holds when no code is NaN
 * and every scale is a power of two in [2^-124, 2^7] (a 4-bit significand from 2^-9 up, times
 * 2^(b-127) for b in [3, 134]: at least 2^-133, bf16's smallest step, and the kernels' 2^(b-7)
 * a normal f32), with blocks of powers of two, the columns' at least 8. DeepSeek-V4's
 * checkpoints (ue8m0 scales per 128 x 128) pass. On by default (ENGRAM_FP8_PACKED=0: expanded to
 * bf16 on upload, as before): V4-Flash's two-layer decode measured +6.5-8.7% (bench/RESULTS.md).
 * Returns 1 with *out the packed device weight, 0 where the matrix is not packed, -1 on error. */
static int view__fp8_packed(cuda_view *v, const weight *w, weight *out, const char *what, char *err, size_t errlen) {
    const char *env = getenv("ENGRAM_FP8_PACKED");
    /* a row view (a tensor-parallel shard): the scale rows of the blocks it spans, from its first */
    int br = w->block_rows, sr0 = br > 0 ? w->row_base / br : 0, off = br > 0 ? w->row_base % br : 0;
    int nsr = br > 0 ? (off + w->rows + br - 1) / br : 0;
    if ((env && !strcmp(env, "0")) || w->fmt != WEIGHT_FP8 || w->f32_activations || !w->data || w->cols % 8 || br < 1 ||
        w->block_cols < 8 || (br & (br - 1)) || (w->block_cols & (w->block_cols - 1)) || sr0 + nsr > w->scale_rows ||
        w->scale_cols != (w->cols + w->block_cols - 1) / w->block_cols)
        return 0;
    size_t n = (size_t)w->rows * w->cols, ns = (size_t)nsr * w->scale_cols;
    const uint8_t *q = w->data;
    for (size_t i = 0; i < n; i++)
        if ((q[i] & 0x7f) == 0x7f) return 0; /* a NaN code */
    float *sf = malloc(ns * sizeof(float));
    if (!sf) return snprintf(err, errlen, "out of host memory"), -1;
    for (int r = 0; r < nsr; r++)
        for (int c = 0; c < w->scale_cols; c++) {
            float s = model_weight_scale(w, sr0 + r, c);
            uint32_t b;
            memcpy(&b, &s, 4);
            if ((b & 0x807fffffu) || (b >> 23) < 3 || (b >> 23) > 134) return free(sf), 0;
            sf[(size_t)r * w->scale_cols + c] = s;
        }
    void *codes, *scales;
    int rc = view__put(v, w->data, n, &codes, what, err, errlen) ||
             view__put(v, sf, ns * sizeof(float), &scales, what, err, errlen);
    free(sf);
    if (rc) return -1;
    *out = *w;
    out->data = codes, out->scale = scales, out->scale_dt = DTYPE_F32, out->scale_rows = nsr, out->row_base = off;
    return 1;
}

/* A matrix for matmul (bf16 or f32 on the device: f16 becomes bf16, FP8/FP4
 * bf16 or f32, one that keeps f32 activations f32) or, with keep_dtype, for
 * row gathers (its own dtype). */
static int view__weight(cuda_view *v, const weight *w, weight *out, int keep_dtype, const char *what, char *err,
                        size_t errlen) {
    *out = *w;
    void *d;
    if (w->fmt != WEIGHT_DENSE && keep_dtype) { /* rows gathered as stored: only Engram tables (view__fp8_rows) */
        snprintf(err, errlen, "%s: %s rows (%s with block scales) are not supported on CUDA; use --device cpu",
                 what, w->fmt == WEIGHT_FP8 ? "FP8" : "FP4", dtype_name(w->dt));
        return -1;
    }
    /* a product's matrix: FP8/FP4 dequantized, exactly; one whose products keep f32 activations
     * (weight.f32_activations) in f32, as cu_matmul multiplies f32 activations only by f32 weights
     * from 3 tokens on (bf16 ones by activations rounded to bf16) */
    int widen = !keep_dtype && w->f32_activations && w->data && w->dt != DTYPE_F32;
    int packed = view__fp8_packed(v, w, out, what, err, errlen);
    if (packed) return packed < 0 ? -1 : 0;
    if (w->fmt != WEIGHT_DENSE || widen) {
        void *h;
        dtype dt;
        if (view__dequantize(w, widen, &h, &dt)) return snprintf(err, errlen, "out of host memory"), -1;
        int rc = view__put(v, h, (size_t)w->rows * w->cols * dtype_size(dt), &d, what, err, errlen);
        free(h);
        if (rc) return -1;
        out->data = d, out->dt = dt, out->fmt = WEIGHT_DENSE, out->scale = NULL;
        return 0;
    }
    int conv = !keep_dtype && w->dt == DTYPE_F16;
    if (view__upload(v, w->data, w->dt, (size_t)w->rows * w->cols, conv, &d, what, err, errlen)) return -1;
    out->data = d;
    if (conv && w->data) out->dt = DTYPE_BF16;
    return 0;
}

static int view__vec(cuda_view *v, const float *p, size_t n, const float **out, const char *what, char *err,
                     size_t errlen) {
    void *d;
    if (view__upload(v, p, DTYPE_F32, n, 0, &d, what, err, errlen)) return -1;
    *out = d;
    return 0;
}

/* A dense layer's gate and up, bf16 on the host and of one shape, uploaded into one (2 N, cols) buffer,
 * up's rows right after gate's: cu_matmul_ffn can then run both as one product (ENGRAM_GLU_STACK=1;
 * cu_glu_stacked checks the layout). Only where gate's bytes are a multiple of 256, so that up starts
 * as aligned as an allocation of its own (cuBLAS picks its kernels by alignment too: the same bits
 * with the stack unused). Any other pair is uploaded as two weights. */
static int view__glu(cuda_view *v, const weight *wg, const weight *wu, weight *og, weight *ou, int l, char *err,
                     size_t errlen) {
    char what[64];
    int stack = wg->fmt == WEIGHT_DENSE && wu->fmt == WEIGHT_DENSE && wg->dt == DTYPE_BF16 &&
                wu->dt == DTYPE_BF16 && !wg->f32_activations && !wu->f32_activations && wg->data && wu->data &&
                wg->rows == wu->rows && wg->cols == wu->cols && (size_t)wg->rows * wg->cols * 2 % 256 == 0 &&
                !view__find(v, wg->data, 0) &&
                !view__find(v, wu->data, 0);
    if (!stack) {
        snprintf(what, sizeof(what), "layer %d w_gate", l);
        if (view__weight(v, wg, og, 0, what, err, errlen)) return -1;
        snprintf(what, sizeof(what), "layer %d w_up", l);
        return view__weight(v, wu, ou, 0, what, err, errlen);
    }
    size_t each = (size_t)wg->rows * wg->cols * 2;
    void *d;
    snprintf(what, sizeof(what), "layer %d w_gate and w_up", l);
    if (view__alloc(v, 2 * each, &d, what, err, errlen)) return -1;
    cudaError_t e = cudaMemcpy(d, wg->data, each, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy((char *)d + each, wu->data, each, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return snprintf(err, errlen, "uploading %s: %s", what, cudaGetErrorString(e)), -1;
    *og = *wg, *ou = *wu;
    og->data = d, ou->data = (char *)d + each;
    return 0;
}

void cu_release(backend *be, model *view, model *m) {
    cuda_backend *g = cuda__of(be);
    (void)m;
    if (!view) return;
    cuda_view *v = (cuda_view *)view;
    graphs__clear(g);
    cudaDeviceSynchronize();
    for (int i = 0; i < v->n_dev; i++) cudaFree(v->dev[i]);
    free(v->dev);
    free(v->seen);
    free(v->layers);
    free(v->elayers);
    free(v->moe);
    free(v->moe_mats);
    free(v->dsv4_layers);
    free(v);
}

static int view__engram(cuda_view *v, const model *m, char *err, size_t errlen) {
    const model_engram *e = m->engram;
    size_t d = (size_t)m->cfg.hidden_size;
    char what[96];
    v->eng = *e;
    v->elayers = calloc((size_t)e->n_layers, sizeof(*v->elayers));
    if (!v->elayers) return snprintf(err, errlen, "out of host memory"), -1;
    v->eng.layers = v->elayers;
    for (int i = 0; i < e->n_layers; i++) {
        const engram_weights *w = &e->layers[i];
        engram_weights *o = &v->elayers[i];
        *o = *w;
        int G = e->hc_mult;
#define EW(field, keep)                                                                                     \
    (snprintf(what, sizeof(what), "engram layer %d " #field, w->layer_id),                                   \
     view__weight(v, &w->field, &o->field, keep, what, err, errlen))
#define EV(field, n)                                                                                        \
    (snprintf(what, sizeof(what), "engram layer %d " #field, w->layer_id),                                   \
     view__vec(v, w->field, n, &o->field, what, err, errlen))
        if (w->store) { /* rows come from the host store, never from a device table */
            o->table.data = NULL;
        } else if (w->table.fmt != WEIGHT_DENSE) { /* DeepSeek-V4.1's FP8 rows, decoded by the gathers */
            snprintf(what, sizeof(what), "engram layer %d table", w->layer_id);
            if (view__fp8_rows(v, &w->table, &o->table, what, err, errlen)) return -1;
        } else if (EW(table, 1)) {
            return -1;
        }
        if (EW(w_value, 0) || EV(b_value, d) || EV(conv_w, (size_t)G * d * e->kernel_size)) return -1;
        if (EW(w_kv, 0) || EV(qk, (size_t)G * d)) return -1; /* DeepSeek-V4.1's fused projection and gate weights */
        for (int gi = 0; gi < G; gi++)
            if (EW(w_key[gi], 0) || EV(b_key[gi], d) || EV(norm1[gi], d) || EV(norm2[gi], d) ||
                EV(conv_norm[gi], d))
                return -1;
#undef EW
#undef EV
    }
    v->m.engram = &v->eng;
    return 0;
}

/* Rows of FP4 scales of w (one row of scales a row of w: block_rows 1). */
static const uint8_t *view__fp4_scales(const weight *w) {
    return (const uint8_t *)w->scale + (size_t)w->row_base * w->scale_cols;
}

/* Whether w, an expert's FP4 matrix, stays packed on the device (codes and
 * scales as stored, dequantized by the MoE kernels): DeepSeek-V4's layout,
 * one ue8m0 scale per 32 values of a row. U8 scales hold the same exponent,
 * but their 255 is +inf where the kernels read F8_E8M0's NaN: such a matrix
 * is expanded instead. ENGRAM_FP4_EXPERTS=bf16 expands every one (A/B
 * timings, and a fallback). */
static int view__fp4_packed(const weight *w) {
    if (w->fmt != WEIGHT_FP4 || w->block_rows != 1 || w->block_cols != 32 || w->cols % 32 ||
        w->scale_cols != w->cols / 32 || !w->data)
        return 0;
    const char *force = getenv("ENGRAM_FP4_EXPERTS");
    if (force && !strcmp(force, "bf16")) return 0;
    if (w->scale_dt == DTYPE_F8_E8M0) return 1;
    return w->scale_dt == DTYPE_U8 && !memchr(view__fp4_scales(w), 255, (size_t)w->rows * w->scale_cols);
}

/* A sparse layer's experts, stacked so that one launch covers them all
 * (cuda_moe.c relies on this layout): gate and up of expert e as rows
 * [2 e I, 2 e I + I) and [2 e I + I, 2 (e + 1) I) of one (2 E I, d) matrix,
 * the down products as one (E d, I) matrix, in the weights' dtype (f16 as
 * bf16), FP4 ones packed as stored (view__fp4_packed: codes (rows, cols / 2)
 * bytes and their scales (rows, cols / 32) stacked the same way), other
 * FP8/FP4 ones dequantized. *o: the first matrix of the stack as the device
 * holds it; the others follow it at cuda__expert_stride. The router stays f32
 * whatever the checkpoint: its logits pick the experts, and f32 keeps the
 * choice the CPU's. */
static int view__stack(cuda_view *v, const weight *const *ws, int n, weight *o, const char *what, char *err,
                       size_t errlen) {
    const weight *w0 = ws[0];
    size_t each = (size_t)w0->rows * w0->cols;
    int packed = view__fp4_packed(w0);
    for (int i = 0; i < n; i++)
        if (ws[i]->fmt != w0->fmt || ws[i]->dt != w0->dt || (size_t)ws[i]->rows * ws[i]->cols != each || !ws[i]->data ||
            (ws[i]->fmt != WEIGHT_DENSE && ws[i]->scale_dt != w0->scale_dt) ||
            (packed && (!view__fp4_packed(ws[i]) || ws[i]->rows != w0->rows))) {
            snprintf(err, errlen, "%s: experts of mixed formats are not supported on CUDA; use --device cpu", what);
            return -1;
        }
    *o = *w0;
    o->row_base = 0;
    if (packed) { /* codes and scales side by side, copied as they are */
        size_t qb = each / 2, sb = (size_t)w0->rows * w0->scale_cols;
        void *q, *sc;
        if (view__alloc(v, n * qb, &q, what, err, errlen) || view__alloc(v, n * sb, &sc, what, err, errlen)) return -1;
        cudaError_t e = cudaSuccess;
        for (int i = 0; i < n && e == cudaSuccess; i++) {
            e = cudaMemcpy((char *)q + i * qb, ws[i]->data, qb, cudaMemcpyHostToDevice);
            if (e == cudaSuccess) e = cudaMemcpy((char *)sc + i * sb, view__fp4_scales(ws[i]), sb, cudaMemcpyHostToDevice);
        }
        if (e != cudaSuccess) return snprintf(err, errlen, "uploading %s: %s", what, cudaGetErrorString(e)), -1;
        o->data = q, o->scale = sc;
        o->scale_dt = DTYPE_F8_E8M0; /* a U8 one has no 255 (view__fp4_packed): the same values */
        o->scale_rows = w0->rows;
        return 0;
    }
    dtype t = w0->dt;
    if (w0->fmt == WEIGHT_DENSE && t != DTYPE_F32 && t != DTYPE_BF16 && t != DTYPE_F16) {
        snprintf(err, errlen, "%s: dtype %s is not supported on CUDA", what, dtype_name(t));
        return -1;
    }
    /* the device dtype: f16 as bf16; FP8/FP4 dequantized (view__dequantize) */
    int conv = w0->fmt == WEIGHT_DENSE && t == DTYPE_F16;
    dtype dev_t = w0->fmt != WEIGHT_DENSE ? view__dequant_dt(w0, 0) : conv ? DTYPE_BF16 : t;
    size_t dst_es = dtype_size(dev_t), bytes = (size_t)n * each * dst_es;
    void *d, *tmp = NULL;
    if (view__alloc(v, bytes, &d, what, err, errlen)) return -1;
    if (conv && cuda__malloc((void **)&tmp, each * 2) != cudaSuccess) {
        view__oom(err, errlen, what, each * 2, v->bytes);
        return -1;
    }
    cudaError_t e = cudaSuccess;
    for (int i = 0; i < n && e == cudaSuccess; i++) {
        char *dst = (char *)d + (size_t)i * each * dst_es;
        if (ws[i]->fmt != WEIGHT_DENSE) {
            void *h;
            dtype ht;
            if (view__dequantize(ws[i], 0, &h, &ht)) {
                cudaFree(tmp);
                return snprintf(err, errlen, "out of host memory"), -1;
            }
            e = cudaMemcpy(dst, h, each * dst_es, cudaMemcpyHostToDevice);
            free(h);
        } else if (!conv) {
            e = cudaMemcpy(dst, ws[i]->data, each * dst_es, cudaMemcpyHostToDevice);
        } else {
            e = cudaMemcpy(tmp, ws[i]->data, each * 2, cudaMemcpyHostToDevice);
            if (e == cudaSuccess && kernels_to_bf16(dst, tmp, cuda__dtype(t), each, NULL)) e = cudaGetLastError();
            if (e == cudaSuccess) e = cudaDeviceSynchronize();
        }
    }
    cudaFree(tmp);
    if (e != cudaSuccess) return snprintf(err, errlen, "uploading %s: %s", what, cudaGetErrorString(e)), -1;
    o->data = d, o->dt = dev_t, o->fmt = WEIGHT_DENSE, o->scale = NULL;
    return 0;
}

/* Expert e's matrix of a stack whose first one is w0 (view__stack); in is
 * the host matrix it stands for (its name and shape). */
static weight view__nth(const weight *w0, size_t e, const weight *in) {
    weight o = *w0;
    o.rows = in->rows, o.cols = in->cols;
    o.data = (const char *)w0->data + e * cuda__expert_stride(w0);
    if (w0->fmt == WEIGHT_FP4) o.scale = (const uint8_t *)w0->scale + e * (size_t)w0->rows * w0->scale_cols;
    return o;
}

static int view__moe(cuda_view *v, int l, const moe_weights *in, moe_weights *o, char *err, size_t errlen) {
    int E = in->n_experts;
    char what[64];
    *o = *in;
    snprintf(what, sizeof(what), "layer %d shared expert", l); /* DeepSeek-V4's: plain products (forward_dsv4.c) */
    if (in->shared && (view__weight(v, &in->sh_gate, &o->sh_gate, 0, what, err, errlen) ||
                       view__weight(v, &in->sh_up, &o->sh_up, 0, what, err, errlen) ||
                       view__weight(v, &in->sh_down, &o->sh_down, 0, what, err, errlen)))
        return -1;
    weight *m = v->moe_mats + (size_t)l * 3 * E;
    o->gate = m, o->up = m + E, o->down = m + 2 * E;
    const weight **ws = malloc((size_t)2 * E * sizeof(*ws));
    if (!ws) return snprintf(err, errlen, "out of host memory"), -1;
    for (int e = 0; e < E; e++) ws[2 * e] = &in->gate[e], ws[2 * e + 1] = &in->up[e];
    weight gu, dn;
    snprintf(what, sizeof(what), "layer %d experts' gate and up", l);
    int rc = view__stack(v, ws, 2 * E, &gu, what, err, errlen);
    for (int e = 0; e < E && !rc; e++) ws[e] = &in->down[e];
    snprintf(what, sizeof(what), "layer %d experts' down", l);
    if (!rc) rc = view__stack(v, ws, E, &dn, what, err, errlen);
    free(ws);
    if (rc) return -1;
    /* one activation dtype for both products (cuda_moe.c): f32 with f32 weights, else bf16 */
    if ((gu.fmt == WEIGHT_DENSE && gu.dt == DTYPE_F32) != (dn.fmt == WEIGHT_DENSE && dn.dt == DTYPE_F32)) {
        snprintf(err, errlen, "layer %d experts: gate/up and down of mixed formats are not supported on CUDA; use "
                 "--device cpu", l);
        return -1;
    }
    for (int e = 0; e < E; e++) {
        o->gate[e] = view__nth(&gu, 2 * (size_t)e, &in->gate[e]);
        o->up[e] = view__nth(&gu, 2 * (size_t)e + 1, &in->up[e]);
        o->down[e] = view__nth(&dn, (size_t)e, &in->down[e]);
    }
    /* the router in f32: converted here, on the host */
    const weight *r = &in->router;
    size_t rn = (size_t)r->rows * r->cols;
    float *rf = malloc(rn * sizeof(float));
    if (!rf) return snprintf(err, errlen, "out of host memory"), -1;
    model_weight_rows_to_f32(rf, r, 0, r->rows);
    void *rd;
    snprintf(what, sizeof(what), "layer %d router", l);
    rc = view__put(v, rf, rn * sizeof(float), &rd, what, err, errlen);
    free(rf);
    if (rc) return -1;
    o->router.data = rd, o->router.dt = DTYPE_F32, o->router.fmt = WEIGHT_DENSE;
    snprintf(what, sizeof(what), "layer %d expert bias", l);
    if (view__vec(v, in->bias, (size_t)E, &o->bias, what, err, errlen)) return -1;
    if (in->tid2eid) { /* int32 ids: copied as 4-byte words */
        void *td;
        snprintf(what, sizeof(what), "layer %d tid2eid", l);
        if (view__upload(v, in->tid2eid, DTYPE_F32, (size_t)in->tid_rows * in->top_k, 0, &td, what, err, errlen))
            return -1;
        o->tid2eid = td;
    }
    return 0;
}

/* DeepSeek-V4's tensors beyond layer_weights (model.h, dsv4_weights): the
 * hyper-connections, the low-rank attention, the compressors and the
 * indexer, each uploaded as the dense ones are. */
static int view__dsv4(cuda_view *v, const model *m, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    const dsv4_config *k = &c->dsv4;
    int N = k->hc_mult, D = c->head_dim, dI = k->index_head_dim;
    size_t mixw = (size_t)(2 + N) * N;
    char what[64];
    v->dsv4 = *m->dsv4;
    v->dsv4_layers = calloc((size_t)c->n_layers, sizeof(*v->dsv4_layers));
    if (!v->dsv4_layers) return snprintf(err, errlen, "out of host memory"), -1;
    v->dsv4.layers = v->dsv4_layers;
#define DW(in, out, name) (snprintf(what, sizeof(what), "layer %d %s", l, name), view__weight(v, in, out, 0, what, err, errlen))
#define DV(in, out, n, name) (snprintf(what, sizeof(what), "layer %d %s", l, name), view__vec(v, in, n, out, what, err, errlen))
    for (int l = 0; l < c->n_layers; l++) {
        const dsv4_layer *L = &m->dsv4->layers[l];
        dsv4_layer *o = &v->dsv4_layers[l];
        *o = *L;
        int rate = k->rate[l], csa = k->attn[l] == DSV4_CSA;
        size_t cw = csa ? 2 * (size_t)D : (size_t)D;
        if (DW(&L->hc_attn_fn, &o->hc_attn_fn, "hc_attn_fn") || DW(&L->hc_ffn_fn, &o->hc_ffn_fn, "hc_ffn_fn") ||
            DV(L->hc_attn_base, &o->hc_attn_base, mixw, "hc_attn_base") ||
            DV(L->hc_attn_scale, &o->hc_attn_scale, 3, "hc_attn_scale") ||
            DV(L->hc_ffn_base, &o->hc_ffn_base, mixw, "hc_ffn_base") ||
            DV(L->hc_ffn_scale, &o->hc_ffn_scale, 3, "hc_ffn_scale") || DW(&L->wq_a, &o->wq_a, "wq_a") ||
            DW(&L->wq_b, &o->wq_b, "wq_b") || DW(&L->wkv, &o->wkv, "wkv") || DW(&L->wo_a, &o->wo_a, "wo_a") ||
            DW(&L->wo_b, &o->wo_b, "wo_b") || DV(L->q_norm, &o->q_norm, (size_t)k->q_lora_rank, "q_norm") ||
            DV(L->kv_norm, &o->kv_norm, (size_t)D, "kv_norm") || DV(L->sinks, &o->sinks, (size_t)c->n_heads, "sinks"))
            return -1;
        if (rate && (DW(&L->comp.wkv, &o->comp.wkv, "compressor wkv") ||
                     DW(&L->comp.wgate, &o->comp.wgate, "compressor wgate") ||
                     DV(L->comp.ape, &o->comp.ape, (size_t)rate * cw, "compressor ape") ||
                     DV(L->comp.norm, &o->comp.norm, (size_t)D, "compressor norm")))
            return -1;
        if (rate && csa && (DW(&L->icomp.wkv, &o->icomp.wkv, "indexer wkv") ||
                            DW(&L->icomp.wgate, &o->icomp.wgate, "indexer wgate") ||
                            DV(L->icomp.ape, &o->icomp.ape, (size_t)rate * 2 * dI, "indexer ape") ||
                            DV(L->icomp.norm, &o->icomp.norm, (size_t)dI, "indexer norm")))
            return -1;
        /* the indexer's queries (CSA, V4.1 index sources) and V4.1's index-key owners' wk and k_norm: a
         * layer without them holds NULL tensors, which stay NULL */
        if (DW(&L->iwq_b, &o->iwq_b, "indexer wq_b") || DW(&L->iweights, &o->iweights, "indexer weights") ||
            DW(&L->iwk, &o->iwk, "indexer wk") || DV(L->ik_norm, &o->ik_norm, (size_t)dI, "indexer k_norm"))
            return -1;
    }
#undef DW
#undef DV
    if (view__weight(v, &m->dsv4->hc_head_fn, &v->dsv4.hc_head_fn, 0, "hc_head_fn", err, errlen) ||
        view__vec(v, m->dsv4->hc_head_base, (size_t)N, &v->dsv4.hc_head_base, "hc_head_base", err, errlen) ||
        view__vec(v, m->dsv4->hc_head_scale, 1, &v->dsv4.hc_head_scale, "hc_head_scale", err, errlen))
        return -1;
    v->m.dsv4 = &v->dsv4;
    return 0;
}

model *cu_prepare(backend *be, model *m, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    cuda_view *v = calloc(1, sizeof(*v));
    if (!v) return snprintf(err, errlen, "out of host memory"), NULL;
    v->m = *m;
    v->m.files = NULL;
    v->m.n_files = 0;
    v->m.owned = NULL;
    v->m.n_owned = v->m.cap_owned = 0;
    v->m.engram = NULL;
    v->m.dsv4 = NULL;
    size_t d = (size_t)c->hidden_size, hd = (size_t)c->head_dim, ff = (size_t)c->intermediate_size;
    size_t qw = (size_t)c->n_heads * hd, kvw = (size_t)c->n_kv_heads * hd;
    v->layers = calloc((size_t)c->n_layers, sizeof(*v->layers));
    if (!v->layers) {
        snprintf(err, errlen, "out of host memory");
        goto fail;
    }
    v->m.layers = v->layers;
    if (view__weight(v, &m->embed, &v->m.embed, 1, "embed_tokens", err, errlen) ||
        view__weight(v, &m->lm_head, &v->m.lm_head, 0, "lm_head", err, errlen) ||
        view__vec(v, m->final_norm, d, &v->m.final_norm, "norm", err, errlen))
        goto fail;
    if (m->engram && view__engram(v, m, err, errlen)) goto fail;
    if (m->dsv4 && view__dsv4(v, m, err, errlen)) goto fail;
    if (c->moe.n_experts) {
        v->moe = calloc((size_t)c->n_layers, sizeof(*v->moe));
        v->moe_mats = calloc((size_t)c->n_layers * 3 * c->moe.n_experts, sizeof(*v->moe_mats));
        if (!v->moe || !v->moe_mats) {
            snprintf(err, errlen, "out of host memory");
            goto fail;
        }
    }
    for (int l = 0; l < c->n_layers; l++) {
        const layer_weights *L = &m->layers[l];
        layer_weights *o = &v->layers[l];
        char what[64];
        *o = *L;
#define LW(field) (snprintf(what, sizeof(what), "layer %d " #field, l), view__weight(v, &L->field, &o->field, 0, what, err, errlen))
#define LV(field, n) (snprintf(what, sizeof(what), "layer %d " #field, l), view__vec(v, L->field, n, &o->field, what, err, errlen))
        if (LW(wq) || LW(wk) || LW(wv) || LW(wo) || view__glu(v, &L->w_gate, &L->w_up, &o->w_gate, &o->w_up, l, err,
                                                             errlen) || LW(w_down) ||
            LV(attn_norm, d) || LV(ffn_norm, d) || LV(bq, qw) || LV(bk, kvw) || LV(bv, kvw) || LV(bo, d) ||
            LV(q_norm, hd) || LV(k_norm, hd) || LV(b_gate, ff) || LV(b_up, ff) || LV(b_down, d))
            goto fail;
#undef LW
#undef LV
        if (L->engram) o->engram = &v->elayers[L->engram - m->engram->layers];
        if (L->moe) {
            if (view__moe(v, l, L->moe, &v->moe[l], err, errlen)) goto fail;
            o->moe = &v->moe[l];
        }
    }
    return &v->m;
fail:
    cu_release(be, &v->m, m);
    return NULL;
}
