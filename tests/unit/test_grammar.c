/* Unit tests for grammar/: GBNF, JSON Schema, regex and choice compilers
 * (what each accepts and rejects, byte by byte), their errors (named, never a
 * crash), the matcher's bounds, and the vocabulary mask: over a toy
 * vocabulary every masked-in token is accepted and every masked-out one
 * rejected, random walks of allowed tokens always end inside the language,
 * and over Qwen3's real vocabulary the mask from token tables equals the
 * reference trie walk's, step by step. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grammar/grammar.h"
#include "tokenizer/tokenizer.h"

static char err[256];

static grammar *gbnf(const char *text) {
    grammar *g = NULL;
    int rc = grammar_compile_gbnf(text, strlen(text), &g, err, sizeof(err));
    ck_assert_msg(rc == GRAMMAR_OK, "%s: %s", text, err);
    return g;
}

static grammar *schema(const char *json) {
    grammar *g = NULL;
    int rc = grammar_compile_json_schema(json, strlen(json), &g, err, sizeof(err));
    ck_assert_msg(rc == GRAMMAR_OK, "%s: %s", json, err);
    return g;
}

static grammar *regex(const char *re) {
    grammar *g = NULL;
    int rc = grammar_compile_regex(re, strlen(re), &g, err, sizeof(err));
    ck_assert_msg(rc == GRAMMAR_OK, "%s: %s", re, err);
    return g;
}

/* Whether s is a whole sentence of g. */
static bool full(grammar *g, const char *s) {
    grammar_matcher *m = grammar_matcher_create(g);
    ck_assert_ptr_nonnull(m);
    bool ok = grammar_matcher_accept_bytes(m, s, strlen(s)) && grammar_matcher_can_end(m);
    grammar_matcher_destroy(m);
    return ok;
}

/* Whether s is a prefix of a sentence of g (each byte accepted). */
static bool prefix(grammar *g, const char *s) {
    grammar_matcher *m = grammar_matcher_create(g);
    bool ok = grammar_matcher_accept_bytes(m, s, strlen(s));
    grammar_matcher_destroy(m);
    return ok;
}

#define YES(g, s) ck_assert_msg(full(g, s), "should accept: %s", s)
#define NO(g, s) ck_assert_msg(!full(g, s), "should reject: %s", s)

START_TEST(test_gbnf_basics) {
    grammar *g = gbnf("root ::= \"a\" b* | [x-z]+ \"!\"?\nb ::= \"b\" | \"cd\"\n");
    YES(g, "a"), YES(g, "abcdb"), YES(g, "xyz"), YES(g, "zz!");
    NO(g, ""), NO(g, "ac"), NO(g, "!"), NO(g, "xa");
    ck_assert(prefix(g, "abc"));
    grammar_release(g);
    g = gbnf("root ::= [a-c]{2,3} d{2} e{1,}\nd ::= \"0\"\ne ::= \".\"  # comment\n");
    YES(g, "ab00."), YES(g, "abc00..."), NO(g, "a00."), NO(g, "abca00."), NO(g, "ab0.");
    grammar_release(g);
    g = gbnf("root ::= [^a\\n] \"\\u00e9\" [\\u4e00-\\u9fff] .\n"); /* UTF-8 classes */
    YES(g, "b\xc3\xa9\xe4\xb8\x80\xf0\x9f\x98\x80"), NO(g, "a\xc3\xa9\xe4\xb8\x80x"), NO(g, "\n\xc3\xa9\xe4\xb8\x80x");
    NO(g, "b\xc3\xa9" "ax");
    grammar_release(g);
    g = gbnf("root ::= ( \"(\" root \")\" )* \n"); /* recursion, nesting */
    YES(g, ""), YES(g, "(()())"), NO(g, "(()"), NO(g, "())");
    grammar_release(g);
}
END_TEST

START_TEST(test_gbnf_errors) {
    static const struct { const char *text; int status; const char *needle; } bad[] = {
        {"root ::= a\n", GRAMMAR_ERR_INVALID, "undefined rule 'a'"},
        {"root ::= root \"x\" | \"y\"\n", GRAMMAR_ERR_INVALID, "left recursion"},
        {"root ::= a\na ::= b? root \"x\"\nb ::= \"b\"\n", GRAMMAR_ERR_INVALID, "left recursion"},
        {"a ::= \"x\"\n", GRAMMAR_ERR_INVALID, "no rule named 'root'"},
        {"root ::= \"x\nroot2 ::= \"y\"", GRAMMAR_ERR_SYNTAX, "unterminated"},
        {"root ::= [a-\n", GRAMMAR_ERR_SYNTAX, ""},
        {"root ::= (\"a\"\n", GRAMMAR_ERR_SYNTAX, "')'"},
        {"root ::= \"a\"{99999}\n", GRAMMAR_ERR_LIMIT, "10000"},
        {"root ::= \"a\"\nroot ::= \"b\"\n", GRAMMAR_ERR_INVALID, "twice"},
        {"root ::= \"\\q\"\n", GRAMMAR_ERR_SYNTAX, "escape"},
        {"root ::= *\n", GRAMMAR_ERR_SYNTAX, "unexpected"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        grammar *g = (grammar *)1;
        err[0] = 0;
        int rc = grammar_compile_gbnf(bad[i].text, strlen(bad[i].text), &g, err, sizeof(err));
        ck_assert_msg(rc == bad[i].status, "%s: got %d (%s)", bad[i].text, rc, err);
        ck_assert_ptr_null(g);
        ck_assert_msg(strstr(err, bad[i].needle) && strchr(err, '\n') == NULL, "%s: message %s", bad[i].text, err);
    }
    /* nested repetitions stay small (a rule per level); many wide ones hit the element limit */
    grammar *g = gbnf("root ::= (((\"a\"){10000}){10000}){10000}\n");
    grammar_release(g);
    size_t cap = 200 * 32, n = 0;
    char *big = malloc(cap);
    n += (size_t)snprintf(big, cap, "root ::=");
    for (int i = 0; i < 150; i++) n += (size_t)snprintf(big + n, cap - n, " \"ab\"{10000}");
    ck_assert_int_eq(grammar_compile_gbnf(big, n, &g, err, sizeof(err)), GRAMMAR_ERR_LIMIT);
    free(big);
}
END_TEST

START_TEST(test_json_schema) {
    grammar *g = schema("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},"
                        "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"maxItems\":2},"
                        "\"kind\":{\"enum\":[\"a\",\"b\",1,null]}},\"required\":[\"name\",\"age\",\"tags\",\"kind\"],"
                        "\"additionalProperties\":false}");
    YES(g, "{\"name\":\"x\",\"age\":-3,\"tags\":[],\"kind\":\"a\"}");
    YES(g, "{ \"name\": \"\\u00e9\\n\",\n  \"age\": 0, \"tags\": [\"p\", \"q\"], \"kind\": null}");
    NO(g, "{\"name\":\"x\",\"age\":1.5,\"tags\":[],\"kind\":\"a\"}");
    NO(g, "{\"name\":\"x\",\"age\":1,\"tags\":[\"a\",\"b\",\"c\"],\"kind\":\"a\"}");
    NO(g, "{\"name\":\"x\",\"age\":01,\"tags\":[],\"kind\":\"a\"}");
    NO(g, "{\"name\":\"x\",\"age\":1,\"tags\":[],\"kind\":\"c\"}");
    NO(g, "{\"age\":1,\"name\":\"x\",\"tags\":[],\"kind\":\"a\"}"); /* the schema's order */
    NO(g, "{\"name\":\"x\",\"age\":1,\"tags\":[],\"kind\":\"a\"}   ");
    grammar_release(g);
    /* optional properties, $defs and recursion, anyOf, nullable, const, lengths */
    g = schema("{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"const\":7},"
               "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\"]}},"
               "\"type\":\"object\",\"properties\":{\"a\":{\"anyOf\":[{\"type\":\"string\",\"minLength\":2,\"maxLength\":3},{\"type\":\"null\"}]},"
               "\"b\":{\"$ref\":\"#/$defs/node\"},\"c\":{\"type\":\"boolean\"}}}");
    YES(g, "{}"), YES(g, "{\"c\":true}"), YES(g, "{\"a\":\"xy\",\"c\":false}"), YES(g, "{\"a\":null}");
    YES(g, "{\"b\":{\"v\":7,\"kids\":[{\"v\":7},{\"v\":7,\"kids\":[]}]}}");
    NO(g, "{\"a\":\"x\"}"), NO(g, "{\"a\":\"wxyz\"}"), NO(g, "{\"c\":true,\"a\":null}"), NO(g, "{\"b\":{\"v\":8}}");
    NO(g, "{\"b\":{\"kids\":[]}}"), NO(g, "{,}");
    grammar_release(g);
    g = schema("{\"type\":\"array\",\"items\":{\"type\":\"number\"},\"minItems\":2}");
    YES(g, "[1,2.5e3]"), YES(g, "[-0.5, 3, 4]"), NO(g, "[1]"), NO(g, "[1,]"), NO(g, "[.5,1]");
    grammar_release(g);
    g = schema("{\"type\":\"integer\",\"minimum\":-2,\"maximum\":3}");
    YES(g, "-2"), YES(g, "3"), YES(g, "0"), NO(g, "4"), NO(g, "-3");
    grammar_release(g);
    g = schema("{\"type\":\"string\",\"pattern\":\"^a\\\"[0-9]+$\"}");
    YES(g, "\"a\\\"12\""), NO(g, "\"a\"12\""), NO(g, "\"a\\\"\"");
    grammar_release(g);
    g = schema("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"integer\"}}");
    YES(g, "{\"x\":1, \"y\":2}"), NO(g, "{\"x\":\"1\"}");
    grammar_release(g);
    /* type lists, as OpenAI's strict mode writes optional fields: each keyword applies to its own type */
    g = schema("{\"type\":\"object\",\"properties\":{\"s\":{\"type\":[\"string\",\"null\"],\"maxLength\":3},"
               "\"n\":{\"type\":[\"integer\",\"null\"],\"minimum\":0},"
               "\"o\":{\"type\":[\"object\",\"null\"],\"properties\":{\"x\":{\"type\":\"boolean\"}},"
               "\"required\":[\"x\"],\"additionalProperties\":false}},"
               "\"required\":[\"s\",\"n\",\"o\"],\"additionalProperties\":false}");
    YES(g, "{\"s\":\"abc\",\"n\":0,\"o\":{\"x\":true}}"), YES(g, "{\"s\":null,\"n\":null,\"o\":null}");
    NO(g, "{\"s\":\"abcd\",\"n\":0,\"o\":null}"), NO(g, "{\"s\":null,\"n\":-1,\"o\":null}");
    NO(g, "{\"s\":null,\"n\":1,\"o\":{}}"), NO(g, "{\"s\":3,\"n\":1,\"o\":null}");
    grammar_release(g);
    ck_assert_int_eq(grammar_compile_json_object(&g, err, sizeof(err)), GRAMMAR_OK);
    YES(g, "{\"a\":[1,{\"b\":null}],\"c\":\"d\"}"), NO(g, "[]"), NO(g, "{\"a\"}");
    grammar_release(g);
}
END_TEST

START_TEST(test_json_schema_errors) {
    static const struct { const char *json; const char *needle; } bad[] = {
        {"{\"type\":\"object\",\"patternProperties\":{}}", "'patternProperties'"},
        {"{\"oneOf\":[{\"type\":\"string\"}]}", "'oneOf'"},
        {"{\"type\":\"string\",\"format\":\"hostname\"}", "'format'"},
        {"{\"type\":\"number\",\"maximum\":3}", "'maximum'"},
        {"{\"type\":\"array\",\"uniqueItems\":true}", "'uniqueItems'"},
        {"{\"$ref\":\"#/$defs/missing\"}", "points to nothing"},
        {"{\"$ref\":\"http://x/y\"}", "local"},
        {"{\"type\":\"strin\"}", "unknown type"},
        {"{\"type\":\"object\"", "not valid JSON"},
        {"{\"type\":\"array\",\"maxItems\":100000}", "'maxItems'"},
        {"{\"$defs\":{\"a\":{\"$ref\":\"#/$defs/a\"}},\"$ref\":\"#/$defs/a\"}", "left recursion"},
        {"{\"type\":\"string\",\"pattern\":\"(a\"}", "'pattern'"},
        {"{\"not\":{}}", "'not'"},
        {"{\"type\":[\"string\",\"null\"],\"minItems\":1}", "'minItems'"}, /* a keyword of no listed type */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        grammar *g = (grammar *)1;
        err[0] = 0;
        int rc = grammar_compile_json_schema(bad[i].json, strlen(bad[i].json), &g, err, sizeof(err));
        ck_assert_msg(rc < 0 && !g, "%s: compiled", bad[i].json);
        ck_assert_msg(strstr(err, bad[i].needle) != NULL, "%s: message %s", bad[i].json, err);
    }
    /* deep nesting is a limit, not a stack overflow */
    char deep[4096];
    size_t n = 0;
    for (int i = 0; i < 200; i++) n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{\"items\":");
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{}");
    for (int i = 0; i < 200; i++) deep[n++] = '}';
    deep[n] = 0;
    grammar *g = NULL;
    ck_assert_int_eq(grammar_compile_json_schema(deep, n, &g, err, sizeof(err)), GRAMMAR_ERR_LIMIT);
}
END_TEST

/* Tool-call shaped grammars: each alternative's schema between its texts, items joined by sep. */
START_TEST(test_wrapped_json) {
    grammar_wrapped_json alts[] = {
        {"<c>{\"name\": \"f\", \"arguments\": ", "{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"integer\"}},"
                                                  "\"required\":[\"x\"],\"additionalProperties\":false}", "}</c>"},
        {"<c>{\"name\": \"g\", \"arguments\": ", NULL, "}</c>"},
    };
    grammar *g = NULL;
    int bad = 7;
    ck_assert_int_eq(grammar_compile_wrapped_json(alts, 2, "\n", 0, &bad, &g, err, sizeof(err)), GRAMMAR_OK);
    ck_assert_int_eq(bad, -1);
    YES(g, "<c>{\"name\": \"f\", \"arguments\": {\"x\": 3}}</c>");
    YES(g, "<c>{\"name\": \"g\", \"arguments\": {}}</c>\n<c>{\"name\": \"f\", \"arguments\": {\"x\":1}}</c>");
    NO(g, ""), NO(g, "<c>{\"name\": \"g\", \"arguments\": {\"x\": 3}}</c>");
    NO(g, "<c>{\"name\": \"f\", \"arguments\": {}}</c>"), NO(g, "<c>{\"name\": \"h\", \"arguments\": {}}</c>");
    NO(g, "<c>{\"name\": \"g\", \"arguments\": {}}</c><c>{\"name\": \"g\", \"arguments\": {}}</c>");
    grammar_release(g);
    /* at most one item; a bad schema is named by its index */
    ck_assert_int_eq(grammar_compile_wrapped_json(alts, 2, "\n", 1, &bad, &g, err, sizeof(err)), GRAMMAR_OK);
    YES(g, "<c>{\"name\": \"g\", \"arguments\": {}}</c>");
    NO(g, "<c>{\"name\": \"g\", \"arguments\": {}}</c>\n<c>{\"name\": \"g\", \"arguments\": {}}</c>");
    grammar_release(g);
    alts[1].schema = "{\"type\":\"object\",\"patternProperties\":{}}";
    g = (grammar *)1;
    ck_assert_int_eq(grammar_compile_wrapped_json(alts, 2, "\n", 0, &bad, &g, err, sizeof(err)), GRAMMAR_ERR_UNSUPPORTED);
    ck_assert_int_eq(bad, 1);
    ck_assert_ptr_null(g);
    ck_assert_msg(strstr(err, "'patternProperties'") != NULL, "%s", err);
}
END_TEST

START_TEST(test_regex) {
    grammar *g = regex("^(ab|c)+\\d{2,3}[x-z\\s]?$");
    YES(g, "ab12"), YES(g, "cabc123z"), YES(g, "c00 "), NO(g, "ab1"), NO(g, "12"), NO(g, "ab1234");
    grammar_release(g);
    g = regex("(?:[A-Z][a-z]*)( [A-Z][a-z]*)*\\.");
    YES(g, "Hello World."), NO(g, "hello."), NO(g, "Hello world.");
    grammar_release(g);
    g = regex("a.c|\\(\\)|[^0-9]{2}");
    YES(g, "abc"), YES(g, "a\xc3\xa9" "c"), YES(g, "()"), YES(g, "xy"), NO(g, "a\nc"), NO(g, "x1");
    grammar_release(g);
    g = regex("(?P<year>[0-9]{4})-(?<m>[0-9]{2})");
    YES(g, "2024-05"), NO(g, "24-05");
    grammar_release(g);
    static const char *bad[] = {"(a", "a)", "*a", "a**", "\\1", "(?=a)", "a^", "$a", "[a", "a{3,2}", "a{20000}", "\\b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        grammar *b = (grammar *)1;
        int rc = grammar_compile_regex(bad[i], strlen(bad[i]), &b, err, sizeof(err));
        ck_assert_msg(rc < 0 && !b, "%s compiled", bad[i]);
    }
    const char *ch[] = {"yes", "no", "n/a \"q\""};
    size_t lens[] = {3, 2, 7};
    ck_assert_int_eq(grammar_compile_choice(ch, lens, 3, &g, err, sizeof(err)), GRAMMAR_OK);
    YES(g, "yes"), YES(g, "no"), YES(g, "n/a \"q\""), NO(g, "n"), NO(g, "yesno");
    grammar_release(g);
}
END_TEST

/* A toy vocabulary: every printable ASCII byte, a few UTF-8 bytes, and
 * multi-byte pieces that cross JSON's structure; then EOS and a special. */
static const char *toy[] = {"{", "}", "[", "]", "\"", ":", ",", " ", "\n", "  ", "\":", "\",", "\"}", "{\"", "\": \"",
                            "true", "false", "null", "nu", "ll", "12", "-", "0", ".5", "e", "name", "age", "tags", "kind",
                            "ab", "\\n", "\\", "u00e9", "\xc3", "\xa9", "\xc3\xa9", "],", "},", "}]", "a", "b", "x"};
#define N_TOY (int)(sizeof(toy) / sizeof(toy[0]))

static grammar_vocab *toy_vocab(int *eos) {
    int n = N_TOY + 2 + 95;
    const char **bytes = calloc((size_t)n, sizeof(char *));
    size_t *lens = calloc((size_t)n, sizeof(size_t));
    bool *special = calloc((size_t)n, 1);
    static char ascii[95][2];
    for (int i = 0; i < N_TOY; i++) bytes[i] = toy[i], lens[i] = strlen(toy[i]);
    for (int i = 0; i < 95; i++) ascii[i][0] = (char)(32 + i), bytes[N_TOY + 2 + i] = ascii[i], lens[N_TOY + 2 + i] = 1;
    *eos = N_TOY;
    bytes[N_TOY] = "</s>", lens[N_TOY] = 4;
    bytes[N_TOY + 1] = "<tool>", lens[N_TOY + 1] = 6, special[N_TOY + 1] = true;
    int32_t e = N_TOY;
    grammar_vocab *v = NULL;
    ck_assert_int_eq(grammar_vocab_create(n, bytes, lens, special, &e, 1, &v, err, sizeof(err)), GRAMMAR_OK);
    free(bytes), free(lens), free(special);
    return v;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next_rand(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return rng;
}

/* Random walks: at each step the mask must agree with accepting each token
 * on a copy; the walk picks an allowed token (EOS half the time it may); the
 * text of a walk that ended by EOS is a whole sentence. */
static long n_put_off; /* accepts that grammar_matcher_may_end_after let wait */
static void walks(grammar *g, int n_walks, int max_steps) {
    int eos;
    grammar_vocab *v = toy_vocab(&eos);
    int n = grammar_vocab_size(v);
    uint32_t *mask = calloc(grammar_vocab_mask_words(v), 4);
    char text[8192];
    for (int w = 0; w < n_walks; w++) {
        grammar_matcher *m = grammar_matcher_create(g);
        size_t len = 0;
        bool ended = false;
        for (int step = 0; step < max_steps && !ended; step++) {
            int count = grammar_matcher_mask(m, v, mask);
            ck_assert_int_ge(count, 0);
            int allowed[512], na = 0;
            for (int id = 0; id < n; id++) {
                bool in = (mask[id >> 5] >> (id & 31)) & 1;
                grammar_matcher *c = grammar_matcher_clone(m);
                size_t tl;
                const char *tb = grammar_vocab_token(v, id, &tl);
                bool may = grammar_matcher_may_end_after(c, tb, tl);
                bool acc = grammar_matcher_accept_token(c, v, id);
                if (acc && id != eos) { /* an accept that may_end_after says cannot end the output does not */
                    ck_assert_msg(may || !grammar_matcher_ended(c), "token %d ended the output after \"%.*s\"", id, (int)len, text);
                    n_put_off += !may;
                }
                grammar_matcher_destroy(c);
                ck_assert_msg(in == acc, "token %d: mask %d, accept %d after \"%.*s\"", id, in, acc, (int)len, text);
                if (in) allowed[na++] = id;
            }
            ck_assert_int_eq(na, count);
            if (na == 0) break;
            int id = allowed[next_rand() % (uint64_t)na];
            if (grammar_matcher_can_end(m) && next_rand() % 4 == 0) id = eos;
            if (id == eos) {
                ended = true;
                break;
            }
            ck_assert(grammar_matcher_accept_token(m, v, id));
            size_t tl = strlen(toy[id < N_TOY ? id : 0]);
            const char *tb = id < N_TOY ? toy[id] : (char[]){(char)(32 + id - N_TOY - 2), 0};
            if (id >= N_TOY) tl = 1;
            if (len + tl < sizeof(text)) memcpy(text + len, tb, tl), len += tl;
            if (grammar_matcher_ended(m)) ended = true;
        }
        if (ended) {
            text[len] = 0;
            ck_assert_msg(full(g, text), "walk ended outside the language: %s", text);
        }
        grammar_matcher_destroy(m);
    }
    free(mask);
    grammar_vocab_destroy(v);
}

START_TEST(test_mask_random_walks) {
    grammar *g = schema("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":6},\"age\":{\"type\":\"integer\"},"
                        "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"ab\",\"x\"]}},\"kind\":{\"type\":[\"boolean\",\"null\"]}},"
                        "\"required\":[\"name\",\"age\"]}");
    walks(g, 60, 60);
    grammar_release(g);
    g = regex("(ab|x)+ [0-9]{1,3}(\\.5)?");
    walks(g, 40, 20);
    grammar_release(g);
    ck_assert_int_eq(grammar_compile_json_object(&g, err, sizeof(err)), GRAMMAR_OK);
    walks(g, 40, 40);
    grammar_release(g);
    ck_assert_int_gt(n_put_off, 1000); /* most accepts cannot end these outputs */
}
END_TEST

/* The last bytes grammar_matcher_may_end_after allows are those the
 * sentences of each grammar end with (read off the grammars by hand). */
static void ends_with(grammar *g, const char *yes, const char *no) {
    grammar_matcher *m = grammar_matcher_create(g);
    for (const char *p = yes; *p; p++) ck_assert_msg(grammar_matcher_may_end_after(m, p, 1), "may end with '%c'", *p);
    for (const char *p = no; *p; p++) ck_assert_msg(!grammar_matcher_may_end_after(m, p, 1), "cannot end with '%c'", *p);
    ck_assert(grammar_matcher_may_end_after(m, "", 0)); /* no bytes: the caller decides */
    ck_assert(!grammar_matcher_may_end_after(m, "}a", 2) || strchr(yes, 'a')); /* the last byte counts */
    grammar_matcher_destroy(m);
    grammar_release(g);
}

START_TEST(test_may_end_after) {
    grammar *g = NULL;
    ck_assert_int_eq(grammar_compile_json_object(&g, err, sizeof(err)), GRAMMAR_OK);
    ends_with(g, "}", "{]\" a1,:\n");
    ends_with(schema("{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}"), "]", "[}0 ,");
    ends_with(schema("{\"type\":\"string\"}"), "\"", "ab\\");
    ends_with(schema("{\"type\":\"integer\"}"), "0123456789", "-.e ");
    ends_with(regex("(ab|x)+ [0-9]{1,3}(\\.5)?"), "0123456789", "abx .");
    ends_with(gbnf("root ::= \"a\" b? c\nb ::= \"b\" | x\nx ::= [p-r] \"\"\nc ::= \"\" | \"z\"\n"), "abpqrz", "cs");
    const char *choices[] = {"yes", "no", "maybe"};
    size_t lens[] = {3, 2, 5};
    ck_assert_int_eq(grammar_compile_choice(choices, lens, 3, &g, err, sizeof(err)), GRAMMAR_OK);
    ends_with(g, "soe", "ynmab");
}
END_TEST

/* Qwen3's vocabulary (151,669 tokens) as a grammar vocabulary; *eos its EOS id. */
static grammar_vocab *qwen3_vocab(int32_t *eos, tokenizer **tok_out) {
    const char *src = getenv("ENGRAM_SOURCE_DIR");
    char dir[4096];
    snprintf(dir, sizeof dir, "xz -dc '%s/tests/fixtures/tokenizers/qwen3/tokenizer.json.xz'", src ? src : ".");
    FILE *f = popen(dir, "r"); /* the fixture is stored compressed */
    ck_assert_ptr_nonnull(f);
    size_t cap = 16 << 20, len = 0, got;
    char *json = malloc(cap);
    while ((got = fread(json + len, 1, cap - len, f)) > 0)
        if ((len += got) == cap) json = realloc(json, cap *= 2);
    ck_assert_int_eq(pclose(f), 0);
    tokenizer *tok = NULL;
    ck_assert_msg(tokenizer_load_json(json, len, &tok, err, sizeof(err)) == 0, "%s", err);
    free(json);
    int n = (int)tokenizer_vocab_size(tok);
    char **bytes = calloc((size_t)n, sizeof(char *));
    size_t *lens = calloc((size_t)n, sizeof(size_t));
    bool *special = calloc((size_t)n, 1);
    for (int i = 0; i < n; i++) {
        special[i] = tokenizer_is_special(tok, i);
        if (tokenizer_token_bytes(tok, i, &bytes[i], &lens[i])) bytes[i] = NULL, lens[i] = 0;
    }
    *eos = tokenizer_eos_id(tok);
    grammar_vocab *v = NULL;
    ck_assert_int_eq(grammar_vocab_create(n, (const char *const *)bytes, lens, special, eos, 1, &v, err, sizeof(err)), GRAMMAR_OK);
    for (int i = 0; i < n; i++) free(bytes[i]);
    free(bytes), free(lens), free(special);
    *tok_out = tok;
    return v;
}

/* Random walks over the real vocabulary: each step's mask (token tables, no
 * per-state cache: a fresh copy) must equal the reference trie walk's; half
 * the steps pick a token with JSON structure in it, so walks leave strings. */
static void real_walks(grammar *g, grammar_vocab *v, tokenizer *tok, int32_t eos, int n_walks, int max_steps) {
    size_t words = grammar_vocab_mask_words(v);
    int n = grammar_vocab_size(v);
    uint32_t *fast = malloc(words * 4), *ref = malloc(words * 4);
    int32_t *allowed = malloc((size_t)n * sizeof(int32_t)), *structural = malloc((size_t)n * sizeof(int32_t));
    for (int w = 0; w < n_walks; w++) {
        grammar_matcher *m = grammar_matcher_create(g);
        for (int step = 0; step < max_steps; step++) {
            grammar_matcher *c = grammar_matcher_clone(m);
            int a = grammar_matcher_mask(c, v, fast), b = grammar_matcher_mask_reference(c, v, ref);
            grammar_matcher_destroy(c);
            ck_assert_int_eq(a, b);
            ck_assert_msg(!memcmp(fast, ref, words * 4), "walk %d step %d: the mask differs from the reference", w, step);
            int na = 0, ns = 0;
            for (int id = 0; id < n; id++) {
                if (!((fast[id >> 5] >> (id & 31)) & 1) || id == eos) continue;
                allowed[na++] = id;
                char *tb = NULL;
                size_t tl = 0;
                if (tokenizer_token_bytes(tok, id, &tb, &tl) == 0 && tl <= 3 && strpbrk(tb, "\"{}[],:0123456789"))
                    structural[ns++] = id;
                free(tb);
            }
            if (na == 0) break;
            int32_t id = ns && next_rand() % 2 ? structural[next_rand() % (uint64_t)ns] : allowed[next_rand() % (uint64_t)na];
            ck_assert(grammar_matcher_accept_token(m, v, id));
        }
        grammar_matcher_destroy(m);
    }
    free(fast), free(ref), free(allowed), free(structural);
}

START_TEST(test_mask_real_vocab) {
    int32_t eos;
    tokenizer *tok;
    grammar_vocab *v = qwen3_vocab(&eos, &tok);
    grammar *g = schema("{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":12},"
                        "\"age\":{\"type\":\"integer\",\"minimum\":0},\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
                        "\"role\":{\"enum\":[\"admin\",\"viewer\"]},\"zip\":{\"type\":\"string\",\"pattern\":\"^[0-9]{5}$\"},"
                        "\"note\":{\"anyOf\":[{\"type\":\"string\"},{\"type\":\"null\"}]}},\"required\":[\"name\",\"age\"]}");
    real_walks(g, v, tok, eos, 3, 30);
    grammar_release(g);
    g = schema("{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{\"v\":{\"type\":\"number\"},"
               "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},\"required\":[\"v\",\"kids\"]}},"
               "\"$ref\":\"#/$defs/node\"}");
    real_walks(g, v, tok, eos, 2, 30);
    grammar_release(g);
    /* the copies of a counted repetition: their stacks differ deep down and share the tables of their tops */
    g = schema("{\"type\":\"array\",\"minItems\":6,\"items\":{\"type\":\"object\",\"properties\":{\"w\":{\"type\":\"string\","
               "\"maxLength\":8},\"k\":{\"enum\":[\"a\",\"bc\"]},\"n\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"},"
               "\"maxItems\":3}},\"required\":[\"w\",\"k\",\"n\"],\"additionalProperties\":false}}");
    real_walks(g, v, tok, eos, 2, 60);
    grammar_release(g);
    ck_assert_int_eq(grammar_compile_json_object(&g, err, sizeof(err)), GRAMMAR_OK);
    real_walks(g, v, tok, eos, 2, 30);
    int n_tab;
    size_t bytes;
    double secs;
    grammar_tables_stats(g, &n_tab, &bytes, &secs);
    ck_assert_int_gt(n_tab, 0); /* the tables did the work */
    grammar_release(g);
    grammar_vocab_destroy(v);
    tokenizer_destroy(tok);
}
END_TEST

START_TEST(test_matcher_bounds) {
    /* ambiguity: the state stays within GRAMMAR_MAX_STACKS, and is cut, not grown */
    grammar *g = gbnf("root ::= x*\nx ::= \"a\" | \"a\" \"a\" | \"a\" \"a\" \"a\" | y\ny ::= (\"a\" | \"a\")+\n");
    grammar_matcher *m = grammar_matcher_create(g);
    for (int i = 0; i < 2000; i++) ck_assert(grammar_matcher_accept_bytes(m, "a", 1));
    ck_assert(grammar_matcher_can_end(m));
    int eos; /* at the limits the mask still agrees with accepting on a copy */
    grammar_vocab *v = toy_vocab(&eos);
    uint32_t *mask = calloc(grammar_vocab_mask_words(v), 4);
    ck_assert_int_ge(grammar_matcher_mask(m, v, mask), 0);
    for (int id = 0; id < grammar_vocab_size(v); id++) {
        grammar_matcher *c = grammar_matcher_clone(m);
        ck_assert_int_eq((mask[id >> 5] >> (id & 31)) & 1, grammar_matcher_accept_token(c, v, id));
        grammar_matcher_destroy(c);
    }
    free(mask);
    grammar_vocab_destroy(v);
    grammar_matcher_destroy(m);
    grammar_release(g);
    /* deep nesting stops at GRAMMAR_MAX_DEPTH instead of growing without end */
    g = gbnf("root ::= \"(\" root \")\" | \"x\"\n");
    m = grammar_matcher_create(g);
    int i = 0;
    while (i < 3 * GRAMMAR_MAX_DEPTH && grammar_matcher_accept_bytes(m, "(", 1)) i++;
    ck_assert_int_lt(i, 3 * GRAMMAR_MAX_DEPTH);
    ck_assert(grammar_matcher_overflowed(m));
    grammar_matcher_destroy(m);
    grammar_release(g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("grammar");
    TCase *tc = tcase_create("grammar");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_gbnf_basics);
    tcase_add_test(tc, test_gbnf_errors);
    tcase_add_test(tc, test_json_schema);
    tcase_add_test(tc, test_json_schema_errors);
    tcase_add_test(tc, test_wrapped_json);
    tcase_add_test(tc, test_regex);
    tcase_add_test(tc, test_mask_random_walks);
    tcase_add_test(tc, test_may_end_after);
    tcase_add_test(tc, test_mask_real_vocab);
    tcase_add_test(tc, test_matcher_bounds);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
