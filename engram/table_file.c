/* The Engram table file (see store.h for the layout): dtypes and row sizes,
 * the 4096-byte header (parse and check untrusted bytes; write), the export
 * writer (header, rows at their stride, padding to whole blocks, per-block
 * CRC-32C checksums; through a temporary file renamed at the end), the
 * checksums' verifier, and the decoding of a stored row to f32 that every
 * tier shares. */
#include "engram/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/crc32c.h"
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

/* The alignment of a row: 8 bytes, so that every row starts where an 8-byte
 * load may read it (a UVA gather over the mapped table reads rows 8 bytes at
 * a time when their size allows: bench/gpu_engram_fetch_kernels.cu), or the
 * row's own power of two for rows under 8 bytes. */
static uint32_t row_align(uint32_t row_bytes) {
    uint32_t a = 1;
    while (a < row_bytes && a < 8) a <<= 1;
    return a;
}

/* The least stride: row_bytes rounded up to its alignment. */
static uint32_t row_stride_dense(uint32_t row_bytes) {
    uint32_t a = row_align(row_bytes);
    return (row_bytes + a - 1) / a * a;
}

/* The stride files had before issue 17 (a power of two up to 4096, then a
 * multiple of 4096): the most padding any writer of this format used, so the
 * largest stride a reader accepts. */
static uint32_t row_stride_pow2(uint32_t row_bytes) {
    if (row_bytes > ENGRAM_STORE_BLOCK)
        return (row_bytes + ENGRAM_STORE_BLOCK - 1) / ENGRAM_STORE_BLOCK * ENGRAM_STORE_BLOCK;
    uint32_t s = 1;
    while (s < row_bytes) s <<= 1;
    return s;
}

/* Dense (row_stride_dense) unless the power-of-two stride
 * pads a row by less than 1/8 of the stride: then that. At the dense stride
 * a row crosses a 4 KiB block with a chance of about row_bytes / 4096 (one
 * row in 16 at 264 bytes, nearly every row at 4000), and the NVMe tier then
 * reads two blocks for it; one row in 16 costs nothing measurable
 * (bench/RESULTS.md, "Dense row stride"), but a second block for most rows
 * to save under 1/8 of the file is the worse deal. Rows of a power-of-two
 * size (bf16 and f32 rows of a power-of-two head_dim) are dense either way;
 * DeepSeek-V4.1's 264-byte rows, which 512 would pad by 48%, go dense. */
uint32_t engram_store_row_stride(uint32_t row_bytes) {
    uint32_t p = row_stride_pow2(row_bytes);
    return (uint64_t)(p - row_bytes) * 8 < p ? p : row_stride_dense(row_bytes);
}

/* Whether a file may put rows of row_bytes at `stride`: aligned as
 * row_align says, from the dense stride up to the old power-of-two one. Any
 * of those reads correctly; others are damage. */
static bool stride_ok(uint32_t row_bytes, uint32_t stride) {
    return stride >= row_bytes && stride <= row_stride_pow2(row_bytes) && stride % row_align(row_bytes) == 0;
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
    if (!stride_ok(rb, x.row_stride))
        return err_set(err, errlen, E, "row_stride %u invalid for %u-byte rows (a multiple of %u from %u to %u)",
                       x.row_stride, rb, row_align(rb), row_stride_dense(rb), row_stride_pow2(rb));
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

/* ---- per-block checksums ---- */

#define SUM_META 48u   /* where the checksum fields start */
#define SUM_HDR_END 88u /* and end (the header's own CRC last) */

/* The CRC-32C of each ENGRAM_STORE_SUM_BLOCK bytes of a stream fed in any
 * pieces. */
typedef struct {
    uint32_t *sums; /* (n) */
    uint64_t n, done;
    uint32_t crc, fill;
} block_sums;

static void sums_feed(block_sums *b, const uint8_t *p, size_t n) {
    while (n) {
        size_t k = ENGRAM_STORE_SUM_BLOCK - b->fill < n ? ENGRAM_STORE_SUM_BLOCK - b->fill : n;
        b->crc = crc32c(b->crc, p, k);
        b->fill += (uint32_t)k, p += k, n -= k;
        if (b->fill == ENGRAM_STORE_SUM_BLOCK && b->done < b->n) {
            b->sums[b->done++] = b->crc;
            b->crc = b->fill = 0;
        }
    }
}

static void sums_finish(block_sums *b) {
    if (b->fill && b->done < b->n) b->sums[b->done++] = b->crc;
}

/* The header block of a table (one data block after it): fields as
 * engram_store_parse_header reads them, the checksums' fields (sums_offset
 * 0: none), zeros to 4096. */
static void header_encode(uint8_t hdr[ENGRAM_STORE_BLOCK], int dtype, uint64_t rows, uint32_t cols, uint32_t rb,
                          uint32_t stride, uint64_t sums_offset, uint64_t n_blocks, uint32_t sums_crc) {
    memset(hdr, 0, ENGRAM_STORE_BLOCK);
    memcpy(hdr, ENGRAM_STORE_MAGIC, 8);
    wr32(hdr + 8, ENGRAM_STORE_VERSION);
    wr32(hdr + 12, (uint32_t)dtype);
    wr64(hdr + 16, rows);
    wr32(hdr + 24, cols);
    wr32(hdr + 28, rb);
    wr32(hdr + 32, stride);
    wr64(hdr + 40, ENGRAM_STORE_BLOCK);
    if (!sums_offset) return;
    memcpy(hdr + SUM_META, ENGRAM_STORE_SUM_MAGIC, 8);
    wr32(hdr + 56, ENGRAM_STORE_SUM_CRC32C);
    wr32(hdr + 60, ENGRAM_STORE_SUM_BLOCK);
    wr64(hdr + 64, sums_offset);
    wr64(hdr + 72, n_blocks);
    wr32(hdr + 80, sums_crc);
    wr32(hdr + 84, crc32c(0, hdr, 84));
}

int engram_store_write(const char *path, int dtype, uint64_t rows, uint32_t cols, uint32_t stride,
                       engram_store_row_fn fill, void *ctx, char *err, size_t errlen) {
    uint32_t rb = engram_store_row_bytes(dtype, cols);
    if (rb && !stride) stride = engram_store_row_stride(rb);
    if (!path || !fill || !rb || rows < 1 || !stride_ok(rb, stride) || rows > (1ull << 48) / stride)
        return err_set(err, errlen, ENGRAM_STORE_EINVAL, "%s: bad table (dtype %d, %llu rows, %u cols, stride %u)",
                       path ? path : "(null)", dtype, (unsigned long long)rows, cols, stride);
    size_t tlen = strlen(path) + 5;
    char *tmp = malloc(tlen);
    /* a chunk of whole rows, at least 1 MiB */
    size_t per = stride >= (1u << 20) ? 1 : (1u << 20) / stride;
    uint8_t *chunk = calloc(per, stride);
    uint64_t data_len = (rows * stride + ENGRAM_STORE_BLOCK - 1) / ENGRAM_STORE_BLOCK * ENGRAM_STORE_BLOCK;
    block_sums bs = {.n = (data_len + ENGRAM_STORE_SUM_BLOCK - 1) / ENGRAM_STORE_SUM_BLOCK};
    bs.sums = calloc(bs.n + ENGRAM_STORE_BLOCK / 4, 4); /* room for the padding to a block */
    if (!tmp || !chunk || !bs.sums) {
        free(tmp);
        free(chunk);
        free(bs.sums);
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
    header_encode(hdr, dtype, rows, cols, rb, stride, 0, 0, 0); /* the checksums' fields at the end */
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
        sums_feed(&bs, chunk, k * stride);
        total += (uint64_t)k * stride;
        r += k;
    }
    if (total % ENGRAM_STORE_BLOCK) { /* pad to whole blocks: direct reads of the last block are full */
        size_t pad = ENGRAM_STORE_BLOCK - total % ENGRAM_STORE_BLOCK;
        memset(hdr, 0, sizeof(hdr));
        if (fwrite(hdr, 1, pad, f) != pad) goto ioerr;
        sums_feed(&bs, hdr, pad);
    }
    sums_finish(&bs);
    /* the checksums (little-endian: the host's, see the check at the top),
     * padded to whole blocks, then the header again with their fields */
    size_t sums_len = (size_t)(bs.n * 4 + ENGRAM_STORE_BLOCK - 1) / ENGRAM_STORE_BLOCK * ENGRAM_STORE_BLOCK;
    if (fwrite(bs.sums, 1, sums_len, f) != sums_len) goto ioerr;
    header_encode(hdr, dtype, rows, cols, rb, stride, ENGRAM_STORE_BLOCK + data_len, bs.n,
                  crc32c(0, bs.sums, (size_t)bs.n * 4));
    if (fseek(f, 0, SEEK_SET) || fwrite(hdr, 1, sizeof(hdr), f) != sizeof(hdr)) goto ioerr;
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
    free(bs.sums);
    return rc;
ioerr:
    rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: write failed: %s", tmp, strerror(errno));
    goto close;
}

/* Reads the checksums' fields of hdr (SUM_HDR_END bytes of a file whose
 * table header h parsed, size bytes long) into r and *sums_offset, and
 * checks them. Returns OK (r->has_checksums false when the fields are all
 * zero, as in a file written before them) or EFORMAT with a message. */
static int sums_header(const uint8_t *hdr, const engram_store_header *h, uint64_t size,
                       engram_store_verify_result *r, uint64_t *sums_offset, uint32_t *sums_crc, char *err,
                       size_t errlen) {
    int E = ENGRAM_STORE_EFORMAT;
    bool zero = true;
    for (uint32_t i = SUM_META; i < SUM_HDR_END; i++) zero &= hdr[i] == 0;
    if (zero) return ENGRAM_STORE_OK;
    if (memcmp(hdr + SUM_META, ENGRAM_STORE_SUM_MAGIC, 8) || rd32(hdr + 84) != crc32c(0, hdr, 84))
        return err_set(err, errlen, E, "the header is damaged (its checksum does not match)");
    r->has_checksums = true;
    r->block_bytes = rd32(hdr + 60);
    *sums_offset = rd64(hdr + 64);
    r->n_blocks = rd64(hdr + 72);
    *sums_crc = rd32(hdr + 80);
    uint64_t data_end = h->data_offset + (h->rows * h->row_stride + ENGRAM_STORE_BLOCK - 1) / ENGRAM_STORE_BLOCK *
                                             ENGRAM_STORE_BLOCK;
    if (rd32(hdr + 56) != ENGRAM_STORE_SUM_CRC32C)
        return err_set(err, errlen, E, "unknown checksum kind %u (this build knows 1, CRC-32C)", rd32(hdr + 56));
    if (!r->block_bytes || r->block_bytes % ENGRAM_STORE_BLOCK || r->block_bytes > (1u << 30))
        return err_set(err, errlen, E, "checksum block size %u is not a multiple of 4096 up to 1 GiB", r->block_bytes);
    if (*sums_offset != data_end ||
        r->n_blocks != (data_end - h->data_offset + r->block_bytes - 1) / r->block_bytes)
        return err_set(err, errlen, E, "the checksum fields disagree with the table's size");
    if (size < *sums_offset + r->n_blocks * 4)
        return err_set(err, errlen, E, "truncated: the checksums need %llu bytes, the file has %llu",
                       (unsigned long long)(*sums_offset + r->n_blocks * 4), (unsigned long long)size);
    return ENGRAM_STORE_OK;
}

int engram_store_verify(const char *path, engram_store_verify_result *r, char *err, size_t errlen) {
    memset(r, 0, sizeof(*r));
    r->first_bad = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        int rc = err_set(err, errlen, ENGRAM_STORE_EIO, "%s: cannot open: %s", path, strerror(errno));
        if (fd >= 0) close(fd);
        return rc;
    }
    uint8_t hdr[SUM_HDR_END];
    uint32_t *sums = NULL;
    uint8_t *buf = NULL;
    char why[256];
    engram_store_header h;
    uint64_t sums_offset = 0;
    uint32_t sums_crc = 0;
    ssize_t got = pread(fd, hdr, sizeof(hdr), 0);
    /* the header's own checksum first: a flipped bit is named as such, not
     * as whatever field it made absurd */
    bool summed = got == (ssize_t)sizeof(hdr) && !memcmp(hdr + SUM_META, ENGRAM_STORE_SUM_MAGIC, 8);
    int rc = got < 0 ? err_set(why, sizeof(why), ENGRAM_STORE_EIO, "read failed: %s", strerror(errno))
             : summed && rd32(hdr + 84) != crc32c(0, hdr, 84)
                 ? err_set(why, sizeof(why), ENGRAM_STORE_EFORMAT, "the header is damaged (its checksum does not match)")
                 : engram_store_parse_header(hdr, (size_t)got, (uint64_t)st.st_size ? (uint64_t)st.st_size : 1, &h,
                                             why, sizeof(why));
    if (!rc && got < (ssize_t)sizeof(hdr)) rc = err_set(why, sizeof(why), ENGRAM_STORE_EFORMAT, "truncated header");
    if (!rc) rc = sums_header(hdr, &h, (uint64_t)st.st_size, r, &sums_offset, &sums_crc, why, sizeof(why));
    if (rc || !r->has_checksums) goto out;
    size_t sl = (size_t)r->n_blocks * 4;
    if (!(sums = malloc(sl ? sl : 1)) || !(buf = malloc(r->block_bytes))) {
        rc = err_set(why, sizeof(why), ENGRAM_STORE_ENOMEM, "out of memory");
        goto out;
    }
    if (pread(fd, sums, sl, (off_t)sums_offset) != (ssize_t)sl) {
        rc = err_set(why, sizeof(why), ENGRAM_STORE_EIO, "cannot read the checksums: %s", strerror(errno));
        goto out;
    }
    if (crc32c(0, sums, sl) != sums_crc) {
        rc = err_set(why, sizeof(why), ENGRAM_STORE_EFORMAT, "the checksum table is damaged (its checksum does not match)");
        goto out;
    }
    for (uint64_t i = 0; i < r->n_blocks; i++) {
        uint64_t off = h.data_offset + i * r->block_bytes;
        size_t len = sums_offset - off < r->block_bytes ? (size_t)(sums_offset - off) : r->block_bytes;
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n != (ssize_t)len) {
            rc = err_set(why, sizeof(why), ENGRAM_STORE_EIO, "block %llu: read failed: %s", (unsigned long long)i,
                         n < 0 ? strerror(errno) : "short read");
            goto out;
        }
        if (crc32c(0, buf, len) == sums[i]) continue;
        r->first_bad = (int64_t)i;
        r->bad_offset = off;
        r->bad_len = len;
        /* every row with a byte in [off, off + len): the first one may start in the block before and
         * straddle in (at the dense stride), the bytes of a stride past a row's end are padding */
        uint64_t lo = off - h.data_offset, last = (lo + len - 1) / h.row_stride;
        r->bad_row_first = lo < h.row_bytes ? 0 : (lo - h.row_bytes) / h.row_stride + 1;
        r->bad_row_last = last < h.rows ? last : h.rows - 1; /* below first: the block holds only padding */
        break;
    }
out:
    if (rc) err_set(err, errlen, rc, "%s: %s", path, why);
    free(sums);
    free(buf);
    close(fd);
    return rc;
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
    return engram_store_write(path, dtype, rows, cols, 0, dense_fill, &d, err, errlen);
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
