/* Checkpoint reading shared by the model's files: the typed config.json key
 * readers and the tensor lookup that checks dtype and shape, with the f32
 * copies the model owns; quantized matrices (FP8/FP4 with their scale
 * tensors, and quantization_config). It calls nothing else of the model, so the loaders
 * depend on it one way: model.c -> model_engram.c -> model_read.c, and
 * model_synthetic.c -> model_read.c. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/model/model_internal.h"
#include "engine/model/dtype.h"

/* ---- config.json keys ---- */

/* Reads an integer key into *out. Absent or null: *out = def (def < 0 and
 * required: error). Present: must be an integral number in [lo, hi]. */
int model__get_int(const cJSON *o, const char *key, int def, int lo, int hi, int *out,
                   const char *label, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        if (def == INT32_MIN) {
            snprintf(err, errlen, "%s: missing key %s", label, key);
            return -1;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi) {
        snprintf(err, errlen, "%s: key %s must be an integer in [%d, %d]", label, key, lo, hi);
        return -1;
    }
    *out = (int)v->valuedouble;
    return 0;
}

int model__get_num(const cJSON *o, const char *key, double def, double lo, double hi, double *out,
                   const char *label, char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi)) {
        snprintf(err, errlen, "%s: key %s must be a number in [%g, %g]", label, key, lo, hi);
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

int model__get_bool(const cJSON *o, const char *key, bool def, bool *out, const char *label,
                    char *err, size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) {
        snprintf(err, errlen, "%s: key %s must be true or false", label, key);
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}

/* ---- tensors ---- */

float *model__own(model *m, size_t n) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? 2 * m->cap_owned : 64;
        float **p = realloc(m->owned, (size_t)cap * sizeof(*p));
        if (!p) return NULL;
        m->owned = p;
        m->cap_owned = cap;
    }
    float *buf = malloc(n * sizeof(float));
    if (buf) m->owned[m->n_owned++] = buf;
    return buf;
}

const st_tensor *model__find_tensor(const model *m, const char *name, const char **file) {
    for (int i = 0; i < m->n_files; i++) {
        const st_tensor *t = safetensors_find(m->files[i], name);
        if (t) {
            *file = safetensors_label(m->files[i]);
            return t;
        }
    }
    return NULL;
}

static bool float_dtype(dtype t) { return t == DTYPE_F32 || t == DTYPE_BF16 || t == DTYPE_F16; }

/* Finds `name`, which must be F32, BF16 or F16; *file names its file. */
static int find_float_tensor(model *m, const char *name, const st_tensor **out, const char **file, char *err,
                             size_t errlen) {
    const st_tensor *t = model__find_tensor(m, name, file);
    if (!t) {
        snprintf(err, errlen, "%s: missing tensor %s", m->dir, name);
        return MODEL_ERR_WEIGHTS;
    }
    if (!float_dtype(t->dt)) {
        snprintf(err, errlen, "%s: tensor %s has dtype %s (expected F32, BF16 or F16)", *file, name,
                 dtype_name(t->dt));
        return MODEL_ERR_WEIGHTS;
    }
    *out = t;
    return MODEL_OK;
}

/* Finds `name` with shape (rows, cols) (cols 0: a vector of rows). */
static int get_tensor(model *m, const char *name, int rows, int cols, const st_tensor **out,
                      char *err, size_t errlen) {
    const char *file = NULL;
    const st_tensor *t;
    int rc = find_float_tensor(m, name, &t, &file, err, errlen);
    if (rc) return rc;
    bool ok = cols ? (t->ndim == 2 && t->shape[0] == rows && t->shape[1] == cols)
                   : (t->ndim == 1 && t->shape[0] == rows);
    if (!ok) {
        char got[128] = "", *p = got;
        for (int i = 0; i < t->ndim && p < got + sizeof(got) - 24; i++)
            p += sprintf(p, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        if (cols)
            snprintf(err, errlen, "%s: tensor %s has shape [%s], expected [%d, %d]", file, name, got, rows, cols);
        else
            snprintf(err, errlen, "%s: tensor %s has shape [%s], expected [%d]", file, name, got, rows);
        return MODEL_ERR_WEIGHTS;
    }
    if ((uintptr_t)t->data % dtype_size(t->dt) != 0) {
        /* Real writers align tensors; reading a misaligned one would be undefined behaviour. */
        snprintf(err, errlen, "%s: tensor %s is not aligned to its %zu-byte dtype", file, name,
                 dtype_size(t->dt));
        return MODEL_ERR_WEIGHTS;
    }
    *out = t;
    return MODEL_OK;
}

int model__load_matrix(model *m, const char *name, int rows, int cols, weight *w, char *err, size_t errlen) {
    const st_tensor *t;
    int rc = get_tensor(m, name, rows, cols, &t, err, errlen);
    if (rc) return rc;
    *w = (weight){.data = t->data, .dt = t->dt, .rows = rows, .cols = cols};
    return MODEL_OK;
}

int model__load_vector(model *m, const char *name, int n, const float **out, char *err, size_t errlen) {
    const st_tensor *t;
    int rc = get_tensor(m, name, n, 0, &t, err, errlen);
    if (rc) return rc;
    float *buf = model__own(m, (size_t)n);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return MODEL_ERR_NOMEM;
    }
    dtype_to_f32(buf, t->data, t->dt, (size_t)n);
    *out = buf;
    return MODEL_OK;
}

int model__load_slice(model *m, const char *name, int n, int e, int srows, int cols, int row0, int rows,
                      weight *w, char *err, size_t errlen) {
    const char *file = NULL;
    const st_tensor *t;
    int rc = find_float_tensor(m, name, &t, &file, err, errlen);
    if (rc) return rc;
    if (t->ndim != 3 || t->shape[0] != n || t->shape[1] != srows || t->shape[2] != cols) {
        snprintf(err, errlen, "%s: tensor %s has %d dimensions [%lld, %lld, %lld], expected [%d, %d, %d]", file,
                 name, t->ndim, (long long)(t->ndim > 0 ? t->shape[0] : 0), (long long)(t->ndim > 1 ? t->shape[1] : 0),
                 (long long)(t->ndim > 2 ? t->shape[2] : 0), n, srows, cols);
        return MODEL_ERR_WEIGHTS;
    }
    if ((uintptr_t)t->data % dtype_size(t->dt) != 0) {
        snprintf(err, errlen, "%s: tensor %s is not aligned to its %zu-byte dtype", file, name, dtype_size(t->dt));
        return MODEL_ERR_WEIGHTS;
    }
    size_t off = ((size_t)e * srows + (size_t)row0) * (size_t)cols * dtype_size(t->dt);
    *w = (weight){.data = (const char *)t->data + off, .dt = t->dt, .rows = rows, .cols = cols};
    return MODEL_OK;
}

/* ---- quantized matrices (DEEPSEEK_V4.md 1.5, 4.4) ---- */

int model__parse_quant_config(const cJSON *root, model_config *c, const char *label, char *err, size_t errlen) {
    c->quant_block_rows = c->quant_block_cols = 128;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (!q || cJSON_IsNull(q)) return 0;
    if (!cJSON_IsObject(q)) {
        snprintf(err, errlen, "%s: key quantization_config must be an object", label);
        return -1;
    }
    /* Only FineGrainedFP8Config: any other method stores tensors we cannot read. */
    const cJSON *meth = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
    if (!cJSON_IsString(meth) || strcmp(meth->valuestring, "fp8") != 0) {
        snprintf(err, errlen, "%s: quantization_config.quant_method %s is not supported (only \"fp8\")", label,
                 cJSON_IsString(meth) ? meth->valuestring : "(missing or not a string)");
        return -1;
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(q, "scale_fmt");
    if (fmt && !cJSON_IsNull(fmt) &&
        !(cJSON_IsString(fmt) && (strcmp(fmt->valuestring, "ue8m0") == 0 || strcmp(fmt->valuestring, "float") == 0))) {
        snprintf(err, errlen, "%s: quantization_config.scale_fmt must be \"ue8m0\" or \"float\"", label);
        return -1;
    }
    const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
    if (!bs || cJSON_IsNull(bs)) return 0;
    int v[2];
    for (int i = 0; i < 2; i++) {
        const cJSON *e = cJSON_IsArray(bs) && cJSON_GetArraySize(bs) == 2 ? cJSON_GetArrayItem(bs, i) : NULL;
        if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble) || e->valuedouble < 1 ||
            e->valuedouble > 65536) {
            snprintf(err, errlen, "%s: quantization_config.weight_block_size must be two integers in [1, 65536]",
                     label);
            return -1;
        }
        v[i] = (int)e->valuedouble;
    }
    c->quant_block_rows = v[0], c->quant_block_cols = v[1];
    return 0;
}

/* "[a, b, c]" of a tensor's shape into buf. */
static const char *shape_str(const st_tensor *t, char *buf, size_t n) {
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < t->ndim && k + 24 < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    return buf;
}

/* The scale sibling of `name`.weight: name.scale (release naming) or
 * name.weight_scale_inv (transformers' naming; a multiplier despite the name).
 * NULL when neither exists; -1 with a message when both do. */
static int find_scale(const model *m, const char *name, const st_tensor **out, char *sname, size_t sn,
                      char *err, size_t errlen) {
    const char *file = NULL;
    char alt[512];
    snprintf(sname, sn, "%s.scale", name);
    snprintf(alt, sizeof(alt), "%s.weight_scale_inv", name);
    const st_tensor *a = model__find_tensor(m, sname, &file), *b = model__find_tensor(m, alt, &file);
    if (a && b) {
        snprintf(err, errlen, "%s: tensor %s.weight has two scales, %s and %s", m->dir, name, sname, alt);
        return -1;
    }
    if (b) snprintf(sname, sn, "%s", alt);
    *out = a ? a : b;
    return 0;
}

/* The format of a non-float weight tensor t holding `cols` columns, and the
 * last dimension it must have (I8 counts bytes, two codes each; F4 counts codes). */
static int quant_kind(const char *file, const char *tname, const st_tensor *t, int cols, weight *q, int *want_cols,
                      char *err, size_t errlen) {
    *want_cols = cols;
    if (t->dt == DTYPE_F8_E4M3) {
        q->fmt = WEIGHT_FP8;
        return MODEL_OK;
    }
    if (t->dt != DTYPE_I8 && t->dt != DTYPE_F4) {
        snprintf(err, errlen, "%s: tensor %s has dtype %s (expected F32, BF16, F16, F8_E4M3, or FP4 packed in I8 or F4)",
                 file, tname, dtype_name(t->dt));
        return MODEL_ERR_WEIGHTS;
    }
    q->fmt = WEIGHT_FP4;
    if (cols % 2) {
        snprintf(err, errlen, "%s: FP4 tensor %s would hold %d columns, an odd number (two codes per byte)", file, tname,
                 cols);
        return MODEL_ERR_WEIGHTS;
    }
    if (t->dt == DTYPE_I8) *want_cols = cols / 2;
    return MODEL_OK;
}

/* The configured block of a format and the scale grid of a (rows, cols)
 * matrix: FP8 weight_block_size blocks; FP4 one scale per 32 consecutive
 * values of a row (fixed by the format, not by the config). */
static void quant_grid(const model *m, const weight *q, int rows, int cols, int *br, int *bc, int *gr, int *gc) {
    bool fp8 = q->fmt == WEIGHT_FP8;
    *br = fp8 ? (m->cfg.quant_block_rows > 0 ? m->cfg.quant_block_rows : 128) : 1;
    *bc = fp8 ? (m->cfg.quant_block_cols > 0 ? m->cfg.quant_block_cols : 128) : 32;
    *gr = (int)(((int64_t)rows + *br - 1) / *br);
    *gc = (int)(((int64_t)cols + *bc - 1) / *bc);
}

/* Checks the scale tensor s of a quantized matrix, [gr, gc] (n == 0) or
 * stacked [n, gr, gc], and fills the scale fields of w. */
static int check_scale(const model *m, const char *sname, const st_tensor *s, int n, int gr, int gc, weight *w,
                       char *err, size_t errlen) {
    const char *file = NULL;
    char got[128], want[64];
    model__find_tensor(m, sname, &file);
    if (s->dt != DTYPE_F8_E8M0 && s->dt != DTYPE_U8 && s->dt != DTYPE_F32) {
        snprintf(err, errlen, "%s: scale tensor %s has dtype %s (expected F8_E8M0, U8 or F32)", file, sname,
                 dtype_name(s->dt));
        return MODEL_ERR_WEIGHTS;
    }
    bool ok = n ? s->ndim == 3 && s->shape[0] == n && s->shape[1] == gr && s->shape[2] == gc
                : s->ndim == 2 && s->shape[0] == gr && s->shape[1] == gc;
    if (!ok) {
        if (n) snprintf(want, sizeof(want), "%d, %d, %d", n, gr, gc);
        else snprintf(want, sizeof(want), "%d, %d", gr, gc);
        snprintf(err, errlen, "%s: scale tensor %s has shape [%s], expected [%s] for %s rows of %d columns", file,
                 sname, shape_str(s, got, sizeof(got)), want, w->fmt == WEIGHT_FP8 ? "FP8" : "FP4", w->cols);
        return MODEL_ERR_WEIGHTS;
    }
    if ((uintptr_t)s->data % dtype_size(s->dt) != 0) {
        snprintf(err, errlen, "%s: scale tensor %s is not aligned to its %zu-byte dtype", file, sname,
                 dtype_size(s->dt));
        return MODEL_ERR_WEIGHTS;
    }
    w->scale = s->data;
    w->scale_dt = s->dt;
    w->scale_rows = gr, w->scale_cols = gc;
    return MODEL_OK;
}

/* The elements one scale covers, for w->rows x w->cols on its scale grid.
 * transformers (Fp8Dequantize._dequantize_one) derives the block from the
 * grid, rows / scale_rows by cols / scale_cols, and refuses a grid that does
 * not divide the matrix. For the release's shapes (multiples of 128) that is
 * the 128 x 128 block, but a partial block makes them differ: 200 x 300 with
 * its [2, 3] grid is read by transformers in 100 x 100 blocks, not as 128 + 72
 * by 128 + 128 + 44. We match transformers wherever it loads the matrix; where
 * it refuses (129 rows on a grid of 2), we take the configured block itself,
 * the grid's own definition (DeepSeek's kernels read it so). */
static void set_block(weight *w, int cfg_rows, int cfg_cols) {
    bool divides = w->rows % w->scale_rows == 0 && w->cols % w->scale_cols == 0;
    w->block_rows = divides ? w->rows / w->scale_rows : cfg_rows;
    w->block_cols = divides ? w->cols / w->scale_cols : cfg_cols;
    /* An empty matrix has nothing to scale; keep the divisions of the readers defined. */
    if (w->block_rows < 1) w->block_rows = 1;
    if (w->block_cols < 1) w->block_cols = 1;
}

int model__load_qmatrix(model *m, const char *name, int rows, int cols, weight *w, char *err, size_t errlen) {
    char wname[512], sname[512], got[128];
    if ((size_t)snprintf(wname, sizeof(wname), "%s.weight", name) >= sizeof(wname)) {
        snprintf(err, errlen, "%s: tensor name %.64s... too long", m->dir, name);
        return MODEL_ERR_WEIGHTS;
    }
    const char *file = NULL;
    const st_tensor *t = model__find_tensor(m, wname, &file), *s = NULL;
    if (!t) {
        snprintf(err, errlen, "%s: missing tensor %s", m->dir, wname);
        return MODEL_ERR_WEIGHTS;
    }
    if (find_scale(m, name, &s, sname, sizeof(sname), err, errlen)) return MODEL_ERR_WEIGHTS;
    if (float_dtype(t->dt)) {
        /* transformers would multiply a float weight by such a scale; no checkpoint has one, so refuse it. */
        if (s) {
            snprintf(err, errlen, "%s: tensor %s has dtype %s but a scale tensor %s (only F8_E4M3 and FP4 take one)",
                     file, wname, dtype_name(t->dt), sname);
            return MODEL_ERR_WEIGHTS;
        }
        return model__load_matrix(m, wname, rows, cols, w, err, errlen);
    }
    weight q = {.data = t->data, .dt = t->dt, .rows = rows, .cols = cols};
    int want_cols, br, bc, gr, gc, rc;
    if ((rc = quant_kind(file, wname, t, cols, &q, &want_cols, err, errlen))) return rc;
    if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != want_cols) {
        snprintf(err, errlen, "%s: tensor %s (%s) has shape [%s], expected [%d, %d]", file, wname, dtype_name(t->dt),
                 shape_str(t, got, sizeof(got)), rows, want_cols);
        return MODEL_ERR_WEIGHTS;
    }
    if (!s) {
        snprintf(err, errlen, "%s: tensor %s (%s) has no scale tensor %s.scale or %s.weight_scale_inv", file, wname,
                 dtype_name(t->dt), name, name);
        return MODEL_ERR_WEIGHTS;
    }
    quant_grid(m, &q, rows, cols, &br, &bc, &gr, &gc);
    if ((rc = check_scale(m, sname, s, 0, gr, gc, &q, err, errlen))) return rc;
    set_block(&q, br, bc);
    *w = q;
    return MODEL_OK;
}

int model__load_qslice(model *m, const char *name, int n, int e, int srows, int cols, int row0, int rows,
                       weight *w, char *err, size_t errlen) {
    char sname[512], got[128];
    const char *file = NULL;
    const st_tensor *t = model__find_tensor(m, name, &file), *s;
    if (!t || float_dtype(t->dt)) return model__load_slice(m, name, n, e, srows, cols, row0, rows, w, err, errlen);
    weight q = {.dt = t->dt, .rows = srows, .cols = cols};
    int want_cols, br, bc, gr, gc, rc;
    if ((rc = quant_kind(file, name, t, cols, &q, &want_cols, err, errlen))) return rc;
    if (t->ndim != 3 || t->shape[0] != n || t->shape[1] != srows || t->shape[2] != want_cols) {
        snprintf(err, errlen, "%s: tensor %s (%s) has shape [%s], expected [%d, %d, %d]", file, name,
                 dtype_name(t->dt), shape_str(t, got, sizeof(got)), n, srows, want_cols);
        return MODEL_ERR_WEIGHTS;
    }
    snprintf(sname, sizeof(sname), "%s_scale_inv", name); /* transformers' FP8Experts naming */
    if (!(s = model__find_tensor(m, sname, &file))) {
        snprintf(err, errlen, "%s: tensor %s (%s) has no scale tensor %s", file, name, dtype_name(t->dt), sname);
        return MODEL_ERR_WEIGHTS;
    }
    quant_grid(m, &q, srows, cols, &br, &bc, &gr, &gc);
    if ((rc = check_scale(m, sname, s, n, gr, gc, &q, err, errlen))) return rc;
    set_block(&q, br, bc); /* the block of one expert's whole matrix, as transformers reads it */
    if (row0 % q.block_rows || (rows % q.block_rows && row0 + rows != srows)) {
        snprintf(err, errlen, "%s: rows [%d, %d) of tensor %s split its %d-row scale blocks", file, row0, row0 + rows,
                 name, q.block_rows);
        return MODEL_ERR_WEIGHTS;
    }
    size_t row_bytes = q.fmt == WEIGHT_FP8 ? (size_t)cols : (size_t)cols / 2;
    size_t sbytes = (size_t)gc * dtype_size(q.scale_dt);
    q.data = (const char *)t->data + ((size_t)e * srows + (size_t)row0) * row_bytes;
    q.scale = (const char *)q.scale + ((size_t)e * gr + (size_t)(row0 / q.block_rows)) * sbytes;
    q.rows = rows;
    q.scale_rows = (rows + q.block_rows - 1) / q.block_rows;
    *w = q;
    return MODEL_OK;
}
