/* Checkpoint reading shared by the model's files: the typed config.json key
 * readers and the tensor lookup that checks dtype and shape, with the f32
 * copies the model owns. It calls nothing else of the model, so the loaders
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

/* Finds `name` with shape (rows, cols) (cols 0: a vector of rows). */
static int get_tensor(model *m, const char *name, int rows, int cols, const st_tensor **out,
                      char *err, size_t errlen) {
    const char *file = NULL;
    const st_tensor *t = model__find_tensor(m, name, &file);
    if (!t) {
        snprintf(err, errlen, "%s: missing tensor %s", m->dir, name);
        return MODEL_ERR_WEIGHTS;
    }
    if (!float_dtype(t->dt)) {
        snprintf(err, errlen, "%s: tensor %s has dtype %s (expected F32, BF16 or F16)", file, name,
                 dtype_name(t->dt));
        return MODEL_ERR_WEIGHTS;
    }
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
    const st_tensor *t = model__find_tensor(m, name, &file);
    if (!t) {
        snprintf(err, errlen, "%s: missing tensor %s", m->dir, name);
        return MODEL_ERR_WEIGHTS;
    }
    if (!float_dtype(t->dt)) {
        snprintf(err, errlen, "%s: tensor %s has dtype %s (expected F32, BF16 or F16)", file, name,
                 dtype_name(t->dt));
        return MODEL_ERR_WEIGHTS;
    }
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
