/* Helpers shared by the files of the model module. Not a public interface.
 * Calls point one way: model.c (backbone) -> model_engram.c (Engram) and
 * model_moe.c (experts) -> model_read.c (config keys, tensors);
 * model_synthetic.c -> model_read.c, and model_dsv4.c for DeepSeek-V4's tensor list.
 * Nothing in model_read.c or model_engram.c calls into model.c. */
#ifndef ENGINE_MODEL_INTERNAL_H
#define ENGINE_MODEL_INTERNAL_H

#include <cjson/cJSON.h>

#include "engine/model/model.h"

/* model_read.c: config.json readers: absent or null -> def (INT32_MIN: required); present ->
 * checked for type and range. Return 0, or -1 with a message naming `key`. */
int model__get_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out,
                   const char *label, char *err, size_t errlen);
int model__get_num(const cJSON *o, const char *key, double def, double lo, double hi, double *out,
                   const char *label, char *err, size_t errlen);
int model__get_bool(const cJSON *o, const char *key, bool def, bool *out, const char *label,
                    char *err, size_t errlen);

/* model_read.c: tensor lookup over every file of the checkpoint; *file names the file. */
const st_tensor *model__find_tensor(const model *m, const char *name, const char **file);
/* A float matrix (rows, cols) read in place, or a vector (n) copied to f32. */
int model__load_matrix(model *m, const char *name, int rows, int cols, weight *w, char *err,
                       size_t errlen);
int model__load_vector(model *m, const char *name, int n, const float **out, char *err,
                       size_t errlen);

/* model_read.c: rows [row0, row0 + rows) of slice e of a 3-D tensor of
 * shape (n, srows, cols), read in place as a (rows, cols) matrix. */
int model__load_slice(model *m, const char *name, int n, int e, int srows, int cols, int row0, int rows,
                      weight *w, char *err, size_t errlen);

/* model_read.c: a matrix that may be quantized (DEEPSEEK_V4.md 4.4): name.weight (name without
 * ".weight") of rows x cols elements, F32/BF16/F16 as model__load_matrix, or F8_E4M3 [rows, cols]
 * with a scale grid [ceil(rows / B), ceil(cols / B)] (B = weight_block_size), or FP4 e2m1 packed
 * two per byte (I8 [rows, cols / 2] or F4 [rows, cols]) with scales [rows, ceil(cols / 32)]. The
 * scale is name.scale (release) or name.weight_scale_inv (transformers), F8_E8M0, U8 or F32. Read
 * in place. Returns MODEL_OK, or MODEL_ERR_WEIGHTS with one line naming the tensor. */
int model__load_qmatrix(model *m, const char *name, int rows, int cols, weight *w, char *err, size_t errlen);
/* model_read.c: model__load_slice for a stacked tensor that may be quantized (transformers'
 * in-memory experts): name [n, srows, cols] F8_E4M3, or FP4 in I8 [n, srows, cols / 2] or F4,
 * with name_scale_inv [n, grid rows, grid cols] (grid of one srows x cols matrix, as
 * model__load_qmatrix); F32/BF16/F16 as model__load_slice. The rows taken must not split a
 * scale block. Returns MODEL_OK, or MODEL_ERR_WEIGHTS with one line naming the tensor. */
int model__load_qslice(model *m, const char *name, int n, int e, int srows, int cols, int row0, int rows,
                       weight *w, char *err, size_t errlen);
/* model_read.c: the quantization_config key into c->quant_block_* (128 x 128 when absent); only
 * quant_method "fp8" is accepted. Returns 0, or -1 with a message naming the key. */
int model__parse_quant_config(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen);

/* model_read.c: a heap f32 buffer of n floats owned by the model (freed by model_destroy). */
float *model__own(model *m, size_t n);

/* model_engram.c: the "engram" object of config.json into c->engram. */
int model__parse_engram_config(const cJSON *root, model_config *c, const char *label, char *err,
                               size_t errlen);
/* model_engram.c: the compressed lookup (ENGRAM.md section 3) of e from the checkpoint's own
 * tokenizer. Returns MODEL_OK, or MODEL_ERR_IO (no tokenizer) / MODEL_ERR_WEIGHTS with a message. */
int model__engram_build_lookup(model *m, model_engram *e, char *err, size_t errlen);
/* model_engram.c: m->engram allocated (model_destroy frees it) and its lookup built. */
int model__engram_create(model *m, char *err, size_t errlen);
/* model_engram.c: compressed tokenizer, hash tables and tensors, after the backbone. */
int model__load_engram(model *m, char *err, size_t errlen);
void model__destroy_engram(model_engram *e);

/* model_moe.c: the mixture-of-experts keys into c->moe (all zero for a dense
 * architecture). */
int model__parse_moe_config(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen);
/* model_moe.c: layer i's router and experts into m->moe[i] (m->moe allocated
 * by the caller), and m->layers[i].moe pointed at them. */
int model__load_moe_layer(model *m, int i, char *err, size_t errlen);
void model__destroy_moe(model *m); /* frees m->moe */

/* model_dsv4.c: DeepSeek-V4's config.json keys (all of model_config for this
 * architecture), and its weights into m->dsv4, m->moe and the layers. */
int model__parse_dsv4_config(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen);
int model__load_dsv4(model *m, char *err, size_t errlen);
/* model_dsv4.c: weight.f32_activations on V4.1's ratio-1/2 products (the loader's and synthetic
 * models' weights, once their matrices are set). */
void model__dsv4_mark_f32_products(model *m);
void model__destroy_dsv4(model *m); /* frees m->dsv4 */

/* model_dsv4_engram.c: DeepSeek-V4.1's engram_* keys into c->engram_v41 (n_layers 0 without
 * them), refusing the V4.1 backbone keys not implemented; then, after the backbone, its
 * compressed tokenizer, hash tables and Engram tensors into m->engram. */
int model__parse_dsv4_engram(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen);
int model__load_dsv4_engram(model *m, char *err, size_t errlen);
/* model_dsv4_engram.c: the module's shape from c->engram_v41 and the compressed lookup already in
 * m->engram (lookup, lookup_n, vc): the hash tables (refused when the config disagrees with them
 * or with vc), the sizes, and one engram_weights per Engram layer hooked into its layer, its table
 * shaped as FP8 rows with ue8m0 scales but no tensor set (data NULL). Shared by the loader and
 * synthetic models (model_synthetic.c, identity lookup). */
int model__dsv4_engram_init(model *m, char *err, size_t errlen);

/* model_dsv4.c: m->dsv4, m->moe (routers' settings and empty expert tables,
 * layers pointed at them) for m->cfg; m->layers allocated by the caller.
 * Returns MODEL_OK or MODEL_ERR_NOMEM (model_destroy frees what was made). */
int model__dsv4_alloc(model *m);

/* How the release stores a DeepSeek-V4 tensor (DEEPSEEK_V4.md 4.1). */
typedef enum { DSV4_BF16, DSV4_FP8, DSV4_FP4, DSV4_F32, DSV4_I32 } dsv4_store;
typedef enum { DSV4_MATRIX, DSV4_VECTOR, DSV4_IDS } dsv4_tensor_kind;

/* One tensor of the walk: its shape, its storage, and where it goes. */
typedef struct {
    dsv4_tensor_kind kind;
    dsv4_store how;
    int rows, cols;       /* elements; a vector (1, n); ape (rate, cw); tid2eid (vocab, top_k) */
    weight *w;            /* DSV4_MATRIX: the slot */
    const float **v;      /* DSV4_VECTOR: the slot of rows * cols f32 values owned by the model */
    const int32_t **ids;  /* DSV4_IDS: tid2eid's slot, and its row count's */
    int *tid_rows;
    float init;           /* DSV4_VECTOR in a synthetic model: every value (1: norms, hc scales), NAN: random */
    bool per_token;       /* every decoded token reads all of it (not the embedding, nor routed experts) */
    int expert;           /* a routed expert's index, else -1 */
} dsv4_tensor;
typedef void (*dsv4_visit_fn)(void *ctx, const dsv4_tensor *t);

/* model_dsv4.c: every tensor of a DeepSeek-V4 model of m->cfg, in the release's
 * order (embed, head, norm, hc_head, then each layer's). Slots point into
 * m->dsv4, m->moe, m->layers where those exist (model__dsv4_alloc), else NULL. */
void model__dsv4_walk(model *m, dsv4_visit_fn fn, void *ctx);
/* model_dsv4.c: parameters (every matrix and f32 vector; tid2eid is not one)
 * from the config's shapes, or from the weights in place; bytes a decoded
 * token reads (model_weight_bytes_per_token). */
int64_t model__dsv4_param_count(const model_config *c);
int64_t model__dsv4_model_param_count(const model *m);
size_t model__dsv4_bytes_per_token(const model *m);

#endif
