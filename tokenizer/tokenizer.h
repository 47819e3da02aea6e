/* Tokenizer: loads a Hugging Face tokenizer.json (byte-level BPE with its
 * normalizers, pre-tokenizers, added/special tokens, post-processor and
 * decoders) and encodes/decodes byte-identically to HF `tokenizers`. Also an
 * incremental decoder for streaming that only ever emits whole UTF-8
 * characters. A loaded tokenizer may be used from many threads at once: it is
 * immutable except for an internal, lock-protected cache of word results.
 * Character classes and normalization follow the Unicode version of the
 * system PCRE2 and utf8proc (14.0 on Debian 12); HF's own tables are newer,
 * so code points assigned after that version may split differently. */
#ifndef TOKENIZER_TOKENIZER_H
#define TOKENIZER_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    TOKENIZER_OK = 0,
    TOKENIZER_ERR_IO = -1,          /* file missing or unreadable */
    TOKENIZER_ERR_PARSE = -2,       /* tokenizer.json is not valid JSON or misses fields */
    TOKENIZER_ERR_UNSUPPORTED = -3, /* a component type we do not implement */
    TOKENIZER_ERR_NOMEM = -4,
    TOKENIZER_ERR_INVALID_UTF8 = -5, /* encode input is not well-formed UTF-8 */
    TOKENIZER_ERR_LIMIT = -6,        /* input too large or regex match limit hit */
    TOKENIZER_ERR_INVALID_ARG = -7,  /* e.g. an id outside the vocabulary */
} tokenizer_status;

/* Static string for a status ("ok", "invalid UTF-8", ...); never NULL. */
const char *tokenizer_status_str(int status);

typedef struct tokenizer tokenizer;

/* Loads a tokenizer from a checkpoint directory (DIR/tokenizer.json, plus
 * DIR/tokenizer_config.json when present: add_bos_token/add_eos_token of a
 * LlamaTokenizerFast replace the post-processor as transformers does) or from
 * the path of a tokenizer.json file itself (no config applied: the result
 * matches `tokenizers.Tokenizer.from_file`). Returns TOKENIZER_OK and sets
 * *out, or a negative status with a one-line message in err (errlen bytes);
 * *out is then NULL. */
int tokenizer_load(const char *dir_or_json_path, tokenizer **out, char *err, size_t errlen);

/* Same as tokenizer_load for tokenizer.json bytes already in memory (json
 * need not be NUL-terminated). */
int tokenizer_load_json(const char *json, size_t len, tokenizer **out, char *err, size_t errlen);

void tokenizer_destroy(tokenizer *t); /* accepts NULL */

/* Encodes len bytes of UTF-8 text (NUL bytes allowed). With add_special the
 * post-processor adds its special tokens (HF's add_special_tokens=True).
 * Input that is not well-formed UTF-8 (including encoded surrogates) is
 * rejected with TOKENIZER_ERR_INVALID_UTF8; inputs over 64 MiB with
 * TOKENIZER_ERR_LIMIT. On success *ids is a heap array of *n_ids ids owned by
 * the caller (free()); it is non-NULL even when *n_ids is 0. On failure *ids
 * is NULL and *n_ids 0. */
int tokenizer_encode(const tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids);

/* Decodes ids to UTF-8 text the way HF `Tokenizer.decode` does: ids the
 * tokenizer does not know are skipped; with skip_special, special added
 * tokens are skipped; no clean-up of spaces. On success *out is a
 * NUL-terminated heap string of *len bytes owned by the caller. */
int tokenizer_decode(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                     char **out, size_t *len);

/* The bytes one token stands for (special tokens kept). With a ByteLevel
 * decoder they are the token's raw bytes, which may be part of a UTF-8
 * character (what OpenAI's logprobs "bytes" carry, so that a client can
 * join a character split over tokens); with other decoders, the UTF-8 of
 * decode([id]). An unknown id gives no bytes. On success *out is a
 * NUL-terminated heap buffer of *len bytes owned by the caller. */
int tokenizer_token_bytes(const tokenizer *t, int32_t id, char **out, size_t *len);

/* Size of the id space: largest id (model or added) + 1. Ids below it
 * without a token (holes) decode to nothing. */
size_t tokenizer_vocab_size(const tokenizer *t);

/* Id of a token by its raw vocabulary string (added tokens first, as HF
 * token_to_id), or -1. */
int32_t tokenizer_token_to_id(const tokenizer *t, const char *token, size_t len);

/* Raw vocabulary string of an id (e.g. "Ġthe"; an added token's content), a
 * borrowed pointer valid while t lives, with its length in *len; NULL for an
 * unknown id. Not NUL-terminated in general: use *len. */
const char *tokenizer_id_to_token(const tokenizer *t, int32_t id, size_t *len);

/* True if id is an added token marked special. */
bool tokenizer_is_special(const tokenizer *t, int32_t id);

/* BOS/EOS ids when known (from the post-processor template or
 * tokenizer_config.json), else -1. */
int32_t tokenizer_bos_id(const tokenizer *t);
int32_t tokenizer_eos_id(const tokenizer *t);

/* Incremental decoding for streaming. Feed one id at a time; each call sets
 * *out to a new heap string (owned by the caller, NUL-terminated, *len
 * bytes; may be empty) holding only whole UTF-8 characters. The
 * concatenation of all pieces plus the final tokenizer_stream_flush equals
 * tokenizer_decode of all ids with the same skip_special. A plain ByteLevel
 * decoder (DeepSeek, Qwen, GPT-2 style) costs O(1) per id; any other decoder
 * chain re-decodes the ids so far on each step (O(n) per id). */
typedef struct tokenizer_stream tokenizer_stream;

/* Creates a stream over t (borrowed: t must outlive the stream). */
int tokenizer_stream_create(const tokenizer *t, bool skip_special, tokenizer_stream **out);
int tokenizer_stream_step(tokenizer_stream *s, int32_t id, char **out, size_t *len);
/* Emits what is left (an incomplete trailing character becomes U+FFFD, as
 * decode does) and resets the stream for a new sequence. */
int tokenizer_stream_flush(tokenizer_stream *s, char **out, size_t *len);
void tokenizer_stream_destroy(tokenizer_stream *s); /* accepts NULL */

#endif
