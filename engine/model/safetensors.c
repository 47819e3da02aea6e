/* safetensors reader. Layout: u64 little-endian header length N, N bytes of
 * JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
 * "__metadata__": {...}}, then the data region; offsets are relative to it.
 * We check what a lying file can get wrong: N past the end, offsets past the
 * end or reversed, byte counts that disagree with dtype x shape, overlapping
 * tensors, duplicate names, unknown dtypes, shapes that overflow. */
#include "engine/model/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct safetensors {
    char *label;
    void *map; /* owned mapping, or NULL when parsing a caller's buffer */
    void *copy; /* owned aligned copy of the file (safetensors_open_ex), or NULL */
    size_t map_size;
    st_tensor *tensors;
    int n;
};

/* Names as safetensors (0.8) writes them, with the bits of one element. */
static const struct {
    const char *name;
    size_t bits;
} dtype_info[DTYPE_COUNT] = {
    [DTYPE_F32] = {"F32", 32},          [DTYPE_BF16] = {"BF16", 16},
    [DTYPE_F16] = {"F16", 16},          [DTYPE_F64] = {"F64", 64},
    [DTYPE_I64] = {"I64", 64},          [DTYPE_I32] = {"I32", 32},
    [DTYPE_I16] = {"I16", 16},          [DTYPE_I8] = {"I8", 8},
    [DTYPE_U8] = {"U8", 8},             [DTYPE_BOOL] = {"BOOL", 8},
    [DTYPE_F8_E4M3] = {"F8_E4M3", 8},   [DTYPE_F8_E5M2] = {"F8_E5M2", 8},
    [DTYPE_F8_E8M0] = {"F8_E8M0", 8},   [DTYPE_F4] = {"F4", 4},
    [DTYPE_U16] = {"U16", 16},          [DTYPE_U32] = {"U32", 32},
    [DTYPE_U64] = {"U64", 64},          [DTYPE_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8},
    [DTYPE_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8}, [DTYPE_C64] = {"C64", 64},
};

const char *dtype_name(dtype t) { return (unsigned)t < DTYPE_COUNT ? dtype_info[t].name : "?"; }
size_t dtype_bits(dtype t) { return (unsigned)t < DTYPE_COUNT ? dtype_info[t].bits : 0; }
size_t dtype_size(dtype t) { return (dtype_bits(t) + 7) / 8; }

static int dtype_parse(const char *s, dtype *out) {
    for (int i = 0; i < DTYPE_COUNT; i++)
        if (strcmp(s, dtype_info[i].name) == 0) {
            *out = (dtype)i;
            return 0;
        }
    return -1;
}

static int cmp_by_offset(const void *a, const void *b) {
    const st_tensor *x = a, *y = b;
    const uint8_t *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* Parses one tensor entry into t; returns 0 or -1 with err filled. */
static int parse_entry(const cJSON *e, const uint8_t *base, size_t data_size, const char *label,
                       st_tensor *t, char *err, size_t errlen) {
    const char *name = e->string;
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsObject(e) || !cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) ||
        cJSON_GetArraySize(jo) != 2) {
        snprintf(err, errlen, "%s: tensor %s: entry needs dtype, shape and data_offsets", label, name);
        return -1;
    }
    if (dtype_parse(jd->valuestring, &t->dt) != 0) {
        snprintf(err, errlen, "%s: tensor %s: unknown dtype %s", label, name, jd->valuestring);
        return -1;
    }
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS) {
        snprintf(err, errlen, "%s: tensor %s: %d dimensions (max %d)", label, name, nd, ST_MAX_DIMS);
        return -1;
    }
    t->ndim = nd;
    size_t numel = 1;
    for (int i = 0; i < nd; i++) {
        const cJSON *d = cJSON_GetArrayItem(js, i);
        /* JSON numbers are doubles: reject fractions, negatives and > 2^53. */
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9007199254740992.0 ||
            d->valuedouble != (double)(int64_t)d->valuedouble) {
            snprintf(err, errlen, "%s: tensor %s: bad shape dimension %d", label, name, i);
            return -1;
        }
        t->shape[i] = (int64_t)d->valuedouble;
        if (__builtin_mul_overflow(numel, (size_t)t->shape[i], &numel)) {
            snprintf(err, errlen, "%s: tensor %s: shape overflows", label, name);
            return -1;
        }
    }
    t->numel = numel;
    double ob = cJSON_GetArrayItem(jo, 0)->valuedouble, oe = cJSON_GetArrayItem(jo, 1)->valuedouble;
    if (!cJSON_IsNumber(cJSON_GetArrayItem(jo, 0)) || !cJSON_IsNumber(cJSON_GetArrayItem(jo, 1)) ||
        ob < 0 || oe < ob || oe > (double)data_size || ob != (double)(uint64_t)ob ||
        oe != (double)(uint64_t)oe) {
        snprintf(err, errlen, "%s: tensor %s: data_offsets [%.0f, %.0f] outside the %zu data bytes",
                 label, name, ob, oe, data_size);
        return -1;
    }
    /* Sub-byte dtypes (F4) must fill whole bytes, as safetensors itself demands. */
    size_t nbits, nbytes;
    if (__builtin_mul_overflow(numel, dtype_bits(t->dt), &nbits)) {
        snprintf(err, errlen, "%s: tensor %s: shape overflows", label, name);
        return -1;
    }
    if (nbits % 8) {
        snprintf(err, errlen, "%s: tensor %s: %zu elements of %s do not fill whole bytes", label, name,
                 numel, dtype_name(t->dt));
        return -1;
    }
    nbytes = nbits / 8;
    if (nbytes != (size_t)oe - (size_t)ob) {
        snprintf(err, errlen, "%s: tensor %s: %zu bytes at data_offsets but dtype %s x shape needs %zu",
                 label, name, (size_t)oe - (size_t)ob, dtype_name(t->dt), nbytes);
        return -1;
    }
    t->data = base + (size_t)ob;
    t->nbytes = nbytes;
    t->name = strdup(name);
    return t->name ? 0 : -1;
}

/* The header's length: the file's first 8 bytes, little-endian (size >= 8). */
static uint64_t header_len(const uint8_t *data) {
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
    return hlen;
}

int safetensors_parse(const uint8_t *data, size_t size, const char *label, safetensors **out,
                      char *err, size_t errlen) {
    *out = NULL;
    if (size < 8) {
        snprintf(err, errlen, "%s: %zu bytes, too short for a safetensors header", label, size);
        return ST_ERR_FORMAT;
    }
    uint64_t hlen = header_len(data);
    if (hlen > ST_MAX_HEADER || hlen > size - 8) {
        snprintf(err, errlen, "%s: header length %llu past the end of the %zu-byte file", label,
                 (unsigned long long)hlen, size);
        return ST_ERR_FORMAT;
    }
    const uint8_t *base = data + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    cJSON *root = cJSON_ParseWithLength((const char *)data + 8, (size_t)hlen);
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "%s: header is not a JSON object", label);
        cJSON_Delete(root);
        return ST_ERR_FORMAT;
    }
    safetensors *st = calloc(1, sizeof(*st));
    int n = cJSON_GetArraySize(root);
    if (!st || !(st->label = strdup(label)) || !(st->tensors = calloc((size_t)n + 1, sizeof(st_tensor)))) {
        cJSON_Delete(root);
        safetensors_destroy(st);
        snprintf(err, errlen, "%s: out of memory", label);
        return ST_ERR_NOMEM;
    }
    int rc = ST_OK;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (e->string && strcmp(e->string, "__metadata__") == 0) continue;
        if (!e->string || parse_entry(e, base, data_size, label, &st->tensors[st->n], err, errlen)) {
            rc = ST_ERR_FORMAT;
            break;
        }
        st->n++;
    }
    cJSON_Delete(root);
    if (rc == ST_OK && st->n > 1) {
        /* Overlap check on tensors sorted by start; zero-sized tensors never overlap. */
        qsort(st->tensors, (size_t)st->n, sizeof(st_tensor), cmp_by_offset);
        const uint8_t *end = NULL;
        for (int i = 0; i < st->n; i++) {
            const st_tensor *t = &st->tensors[i];
            if (t->nbytes == 0) continue;
            if (end && (const uint8_t *)t->data < end) {
                snprintf(err, errlen, "%s: tensor %s overlaps the tensor before it", label, t->name);
                rc = ST_ERR_FORMAT;
                break;
            }
            end = (const uint8_t *)t->data + t->nbytes;
        }
        qsort(st->tensors, (size_t)st->n, sizeof(st_tensor), cmp_by_name);
        for (int i = 1; rc == ST_OK && i < st->n; i++)
            if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
                snprintf(err, errlen, "%s: tensor %s appears twice", label, st->tensors[i].name);
                rc = ST_ERR_FORMAT;
            }
    }
    if (rc != ST_OK) {
        safetensors_destroy(st);
        return rc;
    }
    *out = st;
    return ST_OK;
}

int safetensors_open(const char *path, safetensors **out, char *err, size_t errlen) {
    return safetensors_open_ex(path, 0, out, err, errlen);
}

/* How far the data section of a mapped file of size bytes starts past an
 * align boundary (0 when aligned, or when the header length is out of range:
 * the parse then says why). */
static size_t data_misalign(const uint8_t *map, size_t size, size_t align) {
    if (align < 2 || size < 8) return 0;
    uint64_t hlen = header_len(map);
    if (hlen > size - 8) return 0;
    return (size_t)((8 + hlen) & (align - 1));
}

int safetensors_open_ex(const char *path, size_t align, safetensors **out, char *err, size_t errlen) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return ST_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(fd);
        return ST_ERR_IO;
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (map == MAP_FAILED) {
            snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            return ST_ERR_IO;
        }
    }
    close(fd);
    uint8_t *copy = NULL; /* the aligned copy's allocation, when one is made */
    const uint8_t *image = map ? map : (const void *)"";
    size_t mis = map ? data_misalign(map, size, align) : 0;
    if (mis) {
        if (!(copy = aligned_alloc(align, (size + 2 * align - 1) / align * align))) {
            munmap(map, size);
            snprintf(err, errlen, "%s: out of memory for an aligned copy of %zu bytes", path, size);
            return ST_ERR_NOMEM;
        }
        memcpy(copy + (align - mis), map, size); /* the data section now starts at copy + k align */
        munmap(map, size);
        map = NULL;
        image = copy + (align - mis);
    }
    int rc = safetensors_parse(image, size, path, out, err, errlen);
    if (rc != ST_OK) {
        if (map) munmap(map, size);
        free(copy);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_size = size;
    (*out)->copy = copy;
    return ST_OK;
}

void safetensors_destroy(safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->n; i++) free(st->tensors[i].name);
    free(st->tensors);
    if (st->map) munmap(st->map, st->map_size);
    free(st->copy);
    free(st->label);
    free(st);
}

int safetensors_count(const safetensors *st) { return st->n; }
const st_tensor *safetensors_get(const safetensors *st, int i) { return &st->tensors[i]; }
const char *safetensors_label(const safetensors *st) { return st->label; }

const st_tensor *safetensors_find(const safetensors *st, const char *name) {
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, st->tensors, (size_t)st->n, sizeof(st_tensor), cmp_by_name);
}
