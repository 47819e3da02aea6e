/* Structured outputs: the time to compute one token mask over a real
 * vocabulary (Qwen3's 151,669 tokens by default) along a realistic JSON
 * schema's output. The output (a fixed instance, tokenized by the tokenizer)
 * is fed token by token. Pass 0 computes each mask on a fresh copy of the
 * matcher (the grammar's token tables are made as stacks are first met) and
 * by the reference trie walk, and requires them equal; passes 1.. time masks
 * cold (a fresh copy: no per-state cache, tables made) and as the engine
 * computes them (the matcher's per-state cache). Prints compile time, table
 * count, bytes and making time, and mean / p50 / p99 / max per token.
 * With --walk N, instead: N matchers on the schema of --schema FILE (default
 * the one below) each take T random allowed tokens per pass, as N
 * constrained sequences of a random-weight model do in the engine: each
 * step masks every matcher (its state cache on, the tables shared) and
 * advances it by its token, the matchers split across --threads W threads;
 * the time a step takes (pass 0, which makes the tables, and the others)
 * and the threads' time per token.
 *   bench-grammar [--tokenizer DIR] [--repeat N]
 *                 [--walk N [--steps T] [--schema FILE] [--seed S] [--threads W]] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "grammar/grammar.h"
#include "tokenizer/tokenizer.h"

static const char schema[] =
    "{\"type\":\"object\",\"additionalProperties\":false,"
    "\"required\":[\"id\",\"name\",\"email\",\"age\",\"active\",\"role\",\"address\",\"tags\",\"orders\",\"note\"],"
    "\"properties\":{"
    "\"id\":{\"type\":\"string\",\"format\":\"uuid\"},"
    "\"name\":{\"type\":\"string\",\"maxLength\":64},"
    "\"email\":{\"type\":\"string\"},"
    "\"age\":{\"type\":\"integer\",\"minimum\":0},"
    "\"active\":{\"type\":\"boolean\"},"
    "\"role\":{\"enum\":[\"admin\",\"editor\",\"viewer\"]},"
    "\"address\":{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"street\",\"city\",\"zip\",\"country\"],"
    "\"properties\":{\"street\":{\"type\":\"string\"},\"city\":{\"type\":\"string\"},\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}$\"},"
    "\"country\":{\"type\":\"string\",\"minLength\":2,\"maxLength\":2}}},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":8},"
    "\"orders\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/order\"}},"
    "\"note\":{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]}},"
    "\"$defs\":{\"order\":{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"sku\",\"qty\",\"price\"],"
    "\"properties\":{\"sku\":{\"type\":\"string\"},\"qty\":{\"type\":\"integer\"},\"price\":{\"type\":\"number\"}}}}}";

static const char instance[] =
    "{\"id\": \"3f2b8c1e-9a4d-4e7b-8c21-5d6f7a8b9c0d\", \"name\": \"Ada Lovelace\", "
    "\"email\": \"ada@example.org\", \"age\": 36, \"active\": true, \"role\": \"editor\", "
    "\"address\": {\"street\": \"12 St James's Square\", \"city\": \"London\", \"zip\": \"10115\", \"country\": \"GB\"}, "
    "\"tags\": [\"math\", \"engines\", \"poetry\"], "
    "\"orders\": [{\"sku\": \"AE-1843\", \"qty\": 2, \"price\": 19.99}, {\"sku\": \"NOTE-G\", \"qty\": 1, \"price\": 4.5}], "
    "\"note\": \"First published the algorithm for Bernoulli numbers, in her notes on the Analytical Engine.\"}";

/* The --walk mode: n matchers of g, steps tokens each, repeat passes, the
 * matchers of a step split across `threads` threads (matcher i on thread i %
 * threads), each masking its matchers and advancing them by their picks, as
 * the engine's mask workers would (the step ends when all are done). */
typedef struct {
    grammar *g;
    const grammar_vocab *v;
    int32_t eos;
    int n, steps, repeat, threads, tid;
    grammar_matcher **m;
    uint64_t *rng;          /* (n) each matcher's own: the walk is the same for any thread count */
    pthread_barrier_t *bar;
    double t_first, t_rest, t_mask, t_adv; /* thread 0: step walls; this thread: its masks, advances */
    long long allowed, restarts;
    int failed;
} walker;

static void *walk_thread(void *arg) {
    walker *w = arg;
    size_t words = grammar_vocab_mask_words(w->v);
    uint32_t *mask = malloc(words * sizeof(uint32_t));
    for (int r = 0; r <= w->repeat; r++) { /* pass 0 makes the tables */
        for (int i = w->tid; i < w->n; i += w->threads) grammar_matcher_destroy(w->m[i]), w->m[i] = grammar_matcher_create(w->g);
        for (int k = 0; k < w->steps; k++) {
            pthread_barrier_wait(w->bar);
            double t0 = util_now();
            for (int i = w->tid; i < w->n && mask; i += w->threads) { /* a random allowed token: the count-th set bit */
                double ta = util_now();
                int a = grammar_matcher_mask(w->m[i], w->v, mask);
                double tb = util_now();
                if (a <= 0) {
                    w->failed = 1;
                    break;
                }
                uint64_t x = w->rng[i];
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                w->rng[i] = x;
                long want = (long)(x % (uint64_t)a);
                int32_t pick = -1;
                for (size_t q = 0; pick < 0; q++) {
                    int c = __builtin_popcount(mask[q]);
                    if (want >= c) {
                        want -= c;
                        continue;
                    }
                    uint32_t bits = mask[q];
                    while (want--) bits &= bits - 1;
                    pick = (int32_t)(q * 32 + (size_t)__builtin_ctz(bits));
                }
                double tc = util_now();
                if (pick == w->eos || !grammar_matcher_accept_token(w->m[i], w->v, pick) || grammar_matcher_ended(w->m[i])) {
                    grammar_matcher_destroy(w->m[i]); /* the output is complete: a new sequence */
                    w->m[i] = grammar_matcher_create(w->g);
                    w->restarts += r > 0;
                }
                if (r) w->t_mask += tb - ta, w->t_adv += util_now() - tc, w->allowed += a;
            }
            pthread_barrier_wait(w->bar);
            if (w->tid == 0) *(r ? &w->t_rest : &w->t_first) += util_now() - t0;
        }
    }
    w->failed |= !mask;
    free(mask);
    return NULL;
}

static int walk(grammar *g, const grammar_vocab *v, int32_t eos, int n, int steps, int repeat, int threads, uint64_t seed) {
    grammar_matcher **m = calloc((size_t)n, sizeof(*m));
    uint64_t *rng = malloc((size_t)n * sizeof(uint64_t));
    walker *w = calloc((size_t)threads, sizeof(walker));
    pthread_t *th = calloc((size_t)threads, sizeof(pthread_t));
    pthread_barrier_t bar;
    if (!m || !rng || !w || !th || pthread_barrier_init(&bar, NULL, (unsigned)threads)) return 1;
    for (int i = 0; i < n; i++) rng[i] = (seed + 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1)) | 1;
    for (int t = 0; t < threads; t++) {
        w[t] = (walker){.g = g, .v = v, .eos = eos, .n = n, .steps = steps, .repeat = repeat, .threads = threads,
                        .tid = t, .m = m, .rng = rng, .bar = &bar};
        if (pthread_create(&th[t], NULL, walk_thread, &w[t])) return 1;
    }
    double t_mask = 0, t_adv = 0;
    long long allowed = 0, restarts = 0;
    int failed = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        t_mask += w[t].t_mask, t_adv += w[t].t_adv, allowed += w[t].allowed, restarts += w[t].restarts;
        failed |= w[t].failed;
    }
    if (failed) return fprintf(stderr, "bench-grammar: a matcher allowed nothing\n"), 1;
    long long n_tok = (long long)n * steps * repeat;
    int n_tab;
    size_t bytes_tab;
    double s_tab;
    grammar_tables_stats(g, &n_tab, &bytes_tab, &s_tab);
    printf("walk: %d matchers x %d tokens x %d passes on %d threads, %lld outputs completed, allowed tokens per mask: "
           "mean %.0f\n", n, steps, repeat, threads, restarts, (double)allowed / n_tok);
    printf("pass 0 (tables made): %.1f ms a pass, %.1f us a step; %d token tables made in %.1f ms (thread time), %.2f MiB\n",
           1e3 * w[0].t_first, 1e6 * w[0].t_first / steps, n_tab, 1e3 * s_tab, bytes_tab / 1048576.0);
    printf("passes 1..: %.1f us a step (masks and advances, all threads done)\n", 1e6 * w[0].t_rest / ((double)steps * repeat));
    printf("thread time: masks %.2f us a token, advances %.2f us a token\n", 1e6 * t_mask / n_tok, 1e6 * t_adv / n_tok);
    for (int i = 0; i < n; i++) grammar_matcher_destroy(m[i]);
    pthread_barrier_destroy(&bar);
    free(m), free(rng), free(w), free(th);
    return 0;
}

static void report(const char *what, double *t, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += t[i];
    util_sort_doubles(t, (size_t)n);
    printf("%-34s mean %8.1f us  p50 %8.1f us  p99 %8.1f us  max %8.1f us  (%d masks)\n", what, 1e6 * sum / n,
           1e6 * t[n / 2], 1e6 * t[(int)(0.99 * (n - 1))], 1e6 * t[n - 1], n);
}

int main(int argc, char **argv) {
    const char *dir = "../shared/tokenizers/qwen3";
    const char *schema_file = NULL;
    int repeat = 3, n_walk = 0, steps = 256, threads = 1;
    uint64_t seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokenizer")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--repeat")) repeat = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--walk")) n_walk = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : 1;
        else if (!strcmp(argv[i], "--schema")) schema_file = argv[i + 1];
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10) | 1;
        else {
            fprintf(stderr, "bench-grammar: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    char err[256];
    tokenizer *tok = NULL;
    if (tokenizer_load(dir, &tok, err, sizeof(err))) {
        fprintf(stderr, "bench-grammar: %s\n", err);
        return 1;
    }
    int n = (int)tokenizer_vocab_size(tok);
    char **bytes = calloc((size_t)n, sizeof(char *));
    size_t *lens = calloc((size_t)n, sizeof(size_t));
    bool *special = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) {
        special[i] = tokenizer_is_special(tok, i);
        if (tokenizer_token_bytes(tok, i, &bytes[i], &lens[i])) bytes[i] = NULL, lens[i] = 0;
    }
    int32_t eos = tokenizer_eos_id(tok);
    double t0 = util_now();
    grammar_vocab *v = NULL;
    if (grammar_vocab_create(n, (const char *const *)bytes, lens, special, &eos, eos >= 0, &v, err, sizeof(err))) {
        fprintf(stderr, "bench-grammar: %s\n", err);
        return 1;
    }
    double t_vocab = util_now() - t0;
    t0 = util_now();
    grammar *g = NULL;
    char *text = NULL;
    size_t text_len = sizeof(schema) - 1;
    if (schema_file && !(text = util_read_file(schema_file, GRAMMAR_MAX_TEXT, &text_len, err, sizeof(err)))) {
        fprintf(stderr, "bench-grammar: %s\n", err);
        return 1;
    }
    if (grammar_compile_json_schema(text ? text : schema, text_len, &g, err, sizeof(err))) {
        fprintf(stderr, "bench-grammar: %s\n", err);
        return 1;
    }
    free(text);
    double t_compile = util_now() - t0;
    if (n_walk > 0) {
        printf("vocabulary: %d tokens; schema: %zu bytes, %d rules, %d elements, compiled in %.2f ms\n", n, text_len,
               grammar_n_rules(g), grammar_n_elems(g), 1e3 * t_compile);
        int rc = walk(g, v, eos, n_walk, steps, repeat, threads, seed);
        grammar_release(g);
        grammar_vocab_destroy(v);
        tokenizer_destroy(tok);
        return rc;
    }
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (tokenizer_encode(tok, instance, sizeof(instance) - 1, false, &ids, &n_ids)) return 1;
    printf("vocabulary: %d tokens, trie built in %.1f ms; schema: %zu bytes, %d rules, %d elements, compiled in %.2f ms\n",
           n, 1e3 * t_vocab, sizeof(schema) - 1, grammar_n_rules(g), grammar_n_elems(g), 1e3 * t_compile);
    printf("output: %zu bytes, %zu tokens, %d passes\n", sizeof(instance) - 1, n_ids, repeat);
    size_t words = grammar_vocab_mask_words(v);
    uint32_t *mask = malloc(words * sizeof(uint32_t)), *ref = malloc(words * sizeof(uint32_t));
    int cap = (int)(n_ids + 1) * (repeat + 1), nf = 0, nc = 0, nw = 0, nr = 0;
    double *first = malloc((size_t)cap * sizeof(double)), *cold = malloc((size_t)cap * sizeof(double));
    double *warm = malloc((size_t)cap * sizeof(double)), *refs = malloc((size_t)cap * sizeof(double));
    long long allowed = 0;
    /* pass 0 makes the grammar's token tables as stacks are met (and checks
     * each mask against the reference walk); passes 1.. find them made */
    for (int r = 0; r <= repeat; r++) {
        grammar_matcher *m = grammar_matcher_create(g);
        for (size_t k = 0; k <= n_ids; k++) {
            grammar_matcher *c = grammar_matcher_clone(m);
            t0 = util_now();
            int a = grammar_matcher_mask(c, v, mask);
            double dt = util_now() - t0;
            if (r) cold[nc++] = dt;
            else first[nf++] = dt;
            if (r == 0) {
                t0 = util_now();
                int b = grammar_matcher_mask_reference(c, v, ref);
                refs[nr++] = util_now() - t0;
                if (a != b || memcmp(mask, ref, words * sizeof(uint32_t))) {
                    fprintf(stderr, "bench-grammar: token %zu: the mask (%d allowed) differs from the reference (%d)\n", k, a, b);
                    return 1;
                }
            }
            grammar_matcher_destroy(c);
            if (r) {
                t0 = util_now();
                grammar_matcher_mask(m, v, mask);
                warm[nw++] = util_now() - t0;
                allowed += a;
            }
            int32_t id = k < n_ids ? ids[k] : eos;
            if (!((mask[id >> 5] >> (id & 31)) & 1)) {
                fprintf(stderr, "bench-grammar: token %zu (%d) of the instance is not allowed\n", k, id);
                return 1;
            }
            if (k < n_ids && !grammar_matcher_accept_token(m, v, id)) return 1;
        }
        grammar_matcher_destroy(m);
        if (r == 0) {
            int n_tab;
            size_t bytes_tab;
            double s_tab;
            grammar_tables_stats(g, &n_tab, &bytes_tab, &s_tab);
            printf("token tables: %d made on first use in %.1f ms, %.2f MiB\n", n_tab, 1e3 * s_tab, bytes_tab / 1048576.0);
        }
    }
    printf("allowed tokens per mask: mean %.0f of %d; every mask of pass 0 equals the reference walk's\n",
           (double)allowed / nc, n);
    report("mask, reference (trie walk)", refs, nr);
    report("mask, pass 0 (tables made)", first, nf);
    report("mask, tables made, no state cache", cold, nc);
    report("mask, as the engine (state cache)", warm, nw);
    free(first), free(cold), free(warm), free(refs), free(mask), free(ref), free(ids);
    for (int i = 0; i < n; i++) free(bytes[i]);
    free(bytes), free(lens), free(special);
    grammar_release(g);
    grammar_vocab_destroy(v);
    tokenizer_destroy(tok);
    return 0;
}
