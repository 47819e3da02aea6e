/* Engram part of a checkpoint: the "engram" object of config.json, the
 * compressed tokenizer built from the checkpoint's own tokenizer.json, the
 * hash tables (engram/ngram_hash) and the module tensors
 * model.layers.{i}.engram.<reference module path>. Every disagreement
 * between config, tokenizer and tensors refuses the load with a message
 * naming the field or tensor. Also the tables as aligned table files
 * (engram/store): written from the tensors (engram-tables export, or at
 * first start), validated on reuse, opened under one DRAM budget. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model/model_internal.h"
#include "engram/engram_lookup.h"
#include "engine/model/dtype.h"
#include "tokenizer/tokenizer.h"

ngram_hash_config model_engram_hash_config(const engram_config *ec, int64_t vc, int64_t compressed_pad_id) {
    return (ngram_hash_config){
        .engram_vocab_size = ec->vocab_size,
        .max_ngram_size = ec->max_ngram_size,
        .n_embed_per_ngram = ec->n_embed_per_ngram,
        .n_head_per_ngram = ec->n_head_per_ngram,
        .layer_ids = ec->layer_ids,
        .n_layers = ec->n_layers,
        .pad_id = ec->pad_id,
        .seed = ec->seed,
        .kernel_size = ec->kernel_size,
        .hc_mult = ec->hc_mult,
        .compressed_vocab_size = vc,
        .compressed_pad_id = compressed_pad_id,
    };
}

/* An integer that JSON carries as a double: integral and within +-2^53. */
static int get_i64(const cJSON *v, int64_t lo, int64_t *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > 9007199254740992.0)
        return -1;
    *out = (int64_t)v->valuedouble;
    return 0;
}

#define EFAIL(...)                                                                                 \
    do {                                                                                           \
        snprintf(err, errlen, __VA_ARGS__);                                                        \
        return -1;                                                                                 \
    } while (0)

int model__parse_engram_config(const cJSON *root, model_config *c, const char *label, char *err,
                               size_t errlen) {
    engram_config *e = &c->engram;
    memset(e, 0, sizeof(*e));
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "engram");
    if (!o || cJSON_IsNull(o)) return 0;
    if (!cJSON_IsObject(o)) EFAIL("%s: key engram must be an object", label);
    e->present = true;
    int v;
    if (model__get_int(o, "max_ngram_size", INT32_MIN, 2, NGRAM_HASH_MAX_NGRAM, &e->max_ngram_size,
                       label, err, errlen) ||
        model__get_int(o, "n_head_per_ngram", INT32_MIN, 1, NGRAM_HASH_MAX_HEADS, &e->n_head_per_ngram,
                       label, err, errlen) ||
        model__get_int(o, "kernel_size", INT32_MIN, 1, 64, &e->kernel_size, label, err, errlen) ||
        model__get_int(o, "hc_mult", 1, 1, ENGRAM_MAX_HC, &e->hc_mult, label, err, errlen) ||
        model__get_int(o, "n_embed_per_ngram", INT32_MIN, 1, 1 << 20, &v, label, err, errlen))
        return -1;
    e->n_embed_per_ngram = v;

    const cJSON *vs = cJSON_GetObjectItemCaseSensitive(o, "engram_vocab_size");
    if (!cJSON_IsArray(vs) || cJSON_GetArraySize(vs) != e->max_ngram_size - 1)
        EFAIL("%s: engram.engram_vocab_size must be an array of max_ngram_size-1 = %d integers", label,
              e->max_ngram_size - 1);
    for (int i = 0; i < e->max_ngram_size - 1; i++)
        if (get_i64(cJSON_GetArrayItem(vs, i), 1, &e->vocab_size[i]))
            EFAIL("%s: engram.engram_vocab_size[%d] must be a positive integer", label, i);

    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "layer_ids");
    int n = cJSON_GetArraySize(ids);
    if (!cJSON_IsArray(ids) || n < 1 || n > ENGRAM_MAX_LAYERS)
        EFAIL("%s: engram.layer_ids must be an array of 1 to %d layer indices", label, ENGRAM_MAX_LAYERS);
    for (int i = 0; i < n; i++) {
        if (get_i64(cJSON_GetArrayItem(ids, i), 0, &e->layer_ids[i]) || e->layer_ids[i] >= c->n_layers)
            EFAIL("%s: engram.layer_ids[%d] must be a layer index below num_hidden_layers %d", label, i,
                  c->n_layers);
        for (int j = 0; j < i; j++)
            if (e->layer_ids[j] == e->layer_ids[i])
                EFAIL("%s: engram.layer_ids lists layer %lld twice", label, (long long)e->layer_ids[i]);
    }
    e->n_layers = n;

    const cJSON *pad = cJSON_GetObjectItemCaseSensitive(o, "pad_id");
    if (get_i64(pad, 0, &e->pad_id)) EFAIL("%s: engram.pad_id must be a non-negative integer", label);
    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(o, "seed");
    if (!seed || cJSON_IsNull(seed))
        e->seed = 0;
    else if (get_i64(seed, 0, &e->seed))
        EFAIL("%s: engram.seed must be a non-negative integer", label);
    const cJSON *cv = cJSON_GetObjectItemCaseSensitive(o, "compressed_vocab_size");
    if (cv && !cJSON_IsNull(cv) && get_i64(cv, 1, &e->compressed_vocab_size))
        EFAIL("%s: engram.compressed_vocab_size must be a positive integer", label);
    if (e->hc_mult != 1)
        EFAIL("%s: engram.hc_mult %d needs a hyper-connection backbone; %s has one residual stream",
              label, e->hc_mult, "this architecture");
    return 0;
}

int model__engram_build_lookup(model *m, model_engram *e, char *err, size_t errlen) {
    tokenizer *tok = NULL;
    char terr[512];
    if (tokenizer_load(m->dir, &tok, terr, sizeof(terr)) != 0) {
        snprintf(err, errlen, "%s: Engram needs the checkpoint's tokenizer: %s", m->dir, terr);
        return MODEL_ERR_IO;
    }
    int rc = engram_lookup_build(tok, &e->lookup, &e->lookup_n, &e->vc, terr, sizeof(terr));
    tokenizer_destroy(tok);
    if (rc) {
        snprintf(err, errlen, "%s: %s", m->dir, terr);
        return MODEL_ERR_WEIGHTS;
    }
    return MODEL_OK;
}

/* short_conv.conv.weight: (G*d, 1, K) as nn.Conv1d stores a depthwise kernel. */
static int load_conv(model *m, const char *name, int channels, int k, const float **out, char *err,
                     size_t errlen) {
    const char *file = NULL;
    const st_tensor *t = model__find_tensor(m, name, &file);
    if (!t) {
        snprintf(err, errlen, "%s: missing tensor %s", m->dir, name);
        return MODEL_ERR_WEIGHTS;
    }
    if (t->dt != DTYPE_F32 && t->dt != DTYPE_BF16 && t->dt != DTYPE_F16) {
        snprintf(err, errlen, "%s: tensor %s has dtype %s (expected F32, BF16 or F16)", file, name,
                 dtype_name(t->dt));
        return MODEL_ERR_WEIGHTS;
    }
    if (t->ndim != 3 || t->shape[0] != channels || t->shape[1] != 1 || t->shape[2] != k) {
        snprintf(err, errlen, "%s: tensor %s must have shape [%d, 1, %d] (hc_mult*hidden, 1, kernel_size)",
                 file, name, channels, k);
        return MODEL_ERR_WEIGHTS;
    }
    if ((uintptr_t)t->data % dtype_size(t->dt)) {
        snprintf(err, errlen, "%s: tensor %s is not aligned to its dtype", file, name);
        return MODEL_ERR_WEIGHTS;
    }
    float *buf = model__own(m, (size_t)channels * k);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    dtype_to_f32(buf, t->data, t->dt, (size_t)channels * k);
    *out = buf;
    return MODEL_OK;
}

static int load_module(model *m, model_engram *e, int li, char *err, size_t errlen) {
    const model_config *c = &m->cfg;
    engram_weights *w = &e->layers[li];
    int d = c->hidden_size, G = e->hc_mult, E = e->embed_dim;
    w->li = li;
    w->layer_id = (int)c->engram.layer_ids[li];
    int64_t rows = ngram_hash_table_rows(e->hash, li);
    if (rows > INT32_MAX) {
        snprintf(err, errlen, "%s: Engram layer %d table of %lld rows is too large for this build",
                 m->dir, w->layer_id, (long long)rows);
        return MODEL_ERR_CONFIG;
    }
    char n[256];
    int rc;
#define P(...) (snprintf(n, sizeof(n), "model.layers.%d.engram.", w->layer_id), \
                snprintf(n + strlen(n), sizeof(n) - strlen(n), __VA_ARGS__), n)
    if ((rc = model__load_matrix(m, P("multi_head_embedding.embedding.weight"), (int)rows, e->head_dim,
                                 &w->table, err, errlen)) ||
        (rc = model__load_matrix(m, P("value_proj.weight"), d, E, &w->w_value, err, errlen)) ||
        (rc = model__load_vector(m, P("value_proj.bias"), d, &w->b_value, err, errlen)) ||
        (rc = load_conv(m, P("short_conv.conv.weight"), G * d, e->kernel_size, &w->conv_w, err, errlen)))
        return rc;
    for (int g = 0; g < G; g++)
        if ((rc = model__load_matrix(m, P("key_projs.%d.weight", g), d, E, &w->w_key[g], err, errlen)) ||
            (rc = model__load_vector(m, P("key_projs.%d.bias", g), d, &w->b_key[g], err, errlen)) ||
            (rc = model__load_vector(m, P("norm1.%d.weight", g), d, &w->norm1[g], err, errlen)) ||
            (rc = model__load_vector(m, P("norm2.%d.weight", g), d, &w->norm2[g], err, errlen)) ||
            (rc = model__load_vector(m, P("short_conv.norms.%d.weight", g), d, &w->conv_norm[g], err, errlen)))
            return rc;
#undef P
    m->layers[w->layer_id].engram = w;
    return MODEL_OK;
}

int model__engram_create(model *m, char *err, size_t errlen) {
    model_engram *e = calloc(1, sizeof(*e));
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    m->engram = e;
    return model__engram_build_lookup(m, e, err, errlen);
}

int model__load_engram(model *m, char *err, size_t errlen) {
    const engram_config *ec = &m->cfg.engram;
    int rc = model__engram_create(m, err, errlen);
    if (rc) return rc;
    model_engram *e = m->engram;
    if (ec->compressed_vocab_size && ec->compressed_vocab_size != e->vc) {
        snprintf(err, errlen,
                 "%s/config.json: engram.compressed_vocab_size is %lld but the tokenizer compresses to %lld",
                 m->dir, (long long)ec->compressed_vocab_size, (long long)e->vc);
        return MODEL_ERR_CONFIG;
    }
    if (ec->pad_id >= e->lookup_n) {
        snprintf(err, errlen, "%s/config.json: engram.pad_id %lld is outside the tokenizer's %lld ids",
                 m->dir, (long long)ec->pad_id, (long long)e->lookup_n);
        return MODEL_ERR_CONFIG;
    }
    ngram_hash_config hc = model_engram_hash_config(ec, e->vc, e->lookup[ec->pad_id]);
    char herr[256];
    if (ngram_hash_create(&hc, &e->hash, herr, sizeof(herr)) != NGRAM_HASH_OK) {
        snprintf(err, errlen, "%s/config.json: engram: %s", m->dir, herr);
        return MODEL_ERR_CONFIG;
    }
    e->n_layers = ec->n_layers;
    e->hc_mult = ec->hc_mult;
    e->kernel_size = ec->kernel_size;
    e->dilation = ec->max_ngram_size;
    e->n_heads = ngram_hash_n_heads(e->hash);
    e->head_dim = (int)ngram_hash_head_dim(e->hash);
    e->embed_dim = (int)ngram_hash_embed_dim(e->hash);
    e->layers = calloc((size_t)e->n_layers, sizeof(engram_weights));
    if (!e->layers) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    for (int li = 0; li < e->n_layers; li++)
        if ((rc = load_module(m, e, li, err, errlen))) return rc;
    return MODEL_OK;
}

/* The table-file dtype of a checkpoint tensor's dtype, 0 when it has none. An F8_E4M3 table
 * is DeepSeek-V4.1's (one ue8m0 scale per 32 values): its file rows are packed values + scales. */
static int table_dtype(dtype dt) {
    return dt == DTYPE_F32 ? ENGRAM_STORE_F32 : dt == DTYPE_BF16 ? ENGRAM_STORE_BF16 : dt == DTYPE_F16 ? ENGRAM_STORE_F16
           : dt == DTYPE_F8_E4M3 ? ENGRAM_STORE_FP8_UE8M0 : 0;
}

/* Rows copied from the tensor, with progress on stderr: \r updates on a
 * terminal, else a line every quarter (logs are not terminals). */
typedef struct {
    const uint8_t *data;
    const uint8_t *scales;  /* FP8 tables: (rows, cols/32) ue8m0 bytes appended to each row, else NULL */
    uint32_t scale_bytes;
    uint32_t row_bytes;     /* of data */
    uint64_t rows;
    const char *path;
    bool tty;
    int shown; /* last percentage (tty) or quarter (log) printed */
} export_ctx;

static int export_fill(void *ctx, uint64_t row, void *dst) {
    export_ctx *x = ctx;
    memcpy(dst, x->data + row * x->row_bytes, x->row_bytes);
    if (x->scales) memcpy((uint8_t *)dst + x->row_bytes, x->scales + row * x->scale_bytes, x->scale_bytes);
    int pct = (int)((row + 1) * 100 / x->rows);
    if (x->tty && pct != x->shown) {
        fprintf(stderr, "\rengram: writing %s: %3d%%%s", x->path, pct, pct == 100 ? "\n" : "");
        x->shown = pct;
    } else if (!x->tty && pct / 25 != x->shown) {
        fprintf(stderr, "engram: writing %s: %d%%\n", x->path, pct / 25 * 25);
        x->shown = pct / 25;
    }
    return 0;
}

/* Writes layer li's table file at path (through path.tmp, fsync, rename). */
static int export_layer(const model *m, int li, const char *path, char *err, size_t errlen) {
    const engram_weights *w = &m->engram->layers[li];
    int dt = table_dtype(w->table.dt);
    if (!dt) {
        snprintf(err, errlen, "%s: Engram layer %d table dtype %s has no table-file dtype", m->dir, w->layer_id,
                 dtype_name(w->table.dt));
        return MODEL_ERR_WEIGHTS;
    }
    if (!w->table.data) { /* a synthetic model's table made as a file or a store, never as a tensor */
        snprintf(err, errlen, "%s: Engram layer %d's table is no tensor in memory (it is read through a store); "
                 "a synthetic model writes its table files itself with --synthetic-table-dir", m->dir, w->layer_id);
        return MODEL_ERR_CONFIG;
    }
    bool fp8 = dt == ENGRAM_STORE_FP8_UE8M0;
    uint32_t cols = (uint32_t)w->table.cols;
    export_ctx x = {w->table.data, fp8 ? w->table.scale : NULL, fp8 ? cols / 32 : 0,
                    fp8 ? cols : engram_store_row_bytes(dt, cols), (uint64_t)w->table.rows,
                    path, isatty(STDERR_FILENO) == 1, -1};
    fprintf(stderr, "engram: layer %d: %d rows x %d %s -> %s\n", w->layer_id, w->table.rows, w->table.cols,
            engram_store_dtype_name(dt), path);
    int rc = engram_store_write(path, dt, x.rows, (uint32_t)w->table.cols, 0, export_fill, &x, err, errlen);
    if (rc && x.tty && x.shown >= 0 && x.shown < 100) fputc('\n', stderr);
    return rc == ENGRAM_STORE_OK ? MODEL_OK : rc == ENGRAM_STORE_ENOMEM ? MODEL_ERR_NOMEM : MODEL_ERR_IO;
}

static int make_dir(const char *dir, char *err, size_t errlen) {
    struct stat st;
    if (mkdir(dir, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create the Engram table directory: %s", dir, strerror(errno));
        return MODEL_ERR_IO;
    }
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: not a directory", dir);
        return MODEL_ERR_IO;
    }
    return MODEL_OK;
}

int model_engram_export_tables(const model *m, const char *dir, bool only_missing, char *err, size_t errlen) {
    if (!m->engram) {
        snprintf(err, errlen, "%s: the model has no Engram layers", m->dir);
        return MODEL_ERR_CONFIG;
    }
    int rc = make_dir(dir, err, errlen);
    for (int li = 0; li < m->engram->n_layers && rc == MODEL_OK; li++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), MODEL_ENGRAM_TABLE_FMT, dir, m->engram->layers[li].layer_id);
        if (only_missing && (lstat(path, &st) == 0 || errno != ENOENT)) continue; /* present: validated at open */
        rc = export_layer(m, li, path, err, errlen);
    }
    return rc;
}

static double mib(uint64_t b) { return (double)b / (1 << 20); }

int model_engram_use_tables(model *m, const char *dir, const engram_store_params *params, char *err,
                            size_t errlen) {
    model_engram *e = m->engram;
    if (!e) {
        snprintf(err, errlen, "%s: the model has no Engram layers to read tables for", m->dir);
        return MODEL_ERR_CONFIG;
    }
    int rc = model_engram_export_tables(m, dir, true, err, errlen);
    if (rc) return rc;
    /* One DRAM budget for all layers, shared in proportion to their tables. */
    engram_store_params p = *params;
    uint64_t bytes[ENGRAM_MAX_LAYERS], total = 0;
    for (int li = 0; li < e->n_layers; li++) {
        const weight *t = &e->layers[li].table;
        uint32_t rb = engram_store_row_bytes(table_dtype(t->dt), (uint32_t)t->cols);
        bytes[li] = (uint64_t)t->rows * engram_store_row_stride(rb ? rb : 1);
        total += bytes[li];
    }
    uint64_t budget = p.dram_budget, avail = 0;
    if (p.tier == ENGRAM_STORE_AUTO && !budget) { /* the default: all of it when it fits */
        avail = engram_store_mem_available();
        budget = !avail || total <= avail ? total : avail / 2;
    }
    engram_store *st[ENGRAM_MAX_LAYERS] = {0};
    for (int li = 0; li < e->n_layers && rc == MODEL_OK; li++) {
        const engram_weights *w = &e->layers[li];
        char path[4096], serr[512];
        snprintf(path, sizeof(path), MODEL_ENGRAM_TABLE_FMT, dir, w->layer_id);
        engram_store_params lp = p;
        if (budget && p.tier != ENGRAM_STORE_DRAM) {
            lp.dram_budget = (uint64_t)((unsigned __int128)budget * bytes[li] / (total ? total : 1));
            if (!lp.dram_budget) lp.dram_budget = 1; /* 0 would mean "decide for me" under AUTO */
        }
        int src = engram_store_open(path, &lp, &st[li], serr, sizeof(serr));
        if (src) {
            snprintf(err, errlen, "%s%s", serr,
                     src == ENGRAM_STORE_EFORMAT ? "; delete the file to have it rewritten from the checkpoint" : "");
            rc = src == ENGRAM_STORE_EFORMAT ? MODEL_ERR_WEIGHTS : src == ENGRAM_STORE_ENOMEM ? MODEL_ERR_NOMEM
                                                                                               : MODEL_ERR_IO;
            break;
        }
        engram_store_header h = engram_store_get_info(st[li]).header;
        int dt = table_dtype(w->table.dt);
        if (h.rows != (uint64_t)w->table.rows || h.cols != (uint32_t)w->table.cols || (int)h.dtype != dt) {
            snprintf(err, errlen,
                     "%s: table is [%llu, %u] %s but layer %d needs [%d, %d] %s from the checkpoint; delete the file "
                     "to have it rewritten",
                     path, (unsigned long long)h.rows, h.cols, engram_store_dtype_name((int)h.dtype), w->layer_id,
                     w->table.rows, w->table.cols, engram_store_dtype_name(dt));
            rc = MODEL_ERR_WEIGHTS;
        }
    }
    if (rc) {
        for (int li = 0; li < e->n_layers; li++) engram_store_close(st[li]);
        return rc;
    }
    engram_store_info in = engram_store_get_info(st[0]);
    uint64_t cache = 0;
    for (int li = 0; li < e->n_layers; li++) cache += engram_store_get_info(st[li]).cache_bytes;
    if (in.tier == ENGRAM_STORE_DRAM)
        fprintf(stderr, "engram: tables %.1f MiB in %s: whole tables in DRAM (mmap)%s\n", mib(total), dir,
                avail ? " (they fit in MemAvailable)" : "");
    else
        fprintf(stderr, "engram: tables %.1f MiB in %s: NVMe tier (%s, %s), DRAM row cache %.1f MiB of a %.1f MiB budget%s\n",
                mib(total), dir, in.direct ? "O_DIRECT" : "buffered", in.io_uring ? "io_uring" : "pread", mib(cache),
                mib(budget), avail ? " (half of MemAvailable: the tables do not fit)" : "");
    for (int li = 0; li < e->n_layers; li++) {
        engram_store_close(e->layers[li].store);
        e->layers[li].store = st[li];
    }
    return MODEL_OK;
}

void model_engram_store_stats(const model *m, engram_store_stats *sum) {
    memset(sum, 0, sizeof(*sum));
    for (int li = 0; m && m->engram && li < m->engram->n_layers; li++) {
        if (!m->engram->layers[li].store) continue;
        engram_store_stats x;
        engram_store_get_stats(m->engram->layers[li].store, &x);
        engram_store_stats_add(sum, &x);
    }
}

void model__destroy_engram(model_engram *e) {
    if (!e) return;
    for (int li = 0; e->layers && li < e->n_layers; li++) engram_store_close(e->layers[li].store);
    ngram_hash_destroy(e->hash);
    free(e->lookup);
    free(e->layers);
    free(e);
}
