/* Sampler. Penalties follow the conventions servers share: repetition
 * penalty (CTRL / transformers) divides positive and multiplies negative
 * logits of every token seen in prompt or output; presence and frequency
 * penalties (OpenAI) subtract p*[count>0] + f*count over output tokens. The
 * generator is xoshiro256** seeded by splitmix64, reproducible everywhere. */
#include "engine/sampler.h"

#include <math.h>
#include <stdbool.h>
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
    float *vals;     /* (vocab) candidate logits, sorted */
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
    s->vals = malloc((size_t)vocab_size * sizeof(float));
    if (!s->counts || !s->seen || !s->idx || !s->probs || !s->vals) {
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
    free(s->vals);
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

/* Error bound of the backend's tail mass against the host's: each term is
 * expf of the same f32 argument (the backend repeats the division and the
 * subtraction with IEEE rounding), CUDA's expf within 2 ulp and glibc's
 * within 1, so a term differs by at most 3 * 2^-24 relative; 2^-19 leaves a
 * margin of 10. The summation order adds at most 2^-53 of the running sum
 * per addition on either side, bounded below by (terms + 16) * 2^-50. */
#define TAIL_REL 0x1p-19

/* The token from the sorted candidates ids / lg [0, n) (logits after
 * penalties, before temperature) of the n_full that sampler_sample keeps
 * after top-k, with uniform u. When n == n_full this is sampler_sample
 * itself (err stays 0 and every step below is its arithmetic, in its
 * order). When n < n_full the other n_full - n candidates are known only by
 * their mass `tail` (sum of their probabilities before normalization, within
 * TAIL_REL and rounding): `sum` is then known within err, and each decision
 * that depends on it is taken only if it is the same for every value in
 * [sum - err, sum + err], else -1. A decision past the candidates is -1 too. */
static int32_t pick(const sampler_params *p, const int32_t *ids, const float *lg, int n, int n_full, double tail,
                    double u, float *probs) {
    bool more = n < n_full; /* candidates past the given ones */
    /* Softmax at temperature over the candidates (the first is the maximum). */
    float mx = lg[0] / p->temperature;
    double sum = 0.0, err = 0.0; /* sampler_sample's sum lies in [sum - err, sum + err] */
    for (int i = 0; i < n; i++) {
        probs[i] = expf(lg[i] / p->temperature - mx);
        sum += probs[i];
    }
    if (more) {
        sum += tail;
        err = TAIL_REL * tail + (double)(n_full - n + 16) * 0x1p-50 * sum;
    }
    /* min-p: drop candidates below min_p times the top probability. */
    if (p->min_p > 0.0f) {
        float cut = p->min_p * probs[0];
        int m = 1;
        while (m < n && probs[m] >= cut) m++;
        if (m == n && more) return -1; /* the kept ones may reach past the candidates */
        double before = sum;
        for (int i = m; i < n; i++) sum -= probs[i];
        if (more) { /* the tail is dropped whole: its own error cancels, the roundings stay */
            sum -= tail;
            err += (double)(n_full + 16) * 0x1p-50 * before;
        }
        n = m;
        more = false;
    }
    /* top-p: the smallest prefix whose mass reaches top_p. */
    if (p->top_p < 1.0f) {
        double lo = p->top_p * (sum - err), hi = p->top_p * (sum + err), acc = 0.0;
        int m = 0;
        bool hit = false;
        while (m < n) {
            acc += probs[m++];
            if (acc >= lo) {
                hit = true;
                break;
            }
        }
        if (hit ? acc < hi : more) return -1; /* the boundary moves within err, or lies past the candidates */
        sum = acc;
        err = 0.0;
        n = m;
        more = false;
    }
    /* The draw: the first candidate whose running mass exceeds r = u * sum,
     * for every r in [rlo, rhi]. */
    double rlo = u * (sum - err), rhi = u * (sum + err), acc = 0.0;
    for (int i = 0; i < n; i++) {
        double prev = acc;
        acc += probs[i];
        if (rhi < acc) return prev <= rlo ? ids[i] : -1;
    }
    if (more) return -1;
    return err == 0.0 || acc <= rlo ? ids[n - 1] : -1; /* err 0: sampler_sample's own fallback, NaN sums too */
}

int32_t sampler_sample_applied(sampler *s, float *logits) {
    const sampler_params *p = &s->p;
    int V = s->vocab;
    if (p->temperature <= 0.0f) return argmax(logits, V);

    /* Candidates sorted by logit, cut by top-k. */
    int n = V;
    for (int i = 0; i < V; i++) s->idx[i] = i;
    tl_logits = logits;
    qsort(s->idx, (size_t)V, sizeof(int32_t), cmp_desc);
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    for (int i = 0; i < n; i++) s->vals[i] = logits[s->idx[i]];
    return pick(p, s->idx, s->vals, n, n, 0.0, uniform(s), s->probs);
}

void sampler_apply_mask(float *logits, int vocab, const uint32_t *mask) {
    for (int w = 0; w * 32 < vocab; w++) {
        uint32_t bits = mask[w];
        int i0 = w * 32, i1 = i0 + 32 < vocab ? i0 + 32 : vocab;
        if (bits == UINT32_MAX) continue;
        if (bits == 0) { /* most words, outside a string: a plain fill */
            for (int i = i0; i < i1; i++) logits[i] = -INFINITY;
            continue;
        }
        for (int i = i0; i < i1; i++)
            if (!((bits >> (i - i0)) & 1)) logits[i] = -INFINITY;
    }
}

int32_t sampler_sample(sampler *s, float *logits, const int32_t *prompt, int n_prompt,
                       const int32_t *output, int n_output) {
    apply_penalties(s, logits, prompt, n_prompt, output, n_output);
    return sampler_sample_applied(s, logits);
}

/* ---- sampling with the logits on a backend ---- */

static int n_full(const sampler *s) {
    int k = s->p.top_k;
    return k > 0 && k < s->vocab ? k : s->vocab;
}

int sampler_candidates_ok(const sampler *s, int n_cand) { return n_full(s) <= n_cand || n_full(s) == s->vocab; }

static int desc_reserve(sampler_desc *d, size_t words) {
    if (d->len + words <= d->cap) return 0;
    size_t cap = d->cap ? d->cap : 256;
    while (cap < d->len + words) cap *= 2;
    int32_t *w = realloc(d->w, cap * sizeof(int32_t));
    if (!w) return -1;
    d->w = w;
    d->cap = cap;
    return 0;
}

static int32_t f2w(float f) {
    int32_t w;
    memcpy(&w, &f, sizeof(w));
    return w;
}

int sampler_desc_begin(sampler_desc *d, int n_rows) {
    d->len = 0;
    d->n_rows = n_rows;
    if (desc_reserve(d, (size_t)n_rows * SAMPLER_DESC_WORDS)) return -1;
    memset(d->w, 0, (size_t)n_rows * SAMPLER_DESC_WORDS * sizeof(int32_t));
    d->len = (size_t)n_rows * SAMPLER_DESC_WORDS;
    return 0;
}

int sampler_desc_set(sampler_desc *d, int r, sampler *s, int row, const int32_t *bias_ids,
                     const float *bias_vals, int n_bias, const int32_t *prompt, int n_prompt,
                     const int32_t *output, int n_output) {
    const sampler_params *p = &s->p;
    bool pen = p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    size_t most = 2 * (size_t)n_bias + (pen ? 2 * ((size_t)n_prompt + (size_t)n_output) : 0);
    if (desc_reserve(d, most)) return -1;
    int32_t *h = d->w + (size_t)r * SAMPLER_DESC_WORDS;
    h[SAMPLER_DESC_ROW] = row;
    h[SAMPLER_DESC_TEMP] = f2w(p->temperature);
    h[SAMPLER_DESC_REP] = f2w(p->repetition_penalty);
    h[SAMPLER_DESC_PRES] = f2w(p->presence_penalty);
    h[SAMPLER_DESC_FREQ] = f2w(p->frequency_penalty);
    h[SAMPLER_DESC_N_FULL] = n_full(s);
    h[SAMPLER_DESC_N_BIAS] = n_bias;
    h[SAMPLER_DESC_BIAS_OFF] = (int32_t)d->len;
    for (int i = 0; i < n_bias; i++) {
        d->w[d->len++] = bias_ids[i];
        d->w[d->len++] = f2w(bias_vals[i]);
    }
    /* The ids apply_penalties touches, each once, with their output counts. */
    h[SAMPLER_DESC_PEN_OFF] = (int32_t)d->len;
    int n_pen = 0, V = s->vocab;
    if (pen) {
        int32_t *list = d->w + d->len; /* ids first, pairs written after */
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *ids = pass ? output : prompt;
            int n = pass ? n_output : n_prompt;
            for (int i = 0; i < n; i++) {
                int32_t id = ids[i];
                if (id < 0 || id >= V) continue;
                if (!s->seen[id]) {
                    s->seen[id] = 1;
                    list[n_pen++] = id;
                }
                if (pass) s->counts[id]++;
            }
        }
        for (int i = n_pen; i-- > 0;) { /* spread ids into (id, count) pairs, from the back */
            int32_t id = list[i];
            list[2 * i] = id;
            list[2 * i + 1] = s->counts[id];
            s->seen[id] = 0;
            s->counts[id] = 0;
        }
        d->len += 2 * (size_t)n_pen;
    }
    h[SAMPLER_DESC_N_PEN] = n_pen;
    h[SAMPLER_DESC_MASK_OFF] = -1;
    return 0;
}

int sampler_desc_set_mask(sampler_desc *d, int r, const uint32_t *mask, int words) {
    if (desc_reserve(d, (size_t)words)) return -1;
    d->w[(size_t)r * SAMPLER_DESC_WORDS + SAMPLER_DESC_MASK_OFF] = (int32_t)d->len;
    memcpy(d->w + d->len, mask, (size_t)words * sizeof(uint32_t));
    d->len += (size_t)words;
    return 0;
}

void sampler_desc_mask_at(sampler_desc *d, int r, size_t off) {
    d->w[(size_t)r * SAMPLER_DESC_WORDS + SAMPLER_DESC_MASK_OFF] = (int32_t)off;
}

size_t sampler_desc_bytes(const sampler_desc *d) { return d->len * sizeof(int32_t); }

void sampler_desc_free(sampler_desc *d) {
    free(d->w);
    *d = (sampler_desc){0};
}

int32_t sampler_sample_candidates(sampler *s, const void *result, int n_cand) {
    const sampler_params *p = &s->p;
    const unsigned char *b = result;
    const int32_t *ids = (const int32_t *)b;
    const float *lg = (const float *)(b + 4 * (size_t)n_cand);
    double tail;
    int32_t n, flags;
    memcpy(&tail, b + 8 * (size_t)n_cand, sizeof(tail));
    memcpy(&n, b + 8 * (size_t)n_cand + 8, sizeof(n));
    memcpy(&flags, b + 8 * (size_t)n_cand + 12, sizeof(flags));
    int nf = n_full(s);
    if ((flags & SAMPLER_RESULT_NAN) || n < 1 || n > nf || n > n_cand) return -1;
    if (p->temperature <= 0.0f) return ids[0]; /* argmax: the first in (logit desc, id asc) order */
    if (n < nf && nf != s->vocab) return -1;   /* a top-k cut past the candidates: tail unknown */
    if (!isfinite(lg[0] / p->temperature) || !isfinite(tail) || tail < 0) return -1;
    uint64_t rng[4];
    memcpy(rng, s->rng, sizeof(rng));
    int32_t id = pick(p, ids, lg, n, nf, n < nf ? tail : 0.0, uniform(s), s->probs);
    if (id < 0) memcpy(s->rng, rng, sizeof(rng)); /* nothing drawn */
    return id;
}
