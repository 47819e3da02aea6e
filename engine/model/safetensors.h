/* safetensors files: parse and validate the header of a file image (untrusted
 * bytes), and open files mmap'd read-only. Tensors are views into the mapping;
 * nothing is copied. Every check that can fail on a hostile file is a status
 * with a message naming the file and the tensor, never an assert. */
#ifndef ENGINE_SAFETENSORS_H
#define ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    DTYPE_F32 = 0,
    DTYPE_BF16,
    DTYPE_F16,
    DTYPE_F64,
    DTYPE_I64,
    DTYPE_I32,
    DTYPE_I16,
    DTYPE_I8,
    DTYPE_U8,
    DTYPE_BOOL,
    DTYPE_F8_E4M3, /* e4m3fn: torch.float8_e4m3fn writes "F8_E4M3" */
    DTYPE_F8_E5M2,
    /* appended: the values above stay what they were */
    DTYPE_F8_E8M0, /* ue8m0 exponent bytes (block scales), torch.float8_e8m0fnu */
    DTYPE_F4,      /* e2m1, two per byte (torch.float4_e2m1fn_x2); shape counts elements */
    DTYPE_U16,
    DTYPE_U32,
    DTYPE_U64,
    DTYPE_F8_E4M3FNUZ,
    DTYPE_F8_E5M2FNUZ,
    DTYPE_C64,
    DTYPE_COUNT
} dtype;

const char *dtype_name(dtype t);
/* Bytes per element; 1 for F4, whose byte holds two elements: sizes of F4
 * data come from dtype_bits. 0 for an out-of-range t. */
size_t dtype_size(dtype t);
size_t dtype_bits(dtype t); /* bits per element: 4 for F4, else 8 * dtype_size */

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u << 20) /* the format's own limit on header bytes */

typedef struct {
    char *name;
    dtype dt;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t numel;
    const void *data; /* borrowed: points into the file mapping */
    size_t nbytes;
} st_tensor;

typedef struct safetensors safetensors;

typedef enum {
    ST_OK = 0,
    ST_ERR_IO = -1,     /* open, stat or mmap failed */
    ST_ERR_FORMAT = -2, /* header or layout violates the format */
    ST_ERR_NOMEM = -3,
} st_status;

/* Parses a whole file image of `size` bytes (header and data). `data` must
 * outlive the result. `label` names the file in messages. Returns ST_OK and
 * *out, or a negative status with a one-line message in err. */
int safetensors_parse(const uint8_t *data, size_t size, const char *label, safetensors **out,
                      char *err, size_t errlen);

/* Opens and mmaps `path`, then parses it; the mapping lives until destroy. */
int safetensors_open(const char *path, safetensors **out, char *err, size_t errlen);

/* The same, but when align > 1 (a power of two) and the data section does
 * not start on an align boundary in the file (the format pads its header to
 * 8 bytes only), the file is copied into anonymous memory placed so that it
 * does: each tensor whose offset in the section is a multiple of align (every
 * tensor of a checkpoint whose tensors are whole cache lines) then starts on
 * one. The copy is private memory where the mapping was shared page cache. */
int safetensors_open_ex(const char *path, size_t align, safetensors **out, char *err, size_t errlen);

void safetensors_destroy(safetensors *st); /* accepts NULL */

int safetensors_count(const safetensors *st);
const st_tensor *safetensors_get(const safetensors *st, int i);
const st_tensor *safetensors_find(const safetensors *st, const char *name); /* NULL if absent */
const char *safetensors_label(const safetensors *st);

#endif
