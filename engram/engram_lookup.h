/* The compressed tokenizer of Engram (ENGRAM.md section 3) built from a loaded
 * tokenizer: for every id, decode([id]) keeping special tokens and without
 * clean-up, and the raw vocabulary string, fed to ngram_hash_compress_build. */
#ifndef ENGINE_ENGRAM_LOOKUP_H
#define ENGINE_ENGRAM_LOOKUP_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer/tokenizer.h"

/* On success returns 0, *lookup is a heap array (caller frees) of *n entries
 * (the tokenizer's id space), *vc the compressed vocab size. On failure
 * returns -1 with a one-line message in err and *lookup NULL. */
int engram_lookup_build(const tokenizer *tok, int64_t **lookup, int64_t *n, int64_t *vc, char *err,
                        size_t errlen);

#endif
