/* Structured outputs on the request path: the grammar of a request's
 * response_format / guided_* field (api_struct_kind and canonical text),
 * or of tool_choice "required" / named (the tools' parameter schemas in the
 * template's call syntax), compiled once per distinct text and kept in a
 * small LRU cache shared by the HTTP threads, so a schema sent again is not
 * recompiled. Compile errors are 400s naming the field; compile times go to
 * the metrics. */
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>

#include "base/util.h"
#include "grammar/grammar.h"
#include "server/server_internal.h"

#define CACHE_SIZE 64

/* The cache is one per process, like the server it serves (main makes one). */
static struct {
    pthread_mutex_t mu;
    struct {
        char *key;  /* kind byte + canonical text */
        size_t len;
        grammar *g; /* one reference */
        unsigned long long used;
    } e[CACHE_SIZE];
    unsigned long long tick;
} cache = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* A referenced grammar for key, or NULL. */
static grammar *cache_get(const char *key, size_t len) {
    grammar *g = NULL;
    pthread_mutex_lock(&cache.mu);
    for (int i = 0; i < CACHE_SIZE && !g; i++)
        if (cache.e[i].g && cache.e[i].len == len && !memcmp(cache.e[i].key, key, len)) {
            g = grammar_retain(cache.e[i].g);
            cache.e[i].used = ++cache.tick;
        }
    pthread_mutex_unlock(&cache.mu);
    return g;
}

/* Keeps g under key (least recently used out); nothing when out of memory. */
static void cache_put(const char *key, size_t len, grammar *g) {
    char *k = malloc(len);
    if (!k) return;
    memcpy(k, key, len);
    pthread_mutex_lock(&cache.mu);
    int slot = 0;
    for (int i = 1; i < CACHE_SIZE; i++)
        if (cache.e[i].used < cache.e[slot].used) slot = i;
    grammar *old = cache.e[slot].g;
    free(cache.e[slot].key);
    cache.e[slot].key = k;
    cache.e[slot].len = len;
    cache.e[slot].g = grammar_retain(g);
    cache.e[slot].used = ++cache.tick;
    pthread_mutex_unlock(&cache.mu);
    grammar_release(old);
}

/* guided_choice's JSON array of strings, compiled. */
static int compile_choice(const char *src, grammar **out, char *err, size_t errlen) {
    cJSON *arr = cJSON_Parse(src);
    int n = cJSON_GetArraySize(arr), rc = GRAMMAR_ERR_NOMEM, i = 0;
    const char **s = malloc(((size_t)n + 1) * sizeof(char *));
    size_t *lens = malloc(((size_t)n + 1) * sizeof(size_t));
    if (arr && s && lens) {
        const cJSON *x;
        cJSON_ArrayForEach(x, arr) s[i] = x->valuestring, lens[i] = strlen(x->valuestring), i++;
        rc = grammar_compile_choice(s, lens, n, out, err, errlen);
    } else {
        snprintf(err, errlen, "out of memory");
    }
    free(s), free(lens);
    cJSON_Delete(arr);
    return rc;
}

/* tool_choice's calls (api_struct_kind API_STRUCT_TOOL_CALLS): each allowed
 * tool's parameters schema inside the call syntax of the template's format.
 * On a schema error *bad is the tool's index in the request's 'tools'. */
static int compile_tool_calls(tool_format fmt, const char *src, int *bad, grammar **out, char *err, size_t errlen) {
    cJSON *j = cJSON_Parse(src);
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(j, "tools"), *t;
    int n = cJSON_GetArraySize(tools), max = cJSON_GetObjectItemCaseSensitive(j, "max")->valueint, i = 0, b = -1;
    int rc = GRAMMAR_ERR_NOMEM;
    grammar_wrapped_json *alts = calloc((size_t)n + 1, sizeof(*alts));
    char **owned = calloc(2 * (size_t)n + 1, sizeof(char *)); /* each tool's prefix and schema text */
    const char *sep = "";
    snprintf(err, errlen, "out of memory");
    if (!alts || !owned) goto out;
    cJSON_ArrayForEach(t, tools) {
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(t, "parameters");
        if (tool_format_call_text(fmt, cJSON_GetObjectItemCaseSensitive(t, "name")->valuestring, &owned[2 * i],
                                  &alts[i].suffix, &sep))
            goto out;
        if (params && !(owned[2 * i + 1] = cJSON_PrintUnformatted(params))) goto out;
        alts[i].prefix = owned[2 * i];
        alts[i].schema = owned[2 * i + 1];
        i++;
    }
    rc = grammar_compile_wrapped_json(alts, n, sep, max, &b, out, err, errlen);
    if (b >= 0) *bad = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(tools, b), "index")->valueint;
out:
    for (i = 0; owned && i < 2 * n; i++) free(owned[i]);
    free(owned), free(alts);
    cJSON_Delete(j);
    return rc;
}

static int compile(api_struct_kind kind, const char *src, tool_format fmt, int *bad, grammar **out, char *err,
                   size_t errlen) {
    switch (kind) {
    case API_STRUCT_JSON_SCHEMA: return grammar_compile_json_schema(src, strlen(src), out, err, errlen);
    case API_STRUCT_JSON_OBJECT: return grammar_compile_json_object(out, err, errlen);
    case API_STRUCT_REGEX: return grammar_compile_regex(src, strlen(src), out, err, errlen);
    case API_STRUCT_CHOICE: return compile_choice(src, out, err, errlen);
    case API_STRUCT_GRAMMAR: return grammar_compile_gbnf(src, strlen(src), out, err, errlen);
    case API_STRUCT_TOOL_CALLS: return compile_tool_calls(fmt, src, bad, out, err, errlen);
    default: return GRAMMAR_ERR_INVALID;
    }
}

int structured_grammar(conn *c, const api_request *ar, grammar **out, enum MHD_Result *ret) {
    *out = NULL;
    if (!ar->structured) return 0;
    if (!c->s->tok) {
        *ret = fail(c, 400, ar->structured_param, "Structured outputs need the model's tokenizer; this model has none.");
        return -1;
    }
    size_t n = strlen(ar->structured_src);
    char *key = malloc(n + 1);
    if (!key) {
        *ret = fail(c, 500, NULL, "Out of memory.");
        return -1;
    }
    key[0] = (char)ar->structured;
    memcpy(key + 1, ar->structured_src, n);
    grammar *g = cache_get(key, n + 1);
    if (g) {
        metrics_grammar_compile(c->s->mx, 0, true);
    } else {
        char err[300], param[64];
        int bad = -1;
        double t0 = util_now();
        int rc = compile(ar->structured, ar->structured_src, c->s->tool_fmt, &bad, &g, err, sizeof(err));
        if (rc != GRAMMAR_OK) {
            free(key);
            api_error e;
            if (bad >= 0) snprintf(param, sizeof(param), "tools[%d].function.parameters", bad);
            else snprintf(param, sizeof(param), "%s", ar->structured_param);
            api_error_set(&e, rc == GRAMMAR_ERR_NOMEM ? 500 : 400, param, "Invalid '%s': %s.", param, err);
            *ret = reply_error(c, &e, NULL);
            return -1;
        }
        metrics_grammar_compile(c->s->mx, util_now() - t0, false);
        cache_put(key, n + 1, g);
    }
    free(key);
    *out = g;
    return 0;
}
