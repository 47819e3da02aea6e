/* The Engram table file (see store.h for the layout): dtypes and row sizes,
 * the 4096-byte header (parse and check untrusted bytes; write), the export
 * writer (header, rows at their stride, padding to whole blocks; through a
 * temporary file renamed at the end), and the decoding of a stored row to
 * f32 that every tier shares. */
#include "engram/store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/err.h"
#include "base/numeric.h"
#include "engram/engram_fp8.h"

/* Table files are little-endian; rows are decoded with native loads. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "engram/store reads little-endian table files with native loads"
#endif

const char *engram_store_dtype_name(int dtype) {
    switch (dtype) {
    case ENGRAM_STORE_F32: return "f32";
    case ENGRAM_STORE_BF16: return "bf16";
    case ENGRAM_STORE_F16: return "f16";
    case ENGRAM_STORE_FP8_UE8M0: return "fp8_ue8m0";
    default: return "?";
    }
}

uint32_t engram_store_row_bytes(int dtype, uint32_t cols) {
    if (cols < 1 || cols > ENGRAM_STORE_MAX_COLS) return 0;
    switch (dtype) {
    case ENGRAM_STORE_F32: return cols * 4;
    case ENGRAM_STORE_BF16:
    case ENGRAM_STORE_F16: return cols * 2;
    case ENGRAM_STORE_FP8_UE8M0: return cols % ENGRAM_FP8_BLOCK ? 0 : cols + cols / ENGRAM_FP8_BLOCK;
    default: return 0;
    }
}

uint32_t engram_store_row_stride(uint32_t row_bytes) {
    if (row_bytes > ENGRAM_STORE_BLOCK)
        return (row_bytes + ENGRAM_STORE_BLOCK - 1) / ENGRAM_STORE_BLOCK * ENGRAM_STORE_BLOCK;
    uint32_t s = 1;
    while (s < row_bytes) s <<= 1;
    return s;
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

int engram_store_parse_header(const void *buf, size_t len, uint64_t file_size, engram_store_header *h,
                              char *err, size_t errlen) {
    const uint8_t *p = buf;
    int E = ENGRAM_STORE_EFORMAT;
    if (!buf || len < ENGRAM_STORE_HEADER_BYTES)
        return err_set(err, errlen, E, "truncated header (%zu bytes, need %u)", len, ENGRAM_STORE_HEADER_BYTES);
    if (memcmp(p, ENGRAM_STORE_MAGIC, 8)) return err_set(err, errlen, E, "wrong magic (not an Engram table file)");
    engram_store_header x;
    x.version = rd32(p + 8);
    x.dtype = rd32(p + 12);
    x.rows = rd64(p + 16);
    x.cols = rd32(p + 24);
    x.row_bytes = rd32(p + 28);
    x.row_stride = rd32(p + 32);
    x.data_offset = rd64(p + 40);
    if (x.version != ENGRAM_STORE_VERSION)
        return err_set(err, errlen, E, "unsupported version %u (this build reads %u)", x.version, ENGRAM_STORE_VERSION);
    if (!strcmp(engram_store_dtype_name((int)x.dtype), "?"))
        return err_set(err, errlen, E, "unknown dtype %u", x.dtype);
    uint32_t rb = engram_store_row_bytes((int)x.dtype, x.cols);
    if (!rb)
        return err_set(err, errlen, E, "cols %u invalid for dtype %s", x.cols, engram_store_dtype_name((int)x.dtype));
    if (x.row_bytes != rb)
        return err_set(err, errlen, E, "row_bytes %u, expected %u for %u %s values", x.row_bytes, rb, x.cols,
                       engram_store_dtype_name((int)x.dtype));
    if (x.row_stride != engram_store_row_stride(rb))
        return err_set(err, errlen, E, "row_stride %u, expected %u", x.row_stride, engram_store_row_stride(rb));
    if (rd32(p + 36)) return err_set(err, errlen, E, "reserved field is not zero");
    if (x.data_offset == 0 || x.data_offset % ENGRAM_STORE_BLOCK || x.data_offset > (1ull << 40))
        return err_set(err, errlen, E, "data_offset %llu is not a positive multiple of 4096",
                       (unsigned long long)x.data_offset);
    if (x.rows < 1 || x.rows > (1ull << 48) / x.row_stride)
        return err_set(err, errlen, E, "rows %llu out of range", (unsigned long long)x.rows);
    if (file_size) {
        uint64_t need = x.data_offset + (x.rows - 1) * x.row_stride + x.row_bytes;
        if (file_size < need)
            return err_set(err, errlen, E, "truncated: %llu rows need %llu bytes, file has %llu",
                           (unsigned long long)x.rows, (unsigned long long)need, (unsigned long long)file_size);
    }
    *h = x;
    return ENGRAM_STORE_OK;
}

/* The header block of a table (one data block after it): fields as
 * engram_store_parse_header reads them, zeros to 4096. */
static void header_encode(uint8_t hdr[ENGRAM_STORE_BLOCK], int dtype, uint64_t rows, uint32_t cols, uint32_t rb,
                          uint32_t stride) {
    memset(hdr, 0, ENGRAM_STORE_BLOCK);
    memcpy(hdr, ENGRAM_STORE_MAGIC, 8);
    wr32(hdr + 8, ENGRAM_STORE_VERSION);
    wr32(hdr + 12, (uint32_t)dtype);
    wr64(hdr + 16, rows);
    wr32(hdr + 24, cols);
    wr32(hdr + 28, rb);
    wr32(hdr + 32, stride);
    wr64(hdr + 40, ENGRAM_STORE_BLOCK);
}

int engram_store_write(const char *path, int dtype, uint64_t rows, uint32_t cols, engram_store_row_fn fill,
                       void *ctx, char *err, size_t errlen) {
    uint32_t rb = engram_store_row_bytes(dtype, cols);
    if (!path || !fill || !rb || rows < 1)
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "%s: bad table (dtype %d, %llu rows, %u cols)",
                       path ? path : "(null)", dtype, (unsigned long long)rows, cols);
    uint32_t stride = engram_store_row_stride(rb);
    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    /* a chunk of whole rows, at least 1 MiB */
    size_t per = stride >= (1u << 20) ? 1 : (1u << 20) / stride;
    uint8_t *chunk = calloc(per, stride);
    if (!tmp || !chunk) {
        free(tmp);
        free(chunk);
        return err_set(err, errlen, ENGRAM_STORE_ENOMEM, "out of memory");
    }
    snprintf(tmp, tlen, "%s.tmp", path);
    int rc = ENGRAM_STORE_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot create: %s", tmp, strerror(errno));
        goto out;
    }
    uint8_t hdr[ENGRAM_STORE_BLOCK];
    header_encode(hdr, dtype, rows, cols, rb, stride);
    if (fwrite(hdr, 1, sizeof(hdr), f) != sizeof(hdr)) goto ioerr;
    uint64_t total = 0;
    for (uint64_t r = 0; r < rows;) {
        size_t k = rows - r < per ? (size_t)(rows - r) : per;
        for (size_t i = 0; i < k; i++)
            if (fill(ctx, r + i, chunk + i * stride)) {
                rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: row %llu could not be produced", path,
                             (unsigned long long)(r + i));
                goto close;
            }
        if (fwrite(chunk, stride, k, f) != k) goto ioerr;
        total += (uint64_t)k * stride;
        r += k;
    }
    if (total % ENGRAM_STORE_BLOCK) { /* pad to whole blocks: direct reads of the last block are full */
        size_t pad = ENGRAM_STORE_BLOCK - total % ENGRAM_STORE_BLOCK;
        memset(hdr, 0, sizeof(hdr));
        if (fwrite(hdr, 1, pad, f) != pad) goto ioerr;
    }
    if (fflush(f) || fsync(fileno(f))) goto ioerr;
close:
    if (fclose(f) && rc == ENGRAM_STORE_OK)
        rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: close: %s", tmp, strerror(errno));
    if (rc == ENGRAM_STORE_OK && rename(tmp, path))
        rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (rc) unlink(tmp);
out:
    free(tmp);
    free(chunk);
    return rc;
ioerr:
    rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: write failed: %s", tmp, strerror(errno));
    goto close;
}

typedef struct {
    const uint8_t *data;
    uint32_t rb;
} dense_ctx;

static int dense_fill(void *ctx, uint64_t row, void *dst) {
    const dense_ctx *d = ctx;
    memcpy(dst, d->data + row * d->rb, d->rb);
    return 0;
}

int engram_store_write_dense(const char *path, int dtype, uint64_t rows, uint32_t cols, const void *data,
                             char *err, size_t errlen) {
    dense_ctx d = {data, engram_store_row_bytes(dtype, cols)};
    if (!data) return err_set(err, errlen, ENGRAM_STORE_EINVAL, "no data");
    return engram_store_write(path, dtype, rows, cols, dense_fill, &d, err, errlen);
}

void engram_store_decode_row(int dtype, uint32_t cols, const void *row, float *restrict out) {
    const uint8_t *restrict src = row;
    uint32_t c = cols;
    uint16_t v;
    switch (dtype) {
    case ENGRAM_STORE_F32: memcpy(out, src, (size_t)c * 4); break;
    case ENGRAM_STORE_BF16: /* little-endian host: see the check at the top */
        for (uint32_t j = 0; j < c; j++) {
            memcpy(&v, src + 2 * j, 2);
            out[j] = bf16_to_f32(v);
        }
        break;
    case ENGRAM_STORE_F16:
        for (uint32_t j = 0; j < c; j++) {
            memcpy(&v, src + 2 * j, 2);
            out[j] = f16_to_f32(v);
        }
        break;
    case ENGRAM_STORE_FP8_UE8M0: engram_fp8_decode_row(src, src + c, (int)c, out); break;
    default: break; /* rejected at open */
    }
}
