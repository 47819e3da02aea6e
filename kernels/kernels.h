/* C ABI of the CUDA kernels. One .cu per op family; every launcher takes a
 * stream (cudaStream_t passed as void *) and returns 0 or a negative
 * kernels_status, checking the launch. Numerics follow the CPU reference in
 * engine/backend/cpu/backend_cpu.c: f32 accumulation. */
#ifndef KERNELS_H
#define KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    KERNELS_OK = 0,
    KERNELS_ERR_LAUNCH = -1, /* the launch or the CUDA runtime reported an error */
    KERNELS_ERR_ARG = -2,    /* a size or pointer argument is invalid */
} kernels_status;

const char *kernels_status_str(int status);

/* Element types of tables and weights (the codes of the engine's dtype enum
 * for these three). */
typedef enum { KERNELS_F32 = 0, KERNELS_BF16 = 1, KERNELS_F16 = 2 } kernels_dtype;

/* ---- elementwise.cu ---- */

/* dst (n) bf16 = src (n) of dtype dt, rounded to nearest even. */
int kernels_to_bf16(void *dst, const void *src, int dt, size_t n, void *stream);

/* out (rows, cols) += bias (cols) on every row. */
int kernels_bias_add_f32(float *out, const float *bias, int rows, int cols, void *stream);

/* out[t * ostride + i] = s[t] * x[t * xstride + i] for t < T, i < d; out may alias x. */
int kernels_scale_rows_f32(float *out, size_t ostride, const float *x, size_t xstride, const float *s, int T, int d,
                           void *stream);

/* out (T, d) = rows ids[t] of table (., d) of dtype dt, as f32. */
int kernels_embed(float *out, const void *table, int dt, const int *ids, int T, int d, void *stream);

/* out (n, d) = rows idx[i] of x (., d). */
int kernels_gather_f32(float *out, const float *x, const int *idx, int n, int d, void *stream);

/* out (T, H*D) = table rows rows[t*H + h] (table (., D) of dtype dt) as f32. */
int kernels_gather_rows(float *out, const void *table, int dt, const long long *rows, int T, int H, int D,
                        void *stream);
int kernels_gather_rows_bf16(float *out, const void *table, const long long *rows, int T, int H, int D,
                             void *stream);

/* out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w[:], for r < rows.
 * out, x: (rows, dim) f32 device memory; w: (dim) f32. out may alias x. */
int kernels_rmsnorm_f32(float *out, const float *x, const float *w, int rows, int dim,
                        float eps, void *stream);
/* out (rows, dim) bf16 = kernels_rmsnorm_f32's rows, each element's f32 value rounded to nearest even:
 * bit for bit the f32 norm then kernels_to_bf16, in one pass (out must not alias x). */
int kernels_rmsnorm_bf16(void *out, const float *x, const float *w, int rows, int dim, float eps, void *stream);

/* In place on x (T, n_heads, hd): rotate halves by pos[t] * inv_freq (hd/2). */
int kernels_rope_f32(float *x, const int *pos, int T, int n_heads, int hd, const float *inv_freq, void *stream);

/* gate (n) = silu(gate) * up */
int kernels_swiglu_f32(float *gate, const float *up, size_t n, void *stream);
/* h (T, n) bf16 = silu(g) * u rounded to nearest even, g = gate[t * ld + i], u = up[t * ld + i]: bit for
 * bit kernels_swiglu_f32 then kernels_to_bf16 (the same f32 value, rounded once), in one pass. ld >= n:
 * n for two (T, n) products, 2 n for one stacked [gate | up] product (up = gate + n). */
int kernels_swiglu_bf16(void *h, const float *gate, const float *up, int T, int n, size_t ld, void *stream);

/* x (n) += y (n) */
int kernels_add_f32(float *x, const float *y, size_t n, void *stream);

/* gate (T) = sigmoid(sign(s) sqrt(max(|s|, 1e-6))), s = dot(nk[t], nq[t]) / sqrt(d). */
/* Engram rows as a host store keeps them (the values of engram_store_dtype). */
enum { KERNELS_ROW_F32 = 1, KERNELS_ROW_BF16 = 2, KERNELS_ROW_F16 = 3, KERNELS_ROW_FP8_UE8M0 = 4 };

/* out[i*cols + j] = value j of the row at rows + idx[i]*stride (dtype dt, a
 * KERNELS_ROW_*), decoded to f32 bit-exactly as engram_store_decode_row does
 * (FP8: e4m3 times the block's 2^(byte-127), one f32 rounding), for i < n. */
int kernels_engram_decode_rows(float *out, const void *rows, int dt, size_t stride, const int *idx, int n, int cols,
                               void *stream);

/* out (T, H*D) = table rows rows[t*H + h] of a device table of FP8 rows
 * (DeepSeek-V4.1's Engram): e4m3 codes (., D) and ue8m0 scales (., D/32),
 * value = code times its 32 values' scale (one f32 rounding). D % 32 == 0. */
int kernels_gather_rows_fp8(float *out, const void *codes, const void *scales, const long long *rows, int T, int H,
                            int D, void *stream);

/* Row slot[i] of dst = row i of src (row_bytes each), for i < n. */
int kernels_scatter_rows(void *dst, const void *src, const int *slot, int n, size_t row_bytes, void *stream);
/* Row i of dst = row slot[i] of src (row_bytes each), for i < n: the inverse. */
int kernels_collect_rows(void *dst, const void *src, const int *slot, int n, size_t row_bytes, void *stream);

int kernels_engram_gate_f32(float *gate, const float *nk, const float *nq, int T, int d, void *stream);

/* Depthwise causal conv + SiLU over in ((K-1)*dil + T, C): out (T, C). */
int kernels_short_conv_f32(float *out, const float *in, const float *w, int T, int C, int K, int dil,
                           void *stream);

/* The same over a step of n_seqs sequences: in (T, C) holds this step's
 * inputs, sequence s owning tokens seq_start[s] .. seq_start[s+1]-1 (tok_seq
 * maps token to sequence); inputs before a sequence's first token come from
 * its history seq_hist[s] + hist_off (R = (K-1)*dil rows of C). Then each
 * history is replaced by the last R rows of (history, inputs). seq_hist is a
 * device array of device pointers. */
int kernels_short_conv_batch_f32(float *out, const float *in, const float *w, const int *seq_start,
                                 const int *tok_seq, float *const *seq_hist, size_t hist_off, int n_seqs, int T,
                                 int C, int K, int dil, void *stream);

/* ---- attention.cu ---- */

/* Rows slot[t] of kc, vc ((rows, kvw) bf16) = k, v (T, kvw) f32, rounded. */
int kernels_kv_store_bf16(void *kc, void *vc, const float *k, const float *v, const int *slot, int T, int kvw,
                          void *stream);

/* Per token t, head by head: q (T, n_heads, hd) in place and k (T, n_kv, hd)
 * RMSNorm'd per head by qn / kn (hd) when not NULL, then rotated as
 * kernels_rope_f32 does; the kv heads' K rows (normed, roped) and V rows
 * (T, n_kv*hd) go to rows slot[t] of kc, vc as bf16 (kernels_kv_store_bf16).
 * k itself is not written. hd <= 256. */
/* warp: the warp-per-head kernel, else the first (block per head); the
 * same bits (attention.cu). */
int kernels_qk_rope_store_bf16(float *q, const float *k, const float *v, void *kc, void *vc, const int *pos,
                               const int *slot, int T, int n_heads, int n_kv, int hd, const float *qn,
                               const float *kn, float eps, const float *inv_freq, int warp, void *stream);

/* Causal paged attention of a mixed step (see backend.h, attention): token t
 * of sequence s = tok_seq[t] at position pos[t] attends to keys
 * max(0, pos - window + 1) (window > 0) or 0, up to pos, whose cache row is
 * block_tables[s * max_blocks + j / block_size] * block_size + j % block_size.
 * A sequence's tokens in the step are consecutive in the batch and in
 * position. Sequences with many tokens in the step (prefill chunks) go to a
 * tiled tensor-core kernel (queries and softmax weights rounded to bf16, f32
 * sums), the others (decodes) to a per-token f32 kernel that splits long
 * contexts (flash-decoding). */
typedef struct {
    float *out;          /* (n_tokens, n_heads, hd) */
    const float *q;      /* (n_tokens, n_heads, hd) */
    const void *kc, *vc; /* (rows, n_kv * hd) bf16: one layer's cache */
    const int *pos, *tok_seq, *seq_start, *block_tables; /* device */
    const int *h_seq_start; /* (n_seqs + 1) host copy, or NULL: then only the per-token kernel runs */
    int n_tokens, n_seqs, block_size, max_blocks, n_heads, n_kv, hd, window;
    int max_ctx;         /* at least pos + 1 of every token */
    int no_tiled;        /* 1: the per-token kernel for every token (tests) */
    int decode_simt;     /* 1: the f32 per-token kernel, not the tensor-core one (tests) */
    float *work;         /* split scratch of kernels_paged_attention_work_floats floats, or NULL when that is 0 */
    size_t work_floats;
} kernels_attention_args;

/* Floats of scratch the launch with these arguments needs (0: none). */
size_t kernels_paged_attention_work_floats(const kernels_attention_args *a);

/* hd <= 256, n_heads / n_kv <= 16. */
int kernels_paged_attention_bf16(const kernels_attention_args *a, void *stream);

/* ---- matmul.cu ---- */

#define KERNELS_GEMV_MAX_T 8

/* Whether kernels_gemv_bf16 takes these: 1 <= T <= KERNELS_GEMV_MAX_T,
 * cols % 8 == 0, x and w 16-byte aligned. */
int kernels_gemv_supported(const float *x, const void *w, int T, int cols);

/* out (T, rows) = x (T, cols) @ w^T + bias (rows, or NULL); w (rows, cols)
 * bf16; activations stay f32, f32 accumulation. */
int kernels_gemv_bf16(float *out, const float *x, const void *w, const float *bias, int T, int rows, int cols,
                      void *stream);

/* The same with f32 weights w (rows, cols) (f32 checkpoints keep f32 on the GPU). */
int kernels_gemv_f32(float *out, const float *x, const void *w, const float *bias, int T, int rows, int cols,
                     void *stream);

/* G products side by side in one launch (backend.h, matmul_grouped): out (T, G rows) with
 * out[t, g rows + i] = x[t, g cols .. (g+1) cols) . w[g rows + i], x in rows of xld floats
 * (xld % 4 == 0, xld >= G cols), w (G rows, cols) bf16, or f32 when f32; the same T, cols and
 * alignment rules as kernels_gemv_bf16. */
int kernels_gemv_grouped(float *out, const float *x, int xld, const void *w, int T, int G, int rows, int cols,
                         int f32, void *stream);

/* Fused decode products (same T, cols and alignment rules as kernels_gemv_bf16;
 * f32: the weights are f32, else bf16), one launch each. Those with a norm
 * (cols, 16-byte aligned; NULL: none) take rmsnorm(x) * norm (eps) as their
 * input x: each x row's sum of squares gathered as it is loaded, the sums
 * scaled by its inverse RMS at the end (no normed copy of x is written).
 * three products of one input: out_i (T, rows_i) = x @ w_i^T + b_i (b_i may be NULL) */
int kernels_gemv3(float *out0, float *out1, float *out2, const float *x, const void *w0, const void *w1,
                  const void *w2, const float *b0, const float *b1, const float *b2, int rows0, int rows1, int rows2,
                  int T, int cols, const float *norm, float eps, int f32, void *stream);
/* out (T, rows) += x @ w^T + bias (the sum x @ w^T + bias first) */
int kernels_gemv_add(float *out, const float *x, const void *w, const float *bias, int T, int rows, int cols, int f32,
                     void *stream);
/* out (T, rows) = silu(x @ wg^T + bg) * (x @ wu^T + bu) */
int kernels_gemv_glu(float *out, const float *x, const void *wg, const void *wu, const float *bg, const float *bu,
                     int T, int rows, int cols, const float *norm, float eps, int f32, void *stream);

/* FP8 weights kept packed on the device (DeepSeek-V4's block-scaled matrices):
 * codes (rows, cols) e4m3fn bytes, scales (ceil(rows / 2^sbr), scols) f32, one
 * per block of 2^sbr rows by 2^sbc columns (sbc >= 3). Element (i, j) is
 * code * scale, which the kernels take as exact: the caller packs only
 * matrices without NaN codes whose scales are powers of two in [2^-124, 2^7],
 * where every element is a bf16 (cuda_view.c). */
typedef struct {
    const void *codes;
    const float *scales;
    int scols, sbr, sbc;
    int row0; /* a row view: row i of codes is row row0 + i of the scales' grid */
} kernels_fp8w;

/* Whether kernels_gemv_fp8 takes these: kernels_gemv_supported's rules, but codes
 * 8-byte aligned (a row view's codes are whenever its bf16 expansion's are 16). */
int kernels_gemv_fp8_supported(const float *x, const void *codes, int T, int cols);
/* out (T, rows) = x @ w^T + bias, or with add out += that (as kernels_gemv_add): the
 * bf16 kernels' sums on the same values, bit for bit. */
int kernels_gemv_fp8(float *out, const float *x, const kernels_fp8w *w, const float *bias, int T, int rows, int cols,
                     int add, void *stream);
/* kernels_gemv_grouped on FP8 weights (G rows, cols). */
int kernels_gemv_grouped_fp8(float *out, const float *x, int xld, const kernels_fp8w *w, int T, int G, int rows,
                             int cols, void *stream);
/* dst (rows, cols) bf16 (16-byte aligned, cols % 8 == 0) = w's values, exactly: for the
 * products past the matrix-vector kernels (cuBLAS multiplies bf16 by bf16). */
int kernels_fp8_to_bf16(void *dst, const kernels_fp8w *w, int rows, int cols, void *stream);

/* Asks L2 for bytes of p, 128-byte lines from p's line on (prefetch.global.L2:
 * nothing is read back, nothing waits for the lines): a decode step's products
 * stream weights that L2 can hold while the ops before them read little. */
int kernels_l2_prefetch(const void *p, size_t bytes, void *stream);

/* ---- matmul_skinny.cu ---- */

#define KERNELS_SKINNY_MAX_ROWS 64

/* Whether kernels_skinny_f32 takes these: 1 <= rows <= KERNELS_SKINNY_MAX_ROWS,
 * cols % 4 == 0, x and w 16-byte aligned. */
int kernels_skinny_supported(const float *x, const void *w, int rows, int cols);

/* Floats of scratch kernels_skinny_f32 needs for T tokens (0: none). */
size_t kernels_skinny_work_floats(int T, int rows, int cols);

/* out (T, rows) = x (T, cols) @ w^T + bias (rows, or NULL), or with add out += that (the sum
 * first); w (rows, cols) f32, f32 activations and accumulation, any T. Each output is summed in an
 * order fixed by cols alone: the same bits whatever T and the other tokens. work: device scratch
 * of at least kernels_skinny_work_floats(T, rows, cols) floats. */
int kernels_skinny_f32(float *out, const float *x, const void *w, const float *bias, int T, int rows, int cols,
                       int add, float *work, size_t work_floats, void *stream);

/* ---- moe.cu ---- */

/* A router as backend.h's moe_route describes it (moe_scoring's three kinds). */
enum { KERNELS_MOE_SOFTMAX = 0, KERNELS_MOE_SQRTSOFTPLUS = 1, KERNELS_MOE_HASH = 2 };
typedef struct {
    int scoring, n_experts, top_k, norm_topk;
    const float *bias;   /* (n_experts) selection bias (SQRTSOFTPLUS), device */
    const int *tid2eid;  /* (token ids, top_k) experts (HASH), device */
    float routed_scaling;
} kernels_moe_router;

/* ids, wts (T, top_k) from logits (T, n_experts) (and the step's token ids
 * for HASH): the CPU's rule (larger first, lower id among equals), weights
 * renormalised as it does, then sorted by expert id. n_experts <= 1024. */
int kernels_moe_route(int *ids, float *wts, const float *logits, const int *tokens, const kernels_moe_router *r,
                      int T, void *stream);

/* The height (16, 32 or 64 rows) of the tiles each expert's rows are cut
 * into for a step of T tokens, from the rows an expert gets on average
 * (the environment's ENGRAM_MOE_TILE forces one, for benchmarks). */
int kernels_moe_tile_rows(int T, int k, int E);

/* From ids (T, k) of E experts: pos (T k) each pair's row in the packed
 * matrix, offsets (E + 1) each expert's first row, tile_start (E + 1) its
 * first tile of bm rows. At most T k / bm + E tiles. */
int kernels_moe_plan(int *pos, int *offsets, int *tile_start, const int *ids, int T, int k, int E, int bm,
                     void *stream);

/* xs[pos[j]] (d) = x[j / k] for j < T k, as bf16 (bf16 1) or f32. */
int kernels_moe_gather(void *xs, int bf16, const float *x, const int *pos, int T, int k, int d, void *stream);

/* The experts' matrices of one product, stacked (E, R, K) as the view holds
 * them (R rows an expert: 2N for a GLU, its N gate rows then its N up rows;
 * N otherwise): f32, bf16, or FP4 as DeepSeek-V4's routed experts are
 * stored, w (E, R, K / 2) bytes of e2m1 codes (two per byte, the low nibble
 * the even column) and scale (E, R, K / 32) ue8m0 bytes (2^(b-127), 255
 * NaN), one per 32 values along K. FP4 is dequantized in the products' load
 * path, exactly (fp8.cuh, fp4_dequant8): its results are those of the same
 * products on the bf16 expansion (cuda_view.c), bit for bit. */
enum { KERNELS_MOE_F32 = 0, KERNELS_MOE_BF16 = 1, KERNELS_MOE_FP4 = 2 };
typedef struct {
    const void *w;
    const unsigned char *scale; /* FP4 only */
    int fmt;                    /* KERNELS_MOE_F32, _BF16 or _FP4 */
} kernels_moe_weights;

/* The experts' products over the packed rows a (rows, K) (f32 with f32
 * weights, else bf16), w the experts (E, glu ? 2N : N, K). glu: out (rows,
 * N), of a's type, = silu(min(g, limit)) * clamp(u, -limit, limit) (no clamp
 * for limit 0); else out (rows, N) f32. bm and max_tiles: the plan's tile
 * height and bound. Tensor cores for bf16 and FP4 when N % 64 == 0 and K %
 * 32 == 0, one thread per output element otherwise: the same kernel and
 * order for bf16 and FP4 of one shape. FP4 needs K % 32 == 0. */
int kernels_moe_gemm(void *out, const void *a, const kernels_moe_weights *w, const int *offsets,
                     const int *tile_start, int max_tiles, int E, int N, int K, int bm, int glu, float limit,
                     void *stream);

/* Decode without a plan, pair j = (token j / k, expert ids[j]), activations
 * f32: out (T k, N) = the GLU of x (T, K) rows with the expert's gate and up
 * rows (w as kernels_moe_gemm's, (E, 2N, K)). */
int kernels_moe_glu_gemv(float *out, const float *x, const kernels_moe_weights *w, const int *ids, int T, int k,
                         int N, int K, float limit, void *stream);

/* Decode's down product and combine in one launch: out (T, N) = sum over s <
 * k in order of wts[t k + s] * (h[t k + s] (K) times row n of expert ids[t k
 * + s]'s w (E, N, K)), k <= 32, from 0 as kernels_moe_combine adds them; with
 * add, out += that sum (the sum first, then one addition, as an add kernel). */
int kernels_moe_down_combine(float *out, const float *h, const kernels_moe_weights *w, const int *ids,
                             const float *wts, int T, int k, int N, int K, int add, void *stream);

/* out (T, d) = sum over s < k in order of wts[t k + s] * y[pos[t k + s]]; with add, out += that sum
 * (the sum first, then one addition). */
int kernels_moe_combine(float *out, const float *y, const int *pos, const float *wts, int T, int k, int d, int add,
                        void *stream);

/* ---- dsv4.cu: DeepSeek-V4 (the CPU reference: engine/backend/cpu/cpu_dsv4.c) ---- */

/* backend.h's hc_weights: pre, post (T, N), comb (T, N, N) from mix (T, (2+N)N). N <= 16. */
int kernels_hc_weights(float *pre, float *post, float *comb, const float *mix, const float *base,
                       const float *scale, int T, int N, int iters, float hc_eps, void *stream);
/* x (T, d) = sum_j pre[t, j] X[t, j] */
int kernels_hc_collapse(float *x, const float *X, const float *pre, int T, int N, int d, void *stream);
/* out (T, d) = sum_j (sigmoid(mix[t, j] scale[0] + base[j]) + hc_eps) X[t, j] */
int kernels_hc_head(float *out, const float *X, const float *mix, const float *base, const float *scale, int T,
                    int N, int d, float hc_eps, void *stream);
/* X[k] (T, N, d) = post[k] y + sum_j comb[j, k] X[j] */
int kernels_hc_merge(float *X, const float *y, const float *post, const float *comb, int T, int N, int d,
                     void *stream);
/* In place on x (T, n_heads, hd): the interleaved pairs of each head's last r channels rotated by pos[t] *
 * inv_freq (r/2), or by minus that angle when inverse. */
int kernels_rope_tail(float *x, const int *pos, int T, int n_heads, int hd, int r, const float *inv_freq,
                      int inverse, void *stream);
/* rmsnorm_plain of each q head (T, n_heads, hd) when q_norm, rmsnorm of kv (T, hd) by kv_norm,
 * then the tail rope of both (not inverse), in place, in one launch: the same bits as
 * kernels_rmsnorm_plain, kernels_rmsnorm_f32 and kernels_rope_tail. T <= 65535, hd <= 1024. */
int kernels_dsv4_qk_norm_rope(float *q, float *kv, const float *kv_norm, const int *pos, int T, int n_heads, int hd,
                              int r, const float *inv_freq, int q_norm, float eps, void *stream);
/* out (T, d) = x / sqrt(mean(x^2) + eps) */
int kernels_rmsnorm_plain(float *out, const float *x, int T, int d, float eps, void *stream);
/* gate (n) = silu(min(gate, limit)) * clamp(up, -limit, limit) */
int kernels_swiglu_limit(float *gate, const float *up, size_t n, float limit, void *stream);
/* backend.h's engram_v41_gate */
int kernels_engram_v41_gate(float *X, const float *kv, const float *w, int T, int N, int d, float eps, float clamp,
                            float *gates, void *stream);

/* One layer's paged decode state (backend.h, dsv4_kv), device memory. */
typedef struct {
    float *base;
    size_t block_floats;
    int m, slots, D, dI;
    float *ebase;         /* where the entries and index keys are (the layer's own store on V4) */
    size_t eblock_floats;
} kernels_dsv4_kv;

/* backend.h's dsv4_compress and, with lat, dsv41_compress (gate is then the score, used at ratio 2; which,
 * overlap and ape unused). Everything that changes from step to step is read from device memory, so a
 * recorded launch serves any step of n_tokens tokens: the grid is one block per token, each deciding
 * from its position whether it closes a window. */
typedef struct {
    const float *kv, *gate;          /* (T, cw) the step's projections */
    float *lat;                      /* (T, D) V4.1's latents out (kernels_dsv41_compress) */
    float *const *seq_state;         /* (n_seqs) device: each sequence's state, holding its rings of 2m rows */
    size_t ring_kv, ring_gate;       /* where the rings are in a state (floats) */
    const int *pos, *tok_seq, *seq_start, *seq_pos0, *block_tables; /* device: batch_desc's */
    int n_tokens, max_blocks, block_size;
    kernels_dsv4_kv cache;
    int which, m, D, overlap, r;
    const float *ape, *norm, *inv_freq;
    float eps;
} kernels_dsv4_compress_args;
int kernels_dsv4_compress(const kernels_dsv4_compress_args *a, void *stream);

/* DeepSeek-V4.1's ratio-1/2 ops with SGLang's fake quantisations, bit for bit the CPU's on the same
 * inputs (cpu_dsv4.c): backend.h's dsv41_compress (m 1 or 2, D % 16 == 0), dsv41_index_keys (dI % 32
 * == 0) and fake_quant_fp4 (w % 32 == 0). */
int kernels_dsv41_compress(const kernels_dsv4_compress_args *a, void *stream);
int kernels_dsv41_index_keys(const float *k, const kernels_dsv4_kv *cache, const int *pos, const int *tok_seq,
                             const int *block_tables, int max_blocks, int block_size, int T, int m, int dI,
                             const float *k_norm, float eps, int r, const float *inv_freq, void *stream);
int kernels_fake_quant_fp4(float *x, size_t n, int w, void *stream);

/* backend.h's dsv4_index (publish and among NULL) and dsv41_index (V4.1's two-level candidates). */
typedef struct {
    int *sel;                /* (n_tokens, K) */
    const float *q, *wts;    /* (n_tokens, nI, dI) rotated queries, (n_tokens, nI) head weights */
    const int *pos, *tok_seq, *block_tables; /* device */
    int n_tokens, max_blocks, block_size, max_ctx;
    kernels_dsv4_kv cache;
    int m, K, nI, dI;
    int *publish;            /* (n_tokens, nb) the candidate source's blocks out, or NULL */
    const int *among;        /* (n_tokens, nb) the blocks a later index source selects within, or NULL */
    int nb, bs;              /* blocks published, entries per block (with publish or among) */
    float *work;             /* kernels_dsv4_index_work_floats floats of scratch */
} kernels_dsv4_index_args;
size_t kernels_dsv4_index_work_floats(const kernels_dsv4_index_args *a);
int kernels_dsv4_index(const kernels_dsv4_index_args *a, void *stream);

/* backend.h's dsv4_attention (the step's kv rows stored first). Blocks of heads that share the one KV
 * head read each row once, in chunks staged in shared memory, with long row sets split over blocks and
 * merged (the split partials in work); the first, per-(token, head) kernel with ref or
 * ENGRAM_DSV4_ATTENTION=ref (read once), or where the layout does not allow 16-byte loads (D % 4,
 * D > 512, unaligned blocks). */
typedef struct {
    float *out;
    const float *q, *kv;
    const int *pos, *tok_seq, *block_tables; /* device */
    int n_tokens, max_blocks, block_size, max_ctx;
    kernels_dsv4_kv cache;
    int m;
    const int *sel; /* (T, K) or NULL */
    int K;
    const float *sinks;
    int nh, D, W;
    int ref;        /* 1: the first kernel (tests, A/B timings) */
    float *work;    /* kernels_dsv4_attention_work_floats floats (none: NULL) */
} kernels_dsv4_attention_args;
/* Floats of work the call needs: 0 unless its rows are split; a function of n_tokens, max_ctx and the
 * shapes only, so a recorded step's first (unrecorded) run sizes it. */
size_t kernels_dsv4_attention_work_floats(const kernels_dsv4_attention_args *a);
int kernels_dsv4_attention(const kernels_dsv4_attention_args *a, void *stream);

/* ---- sampling.cu ---- */

/* next (T) = argmax of each row of logits (T, vocab), lowest id on ties. */
int kernels_argmax_f32(int *next, const float *logits, int T, int vocab, void *stream);

/* backend_ops.sample (engine/backend/backend.h) on n rows: desc is the packed
 * description of engine/sampler.h (KERNELS_SAMPLE_DESC_WORDS int32 words a
 * row: row, temperature, repetition, presence, frequency penalty bits, n_full,
 * n_bias, bias offset, n_pen, pen offset, allowed-token bitmask offset or -1), out n result rows of
 * 8 * n_cand + 16 bytes; n_cand a power of two up to
 * KERNELS_SAMPLE_MAX_CANDIDATES. Biases and penalties are applied to logits
 * in place. */
#define KERNELS_SAMPLE_DESC_WORDS 11
#define KERNELS_SAMPLE_MAX_CANDIDATES 4096
#define KERNELS_SAMPLE_NAN 1
int kernels_sample_f32(void *out, float *logits, const int *desc, int n, int vocab, int stride, int n_cand,
                       void *stream);
/* backend_ops.sample_argmax: rows first .. first + n - 1 of desc edited as
 * kernels_sample_f32 edits them (the mask too), then next[r - first] = the
 * lowest id of the largest logit, or -1 when the row holds a NaN. */
int kernels_sample_argmax_f32(int *next, float *logits, const int *desc, int first, int n, int vocab, int stride,
                              void *stream);

#ifdef __cplusplus
}
#endif
#endif
