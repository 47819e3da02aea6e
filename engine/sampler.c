/* Sampler. Penalties follow the conventions servers share: repetition
 * penalty (CTRL / transformers) divides positive and multiplies negative
 * logits of every token seen in prompt or output; presence and frequency
 * penalties (OpenAI) subtract p*[count>0] + f*count over output tokens. The
 * generator is xoshiro256** seeded by splitmix64, reproducible everywhere. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sampler {
    int vocab;
    sampler_params p;
    uint64_t rng[4];
    int32_t *counts; /* (vocab) output-token counts, rebuilt per call */
    uint8_t *seen;   /* (vocab) prompt-or-output membership */
    int32_t *idx;    /* (vocab) candidate ids */
    float *probs;    /* (vocab) */
};

sampler_params sampler_default_params(void) {
    return (sampler_params){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .min_p = 0.0f,
                            .repetition_penalty = 1.0f, .presence_penalty = 0.0f,
                            .frequency_penalty = 0.0f, .seed = 0};
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t *s) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform double in [0, 1) with 53 random bits. */
static double uniform(sampler *s) { return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53; }

sampler *sampler_create(int vocab_size, sampler_params p) {
    if (vocab_size < 1) return NULL;
    sampler *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->vocab = vocab_size;
    s->p = p;
    uint64_t x = p.seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    s->counts = calloc((size_t)vocab_size, sizeof(int32_t));
    s->seen = calloc((size_t)vocab_size, 1);
    s->idx = malloc((size_t)vocab_size * sizeof(int32_t));
    s->probs = malloc((size_t)vocab_size * sizeof(float));
    if (!s->counts || !s->seen || !s->idx || !s->probs) {
        sampler_destroy(s);
        return NULL;
    }
    return s;
}

void sampler_destroy(sampler *s) {
    if (!s) return;
    free(s->counts);
    free(s->seen);
    free(s->idx);
    free(s->probs);
    free(s);
}

static void apply_penalties(sampler *s, float *logits, const int32_t *prompt, int n_prompt,
                            const int32_t *output, int n_output) {
    const sampler_params *p = &s->p;
    if (p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return;
    int V = s->vocab;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] >= 0 && prompt[i] < V) s->seen[prompt[i]] = 1;
    for (int i = 0; i < n_output; i++)
        if (output[i] >= 0 && output[i] < V) {
            s->seen[output[i]] = 1;
            s->counts[output[i]]++;
        }
    /* Visit only the touched ids, clearing as we go, so a call costs O(sequence). */
    for (int pass = 0; pass < 2; pass++) {
        const int32_t *ids = pass ? output : prompt;
        int n = pass ? n_output : n_prompt;
        for (int i = 0; i < n; i++) {
            int32_t id = ids[i];
            if (id < 0 || id >= V || !s->seen[id]) continue;
            float l = logits[id];
            if (p->repetition_penalty != 1.0f)
                l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
            int c = s->counts[id];
            l -= p->presence_penalty * (c > 0) + p->frequency_penalty * (float)c;
            logits[id] = l;
            s->seen[id] = 0;
            s->counts[id] = 0;
        }
    }
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static _Thread_local const float *tl_logits;

static int cmp_desc(const void *a, const void *b) {
    float x = tl_logits[*(const int32_t *)a], y = tl_logits[*(const int32_t *)b];
    if (x != y) return x > y ? -1 : 1;
    return *(const int32_t *)a - *(const int32_t *)b; /* stable by id */
}

int32_t sampler_sample(sampler *s, float *logits, const int32_t *prompt, int n_prompt,
                       const int32_t *output, int n_output) {
    const sampler_params *p = &s->p;
    int V = s->vocab;
    apply_penalties(s, logits, prompt, n_prompt, output, n_output);
    if (p->temperature <= 0.0f) return argmax(logits, V);

    /* Candidates sorted by logit, cut by top-k. */
    int n = V;
    for (int i = 0; i < V; i++) s->idx[i] = i;
    tl_logits = logits;
    qsort(s->idx, (size_t)V, sizeof(int32_t), cmp_desc);
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;

    /* Softmax at temperature over the candidates (the first is the maximum). */
    float mx = logits[s->idx[0]] / p->temperature;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = expf(logits[s->idx[i]] / p->temperature - mx);
        sum += s->probs[i];
    }
    /* min-p: drop candidates below min_p times the top probability. */
    if (p->min_p > 0.0f) {
        float cut = p->min_p * s->probs[0];
        int m = 1;
        while (m < n && s->probs[m] >= cut) m++;
        for (int i = m; i < n; i++) sum -= s->probs[i];
        n = m;
    }
    /* top-p: the smallest prefix whose mass reaches top_p. */
    if (p->top_p < 1.0f) {
        double acc = 0.0;
        int m = 0;
        while (m < n) {
            acc += s->probs[m++];
            if (acc >= p->top_p * sum) break;
        }
        sum = acc;
        n = m;
    }
    double r = uniform(s) * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += s->probs[i];
        if (r < acc) return s->idx[i];
    }
    return s->idx[n - 1];
}
