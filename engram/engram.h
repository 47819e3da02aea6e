/* Public header of engram/: Engram conditional memory (see ../shared/ENGRAM.md).
 * The folder owns N-gram hashing (ngram_hash), the compressed tokenizer, FP8
 * table rows (engram_fp8), and the table store's host tiers (store.h: the
 * table file in table_file.c, the DRAM tier, the NVMe tier behind a DRAM row
 * cache, the prefetch thread), with the one CLOCK row cache (row_cache.h)
 * that the backend's HBM cache index uses too. It depends on nothing in
 * engine/. */
#ifndef ENGRAM_ENGRAM_H
#define ENGRAM_ENGRAM_H

#define ENGRAM_VERSION_STRING "0.1.0"

#include "engram/engram_fp8.h"
#include "engram/ngram_hash.h"
#include "engram/store.h"

#endif
