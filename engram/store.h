/* The Engram table store, host tiers: one interface that gathers rows of an
 * Engram table as f32 wherever the table lives (DRAM: the table file mmap'd
 * MAP_SHARED, optionally mlock'd and huge-page advised; NVMe: O_DIRECT reads
 * through io_uring, or pread). Also the table file layout those tiers read:
 * a 4096-byte header, then rows at their own size rounded up to 8 bytes (a
 * row may straddle two 4 KiB blocks: the NVMe tier reads both), or at a
 * power of two where that pads by under 1/8. Over NVMe a DRAM budget
 * buys a row cache (CLOCK over fixed slots, admission by a TinyLFU frequency
 * sketch) fed ahead of use by a prefetch thread, and a hot-row file beside
 * the table that lets a restarted store warm that cache with large
 * sequential reads. No GPU here. */
#ifndef ENGRAM_STORE_H
#define ENGRAM_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Status codes (0 ok, negative errors; append only). */
typedef enum {
    ENGRAM_STORE_OK = 0,
    ENGRAM_STORE_EIO = -1,     /* a file cannot be opened, read, written or mapped */
    ENGRAM_STORE_EFORMAT = -2, /* the file is not a valid table file (magic, version, fields, size) */
    ENGRAM_STORE_EINVAL = -3,  /* a bad argument: parameters, descriptor */
    ENGRAM_STORE_ERANGE = -4,  /* a row id is outside [0, rows) */
    ENGRAM_STORE_ENOMEM = -5,
    ENGRAM_STORE_ELOCK = -6,   /* mlock refused (RLIMIT_MEMLOCK?) */
} engram_store_status;

/* Returns a static description of a status ("ok", ...). */
const char *engram_store_status_str(int status);

/* ---- table file layout (all integers little-endian) ----
 * offset size field
 *   0     8   magic "ENGRTBL\0"
 *   8     4   version (1)
 *  12     4   dtype (engram_store_dtype)
 *  16     8   rows
 *  24     4   cols (values per row: head_dim)
 *  28     4   row_bytes (bytes of one row's data)
 *  32     4   row_stride (engram_store_row_stride: row_bytes rounded up to a
 *             multiple of 8, or the old power-of-two stride when that pads by
 *             under 1/8; files written before issue 17 have row_bytes
 *             rounded up to a power of two when <= 4096, else to a multiple
 *             of 4096; readers take any stride between the two that is a
 *             multiple of 8 (of the row's power of two under 8 bytes). The
 *             version stayed 1: a reader from before refuses a new file
 *             whose stride differs from its power of two, naming
 *             row_stride, and reads the others, whose layout is unchanged)
 *  36     4   reserved (0)
 *  40     8   data_offset (a positive multiple of 4096)
 *  48..   the checksums' fields below, then zero up to data_offset
 * Row r's bytes sit at data_offset + r*row_stride; the file is at least
 * data_offset + (rows-1)*row_stride + row_bytes long (writers pad it to a
 * multiple of 4096).
 * Per-block checksums (written by engram_store_write since issue 23; a file
 * without them has zeros here, as every file before had, and readers that
 * do not know them ignore these bytes):
 *  48     8   "ENGRSUM\0" (zeros: no checksums)
 *  56     4   checksum kind (1: CRC-32C, base/crc32c.h)
 *  60     4   block_bytes: data bytes per checksum (65536)
 *  64     8   sums_offset: where the checksums are (after the data, a multiple of 4096)
 *  72     8   n_blocks: ceil(data bytes / block_bytes)
 *  80     4   CRC-32C of the n_blocks checksums as stored
 *  84     4   CRC-32C of header bytes [0, 84)
 * The data are the bytes [data_offset, sums_offset): the rows and their
 * padding; block i is [data_offset + i*block_bytes, + block_bytes), the last
 * one shorter. The checksums are n_blocks little-endian uint32 at
 * sums_offset, padded with zeros to a multiple of 4096. The serving path
 * does not check them; engram-tables verify does. */
#define ENGRAM_STORE_MAGIC "ENGRTBL"
#define ENGRAM_STORE_VERSION 1u
#define ENGRAM_STORE_BLOCK 4096u
#define ENGRAM_STORE_HEADER_BYTES 48u
#define ENGRAM_STORE_SUM_MAGIC "ENGRSUM"
#define ENGRAM_STORE_SUM_CRC32C 1u
#define ENGRAM_STORE_SUM_BLOCK 65536u
#define ENGRAM_STORE_MAX_COLS (1 << 20)

typedef enum {
    ENGRAM_STORE_F32 = 1,
    ENGRAM_STORE_BF16 = 2,
    ENGRAM_STORE_F16 = 3,
    ENGRAM_STORE_FP8_UE8M0 = 4, /* packed V4.1 row: cols e4m3 bytes, then cols/32 ue8m0 scale bytes */
} engram_store_dtype;

/* Returns "f32", "bf16", "f16", "fp8_ue8m0", or "?" for another value. */
const char *engram_store_dtype_name(int dtype);

typedef struct {
    uint32_t version;
    uint32_t dtype;
    uint64_t rows;
    uint32_t cols;
    uint32_t row_bytes;
    uint32_t row_stride;
    uint64_t data_offset;
} engram_store_header;

/* Bytes of one row of `cols` values in `dtype` (0 for a bad pair: unknown
 * dtype, cols out of [1, ENGRAM_STORE_MAX_COLS], FP8 cols not a multiple of 32). */
uint32_t engram_store_row_bytes(int dtype, uint32_t cols);

/* The stride writers use for a row of row_bytes: row_bytes rounded up to a
 * multiple of 8 (the next power of two for rows under 8 bytes), so that
 * rows stay 8-byte aligned and a table costs its rows' bytes, not up to
 * twice as much (DeepSeek-V4.1's 264-byte rows: 264, not 512); but the old
 * power-of-two stride where that pads a row by less than 1/8 of it (4000 ->
 * 4096: at the dense stride nearly every such row would cross a 4 KiB
 * block). Rows of a power-of-two size keep it either way. */
uint32_t engram_store_row_stride(uint32_t row_bytes);

/* Decodes one stored row of cols values of dtype to f32, exactly (bf16/f16
 * widened, FP8 decoded by engram_fp8); an unknown dtype leaves out as it is. */
void engram_store_decode_row(int dtype, uint32_t cols, const void *row, float *out);

/* Parses and checks a header from buf (len bytes, untrusted). With
 * file_size > 0 also checks that every row lies inside the file. Returns
 * ENGRAM_STORE_OK and *h, or ENGRAM_STORE_EFORMAT with a one-line message in
 * err (errlen bytes; err may be NULL) naming the field. */
int engram_store_parse_header(const void *buf, size_t len, uint64_t file_size, engram_store_header *h,
                              char *err, size_t errlen);

/* Fills dst (row_bytes bytes) with row `row`'s data in the file's dtype. */
typedef int (*engram_store_row_fn)(void *ctx, uint64_t row, void *dst);

/* Writes a table file at path (through path.tmp, renamed at the end):
 * header, then rows from fill (called once per row in order; a non-zero
 * return aborts with ENGRAM_STORE_EIO) at `stride` bytes apart (0: the
 * dense engram_store_row_stride; another stride a reader accepts, such as
 * the old power of two, for tests and benchmarks), zeros between them,
 * padding to a multiple of 4096, then the per-block checksums.
 * Returns ENGRAM_STORE_OK or a negative status with a message (_EINVAL for
 * a bad shape or stride). */
int engram_store_write(const char *path, int dtype, uint64_t rows, uint32_t cols, uint32_t stride,
                       engram_store_row_fn fill, void *ctx, char *err, size_t errlen);

/* What engram_store_verify found. */
typedef struct {
    bool has_checksums;   /* false: a file written before checksums (nothing was checked) */
    uint32_t block_bytes;
    uint64_t n_blocks;    /* blocks checked */
    int64_t first_bad;    /* the first block whose bytes do not match its checksum; -1: none */
    uint64_t bad_offset;  /* its file offset and length */
    uint64_t bad_len;
    uint64_t bad_row_first, bad_row_last; /* the rows it holds bytes of, one straddling in from the block
                                           * before included (last < first: only padding) */
} engram_store_verify_result;

/* Checks every block of the table file at path against its checksum.
 * Returns ENGRAM_STORE_OK with *r filled (r->first_bad says whether a block
 * is bad), or _EIO (cannot read), _EFORMAT (a bad header, a damaged header
 * or checksum table, a file too short for its checksums) with a message. */
int engram_store_verify(const char *path, engram_store_verify_result *r, char *err, size_t errlen);

/* Same, from rows laid end to end in memory (rows*row_bytes bytes, borrowed). */
int engram_store_write_dense(const char *path, int dtype, uint64_t rows, uint32_t cols, const void *data,
                             char *err, size_t errlen);

/* ---- the store ---- */
/* Where a table lives. AUTO decides at open from dram_budget: the whole table
 * in DRAM (mmap) when the budget holds it, else NVMe with a DRAM row cache of
 * at most the budget. */
typedef enum { ENGRAM_STORE_DRAM = 0, ENGRAM_STORE_NVME = 1, ENGRAM_STORE_AUTO = 2 } engram_store_tier;

/* Which misses of a gather the NVMe tier's row cache keeps. */
typedef enum {
    ENGRAM_STORE_ADMIT_ALL = 0,     /* every miss displaces the victim (admit on first touch); the default: on
                                     * a trace of real text it hits more often (bench/RESULTS.md, "cache trace") */
    ENGRAM_STORE_ADMIT_TINYLFU = 1, /* a miss displaces CLOCK's victim only when the frequency sketch had seen
                                     * it more often than the victim before (TinyLFU); one-offs pass uncached */
} engram_store_admission;

/* How the NVMe tier's row cache shares rows with the tier above it (the
 * backend's hot-row cache, engine/engram_fetch, --engram-hbm-cache). The
 * store only carries the choice; the tier above acts on it through
 * engram_store_gather_up and engram_store_demote. */
typedef enum {
    ENGRAM_STORE_INCLUSIVE = 0, /* the row cache keeps what it gathers, whatever the tier above holds (the two
                                 * overlap: behind the HBM cache the DRAM cache hit 1.87%, bench/RESULTS.md) */
    ENGRAM_STORE_EXCLUSIVE = 1, /* the default: a row the tier above takes leaves the row cache (or is read past
                                 * it), and the row cache takes what the tier above evicts: the two add up */
} engram_store_tiers;

/* What a store does with its hot-row file (engram_store_hot_path) at open. */
typedef enum {
    ENGRAM_STORE_WARM_OFF = 0,        /* neither read nor written */
    ENGRAM_STORE_WARM_WAIT = 1,       /* read back before open returns */
    ENGRAM_STORE_WARM_BACKGROUND = 2, /* read back by a thread while the store serves */
} engram_store_warm;

typedef struct {
    engram_store_tier tier; /* default DRAM */
    /* Bytes of host DRAM this store may hold. AUTO: DRAM tier when
     * >= the table's bytes (rows * row_stride), else the NVMe tier with a row
     * cache of at most this many bytes (slots, their index and metadata; the
     * few I/O buffers of queue_depth blocks are not counted); 0 means: the
     * table when it fits in MemAvailable, else half of MemAvailable. NVME: the
     * row cache (0: none, every row is read from the file). DRAM: unused. */
    uint64_t dram_budget;
    uint64_t hbm_cache; /* bytes of GPU memory for hot rows; carried for the CUDA backend, unused here */
    engram_store_tiers tiers; /* default EXCLUSIVE; carried for the tier above, like hbm_cache */
    /* DRAM */
    bool mlock;     /* lock the mapping in RAM; failure is an error (ENGRAM_STORE_ELOCK) */
    bool hugepages; /* madvise(MADV_HUGEPAGE); a refusal is reported on stderr, not an error */
    /* NVMe */
    int queue_depth;  /* reads in flight, 1..4096 (default 64) */
    bool use_pread;   /* skip io_uring: synchronous pread, one block run at a time */
    bool sqpoll;      /* io_uring with a kernel thread polling the submission queue
                       * (IORING_SETUP_SQPOLL): no system call per submission, a core
                       * spinning while reads flow; falls back to a plain ring */
    bool no_direct;   /* skip O_DIRECT: buffered reads through the page cache */
    bool quiet;       /* no fallback notes on stderr */
    /* the NVMe tier's row cache */
    engram_store_admission admission; /* default ALL */
    uint64_t sketch_seed; /* the frequency sketch's hash seed: the same seed, the same admissions */
    engram_store_warm warm_start;     /* default OFF */
} engram_store_params;

engram_store_params engram_store_default_params(void);

typedef struct engram_store engram_store;

/* What a store ended up doing (fallbacks included). */
typedef struct {
    engram_store_tier tier; /* DRAM or NVME (what AUTO chose) */
    engram_store_header header;
    bool direct;     /* NVMe: O_DIRECT in use */
    bool io_uring;   /* NVMe: io_uring in use (else pread) */
    bool locked;     /* DRAM: mlock'd */
    bool hugepages;  /* DRAM: MADV_HUGEPAGE accepted */
    uint64_t reads;  /* NVMe: block runs read so far */
    uint64_t bytes_read;
    uint64_t cache_rows;  /* NVMe: row cache slots (0: no cache, no prefetch) */
    uint64_t cache_bytes; /* NVMe: DRAM the row cache holds, <= dram_budget */
    uint64_t hbm_cache;   /* params.hbm_cache, for the backend that keeps hot rows (engine/engram_fetch) */
    engram_store_tiers tiers; /* params.tiers, for the same */
} engram_store_info;

/* Opens the table file at path for the tier in params (NULL: defaults).
 * Returns ENGRAM_STORE_OK and *out, or a negative status with a one-line
 * message naming the file. Fallbacks (io_uring unavailable -> pread; O_DIRECT
 * refused by the filesystem -> buffered) are noted on stderr unless quiet.
 * An NVMe store with a row cache starts one prefetch thread. */
int engram_store_open(const char *path, const engram_store_params *params, engram_store **out, char *err,
                      size_t errlen);

/* Gathers n rows: out (n, cols) f32, out[i*cols + j] = value j of row
 * rows[i], converted exactly (bf16/f16 widened, FP8 decoded by engram_fp8).
 * Rows may repeat and come in any order; rows sharing a block are read once.
 * NVMe with a cache: hits come from DRAM, rows in flight (prefetch, another
 * gather) are waited for, the other misses are read once and cached.
 * Thread-safe. Returns ENGRAM_STORE_OK; ENGRAM_STORE_ERANGE if some row is
 * out of range (nothing read, *bad gets its index; bad may be NULL);
 * ENGRAM_STORE_EIO or _ENOMEM on a failed read; on the DRAM tier
 * ENGRAM_STORE_EIO once the file has shrunk under the mapping (a SIGBUS
 * caught: the store is bad for good, see engram_store_stats.tables_bad). */
int engram_store_gather(engram_store *s, const int64_t *rows, size_t n, float *out, size_t *bad);

/* Same, with each row copied as it is stored (row_bytes bytes of the file's
 * dtype, rows end to end in out): for a backend that decodes rows itself,
 * so that half (bf16) or a quarter (FP8) of the bytes cross to it. */
int engram_store_gather_raw(engram_store *s, const int64_t *rows, size_t n, void *out, size_t *bad);

/* ---- exclusive tiers: the row cache and the tier above (engram_store_tiers) ---- */

/* engram_store_gather_raw for a tier above that keeps rows[0..n_up) itself
 * from now on: those leave the row cache once copied (a cached one gives up
 * its slot, one in flight is waited for and then dropped, a miss is read
 * past the cache: nothing admitted), counted in promotions; rows[n_up..n)
 * are gathered as engram_store_gather_raw does. The DRAM tier (the table
 * mapped whole) and NVMe without a cache gather all n as ever. */
int engram_store_gather_up(engram_store *s, const int64_t *rows, size_t n, size_t n_up, void *out, size_t *bad);

/* Rows the tier above evicted, with their bytes as stored (data: n rows of
 * row_bytes end to end, borrowed), into the row cache: DRAM takes what the
 * tier above drops. Ids < 0 (no row) are skipped, so are rows the cache
 * holds or reads already, and rows out of range. They take CLOCK's victim
 * without asking the admission policy: the tier above chose them, and its
 * hits never reached the sketch. A no-op for the DRAM tier and NVMe
 * without a cache. Thread-safe. Returns the rows taken in (counted in
 * demotions). */
size_t engram_store_demote(engram_store *s, const int64_t *rows, size_t n, const void *data);

/* Drops from rows[0..n) those the tier above holds, keeping the others in
 * order; returns how many are left. Called by the prefetch and warm
 * threads under the row cache's lock, so it must not call into the store. */
typedef size_t (*engram_store_above_fn)(void *ctx, int64_t *rows, size_t n);

/* Tells the store which rows the tier above holds (fn(ctx, ...), or NULL:
 * none), so that its prefetch and warm threads do not read those into the
 * row cache: with exclusive tiers a row the tier above took while its id
 * waited in the prefetch queue would otherwise sit in both. Set it before
 * rows move up, clear it before ctx goes. Thread-safe. */
void engram_store_set_above(engram_store *s, engram_store_above_fn fn, void *ctx);

/* How many of rows[0..n) the row cache holds or reads now (0 on the DRAM
 * tier: no cache). A check of the tiers' exclusion (engine/engram_fetch's
 * overlap count); it takes the cache's lock once. Thread-safe. */
size_t engram_store_count_cached(engram_store *s, const int64_t *rows, size_t n);

/* Hints that rows will be gathered soon (the forward pass calls it with each
 * step's row ids as soon as its tokens are known). Never blocks on I/O: the
 * ids (copied) go to the store's prefetch thread, which reads the rows that
 * are neither cached nor in flight into the row cache; a later gather finds
 * them there, or waits for their read instead of reading them again. Ids out
 * of range are ignored (the gather reports them); when the queue is full the
 * excess is dropped (counted in prefetch_dropped). A no-op returning OK for a
 * NULL store, the DRAM tier (the rows are mapped: the gather's own software
 * prefetch is enough) and NVMe without a cache. Thread-safe. Returns
 * ENGRAM_STORE_OK, or ENGRAM_STORE_EINVAL for rows NULL with n > 0. */
int engram_store_prefetch(engram_store *s, const int64_t *rows, size_t n);
/* Blocks until the prefetch thread has taken every id handed to it so far and finished its reads,
 * for tests and benchmarks that read the counters (engram_store_get_stats takes them one by one,
 * and a read in progress may have counted in one and not yet in the next). Waits for running
 * gathers too (the thread yields to them). A no-op where engram_store_prefetch is one. */
void engram_store_prefetch_wait(engram_store *s);

/* ---- warm restarts: the hot-row file ----
 * Beside the table, at its path + ".hot", a store keeps the identities of
 * its hot rows: those its DRAM row cache holds, and those a tier above it
 * holds (the backend's HBM cache, handed in by its owner), each with a count
 * (how often it was used lately). At open, with warm_start on, the file is
 * read back: its rows go into the row cache, most counted first up to the
 * cache's size, read in offset order with large sequential reads (runs of up
 * to 1 MiB that may take in a few unwanted blocks between wanted ones). A
 * file written for another table (size, header, first and last data block
 * differ), or damaged (checksum, bounds), is ignored with a note. The file
 * only says which rows to read; the rows always come from the table, so it
 * can never change a result.
 *
 * file layout (little-endian):
 *   0  8 magic "ENGRHOT\0"    8 4 version (1)     12 4 reserved (0)
 *  16  8 table file size      24 8 table identity (FNV-1a 64 of its header block, first and last data block)
 *  32  8 table rows           40 8 n entries      48 8 unix time written    56 8 reserved (0)
 *  64  n * {8 row id, 4 count, 4 tier (0 DRAM, 1 the tier above)}
 *  then 8: FNV-1a 64 of every byte before it */
#define ENGRAM_STORE_HOT_MAGIC "ENGRHOT"
#define ENGRAM_STORE_HOT_VERSION 1u
#define ENGRAM_STORE_HOT_HEAD 64u
#define ENGRAM_STORE_HOT_ENTRY 16u

/* The hot-row file's path: static storage of the store (its table's path + ".hot"). */
const char *engram_store_hot_path(const engram_store *s);

/* Writes the hot-row file atomically (path.tmp.PID, fsync, rename, fsync of the
 * directory): the DRAM cache's rows with their sketch counts, then `n_upper`
 * rows of the tier above with their counts (upper, upper_counts: borrowed;
 * may be NULL with n_upper 0). Thread-safe against gathers. Returns
 * ENGRAM_STORE_OK, or ENGRAM_STORE_EIO / _ENOMEM with a message naming the
 * file; _EINVAL for a store without a file (made in memory). */
int engram_store_hot_save(engram_store *s, const int64_t *upper, const uint32_t *upper_counts, size_t n_upper,
                          char *err, size_t errlen);

/* Writes the hot-row file atomically (as engram_store_hot_save) with exactly
 * rows[0..n) and their counts (borrowed), all for the row cache (tier 0),
 * whatever the store holds: a profile made offline (engram-tables profile),
 * so that a fresh store starts warm from rows a corpus like its traffic uses
 * most. Returns ENGRAM_STORE_OK, _ERANGE (a row outside the table: nothing
 * written), _EIO / _ENOMEM with a message; _EINVAL for a store without a
 * hot-row file (warm_start off, or made in memory). */
int engram_store_hot_write(engram_store *s, const int64_t *rows, const uint32_t *counts, size_t n, char *err,
                           size_t errlen);

/* Whether the store is still reading its hot rows back (background warm
 * start). Thread-safe. */
bool engram_store_warming(const engram_store *s);

/* The rows of the tier above that the hot-row file read at open listed,
 * most counted first (*rows borrowed until close; NULL and 0 when none),
 * for that tier's owner to warm from once engram_store_warming says done.
 * Returns their number. */
size_t engram_store_hot_upper(const engram_store *s, const int64_t **rows);

/* A DRAM-tier store over an anonymous mapping of rows x cols values of dtype,
 * filled by fill (called once per row, from several threads at once: it must
 * be thread-safe). For tables made on the spot (synthetic models) that are
 * larger than the disk. The mapping is private to this process. Returns
 * ENGRAM_STORE_OK and *out, or _EINVAL, _ENOMEM, _EIO (fill failed), _ELOCK. */
int engram_store_create_memory(int dtype, uint64_t rows, uint32_t cols, engram_store_row_fn fill, void *ctx,
                               const engram_store_params *params, engram_store **out, char *err, size_t errlen);

engram_store_info engram_store_get_info(const engram_store *s);

/* Counters since open; latencies and stalls also as histograms over these
 * upper bounds in seconds (one more bucket after them: +Inf). */
#define ENGRAM_STORE_HIST_BUCKETS 12
extern const double engram_store_hist_le[ENGRAM_STORE_HIST_BUCKETS];
/* The bucket of a time in seconds: the first whose bound it does not exceed,
 * ENGRAM_STORE_HIST_BUCKETS for +Inf. */
int engram_store_hist_bucket(double sec);

typedef struct {
    uint64_t lookups;          /* rows asked for by gathers, repeats included */
    uint64_t dram_hits;        /* of those, in DRAM when asked: the mapped table, or a cached row */
    uint64_t nvme_hits;        /* the others: read from NVMe by the gather, or waited for while in flight */
    uint64_t prefetch_rows;    /* row ids handed to engram_store_prefetch */
    uint64_t prefetch_reads;   /* rows the prefetch thread read into the cache */
    uint64_t prefetch_dropped; /* ids dropped: prefetch queue full */
    uint64_t evictions;        /* cached rows evicted (CLOCK) */
    uint64_t admissions;       /* rows taken into the cache (gathers' misses, prefetches, warm start, demotions) */
    uint64_t rejections;       /* gathers' misses the admission policy kept out (read, not cached) */
    uint64_t promotions;       /* exclusive tiers: rows that left the row cache, or passed it, for the tier above */
    uint64_t demotions;        /* exclusive tiers: rows the tier above evicted, taken into the row cache */
    uint64_t warm_rows;        /* rows read back from the hot-row file so far */
    uint64_t warm_target;      /* gauge: rows the warm start will read in all (0: none) */
    uint64_t warm_ignored;     /* hot-row files ignored: stale, foreign or damaged */
    uint64_t warming;          /* gauge: 1 while a warm start reads */
    double warm_seconds;       /* seconds the warm start took, once done */
    uint64_t cache_rows;       /* rows in the cache now (gauge) */
    uint64_t cache_capacity;   /* cache slots (gauge) */
    uint64_t cache_bytes;      /* DRAM held by the cache (gauge) */
    uint64_t nvme_reads;       /* read operations (runs of whole blocks) */
    uint64_t nvme_bytes;       /* bytes they read */
    double nvme_read_seconds;  /* sum of their latencies (submit to completion) */
    uint64_t nvme_read_hist[ENGRAM_STORE_HIST_BUCKETS + 1]; /* reads per latency bucket (not cumulative) */
    uint64_t gathers;          /* NVMe-tier gathers (each observed in the stall histogram) */
    double stall_seconds;      /* time gathers waited for rows not in DRAM (own reads, in-flight reads) */
    uint64_t stall_hist[ENGRAM_STORE_HIST_BUCKETS + 1]; /* gathers per stall bucket (not cumulative) */
    uint64_t tables_bad;       /* 1 when the table file shrank under its DRAM mapping: every gather fails (gauge) */
} engram_store_stats;

/* Fills *out with s's counters (a consistent-enough snapshot: each counter
 * is read atomically). Thread-safe. */
void engram_store_get_stats(const engram_store *s, engram_store_stats *out);

/* sum += x, field by field (gauges too: a sum over stores), but warm_seconds:
 * the longest (the stores warm side by side). */
void engram_store_stats_add(engram_store_stats *sum, const engram_store_stats *x);

/* MemAvailable of /proc/meminfo in bytes, 0 when unknown. */
uint64_t engram_store_mem_available(void);

void engram_store_close(engram_store *s); /* accepts NULL; stops the prefetch thread */

#endif
