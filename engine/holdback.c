/* A running request's generated text and its stop strings: the detokenized
 * pieces are appended to one strbuf, stop strings are matched on that text,
 * and the longest tail that could still start a stop string is held back,
 * so a stop string is never emitted, even when it spans tokens. */
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

int engine__gen_text_add(gen_text *g, tokenizer_stream *ts, int32_t id, bool last) {
    char *piece = NULL;
    size_t plen = 0;
    int trc = ts ? tokenizer_stream_step(ts, id, &piece, &plen) : TOKENIZER_OK;
    if (trc == TOKENIZER_OK && plen && strbuf_add(&g->text, piece, plen) != 0) trc = TOKENIZER_ERR_NOMEM;
    free(piece);
    if (last && ts && trc == TOKENIZER_OK) { /* the incomplete tail, if any */
        piece = NULL;
        plen = 0;
        trc = tokenizer_stream_flush(ts, &piece, &plen);
        if (trc == TOKENIZER_OK && plen && strbuf_add(&g->text, piece, plen) != 0) trc = TOKENIZER_ERR_NOMEM;
        free(piece);
    }
    return trc;
}

/* Looks for a stop string in g from byte `from` on (minus overlap). Returns
 * the earliest match position, or -1. */
static long find_stop(const engine_request *r, const gen_text *g, size_t from) {
    long best = -1;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        size_t start = from >= sl - 1 ? from - (sl - 1) : 0;
        if (start < g->emitted) start = g->emitted;
        for (size_t p = start; p + sl <= g->text.len; p++) {
            if (best >= 0 && (long)p >= best) break;
            if (memcmp(g->text.s + p, r->stop[i], sl) == 0) {
                best = (long)p;
                break;
            }
        }
    }
    return best;
}

/* Bytes at the end of g's unpublished text that are a proper prefix of some
 * stop string: they cannot be published yet. */
static size_t stop_holdback(const engine_request *r, const gen_text *g) {
    size_t hold = 0, n = g->text.len - g->emitted;
    if (n == 0) return 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t k = strbuf_marker_tail(g->text.s + g->emitted, n, r->stop[i]);
        if (k > hold) hold = k;
    }
    return hold;
}

size_t engine__gen_text_upto(const engine_request *r, const gen_text *g, size_t scanned, engine_finish *f) {
    long at = r->n_stop ? find_stop(r, g, scanned) : -1;
    if (at >= 0) {
        *f = ENGINE_FINISH_STOP;
        return (size_t)at;
    }
    return *f != ENGINE_FINISH_NONE ? g->text.len : g->text.len - stop_holdback(r, g);
}
