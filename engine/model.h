/* A checkpoint directory in Hugging Face layout: config.json and the
 * *.safetensors files (all of them, or those named by
 * model.safetensors.index.json), mmap'd. Large matrices stay in their file
 * dtype (F32, BF16, F16) and are read in place; norms and biases are
 * converted to f32 at load. */
#ifndef ENGINE_MODEL_H
#define ENGINE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

typedef enum {
    MODEL_OK = 0,
    MODEL_ERR_IO = -1,      /* a file is missing or unreadable */
    MODEL_ERR_CONFIG = -2,  /* config.json is malformed, absurd or unsupported */
    MODEL_ERR_WEIGHTS = -3, /* a tensor is missing, of the wrong shape or dtype */
    MODEL_ERR_NOMEM = -4,
} model_status;

const char *model_status_str(int status);

typedef enum { ARCH_LLAMA, ARCH_QWEN2, ARCH_QWEN3, ARCH_MISTRAL } model_arch;
typedef enum { ROPE_DEFAULT, ROPE_LINEAR, ROPE_LLAMA3 } rope_type;

#define MODEL_MAX_EOS 8

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
} model_config;

/* Parses config.json text (untrusted). `label` names the file in messages.
 * Returns MODEL_OK or MODEL_ERR_CONFIG with a one-line message naming the key. */
int model_config_parse(const char *json, size_t len, const char *label, model_config *cfg,
                       char *err, size_t errlen);

/* A matrix read in place from the mapping: (rows, cols) row-major in `dt`. */
typedef struct {
    const void *data; /* borrowed from the safetensors mapping */
    dtype dt;
    int rows, cols;
} weight;

typedef struct {
    const float *attn_norm;      /* (d) */
    weight wq, wk, wv, wo;       /* (n_heads*hd, d) (kv*hd, d) (kv*hd, d) (d, n_heads*hd) */
    const float *bq, *bk, *bv, *bo; /* biases or NULL */
    const float *q_norm, *k_norm; /* (hd) or NULL */
    const float *ffn_norm;       /* (d) */
    weight w_gate, w_up, w_down; /* (ff, d) (ff, d) (d, ff) */
    const float *b_gate, *b_up, *b_down;
} layer_weights;

typedef struct model model;

struct model {
    model_config cfg;
    weight embed;             /* (vocab, d) */
    const float *final_norm;  /* (d) */
    weight lm_head;           /* (vocab, d); the embedding when tied */
    layer_weights *layers;    /* (n_layers) */
    /* ownership */
    safetensors **files;
    int n_files;
    float **owned; /* f32 copies of small tensors */
    int n_owned, cap_owned;
    char *dir;
};

/* Loads a checkpoint directory. Returns MODEL_OK and *out, or a negative
 * status with a one-line message naming the file and the tensor or key. */
int model_load(const char *dir, model **out, char *err, size_t errlen);

void model_destroy(model *m); /* accepts NULL */

/* Bytes of weights read per decoded token (all matrices once, embedding row aside). */
size_t model_weight_bytes_per_token(const model *m);

#endif
