/* Token sampling from logits: penalties, then temperature, then top-k, top-p
 * and min-p filtering, then a draw from a seeded generator. temperature 0 is
 * greedy (argmax after penalties; ties go to the lowest id). The same seed and
 * inputs always give the same token. */
#ifndef ENGINE_SAMPLER_H
#define ENGINE_SAMPLER_H

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

#endif
