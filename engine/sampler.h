/* Token sampling from logits: penalties, then temperature, then top-k, top-p
 * and min-p filtering, then a draw from a seeded generator. temperature 0 is
 * greedy (argmax after penalties; ties go to the lowest id). The same seed and
 * inputs always give the same token. */
#ifndef ENGINE_SAMPLER_H
#define ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float temperature;        /* 0: greedy; default 1 */
    int top_k;                /* 0 or >= vocab: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off; HF rule on prompt and output tokens */
    float presence_penalty;   /* 0: off; OpenAI rule on output tokens */
    float frequency_penalty;  /* 0: off; OpenAI rule on output tokens */
    uint64_t seed;
} sampler_params;

sampler_params sampler_default_params(void);

typedef struct sampler sampler;

/* Returns NULL if vocab_size < 1 or memory runs out. */
sampler *sampler_create(int vocab_size, sampler_params p);
void sampler_destroy(sampler *s); /* accepts NULL */

/* Picks the next token. logits (vocab_size) are modified in place. prompt and
 * output are the sequence so far (ids outside the vocab are ignored). */
int32_t sampler_sample(sampler *s, float *logits, const int32_t *prompt, int n_prompt,
                       const int32_t *output, int n_output);

/* The same on logits whose penalties (and the caller's biases) are already
 * applied: what sampler_sample does after its penalties. */
int32_t sampler_sample_applied(sampler *s, float *logits);

/* A grammar's mask on logits (vocab): -inf for every token whose bit (bit
 * i % 32 of word i / 32) is clear. */
void sampler_apply_mask(float *logits, int vocab, const uint32_t *mask);

/* ---- sampling with the logits on a backend (backend_ops.sample) ----
 * The backend applies a step's biases and penalties where the logits are,
 * and hands back per row only its n_cand best candidates (ids and logits,
 * sorted as sampler_sample sorts them) and the probability mass of the rest;
 * sampler_sample_candidates finishes on the host with sampler_sample's own
 * code and picks the same token with the same draw, or says that it cannot
 * (then the row is downloaded and sampler_sample_applied decides). The rows
 * are described to the backend by one packed int32 buffer (floats stored as
 * their bits): first a header of SAMPLER_DESC_WORDS words per row, then the
 * lists the headers point at. */
enum {
    SAMPLER_DESC_ROW,      /* the row of the logits this row samples from */
    SAMPLER_DESC_TEMP,     /* temperature (float bits) */
    SAMPLER_DESC_REP,      /* repetition penalty (float bits) */
    SAMPLER_DESC_PRES,     /* presence penalty (float bits) */
    SAMPLER_DESC_FREQ,     /* frequency penalty (float bits) */
    SAMPLER_DESC_N_FULL,   /* candidates sampler_sample keeps after top-k: min(top_k, vocab), or vocab */
    SAMPLER_DESC_N_BIAS,   /* logit biases, added in order before the penalties */
    SAMPLER_DESC_BIAS_OFF, /* word offset of their (id, value bits) pairs */
    SAMPLER_DESC_N_PEN,    /* distinct ids of prompt and output (0 when every penalty is off) */
    SAMPLER_DESC_PEN_OFF,  /* word offset of their (id, count in the output) pairs */
    SAMPLER_DESC_MASK_OFF, /* word offset of the allowed tokens' bitmask ((vocab + 31) / 32 words, bit i of
                            * word i / 32 for token i; the others become -inf after the biases and
                            * penalties), or -1 */
    SAMPLER_DESC_WORDS
};

/* One row of backend_ops.sample's result, SAMPLER_RESULT_BYTES(n_cand)
 * bytes: int32 ids[n_cand], float logits[n_cand] (the n_valid best, then
 * unused), double tail, int32 n_valid, int32 flags. */
#define SAMPLER_RESULT_BYTES(n_cand) (8 * (size_t)(n_cand) + 16)
#define SAMPLER_RESULT_NAN 1        /* flags: the row holds a NaN */
#define SAMPLER_MAX_CANDIDATES 4096 /* n_cand: a power of two up to this */

/* A description being built (host memory). Zero-initialize it. */
typedef struct {
    int32_t *w;
    size_t len, cap; /* words */
    int n_rows;
} sampler_desc;

/* Starts a description of n_rows rows. Returns 0, or -1 when out of memory. */
int sampler_desc_begin(sampler_desc *d, int n_rows);
/* Row r: s's parameters, row `row` of the logits, the biases the caller adds
 * before sampling (in order; NULL when n_bias is 0) and the penalties of
 * prompt and output. Returns 0, or -1 when out of memory. */
int sampler_desc_set(sampler_desc *d, int r, sampler *s, int row, const int32_t *bias_ids,
                     const float *bias_vals, int n_bias, const int32_t *prompt, int n_prompt,
                     const int32_t *output, int n_output);
/* Row r (after sampler_desc_set) samples only among the tokens whose bit is
 * set in mask (words of 32; a grammar's allowed tokens). Returns 0, or -1
 * when out of memory. */
int sampler_desc_set_mask(sampler_desc *d, int r, const uint32_t *mask, int words);
/* The same with the mask placed by the caller in the uploaded buffer, at
 * word offset off (at or past sampler_desc_bytes / 4: the masks go up
 * separately, no copy made here). */
void sampler_desc_mask_at(sampler_desc *d, int r, size_t off);
size_t sampler_desc_bytes(const sampler_desc *d);
void sampler_desc_free(sampler_desc *d); /* the buffer; d may be reused after */

/* Whether backend_ops.sample with n_cand candidates serves s: top-k off or
 * at most n_cand. */
int sampler_candidates_ok(const sampler *s, int n_cand);

/* The next token from one result row (SAMPLER_RESULT_BYTES(n_cand) bytes),
 * the same token sampler_sample picks on the full row with the same state
 * of the generator, which advances as sampler_sample's would. Returns -1,
 * drawing nothing, when the candidates do not settle it (the draw or the
 * top-p boundary falls within the error bound of the tail's mass or past the
 * candidates, a NaN or an infinite largest logit): then sampler_sample_applied
 * on the row (biases and penalties applied) picks the token. */
int32_t sampler_sample_candidates(sampler *s, const void *result, int n_cand);

#endif
