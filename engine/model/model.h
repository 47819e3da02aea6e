/* A checkpoint directory in Hugging Face layout: config.json and the
 * *.safetensors files (all of them, or those named by
 * model.safetensors.index.json), mmap'd. Large matrices stay in their file
 * dtype (F32, BF16, F16, or FP8/FP4 with block scales) and are read in place;
 * norms and biases are converted to f32 at load. Or a synthetic model: a released architecture's
 * shape with random weights in memory (model_synthetic_ex). */
#ifndef ENGINE_MODEL_H
#define ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engram/engram_v41.h"
#include "engram/ngram_hash.h"
#include "engram/store.h"
#include "engine/model/safetensors.h"

typedef enum {
    MODEL_OK = 0,
    MODEL_ERR_IO = -1,      /* a file is missing or unreadable */
    MODEL_ERR_CONFIG = -2,  /* config.json is malformed, absurd or unsupported */
    MODEL_ERR_WEIGHTS = -3, /* a tensor is missing, of the wrong shape or dtype */
    MODEL_ERR_NOMEM = -4,
} model_status;

const char *model_status_str(int status);

typedef enum { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3, ARCH_MISTRAL, ARCH_QWEN3_MOE, ARCH_DEEPSEEK_V4 } model_arch;
typedef enum { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 } rope_type;

#define MODEL_MAX_EOS 8
#define MODEL_MAX_LAYERS 1024
#define MODEL_MAX_EXPERTS 1024
#define ENGRAM_MAX_LAYERS 64
#define ENGRAM_MAX_HC 16

/* The "engram" object of config.json (reference field names, ENGRAM.md
 * section 2). Ranges beyond types are checked by ngram_hash_create. */
typedef struct {
    bool present;
    int64_t vocab_size[NGRAM_HASH_MAX_NGRAM]; /* engram_vocab_size, one per order 2..N */
    int max_ngram_size;
    int64_t n_embed_per_ngram;
    int n_head_per_ngram;
    int64_t layer_ids[ENGRAM_MAX_LAYERS];
    int n_layers;
    int64_t pad_id;
    int64_t seed;
    int kernel_size;
    int hc_mult;                   /* default 1 */
    int64_t compressed_vocab_size; /* 0 when the config does not state it */
} engram_config;

/* How a mixture-of-experts router turns its logits into the experts and
 * weights of a token (moe_weights). */
typedef enum {
    MOE_SOFTMAX,      /* Qwen3-MoE: softmax in f32, top-k by probability, optional renormalisation */
    MOE_SQRTSOFTPLUS, /* DeepSeek-V4 learned: s = sqrt(softplus(l)), top-k of s + bias, weights s renormalised */
    MOE_HASH,         /* DeepSeek-V4 hash: experts tid2eid[token], weights s = sqrt(softplus(l)) renormalised */
} moe_scoring;

/* DeepSeek-V4 attention kind of a layer (DEEPSEEK_V4.md 1.2; DSV4_LOW: DeepSeek-V4.1's ratio 1 or 2,
 * window plus the top-k of one entry per token or per pair, section 5.8). */
typedef enum { DSV4_SLIDING, DSV4_CSA, DSV4_HCA, DSV4_LOW } dsv4_attn_kind;

/* The DeepSeek-V4 keys of config.json (DEEPSEEK_V4.md section 1), resolved
 * per layer whichever config style the file uses. */
typedef struct {
    int hc_mult, hc_iters;      /* N streams, Sinkhorn iterations */
    float hc_eps;
    int q_lora_rank, o_groups, o_lora_rank;
    int rope_dim;               /* r = int(head_dim * partial_rotary_factor): rotary channels at each head's end */
    int index_n_heads, index_head_dim, index_topk;
    float routed_scaling, swiglu_limit;
    double main_theta;          /* sliding layers: default rope */
    double comp_theta;          /* CSA/HCA layers: default or YaRN */
    bool comp_yarn;
    double yarn_factor, yarn_beta_fast, yarn_beta_slow;
    int yarn_original_max_pos;
    dsv4_attn_kind attn[MODEL_MAX_LAYERS];
    int rate[MODEL_MAX_LAYERS];   /* compression rate m of CSA/HCA layers, 0 for sliding ones */
    bool hash_moe[MODEL_MAX_LAYERS];
    /* DeepSeek-V4.1's backbone (DEEPSEEK_V4.md 5.8): each hyper-connection collapses with the previous
     * one's pre (stream 0 at the first; the head with the last one's, and no hc_head tensors), and
     * queries without their per-head norm. V4: false, true. */
    bool hc_pre_from_prev, q_head_norm;
    /* V4.1's ratio-1/2 layers (DSV4_LOW): kv_src, the layer whose compressed entries (and index keys) it
     * reads, the nearest kv_source_layer_ids entry of its ratio at or before it (itself: it owns a
     * compressor); idx_src, an index_source_layer_ids entry that computes the top-k the later layers of
     * its ratio reuse. A layer owns index keys when it is both. -1 / false elsewhere. */
    int kv_src[MODEL_MAX_LAYERS];
    bool idx_src[MODEL_MAX_LAYERS];
    /* V4.1's two-level candidate top-k (candidate_source_layer_id, candidate_topk_blocks,
     * candidate_block_size; dsv41_sparse.py, v41_indexer/dense_blocks.py): the index source cand_src
     * publishes, per token, the cand_blocks blocks of cand_block consecutive entries with the highest
     * score (its newest block always), and every later index source takes its top-k among their
     * entries only. cand_src -1: off. */
    int cand_src, cand_blocks, cand_block;
} dsv4_config;

/* The mixture-of-experts keys of config.json (Qwen3-MoE). */
typedef struct {
    int n_experts;       /* num_experts (or num_local_experts); 0: a dense model */
    int top_k;           /* num_experts_per_tok */
    int inter;           /* moe_intermediate_size: each expert's SwiGLU width */
    bool norm_topk_prob; /* renormalise the chosen probabilities to sum to 1 */
    bool layer_moe[MODEL_MAX_LAYERS]; /* layer i is sparse: not in mlp_only_layers and
                                       * (i + 1) % decoder_sparse_step == 0 */
} moe_config;

typedef struct {
    model_arch arch;
    int vocab_size;
    int hidden_size;       /* d */
    int intermediate_size; /* SwiGLU width */
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int max_position_embeddings;
    float rms_norm_eps;
    /* rope */
    double rope_theta;
    rope_type rope;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    /* layout variants */
    bool qkv_bias;  /* q/k/v projections have biases (Qwen2, Llama attention_bias) */
    bool o_bias;    /* o_proj has a bias (Llama attention_bias) */
    bool mlp_bias;  /* gate/up/down have biases (Llama mlp_bias) */
    bool qk_norm;   /* per-head RMSNorm on q and k before rope (Qwen3) */
    bool tie_word_embeddings;
    int sliding_window; /* 0: full attention; else a key at j is seen from i iff i - j < window */
    int bos_token_id;   /* -1 if none */
    int eos_token_ids[MODEL_MAX_EOS];
    int n_eos;
    /* quantization_config.weight_block_size: the FP8 scale grid is
     * ceil(rows / quant_block_rows) x ceil(cols / quant_block_cols); 0 = 128 */
    int quant_block_rows, quant_block_cols;
    moe_config moe;
    engram_config engram;
    dsv4_config dsv4; /* ARCH_DEEPSEEK_V4 only */
    engram_v41_config engram_v41; /* DeepSeek-V4.1's engram_* keys; n_layers 0 when absent */
} model_config;

/* Parses config.json text (untrusted). `label` names the file in messages.
 * Returns MODEL_OK or MODEL_ERR_CONFIG with a one-line message naming the key. */
int model_config_parse(const char *json, size_t len, const char *label, model_config *cfg,
                       char *err, size_t errlen);

/* How a matrix is stored (DEEPSEEK_V4.md 4.4). Quantized ones stay so in
 * memory; products dequantize a few rows at a time (model_weight_rows_to_f32). */
typedef enum {
    WEIGHT_DENSE = 0, /* dt F32, BF16 or F16 */
    WEIGHT_FP8,       /* dt F8_E4M3: one e4m3fn code per element, (rows, cols) bytes */
    WEIGHT_FP4,       /* dt I8 or F4: two e2m1 codes per byte, (rows, cols / 2) bytes,
                       * the low nibble the even column */
} weight_format;

/* A matrix read in place from the mapping: (rows, cols) row-major in `dt`.
 * Quantized, element (i, j) is code(i, j) * scale[i / block_rows][j / block_cols],
 * the product of two f32 values rounded once (as transformers' dequantisation). */
typedef struct {
    const void *data; /* borrowed from the safetensors mapping */
    dtype dt;
    int rows, cols;   /* logical shape: elements, not bytes */
    weight_format fmt;
    const void *scale; /* (scale_rows, scale_cols) borrowed, or NULL when dense */
    dtype scale_dt;    /* F8_E8M0 (2^(b-127), 255 NaN), U8 (2^(b-127), 255 inf) or F32 (multipliers) */
    int scale_rows, scale_cols;
    int block_rows, block_cols; /* elements sharing one scale */
    int row_base;      /* quantized row views (model_weight_row_view): rows of the whole matrix before
                        * this view's first, so that row i reads scale row (row_base + i) / block_rows */
    bool f32_activations; /* its products keep the activations in f32 on every backend path: no path that
                           * rounds them to bf16 for bf16 weights takes it (the CPU's avx512bf16; CUDA,
                           * whose view holds it in f32). Set where the output is fake-quantised or ranked
                           * (DeepSeek-V4.1's ratio-1/2 compressors and indexers), which turns that 2^-9
                           * rounding into other quantised values and other top-k choices. */
} weight;

/* dst (nrows, w->cols) = rows [row0, row0 + nrows) of w as f32, in any format:
 * the values transformers' dequantisation gives, bit for bit (a NaN may differ
 * in payload). The caller keeps the rows in range. */
void model_weight_rows_to_f32(float *dst, const weight *w, int row0, int nrows);
/* Scale (r, c) of a quantized w as the products take it, in f32 (F8_E8M0: 2^(b-127), 255 NaN;
 * U8: 255 +inf; F32 as stored). */
float model_weight_scale(const weight *w, int r, int c);

/* Bytes w occupies as stored: FP8 one per element, FP4 half of one, plus its scales. */
size_t model_weight_bytes(const weight *w);
/* Rows [row0, row0 + rows) of w as a matrix of their own, read in place; a
 * quantized view keeps reading its rows' scales (row_base). */
weight model_weight_row_view(const weight *w, int row0, int rows);

/* One Engram module (ENGRAM.md section 6), G = hc_mult streams. */
typedef struct {
    int layer_id;                  /* backbone layer it starts */
    int li;                        /* its index among the Engram layers (ngram_hash) */
    weight table;                  /* (table rows, D) multi_head_embedding.embedding.weight */
    engram_store *store;           /* owned; when not NULL the rows come from this table file, not `table` */
    weight w_value;                /* (d, E) value_proj */
    const float *b_value;          /* (d) */
    weight w_key[ENGRAM_MAX_HC];   /* (d, E) key_projs.{g} */
    const float *b_key[ENGRAM_MAX_HC];
    const float *norm1[ENGRAM_MAX_HC]; /* (d) key norm, eps = f32 machine epsilon */
    const float *norm2[ENGRAM_MAX_HC]; /* (d) query norm, eps = f32 machine epsilon */
    const float *conv_norm[ENGRAM_MAX_HC]; /* (d) short_conv.norms.{g}, eps 1e-5 */
    const float *conv_w;           /* (G*d, K) depthwise causal conv, dilation max_ngram_size */
    /* DeepSeek-V4.1 (DEEPSEEK_V4.md 5.6; table is then FP8 with one ue8m0 scale per 32 values) */
    weight w_kv;                   /* ((G+1) d, E) wkv: G keys, then the shared value */
    const float *qk;               /* (G, d) q_weight * k_weight, one f32 product as SGLang forms it */
} engram_weights;

/* Everything Engram needs at run time, derived at load. */
typedef struct {
    ngram_hash *hash;      /* multipliers, primes, offsets */
    int64_t *lookup;       /* (vocab) compressed id of every token id */
    int64_t lookup_n;      /* entries in lookup: the tokenizer's vocab size */
    int64_t vc;            /* compressed vocab size */
    int n_layers;          /* Engram layers */
    int hc_mult, kernel_size, dilation;
    int n_heads;           /* H rows gathered per token and layer */
    int head_dim;          /* D */
    int embed_dim;         /* E = H * D */
    bool v41;              /* DeepSeek-V4.1's module (fused wkv, per-stream gate, no conv) */
    float eps;             /* V4.1: the gate's rstd floor, rms_norm_eps */
    engram_weights *layers; /* (n_layers) */
} model_engram;

/* One sparse layer's experts: a router and n_experts SwiGLU experts of
 * width inter, each token using top_k of them (ENGINE: moe_route then
 * moe_experts, backend.h). */
typedef struct {
    moe_scoring scoring;
    int n_experts, top_k, inter;
    bool norm_topk;   /* renormalise the chosen weights */
    weight router;    /* (n_experts, d) */
    weight *gate, *up, *down; /* (n_experts) each: (inter, d) (inter, d) (d, inter) */
    /* DeepSeek-V4 (zero / NULL elsewhere) */
    const float *bias;        /* (n_experts) selection-only bias (MOE_SQRTSOFTPLUS) */
    const int32_t *tid2eid;   /* (tid_rows, top_k) experts of each token id (MOE_HASH) */
    int tid_rows;
    float routed_scaling;     /* multiplies the routed weights; 0 means 1 */
    float swiglu_limit;       /* gate clamped above, up to [-limit, limit]; 0: no clamp */
    bool shared;              /* a shared expert of width inter, added unweighted */
    weight sh_gate, sh_up, sh_down; /* (inter, d) (inter, d) (d, inter) */
} moe_weights;

/* A DeepSeek-V4 compressor (DEEPSEEK_V4.md 2.5): width cw = 2 D (CSA, overlapping) or D (HCA). */
typedef struct {
    weight wkv, wgate;  /* (cw, d) each */
    const float *ape;   /* (m, cw) position bias */
    const float *norm;  /* (D) */
} dsv4_compressor;

/* One DeepSeek-V4 layer beyond layer_weights' attn_norm, ffn_norm and moe. */
typedef struct {
    weight hc_attn_fn, hc_ffn_fn;           /* ((2+N)N, N d) */
    const float *hc_attn_base, *hc_attn_scale, *hc_ffn_base, *hc_ffn_scale; /* ((2+N)N), (3) */
    weight wq_a, wq_b, wkv, wo_a, wo_b;     /* (Q, d) (nh D, Q) (D, d) (G R, nh D / G) (d, G R) */
    const float *q_norm, *kv_norm, *sinks;  /* (Q) (D) (nh) */
    dsv4_compressor comp;                   /* CSA/HCA; V4.1 kv sources: wkv, wgate (ratio 2), norm, no ape */
    dsv4_compressor icomp;                  /* CSA: the indexer's, at width 2 dI */
    weight iwq_b, iweights;                 /* CSA and V4.1 index sources: (nI dI, Q), (nI, d) */
    weight iwk;                             /* V4.1 owner of index keys: (dI, D) on the pre-rope latent */
    const float *ik_norm;                   /* (dI) its k_norm */
} dsv4_layer;

typedef struct {
    dsv4_layer *layers;                     /* (n_layers) */
    weight hc_head_fn;                      /* (N, N d); none with hc_pre_from_prev */
    const float *hc_head_base, *hc_head_scale; /* (N), (1) */
} dsv4_weights;

typedef struct {
    const float *attn_norm;      /* (d) */
    weight wq, wk, wv, wo;       /* (n_heads*hd, d) (kv*hd, d) (kv*hd, d) (d, n_heads*hd) */
    const float *bq, *bk, *bv, *bo; /* biases or NULL */
    const float *q_norm, *k_norm; /* (hd) or NULL */
    const float *ffn_norm;       /* (d) */
    weight w_gate, w_up, w_down; /* (ff, d) (ff, d) (d, ff); unused where moe is set */
    const float *b_gate, *b_up, *b_down;
    const moe_weights *moe;      /* a sparse layer's experts in place of the MLP, or NULL */
    const engram_weights *engram; /* the Engram module at the start of this layer, or NULL */
} layer_weights;

typedef struct model model;

/* How the products after a tensor-parallel split meet (engine/tensor_parallel.h). */
typedef enum {
    MODEL_TP_GATHER = 0, /* o_proj and down cut by output rows over the all-gathered input: bit-exact */
    MODEL_TP_REDUCE = 1, /* o_proj and down cut by input columns, partial sums all-reduced: fewer bytes */
} model_tp_mode;

typedef struct {
    int rank, n_ranks;
    model_tp_mode mode;
} model_tp;

struct model {
    model_config cfg;
    weight embed;             /* (vocab, d) */
    const float *final_norm;  /* (d) */
    weight lm_head;           /* (vocab, d); the embedding when tied */
    layer_weights *layers;    /* (n_layers) */
    moe_weights *moe;         /* (n_layers), allocated for a model with experts; layers point into it */
    model_engram *engram;     /* NULL for a model without Engram */
    dsv4_weights *dsv4;       /* DeepSeek-V4's own tensors, or NULL */
    /* ownership */
    safetensors **files;
    int n_files;
    float **owned; /* f32 copies of small tensors */
    int n_owned, cap_owned;
    char *dir;       /* the checkpoint directory, or "synthetic:SPEC" */
    void *synth;     /* a synthetic model's matrices: one anonymous mapping, or NULL */
    size_t synth_bytes;
    /* a tensor-parallel rank's share (model_tp_slice): the model it was cut from (borrowed; every
     * pointer not in `layers` or `owned` is that model's), else NULL */
    const model *parent;
    model_tp tp;     /* the slice's rank; n_ranks 0 (or 1) for a whole model */
};

/* Loads a checkpoint directory. Returns MODEL_OK and *out, or a negative
 * status with a one-line message naming the file and the tensor or key. */
int model_load(const char *dir, model **out, char *err, size_t errlen);

/* The same, with each file's tensors on weight_align boundaries when the
 * backend reads them in place (backend_ops.weight_align; safetensors_open_ex
 * copies a file whose data section misses it), 0: as mapped. */
int model_load_ex(const char *dir, size_t weight_align, model **out, char *err, size_t errlen);

void model_destroy(model *m); /* accepts NULL */

/* ---- tensor parallelism (model_tp.c) ----
 * Rank k of R holds the query heads [k nh/R, (k+1) nh/R) and their KV heads:
 * nkv/R of them when R divides nkv, else (nkv divides R) the one its query
 * heads share, replicated on R/nkv ranks as vLLM does; and the rows
 * [k ff/R, (k+1) ff/R) of each dense MLP's gate and up. With MODEL_TP_GATHER
 * it also holds the output rows [k d/R, (k+1) d/R) of o_proj and down (and
 * of their biases), each over the whole input; with MODEL_TP_REDUCE their
 * input columns matching its heads and its intermediate rows (copied: a
 * column slice is not contiguous; dense dtypes only), the biases on rank 0.
 * Everything else (embedding, norms, head, routers and experts, Engram) is
 * shared with the whole model: experts are split by expert parallelism.
 * DeepSeek-V4 (MODEL_TP_GATHER only) splits its attention by output group:
 * rank k holds the query heads [k nh/R, (k+1) nh/R) (wq_b's rows, their
 * sinks), wo_a's rows [k G R_o/R, (k+1) G R_o/R) (whole groups when R divides
 * G, else, R a multiple of G, a share of one group) and wo_b's output rows
 * [k d/R, (k+1) d/R); wq_a, wkv, the compressors, the indexer and the
 * hyper-connections stay whole, and its config keeps o_groups and
 * o_lora_rank of the whole projection (n_heads is the rank's). */

/* Whether n_ranks ranks can split c's heads and widths as above. Returns
 * MODEL_OK, or MODEL_ERR_CONFIG with a one-line message naming the count
 * that n_ranks does not divide (or the variant it cannot split by). */
int model_tp_check(const model_config *c, int n_ranks, model_tp_mode mode, char *err, size_t errlen);

/* Rank `rank`'s share of m (which must outlive it) as a model of its own: its
 * config has the rank's n_heads, n_kv_heads and intermediate_size (hidden_size
 * stays whole: the residual stream is replicated), its layers row views into
 * m's matrices (no copy; MODEL_TP_REDUCE: o_proj and down column copies), so
 * a backend that uploads a model (prepare) uploads about 1/R of the sliced
 * matrices. model_destroy frees only what the slice owns. Returns MODEL_OK
 * and *out, MODEL_ERR_CONFIG (model_tp_check, or a quantized matrix to cut by
 * columns) or MODEL_ERR_NOMEM, with a message. */
int model_tp_slice(const model *m, int rank, int n_ranks, model_tp_mode mode, model **out, char *err,
                   size_t errlen);

/* Writes every Engram layer's table file dir/engram_layer_<layer_id>.tbl
 * (dir is created when missing; its parent must exist): rows copied bit for
 * bit from the checkpoint tensor (f32, bf16, f16), through FILE.tmp, fsync,
 * rename, so a crash never leaves a partial file under the real name. With
 * only_missing, files already there are left alone. Progress goes to stderr
 * (\r updates on a terminal, a line per quarter otherwise). The one code path
 * of `engram-tables export` and of model_engram_use_tables. Returns MODEL_OK,
 * or MODEL_ERR_CONFIG (no Engram), _IO, _WEIGHTS, _NOMEM with a message. */
int model_engram_export_tables(const model *m, const char *dir, bool only_missing, char *err, size_t errlen);

/* Serves every Engram layer's table from the table file
 * dir/engram_layer_<layer_id>.tbl through an engram_store opened with params,
 * instead of the checkpoint tensor. Missing files are written first
 * (model_engram_export_tables); files present must have the tensor's rows,
 * head_dim and dtype, else the error says to delete them. params->dram_budget
 * is one budget for all layers, shared in proportion to their table sizes;
 * under ENGRAM_STORE_AUTO with no budget: the tables when they fit in
 * MemAvailable, else half of it. The choice is logged on stderr. Returns
 * MODEL_OK, or MODEL_ERR_CONFIG for a model without Engram, MODEL_ERR_IO /
 * MODEL_ERR_WEIGHTS with a one-line message naming the file; on failure no
 * layer is changed. */
int model_engram_use_tables(model *m, const char *dir, const engram_store_params *params, char *err,
                            size_t errlen);

/* The sum of the Engram layers' store counters (zeros where the tables come
 * from the checkpoint). Thread-safe against gathers; m may be NULL. */
void model_engram_store_stats(const model *m, engram_store_stats *sum);

/* The hashing parameters of an Engram config, for a compressed vocabulary of
 * vc ids whose pad id is compressed_pad_id. */
ngram_hash_config model_engram_hash_config(const engram_config *ec, int64_t vc, int64_t compressed_pad_id);

/* The table file name of an Engram layer inside a tables directory. */
#define MODEL_ENGRAM_TABLE_FMT "%s/engram_layer_%d.tbl"

/* Ids a sampler may pick: vocab_size, or fewer for an Engram model whose
 * tokenizer (hence compressed lookup) covers fewer ids than the embedding
 * rows (padded vocabularies); those ids could not be hashed. */
int model_sampling_vocab(const model *m);

/* Bytes of weights read per decoded token, as stored (FP8 one per value, FP4
 * half of one, plus scales): all matrices once, embedding row aside; of a
 * mixture of experts the router and top_k experts (DeepSeek-V4: and the
 * shared expert, compressors, indexer and hyper-connection matrices). */
size_t model_weight_bytes_per_token(const model *m);

/* Parameters of the backbone: embeddings (once when tied), every layer's
 * matrices, norms and biases, the final norm; Engram modules and tables are
 * not counted. From the config alone, or from the loaded weights (equal). */
int64_t model_config_param_count(const model_config *c);
int64_t model_param_count(const model *m);

/* ---- synthetic models (model_synthetic.c) ----
 * A model of a real architecture's exact shape with random weights, made in
 * memory without a checkpoint, for benchmarks. SPEC is a name, then options
 * joined by '+':
 *   qwen3-0.6b qwen3-1.7b qwen3-4b qwen3-8b llama3-1b (Llama-3.2-1B)
 *   llama3-8b (Llama-3.1-8B) qwen3-30b-a3b       config.json of the release, bf16
 *   deepseek-v4-flash                            DeepSeek-V4-Flash (284B) in the release's
 *                                                formats: FP8 attention and shared expert,
 *                                                FP4 routed experts, bf16 embed, head,
 *                                                router, compressors; f32 hc, ape, sinks
 *   deepseek-v4.1-flash                          DeepSeek-V4.1-Flash as DEEPSEEK_V4.md 5.8 and
 *                                                ENGRAM.md 7 state it (hidden 5120, 40 layers,
 *                                                384 experts, V4.1's backbone keys, Engram at
 *                                                layers 1 and 14: FP8 rows + ue8m0 scales),
 *                                                the rest assumed from V4-Flash, same formats
 *   +engram:ROWS   an Engram module at layer 1 (DeepSeek's demo layout: orders
 *                  2..3, 8 heads per order, head dim 64) whose table has about
 *                  ROWS rows (suffix k, M, B: 1e3, 1e6, 1e9; "1.5B" is 96e9
 *                  parameters); the table is a file, or host memory (see
 *                  model_synthetic_params); not on the DeepSeek shapes
 *   +engram-rows:SCALE  deepseek-v4.1-flash: its prime search starts at SCALE x
 *                  engram_vocab_size (1e-5..1), the tables' rows follow (about
 *                  SCALE x the release's 384M each)
 *   +experts:N     mixture-of-experts shapes: only the first N routed experts
 *                  (at least the experts per token)
 *   +layers:N      only the first N layers (quick tests; the shape is otherwise kept;
 *                  deepseek-v4-flash+layers:2 is 9.24 GB; V4.1's Engram layers at or
 *                  past N go)
 * The compressed tokenizer of a synthetic Engram model is the identity
 * (compressed id = token id, Vc = vocab_size): there is no tokenizer. */
typedef struct {
    /* Directory of the Engram table files (MODEL_ENGRAM_TABLE_FMT): a file is
     * written there when missing (deterministic in seed, progress on stderr)
     * and reused when it is the one this spec and seed make. NULL with
     * +engram: the table is made in host memory at each start (the same
     * bits; a DRAM-tier store over an anonymous mapping, private to the
     * process): for tables larger than the disk. NULL with
     * deepseek-v4.1-flash: the tables are FP8 tensors in the model's mapping
     * (the same bits; model_engram_export_tables writes them out). */
    const char *table_dir;
    engram_store_params store; /* how the tables are read */
    bool quiet;                /* no progress lines on stderr */
} model_synthetic_params;

model_synthetic_params model_synthetic_default_params(void);

/* The config a spec describes, nothing allocated. Returns MODEL_OK, or
 * MODEL_ERR_CONFIG with a one-line message naming the bad part of the spec. */
int model_synthetic_config(const char *spec, model_config *cfg, char *err, size_t errlen);

/* Makes a synthetic model: every matrix bf16 uniform with standard deviation
 * 0.02 from a counter-based generator seeded by seed (the same spec and seed
 * give the same bits on any thread count), norms 1, biases 0; filled by all
 * OpenMP threads. DeepSeek-V4: FP8 codes of those values under 2^-13 block
 * scales, FP4 random codes under 2^-7 (sd 0.023), other f32 tensors uniform
 * sd 0.02 but hc scales 1, tid2eid random distinct experts; V4.1's Engram: wkv
 * FP8 as above, q_weight * k_weight 1, table rows of those e4m3 codes under a
 * random ue8m0 scale per 32 (2^-14, 2^-13 or 2^-12) (model_synthetic.c). The
 * model owns the memory (model_destroy frees it).
 * Returns MODEL_OK and *out, or MODEL_ERR_CONFIG (bad spec), MODEL_ERR_NOMEM,
 * MODEL_ERR_IO (table file) with a one-line message. params may be NULL
 * (defaults: no table directory). */
int model_synthetic_ex(const char *spec, uint64_t seed, const model_synthetic_params *params, model **out,
                       char *err, size_t errlen);

/* model_synthetic_ex with default params (an Engram table in host memory). */
int model_synthetic(const char *spec, uint64_t seed, model **out, char *err, size_t errlen);

#endif
