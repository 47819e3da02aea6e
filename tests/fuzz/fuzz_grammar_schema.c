/* libFuzzer target: grammar/'s compilers (JSON Schema, regex, GBNF) on
 * arbitrary bytes, and the matcher on what compiles. The first byte picks
 * the compiler; the rest is its input. A compiled grammar is then walked by
 * a matcher over a toy vocabulary: each step's mask must agree with
 * accepting each token on a copy, and a walk that ends by EOS must be a
 * whole sentence when its bytes are fed to a fresh matcher, and no accept
 * that grammar_matcher_may_end_after rules out ends the output. Errors must be
 * one line; nothing may crash, hang or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar.h"

static const char *toy[] = {"{", "}", "[", "]", "\"", ":", ",", " ", "a", "b", "0", "1", "-", ".", "e", "true",
                            "null", "\":", "ab", "\\", "n", "\xc3", "\xa9", "x", "(", ")", "|", "*", "</s>"};
#define N_TOY (int)(sizeof(toy) / sizeof(toy[0]))

static void walk(grammar *g, const uint8_t *seed, size_t n_seed) {
    static grammar_vocab *v;
    if (!v) {
        size_t lens[N_TOY];
        for (int i = 0; i < N_TOY; i++) lens[i] = strlen(toy[i]);
        int32_t eos = N_TOY - 1;
        char err[128];
        if (grammar_vocab_create(N_TOY, toy, lens, NULL, &eos, 1, &v, err, sizeof(err))) abort();
    }
    grammar_matcher *m = grammar_matcher_create(g);
    if (!m) return;
    uint32_t mask[1];
    char text[256];
    size_t len = 0;
    for (size_t step = 0; step < 24; step++) {
        int count = grammar_matcher_mask(m, v, mask);
        if (count < 0) break;
        int allowed[N_TOY], na = 0;
        for (int id = 0; id < N_TOY; id++) {
            grammar_matcher *c = grammar_matcher_clone(m);
            if (!c) abort();
            bool may = grammar_matcher_may_end_after(c, toy[id], strlen(toy[id]));
            bool acc = grammar_matcher_accept_token(c, v, id), in = (mask[0] >> id) & 1;
            bool ended = acc && id != N_TOY - 1 && grammar_matcher_ended(c);
            grammar_matcher_destroy(c);
            if (acc != in) abort(); /* the mask and the matcher disagree */
            if (ended && !may) abort(); /* an accept put off as unable to end the output ended it */
            if (in) allowed[na++] = id;
        }
        if (na != count) abort();
        if (na == 0) break;
        int id = allowed[(step < n_seed ? seed[step] : 0) % na];
        if (id == N_TOY - 1) { /* EOS: the text so far is a sentence */
            grammar_matcher *f = grammar_matcher_create(g);
            if (f && !grammar_matcher_overflowed(m) &&
                !(grammar_matcher_accept_bytes(f, text, len) && grammar_matcher_can_end(f)))
                abort();
            grammar_matcher_destroy(f);
            break;
        }
        if (!grammar_matcher_accept_token(m, v, id)) abort();
        size_t tl = strlen(toy[id]);
        if (len + tl > sizeof(text)) break;
        memcpy(text + len, toy[id], tl);
        len += tl;
    }
    grammar_matcher_destroy(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    grammar *g = NULL;
    char err[256];
    err[0] = 0;
    int rc;
    switch (data[0] % 3) {
    case 0: rc = grammar_compile_json_schema(in, n, &g, err, sizeof(err)); break;
    case 1: rc = grammar_compile_regex(in, n, &g, err, sizeof(err)); break;
    default: rc = grammar_compile_gbnf(in, n, &g, err, sizeof(err)); break;
    }
    if ((rc == GRAMMAR_OK) != (g != NULL)) abort();
    if (rc != GRAMMAR_OK && (!err[0] || strchr(err, '\n'))) abort(); /* one line, always */
    if (g) walk(g, data, size);
    grammar_release(g);
    return 0;
}
