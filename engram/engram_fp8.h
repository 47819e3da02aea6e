/* FP8 Engram table rows as DeepSeek-V4.1 stores them (../shared/ENGRAM.md
 * section 7): head_dim FP8 e4m3fn values per row and one ue8m0 scale byte per
 * 32 values, decoded bit-exactly to f32 (value = e4m3 * 2^(byte-127)). Two
 * layouts of the same bytes: the checkpoint's split tensors (embed.weight
 * [rows, head_dim] F8_E4M3 and embed.scale [rows, head_dim/32] F8_E8M0) and
 * the packed row (head_dim value bytes, then head_dim/32 scale bytes: 264 bytes
 * for head_dim 256). Pure functions: no I/O, no allocation. The scalar
 * conversions (fp8_e4m3_to_f32, fp8_ue8m0_to_f32) are in base/numeric.h. */
#ifndef ENGRAM_ENGRAM_FP8_H
#define ENGRAM_ENGRAM_FP8_H

#include <stddef.h>
#include <stdint.h>

/* Status codes (0 ok, negative errors; append only). */
typedef enum {
    ENGRAM_FP8_OK = 0,
    ENGRAM_FP8_EINVAL = -1, /* a layout value is out of range (head_dim, strides, NULL) */
    ENGRAM_FP8_ERANGE = -2, /* a row id is outside [0, n_rows) */
} engram_fp8_status;

/* Returns a static description of a status ("ok", ...). */
const char *engram_fp8_status_str(int status);

/* Values that share one ue8m0 scale byte. */
#define ENGRAM_FP8_BLOCK 32
/* Largest head_dim accepted by engram_fp8_table_check. */
#define ENGRAM_FP8_MAX_HEAD_DIM 65536

/* Decodes one row: out[i] = e4m3(values[i]) * ue8m0(scales[i / 32]) for
 * i < head_dim, rounded once to f32 (exact unless it overflows: then +-inf;
 * the quiet NaN 0x7fc00000 when either factor is NaN, whatever its sign or
 * payload, so that every decoder gives the same bits). values (head_dim bytes) and scales
 * (head_dim/32 bytes) are borrowed. head_dim must be a positive multiple of 32
 * (asserted: a programmer error). */
void engram_fp8_decode_row(const uint8_t *values, const uint8_t *scales, int head_dim, float *out);

/* Where the rows of one table are: row r's values at values + r*value_stride,
 * its scales at scales + r*scale_stride. Borrowed pointers (e.g. into a
 * safetensors mapping); the caller keeps them alive. */
typedef struct {
    const uint8_t *values;
    size_t value_stride; /* bytes from one row's values to the next */
    const uint8_t *scales;
    size_t scale_stride; /* bytes from one row's scales to the next */
    int64_t n_rows;
    int head_dim; /* values per row, a multiple of 32 */
} engram_fp8_table;

/* Bytes of one packed row: head_dim + head_dim/32 (264 for head_dim 256). */
size_t engram_fp8_packed_row_bytes(int head_dim);

/* A table of n_rows packed rows laid end to end from base (borrowed). */
engram_fp8_table engram_fp8_table_packed(const void *base, int64_t n_rows, int head_dim);

/* A table in the checkpoint's split layout: values (n_rows, head_dim) and
 * scales (n_rows, head_dim/32), both row-major and borrowed. */
engram_fp8_table engram_fp8_table_split(const void *values, const void *scales, int64_t n_rows,
                                        int head_dim);

/* Checks a table description: non-NULL pointers when n_rows > 0, n_rows >= 0,
 * head_dim a positive multiple of 32 up to ENGRAM_FP8_MAX_HEAD_DIM, strides at
 * least a row's bytes. Returns ENGRAM_FP8_OK or ENGRAM_FP8_EINVAL. */
int engram_fp8_table_check(const engram_fp8_table *t);

/* Gathers and decodes rows: out (n, head_dim) f32, out[i*head_dim + j] =
 * decoded value j of row rows[i]. Rows may repeat and come in any order.
 * Returns ENGRAM_FP8_OK; ENGRAM_FP8_EINVAL for a bad table (nothing written);
 * ENGRAM_FP8_ERANGE when some rows[i] is outside [0, n_rows): every row
 * before it is written, *bad (may be NULL) gets i. */
int engram_fp8_gather(const engram_fp8_table *t, const int64_t *rows, size_t n, float *out,
                      size_t *bad);

#endif
