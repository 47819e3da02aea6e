/* libFuzzer target: the server's request body parsers (server/api_request.c,
 * compiled in here: it has no I/O and links only cJSON). The first byte picks
 * the parser; the rest is the body. Accepted requests must satisfy the
 * invariants the HTTP layer and the engine rely on. Its error table
 * (server/errors.c, api_error_set) is compiled in too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/api_request.c"
#include "server/errors.c" /* api_error_set */

static void check_error(const api_error *err) {
    if (err->status != 400 && err->status != 500) abort();
    if (!err->type || !err->message[0]) abort();
    /* a message may quote the request's own text, cut to a length: still UTF-8 (api_error_set) */
    if (!utf8_valid(err->message, strlen(err->message))) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    api_error err;
    switch (data[0] % 4) {
    case 0:
    case 1: {
        api_kind kind = data[0] % 4 == 0 ? API_COMPLETIONS : API_CHAT;
        api_request r;
        if (api_parse_request(kind, body, len, &r, &err) == 0) {
            if (kind == API_CHAT && !cJSON_IsArray(r.messages)) abort();
            /* what the template and the parser get: an array */
            if (r.tools && (!cJSON_IsArray(r.tools) || kind != API_CHAT)) abort();
            if (r.force_text && !r.force_text[0]) abort();
            if (r.cache_salt && (!r.cache_salt[0] || strlen(r.cache_salt) > API_MAX_CACHE_SALT)) abort();
            if (kind == API_COMPLETIONS && !r.prompt_text == !r.prompt_ids) abort();
            if (r.prompt_ids && r.n_prompt_ids < 1) abort();
            for (int i = 0; i < r.n_prompt_ids; i++)
                if (r.prompt_ids[i] < 0) abort();
            if (r.max_tokens == 0 || r.max_tokens < -1) abort();
            if (r.n_stop < 0 || r.n_stop > ENGINE_MAX_STOP) abort();
            for (int i = 0; i < r.n_stop; i++)
                if (!r.stop[i] || !r.stop[i][0] || !utf8_valid(r.stop[i], strlen(r.stop[i]))) abort();
            for (int i = 0; i < r.n_bias; i++)
                if (r.bias_ids[i] < 0 || !(r.bias_vals[i] >= -100 && r.bias_vals[i] <= 100)) abort();
            const sampler_params *sp = &r.sampling;
            if (!(sp->temperature >= 0 && sp->temperature <= 2) || !(sp->top_p > 0 && sp->top_p <= 1) ||
                sp->top_k < 0 || !(sp->min_p >= 0 && sp->min_p <= 1) || !(sp->repetition_penalty > 0))
                abort();
            if (r.include_usage && !r.stream) abort();
            if (r.n < 1 || r.n > API_MAX_N) abort();
            char *mj = r.messages ? cJSON_PrintUnformatted(r.messages) : NULL;
            if (mj && !utf8_valid(mj, strlen(mj))) abort();
            free(mj);
            api_request_free(&r);
        } else {
            check_error(&err);
        }
        break;
    }
    case 2: {
        api_tokenize t;
        if (api_parse_tokenize(body, len, &t, &err) == 0) {
            if (!t.prompt_text == !t.messages) abort();
            api_tokenize_free(&t);
        } else {
            check_error(&err);
        }
        break;
    }
    default: {
        api_detokenize d;
        if (api_parse_detokenize(body, len, &d, &err) == 0) {
            if (d.n_ids < 0 || (d.n_ids && !d.ids)) abort();
            api_detokenize_free(&d);
        } else {
            check_error(&err);
        }
        break;
    }
    }
    return 0;
}
