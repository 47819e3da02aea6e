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
 * advances it by its token; the mean time of both per step and per token.
 *   bench-grammar [--tokenizer DIR] [--repeat N] [--walk N [--steps T] [--schema FILE] [--seed S]] */
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

/* The --walk mode: n matchers of g, steps tokens each, repeat passes. */
static int walk(grammar *g, const grammar_vocab *v, int32_t eos, int n, int steps, int repeat, uint64_t seed) {
    size_t words = grammar_vocab_mask_words(v);
    uint32_t *mask = malloc(words * sizeof(uint32_t));
    grammar_matcher **m = calloc((size_t)n, sizeof(*m));
    int32_t *pick = malloc((size_t)n * sizeof(int32_t));
    if (!mask || !m || !pick) return 1;
    double t_mask = 0, t_adv = 0, t_first = 0;
    long long n_tok = 0, restarts = 0, allowed = 0;
    for (int r = 0; r <= repeat; r++) { /* pass 0 makes the tables: not timed */
        for (int i = 0; i < n; i++) grammar_matcher_destroy(m[i]), m[i] = grammar_matcher_create(g);
        for (int k = 0; k < steps; k++) {
            double t0 = util_now();
            for (int i = 0; i < n; i++) { /* a random allowed token: the count-th set bit */
                int a = grammar_matcher_mask(m[i], v, mask);
                if (a <= 0) return fprintf(stderr, "bench-grammar: matcher %d allows nothing\n", i), 1;
                seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
                long want = (long)(seed % (uint64_t)a);
                allowed += a;
                for (size_t w = 0;; w++) {
                    int c = __builtin_popcount(mask[w]);
                    if (want >= c) { want -= c; continue; }
                    uint32_t x = mask[w];
                    while (want--) x &= x - 1;
                    pick[i] = (int32_t)(w * 32 + (size_t)__builtin_ctz(x));
                    break;
                }
            }
            double t1 = util_now();
            for (int i = 0; i < n; i++)
                if (pick[i] == eos || !grammar_matcher_accept_token(m[i], v, pick[i]) || grammar_matcher_ended(m[i])) {
                    grammar_matcher_destroy(m[i]); /* the output is complete: a new sequence */
                    m[i] = grammar_matcher_create(g);
                    restarts += r > 0;
                }
            double t2 = util_now();
            if (r) t_mask += t1 - t0, t_adv += t2 - t1, n_tok += n;
            else t_first += t2 - t0;
        }
    }
    double st = (double)n_tok / n;
    printf("walk: %d matchers x %d tokens x %d passes, %lld outputs completed, allowed tokens per mask: mean %.0f\n", n,
           steps, repeat, restarts, (double)allowed / (n_tok + (long long)n * steps));
    int n_tab;
    size_t bytes_tab;
    double s_tab;
    grammar_tables_stats(g, &n_tab, &bytes_tab, &s_tab);
    printf("pass 0 (tables made): %.1f ms, of which %d token tables made in %.1f ms, %.2f MiB\n", 1e3 * t_first, n_tab,
           1e3 * s_tab, bytes_tab / 1048576.0);
    printf("masks    %9.1f us a step  %7.2f us a token\n", 1e6 * t_mask / st, 1e6 * t_mask / n_tok);
    printf("advances %9.1f us a step  %7.2f us a token\n", 1e6 * t_adv / st, 1e6 * t_adv / n_tok);
    for (int i = 0; i < n; i++) grammar_matcher_destroy(m[i]);
    free(m), free(mask), free(pick);
    return 0;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *t, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += t[i];
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    printf("%-34s mean %8.1f us  p50 %8.1f us  p99 %8.1f us  max %8.1f us  (%d masks)\n", what, 1e6 * sum / n,
           1e6 * t[n / 2], 1e6 * t[(int)(0.99 * (n - 1))], 1e6 * t[n - 1], n);
}

int main(int argc, char **argv) {
    const char *dir = "../shared/tokenizers/qwen3";
    const char *schema_file = NULL;
    int repeat = 3, n_walk = 0, steps = 256;
    uint64_t seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tokenizer")) dir = argv[i + 1];
        else if (!strcmp(argv[i], "--repeat")) repeat = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--walk")) n_walk = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps")) steps = atoi(argv[i + 1]);
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
        int rc = walk(g, v, eos, n_walk, steps, repeat, seed);
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
